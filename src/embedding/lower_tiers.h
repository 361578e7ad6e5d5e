// The tiers below a tiered table's hot tier: a host DynamicTable, optionally over a ColdTier.
// TieredTable and cuda::CudaTieredTable both store and look up there through these steps, so that
// their lower tiers behave alike.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "embedding/cold_tier.h"
#include "embedding/dynamic_table.h"
#include "embedding/removal_log.h"

namespace genrec {

struct TierStats {
  int64_t hot_hits = 0;   // key occurrences found in hot
  int64_t host_hits = 0;  // occurrences whose row was promoted from host
  int64_t cold_hits = 0;  // occurrences whose row was fetched from the cold tier
  int64_t misses = 0;     // occurrences in no tier (new keys)
  int64_t promoted = 0;   // rows moved host -> hot
  int64_t fetched = 0;    // rows moved cold -> hot
  int64_t demoted = 0;    // rows moved out of hot (to host, or to cold when host cannot hold them)
  int64_t spilled = 0;    // rows moved into the cold tier
};

// Checks the pair of lower tiers a tiered table is built with (`table` names it in the error):
// a cold tier needs a bounded host (host.max_capacity > 0) to spill from.
void check_lower_tiers(const TableOptions& host, const ColdTier* cold, const char* table);

// Stores whole rows (distinct keys in no tier) in host. What a bounded host evicts for them, or
// cannot take, goes down to cold in one batch (counted as spilled); without a cold tier it
// leaves the table and is logged in `removals` at host's step.
void store_below_hot(DynamicTable& host, ColdTier* cold, const TableRows& rows,
                     RemovalLog& removals, TierStats& stats);

// Inserts or overwrites whole rows (distinct keys) below hot, for restoring dumps (`table` names
// the tiered table in the error): checks that without a cold tier a bounded host can hold them
// all, then runs drop_from_hot (each key must end up in one tier: the caller erases the keys from
// its hot tier), takes the keys out of cold and stores the rows (store_below_hot).
void insert_rows_below_hot(DynamicTable& host, ColdTier* cold, const TableRows& rows,
                           RemovalLog& removals, TierStats& stats, const char* table,
                           const std::function<void()>& drop_from_hot);

// Erases the keys from host and cold; returns those either held.
std::vector<uint64_t> erase_below_hot(DynamicTable& host, ColdTier* cold, const uint64_t* keys,
                                      int64_t n);
// Logs what an erase took out of a tiered table in `removals` at `step`: the keys below hot that
// erase_below_hot returned and those of `keys` with in_hot[i] set, distinct. Returns how many.
int64_t log_erased(std::vector<uint64_t> removed, const uint64_t* keys, const uint8_t* in_hot,
                   int64_t n, RemovalLog& removals, uint64_t step);

// Read-only lookup of the keys with found[i] == 0 (those the tiers above lack) in host, then of
// those host lacks in cold: found[i] = 1 and the key's values in row i of values_out (n x dim)
// when a tier holds it; every other row and flag stays as it is.
void find_below_hot(const DynamicTable& host, const ColdTier* cold, const uint64_t* keys, int64_t n,
                    float* values_out, uint8_t* found);

}  // namespace genrec
