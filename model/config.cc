#include "model/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace dmoe::model {
namespace {

using Json = nlohmann::json;

struct KnownArchitecture {
  const char* architecture;
  const char* model_type;
  ModelKind kind;
};

constexpr KnownArchitecture kKnownArchitectures[] = {
    {"LLaDA2MoeModelLM", "llada2_moe", ModelKind::kBlockDiffusion},
    {"BailingMoeV2ForCausalLM", "bailing_moe_v2", ModelKind::kAutoregressive},
};

std::string SupportedArchitectures() {
  std::vector<std::string> names;
  for (const auto& known : kKnownArchitectures) {
    names.push_back(absl::StrCat(known.architecture, " (", known.model_type, ")"));
  }
  return absl::StrJoin(names, ", ");
}

// Typed field access. A JSON null counts as absent (HF writes e.g. "rope_scaling": null).
class FieldReader {
 public:
  FieldReader(const Json& root, const std::string& source) : root_(root), source_(source) {}

  const Json* Find(const char* key) const {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status Missing(const char* key) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": missing required field '", key, "'"));
  }

  absl::Status WrongType(const char* key, const char* expected, const Json& value) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", key, "' must be ",
                                                   expected, ", got ", value.dump()));
  }

  absl::Status Int(const char* key, bool required, int64_t* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (v->is_number_integer()) {  // also true for unsigned
      if (v->is_number_unsigned() &&
          v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return WrongType(key, "an integer that fits in int64", *v);
      }
      *out = v->get<int64_t>();
      return absl::OkStatus();
    }
    // Some writers emit integral floats ("hidden_size": 2048.0); accept those.
    if (v->is_number_float()) {
      double d = v->get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        *out = static_cast<int64_t>(d);
        return absl::OkStatus();
      }
    }
    return WrongType(key, "an integer", *v);
  }

  absl::Status Double(const char* key, double* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return WrongType(key, "a number", *v);
    *out = v->get<double>();
    return absl::OkStatus();
  }

  absl::Status Bool(const char* key, bool* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return WrongType(key, "true or false", *v);
    *out = v->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const char* key, std::string* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return WrongType(key, "a string", *v);
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

  const std::string& source() const { return source_; }

 private:
  const Json& root_;
  const std::string& source_;
};

absl::Status Invalid(const std::string& source, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

// Resolves `architectures[0]` and `model_type` to a ModelKind; either may be absent, not both.
absl::Status ResolveArchitecture(const FieldReader& reader, ModelConfig* config) {
  const std::string& source = reader.source();
  if (const Json* archs = reader.Find("architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return reader.WrongType("architectures", "a non-empty list of strings", *archs);
    }
    config->architecture = (*archs)[0].get<std::string>();
  }
  DMOE_RETURN_IF_ERROR(reader.String("model_type", &config->model_type));
  if (config->architecture.empty() && config->model_type.empty()) {
    return reader.Missing("architectures");
  }
  const KnownArchitecture* by_arch = nullptr;
  const KnownArchitecture* by_type = nullptr;
  for (const auto& known : kKnownArchitectures) {
    if (config->architecture == known.architecture) by_arch = &known;
    if (config->model_type == known.model_type) by_type = &known;
  }
  if (!config->architecture.empty() && by_arch == nullptr) {
    return Invalid(source, absl::StrCat("unknown architecture '", config->architecture,
                                        "' (supported: ", SupportedArchitectures(), ")"));
  }
  if (!config->model_type.empty() && by_type == nullptr) {
    return Invalid(source, absl::StrCat("unknown model_type '", config->model_type,
                                        "' (supported: ", SupportedArchitectures(), ")"));
  }
  if (by_arch != nullptr && by_type != nullptr && by_arch != by_type) {
    return Invalid(source, absl::StrCat("architecture '", config->architecture,
                                        "' does not match model_type '", config->model_type,
                                        "' (expected '", by_arch->model_type, "')"));
  }
  const KnownArchitecture* known = by_arch != nullptr ? by_arch : by_type;
  config->kind = known->kind;
  config->architecture = known->architecture;
  config->model_type = known->model_type;
  return absl::OkStatus();
}

absl::Status ReadTokenIds(const FieldReader& reader, ModelConfig* config) {
  DMOE_RETURN_IF_ERROR(reader.Int("pad_token_id", /*required=*/false, &config->pad_token_id));
  config->eos_token_ids.clear();
  if (const Json* eos = reader.Find("eos_token_id")) {
    if (eos->is_number_integer()) {
      config->eos_token_ids.push_back(eos->get<int64_t>());
    } else if (eos->is_array()) {
      for (const Json& id : *eos) {
        if (!id.is_number_integer()) {
          return reader.WrongType("eos_token_id", "an integer or a list of integers", *eos);
        }
        config->eos_token_ids.push_back(id.get<int64_t>());
      }
    } else {
      return reader.WrongType("eos_token_id", "an integer or a list of integers", *eos);
    }
  }
  return absl::OkStatus();
}

// Features of the Ling 2.0 family that the forward pass (MODEL-SPEC.md §1.2) does not
// implement. They are absent or off in every LLaDA2.0 / Ling 2.0 release; refusing them beats
// silently computing something else.
absl::Status CheckUnsupportedFeatures(const FieldReader& reader) {
  const std::string& source = reader.source();
  for (const char* key : {"use_bias", "use_qkv_bias", "norm_head", "use_sliding_window"}) {
    bool value = false;
    DMOE_RETURN_IF_ERROR(reader.Bool(key, &value));
    if (value) {
      return absl::UnimplementedError(
          absl::StrCat(source, ": field '", key, "' is true, which dmoe does not support"));
    }
  }
  std::string act = "silu";
  DMOE_RETURN_IF_ERROR(reader.String("hidden_act", &act));
  if (act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(source, ": hidden_act '", act, "' is not supported (only 'silu')"));
  }
  if (const Json* scaling = reader.Find("rope_scaling")) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": rope_scaling ", scaling->dump(), " is not supported (only null)"));
  }
  return absl::OkStatus();
}

absl::Status Positive(const std::string& source, const char* name, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return Invalid(source, absl::StrCat("field '", name, "' must be > 0, got ", value));
}

absl::Status Validate(const std::string& source, const ModelConfig& c) {
  DMOE_RETURN_IF_ERROR(Positive(source, "vocab_size", c.vocab_size));
  DMOE_RETURN_IF_ERROR(Positive(source, "hidden_size", c.hidden_size));
  DMOE_RETURN_IF_ERROR(Positive(source, "num_hidden_layers", c.num_hidden_layers));
  DMOE_RETURN_IF_ERROR(Positive(source, "num_attention_heads", c.num_attention_heads));
  DMOE_RETURN_IF_ERROR(Positive(source, "num_key_value_heads", c.num_key_value_heads));
  DMOE_RETURN_IF_ERROR(Positive(source, "head_dim", c.head_dim));
  DMOE_RETURN_IF_ERROR(Positive(source, "max_position_embeddings", c.max_position_embeddings));
  DMOE_RETURN_IF_ERROR(Positive(source, "block_length", c.block_length));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid(source, absl::StrCat("field 'num_key_value_heads' (", c.num_key_value_heads,
                                        ") does not divide num_attention_heads (",
                                        c.num_attention_heads, ")"));
  }
  if (c.rotary_dim <= 0 || c.rotary_dim > c.head_dim || c.rotary_dim % 2 != 0) {
    return Invalid(source, absl::StrCat("rotary_dim ", c.rotary_dim,
                                        " (from rotary_dim / partial_rotary_factor ",
                                        c.partial_rotary_factor, ") must be even and in (0, ",
                                        "head_dim ", c.head_dim, "]"));
  }
  if (c.first_k_dense_replace < 0 || c.first_k_dense_replace > c.num_hidden_layers) {
    return Invalid(source, absl::StrCat("field 'first_k_dense_replace' (", c.first_k_dense_replace,
                                        ") must be in [0, num_hidden_layers ",
                                        c.num_hidden_layers, "]"));
  }
  if (c.first_k_dense_replace > 0) {
    DMOE_RETURN_IF_ERROR(Positive(source, "intermediate_size", c.intermediate_size));
  }
  if (c.first_k_dense_replace < c.num_hidden_layers) {  // at least one MoE layer
    DMOE_RETURN_IF_ERROR(Positive(source, "num_experts", c.num_experts));
    DMOE_RETURN_IF_ERROR(Positive(source, "num_experts_per_tok", c.num_experts_per_tok));
    DMOE_RETURN_IF_ERROR(Positive(source, "moe_intermediate_size", c.moe_intermediate_size));
    DMOE_RETURN_IF_ERROR(Positive(source, "n_group", c.n_group));
    DMOE_RETURN_IF_ERROR(Positive(source, "topk_group", c.topk_group));
    if (c.num_shared_experts < 0) {
      return Invalid(source, absl::StrCat("field 'num_shared_experts' must be >= 0, got ",
                                          c.num_shared_experts));
    }
    if (c.num_experts % c.n_group != 0) {
      return Invalid(source, absl::StrCat("field 'n_group' (", c.n_group,
                                          ") does not divide num_experts (", c.num_experts, ")"));
    }
    if (c.topk_group > c.n_group) {
      return Invalid(source, absl::StrCat("field 'topk_group' (", c.topk_group,
                                          ") exceeds n_group (", c.n_group, ")"));
    }
    const int64_t eligible = c.topk_group * (c.num_experts / c.n_group);
    if (c.num_experts_per_tok > eligible) {
      return Invalid(source,
                     absl::StrCat("field 'num_experts_per_tok' (", c.num_experts_per_tok,
                                  ") exceeds the experts in the top-", c.topk_group,
                                  " groups (topk_group * num_experts / n_group = ", eligible, ")"));
    }
    if (!(c.routed_scaling_factor > 0.0)) {
      return Invalid(source, absl::StrCat("field 'routed_scaling_factor' must be > 0, got ",
                                          c.routed_scaling_factor));
    }
    if (c.score_function != "sigmoid") {
      return absl::UnimplementedError(absl::StrCat(source, ": score_function '", c.score_function,
                                                   "' is not supported (only 'sigmoid')"));
    }
  }
  if (!(c.rms_norm_eps > 0.0)) {
    return Invalid(source, absl::StrCat("field 'rms_norm_eps' must be > 0, got ", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0.0)) {
    return Invalid(source, absl::StrCat("field 'rope_theta' must be > 0, got ", c.rope_theta));
  }
  if (c.pad_token_id >= c.vocab_size) {
    return Invalid(source, absl::StrCat("field 'pad_token_id' (", c.pad_token_id,
                                        ") is not below vocab_size (", c.vocab_size, ")"));
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return Invalid(source, absl::StrCat("field 'eos_token_id' has id ", id,
                                          " outside [0, vocab_size ", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ModelConfig::TotalParameters() const {
  const int64_t h = hidden_size;
  int64_t total = vocab_size * h;                      // word_embeddings
  if (!tie_word_embeddings) total += vocab_size * h;   // lm_head
  total += h;                                          // model.norm
  const int64_t attention = 2 * h                      // input / post-attention norms
                            + qkv_width() * h          // query_key_value
                            + h * q_width()            // dense
                            + (use_qk_norm ? 2 * head_dim : 0);
  const int64_t dense_ffn = 3 * intermediate_size * h;
  const int64_t expert = 3 * moe_intermediate_size * h;
  const int64_t moe = num_experts * h                                   // router
                      + (moe_router_enable_expert_bias ? num_experts : 0)  // expert_bias
                      + num_experts * expert                            // routed experts
                      + num_shared_experts * expert;                    // shared expert(s)
  for (int64_t layer = 0; layer < num_hidden_layers; ++layer) {
    total += attention + (IsMoeLayer(layer) ? moe : dense_ffn);
  }
  return total;
}

// Active = everything except the routed experts a token does not use: embeddings, lm_head,
// norms, attention, router, dense FFN and shared experts all count, plus num_experts_per_tok
// routed experts per MoE layer. This is the convention of the Ling 2.0 / LLaDA2.0 model cards
// ("1.43B activated of 16.26B" for LLaDA2.0-mini).
int64_t ModelConfig::ActiveParameters() const {
  const int64_t expert = 3 * moe_intermediate_size * hidden_size;
  int64_t moe_layers = 0;
  for (int64_t layer = 0; layer < num_hidden_layers; ++layer) {
    if (IsMoeLayer(layer)) ++moe_layers;
  }
  return TotalParameters() - moe_layers * (num_experts - num_experts_per_tok) * expert;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  Json root = Json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    // Re-parse with a parser that reports the position of the error.
    std::string detail = "syntax error";
    try {
      Json unused = Json::parse(json_text);
    } catch (const Json::exception& e) {  // parse_error, or out_of_range for 1e999
      detail = e.what();
    }
    return Invalid(source, absl::StrCat("malformed JSON: ", detail));
  }
  if (!root.is_object()) return Invalid(source, "config must be a JSON object");

  FieldReader r(root, source);
  ModelConfig c;
  DMOE_RETURN_IF_ERROR(ResolveArchitecture(r, &c));
  DMOE_RETURN_IF_ERROR(CheckUnsupportedFeatures(r));

  DMOE_RETURN_IF_ERROR(r.Int("vocab_size", /*required=*/true, &c.vocab_size));
  DMOE_RETURN_IF_ERROR(r.Int("hidden_size", true, &c.hidden_size));
  DMOE_RETURN_IF_ERROR(r.Int("num_hidden_layers", true, &c.num_hidden_layers));
  DMOE_RETURN_IF_ERROR(r.Int("num_attention_heads", true, &c.num_attention_heads));
  DMOE_RETURN_IF_ERROR(r.Int("first_k_dense_replace", false, &c.first_k_dense_replace));
  // The dense FFN width is needed only when there is a dense layer, the MoE fields only when
  // there is an MoE layer.
  const bool has_dense = c.first_k_dense_replace > 0;
  const bool has_moe = c.first_k_dense_replace < c.num_hidden_layers;
  DMOE_RETURN_IF_ERROR(r.Int("intermediate_size", has_dense, &c.intermediate_size));
  DMOE_RETURN_IF_ERROR(r.Int("num_experts", has_moe, &c.num_experts));
  DMOE_RETURN_IF_ERROR(r.Int("num_experts_per_tok", has_moe, &c.num_experts_per_tok));
  DMOE_RETURN_IF_ERROR(r.Int("moe_intermediate_size", has_moe, &c.moe_intermediate_size));

  c.num_key_value_heads = c.num_attention_heads;  // no GQA unless stated
  DMOE_RETURN_IF_ERROR(r.Int("num_key_value_heads", false, &c.num_key_value_heads));
  DMOE_RETURN_IF_ERROR(r.Int("head_dim", false, &c.head_dim));
  if (r.Find("head_dim") == nullptr) {
    if (c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads != 0) {
      return Invalid(source, absl::StrCat("field 'num_attention_heads' (", c.num_attention_heads,
                                          ") does not divide hidden_size (", c.hidden_size,
                                          ") and head_dim is not given"));
    }
    c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  }
  DMOE_RETURN_IF_ERROR(r.Int("num_shared_experts", false, &c.num_shared_experts));
  DMOE_RETURN_IF_ERROR(r.Int("n_group", false, &c.n_group));
  DMOE_RETURN_IF_ERROR(r.Int("topk_group", false, &c.topk_group));
  DMOE_RETURN_IF_ERROR(r.Double("routed_scaling_factor", &c.routed_scaling_factor));
  DMOE_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c.norm_topk_prob));
  DMOE_RETURN_IF_ERROR(r.String("score_function", &c.score_function));
  DMOE_RETURN_IF_ERROR(
      r.Bool("moe_router_enable_expert_bias", &c.moe_router_enable_expert_bias));
  DMOE_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps));
  DMOE_RETURN_IF_ERROR(r.Double("rope_theta", &c.rope_theta));
  DMOE_RETURN_IF_ERROR(r.Double("partial_rotary_factor", &c.partial_rotary_factor));
  if (!(c.partial_rotary_factor > 0.0 && c.partial_rotary_factor <= 1.0)) {
    return Invalid(source, absl::StrCat("field 'partial_rotary_factor' must be in (0, 1], got ",
                                        c.partial_rotary_factor));
  }
  // HF: dim = int(head_dim * partial_rotary_factor) (truncation, not rounding).
  c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * c.partial_rotary_factor);
  DMOE_RETURN_IF_ERROR(r.Int("rotary_dim", false, &c.rotary_dim));
  DMOE_RETURN_IF_ERROR(r.Int("max_position_embeddings", false, &c.max_position_embeddings));
  DMOE_RETURN_IF_ERROR(r.Bool("use_qk_norm", &c.use_qk_norm));
  DMOE_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  // Newer transformers write "dtype" instead of "torch_dtype".
  std::string dtype_name;
  DMOE_RETURN_IF_ERROR(r.String("torch_dtype", &dtype_name));
  if (dtype_name.empty()) DMOE_RETURN_IF_ERROR(r.String("dtype", &dtype_name));
  if (!dtype_name.empty()) {
    absl::StatusOr<DType> dtype = ParseDType(dtype_name);
    if (!dtype.ok()) {
      return Invalid(source, absl::StrCat("field 'torch_dtype': ", dtype.status().message()));
    }
    if (*dtype == DType::kI8) {  // q8 says so in quantization_config; torch_dtype is the float one
      return Invalid(source, absl::StrCat("field 'torch_dtype': '", dtype_name,
                                          "' is not a float dtype (F32, F16 or BF16)"));
    }
    c.torch_dtype = *dtype;
  }
  DMOE_RETURN_IF_ERROR(ReadTokenIds(r, &c));
  DMOE_RETURN_IF_ERROR(r.Int("block_length", false, &c.block_length));

  DMOE_RETURN_IF_ERROR(Validate(source, c));
  return c;
}

namespace internal {

absl::StatusOr<std::string> ReadCheckpointFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": not found"));
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  std::string text;
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::DataLossError(absl::StrCat(path, ": read error: ", std::strerror(err)));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

}  // namespace internal

absl::Status CheckModelDir(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("the model directory is an empty string");
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(dir, ec);
  if (status.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("model directory ", dir, ": cannot access: ", ec.message()));
  }
  if (!std::filesystem::is_directory(status)) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " is not a directory: give the checkpoint directory (the one with config.json)"));
  }
  if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json", ec)) {
    return absl::NotFoundError(absl::StrCat(
        dir, " has no config.json: not a Hugging Face checkpoint directory (config.json, "
             "*.safetensors, tokenizer.json)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  DMOE_RETURN_IF_ERROR(CheckModelDir(dir));
  const std::string path = dir + "/config.json";
  DMOE_ASSIGN_OR_RETURN(std::string text, internal::ReadCheckpointFile(path));
  return ParseModelConfig(text, path);
}

std::string ConfigFingerprint(std::string_view config_json) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : config_json) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return absl::StrFormat("%016x", hash);
}

absl::StatusOr<std::string> ConfigFingerprintOfDir(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::ostringstream text;
  text << in.rdbuf();
  return ConfigFingerprint(text.str());
}

}  // namespace dmoe::model
