// Shard files: round trips, and every kind of damage reported with the file and the cause.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "data/shard.h"
#include "data/synthetic.h"

namespace genrec {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& name) {
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(testing::TempDir()) / "genrec_data_shard" / info->name();
  fs::create_directories(dir);
  return (dir / name).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

uint64_t u64_at(const std::string& bytes, size_t offset) {
  uint64_t v;
  std::memcpy(&v, bytes.data() + offset, 8);
  return v;
}

// Error message of `fn`, or "" when it does not throw genrec::Error.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_equal(const SequenceDataset& a, const SequenceDataset& b) {
  EXPECT_EQ(a.user_ids, b.user_ids);
  EXPECT_EQ(a.offsets, b.offsets);
  EXPECT_EQ(a.items, b.items);
  EXPECT_EQ(a.timestamps, b.timestamps);
  EXPECT_EQ(a.actions, b.actions);
  EXPECT_EQ(a.feature_names, b.feature_names);
  EXPECT_EQ(a.features, b.features);
}

SequenceDataset dataset_with_features(int64_t num_users) {
  SyntheticConfig config;
  config.num_users = num_users;
  config.num_items = 300;
  config.seed = 11;
  SequenceDataset ds = generate_synthetic(config);
  ds.feature_names = {"category", "price_bucket"};
  ds.features.assign(2, std::vector<int64_t>(ds.num_events()));
  for (int64_t e = 0; e < ds.num_events(); ++e) {
    ds.features[0][e] = ds.items[e] % 17 - 8;
    ds.features[1][e] = (ds.items[e] * 1000003) ^ (int64_t{1} << 62);
  }
  return ds;
}

TEST(DataShard, RoundTripWithFeaturesAcrossManyBlocks) {
  SequenceDataset ds = dataset_with_features(500);
  const std::string path = temp_path("features.grs");
  ShardWriteOptions options;
  options.events_per_block = 1000;  // ~15 blocks of whole users
  write_shard(path, ds, options);
  const std::string bytes = read_bytes(path);
  EXPECT_GT(u64_at(bytes, 32), 5u) << "expected several blocks";
  EXPECT_EQ(u64_at(bytes, 16), 500u);
  EXPECT_EQ(u64_at(bytes, 24), static_cast<uint64_t>(ds.num_events()));
  EXPECT_EQ(u64_at(bytes, 48), bytes.size());
  SequenceDataset back = read_shard(path);
  back.validate();
  expect_equal(ds, back);
}

TEST(DataShard, RoundTripDefaultOptionsSingleBlock) {
  SequenceDataset ds = dataset_with_features(50);
  const std::string path = temp_path("one.grs");
  write_shard(path, ds);
  EXPECT_EQ(u64_at(read_bytes(path), 32), 1u);
  expect_equal(ds, read_shard(path));
}

TEST(DataShard, RoundTripEmptyDatasetAndEmptyUsers) {
  SequenceDataset empty;
  const std::string path = temp_path("empty.grs");
  write_shard(path, empty);
  SequenceDataset back = read_shard(path);
  EXPECT_EQ(back.num_users(), 0);
  EXPECT_EQ(back.offsets, (std::vector<int64_t>{0}));
  back.validate();

  SequenceDataset sparse;
  sparse.feature_names = {"f"};
  sparse.add_user(-5, {}, {}, {}, {{}});
  sparse.add_user(6, {1, 2}, {10, 10}, {0, -1}, {{7, 8}});
  sparse.add_user(INT64_MAX, {}, {}, {}, {{}});
  ShardWriteOptions options;
  options.events_per_block = 1;  // one block per user, including the empty ones
  write_shard(path, sparse, options);
  EXPECT_EQ(u64_at(read_bytes(path), 32), 3u);
  expect_equal(sparse, read_shard(path));

  SequenceDataset only_empty;
  only_empty.add_user(1, {}, {}, {});
  only_empty.add_user(2, {}, {}, {});
  write_shard(path, only_empty);
  expect_equal(only_empty, read_shard(path));
}

TEST(DataShard, OverwritesAtomicallyWithoutLeavingTempFiles) {
  const std::string path = temp_path("data.grs");
  write_shard(path, dataset_with_features(20));
  SequenceDataset second = dataset_with_features(30);
  write_shard(path, second);
  expect_equal(second, read_shard(path));
  int files = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(path).parent_path())) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "data.grs");
  }
  EXPECT_EQ(files, 1);
  // An unwritable destination fails with the path in the message and leaves nothing behind.
  std::string message =
      error_of([&] { write_shard(temp_path("missing-dir/x.grs"), dataset_with_features(5)); });
  EXPECT_NE(message.find("missing-dir/x.grs"), std::string::npos) << message;
}

TEST(DataShard, WriteRejectsInvalidDataset) {
  SequenceDataset ds;
  ds.add_user(1, {1}, {1}, {0});
  ds.actions.push_back(3);
  EXPECT_THROW(write_shard(temp_path("bad.grs"), ds), Error);
  EXPECT_FALSE(fs::exists(temp_path("bad.grs")));
}

class DataShardDamage : public testing::Test {
 protected:
  void SetUp() override {
    path_ = temp_path("damaged.grs");
    ShardWriteOptions options;
    options.events_per_block = 500;
    write_shard(path_, dataset_with_features(200), options);
    bytes_ = read_bytes(path_);
    ASSERT_GT(u64_at(bytes_, 32), 4u);
  }
  // File offset and compressed size of block b (index entries follow the header and names).
  std::pair<uint64_t, uint64_t> block_extent(uint64_t b) const {
    size_t names = 0;
    uint32_t num_features;
    std::memcpy(&num_features, bytes_.data() + 12, 4);
    for (uint32_t f = 0; f < num_features; ++f) {
      uint32_t length;
      std::memcpy(&length, bytes_.data() + 64 + names, 4);
      names += 4 + length;
    }
    const size_t entry = 64 + names + 64 * b;
    return {u64_at(bytes_, entry), u64_at(bytes_, entry + 8)};
  }
  std::string read_error() const {
    return error_of([&] { read_shard(path_); });
  }
  std::string path_, bytes_;
};

TEST_F(DataShardDamage, FlippedBlockByteIsAChecksumMismatch) {
  auto [offset, size] = block_extent(3);
  for (uint64_t at : {offset, offset + size / 2, offset + size - 1}) {
    std::string damaged = bytes_;
    damaged[at] ^= 0x20;
    write_bytes(path_, damaged);
    std::string message = read_error();
    EXPECT_NE(message.find("damaged.grs: block 3 checksum mismatch"), std::string::npos) << message;
  }
}

TEST_F(DataShardDamage, FlippedHeaderOrIndexByteIsAHeaderChecksumMismatch) {
  for (size_t at : {size_t{20}, size_t{70}, static_cast<size_t>(u64_at(bytes_, 40) - 9)}) {
    std::string damaged = bytes_;
    damaged[at] ^= 0x01;
    write_bytes(path_, damaged);
    std::string message = read_error();
    EXPECT_NE(message.find("damaged.grs: header checksum mismatch"), std::string::npos)
        << "byte " << at << ": " << message;
  }
}

TEST_F(DataShardDamage, TruncationIsReported) {
  // Inside the last block, inside the index, inside the fixed header, and an empty file.
  const uint64_t data_offset = u64_at(bytes_, 40);
  for (size_t keep :
       {bytes_.size() - 1, static_cast<size_t>(data_offset - 20), size_t{40}, size_t{0}}) {
    write_bytes(path_, bytes_.substr(0, keep));
    std::string message = read_error();
    EXPECT_NE(message.find("damaged.grs"), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << "kept " << keep << ": " << message;
  }
}

TEST_F(DataShardDamage, TrailingBytesAreReported) {
  write_bytes(path_, bytes_ + "xyz");
  EXPECT_NE(read_error().find("3 unexpected bytes after the last block"), std::string::npos)
      << read_error();
}

TEST_F(DataShardDamage, WrongMagicIsReported) {
  std::string damaged = bytes_;
  damaged[0] = 'X';
  write_bytes(path_, damaged);
  EXPECT_NE(read_error().find("damaged.grs: wrong magic"), std::string::npos) << read_error();
  write_bytes(path_, "user_id,item_id,timestamp\n1,2,3\n4,5,6\n7,8,9\n10,11,12\n13,14,15\n");
  EXPECT_NE(read_error().find("wrong magic"), std::string::npos) << read_error();
}

TEST_F(DataShardDamage, FutureVersionIsReported) {
  std::string damaged = bytes_;
  const uint32_t version = kShardFormatVersion + 1;
  std::memcpy(damaged.data() + 8, &version, 4);
  write_bytes(path_, damaged);
  std::string message = read_error();
  EXPECT_NE(message.find(fmt::format("damaged.grs: format version {} is newer", version)),
            std::string::npos)
      << message;
}

TEST(DataShard, MissingFileIsReported) {
  std::string message = error_of([] { read_shard("/nonexistent/nothing.grs"); });
  EXPECT_NE(message.find("/nonexistent/nothing.grs: cannot open"), std::string::npos) << message;
  const std::string dir = temp_path("folder.grs");
  fs::create_directories(dir);
  message = error_of([&] { read_shard(dir); });
  EXPECT_NE(message.find("folder.grs: not a regular file"), std::string::npos) << message;
}

}  // namespace
}  // namespace genrec
