// The tiers below a tiered table's hot tier: a host DynamicTable, optionally over a ColdTier.
// TieredTable and cuda::CudaTieredTable both store and look up there through these steps, so that
// their lower tiers behave alike.
#pragma once

#include <cstdint>

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

// Read-only lookup of the keys with found[i] == 0 (those the tiers above lack) in host, then of
// those host lacks in cold: found[i] = 1 and the key's values in row i of values_out (n x dim)
// when a tier holds it; every other row and flag stays as it is.
void find_below_hot(const DynamicTable& host, const ColdTier* cold, const uint64_t* keys, int64_t n,
                    float* values_out, uint8_t* found);

}  // namespace genrec
