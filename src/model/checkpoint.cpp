#include "model/checkpoint.h"

#include <xxhash.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "core/atomic_file.h"
#include "core/byte_io.h"
#include "core/error.h"
#include "embedding/table_dump.h"

namespace genrec {
namespace {

constexpr char kMagic[8] = {'G', 'R', 'C', 'K', 'P', 'T', '0', '1'};

// Reads `count` elements from `bytes` at `*pos`, or fails naming what was cut short.
template <typename T>
void take(const std::string& bytes, size_t* pos, T* out, size_t count, const std::string& path,
          const char* what) {
  size_t n = count * sizeof(T);
  GENREC_CHECK(*pos + n <= bytes.size(), "checkpoint {}: truncated in {}", path, what);
  std::memcpy(out, bytes.data() + *pos, n);
  *pos += n;
}

nlohmann::json parameter_layout(const ParameterSet& params) {
  nlohmann::json layout = nlohmann::json::array();
  for (int i = 0; i < params.count(); ++i) {
    layout.push_back({{"name", params.info(i).name}, {"shape", params.info(i).shape}});
  }
  return layout;
}

}  // namespace

nlohmann::json to_json(const RetrievalConfig& c) {
  return {{"num_items", c.num_items},
          {"dim", c.dim},
          {"num_layers", c.num_layers},
          {"num_heads", c.num_heads},
          {"dim_qk", c.dim_qk},
          {"dim_v", c.dim_v},
          {"dropout", c.dropout},
          {"max_len", c.max_len},
          {"position_bias", c.position_bias},
          {"time_bias", c.time_bias},
          {"num_time_buckets", c.num_time_buckets},
          {"num_negatives", c.num_negatives},
          {"in_batch_negatives", c.in_batch_negatives},
          {"temperature", c.temperature},
          {"item_embeddings", item_store_name(c.item_embeddings)}};
}

RetrievalConfig retrieval_config_from_json(const nlohmann::json& j) {
  RetrievalConfig c;
  c.num_items = j.at("num_items");
  c.dim = j.at("dim");
  c.num_layers = j.at("num_layers");
  c.num_heads = j.at("num_heads");
  c.dim_qk = j.at("dim_qk");
  c.dim_v = j.at("dim_v");
  c.dropout = j.at("dropout");
  c.max_len = j.at("max_len");
  c.position_bias = j.at("position_bias");
  c.time_bias = j.at("time_bias");
  c.num_time_buckets = j.at("num_time_buckets");
  c.num_negatives = j.at("num_negatives");
  c.in_batch_negatives = j.at("in_batch_negatives");
  c.temperature = j.at("temperature");
  // Absent before dynamic item tables existed: those checkpoints hold a static one.
  c.item_embeddings = parse_item_store(j.value("item_embeddings", "static"));
  return c;
}

void save_checkpoint(const std::string& path, const RetrievalModel& model,
                     const ItemVocabulary& vocabulary, const nlohmann::json& state) {
  const ParameterSet& params = model.params();
  const DynamicTable* items = model.item_table();
  const std::string item_dump = items ? table_dump_bytes(*items) : std::string();
  nlohmann::json meta = {{"model", to_json(model.config())},
                         {"parameters", parameter_layout(params)},
                         {"num_values", params.numel()},
                         {"adam_steps", params.adam_steps()},
                         {"seed", model.seed()},
                         {"vocabulary_size", vocabulary.size()},
                         {"item_table_bytes", item_dump.size()},
                         {"state", state}};
  std::string text = meta.dump();
  std::string bytes(kMagic, sizeof(kMagic));
  uint64_t meta_bytes = text.size();
  put<uint64_t>(bytes, meta_bytes);
  bytes += text;
  put_array(bytes, params.values().data(), params.values().size());
  put_array(bytes, params.adam_m().data(), params.adam_m().size());
  put_array(bytes, params.adam_v().data(), params.adam_v().size());
  put_array(bytes, vocabulary.raw_ids().data(), vocabulary.raw_ids().size());
  bytes += item_dump;
  uint64_t checksum = XXH64(bytes.data(), bytes.size(), 0);
  put<uint64_t>(bytes, checksum);

  AtomicFile file(path, "checkpoint");
  file.write(bytes.data(), bytes.size());
  file.commit();
}

LoadedCheckpoint load_checkpoint(const std::string& path, Device device) {
  std::ifstream in(path, std::ios::binary);
  GENREC_CHECK(in.good(), "cannot open checkpoint {}", path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  GENREC_CHECK(
      bytes.size() >= sizeof(kMagic) + 16 && std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0,
      "{} is not a genrec checkpoint (bad magic or too short)", path);
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  GENREC_CHECK(XXH64(bytes.data(), bytes.size() - 8, 0) == stored,
               "checkpoint {}: checksum mismatch (file corrupted or truncated)", path);
  bytes.resize(bytes.size() - 8);

  size_t pos = sizeof(kMagic);
  uint64_t meta_bytes;
  take(bytes, &pos, &meta_bytes, 1, path, "header");
  GENREC_CHECK(pos + meta_bytes <= bytes.size(), "checkpoint {}: truncated in metadata", path);
  nlohmann::json meta = nlohmann::json::parse(bytes.substr(pos, meta_bytes));
  pos += meta_bytes;

  LoadedCheckpoint out;
  out.model = make_retrieval_model(retrieval_config_from_json(meta.at("model")), device);
  // Before the values: initialize restarts a dynamic item table, and gives its unseen items
  // the rows they had when saved.
  out.model->initialize(meta.value("seed", uint64_t{0}));
  ParameterSet& params = out.model->params();
  GENREC_CHECK(meta.at("parameters") == parameter_layout(params),
               "checkpoint {}: parameter layout does not match this version of the model", path);
  size_t n = params.values().size();
  take(bytes, &pos, params.values().data(), n, path, "parameters");
  take(bytes, &pos, params.adam_m().data(), n, path, "adam moments");
  take(bytes, &pos, params.adam_v().data(), n, path, "adam moments");
  params.set_adam_steps(meta.at("adam_steps"));
  std::vector<int64_t> vocab(meta.at("vocabulary_size").get<int64_t>());
  take(bytes, &pos, vocab.data(), vocab.size(), path, "vocabulary");
  const uint64_t item_bytes = meta.value("item_table_bytes", uint64_t{0});
  DynamicTable* items = out.model->item_table();
  GENREC_CHECK((item_bytes > 0) == (items != nullptr),
               "checkpoint {}: {} item table bytes for a model with a {} item table", path,
               item_bytes, item_store_name(out.model->config().item_embeddings));
  if (items) {
    GENREC_CHECK(pos + item_bytes <= bytes.size(), "checkpoint {}: truncated in the item table",
                 path);
    const std::string name = path + " (item table)";
    const TableDump dump = parse_table_dump(bytes.substr(pos, item_bytes), name);
    restore_table(*items, dump, name);
    items->set_step(dump.info.step);
    pos += item_bytes;
  }
  GENREC_CHECK(pos == bytes.size(), "checkpoint {}: {} unexpected trailing bytes", path,
               bytes.size() - pos);
  out.vocabulary = ItemVocabulary::from_raw_ids(std::move(vocab));
  out.model->upload();
  out.state = meta.at("state");
  return out;
}

}  // namespace genrec
