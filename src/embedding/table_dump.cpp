// The whole file is checked (size against the header's count, then the trailing XXH64) before
// any row is trusted, so a truncated or corrupted dump fails with a message naming the file
// and never loads half its rows.
#include "embedding/table_dump.h"

#include <xxhash.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "core/atomic_file.h"
#include "core/byte_io.h"
#include "core/error.h"

namespace genrec {
namespace {

constexpr char kMagic[8] = {'G', 'E', 'N', 'R', 'E', 'C', 'E', 'M'};
constexpr size_t kHeaderBytes = 64;
constexpr size_t kChecksumBytes = 8;

uint64_t row_bytes(uint64_t dim, uint64_t state_dim) {
  return 24 + 4 * (dim + state_dim);
}

// An AtomicFile that hashes what it writes (all but the trailing checksum itself).
class DumpWriter {
 public:
  explicit DumpWriter(const std::string& target) : file_(target, "table dump") {
    state_ = XXH64_createState();
    XXH64_reset(state_, 0);
  }
  ~DumpWriter() { XXH64_freeState(state_); }
  void write(const std::string& bytes, bool hash = true) {
    if (hash) XXH64_update(state_, bytes.data(), bytes.size());
    file_.write(bytes.data(), bytes.size());
  }
  uint64_t digest() const { return XXH64_digest(state_); }
  void commit() { file_.commit(); }

 private:
  AtomicFile file_;
  XXH64_state_t* state_ = nullptr;
};

int64_t write_dump(const DynamicTable& table, const std::string& path, bool incremental,
                   uint64_t since) {
  const uint64_t step = table.step();
  TableRows rows =
      incremental
          ? table.export_rows([since](uint64_t, uint64_t, uint64_t stamp) { return stamp > since; })
          : table.export_rows();
  const int64_t n = rows.size(), dim = table.dim(), sd = table.state_dim();
  DumpWriter writer(path);
  std::string header;
  header.append(kMagic, sizeof(kMagic));
  put<uint32_t>(header, kTableDumpVersion);
  put<uint32_t>(header, incremental ? 1 : 0);
  put<uint32_t>(header, static_cast<uint32_t>(dim));
  put<uint32_t>(header, static_cast<uint32_t>(table.options().optimizer));
  put<uint32_t>(header, static_cast<uint32_t>(sd));
  put<uint32_t>(header, static_cast<uint32_t>(table.options().eviction));
  put<uint64_t>(header, incremental ? since : 0);
  put<uint64_t>(header, static_cast<uint64_t>(n));
  put<uint64_t>(header, step);
  put<uint64_t>(header, 0);  // reserved
  writer.write(header);
  std::string chunk;
  const int64_t rows_per_chunk = std::max<int64_t>(1, (1 << 20) / row_bytes(dim, sd));
  for (int64_t i = 0; i < n; ++i) {
    put<uint64_t>(chunk, rows.keys[i]);
    put<uint64_t>(chunk, rows.scores[i]);
    put<uint64_t>(chunk, rows.stamps[i]);
    chunk.append(reinterpret_cast<const char*>(&rows.values[i * dim]), 4 * dim);
    if (sd > 0) chunk.append(reinterpret_cast<const char*>(&rows.states[i * sd]), 4 * sd);
    if ((i + 1) % rows_per_chunk == 0 || i + 1 == n) {
      writer.write(chunk);
      chunk.clear();
    }
  }
  std::string trailer;
  put<uint64_t>(trailer, writer.digest());
  writer.write(trailer, false);
  writer.commit();
  return n;
}

}  // namespace

int64_t dump_table(const DynamicTable& table, const std::string& path) {
  return write_dump(table, path, false, 0);
}

int64_t dump_table_since(const DynamicTable& table, const std::string& path, uint64_t since_stamp) {
  return write_dump(table, path, true, since_stamp);
}

TableDump read_table_dump(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("table dump {}: cannot open: {}", path, std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("table dump {}: read failed", path);
  const uint64_t size = bytes.size();
  if (size < kHeaderBytes + kChecksumBytes) {
    fail("table dump {}: truncated: {} bytes, shorter than the {}-byte header and checksum", path,
         size, kHeaderBytes + kChecksumBytes);
  }
  const char* p = bytes.data();
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) {
    fail("table dump {}: not an embedding table dump (bad magic)", path);
  }
  TableDump dump;
  TableDumpInfo& info = dump.info;
  info.version = get<uint32_t>(p + 8);
  if (info.version != kTableDumpVersion) {
    fail("table dump {}: unsupported version {} (this build reads version {})", path, info.version,
         kTableDumpVersion);
  }
  const uint32_t kind = get<uint32_t>(p + 12), dim = get<uint32_t>(p + 16),
                 optimizer = get<uint32_t>(p + 20), state_dim = get<uint32_t>(p + 24),
                 eviction = get<uint32_t>(p + 28);
  info.since_stamp = get<uint64_t>(p + 32);
  const uint64_t count = get<uint64_t>(p + 40);
  info.step = get<uint64_t>(p + 48);
  const uint64_t rb = row_bytes(dim, state_dim);
  const uint64_t max_rows = (size - kHeaderBytes - kChecksumBytes) / rb;
  if (count > max_rows || kHeaderBytes + count * rb + kChecksumBytes != size) {
    if (count > max_rows) {
      fail(
          "table dump {}: truncated: the header promises {} rows of {} bytes, the file has {} "
          "bytes (room for {} rows)",
          path, count, rb, size, max_rows);
    }
    fail("table dump {}: {} unexpected trailing bytes after {} rows", path,
         size - (kHeaderBytes + count * rb + kChecksumBytes), count);
  }
  const uint64_t stored = get<uint64_t>(p + size - kChecksumBytes);
  const uint64_t computed = XXH64(p, size - kChecksumBytes, 0);
  if (stored != computed) {
    fail("table dump {}: checksum mismatch (stored {:016x}, computed {:016x}): the file is corrupt",
         path, stored, computed);
  }
  if (kind > 1) fail("table dump {}: bad dump kind {}", path, kind);
  if (optimizer > 2) fail("table dump {}: bad optimizer state kind {}", path, optimizer);
  if (eviction > 4) fail("table dump {}: bad eviction policy {}", path, eviction);
  info.incremental = kind == 1;
  info.dim = dim;
  info.optimizer = static_cast<OptimizerState>(optimizer);
  info.state_dim = state_dim;
  info.eviction = static_cast<EvictionPolicy>(eviction);
  info.count = static_cast<int64_t>(count);
  if (dim == 0 || optimizer_state_dim(info.optimizer, dim) != state_dim) {
    fail("table dump {}: inconsistent layout: dim {}, optimizer {}, state_dim {}", path, dim,
         optimizer_state_name(info.optimizer), state_dim);
  }
  TableRows& rows = dump.rows;
  rows.keys.resize(count);
  rows.scores.resize(count);
  rows.stamps.resize(count);
  rows.values.resize(count * dim);
  rows.states.resize(count * state_dim);
  const char* r = p + kHeaderBytes;
  for (uint64_t i = 0; i < count; ++i, r += rb) {
    rows.keys[i] = get<uint64_t>(r);
    rows.scores[i] = get<uint64_t>(r + 8);
    rows.stamps[i] = get<uint64_t>(r + 16);
    std::memcpy(&rows.values[i * dim], r + 24, 4 * dim);
    if (state_dim > 0) std::memcpy(&rows.states[i * state_dim], r + 24 + 4 * dim, 4 * state_dim);
    if (rows.keys[i] == kEmptyKey)
      fail("table dump {}: row {} has the reserved empty key", path, i);
  }
  return dump;
}

TableDumpInfo load_table(DynamicTable& table, const std::string& path) {
  TableDump dump = read_table_dump(path);
  if (dump.info.dim != table.dim() || dump.info.optimizer != table.options().optimizer) {
    fail(
        "table dump {}: layout dim {} / optimizer {} does not match the table's dim {} / "
        "optimizer {}",
        path, dump.info.dim, optimizer_state_name(dump.info.optimizer), table.dim(),
        optimizer_state_name(table.options().optimizer));
  }
  table.insert_rows(dump.rows);
  return dump.info;
}

}  // namespace genrec
