// AtomicFile: writes go to a temporary file beside the target, and commit() flushes it to disk
// and renames it into place, so a reader sees the old file or the whole new one, never a
// partial write. Dropped without commit(), the temporary file is removed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace genrec {

class AtomicFile {
 public:
  // `what` names the kind of file in error messages ("shard", "checkpoint", ...).
  AtomicFile(std::string target, std::string what);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);  // appends after the furthest byte written
  void write_at(const void* data, size_t size, uint64_t offset);
  void commit();

 private:
  std::string target_, what_, temp_;
  int fd_ = -1;
  uint64_t end_ = 0;
  bool committed_ = false;
};

}  // namespace genrec
