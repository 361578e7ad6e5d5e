// An epoch's plan (which windows form which batch) is computed up front from (seed, epoch)
// alone, so batches are reproducible, can be built in any order or on another thread
// (PrefetchLoader), and token-balanced packing is a greedy pass over the shuffled order:
// a batch is closed when the next window would push it past max_tokens.
#include "data/batcher.h"

#include <algorithm>
#include <exception>
#include <numeric>

#include "core/error.h"
#include "core/logging.h"
#include "core/philox.h"

namespace genrec {

std::vector<Window> leave_one_out_windows(const SequenceDataset& dataset, Split split,
                                          int64_t max_len) {
  GENREC_CHECK(max_len >= 1, "leave_one_out_windows: max_len must be >= 1, got {}", max_len);
  GENREC_CHECK(static_cast<int64_t>(dataset.offsets.size()) == dataset.num_users() + 1,
               "leave_one_out_windows: dataset offsets do not match its users");
  // Events dropped from the end, and the fewest events the remaining window must hold.
  const int64_t held_out = split == Split::kTrain ? 2 : split == Split::kValidation ? 1 : 0;
  const int64_t min_window = split == Split::kTrain ? 2 : 3 - held_out;
  std::vector<Window> windows;
  windows.reserve(dataset.num_users());
  int64_t too_short = 0;
  for (int64_t u = 0; u < dataset.num_users(); ++u) {
    const int64_t end = dataset.offsets[u + 1] - held_out;
    if (end - dataset.offsets[u] < min_window) {
      ++too_short;
      continue;
    }
    windows.push_back(Window{u, std::max(dataset.offsets[u], end - (max_len + 1)), end});
  }
  if (too_short > 0) {
    const char* name = split == Split::kTrain        ? "train"
                       : split == Split::kValidation ? "validation"
                                                     : "test";
    log_info("leave_one_out_windows: {} of {} users are too short for the {} split", too_short,
             dataset.num_users(), name);
  }
  return windows;
}

Batcher::Batcher(const SequenceDataset& dataset, const ItemVocabulary& vocab,
                 std::vector<Window> windows, BatcherConfig config)
    : dataset_(dataset), vocab_(vocab), windows_(std::move(windows)), config_(config) {
  GENREC_CHECK(config_.max_tokens >= 0, "Batcher: max_tokens must be >= 0, got {}",
               config_.max_tokens);
  GENREC_CHECK(config_.max_tokens > 0 || config_.batch_size > 0,
               "Batcher: batch_size must be positive when max_tokens is 0, got {}",
               config_.batch_size);
  for (size_t w = 0; w < windows_.size(); ++w) {
    const Window& win = windows_[w];
    GENREC_CHECK(win.user >= 0 && win.user < dataset_.num_users(),
                 "Batcher: window {} has user {}, the dataset has {} users", w, win.user,
                 dataset_.num_users());
    GENREC_CHECK(dataset_.offsets[win.user] <= win.begin && win.begin <= win.end &&
                     win.end <= dataset_.offsets[win.user + 1],
                 "Batcher: window {} [{}, {}) is not within user {}'s events [{}, {})", w,
                 win.begin, win.end, win.user, dataset_.offsets[win.user],
                 dataset_.offsets[win.user + 1]);
  }
  start_epoch(0);
}

void Batcher::start_epoch(int64_t epoch) {
  const int64_t n = static_cast<int64_t>(windows_.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (config_.shuffle) {
    Philox rng(config_.seed, static_cast<uint64_t>(epoch));
    for (int64_t i = n - 1; i > 0; --i) {
      std::swap(order[i], order[static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1))]);
    }
  }
  plan_.clear();
  if (config_.max_tokens > 0) {
    int64_t tokens = 0;
    for (int64_t w : order) {
      const int64_t length = windows_[w].end - windows_[w].begin;
      if (plan_.empty() || (!plan_.back().empty() && tokens + length > config_.max_tokens)) {
        plan_.emplace_back();
        tokens = 0;
      }
      plan_.back().push_back(w);
      tokens += length;
    }
  } else {
    for (int64_t i = 0; i < n; i += config_.batch_size) {
      plan_.emplace_back(order.begin() + i, order.begin() + std::min(n, i + config_.batch_size));
    }
  }
}

SequenceBatch Batcher::make_batch(int64_t batch_index) const {
  GENREC_CHECK(batch_index >= 0 && batch_index < num_batches(),
               "Batcher: batch {} out of range (the epoch has {} batches)", batch_index,
               num_batches());
  const auto& group = plan_[batch_index];
  SequenceBatch batch;
  int64_t total = 0;
  for (int64_t w : group) total += windows_[w].end - windows_[w].begin;
  batch.offsets.reserve(group.size() + 1);
  batch.users.reserve(group.size());
  batch.items.reserve(total);
  batch.timestamps.reserve(total);
  batch.actions.reserve(total);
  for (int64_t w : group) {
    const Window& win = windows_[w];
    for (int64_t e = win.begin; e < win.end; ++e) {
      const int64_t index = vocab_.index_of(dataset_.items[e]);
      GENREC_CHECK(index > 0, "Batcher: item {} (user {}, event {}) is not in the vocabulary",
                   dataset_.items[e], dataset_.user_ids[win.user], e);
      batch.items.push_back(index);
    }
    batch.timestamps.insert(batch.timestamps.end(), dataset_.timestamps.begin() + win.begin,
                            dataset_.timestamps.begin() + win.end);
    batch.actions.insert(batch.actions.end(), dataset_.actions.begin() + win.begin,
                         dataset_.actions.begin() + win.end);
    batch.users.push_back(win.user);
    batch.offsets.push_back(static_cast<int64_t>(batch.items.size()));
  }
  return batch;
}

PrefetchLoader::PrefetchLoader(const Batcher& batcher, int64_t depth)
    : batcher_(batcher), depth_(depth) {
  GENREC_CHECK(depth_ >= 1, "PrefetchLoader: depth must be >= 1, got {}", depth_);
  // Started here, not in the initializer list: the thread uses mutex_, cv_ and queue_, which are
  // declared (so constructed) after thread_.
  thread_ = std::thread([this] {
    const int64_t n = batcher_.num_batches();
    for (int64_t i = 0; i < n; ++i) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || static_cast<int64_t>(queue_.size()) < depth_; });
        if (stop_) break;
      }
      std::optional<SequenceBatch> batch;
      try {
        batch = batcher_.make_batch(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
        break;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(*batch));
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
    cv_.notify_all();
  });
}

PrefetchLoader::~PrefetchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::optional<SequenceBatch> PrefetchLoader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !queue_.empty() || done_; });
  if (!queue_.empty()) {
    SequenceBatch batch = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return batch;
  }
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

}  // namespace genrec
