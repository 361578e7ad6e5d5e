// JSON Lines rows may differ in their keys, so feature columns are created on first sight
// (in file order, 0 for the rows before) and a row without a key gets 0 (missing) there.
// Non-scalar values (arrays, objects) cannot be one int64 and are skipped, counted and logged.
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "data/converters.h"
#include "data/event_table.h"
#include "data/text_reader.h"

namespace genrec {
namespace {

using Json = nlohmann::ordered_json;

int64_t integer_field(const TextFile& file, const Json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end()) file.fail_here(fmt::format("missing field '{}'", field));
  const Json& value = *it;
  if (value.is_number_integer()) {
    if (value.is_number_unsigned() && value.get<uint64_t>() > INT64_MAX) {
      file.fail_field(field, value.dump(), "is out of the int64 range");
    }
    return value.get<int64_t>();
  }
  if (value.is_number_float()) {
    double d = value.get<double>();
    if (std::floor(d) == d && std::abs(d) < 9.2e18) return static_cast<int64_t>(d);
    file.fail_field(field, value.dump(), "is not an integer");
  }
  if (value.is_string()) return file.parse_int64(field, value.get_ref<const std::string&>());
  file.fail_field(field, value.dump(), "is not an integer");
}

int64_t scalar_feature(uint64_t seed, const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return 0;
    case Json::value_t::boolean:
      return value.get<bool>() ? 1 : 0;
    case Json::value_t::number_integer:
      return value.get<int64_t>();
    case Json::value_t::number_unsigned:
      return static_cast<int64_t>(value.get<uint64_t>());
    case Json::value_t::number_float: {
      double d = value.get<double>();
      if (std::floor(d) == d && std::abs(d) < 9.2e18) return static_cast<int64_t>(d);
      return feature_value(seed, value.dump());
    }
    case Json::value_t::string:
      return feature_value(seed, value.get_ref<const std::string&>());
    default:
      return 0;  // not reached: callers pass scalars only
  }
}

}  // namespace

SequenceDataset read_jsonl(const std::string& path) {
  TextFile file(path);
  EventTable table;
  std::unordered_map<std::string, size_t> feature_index;
  std::vector<uint64_t> seeds;
  std::map<std::string, int64_t> skipped;  // non-scalar values per key
  std::vector<int64_t> row;
  std::string_view line;
  while (file.next_line(&line)) {
    Json object;
    try {
      object = Json::parse(line);
    } catch (const Json::parse_error& e) {
      file.fail_here(fmt::format("invalid JSON: {}", e.what()));
    }
    if (!object.is_object()) file.fail_here("expected a JSON object");
    table.users.push_back(integer_field(file, object, "user_id"));
    table.items.push_back(integer_field(file, object, "item_id"));
    table.timestamps.push_back(integer_field(file, object, "timestamp"));
    int32_t action = 0;
    if (object.contains("action")) {
      int64_t a = integer_field(file, object, "action");
      if (a < INT32_MIN || a > INT32_MAX) {
        file.fail_field("action", object["action"].dump(), "is out of int32 range");
      }
      action = static_cast<int32_t>(a);
    }
    table.actions.push_back(action);

    row.assign(table.feature_names.size(), 0);
    for (const auto& [key, value] : object.items()) {
      if (key == "user_id" || key == "item_id" || key == "timestamp" || key == "action") continue;
      if (value.is_structured()) {
        ++skipped[key];
        continue;
      }
      auto [it, inserted] = feature_index.emplace(key, table.feature_names.size());
      if (inserted) {
        // The new column holds 0 for earlier rows; this row's value is appended below.
        table.feature_names.push_back(key);
        table.features.emplace_back(table.users.size() - 1, 0);
        seeds.push_back(feature_seed(key));
        row.push_back(0);
      }
      row[it->second] = scalar_feature(seeds[it->second], value);
    }
    for (size_t f = 0; f < row.size(); ++f) table.features[f].push_back(row[f]);
  }
  for (const auto& [key, count] : skipped) {
    log_warn(
        "read {}: skipped {} non-scalar values of key '{}' (arrays and objects are not "
        "features)",
        path, count, key);
  }
  SequenceDataset ds = table.to_dataset(EventTable::Ties::kFileOrder);
  log_info("read {}: JSON Lines, {} users, {} events, {} feature columns", path, ds.num_users(),
           ds.num_events(), ds.feature_names.size());
  return ds;
}

}  // namespace genrec
