// Dump files of a CudaDynamicTable or a CudaTieredTable, in the format of embedding/table_dump.h
// (which writes and reads them for both tables): a dump of a CUDA table loads into a DynamicTable
// and the other way round, full or incremental. The rows pass through the host: export_rows (sorted
// by key, with scores and stamps) for a dump, the host insert_rows for a load. Incremental dumps
// carry as tombstones the keys the table removed since (removed_since) and does not hold now, as
// the CPU tables' do; loads erase a dump's tombstones before inserting its rows
// (CudaDynamicTable::erase and CudaTieredTable::erase of host keys).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/cuda/cuda_tiered_table.h"
#include "embedding/table_dump.h"

namespace genrec::cuda {

// Writes every row; returns the number of rows written. Synchronizes.
int64_t dump_table(const CudaDynamicTable& table, const std::string& path,
                   cudaStream_t stream = nullptr);
// Writes the rows whose stamp is greater than since_stamp, and as tombstones the keys the table
// removed at a later step and does not hold now. Synchronizes.
int64_t dump_table_since(const CudaDynamicTable& table, const std::string& path,
                         uint64_t since_stamp, cudaStream_t stream = nullptr);
// Validates the whole file, then inserts or overwrites its rows exactly (values, states, scores,
// stamps; other rows are kept unless a full bucket evicts them, the step is not changed), so a
// full dump followed by its incremental dumps restores the table. The table must have the dump's
// dim and optimizer state, and room for every row: a row whose 128-slot bucket fills with the
// dump's rows is an error (raised once the rows that fit are in). Synchronizes.
TableDumpInfo load_table(CudaDynamicTable& table, const std::string& path,
                         cudaStream_t stream = nullptr);

// The same for a CudaTieredTable: one dump of the rows of every tier, with the hot tier's layout
// and step; a load puts the rows below hot (CudaTieredTable::insert_rows), overwriting the keys
// any tier holds, so that they move to hot as they are looked up.
int64_t dump_table(const CudaTieredTable& table, const std::string& path,
                   cudaStream_t stream = nullptr);
int64_t dump_table_since(const CudaTieredTable& table, const std::string& path,
                         uint64_t since_stamp, cudaStream_t stream = nullptr);
TableDumpInfo load_table(CudaTieredTable& table, const std::string& path,
                         cudaStream_t stream = nullptr);

}  // namespace genrec::cuda
