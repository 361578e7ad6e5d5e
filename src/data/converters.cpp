// read_any chooses a reader from the file name alone (plus one look at a .csv header, so a
// renamed MovieLens ratings.csv still reads as MovieLens); the readers themselves never guess
// beyond their own family of formats.
#include <fstream>
#include <string>
#include <string_view>

#include "core/error.h"
#include "data/converters.h"
#include "data/shard.h"
#include "data/text_reader.h"

namespace genrec {
namespace {

bool has_movielens_header(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::string_view text = trim(line);
    if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
    if (text.empty()) continue;
    return text == "userId,movieId,rating,timestamp";
  }
  return false;
}

}  // namespace

SequenceDataset read_any(const std::string& path) {
  std::string_view p(path);
  size_t slash = p.find_last_of('/');
  std::string_view name = slash == std::string_view::npos ? p : p.substr(slash + 1);
  if (name.ends_with(".grs")) return read_shard(path);
  if (name == "u.data" || name == "ratings.dat" || name == "ratings.csv") {
    return read_movielens(path);
  }
  if (name.ends_with(".txt")) return read_sequence_text(path);
  if (name.ends_with(".csv")) {
    return has_movielens_header(path) ? read_movielens(path) : read_delimited(path);
  }
  if (name.ends_with(".tsv")) return read_delimited(path);
  if (name.ends_with(".jsonl") || name.ends_with(".ndjson")) return read_jsonl(path);
  fail(
      "{}: unknown data format: expected a .grs shard, MovieLens u.data / ratings.dat / "
      "ratings.csv, .txt sequence text, .csv / .tsv with a header, or .jsonl",
      path);
}

}  // namespace genrec
