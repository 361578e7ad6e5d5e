#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/cuda_table_dump.h"

#include <limits>
#include <utility>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/error.h"

namespace genrec::cuda {
namespace {

// The keys of `keys` that the table does not hold now: an incremental dump's tombstones.
std::vector<uint64_t> absent_from(const CudaDynamicTable& table, std::vector<uint64_t> keys,
                                  cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(keys.size());
  if (n == 0) return keys;
  DeviceBuffer<uint64_t> d_keys(n, stream);
  DeviceBuffer<uint8_t> d_present(n, stream);
  GENREC_CUDA_CHECK(cudaMemcpyAsync(d_keys.data(), keys.data(), sizeof(uint64_t) * n,
                                    cudaMemcpyHostToDevice, stream));
  table.contains(d_keys.data(), n, d_present.data(), stream);
  std::vector<uint8_t> present(n);
  GENREC_CUDA_CHECK(
      cudaMemcpyAsync(present.data(), d_present.data(), n, cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  return absent_keys(std::move(keys), present);
}

TableDump content_of(const CudaDynamicTable& table, bool incremental, uint64_t since,
                     cudaStream_t stream) {
  const CudaTableOptions& o = table.options();
  TableDump dump;
  dump.info = table_dump_info(o.dim, o.optimizer, o.eviction, table.step(), incremental, since);
  if (!incremental) {
    dump.rows = table.export_rows(0, stream);
    return dump;
  }
  // Rows with stamp > since are those with stamp >= since + 1; none is above the largest stamp.
  if (since < std::numeric_limits<uint64_t>::max()) {
    dump.rows = table.export_rows(0, stream, since + 1);
  }
  dump.removed = absent_from(table, table.removed_since(since, stream), stream);
  return dump;
}

// Every tier's rows (the hot tier's layout and step).
TableDump content_of(const CudaTieredTable& table, bool incremental, uint64_t since,
                     cudaStream_t stream) {
  const CudaTableOptions& o = table.hot().options();
  return dump_of_rows(
      table_dump_info(o.dim, o.optimizer, o.eviction, table.step(), incremental, since),
      table.export_rows(stream),
      incremental ? table.removed_since(since) : std::vector<uint64_t>{});
}

// Reads a dump for a table of this dim and optimizer state; its keys must be distinct (the CUDA
// inserts need that), and a dump's are sorted.
TableDump read_distinct_rows(const std::string& path, int64_t dim, OptimizerState optimizer) {
  TableDump dump = read_table_dump(path);
  check_table_dump_layout(dump.info, dim, optimizer, path);
  const TableRows& rows = dump.rows;
  for (int64_t i = 1; i < rows.size(); ++i) {
    if (rows.keys[i] <= rows.keys[i - 1]) {
      fail("table dump {}: row {} (key {}) is not above the previous key {}", path, i, rows.keys[i],
           rows.keys[i - 1]);
    }
  }
  return dump;
}

}  // namespace

int64_t dump_table(const CudaDynamicTable& table, const std::string& path, cudaStream_t stream) {
  return write_table_dump(content_of(table, false, 0, stream), path);
}

int64_t dump_table_since(const CudaDynamicTable& table, const std::string& path,
                         uint64_t since_stamp, cudaStream_t stream) {
  return write_table_dump(content_of(table, true, since_stamp, stream), path);
}

TableDumpInfo load_table(CudaDynamicTable& table, const std::string& path, cudaStream_t stream) {
  const TableDump dump = read_distinct_rows(path, table.dim(), table.options().optimizer);
  const TableRows& rows = dump.rows;
  table.erase(dump.removed, stream);  // first: their room may be what the rows need
  const int64_t stored = table.insert_rows(rows, stream);
  if (stored != rows.size()) {
    fail(
        "table dump {}: {} of {} rows did not fit the CUDA table ({} slots): their 128-slot "
        "buckets filled with rows of the dump",
        path, rows.size() - stored, rows.size(), table.capacity());
  }
  return dump.info;
}

int64_t dump_table(const CudaTieredTable& table, const std::string& path, cudaStream_t stream) {
  return write_table_dump(content_of(table, false, 0, stream), path);
}

int64_t dump_table_since(const CudaTieredTable& table, const std::string& path,
                         uint64_t since_stamp, cudaStream_t stream) {
  return write_table_dump(content_of(table, true, since_stamp, stream), path);
}

TableDumpInfo load_table(CudaTieredTable& table, const std::string& path, cudaStream_t stream) {
  const CudaTableOptions& o = table.hot().options();
  const TableDump dump = read_distinct_rows(path, o.dim, o.optimizer);
  table.erase(dump.removed, stream);
  table.insert_rows(dump.rows, stream);
  return dump.info;
}

}  // namespace genrec::cuda
