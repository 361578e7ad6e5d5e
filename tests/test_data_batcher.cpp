// Leave-one-out windows, the Batcher's epoch plans and batches, and the PrefetchLoader.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <set>
#include <thread>

#include "core/error.h"
#include "data/batcher.h"
#include "data/synthetic.h"

namespace genrec {
namespace {

// Users with 1, 2, 3, 4 and 7 events; item raw ids are 100 + event index.
SequenceDataset hand_made() {
  SequenceDataset ds;
  int64_t next = 0;
  for (int64_t length : {1, 2, 3, 4, 7}) {
    std::vector<int64_t> items, times;
    for (int64_t i = 0; i < length; ++i) items.push_back(100 + next++), times.push_back(i * 10);
    ds.add_user(length * 11, items, times, std::vector<int32_t>(length, 1));
  }
  return ds;  // offsets 0 1 3 6 10 17
}

std::vector<std::tuple<int64_t, int64_t, int64_t>> as_tuples(const std::vector<Window>& ws) {
  std::vector<std::tuple<int64_t, int64_t, int64_t>> out;
  for (const Window& w : ws) out.emplace_back(w.user, w.begin, w.end);
  return out;
}

using Tuples = std::vector<std::tuple<int64_t, int64_t, int64_t>>;

TEST(DataLeaveOneOut, ExactWindowsPerSplit) {
  SequenceDataset ds = hand_made();
  EXPECT_EQ(as_tuples(leave_one_out_windows(ds, Split::kTrain, 100)),
            (Tuples{{3, 6, 8}, {4, 10, 15}}));
  EXPECT_EQ(as_tuples(leave_one_out_windows(ds, Split::kValidation, 100)),
            (Tuples{{2, 3, 5}, {3, 6, 9}, {4, 10, 16}}));
  EXPECT_EQ(as_tuples(leave_one_out_windows(ds, Split::kTest, 100)),
            (Tuples{{2, 3, 6}, {3, 6, 10}, {4, 10, 17}}));
}

TEST(DataLeaveOneOut, TruncatesToTheLastMaxLenPlusOneEvents) {
  SequenceDataset ds = hand_made();
  EXPECT_EQ(as_tuples(leave_one_out_windows(ds, Split::kTrain, 2)),
            (Tuples{{3, 6, 8}, {4, 12, 15}}));
  EXPECT_EQ(as_tuples(leave_one_out_windows(ds, Split::kValidation, 2)),
            (Tuples{{2, 3, 5}, {3, 6, 9}, {4, 13, 16}}));
  EXPECT_EQ(as_tuples(leave_one_out_windows(ds, Split::kTest, 1)),
            (Tuples{{2, 4, 6}, {3, 8, 10}, {4, 15, 17}}));
  EXPECT_THROW(leave_one_out_windows(ds, Split::kTest, 0), Error);
}

SequenceDataset synthetic(int64_t users) {
  SyntheticConfig config;
  config.num_users = users;
  config.num_items = 200;
  config.min_length = 3;
  config.max_length = 40;
  config.mean_length = 12;
  return generate_synthetic(config);
}

std::multiset<std::tuple<int64_t, int64_t, int64_t>> epoch_windows(const Batcher& b) {
  std::multiset<std::tuple<int64_t, int64_t, int64_t>> seen;
  for (int64_t i = 0; i < b.num_batches(); ++i) {
    SequenceBatch batch = b.make_batch(i);
    for (int64_t k = 0; k < batch.batch_size(); ++k) {
      int64_t u = batch.users[k];
      int64_t length = batch.offsets[k + 1] - batch.offsets[k];
      // Identify the window by its user and length (windows of one user are unique here).
      seen.emplace(u, length, batch.timestamps[batch.offsets[k]]);
    }
  }
  return seen;
}

TEST(DataBatcher, EveryWindowExactlyOncePerEpoch) {
  SequenceDataset ds = synthetic(300);
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  std::vector<Window> windows = leave_one_out_windows(ds, Split::kTrain, 20);
  std::multiset<std::tuple<int64_t, int64_t, int64_t>> expected;
  for (const Window& w : windows) expected.emplace(w.user, w.end - w.begin, ds.timestamps[w.begin]);
  for (BatcherConfig config : {BatcherConfig{32, 0, true, 5}, BatcherConfig{7, 0, false, 0},
                               BatcherConfig{1, 64, true, 9}}) {
    Batcher batcher(ds, vocab, windows, config);
    for (int64_t epoch : {0, 1, 2}) {
      batcher.start_epoch(epoch);
      EXPECT_EQ(epoch_windows(batcher), expected) << "epoch " << epoch;
      if (config.max_tokens == 0) {
        const int64_t n = static_cast<int64_t>(windows.size());
        EXPECT_EQ(batcher.num_batches(), (n + config.batch_size - 1) / config.batch_size);
        for (int64_t i = 0; i + 1 < batcher.num_batches(); ++i) {
          EXPECT_EQ(batcher.make_batch(i).batch_size(), config.batch_size);
        }
      }
    }
  }
}

std::vector<int64_t> first_users(const Batcher& b) {
  std::vector<int64_t> users;
  for (int64_t i = 0; i < b.num_batches(); ++i) {
    auto batch = b.make_batch(i);
    users.insert(users.end(), batch.users.begin(), batch.users.end());
  }
  return users;
}

TEST(DataBatcher, ShufflesDifferPerEpochAndRepeatForASeed) {
  SequenceDataset ds = synthetic(200);
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  auto windows = leave_one_out_windows(ds, Split::kTrain, 50);
  Batcher a(ds, vocab, windows, BatcherConfig{16, 0, true, 3});
  Batcher b(ds, vocab, windows, BatcherConfig{16, 0, true, 3});
  Batcher c(ds, vocab, windows, BatcherConfig{16, 0, true, 4});
  std::vector<int64_t> a0 = first_users(a);
  a.start_epoch(1);
  std::vector<int64_t> a1 = first_users(a);
  EXPECT_NE(a0, a1);
  b.start_epoch(1);
  EXPECT_EQ(first_users(b), a1);
  EXPECT_NE(first_users(c), a0);
  a.start_epoch(0);
  EXPECT_EQ(first_users(a), a0);
  // Without shuffling the order is the windows' order.
  Batcher plain(ds, vocab, windows, BatcherConfig{16, 0, false, 3});
  std::vector<int64_t> in_order;
  for (const Window& w : windows) in_order.push_back(w.user);
  EXPECT_EQ(first_users(plain), in_order);
}

TEST(DataBatcher, TokenBudgetIsRespected) {
  SequenceDataset ds = synthetic(400);
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  auto windows = leave_one_out_windows(ds, Split::kTest, 40);
  int64_t total = 0, longest = 0;
  for (const Window& w : windows)
    total += w.end - w.begin, longest = std::max(longest, w.end - w.begin);
  ASSERT_GT(longest, 25);
  const int64_t budget = 25;  // below the longest window
  Batcher batcher(ds, vocab, windows, BatcherConfig{1, budget, true, 1});
  int64_t tokens = 0, alone = 0;
  for (int64_t i = 0; i < batcher.num_batches(); ++i) {
    SequenceBatch batch = batcher.make_batch(i);
    tokens += batch.num_tokens();
    if (batch.num_tokens() > budget) {
      EXPECT_EQ(batch.batch_size(), 1) << "an oversized window shares batch " << i;
      ++alone;
    } else {
      EXPECT_LE(batch.num_tokens(), budget);
    }
    EXPECT_GT(batch.batch_size(), 0);
  }
  EXPECT_EQ(tokens, total);
  EXPECT_GT(alone, 0);
  // Packing is greedy in shuffled order, so batches are mostly full.
  EXPECT_LT(batcher.num_batches(), 2 * total / budget + alone + 1);
}

TEST(DataBatcher, MakeBatchMapsItemsThroughTheVocabulary) {
  SequenceDataset ds = hand_made();
  ItemVocabulary vocab = ItemVocabulary::build(ds);  // item 100 + k has index k + 1
  Batcher batcher(ds, vocab, leave_one_out_windows(ds, Split::kTest, 3),
                  BatcherConfig{2, 0, false, 0});
  ASSERT_EQ(batcher.num_batches(), 2);
  SequenceBatch b0 = batcher.make_batch(0);
  EXPECT_EQ(b0.offsets, (std::vector<int64_t>{0, 3, 7}));
  EXPECT_EQ(b0.users, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(b0.items, (std::vector<int64_t>{4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(b0.timestamps, (std::vector<int64_t>{0, 10, 20, 0, 10, 20, 30}));
  EXPECT_EQ(b0.actions, std::vector<int32_t>(7, 1));
  SequenceBatch b1 = batcher.make_batch(1);
  EXPECT_EQ(b1.offsets, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(b1.items, (std::vector<int64_t>{14, 15, 16, 17}));
  EXPECT_EQ(b1.timestamps, (std::vector<int64_t>{30, 40, 50, 60}));
  EXPECT_THROW(batcher.make_batch(2), Error);
}

TEST(DataBatcher, UnknownItemAndBadWindowsAreErrors) {
  SequenceDataset ds = hand_made();
  ItemVocabulary partial = ItemVocabulary::from_raw_ids({100, 101, 102, 103, 104, 105});
  Batcher batcher(ds, partial, {Window{2, 3, 6}, Window{3, 6, 10}}, BatcherConfig{1, 0, false, 0});
  EXPECT_NO_THROW(batcher.make_batch(0));
  try {
    batcher.make_batch(1);
    ADD_FAILURE() << "expected an unknown-item error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("item 106"), std::string::npos) << e.what();
  }
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  EXPECT_THROW(Batcher(ds, vocab, {Window{2, 3, 7}}, BatcherConfig{}), Error);  // past the user
  EXPECT_THROW(Batcher(ds, vocab, {Window{9, 0, 1}}, BatcherConfig{}), Error);  // no such user
  EXPECT_THROW(Batcher(ds, vocab, {}, BatcherConfig{0, 0, true, 0}), Error);
}

TEST(DataPrefetch, YieldsTheSameBatchesAsMakeBatch) {
  SequenceDataset ds = synthetic(500);
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  Batcher batcher(ds, vocab, leave_one_out_windows(ds, Split::kTrain, 30),
                  BatcherConfig{8, 0, true, 21});
  for (int64_t epoch : {0, 1}) {
    batcher.start_epoch(epoch);
    PrefetchLoader loader(batcher, 3);
    int64_t i = 0;
    while (auto batch = loader.next()) {
      ASSERT_LT(i, batcher.num_batches());
      SequenceBatch direct = batcher.make_batch(i++);
      EXPECT_EQ(batch->offsets, direct.offsets);
      EXPECT_EQ(batch->users, direct.users);
      EXPECT_EQ(batch->items, direct.items);
      EXPECT_EQ(batch->timestamps, direct.timestamps);
      EXPECT_EQ(batch->actions, direct.actions);
    }
    EXPECT_EQ(i, batcher.num_batches());
    EXPECT_FALSE(loader.next().has_value());  // stays at the end
  }
}

TEST(DataPrefetch, DestroyedEarlyStopsCleanly) {
  SequenceDataset ds = synthetic(500);
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  Batcher batcher(ds, vocab, leave_one_out_windows(ds, Split::kTrain, 30),
                  BatcherConfig{2, 0, true, 1});
  ASSERT_GT(batcher.num_batches(), 20);
  // Each destructor must wake and join a producer blocked on its full queue; run the lot on a
  // helper thread so that a hang fails the test instead of stalling the suite.
  std::promise<int> finished;
  std::future<int> result = finished.get_future();
  std::thread runner([&] {
    int taken_total = 0;
    for (int taken : {0, 1, 5}) {
      PrefetchLoader loader(batcher, 2);
      for (int i = 0; i < taken; ++i) taken_total += loader.next().has_value() ? 1 : 0;
    }
    { PrefetchLoader never_read(batcher, 1); }
    finished.set_value(taken_total);
  });
  if (result.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    runner.detach();
    FAIL() << "PrefetchLoader destructor did not return";
  }
  runner.join();
  EXPECT_EQ(result.get(), 6);
}

TEST(DataPrefetch, ErrorsPropagateToNext) {
  SequenceDataset ds = hand_made();
  ItemVocabulary partial = ItemVocabulary::from_raw_ids({100, 101, 102, 103, 104, 105});
  Batcher batcher(ds, partial, {Window{2, 3, 6}, Window{3, 6, 10}, Window{2, 3, 6}},
                  BatcherConfig{1, 0, false, 0});
  PrefetchLoader loader(batcher);
  EXPECT_TRUE(loader.next().has_value());  // batch 0 is fine
  EXPECT_THROW(loader.next(), Error);      // batch 1 has an unknown item
  EXPECT_THROW(loader.next(), Error);      // and the epoch does not look finished
}

TEST(DataPrefetch, EmptyEpochEndsAtOnce) {
  SequenceDataset ds = hand_made();
  ItemVocabulary vocab = ItemVocabulary::build(ds);
  Batcher batcher(ds, vocab, {}, BatcherConfig{});
  EXPECT_EQ(batcher.num_batches(), 0);
  PrefetchLoader loader(batcher);
  EXPECT_FALSE(loader.next().has_value());
}

}  // namespace
}  // namespace genrec
