// Admission: a new id is stored only on its K-th sighting; rejected ids get the initializer's
// row and a 0 flag.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "embedding/admission.h"
#include "embedding/count_min_index.h"
#include "embedding/dynamic_table.h"

namespace genrec {
namespace {

TableOptions with_filter(int threshold, int64_t max_capacity = 0) {
  TableOptions opt;
  opt.dim = 4;
  opt.max_capacity = max_capacity;
  opt.initializer = {InitKind::kNormal, 1.0f, 3};
  AdmissionOptions a;
  a.threshold = threshold;
  a.width = 1024;
  opt.admission = std::make_shared<CountingFilter>(a);
  return opt;
}

void check_threshold(int64_t max_capacity) {
  SCOPED_TRACE(testing::Message() << "max_capacity " << max_capacity);
  DynamicTable t(with_filter(3, max_capacity));
  std::vector<float> out(4), init(4);
  t.options().initializer.fill(42, init.data(), 4);
  for (int sighting = 1; sighting <= 4; ++sighting) {
    uint64_t key = 42;
    uint8_t stored = 9;
    out.assign(4, -7.0f);
    t.find_or_insert(&key, 1, out.data(), &stored);
    EXPECT_EQ(stored, sighting >= 3 ? 1 : 0) << "sighting " << sighting;
    EXPECT_EQ(t.contains(42), sighting >= 3) << "sighting " << sighting;
    EXPECT_EQ(0, std::memcmp(out.data(), init.data(), 16)) << "the initializer's row";
  }
  EXPECT_EQ(t.size(), 1);
  // Duplicates in one batch are sightings in order: the third occurrence is stored.
  std::vector<uint64_t> keys = {7, 7, 7, 7, 8};
  std::vector<uint8_t> stored(5);
  std::vector<float> outs(20);
  t.find_or_insert(keys.data(), 5, outs.data(), stored.data());
  EXPECT_EQ(stored, std::vector<uint8_t>({0, 0, 1, 1, 0}));
  EXPECT_TRUE(t.contains(7));
  EXPECT_FALSE(t.contains(8));
  EXPECT_EQ(t.size(), 2);
  // insert_or_assign is not subject to admission.
  uint64_t key = 9;
  t.insert_or_assign(&key, outs.data(), 1);
  EXPECT_TRUE(t.contains(9));
}

TEST(EmbeddingAdmission, KeysEnterOnTheKthSighting) {
  check_threshold(0);
}
TEST(EmbeddingAdmission, KeysEnterOnTheKthSightingInFullTable) {
  check_threshold(16);
}

TEST(EmbeddingAdmission, ThresholdOneAdmitsEverything) {
  DynamicTable t(with_filter(1));
  std::vector<uint64_t> keys = {1, 2, 3};
  std::vector<uint8_t> stored(3);
  std::vector<float> out(12);
  t.find_or_insert(keys.data(), 3, out.data(), stored.data());
  EXPECT_EQ(stored, std::vector<uint8_t>({1, 1, 1}));
  EXPECT_EQ(t.size(), 3);
}

TEST(EmbeddingAdmission, CountMinNeverUndercounts) {
  AdmissionOptions a;
  a.threshold = 200;
  a.num_hashes = 3;
  a.width = 64;  // tiny: many collisions
  CountingFilter f(a);
  for (uint64_t k = 0; k < 500; ++k) {
    for (uint64_t s = 0; s < k % 7; ++s) f.record(k);
  }
  int64_t exact = 0;
  for (uint64_t k = 0; k < 500; ++k) {
    EXPECT_GE(f.estimate(k), k % 7) << "key " << k;
    exact += f.estimate(k) == k % 7;
  }
  EXPECT_GT(exact, 0);
  f.decay();
  f.clear();
  EXPECT_EQ(f.estimate(3), 0u);
  a.threshold = 0;
  EXPECT_THROW(CountingFilter{a}, Error);
}

TEST(EmbeddingAdmission, CountersRoundTripAndUseTheSharedIndex) {
  AdmissionOptions a;
  a.threshold = 4;
  a.num_hashes = 3;
  a.width = 100;  // rounded up to 128
  a.seed = 5;
  CountingFilter f(a);
  ASSERT_EQ(f.options().width, 128);
  ASSERT_EQ(f.num_counters(), 3 * 128);
  for (uint64_t k = 0; k < 40; ++k) {
    for (uint64_t s = 0; s < k % 5; ++s) f.record(k);
  }
  const std::vector<uint8_t> saved = f.counters();
  ASSERT_EQ(static_cast<int64_t>(saved.size()), f.num_counters());
  // The estimate is the minimum of the key's counters at count_min_index.
  for (uint64_t k = 0; k < 40; ++k) {
    uint32_t m = 255;
    for (int r = 0; r < 3; ++r) m = std::min<uint32_t>(m, saved[count_min_index(k, r, 127, 5)]);
    EXPECT_EQ(f.estimate(k), m) << "key " << k;
  }
  CountingFilter g(a);
  g.load_counters(saved);
  EXPECT_EQ(g.counters(), saved);
  for (uint64_t k = 0; k < 40; ++k) EXPECT_EQ(g.estimate(k), f.estimate(k)) << "key " << k;
  f.decay();
  std::vector<uint8_t> halved = saved;
  for (auto& c : halved) c >>= 1;
  EXPECT_EQ(f.counters(), halved);
  f.clear();
  EXPECT_EQ(f.counters(), std::vector<uint8_t>(saved.size(), 0));
  EXPECT_THROW(g.load_counters(std::vector<uint8_t>(10)), Error);
}

}  // namespace
}  // namespace genrec
