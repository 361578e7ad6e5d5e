// Real public data, when present: $GENREC_SHARED_DATA, else ../shared/data next to the source
// tree. Skipped when the files are absent (the product never needs them).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "data/batcher.h"
#include "data/converters.h"
#include "data/shard.h"

namespace genrec {
namespace {

namespace fs = std::filesystem;

fs::path shared_data_dir() {
  if (const char* env = std::getenv("GENREC_SHARED_DATA"); env != nullptr && *env != '\0') {
    return env;
  }
  // This file is <source>/tests/test_data_shared.cpp; the data lives in <source>/../shared/data.
  return fs::path(__FILE__).parent_path().parent_path().parent_path() / "shared" / "data";
}

TEST(DataShared, MovieLens100K) {
  const fs::path path = shared_data_dir() / "ml-100k" / "u.data";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found (set GENREC_SHARED_DATA)";
  SequenceDataset ds = read_any(path.string());
  ds.validate();
  EXPECT_EQ(ds.num_users(), 943);
  EXPECT_EQ(ds.num_events(), 100000);
  EXPECT_EQ(ItemVocabulary::build(ds).size(), 1682);
  for (int64_t u = 0; u < ds.num_users(); ++u) {
    for (int64_t e = ds.offsets[u] + 1; e < ds.offsets[u + 1]; ++e) {
      ASSERT_TRUE(ds.timestamps[e - 1] < ds.timestamps[e] ||
                  (ds.timestamps[e - 1] == ds.timestamps[e] && ds.items[e - 1] < ds.items[e]));
    }
  }
  // Every ML-100K user has at least 20 ratings, so every user is in every split.
  EXPECT_EQ(leave_one_out_windows(ds, Split::kTrain, 200).size(), 943u);
  const std::string shard = (fs::path(testing::TempDir()) / "ml-100k.grs").string();
  write_shard(shard, ds);
  SequenceDataset back = read_shard(shard);
  EXPECT_EQ(back.items, ds.items);
  EXPECT_EQ(back.timestamps, ds.timestamps);
  EXPECT_EQ(back.actions, ds.actions);
}

TEST(DataShared, AmazonBeauty) {
  const fs::path path = shared_data_dir() / "amazon-beauty" / "Beauty.txt";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found (set GENREC_SHARED_DATA)";
  SequenceDataset ds = read_any(path.string());
  ds.validate();
  EXPECT_EQ(ds.num_users(), 22363);
  EXPECT_EQ(ds.num_events(), 198502);
  EXPECT_EQ(ItemVocabulary::build(ds).size(), 12101);
}

}  // namespace
}  // namespace genrec
