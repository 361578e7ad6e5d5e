// A fresh directory under the system's temporary directory, removed with everything in it when
// the test ends; `prefix` keeps concurrent test binaries apart (with the process id).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace genrec::test {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix) {
    path = std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace genrec::test
