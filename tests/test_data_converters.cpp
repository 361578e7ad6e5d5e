// Converters on small files: every MovieLens layout, sequence text, CSV/TSV, JSON Lines and
// read_any's dispatch; malformed input must name file, line and field.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/converters.h"
#include "data/shard.h"

namespace genrec {
namespace {

namespace fs = std::filesystem;

// Writes `content` to <temp>/<test name>/<name> and returns the path.
std::string write_file(const std::string& name, const std::string& content) {
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(testing::TempDir()) / "genrec_data_converters" /
                 (std::string(info->test_suite_name()) + "." + info->name());
  fs::create_directories(dir);
  fs::path path = dir / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  return path.string();
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_CONTAINS(statement, text)                                              \
  do {                                                                                      \
    std::string message_ = error_of([&] { statement; });                                    \
    EXPECT_NE(message_.find(text), std::string::npos)                                       \
        << "expected an error containing \"" << (text) << "\", got \"" << message_ << "\""; \
  } while (0)

std::vector<int64_t> user_items(const SequenceDataset& ds, int64_t u) {
  return {ds.items.begin() + ds.offsets[u], ds.items.begin() + ds.offsets[u + 1]};
}

// ---- MovieLens ----

TEST(DataMovieLens, UDataTabSeparated) {
  std::string path = write_file("u.data",
                                "196\t242\t3\t881250949\n"
                                "22\t377\t1\t878887116\n"
                                "196\t302\t5\t881250949\n"  // same time as 242: item order
                                "196\t100\t4\t881250948\n"
                                "\n"
                                "22\t50\t2\t878887000\n");
  SequenceDataset ds = read_movielens(path);
  ds.validate();
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{22, 196}));
  EXPECT_EQ(ds.offsets, (std::vector<int64_t>{0, 2, 5}));
  EXPECT_EQ(ds.items, (std::vector<int64_t>{50, 377, 100, 242, 302}));
  EXPECT_EQ(ds.timestamps,
            (std::vector<int64_t>{878887000, 878887116, 881250948, 881250949, 881250949}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{4, 2, 8, 6, 10}));  // 2 * rating
  EXPECT_TRUE(ds.feature_names.empty());
}

TEST(DataMovieLens, RatingsDatIncludingHalfStars) {
  // ML-1M lines and ML-10M half-star lines share the layout.
  std::string path = write_file("ratings.dat",
                                "1::1193::5::978300760\r\n"
                                "1::661::3::978302109\r\n"
                                "2::122::4.5::838985046\r\n"
                                "1::914::0.5::978301968\r\n");
  SequenceDataset ds = read_movielens(path);
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(user_items(ds, 0), (std::vector<int64_t>{1193, 914, 661}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{10, 1, 6, 9}));
  EXPECT_EQ(ds.timestamps[0], 978300760);
}

TEST(DataMovieLens, RatingsCsvWithHeaderAndFractionalRatings) {
  std::string path = write_file("ratings.csv",
                                "userId,movieId,rating,timestamp\n"
                                "1,296,5.0,1147880044\n"
                                "1,306,3.5,1147868817\n"
                                "2,307,5.0,1147868828\n"
                                "1,665,5.0,1147878820\n");
  SequenceDataset ds = read_movielens(path);
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(user_items(ds, 0), (std::vector<int64_t>{306, 665, 296}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{7, 10, 10, 10}));
}

TEST(DataMovieLens, DetectsLayoutByContentWhateverTheName) {
  SequenceDataset dat = read_movielens(write_file("ml1m.txt", "5::6::4::100\n"));
  EXPECT_EQ(dat.items, (std::vector<int64_t>{6}));
  SequenceDataset tab = read_movielens(write_file("ml100k.tsv", "5\t7\t4\t100\n"));
  EXPECT_EQ(tab.items, (std::vector<int64_t>{7}));
  SequenceDataset csv =
      read_movielens(write_file("ml25m.csv", "userId,movieId,rating,timestamp\n5,8,4,100\n"));
  EXPECT_EQ(csv.items, (std::vector<int64_t>{8}));
  EXPECT_ERROR_CONTAINS(read_movielens(write_file("other.txt", "5 6 4 100\n")),
                        "not a MovieLens ratings file");
  EXPECT_ERROR_CONTAINS(read_movielens(write_file("u.data", "\n\n")), "empty file");
}

TEST(DataMovieLens, MalformedLinesNameFileLineAndField) {
  std::string csv = write_file("ratings.csv",
                               "userId,movieId,rating,timestamp\n"
                               "1,2,3.0,100\n"
                               "\n"
                               "1,3,4.0,abc\n");
  EXPECT_ERROR_CONTAINS(read_movielens(csv),
                        "ratings.csv:4: field 'timestamp': 'abc' is not an "
                        "integer");
  std::string rating =
      write_file("ratings.csv", "userId,movieId,rating,timestamp\n1,2,three,100\n");
  EXPECT_ERROR_CONTAINS(read_movielens(rating),
                        "ratings.csv:2: field 'rating': 'three' is not a "
                        "number");
  std::string negative = write_file("ratings.csv", "userId,movieId,rating,timestamp\n1,2,-1,5\n");
  EXPECT_ERROR_CONTAINS(read_movielens(negative), "ratings.csv:2: field 'rating': '-1'");
  std::string header = write_file("ratings.csv", "userId,movieId,score,timestamp\n1,2,3,4\n");
  EXPECT_ERROR_CONTAINS(read_movielens(header), "ratings.csv:1: expected the header");
  std::string fields = write_file("u.data", "1\t2\t3\t4\n1\t2\t3\n");
  EXPECT_ERROR_CONTAINS(read_movielens(fields), "u.data:2: expected 4 fields");
  std::string item = write_file("u.data", "1\t2\t3\t4\n1\tx7\t3\t5\n");
  EXPECT_ERROR_CONTAINS(read_movielens(item), "u.data:2: field 'item_id': 'x7' is not an integer");
  std::string dat = write_file("ratings.dat", "1::2::3::4\n1::2::3::99999999999999999999\n");
  EXPECT_ERROR_CONTAINS(read_movielens(dat),
                        "ratings.dat:2: field 'timestamp': "
                        "'99999999999999999999' is out of the int64 range");
}

// ---- sequence text ----

TEST(DataSequenceText, PositionsAreTimestamps) {
  std::string path = write_file("Beauty.txt",
                                "2 6 7 8\n"
                                "1 1 2 3 4 5\n"
                                "\n"
                                "3\t4  12 13\r\n"
                                "4\n");
  SequenceDataset ds = read_sequence_text(path);
  ds.validate();
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(ds.offsets, (std::vector<int64_t>{0, 5, 8, 11, 11}));
  EXPECT_EQ(ds.items, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 4, 12, 13}));
  EXPECT_EQ(ds.timestamps, (std::vector<int64_t>{0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(ds.actions, std::vector<int32_t>(11, 0));
}

TEST(DataSequenceText, MalformedLinesAreErrors) {
  EXPECT_ERROR_CONTAINS(read_sequence_text(write_file("s.txt", "1 2 3\n2 5 x9 6\n")),
                        "s.txt:2: field 'item 2': 'x9' is not an integer");
  EXPECT_ERROR_CONTAINS(read_sequence_text(write_file("s.txt", "1 2 3\nu2 5\n")),
                        "s.txt:2: field 'user_id': 'u2' is not an integer");
  EXPECT_ERROR_CONTAINS(read_sequence_text(write_file("s.txt", "1 2 3\n2 5\n\n1 4\n")),
                        "s.txt:4: user 1 already has a sequence on line 1");
}

// ---- CSV / TSV ----

TEST(DataDelimited, CsvWithActionAndExtraFeatures) {
  std::string path = write_file("events.csv",
                                "user_id,item_id,timestamp,action,category,\"brand\"\n"
                                "10,100,5,1,3,acme\n"
                                "10,101,5,2,-4,\"Big, Co\"\n"  // same time: file order
                                "9,102,7,3,,acme\n"
                                "10,103,1,1,12,\n");
  SequenceDataset ds = read_delimited(path);
  ds.validate();
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{9, 10}));
  EXPECT_EQ(ds.items, (std::vector<int64_t>{102, 103, 100, 101}));
  EXPECT_EQ(ds.timestamps, (std::vector<int64_t>{7, 1, 5, 5}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{3, 1, 1, 2}));
  ASSERT_EQ(ds.feature_names, (std::vector<std::string>{"category", "brand"}));
  EXPECT_EQ(ds.features[0], (std::vector<int64_t>{0, 12, 3, -4}));  // empty → 0
  auto hashed = [](const std::string& column, const std::string& value) {
    return static_cast<int64_t>(
        XXH64(value.data(), value.size(), XXH64(column.data(), column.size(), 0)));
  };
  EXPECT_EQ(ds.features[1],
            (std::vector<int64_t>{hashed("brand", "acme"), 0, hashed("brand", "acme"),
                                  hashed("brand", "Big, Co")}));
  EXPECT_NE(hashed("brand", "acme"), hashed("other", "acme"));
}

TEST(DataDelimited, TsvWithoutActionColumn) {
  std::string path = write_file("events.tsv",
                                "timestamp\titem_id\tuser_id\n"
                                "30\t7\t1\n"
                                "20\t8\t1\n");
  SequenceDataset ds = read_delimited(path);
  EXPECT_EQ(ds.items, (std::vector<int64_t>{8, 7}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{0, 0}));
  EXPECT_TRUE(ds.feature_names.empty());
  // The delimiter comes from the header, not the extension.
  SequenceDataset semi =
      read_delimited(write_file("semi.csv", "user_id;item_id;timestamp\n1;2;3\n"));
  EXPECT_EQ(semi.items, (std::vector<int64_t>{2}));
}

TEST(DataDelimited, HeaderOnlyGivesAnEmptyDataset) {
  SequenceDataset ds = read_delimited(write_file("h.csv", "user_id,item_id,timestamp,x\n"));
  EXPECT_EQ(ds.num_users(), 0);
  EXPECT_EQ(ds.feature_names, (std::vector<std::string>{"x"}));
  ds.validate();
}

TEST(DataDelimited, MalformedInputIsAnError) {
  EXPECT_ERROR_CONTAINS(read_delimited(write_file("e.csv", "user_id,item_id,time\n1,2,3\n")),
                        "e.csv:1: the header lacks the required column 'timestamp'");
  EXPECT_ERROR_CONTAINS(
      read_delimited(write_file("e.csv", "user_id,item_id,timestamp\n1,2,3\n\n1,2\n")),
      "e.csv:4: expected 3 fields as in the header, found 2");
  EXPECT_ERROR_CONTAINS(
      read_delimited(write_file("e.csv", "user_id,item_id,timestamp\n1,2,3\n1,2,abc\n")),
      "e.csv:3: field 'timestamp': 'abc' is not an integer");
  EXPECT_ERROR_CONTAINS(
      read_delimited(write_file("e.tsv", "user_id\titem_id\ttimestamp\taction\n1\t2\t3\t2.5\n")),
      "e.tsv:2: field 'action': '2.5' is not an integer");
  EXPECT_ERROR_CONTAINS(
      read_delimited(write_file("e.csv", "user_id,item_id,timestamp,f\n1,2,3,\"open\n")),
      "e.csv:2: unterminated quoted field");
  EXPECT_ERROR_CONTAINS(read_delimited(write_file("e.csv", "user_id,item_id,user_id\n")),
                        "e.csv:1: column 'user_id' appears twice");
  EXPECT_ERROR_CONTAINS(read_delimited(write_file("e.csv", "")), "e.csv: empty file");
}

// ---- JSON Lines ----

TEST(DataJsonl, ObjectsWithFeaturesInOrderOfFirstAppearance) {
  std::string path = write_file(
      "events.jsonl",
      R"({"user_id": 3, "item_id": 30, "timestamp": 5, "action": 2, "device": "ios"})"
      "\n"
      R"({"timestamp": 4, "user_id": 3, "item_id": 31, "page": 7, "tags": [1, 2]})"
      "\n\n"
      R"({"user_id": "1", "item_id": 32, "timestamp": 9.0, "device": null, "vip": true, "score": 0.5})"
      "\n");
  SequenceDataset ds = read_jsonl(path);
  ds.validate();
  EXPECT_EQ(ds.user_ids, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(ds.items, (std::vector<int64_t>{32, 31, 30}));
  EXPECT_EQ(ds.timestamps, (std::vector<int64_t>{9, 4, 5}));
  EXPECT_EQ(ds.actions, (std::vector<int32_t>{0, 0, 2}));
  ASSERT_EQ(ds.feature_names, (std::vector<std::string>{"device", "page", "vip", "score"}));
  const uint64_t seed = XXH64("device", 6, 0);
  EXPECT_EQ(ds.features[0],
            (std::vector<int64_t>{0, 0, static_cast<int64_t>(XXH64("ios", 3, seed))}));
  EXPECT_EQ(ds.features[1], (std::vector<int64_t>{0, 7, 0}));
  EXPECT_EQ(ds.features[2], (std::vector<int64_t>{1, 0, 0}));
  EXPECT_NE(ds.features[3][0], 0);  // 0.5 is hashed
}

TEST(DataJsonl, MalformedLinesAreErrors) {
  EXPECT_ERROR_CONTAINS(read_jsonl(write_file("e.jsonl",
                                              "{\"user_id\": 1, \"item_id\": 2, "
                                              "\"timestamp\": 3}\n{\"user_id\": 1\n")),
                        "e.jsonl:2: invalid JSON");
  EXPECT_ERROR_CONTAINS(read_jsonl(write_file("e.jsonl", "[1, 2]\n")),
                        "e.jsonl:1: expected a JSON object");
  EXPECT_ERROR_CONTAINS(read_jsonl(write_file("e.jsonl", "{\"user_id\": 1, \"item_id\": 2}\n")),
                        "e.jsonl:1: missing field 'timestamp'");
  EXPECT_ERROR_CONTAINS(
      read_jsonl(
          write_file("e.jsonl", "{\"user_id\": 1, \"item_id\": 2, \"timestamp\": \"abc\"}\n")),
      "e.jsonl:1: field 'timestamp': 'abc' is not an integer");
  EXPECT_ERROR_CONTAINS(
      read_jsonl(write_file("e.jsonl", "{\"user_id\": 1.5, \"item_id\": 2, \"timestamp\": 3}\n")),
      "e.jsonl:1: field 'user_id': '1.5' is not an integer");
  EXPECT_ERROR_CONTAINS(
      read_jsonl(write_file("e.jsonl", "{\"user_id\": [1], \"item_id\": 2, \"timestamp\": 3}\n")),
      "e.jsonl:1: field 'user_id': '[1]' is not an integer");
}

// ---- read_any ----

TEST(DataReadAny, DispatchesOnTheFileName) {
  EXPECT_EQ(read_any(write_file("u.data", "1\t2\t3\t4\n")).actions, (std::vector<int32_t>{6}));
  EXPECT_EQ(read_any(write_file("ratings.dat", "1::2::3::4\n")).items, (std::vector<int64_t>{2}));
  EXPECT_EQ(read_any(write_file("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n")).items,
            (std::vector<int64_t>{2}));
  // A renamed MovieLens CSV is still MovieLens; another CSV is generic.
  EXPECT_EQ(read_any(write_file("ml.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n")).actions,
            (std::vector<int32_t>{6}));
  EXPECT_EQ(read_any(write_file("a.csv", "user_id,item_id,timestamp\n1,2,3\n")).timestamps,
            (std::vector<int64_t>{3}));
  EXPECT_EQ(read_any(write_file("a.tsv", "user_id\titem_id\ttimestamp\n1\t2\t3\n")).items,
            (std::vector<int64_t>{2}));
  EXPECT_EQ(read_any(write_file("a.txt", "1 5 6\n")).items, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(
      read_any(write_file("a.jsonl", "{\"user_id\": 1, \"item_id\": 9, \"timestamp\": 3}\n")).items,
      (std::vector<int64_t>{9}));
  SequenceDataset ds = read_any(write_file("b.txt", "1 5 6\n2 7\n"));
  std::string shard = write_file("b.grs", "");
  write_shard(shard, ds);
  EXPECT_EQ(read_any(shard).items, ds.items);
  EXPECT_ERROR_CONTAINS(read_any(write_file("a.parquet", "x")), "a.parquet: unknown data format");
}

TEST(DataReadAny, UnreadableFilesAreErrors) {
  EXPECT_ERROR_CONTAINS(read_any("/nonexistent/dir/u.data"),
                        "/nonexistent/dir/u.data: cannot open");
  EXPECT_ERROR_CONTAINS(read_jsonl("/nonexistent/e.jsonl"), "/nonexistent/e.jsonl: cannot open");
  const std::string dir = fs::path(write_file("x", "")).parent_path() / "folder.csv";
  fs::create_directories(dir);
  EXPECT_ERROR_CONTAINS(read_any(dir), "folder.csv: cannot read: it is a directory");
}

}  // namespace
}  // namespace genrec
