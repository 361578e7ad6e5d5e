// Readers that turn public data files into a SequenceDataset. Every reader groups events by
// user (users in ascending raw-id order) and orders each user's events by time; bad input
// throws an Error naming the file, the line and the field. File layouts: docs/FORMATS.md.
#pragma once

#include <string>

#include "data/sequence_dataset.h"

namespace genrec {

// MovieLens ratings: ratings.dat (ML-1M/10M, "user::item::rating::timestamp"), u.data (ML-100K,
// tab-separated "user item rating timestamp") or ratings.csv (ML-20M/25M/32M/latest, header
// "userId,movieId,rating,timestamp"), recognised by content, else by file name. Every rating is
// an event with action = round(2 * rating) (half-star units: 1..10 for 0.5..5 stars); a user's
// events are ordered by timestamp, ties by item id.
SequenceDataset read_movielens(const std::string& path);

// One user per line, "user_id item_1 item_2 ..." (whitespace-separated integers, items in time
// order, e.g. Amazon Beauty.txt). There are no real times: timestamps are the positions
// 0, 1, 2, ... and actions are 0 (unknown). A user may appear on one line only.
SequenceDataset read_sequence_text(const std::string& path);

// CSV or TSV with a header: required columns user_id, item_id, timestamp (integers), optional
// action (int32); every other column is an extra sparse feature (integers kept, other text
// hashed, empty = 0). The delimiter is detected from the header line.
SequenceDataset read_delimited(const std::string& path);

// JSON Lines: one object per line with user_id, item_id, timestamp, optional action; every
// other scalar key becomes a feature column (in order of first appearance; 0 where absent).
SequenceDataset read_jsonl(const std::string& path);

// Dispatches on the file name: *.grs shard, u.data / ratings.dat / ratings.csv (or any .csv
// whose header is MovieLens') MovieLens, *.txt sequence text, *.csv / *.tsv delimited,
// *.jsonl / *.ndjson JSON Lines.
SequenceDataset read_any(const std::string& path);

}  // namespace genrec
