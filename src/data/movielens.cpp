// MovieLens ratings become events with action = round(2 * rating): ML-10M and the CSV releases
// have half-star ratings, so half-star units are the one scale that keeps every release's
// ratings exact and comparable (3 stars is action 6 in ML-100K and in ML-32M alike).
#include <cmath>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "data/converters.h"
#include "data/event_table.h"
#include "data/text_reader.h"

namespace genrec {
namespace {

enum class Format { kDat, kUData, kCsv };

std::string_view base_name(std::string_view path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

Format detect(const std::string& path, std::string_view first_line) {
  if (first_line.find("::") != std::string_view::npos) return Format::kDat;
  if (trim(first_line).starts_with("userId,")) return Format::kCsv;
  if (first_line.find('\t') != std::string_view::npos) return Format::kUData;
  std::string_view name = base_name(path);
  if (name == "ratings.dat") return Format::kDat;
  if (name == "u.data") return Format::kUData;
  if (name == "ratings.csv") return Format::kCsv;
  fail(
      "{}: not a MovieLens ratings file: expected ratings.dat (user::item::rating::timestamp), "
      "u.data (tab-separated user item rating timestamp) or ratings.csv (header "
      "userId,movieId,rating,timestamp)",
      path);
}

void split(std::string_view line, std::string_view separator, std::vector<std::string_view>* out) {
  out->clear();
  for (;;) {
    size_t end = line.find(separator);
    if (end == std::string_view::npos) {
      out->push_back(line);
      return;
    }
    out->push_back(line.substr(0, end));
    line.remove_prefix(end + separator.size());
  }
}

}  // namespace

SequenceDataset read_movielens(const std::string& path) {
  TextFile file(path);
  std::string_view line;
  if (!file.next_line(&line)) fail("{}: empty file: no MovieLens ratings", path);
  const Format format = detect(path, line);

  static constexpr const char* kDatNames[] = {"user_id", "item_id", "rating", "timestamp"};
  static constexpr const char* kCsvNames[] = {"userId", "movieId", "rating", "timestamp"};
  const char* const* names = format == Format::kCsv ? kCsvNames : kDatNames;
  std::string_view separator = format == Format::kDat ? "::" : format == Format::kCsv ? "," : "\t";
  const char* layout = format == Format::kDat   ? "user::item::rating::timestamp"
                       : format == Format::kCsv ? "userId,movieId,rating,timestamp"
                                                : "tab-separated user item rating timestamp";

  bool have_line = true;
  if (format == Format::kCsv) {
    std::vector<std::string_view> header;
    split(line, ",", &header);
    bool ok = header.size() == 4;
    for (size_t i = 0; ok && i < 4; ++i) ok = trim(header[i]) == kCsvNames[i];
    if (!ok) {
      file.fail_here(
          fmt::format("expected the header userId,movieId,rating,timestamp, found '{}'", line));
    }
    have_line = file.next_line(&line);
  }

  EventTable table;
  std::vector<std::string_view> fields;
  for (; have_line; have_line = file.next_line(&line)) {
    split(line, separator, &fields);
    if (fields.size() != 4) {
      file.fail_here(fmt::format("expected 4 fields ({}), found {}", layout, fields.size()));
    }
    table.users.push_back(file.parse_int64(names[0], fields[0]));
    table.items.push_back(file.parse_int64(names[1], fields[1]));
    double rating = file.parse_double(names[2], fields[2]);
    if (rating < 0 || rating > 1e6) {
      file.fail_field(names[2], trim(fields[2]), "is not a rating (0 .. 1e6)");
    }
    table.actions.push_back(static_cast<int32_t>(std::lround(2 * rating)));
    table.timestamps.push_back(file.parse_int64(names[3], fields[3]));
  }
  SequenceDataset ds = table.to_dataset(EventTable::Ties::kItemId);
  log_info("read {}: MovieLens {}, {} users, {} events", path,
           format == Format::kDat   ? "ratings.dat"
           : format == Format::kCsv ? "ratings.csv"
                                    : "u.data",
           ds.num_users(), ds.num_events());
  return ds;
}

}  // namespace genrec
