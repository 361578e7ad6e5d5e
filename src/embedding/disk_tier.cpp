// Record value: score (u64), stamp (u64), values (dim f32), state (state_dim f32), all
// little-endian like the dump files; the key is the 8-byte big-endian id.
#include "embedding/disk_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <vector>

#include "core/byte_io.h"
#include "core/error.h"

namespace genrec {
namespace {

constexpr size_t kKeyBytes = 8;
constexpr size_t kRowHeaderBytes = 16;  // score, stamp

size_t record_bytes(int64_t dim, int64_t state_dim) {
  return kRowHeaderBytes + 4 * (dim + state_dim);
}

std::string encode_key(uint64_t key) {
  std::string out(kKeyBytes, '\0');
  for (size_t i = 0; i < kKeyBytes; ++i) out[i] = static_cast<char>(key >> (56 - 8 * i));
  return out;
}

uint64_t decode_key(const rocksdb::Slice& bytes) {
  uint64_t key = 0;
  for (size_t i = 0; i < kKeyBytes; ++i) key = key << 8 | static_cast<uint8_t>(bytes[i]);
  return key;
}

void check(const rocksdb::Status& status, const std::string& path, const char* what) {
  if (!status.ok()) fail("disk tier '{}': {} failed: {}", path, what, status.ToString());
}

// Appends the row of one record; memcpy because the value bytes need not be float-aligned.
void append_record(TableRows& rows, uint64_t key, const char* p, int64_t dim, int64_t state_dim) {
  rows.keys.push_back(key);
  rows.scores.push_back(get<uint64_t>(p));
  rows.stamps.push_back(get<uint64_t>(p + 8));
  const size_t v = rows.values.size(), s = rows.states.size();
  rows.values.resize(v + dim);
  std::memcpy(rows.values.data() + v, p + kRowHeaderBytes, 4 * dim);
  rows.states.resize(s + state_dim);
  if (state_dim > 0)
    std::memcpy(rows.states.data() + s, p + kRowHeaderBytes + 4 * dim, 4 * state_dim);
}

rocksdb::Options db_options() {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.compression = rocksdb::kNoCompression;  // float rows barely compress
  options.avoid_flush_during_shutdown = true;     // the database is deleted right after
  // One insert hint for every key (an empty prefix): a sorted write batch then extends the
  // previous key's skiplist position instead of searching from the top for each key.
  options.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(0));
  // Most lookups that reach the disk are new keys: a Bloom filter skips reading their blocks.
  rocksdb::BlockBasedTableOptions table;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return options;
}

// Positions of keys[0, n) in increasing key order, which is the store's (big-endian) byte
// order: the memtable inserts a sorted write batch by extending one search path and MultiGet
// walks each file once for sorted keys, where random order searches from the top every time.
std::vector<int64_t> key_order(const uint64_t* keys, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  return order;
}

rocksdb::WriteOptions write_options() {
  rocksdb::WriteOptions options;
  options.disableWAL = true;  // a scratch store: nothing is recovered after a crash
  return options;
}

}  // namespace

// The records of a batch in key order: entry x is key keys_in[order[x]].
struct DiskTier::Records {
  std::vector<int64_t> order;
  std::vector<std::string> keys;  // encoded
  std::vector<rocksdb::PinnableSlice> values;
  std::vector<uint8_t> found;
};

DiskTier::DiskTier(const std::string& path, int64_t dim, int64_t state_dim)
    : path_(path), dim_(dim), state_dim_(state_dim) {
  GENREC_CHECK(dim > 0 && state_dim >= 0, "disk tier '{}': bad row shape (dim {}, state {})", path,
               dim, state_dim);
  const rocksdb::Options options = db_options();
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    check(rocksdb::DestroyDB(path, options), path, "clearing the previous database");
  }
  rocksdb::DB* db = nullptr;
  check(rocksdb::DB::Open(options, path, &db), path, "opening the database");
  db_.reset(db);
}

DiskTier::~DiskTier() {
  db_.reset();
  // Best effort: a failure leaves files that the next open at this path deletes.
  rocksdb::DestroyDB(path_, db_options()).PermitUncheckedError();
}

void DiskTier::put(const TableRows& rows) {
  const int64_t n = rows.size();
  GENREC_CHECK(static_cast<int64_t>(rows.values.size()) == n * dim_ &&
                   static_cast<int64_t>(rows.states.size()) == n * state_dim_,
               "disk tier '{}': rows do not have dim {} and state dim {}", path_, dim_, state_dim_);
  if (n == 0) return;
  rocksdb::WriteBatch batch;
  std::string value;
  for (int64_t i : key_order(rows.keys.data(), n)) {
    value.clear();
    genrec::put<uint64_t>(value, rows.scores[i]);
    genrec::put<uint64_t>(value, rows.stamps[i]);
    put_array(value, &rows.values[i * dim_], dim_);
    put_array(value, rows.states.data() + i * state_dim_, state_dim_);
    check(batch.Put(encode_key(rows.keys[i]), value), path_, "batching a write");
  }
  check(db_->Write(write_options(), &batch), path_, "writing rows");
  size_ += n;
}

DiskTier::Records DiskTier::read(const uint64_t* keys, int64_t n) const {
  Records r;
  r.order = key_order(keys, n);
  r.keys.resize(n);
  r.values.resize(n);
  r.found.assign(n, 0);
  std::vector<rocksdb::Slice> slices(n);
  for (int64_t x = 0; x < n; ++x) {
    r.keys[x] = encode_key(keys[r.order[x]]);
    slices[x] = r.keys[x];
  }
  std::vector<rocksdb::Status> statuses(n);
  db_->MultiGet(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), n, slices.data(),
                r.values.data(), statuses.data(), /*sorted_input=*/true);
  const size_t bytes = record_bytes(dim_, state_dim_);
  for (int64_t x = 0; x < n; ++x) {
    if (statuses[x].IsNotFound()) continue;
    check(statuses[x], path_, "reading rows");
    GENREC_CHECK(r.values[x].size() == bytes,
                 "disk tier '{}': the record of key {} has {} bytes, expected {}", path_,
                 keys[r.order[x]], r.values[x].size(), bytes);
    r.found[x] = 1;
  }
  return r;
}

TableRows DiskTier::take(const uint64_t* keys, int64_t n) {
  TableRows rows;
  if (n == 0) return rows;
  Records r = read(keys, n);
  rocksdb::WriteBatch batch;
  for (int64_t x = 0; x < n; ++x) {
    if (!r.found[x]) continue;
    append_record(rows, keys[r.order[x]], r.values[x].data(), dim_, state_dim_);
    check(batch.Delete(r.keys[x]), path_, "batching a delete");
  }
  if (rows.size() == 0) return rows;
  check(db_->Write(write_options(), &batch), path_, "deleting rows");
  size_ -= rows.size();
  return rows;
}

void DiskTier::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const {
  if (n == 0) return;
  Records r = read(keys, n);
  for (int64_t x = 0; x < n; ++x) {
    const int64_t i = r.order[x];
    found[i] = r.found[x];
    if (r.found[x])
      std::memcpy(values_out + i * dim_, r.values[x].data() + kRowHeaderBytes, 4 * dim_);
  }
}

TableRows DiskTier::export_rows() const {
  TableRows rows;
  const size_t bytes = record_bytes(dim_, state_dim_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key(), value = it->value();
    GENREC_CHECK(key.size() == kKeyBytes && value.size() == bytes,
                 "disk tier '{}': a record has a {}-byte key and {}-byte value, expected {} and {}",
                 path_, key.size(), value.size(), kKeyBytes, bytes);
    append_record(rows, decode_key(key), value.data(), dim_, state_dim_);
  }
  check(it->status(), path_, "iterating rows");
  return rows;
}

}  // namespace genrec
