// Delimited files are self-describing through their header: three named columns are required,
// `action` is optional, and every other column is kept as an int64 feature (integers as they
// are, other text hashed per column), so no column of the input is silently lost.
#include <fmt/ranges.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "data/converters.h"
#include "data/event_table.h"
#include "data/text_reader.h"

namespace genrec {
namespace {

// The candidate that occurs most often in the header; ties go to the extension's delimiter.
char detect_delimiter(const TextFile& file, std::string_view header) {
  const bool tsv = file.path().ends_with(".tsv");
  char best = tsv ? '\t' : ',';
  int64_t best_count = std::count(header.begin(), header.end(), best);
  for (char c : {',', '\t', ';', '|'}) {
    int64_t count = std::count(header.begin(), header.end(), c);
    if (count > best_count) best = c, best_count = count;
  }
  if (best_count == 0) {
    file.fail_here(
        "the header has a single column; expected a delimited header with user_id, "
        "item_id and timestamp");
  }
  return best;
}

}  // namespace

SequenceDataset read_delimited(const std::string& path) {
  TextFile file(path);
  std::string_view line;
  if (!file.next_line(&line)) {
    fail("{}: empty file: expected a header naming the columns user_id, item_id, timestamp", path);
  }
  const char delimiter = detect_delimiter(file, line);
  std::vector<std::string> header;
  split_delimited(file, line, delimiter, &header);

  int64_t user_col = -1, item_col = -1, time_col = -1, action_col = -1;
  EventTable table;
  std::vector<int64_t> feature_of_column(header.size(), -1);
  std::vector<uint64_t> seeds;
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string& name = header[c];
    if (name.empty()) file.fail_here(fmt::format("column {} of the header has no name", c + 1));
    if (std::find(header.begin(), header.begin() + c, name) != header.begin() + c) {
      file.fail_here(fmt::format("column '{}' appears twice in the header", name));
    }
    if (name == "user_id") {
      user_col = c;
    } else if (name == "item_id") {
      item_col = c;
    } else if (name == "timestamp") {
      time_col = c;
    } else if (name == "action") {
      action_col = c;
    } else {
      feature_of_column[c] = static_cast<int64_t>(table.add_feature(name));
      seeds.push_back(feature_seed(name));
    }
  }
  for (auto [col, name] : {std::pair{user_col, "user_id"}, std::pair{item_col, "item_id"},
                           std::pair{time_col, "timestamp"}}) {
    if (col < 0) {
      file.fail_here(fmt::format("the header lacks the required column '{}' (columns: {})", name,
                                 fmt::join(header, ", ")));
    }
  }

  std::vector<std::string> fields;
  while (file.next_line(&line)) {
    split_delimited(file, line, delimiter, &fields);
    if (fields.size() != header.size()) {
      file.fail_here(fmt::format("expected {} fields as in the header, found {}", header.size(),
                                 fields.size()));
    }
    table.users.push_back(file.parse_int64("user_id", fields[user_col]));
    table.items.push_back(file.parse_int64("item_id", fields[item_col]));
    table.timestamps.push_back(file.parse_int64("timestamp", fields[time_col]));
    table.actions.push_back(action_col < 0 ? 0 : file.parse_int32("action", fields[action_col]));
    for (size_t c = 0; c < header.size(); ++c) {
      if (feature_of_column[c] < 0) continue;
      const size_t f = static_cast<size_t>(feature_of_column[c]);
      table.features[f].push_back(feature_value(seeds[f], fields[c]));
    }
  }
  SequenceDataset ds = table.to_dataset(EventTable::Ties::kFileOrder);
  log_info("read {}: delimited ('{}'), {} users, {} events, {} feature columns", path,
           delimiter == '\t' ? "\\t" : std::string(1, delimiter), ds.num_users(), ds.num_events(),
           ds.feature_names.size());
  return ds;
}

}  // namespace genrec
