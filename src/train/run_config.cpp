// Each section is read through a KeyReader that remembers which keys it consumed, so any key
// left over is reported as unknown together with the keys that are valid there.
#include "train/run_config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace genrec {
namespace {

class KeyReader {
 public:
  KeyReader(const YAML::Node& node, std::string section, const std::string& source)
      : node_(node), section_(std::move(section)), source_(source) {
    GENREC_CHECK(!node_ || node_.IsMap(), "{}:{}: section '{}' must be a mapping", source_,
                 node_.Mark().line + 1, section_);
  }

  template <typename T>
  void read(const char* key, T& value) {
    known_.insert(key);
    const YAML::Node& node = node_;  // const: lookups must not insert keys
    if (!node || !node[key]) return;
    const YAML::Node v = node[key];
    try {
      value = v.as<T>();
    } catch (const YAML::Exception&) {
      fail("{}:{}: {}.{}: '{}' is not {}", source_, v.Mark().line + 1, section_, key,
           v.IsScalar() ? v.Scalar() : "(not a scalar)", type_name<T>());
    }
  }

  template <typename T>
  void read_positive(const char* key, T& value) {
    read(key, value);
    GENREC_CHECK(value > 0, "{}: {}.{} must be positive, got {}", source_, section_, key, value);
  }

  // A nested section (possibly absent, then an empty node) that counts as a known key.
  YAML::Node section(const char* key) {
    known_.insert(key);
    const YAML::Node& node = node_;
    return node ? node[key] : YAML::Node();
  }

  void finish() const {
    if (!node_) return;
    for (const auto& entry : node_) {
      std::string key = entry.first.as<std::string>();
      GENREC_CHECK(known_.count(key), "{}:{}: unknown key '{}.{}' (valid keys: {})", source_,
                   entry.first.Mark().line + 1, section_, key, fmt::join(known_, ", "));
    }
  }

 private:
  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>)
      return "true or false";
    else if constexpr (std::is_integral_v<T>)
      return "an integer";
    else if constexpr (std::is_floating_point_v<T>)
      return "a number";
    else
      return "a string";
  }

  YAML::Node node_;
  std::string section_;
  const std::string& source_;
  std::set<std::string> known_;
};

void read_data(const YAML::Node& node, DataConfig& d, const std::string& source) {
  KeyReader r(node, "data", source);
  r.read("path", d.path);
  r.read("synthetic", d.synthetic);
  r.finish();
  GENREC_CHECK(d.synthetic || !d.path.empty(),
               "{}: data needs a path, or synthetic: true with a synthetic section", source);
}

void read_synthetic(const YAML::Node& node, SyntheticConfig& s, const std::string& source) {
  KeyReader r(node, "synthetic", source);
  r.read_positive("num_users", s.num_users);
  r.read_positive("num_items", s.num_items);
  r.read_positive("num_clusters", s.num_clusters);
  r.read_positive("min_length", s.min_length);
  r.read_positive("max_length", s.max_length);
  r.read_positive("mean_length", s.mean_length);
  r.read("zipf_exponent", s.zipf_exponent);
  r.read("markov_probability", s.markov_probability);
  r.read("seed", s.seed);
  r.finish();
}

void read_model(const YAML::Node& node, RetrievalConfig& m, const std::string& source) {
  KeyReader r(node, "model", source);
  r.read_positive("dim", m.dim);
  r.read("num_layers", m.num_layers);
  r.read_positive("num_heads", m.num_heads);
  r.read_positive("dim_qk", m.dim_qk);
  r.read_positive("dim_v", m.dim_v);
  r.read("dropout", m.dropout);
  r.read_positive("max_len", m.max_len);
  r.read("position_bias", m.position_bias);
  r.read("time_bias", m.time_bias);
  r.read_positive("num_time_buckets", m.num_time_buckets);
  r.read("num_negatives", m.num_negatives);
  r.read("in_batch_negatives", m.in_batch_negatives);
  r.read_positive("temperature", m.temperature);
  std::string item_store(item_store_name(m.item_embeddings));
  r.read("item_embeddings", item_store);
  r.finish();
  GENREC_CHECK(item_store == "static" || item_store == "dynamic",
               "{}: model.item_embeddings must be static or dynamic, got '{}'", source, item_store);
  m.item_embeddings = parse_item_store(item_store);
  GENREC_CHECK(m.dropout >= 0.0f && m.dropout < 1.0f, "{}: model.dropout must be in [0, 1)",
               source);
  GENREC_CHECK(m.num_layers >= 0, "{}: model.num_layers must be >= 0", source);
}

void read_train(const YAML::Node& node, TrainerConfig& t, const std::string& source) {
  KeyReader r(node, "train", source);
  r.read_positive("epochs", t.epochs);
  r.read("batch_size", t.batch_size);
  r.read("max_tokens", t.max_tokens);
  r.read_positive("lr", t.lr);
  r.read("beta1", t.beta1);
  r.read("beta2", t.beta2);
  r.read("weight_decay", t.weight_decay);
  r.read("warmup_steps", t.warmup_steps);
  r.read("cosine_decay", t.cosine_decay);
  r.read("grad_clip", t.grad_clip);
  r.read_positive("eval_every", t.eval_every);
  r.read_positive("eval_batch_size", t.eval_batch_size);
  r.read("patience", t.patience);
  r.read("resume", t.resume);
  r.read("seed", t.seed);
  r.read("progress", t.progress);
  r.finish();
  GENREC_CHECK(t.batch_size > 0 || t.max_tokens > 0,
               "{}: train needs batch_size > 0 or max_tokens > 0", source);
}

// "a.b=value": sets root[a][b] to the YAML scalar `value`, creating sections as needed.
void apply_override(YAML::Node& root, const std::string& entry) {
  size_t eq = entry.find('=');
  GENREC_CHECK(eq != std::string::npos && eq > 0, "override '{}' is not key=value", entry);
  std::string path = entry.substr(0, eq);
  if (!root || !root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  std::vector<YAML::Node> chain{root};
  size_t begin = 0;
  for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', begin)) {
    YAML::Node child = chain.back()[path.substr(begin, dot - begin)];
    if (!child.IsMap()) child = YAML::Node(YAML::NodeType::Map);
    chain.push_back(child);
    begin = dot + 1;
  }
  chain.back()[path.substr(begin)] = YAML::Load(entry.substr(eq + 1));
}

}  // namespace

RunConfig parse_run_config(const std::string& yaml_text, const std::string& source,
                           const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    fail("{}:{}: YAML syntax error: {}", source, e.mark.line + 1, e.msg);
  }
  for (const std::string& entry : overrides) apply_override(root, entry);
  RunConfig config;
  KeyReader top(root, "config", source);
  top.read("output_dir", config.output_dir);
  top.read("device", config.device);
  read_data(top.section("data"), config.data, source);
  read_synthetic(top.section("synthetic"), config.data.synthetic_config, source);
  read_model(top.section("model"), config.model, source);
  read_train(top.section("train"), config.train, source);
  top.finish();
  config.train.checkpoint_dir = config.output_dir;
  return config;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  GENREC_CHECK(in.good(), "cannot open config {}", path);
  std::stringstream text;
  text << in.rdbuf();
  return parse_run_config(text.str(), path, overrides);
}

}  // namespace genrec
