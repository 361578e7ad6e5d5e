// The whole file is checked (size against the header's count, then the trailing XXH64) before
// any row is trusted, so a truncated or corrupted dump fails with a message naming the file
// and never loads half its rows.
#include "embedding/table_dump.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <utility>

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

// The header of a dump of `table`'s rows: its layout and step.
TableDumpInfo info_of(const DynamicTable& table, bool incremental, uint64_t since) {
  const TableOptions& o = table.options();
  return table_dump_info(o.dim, o.optimizer, o.eviction, table.step(), incremental, since);
}

// What a dump holds: rows sorted by key, tombstones, and the layout and step of the table they
// come from.
TableDump content_of(const DynamicTable& table, bool incremental, uint64_t since) {
  if (!incremental) return {info_of(table, false, 0), table.export_rows(), {}};
  TableDump dump{
      info_of(table, true, since),
      table.export_rows([since](uint64_t, uint64_t, uint64_t stamp) { return stamp > since; }),
      table.removed_since(since)};
  std::vector<uint8_t> present(dump.removed.size());
  table.contains(dump.removed.data(), static_cast<int64_t>(dump.removed.size()), present.data());
  dump.removed = absent_keys(std::move(dump.removed), present);
  return dump;
}

// All tiers' rows (the hot tier's layout and step).
TableDump content_of(const TieredTable& table, bool incremental, uint64_t since) {
  return dump_of_rows(info_of(table.hot(), incremental, since), table.export_rows(),
                      incremental ? table.removed_since(since) : std::vector<uint64_t>{});
}

// Emits a dump in pieces (header, chunks of about 1 MB of rows, checksum) to `write`, so a
// file is written without holding all its bytes. The header takes the layout, kind, since stamp
// and step of dump.info and the counts of dump.rows and dump.removed.
int64_t emit_dump(const TableDump& dump, const std::function<void(const std::string&)>& write) {
  const TableDumpInfo& info = dump.info;
  const TableRows& rows = dump.rows;
  const int64_t n = rows.size(), dim = info.dim, sd = info.state_dim;
  GENREC_CHECK(dim > 0 && sd == optimizer_state_dim(info.optimizer, dim),
               "table dump: inconsistent layout: dim {}, optimizer {}, state_dim {}", dim,
               optimizer_state_name(info.optimizer), sd);
  GENREC_CHECK(static_cast<int64_t>(rows.values.size()) == n * dim &&
                   static_cast<int64_t>(rows.states.size()) == n * sd &&
                   static_cast<int64_t>(rows.scores.size()) == n &&
                   static_cast<int64_t>(rows.stamps.size()) == n,
               "table dump: {} rows of dim {} and state_dim {} need {} values, {} states, {} "
               "scores and stamps; got {}, {}, {}, {}",
               n, dim, sd, n * dim, n * sd, n, rows.values.size(), rows.states.size(),
               rows.scores.size(), rows.stamps.size());
  std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> hash(XXH64_createState(),
                                                                  &XXH64_freeState);
  XXH64_reset(hash.get(), 0);
  auto hashed = [&](const std::string& bytes) {
    XXH64_update(hash.get(), bytes.data(), bytes.size());
    write(bytes);
  };
  std::string header;
  header.append(kMagic, sizeof(kMagic));
  put<uint32_t>(header, kTableDumpVersion);
  put<uint32_t>(header, info.incremental ? 1 : 0);
  put<uint32_t>(header, static_cast<uint32_t>(dim));
  put<uint32_t>(header, static_cast<uint32_t>(info.optimizer));
  put<uint32_t>(header, static_cast<uint32_t>(sd));
  put<uint32_t>(header, static_cast<uint32_t>(info.eviction));
  put<uint64_t>(header, info.incremental ? info.since_stamp : 0);
  put<uint64_t>(header, static_cast<uint64_t>(n));
  put<uint64_t>(header, info.step);
  put<uint64_t>(header, dump.removed.size());
  hashed(header);
  std::string chunk;
  const int64_t rows_per_chunk = std::max<int64_t>(1, (1 << 20) / row_bytes(dim, sd));
  for (int64_t i = 0; i < n; ++i) {
    put<uint64_t>(chunk, rows.keys[i]);
    put<uint64_t>(chunk, rows.scores[i]);
    put<uint64_t>(chunk, rows.stamps[i]);
    chunk.append(reinterpret_cast<const char*>(&rows.values[i * dim]), 4 * dim);
    if (sd > 0) chunk.append(reinterpret_cast<const char*>(&rows.states[i * sd]), 4 * sd);
    if ((i + 1) % rows_per_chunk == 0 || i + 1 == n) {
      hashed(chunk);
      chunk.clear();
    }
  }
  std::string tombstones;
  for (uint64_t key : dump.removed) put<uint64_t>(tombstones, key);
  hashed(tombstones);
  std::string trailer;
  put<uint64_t>(trailer, XXH64_digest(hash.get()));
  write(trailer);
  return n;
}

void check_layout(const TableDumpInfo& info, const DynamicTable& table, const std::string& path) {
  check_table_dump_layout(info, table.dim(), table.options().optimizer, path);
}

}  // namespace

TableDumpInfo table_dump_info(int64_t dim, OptimizerState optimizer, EvictionPolicy eviction,
                              uint64_t step, bool incremental, uint64_t since_stamp) {
  TableDumpInfo info;
  info.incremental = incremental;
  info.dim = dim;
  info.optimizer = optimizer;
  info.state_dim = optimizer_state_dim(optimizer, dim);
  info.eviction = eviction;
  info.since_stamp = incremental ? since_stamp : 0;
  info.step = step;
  return info;
}

TableDump dump_of_rows(const TableDumpInfo& info, TableRows all,
                       const std::vector<uint64_t>& removed) {
  if (!info.incremental) return {info, std::move(all), {}};
  TableDump dump{info, {}, {}};
  for (int64_t i = 0; i < all.size(); ++i) {
    if (all.stamps[i] > info.since_stamp) dump.rows.append_row(all, i);
  }
  for (uint64_t key : removed) {
    if (!std::binary_search(all.keys.begin(), all.keys.end(), key)) dump.removed.push_back(key);
  }
  return dump;
}

std::vector<uint64_t> absent_keys(std::vector<uint64_t> removed,
                                  const std::vector<uint8_t>& present) {
  size_t kept = 0;
  for (size_t i = 0; i < removed.size(); ++i) {
    if (!present[i]) removed[kept++] = removed[i];
  }
  removed.resize(kept);
  return removed;
}

int64_t write_table_dump(const TableDump& dump, const std::string& path) {
  AtomicFile file(path, "table dump");
  const int64_t n =
      emit_dump(dump, [&](const std::string& bytes) { file.write(bytes.data(), bytes.size()); });
  file.commit();
  return n;
}

void check_table_dump_layout(const TableDumpInfo& info, int64_t dim, OptimizerState optimizer,
                             const std::string& path) {
  if (info.dim != dim || info.optimizer != optimizer) {
    fail(
        "table dump {}: layout dim {} / optimizer {} does not match the table's dim {} / "
        "optimizer {}",
        path, info.dim, optimizer_state_name(info.optimizer), dim, optimizer_state_name(optimizer));
  }
}

int64_t dump_table(const DynamicTable& table, const std::string& path) {
  return write_table_dump(content_of(table, false, 0), path);
}

int64_t dump_table_since(const DynamicTable& table, const std::string& path, uint64_t since_stamp) {
  return write_table_dump(content_of(table, true, since_stamp), path);
}

int64_t dump_table(const TieredTable& table, const std::string& path) {
  return write_table_dump(content_of(table, false, 0), path);
}

int64_t dump_table_since(const TieredTable& table, const std::string& path, uint64_t since_stamp) {
  return write_table_dump(content_of(table, true, since_stamp), path);
}

std::string table_dump_bytes(const DynamicTable& table) {
  std::string bytes;
  emit_dump(content_of(table, false, 0), [&](const std::string& piece) { bytes += piece; });
  return bytes;
}

TableDump read_table_dump(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("table dump {}: cannot open: {}", path, std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("table dump {}: read failed", path);
  return parse_table_dump(bytes, path);
}

TableDump parse_table_dump(const std::string& bytes, const std::string& path) {
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
  if (info.version < 1 || info.version > kTableDumpVersion) {
    fail("table dump {}: unsupported version {} (this build reads versions 1 to {})", path,
         info.version, kTableDumpVersion);
  }
  const uint32_t kind = get<uint32_t>(p + 12), dim = get<uint32_t>(p + 16),
                 optimizer = get<uint32_t>(p + 20), state_dim = get<uint32_t>(p + 24),
                 eviction = get<uint32_t>(p + 28);
  info.since_stamp = get<uint64_t>(p + 32);
  const uint64_t count = get<uint64_t>(p + 40);
  info.step = get<uint64_t>(p + 48);
  const uint64_t removed = info.version >= 2 ? get<uint64_t>(p + 56) : 0;  // 1: reserved
  const uint64_t rb = row_bytes(dim, state_dim);
  const uint64_t room = size - kHeaderBytes - kChecksumBytes;
  const uint64_t max_rows = room / rb;
  const bool fits = count <= max_rows && removed <= (room - count * rb) / 8;
  if (!fits || kHeaderBytes + count * rb + 8 * removed + kChecksumBytes != size) {
    if (!fits) {
      fail(
          "table dump {}: truncated: the header promises {} rows of {} bytes and {} tombstones, "
          "the file has {} bytes",
          path, count, rb, removed, size);
    }
    fail("table dump {}: {} unexpected trailing bytes after {} rows and {} tombstones", path,
         size - (kHeaderBytes + count * rb + 8 * removed + kChecksumBytes), count, removed);
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
  dump.removed.resize(removed);
  for (uint64_t i = 0; i < removed; ++i, r += 8) dump.removed[i] = get<uint64_t>(r);
  if (removed > 0 && !info.incremental) fail("table dump {}: a full dump with tombstones", path);
  return dump;
}

TableDumpInfo load_table(DynamicTable& table, const std::string& path) {
  const TableDump dump = read_table_dump(path);
  restore_table(table, dump, path);
  return dump.info;
}

void restore_table(DynamicTable& table, const TableDump& dump, const std::string& path) {
  check_layout(dump.info, table, path);
  // Tombstones first: their room may be what a bounded table needs for the rows.
  table.erase(dump.removed.data(), static_cast<int64_t>(dump.removed.size()));
  table.insert_rows(dump.rows);
}

TableDumpInfo load_table(TieredTable& table, const std::string& path) {
  const TableDump dump = read_table_dump(path);
  check_layout(dump.info, table.hot(), path);
  table.erase(dump.removed.data(), static_cast<int64_t>(dump.removed.size()));
  table.insert_rows(dump.rows);
  return dump.info;
}

}  // namespace genrec
