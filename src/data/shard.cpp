// Shard files put the header and the whole block index at the front, covered by one checksum,
// so a reader validates everything it will trust (counts, offsets, sizes) before touching a
// block; each block then carries two checksums: of its compressed bytes (checked first, so
// any flipped byte is reported as a checksum mismatch rather than as a zstd error) and of its
// decompressed bytes (end to end). The writer reserves the header space, streams the blocks,
// then fills the header in, in a temporary file that is renamed over the target at the end.
#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "core/atomic_file.h"
#include "core/byte_io.h"
#include "core/error.h"

namespace genrec {
namespace {

constexpr char kMagic[8] = {'G', 'E', 'N', 'R', 'E', 'C', 'S', 'H'};
constexpr size_t kFixedHeaderBytes = 64;
constexpr size_t kIndexEntryBytes = 64;
constexpr size_t kChecksumBytes = 8;

struct BlockEntry {
  uint64_t offset = 0;             // file offset of the compressed bytes
  uint64_t compressed_size = 0;    // bytes in the file
  uint64_t uncompressed_size = 0;  // bytes after decompression
  uint64_t first_user = 0;         // index of the block's first user in the dataset
  uint64_t num_users = 0;
  uint64_t num_events = 0;
  uint64_t compressed_checksum = 0;    // XXH64 (seed 0) of the compressed bytes
  uint64_t uncompressed_checksum = 0;  // XXH64 (seed 0) of the decompressed bytes
};

uint64_t block_payload_bytes(uint64_t users, uint64_t events, uint64_t num_features) {
  return 16 * users + 20 * events + 8 * num_features * events;
}

// Bounds-checked little-endian reader over a byte range.
class Cursor {
 public:
  Cursor(const std::string& path, const char* data, size_t size, std::string what)
      : path_(path), data_(data), size_(size), what_(std::move(what)) {}
  template <typename T>
  T get() {
    T value;
    std::memcpy(&value, take(sizeof(T)), sizeof(T));
    return value;
  }
  template <typename T>
  void get_array(T* out, size_t count) {
    if (count > 0) std::memcpy(out, take(count * sizeof(T)), count * sizeof(T));
  }
  std::string get_string(size_t length) { return std::string(take(length), length); }
  size_t position() const { return pos_; }

 private:
  const char* take(size_t n) {
    if (n > size_ - pos_) {
      fail("shard {}: {} is corrupt: needs {} bytes at offset {}, only {} left", path_, what_, n,
           pos_, size_ - pos_);
    }
    const char* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  const std::string& path_;
  const char* data_;
  size_t size_, pos_ = 0;
  std::string what_;
};

// ---- writing ----

std::string block_payload(const SequenceDataset& ds, uint64_t first_user, uint64_t num_users) {
  const int64_t u0 = static_cast<int64_t>(first_user), u1 = u0 + static_cast<int64_t>(num_users);
  const int64_t e0 = ds.offsets[u0], n = ds.offsets[u1] - e0;
  std::string out;
  out.reserve(block_payload_bytes(num_users, n, ds.feature_names.size()));
  put_array(out, ds.user_ids.data() + u0, num_users);
  for (int64_t u = u0; u < u1; ++u) put<int64_t>(out, ds.length(u));
  put_array(out, ds.items.data() + e0, n);
  put_array(out, ds.timestamps.data() + e0, n);
  put_array(out, ds.actions.data() + e0, n);
  for (const auto& column : ds.features) put_array(out, column.data() + e0, n);
  return out;
}

// ---- reading ----

class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("shard {}: cannot open: {}", path, std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      fail("shard {}: cannot stat: {}", path, std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      fail("shard {}: not a regular file", path);
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        fail("shard {}: cannot mmap: {}", path, std::strerror(err));
      }
      data_ = static_cast<const char*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

void write_shard(const std::string& path, const SequenceDataset& dataset,
                 const ShardWriteOptions& options) {
  dataset.validate();
  GENREC_CHECK(options.events_per_block > 0, "shard {}: events_per_block must be positive, got {}",
               path, options.events_per_block);
  const uint64_t num_features = dataset.feature_names.size();

  // Plan the blocks: consecutive whole users, closed at events_per_block events or users.
  std::vector<BlockEntry> blocks;
  for (int64_t u = 0; u < dataset.num_users();) {
    BlockEntry b;
    b.first_user = static_cast<uint64_t>(u);
    int64_t events = 0, users = 0;
    while (u < dataset.num_users() && events < options.events_per_block &&
           users < options.events_per_block) {
      events += dataset.length(u);
      ++users;
      ++u;
    }
    b.num_users = static_cast<uint64_t>(users);
    b.num_events = static_cast<uint64_t>(events);
    b.uncompressed_size = block_payload_bytes(b.num_users, b.num_events, num_features);
    blocks.push_back(b);
  }

  uint64_t names_bytes = 0;
  for (const auto& name : dataset.feature_names) {
    GENREC_CHECK(name.size() <= UINT32_MAX, "shard {}: feature name too long", path);
    names_bytes += 4 + name.size();
  }
  const uint64_t data_offset =
      kFixedHeaderBytes + names_bytes + kIndexEntryBytes * blocks.size() + kChecksumBytes;

  AtomicFile file(path, "shard");
  uint64_t offset = data_offset;
  std::vector<char> compressed;
  for (auto& b : blocks) {
    std::string payload = block_payload(dataset, b.first_user, b.num_users);
    b.uncompressed_checksum = XXH64(payload.data(), payload.size(), 0);
    compressed.resize(ZSTD_compressBound(payload.size()));
    size_t n = ZSTD_compress(compressed.data(), compressed.size(), payload.data(), payload.size(),
                             options.compression_level);
    if (ZSTD_isError(n)) fail("shard {}: zstd compression failed: {}", path, ZSTD_getErrorName(n));
    b.offset = offset;
    b.compressed_size = n;
    b.compressed_checksum = XXH64(compressed.data(), n, 0);
    file.write_at(compressed.data(), n, offset);
    offset += n;
  }

  std::string header;
  header.reserve(data_offset);
  header.append(kMagic, sizeof(kMagic));
  put<uint32_t>(header, kShardFormatVersion);
  put<uint32_t>(header, static_cast<uint32_t>(num_features));
  put<uint64_t>(header, static_cast<uint64_t>(dataset.num_users()));
  put<uint64_t>(header, static_cast<uint64_t>(dataset.num_events()));
  put<uint64_t>(header, blocks.size());
  put<uint64_t>(header, data_offset);
  put<uint64_t>(header, offset);  // file size
  put<uint64_t>(header, 0);       // reserved
  for (const auto& name : dataset.feature_names) {
    put<uint32_t>(header, static_cast<uint32_t>(name.size()));
    header.append(name);
  }
  for (const auto& b : blocks) {
    for (uint64_t v : {b.offset, b.compressed_size, b.uncompressed_size, b.first_user, b.num_users,
                       b.num_events, b.compressed_checksum, b.uncompressed_checksum}) {
      put<uint64_t>(header, v);
    }
  }
  put<uint64_t>(header, XXH64(header.data(), header.size(), 0));
  GENREC_CHECK(header.size() == data_offset, "shard {}: internal error: header is {} bytes, not {}",
               path, header.size(), data_offset);
  file.write_at(header.data(), header.size(), 0);
  file.commit();
}

SequenceDataset read_shard(const std::string& path) {
  MappedFile file(path);
  const char* data = file.data();
  const size_t size = file.size();

  // The magic first (of any file long enough to have one), so a file that is not a shard at
  // all is reported as such rather than as a truncated shard.
  if (size >= sizeof(kMagic) && std::memcmp(data, kMagic, sizeof(kMagic)) != 0) {
    fail("shard {}: wrong magic: not a genrec shard (expected \"GENRECSH\")", path);
  }
  if (size < kFixedHeaderBytes) {
    fail("shard {}: truncated: the file has {} bytes, the header alone needs {}", path, size,
         kFixedHeaderBytes);
  }
  Cursor fixed(path, data + sizeof(kMagic), kFixedHeaderBytes - sizeof(kMagic), "the header");
  const uint32_t version = fixed.get<uint32_t>();
  if (version > kShardFormatVersion) {
    fail("shard {}: format version {} is newer than this reader supports (up to {})", path, version,
         kShardFormatVersion);
  }
  GENREC_CHECK(version >= 1, "shard {}: invalid format version {}", path, version);
  const uint32_t num_features = fixed.get<uint32_t>();
  const uint64_t num_users = fixed.get<uint64_t>();
  const uint64_t num_events = fixed.get<uint64_t>();
  const uint64_t num_blocks = fixed.get<uint64_t>();
  const uint64_t data_offset = fixed.get<uint64_t>();
  const uint64_t file_size = fixed.get<uint64_t>();

  // The header section (fixed part, names, index) must be complete before it can be checked.
  if (data_offset < kFixedHeaderBytes + kChecksumBytes || data_offset > size) {
    fail(
        "shard {}: truncated or corrupt header: the header section claims {} bytes, the file "
        "has {}",
        path, data_offset, size);
  }
  const size_t checked = data_offset - kChecksumBytes;
  uint64_t stored_checksum;
  std::memcpy(&stored_checksum, data + checked, sizeof(stored_checksum));
  if (XXH64(data, checked, 0) != stored_checksum) {
    fail("shard {}: header checksum mismatch (header or block index is corrupt)", path);
  }
  if (size < file_size) {
    fail("shard {}: truncated: the file has {} bytes, its header says {}", path, size, file_size);
  }
  if (size > file_size) {
    fail("shard {}: {} unexpected bytes after the last block (file has {} bytes, header says {})",
         path, size - file_size, size, file_size);
  }

  // Names and index, all covered by the header checksum; still checked for consistency.
  Cursor cursor(path, data + kFixedHeaderBytes, checked - kFixedHeaderBytes, "the header");
  SequenceDataset ds;
  for (uint32_t f = 0; f < num_features; ++f) {
    ds.feature_names.push_back(cursor.get_string(cursor.get<uint32_t>()));
  }
  GENREC_CHECK(num_blocks <= (checked - kFixedHeaderBytes - cursor.position()) / kIndexEntryBytes,
               "shard {}: corrupt index: {} blocks do not fit in the header section", path,
               num_blocks);
  std::vector<BlockEntry> blocks(num_blocks);
  uint64_t next_offset = data_offset, next_user = 0, total_events = 0;
  for (uint64_t i = 0; i < num_blocks; ++i) {
    BlockEntry& b = blocks[i];
    b.offset = cursor.get<uint64_t>();
    b.compressed_size = cursor.get<uint64_t>();
    b.uncompressed_size = cursor.get<uint64_t>();
    b.first_user = cursor.get<uint64_t>();
    b.num_users = cursor.get<uint64_t>();
    b.num_events = cursor.get<uint64_t>();
    b.compressed_checksum = cursor.get<uint64_t>();
    b.uncompressed_checksum = cursor.get<uint64_t>();
    GENREC_CHECK(b.offset == next_offset && b.compressed_size <= file_size - b.offset,
                 "shard {}: corrupt index: block {} at offset {} (+{} bytes) is out of place", path,
                 i, b.offset, b.compressed_size);
    GENREC_CHECK(b.first_user == next_user && b.num_users <= num_users - next_user &&
                     b.num_events <= num_events - total_events,
                 "shard {}: corrupt index: block {} covers users {}+{} with {} events", path, i,
                 b.first_user, b.num_users, b.num_events);
    GENREC_CHECK(
        b.uncompressed_size == block_payload_bytes(b.num_users, b.num_events, num_features),
        "shard {}: corrupt index: block {} has {} uncompressed bytes for {} users and {} "
        "events",
        path, i, b.uncompressed_size, b.num_users, b.num_events);
    next_offset = b.offset + b.compressed_size;
    next_user += b.num_users;
    total_events += b.num_events;
  }
  GENREC_CHECK(cursor.position() == checked - kFixedHeaderBytes,
               "shard {}: corrupt header: {} unused bytes before the checksum", path,
               checked - kFixedHeaderBytes - cursor.position());
  GENREC_CHECK(next_offset == file_size && next_user == num_users && total_events == num_events,
               "shard {}: corrupt index: blocks cover {} users, {} events and end at byte {}; the "
               "header says {} users, {} events, {} bytes",
               path, next_user, total_events, next_offset, num_users, num_events, file_size);

  ds.user_ids.resize(num_users);
  ds.offsets.resize(num_users + 1);
  ds.items.resize(num_events);
  ds.timestamps.resize(num_events);
  ds.actions.resize(num_events);
  ds.features.assign(num_features, std::vector<int64_t>(num_events));

  std::vector<char> payload;
  std::vector<int64_t> lengths;
  uint64_t e0 = 0;
  for (uint64_t i = 0; i < num_blocks; ++i) {
    const BlockEntry& b = blocks[i];
    const char* compressed = data + b.offset;
    if (XXH64(compressed, b.compressed_size, 0) != b.compressed_checksum) {
      fail("shard {}: block {} checksum mismatch (compressed bytes)", path, i);
    }
    payload.resize(b.uncompressed_size);
    size_t n = ZSTD_decompress(payload.data(), payload.size(), compressed, b.compressed_size);
    if (ZSTD_isError(n)) {
      fail("shard {}: block {} does not decompress: {}", path, i, ZSTD_getErrorName(n));
    }
    GENREC_CHECK(n == b.uncompressed_size,
                 "shard {}: block {} decompressed to {} bytes, the index says {}", path, i, n,
                 b.uncompressed_size);
    if (XXH64(payload.data(), n, 0) != b.uncompressed_checksum) {
      fail("shard {}: block {} checksum mismatch (decompressed bytes)", path, i);
    }
    Cursor block(path, payload.data(), n, fmt::format("block {}", i));
    block.get_array(ds.user_ids.data() + b.first_user, b.num_users);
    lengths.resize(b.num_users);
    block.get_array(lengths.data(), b.num_users);
    uint64_t events = 0;
    for (uint64_t k = 0; k < b.num_users; ++k) {
      GENREC_CHECK(lengths[k] >= 0 && static_cast<uint64_t>(lengths[k]) <= b.num_events - events,
                   "shard {}: block {}: user {} has an invalid length {}", path, i,
                   b.first_user + k, lengths[k]);
      events += static_cast<uint64_t>(lengths[k]);
      ds.offsets[b.first_user + k + 1] = static_cast<int64_t>(e0 + events);
    }
    GENREC_CHECK(events == b.num_events, "shard {}: block {}: user lengths sum to {}, not {}", path,
                 i, events, b.num_events);
    block.get_array(ds.items.data() + e0, b.num_events);
    block.get_array(ds.timestamps.data() + e0, b.num_events);
    block.get_array(ds.actions.data() + e0, b.num_events);
    for (auto& column : ds.features) block.get_array(column.data() + e0, b.num_events);
    e0 += b.num_events;
  }
  return ds;
}

}  // namespace genrec
