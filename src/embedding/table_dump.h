// Dump files of a DynamicTable (or of all tiers of a TieredTable): a 64-byte header, fixed-size
// rows (key, score, stamp, values, optimizer state) and an XXH64 of everything before it, written
// to a temporary file that is renamed over the target, so a reader sees either the old file or the
// complete new one. An incremental dump holds the rows whose stamp is after a given stamp and
// the keys the table removed since then (tombstones; loading erases them). docs/EMBEDDING.md
// specifies the format. The CUDA table's dumps
// (embedding/cuda/cuda_table_dump.h) write and read the same files through the row-level
// functions at the end.
#pragma once

#include <cstdint>
#include <string>

#include "embedding/dynamic_table.h"
#include "embedding/tiered_table.h"

namespace genrec {

constexpr uint32_t kTableDumpVersion = 2;  // 1 (no tombstones) is still read

struct TableDumpInfo {
  uint32_t version = kTableDumpVersion;
  bool incremental = false;
  int64_t dim = 0;
  OptimizerState optimizer = OptimizerState::kNone;
  int64_t state_dim = 0;
  EvictionPolicy eviction = EvictionPolicy::kLru;
  uint64_t since_stamp = 0;  // incremental: rows with stamp > since_stamp
  uint64_t step = 0;         // the table's step when dumped
  int64_t count = 0;         // rows
};

struct TableDump {
  TableDumpInfo info;
  TableRows rows;                 // sorted by key
  std::vector<uint64_t> removed;  // incremental: keys removed since since_stamp, sorted
};

// Writes every row; returns the number of rows written.
int64_t dump_table(const DynamicTable& table, const std::string& path);
// Writes the rows whose update stamp is greater than since_stamp, and as tombstones the keys the
// table removed at a later step and does not hold now (DynamicTable::removed_since).
int64_t dump_table_since(const DynamicTable& table, const std::string& path, uint64_t since_stamp);
// Reads and validates a dump (magic, version, size, checksum, layout); errors name the file.
TableDump read_table_dump(const std::string& path);
// Inserts or overwrites the dump's rows in `table` exactly (values, states, scores, stamps) and
// erases its tombstones; other rows are kept, so a full dump followed by its incremental dumps
// restores the table.
// The table must have the dump's dim and optimizer state; its step is left unchanged.
TableDumpInfo load_table(DynamicTable& table, const std::string& path);

// The same for a TieredTable: one dump of the rows of every tier (hot, host, cold) in the same
// format, with the hot tier's layout and step; a load puts the rows below hot (host, then the
// cold tier), overwriting the keys it holds anywhere, and errors when a host without a cold
// tier cannot hold them.
int64_t dump_table(const TieredTable& table, const std::string& path);
int64_t dump_table_since(const TieredTable& table, const std::string& path, uint64_t since_stamp);
TableDumpInfo load_table(TieredTable& table, const std::string& path);

// The same in memory, for dumps kept inside another file (checkpoints): the bytes of a full
// dump, their parsing (`name` stands for the file in errors) and the exact restore.
std::string table_dump_bytes(const DynamicTable& table);
TableDump parse_table_dump(const std::string& bytes, const std::string& name);
void restore_table(DynamicTable& table, const TableDump& dump, const std::string& name);

// The format for tables defined elsewhere. The header of a dump of a table of this layout and
// step (state_dim follows from optimizer and dim; since_stamp only for incremental dumps).
TableDumpInfo table_dump_info(int64_t dim, OptimizerState optimizer, EvictionPolicy eviction,
                              uint64_t step, bool incremental, uint64_t since_stamp);
// The dump of a table whose rows (sorted by key) are `all`, under `info`: every row, or for an
// incremental info those with stamp > info.since_stamp and as tombstones the keys of `removed`
// (sorted; removed since then) that `all` lacks. The tiered tables' dumps are built so.
TableDump dump_of_rows(const TableDumpInfo& info, TableRows all,
                       const std::vector<uint64_t>& removed = {});
// The keys of `removed` whose `present` flag is 0, in order: an incremental dump's tombstones
// when present[i] says whether the table holds removed[i] now (a removed key may be back).
std::vector<uint64_t> absent_keys(std::vector<uint64_t> removed,
                                  const std::vector<uint8_t>& present);
// Writes dump.rows (sorted by key) under the header of dump.info (its count and version are
// ignored: the rows' and this build's); returns the number of rows written.
int64_t write_table_dump(const TableDump& dump, const std::string& path);
// Errors, naming the file, unless the dump's dim and optimizer state are the table's.
void check_table_dump_layout(const TableDumpInfo& info, int64_t dim, OptimizerState optimizer,
                             const std::string& name);

}  // namespace genrec
