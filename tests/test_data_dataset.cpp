// SequenceDataset construction and validation, and the item vocabulary.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/sequence_dataset.h"

namespace genrec {
namespace {

TEST(DataSequenceDataset, AddUserBuildsCsrColumns) {
  SequenceDataset ds;
  ds.feature_names = {"genre"};
  ds.add_user(7, {10, 11}, {100, 200}, {1, 2}, {{5, 6}});
  ds.add_user(3, {}, {}, {}, {{}});
  ds.add_user(9, {12}, {50}, {3}, {{8}});
  ds.validate();
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{7, 3, 9}));
  EXPECT_EQ(ds.offsets, (std::vector<int64_t>{0, 2, 2, 3}));
  EXPECT_EQ(ds.items, (std::vector<int64_t>{10, 11, 12}));
  EXPECT_EQ(ds.timestamps, (std::vector<int64_t>{100, 200, 50}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{1, 2, 3}));
  ASSERT_EQ(ds.features.size(), 1u);
  EXPECT_EQ(ds.features[0], (std::vector<int64_t>{5, 6, 8}));
  EXPECT_EQ(ds.num_users(), 3);
  EXPECT_EQ(ds.num_events(), 3);
  EXPECT_EQ(ds.length(0), 2);
  EXPECT_EQ(ds.length(1), 0);
}

TEST(DataSequenceDataset, AddUserRejectsMismatchedColumns) {
  SequenceDataset ds;
  EXPECT_THROW(ds.add_user(1, {1, 2}, {1}, {0, 0}), Error);
  EXPECT_THROW(ds.add_user(1, {1}, {1}, {0}, {{4}}), Error);  // no feature names
  ds.feature_names = {"f"};
  EXPECT_THROW(ds.add_user(1, {1}, {1}, {0}), Error);            // feature column missing
  EXPECT_THROW(ds.add_user(1, {1}, {1}, {0}, {{4, 5}}), Error);  // wrong length
  EXPECT_EQ(ds.num_users(), 0);
  EXPECT_EQ(ds.num_events(), 0);
}

TEST(DataSequenceDataset, ValidateCatchesBrokenColumns) {
  SequenceDataset ds;
  ds.add_user(1, {1, 2, 3}, {1, 2, 3}, {0, 0, 0});
  ds.add_user(2, {4}, {1}, {0});
  ds.validate();

  SequenceDataset bad = ds;
  bad.offsets = {0, 3};  // one offset short
  EXPECT_THROW(bad.validate(), Error);
  bad = ds;
  bad.offsets = {0, 4, 3};  // decreasing
  EXPECT_THROW(bad.validate(), Error);
  bad = ds;
  bad.offsets = {1, 3, 4};  // does not start at 0
  EXPECT_THROW(bad.validate(), Error);
  bad = ds;
  bad.timestamps.pop_back();
  EXPECT_THROW(bad.validate(), Error);
  bad = ds;
  bad.actions.push_back(0);
  EXPECT_THROW(bad.validate(), Error);
  bad = ds;
  bad.feature_names = {"f"};
  EXPECT_THROW(bad.validate(), Error);  // a name without a column
  bad.features = {{1, 2, 3}};
  EXPECT_THROW(bad.validate(), Error);  // column with 3 of 4 values
  bad.features = {{1, 2, 3, 4}};
  EXPECT_NO_THROW(bad.validate());
}

TEST(DataSequenceDataset, VocabularyIsDenseAndSorted) {
  SequenceDataset ds;
  ds.add_user(1, {50, -3, 50, 7}, {0, 1, 2, 3}, {0, 0, 0, 0});
  ds.add_user(2, {1000000000000, 7}, {0, 1}, {0, 0});
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  ASSERT_EQ(vocab.size(), 4);
  EXPECT_EQ(vocab.raw_ids(), (std::vector<int64_t>{-3, 7, 50, 1000000000000}));
  EXPECT_EQ(vocab.index_of(-3), 1);
  EXPECT_EQ(vocab.index_of(7), 2);
  EXPECT_EQ(vocab.index_of(50), 3);
  EXPECT_EQ(vocab.index_of(1000000000000), 4);
  EXPECT_EQ(vocab.index_of(8), 0);
  EXPECT_EQ(vocab.index_of(-100), 0);
  EXPECT_EQ(vocab.index_of(2000000000000), 0);
  for (int64_t i = 1; i <= vocab.size(); ++i) EXPECT_EQ(vocab.index_of(vocab.raw_id(i)), i);
  EXPECT_EQ(ItemVocabulary().index_of(1), 0);
}

TEST(DataSequenceDataset, VocabularyFromRawIdsRequiresStrictOrder) {
  ItemVocabulary vocab = ItemVocabulary::from_raw_ids({2, 5, 9});
  EXPECT_EQ(vocab.index_of(5), 2);
  EXPECT_THROW(ItemVocabulary::from_raw_ids({2, 9, 5}), Error);
  EXPECT_THROW(ItemVocabulary::from_raw_ids({2, 5, 5}), Error);
}

}  // namespace
}  // namespace genrec
