// Binary shard (.grs) of a SequenceDataset: a checksummed header and block index followed by
// zstd-compressed blocks of whole users. The byte layout is specified in docs/FORMATS.md.
#pragma once

#include <cstdint>
#include <string>

#include "data/sequence_dataset.h"

namespace genrec {

inline constexpr uint32_t kShardFormatVersion = 1;

struct ShardWriteOptions {
  // A block holds whole users and is closed once it holds at least this many events (or this
  // many users), so one very long user makes one large block of its own.
  int64_t events_per_block = 65536;
  int compression_level = 3;  // zstd level, 1 (fast) .. 19 (small)
};

// Writes `dataset` (validated first) to `path` atomically: to a temporary file in the same
// directory, flushed to disk, then renamed over `path`.
void write_shard(const std::string& path, const SequenceDataset& dataset,
                 const ShardWriteOptions& options = {});

// Reads a shard through a read-only memory map, checking magic, version, sizes and every
// checksum; any problem throws an Error naming the file and what is wrong.
SequenceDataset read_shard(const std::string& path);

}  // namespace genrec
