// Cuts a dataset into jagged batches of windows. A window is a contiguous run of one user's
// events; the model reads tokens [0, L-1) of it and predicts tokens [1, L) (training), or
// reads all but the last and scores the last (evaluation).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "data/sequence_dataset.h"

namespace genrec {

struct Window {
  int64_t user = 0;   // user index in the dataset
  int64_t begin = 0;  // first event index (into dataset columns)
  int64_t end = 0;    // one past the last event
};

struct SequenceBatch {
  std::vector<int64_t> offsets{0};  // [B + 1]
  std::vector<int64_t> users;       // [B] user index in the dataset
  std::vector<int64_t> items;       // [T] item indices from the vocabulary (1..V)
  std::vector<int64_t> timestamps;  // [T]
  std::vector<int32_t> actions;     // [T]
  int64_t batch_size() const { return static_cast<int64_t>(users.size()); }
  int64_t num_tokens() const { return static_cast<int64_t>(items.size()); }
};

// Leave-one-out windows, each truncated to its last max_len + 1 events:
//  train: events [0, n-2) per user (users with n-2 >= 2), validation: [0, n-1) (n >= 3),
//  test: [0, n) (n >= 3). Users too short for a split are left out of it and counted.
enum class Split { kTrain, kValidation, kTest };
std::vector<Window> leave_one_out_windows(const SequenceDataset& dataset, Split split,
                                          int64_t max_len);

struct BatcherConfig {
  int64_t batch_size = 128;  // windows per batch when max_tokens is 0
  int64_t max_tokens = 0;    // > 0: token-balanced batches of at most this many tokens
  bool shuffle = true;
  uint64_t seed = 0;
};

// Produces the batches of one pass over `windows` (order shuffled per epoch when asked).
class Batcher {
 public:
  Batcher(const SequenceDataset& dataset, const ItemVocabulary& vocab, std::vector<Window> windows,
          BatcherConfig config);
  // Plan for epoch `epoch`: groups of window indices, deterministic given seed and epoch.
  void start_epoch(int64_t epoch);
  int64_t num_batches() const { return static_cast<int64_t>(plan_.size()); }
  SequenceBatch make_batch(int64_t batch_index) const;
  const std::vector<Window>& windows() const { return windows_; }

 private:
  const SequenceDataset& dataset_;
  const ItemVocabulary& vocab_;
  std::vector<Window> windows_;
  BatcherConfig config_;
  std::vector<std::vector<int64_t>> plan_;
};

// Runs a Batcher's epoch on a background thread, keeping up to `depth` batches ready.
class PrefetchLoader {
 public:
  PrefetchLoader(const Batcher& batcher, int64_t depth = 4);
  ~PrefetchLoader();
  std::optional<SequenceBatch> next();  // nullopt at the end of the epoch

 private:
  const Batcher& batcher_;
  int64_t depth_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<SequenceBatch> queue_;
  bool done_ = false, stop_ = false;
  std::exception_ptr error_;
};

}  // namespace genrec
