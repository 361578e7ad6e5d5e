// The whole file is read into memory once and lines are handed out as string_views into it:
// converters parse millions of short lines, so no per-line allocation, and every error can
// still say exactly which line and field was wrong.
#include "data/text_reader.h"

#include <xxhash.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace genrec {
namespace {

// Shortens a bad value for an error message.
std::string quoted_excerpt(std::string_view value) {
  constexpr size_t kMax = 40;
  if (value.size() <= kMax) return fmt::format("'{}'", value);
  return fmt::format("'{}...'", value.substr(0, kMax));
}

}  // namespace

TextFile::TextFile(const std::string& path) : path_(path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("{}: cannot read: it is a directory", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("{}: read error", path);
  content_ = std::move(buffer).str();
  if (content_.compare(0, 3, "\xEF\xBB\xBF") == 0) pos_ = 3;  // UTF-8 byte order mark
}

bool TextFile::next_line(std::string_view* line) {
  while (pos_ < content_.size()) {
    size_t end = content_.find('\n', pos_);
    if (end == std::string::npos) end = content_.size();
    std::string_view text(content_.data() + pos_, end - pos_);
    pos_ = end + 1;
    ++line_number_;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (trim(text).empty()) continue;
    *line = text;
    return true;
  }
  return false;
}

void TextFile::fail_here(std::string_view message) const {
  fail("{}:{}: {}", path_, line_number_, message);
}

void TextFile::fail_field(std::string_view field, std::string_view value,
                          std::string_view problem) const {
  fail("{}:{}: field '{}': {} {}", path_, line_number_, field, quoted_excerpt(value), problem);
}

int64_t TextFile::parse_int64(std::string_view field, std::string_view text) const {
  text = trim(text);
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) fail_field(field, text, "is out of the int64 range");
  if (ec != std::errc() || end != text.data() + text.size()) {
    fail_field(field, text, "is not an integer");
  }
  return value;
}

int32_t TextFile::parse_int32(std::string_view field, std::string_view text) const {
  int64_t value = parse_int64(field, text);
  if (value < INT32_MIN || value > INT32_MAX)
    fail_field(field, trim(text), "is out of int32 range");
  return static_cast<int32_t>(value);
}

double TextFile::parse_double(std::string_view field, std::string_view text) const {
  text = trim(text);
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
    fail_field(field, text, "is not a number");
  }
  return value;
}

std::string_view trim(std::string_view text) {
  size_t b = 0, e = text.size();
  while (b < e && (text[b] == ' ' || text[b] == '\t' || text[b] == '\r')) ++b;
  while (e > b && (text[e - 1] == ' ' || text[e - 1] == '\t' || text[e - 1] == '\r')) --e;
  return text.substr(b, e - b);
}

bool parse_int64_exact(std::string_view text, int64_t* value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

void split_delimited(const TextFile& file, std::string_view line, char delimiter,
                     std::vector<std::string>* fields) {
  fields->clear();
  size_t i = 0;
  for (;;) {
    std::string field;
    // Leading spaces before a quote are allowed (trimmed either way).
    size_t j = i;
    while (j < line.size() && line[j] == ' ') ++j;
    if (j < line.size() && line[j] == '"') {
      i = j + 1;
      for (;;) {
        if (i >= line.size()) file.fail_here("unterminated quoted field");
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field.push_back('"');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        field.push_back(line[i++]);
      }
      size_t rest = i;
      while (rest < line.size() && line[rest] != delimiter) ++rest;
      if (!trim(line.substr(i, rest - i)).empty()) {
        file.fail_here(
            fmt::format("unexpected text after the closing quote of field {}", fields->size() + 1));
      }
      i = rest;
    } else {
      size_t end = line.find(delimiter, i);
      if (end == std::string_view::npos) end = line.size();
      field = std::string(trim(line.substr(i, end - i)));
      i = end;
    }
    fields->push_back(std::move(field));
    if (i >= line.size()) break;
    ++i;  // the delimiter
  }
}

uint64_t feature_seed(std::string_view column) {
  return XXH64(column.data(), column.size(), 0);
}

int64_t feature_value(uint64_t seed, std::string_view text) {
  if (text.empty()) return 0;
  int64_t value = 0;
  if (parse_int64_exact(text, &value)) return value;
  return static_cast<int64_t>(XXH64(text.data(), text.size(), seed));
}

}  // namespace genrec
