#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace genrec {

AtomicFile::AtomicFile(std::string target, std::string what)
    : target_(std::move(target)), what_(std::move(what)), temp_(target_ + ".tmp-XXXXXX") {
  fd_ = ::mkstemp(temp_.data());
  if (fd_ < 0) {
    fail("{} {}: cannot create a temporary file: {}", what_, target_, std::strerror(errno));
  }
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  write_at(data, size, end_);
}

void AtomicFile::write_at(const void* data, size_t size, uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  end_ = std::max(end_, offset + size);
  while (size > 0) {
    ssize_t n = ::pwrite(fd_, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("{} {}: write failed: {}", what_, target_, std::strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail("{} {}: fsync failed: {}", what_, target_, std::strerror(errno));
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail("{} {}: close failed: {}", what_, target_, std::strerror(errno));
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    fail("{} {}: cannot rename {} into place: {}", what_, target_, temp_, std::strerror(errno));
  }
  committed_ = true;
}

}  // namespace genrec
