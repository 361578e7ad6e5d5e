// Sequence text has item order but no times, so timestamps are the positions 0, 1, 2, ... of
// the items on the line (the relative time bias then sees unit gaps) and actions are 0.
// A user on two lines is an error rather than a merge: the order between lines is unknown.
#include <algorithm>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "data/converters.h"
#include "data/text_reader.h"

namespace genrec {

SequenceDataset read_sequence_text(const std::string& path) {
  TextFile file(path);
  struct Line {
    int64_t user = 0;
    std::vector<int64_t> items;
  };
  std::vector<Line> lines;
  std::unordered_map<int64_t, int64_t> line_of_user;
  std::string_view line;
  while (file.next_line(&line)) {
    Line parsed;
    size_t i = 0, token = 0;
    while (true) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      if (i >= line.size()) break;
      size_t end = i;
      while (end < line.size() && line[end] != ' ' && line[end] != '\t') ++end;
      std::string_view text = line.substr(i, end - i);
      int64_t value = 0;
      if (!parse_int64_exact(text, &value)) {  // parse again for the error message
        value = file.parse_int64(
            token == 0 ? std::string("user_id") : fmt::format("item {}", token), text);
      }
      if (token == 0) {
        parsed.user = value;
      } else {
        parsed.items.push_back(value);
      }
      ++token;
      i = end;
    }
    auto [it, inserted] = line_of_user.emplace(parsed.user, file.line_number());
    if (!inserted) {
      file.fail_here(
          fmt::format("user {} already has a sequence on line {}", parsed.user, it->second));
    }
    lines.push_back(std::move(parsed));
  }

  std::vector<size_t> order(lines.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return lines[a].user < lines[b].user; });
  SequenceDataset ds;
  std::vector<int64_t> positions;
  std::vector<int32_t> actions;
  for (size_t k : order) {
    const auto& items = lines[k].items;
    positions.resize(items.size());
    std::iota(positions.begin(), positions.end(), 0);
    actions.assign(items.size(), 0);
    ds.add_user(lines[k].user, items, positions, actions);
  }
  log_info("read {}: sequence text, {} users, {} events", path, ds.num_users(), ds.num_events());
  return ds;
}

}  // namespace genrec
