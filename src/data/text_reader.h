// Line-by-line reading of a text data file, and field parsers whose errors name the file, the
// line and the field ("ratings.csv:17: field 'timestamp': 'abc' is not an integer").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace genrec {

class TextFile {
 public:
  explicit TextFile(const std::string& path);  // reads the whole file; throws if unreadable

  // The next line that is not blank, without its terminator ("\n" or "\r\n"); false at the end.
  bool next_line(std::string_view* line);
  int64_t line_number() const { return line_number_; }  // 1-based, of the line last returned
  const std::string& path() const { return path_; }

  // Throws Error("<path>:<line>: <message>").
  [[noreturn]] void fail_here(std::string_view message) const;
  [[noreturn]] void fail_field(std::string_view field, std::string_view value,
                               std::string_view problem) const;

  int64_t parse_int64(std::string_view field, std::string_view text) const;
  int32_t parse_int32(std::string_view field, std::string_view text) const;
  double parse_double(std::string_view field, std::string_view text) const;

 private:
  std::string path_, content_;
  size_t pos_ = 0;
  int64_t line_number_ = 0;
};

std::string_view trim(std::string_view text);

// Whole-text integer parse (optional leading '-', decimal digits only); false if not one.
bool parse_int64_exact(std::string_view text, int64_t* value);

// Splits `line` at `delimiter`; fields may be double-quoted ("a,b" and "" for a quote). Fields
// are trimmed of surrounding spaces. Throws through `file` on an unterminated quote.
void split_delimited(const TextFile& file, std::string_view line, char delimiter,
                     std::vector<std::string>* fields);

// Extra feature columns hold int64 values. A text value is the integer itself when it is one,
// 0 when empty (missing), otherwise XXH64 of the text seeded with feature_seed(column name),
// which is XXH64 of the name with seed 0.
uint64_t feature_seed(std::string_view column);
int64_t feature_value(uint64_t seed, std::string_view text);

}  // namespace genrec
