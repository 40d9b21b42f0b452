#include "tools/checkpoint_gen/random_checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/thread_pool.h"
#include "common/status_macros.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

#ifndef DMOE_SOURCE_DIR
#define DMOE_SOURCE_DIR "."
#endif

namespace dmoe::tools {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// How one tensor is filled: value = mean + std * z + offsets[i], z ~ N(0, 1).
struct PlannedTensor {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kBF16;
  double mean = 0.0;
  double std = 0.0;
  std::vector<double> offsets{};  // per element; empty: none (the router's hot-expert bias)

  uint64_t numel() const {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
  }
  uint64_t nbytes() const { return numel() * DTypeSize(dtype); }
};

// splitmix64's output function: a bijective mix so nearby inputs give unrelated outputs.
uint64_t Mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Standard normal samples that are identical on every platform and for any thread count
// (std::normal_distribution and libm's log/cos are implementation-defined). The generator is
// splitmix64 in counter mode: 64-bit word j of a tensor's stream is Mix64(key + (j + 1) * gamma),
// so any element can be computed independently. The transform uses only integer sums and exact
// double arithmetic: z = sum of 12 uniforms - 6 (Irwin-Hall), mean 0, variance 1, tails cut
// at +-6, which is all random weights need.
class NormalStream {
 public:
  explicit NormalStream(uint64_t key) : key_(key) {}

  double At(uint64_t i) const {
    uint64_t sum = 0;
    for (uint64_t k = 0; k < 3; ++k) {
      const uint64_t r = Mix64(key_ + (3 * i + k + 1) * 0x9e3779b97f4a7c15ULL);
      sum += (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    }
    // Each uniform is (u + 0.5) / 65536 with u in [0, 65535].
    return (static_cast<double>(sum) + 6.0) * (1.0 / 65536.0) - 6.0;
  }

 private:
  uint64_t key_;
};

template <typename Store>
void FillRange(const PlannedTensor& t, const NormalStream& stream, uint64_t begin, uint64_t end,
               Store store) {
  for (uint64_t i = begin; i < end; ++i) {
    const double offset = i < t.offsets.size() ? t.offsets[i] : 0.0;
    store(i, static_cast<float>(t.mean + t.std * stream.At(i) + offset));
  }
}

// Fills `out` with the tensor's values in its dtype. The values depend only on the seed and
// the tensor name: not on sharding, generation order or the number of threads.
void FillTensor(const PlannedTensor& t, uint64_t seed, ThreadPool& pool, std::string* out) {
  const uint64_t n = t.numel();
  out->resize(n * DTypeSize(t.dtype));
  const NormalStream stream(Mix64(seed ^ Mix64(Fnv1a64(t.name))));
  char* dst = out->data();
  pool.ParallelFor(static_cast<int64_t>(n), /*min_chunk=*/1 << 14,
                   [&](int64_t begin, int64_t end) {
    switch (t.dtype) {
      case DType::kF32:
        FillRange(t, stream, begin, end, [dst](uint64_t i, float v) {
          std::memcpy(dst + 4 * i, &v, 4);
        });
        break;
      case DType::kBF16:
        FillRange(t, stream, begin, end, [dst](uint64_t i, float v) {
          const uint16_t h = F32ToBf16(v);
          std::memcpy(dst + 2 * i, &h, 2);
        });
        break;
      case DType::kF16:
        FillRange(t, stream, begin, end, [dst](uint64_t i, float v) {
          const uint16_t h = F32ToF16(v);
          std::memcpy(dst + 2 * i, &h, 2);
        });
        break;
      case DType::kI8:  // refused by RandomCheckpointConfigJson (q8 comes from dmoe quantize)
        break;
    }
  });
}

double LinearStd(const RandomCheckpointSpec& spec, int64_t fan_in) {
  return spec.init_std > 0.0 ? spec.init_std : 1.0 / std::sqrt(static_cast<double>(fan_in));
}

// Every tensor of MODEL-SPEC.md §2, in model order (embeddings, layers, norm, lm_head).
std::vector<PlannedTensor> PlanTensors(const RandomCheckpointSpec& s) {
  const int64_t h = s.hidden_size;
  const int64_t q_width = s.num_attention_heads * s.head_dim;
  const int64_t qkv_width = q_width + 2 * s.num_key_value_heads * s.head_dim;
  std::vector<PlannedTensor> out;
  auto add = [&](std::string name, std::vector<int64_t> shape, DType dtype, double mean,
                 double std) {
    out.push_back({std::move(name), std::move(shape), dtype, mean, std});
  };
  auto linear = [&](std::string name, int64_t rows, int64_t cols) {
    add(std::move(name), {rows, cols}, s.dtype, 0.0, LinearStd(s, cols));
  };
  auto norm = [&](std::string name, int64_t width) {
    add(std::move(name), {width}, s.dtype, 1.0, s.norm_std);
  };
  auto swiglu = [&](const std::string& prefix, int64_t width) {
    linear(prefix + ".gate_proj.weight", width, h);
    linear(prefix + ".up_proj.weight", width, h);
    linear(prefix + ".down_proj.weight", h, width);
  };

  add("model.word_embeddings.weight", {s.vocab_size, h}, s.dtype, 0.0, s.embedding_std);
  for (int64_t l = 0; l < s.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l);
    norm(p + ".input_layernorm.weight", h);
    linear(p + ".attention.query_key_value.weight", qkv_width, h);
    if (s.use_qk_norm) {
      norm(p + ".attention.query_layernorm.weight", s.head_dim);
      norm(p + ".attention.key_layernorm.weight", s.head_dim);
    }
    linear(p + ".attention.dense.weight", h, q_width);
    norm(p + ".post_attention_layernorm.weight", h);
    if (l < s.first_k_dense_replace) {
      swiglu(p + ".mlp", s.intermediate_size);
      continue;
    }
    add(p + ".mlp.gate.weight", {s.num_experts, h}, s.router_dtype, 0.0, LinearStd(s, h));
    if (s.moe_router_enable_expert_bias) {
      add(p + ".mlp.gate.expert_bias", {s.num_experts}, s.router_dtype, 0.0,
          s.expert_bias_std);
      if (s.hot_experts > 0 && s.hot_expert_bias != 0.0) {
        // The hot set of this layer: hot_experts consecutive experts (mod num_experts) from
        // hot_expert_first, shifted by hot_expert_stride per MoE layer.
        std::vector<double>& offsets = out.back().offsets;
        offsets.assign(static_cast<size_t>(s.num_experts), 0.0);
        const int64_t first = s.hot_expert_first +
                              (l - s.first_k_dense_replace) * s.hot_expert_stride;
        for (int64_t k = 0; k < s.hot_experts && k < s.num_experts; ++k) {
          const int64_t e = ((first + k) % s.num_experts + s.num_experts) % s.num_experts;
          offsets[static_cast<size_t>(e)] = s.hot_expert_bias;
        }
      }
    }
    for (int64_t e = 0; e < s.num_experts; ++e) {
      swiglu(absl::StrCat(p, ".mlp.experts.", e), s.moe_intermediate_size);
    }
    if (s.num_shared_experts > 0) {
      swiglu(p + ".mlp.shared_experts", s.num_shared_experts * s.moe_intermediate_size);
    }
  }
  norm("model.norm.weight", h);
  if (!s.tie_word_embeddings) {
    const double std =
        s.lm_head_std > 0.0 ? s.lm_head_std : 1.0 / std::sqrt(static_cast<double>(h));
    add("lm_head.weight", {s.vocab_size, h}, s.dtype, 0.0, std);
  }
  return out;
}

// Assigns tensors (in model order) to `num_shards` contiguous runs of about equal bytes.
absl::StatusOr<std::vector<int>> AssignShards(const std::vector<PlannedTensor>& tensors,
                                              int num_shards) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_shards must be >= 1, got ", num_shards));
  }
  if (static_cast<size_t>(num_shards) > tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("num_shards (", num_shards,
                                                   ") exceeds the number of tensors (",
                                                   tensors.size(), ")"));
  }
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();
  std::vector<int> shard(tensors.size());
  uint64_t before = 0;
  int current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t remaining_tensors = tensors.size() - i;
    const int remaining_shards = num_shards - current;
    // Move on once this shard holds its share of bytes (and is not empty), or when every
    // remaining tensor is needed to keep the remaining shards non-empty.
    const bool full = before * static_cast<uint64_t>(num_shards) >=
                      total * static_cast<uint64_t>(current + 1);
    const bool nonempty = i > 0 && shard[i - 1] == current;
    if (current + 1 < num_shards && nonempty &&
        (full || remaining_tensors < static_cast<size_t>(remaining_shards))) {
      ++current;
    }
    shard[i] = current;
    before += tensors[i].nbytes();
  }
  return shard;
}

std::string ShardFileName(int index, int count) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", index + 1, count);
}

struct TokenizerInfo {
  int64_t max_id = -1;
  int64_t endoftext_id = -1;
};

// Reads the ids of `<dir>/tokenizer.json` (model.vocab and added_tokens), if it exists.
absl::StatusOr<TokenizerInfo> InspectTokenizer(const std::string& dir) {
  TokenizerInfo info;
  const std::string path = dir + "/tokenizer.json";
  absl::StatusOr<std::string> text = model::internal::ReadCheckpointFile(path);
  if (absl::IsNotFound(text.status())) return info;
  if (!text.ok()) return text.status();
  Json tok = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (tok.is_discarded() || !tok.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON"));
  }
  auto note = [&info](const std::string& content, const Json& id) {
    if (!id.is_number_integer()) return;
    const int64_t v = id.get<int64_t>();
    info.max_id = std::max(info.max_id, v);
    if (content == "<|endoftext|>") info.endoftext_id = v;
  };
  if (auto model = tok.find("model"); model != tok.end() && model->is_object()) {
    if (auto vocab = model->find("vocab"); vocab != model->end() && vocab->is_object()) {
      for (auto it = vocab->begin(); it != vocab->end(); ++it) note(it.key(), it.value());
    }
  }
  if (auto added = tok.find("added_tokens"); added != tok.end() && added->is_array()) {
    for (const Json& t : *added) {
      if (t.is_object() && t.contains("content") && t["content"].is_string() &&
          t.contains("id")) {
        note(t["content"].get<std::string>(), t["id"]);
      }
    }
  }
  return info;
}

bool IsWeightsFile(const std::string& name) {
  if (name == kSingleFile || name == kIndexFile) return true;
  return absl::StartsWith(name, "model-") && absl::EndsWith(name, ".safetensors") &&
         name.find("-of-") != std::string::npos;
}

absl::Status FsError(const std::string& what, const std::string& path, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", ec.message()));
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !written) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return FsError("cannot rename into place", path, ec);
  return absl::OkStatus();
}

}  // namespace

std::string DefaultTokenizerDir() { return DMOE_SOURCE_DIR "/tools/data/tiny_tokenizer"; }

RandomCheckpointSpec TinyCheckpointSpec() { return RandomCheckpointSpec{}; }

RandomCheckpointSpec BenchMiniCheckpointSpec() {
  RandomCheckpointSpec s;
  s.vocab_size = 8192;
  s.hidden_size = 512;
  s.num_hidden_layers = 8;
  s.num_attention_heads = 8;
  s.num_key_value_heads = 4;
  s.head_dim = 64;
  s.intermediate_size = 1408;
  s.moe_intermediate_size = 128;
  s.num_experts = 256;
  s.num_experts_per_tok = 8;
  s.num_shared_experts = 1;
  s.n_group = 8;
  s.topk_group = 4;
  s.first_k_dense_replace = 1;
  s.routed_scaling_factor = 2.5;
  s.rope_theta = 600000.0;
  s.partial_rotary_factor = 0.5;
  s.dtype = DType::kBF16;
  return s;
}

std::vector<std::string> RandomCheckpointPresetNames() { return {"tiny", "bench-mini"}; }

absl::StatusOr<RandomCheckpointSpec> RandomCheckpointPreset(std::string_view name) {
  if (name == "tiny") return TinyCheckpointSpec();
  if (name == "bench-mini") return BenchMiniCheckpointSpec();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown checkpoint preset '", std::string(name), "' (known: ",
                   absl::StrJoin(RandomCheckpointPresetNames(), ", "), ")"));
}

absl::StatusOr<std::string> RandomCheckpointConfigJson(const RandomCheckpointSpec& s) {
  const bool diffusion = s.kind == model::ModelKind::kBlockDiffusion;
  std::string torch_dtype;
  switch (s.dtype) {
    case DType::kF32: torch_dtype = "float32"; break;
    case DType::kF16: torch_dtype = "float16"; break;
    case DType::kBF16: torch_dtype = "bfloat16"; break;
    case DType::kI8:
      return absl::InvalidArgumentError(
          "--dtype I8: random checkpoints are F32, F16 or BF16; make q8 with dmoe quantize");
  }
  Json c = Json::object();
  c["architectures"] = {diffusion ? "LLaDA2MoeModelLM" : "BailingMoeV2ForCausalLM"};
  c["model_type"] = diffusion ? "llada2_moe" : "bailing_moe_v2";
  c["vocab_size"] = s.vocab_size;
  c["hidden_size"] = s.hidden_size;
  c["intermediate_size"] = s.intermediate_size;
  c["num_hidden_layers"] = s.num_hidden_layers;
  c["num_attention_heads"] = s.num_attention_heads;
  c["num_key_value_heads"] = s.num_key_value_heads;
  c["head_dim"] = s.head_dim;
  c["hidden_act"] = "silu";
  c["use_qkv_bias"] = false;
  c["use_bias"] = false;
  c["use_qk_norm"] = s.use_qk_norm;
  c["use_rmsnorm"] = true;
  c["rms_norm_eps"] = s.rms_norm_eps;
  c["norm_head"] = false;
  c["norm_softmax"] = false;
  c["tie_word_embeddings"] = s.tie_word_embeddings;
  c["embedding_dropout"] = 0.0;
  c["attention_dropout"] = 0.0;
  c["output_dropout"] = 0.0;
  c["initializer_range"] = 0.02;
  c["max_position_embeddings"] = s.max_position_embeddings;
  c["rope_theta"] = s.rope_theta;
  c["rope_scaling"] = nullptr;
  c["partial_rotary_factor"] = s.partial_rotary_factor;
  c["rotary_dim"] = static_cast<int64_t>(static_cast<double>(s.head_dim) * s.partial_rotary_factor);
  c["use_cache"] = true;
  c["use_sliding_window"] = false;
  c["sliding_window"] = 4096;
  c["max_window_layers"] = s.num_hidden_layers;
  c["num_experts"] = s.num_experts;
  c["num_shared_experts"] = s.num_shared_experts;
  c["num_experts_per_tok"] = s.num_experts_per_tok;
  c["n_group"] = s.n_group;
  c["topk_group"] = s.topk_group;
  c["moe_intermediate_size"] = s.moe_intermediate_size;
  c["first_k_dense_replace"] = s.first_k_dense_replace;
  c["routed_scaling_factor"] = s.routed_scaling_factor;
  c["norm_topk_prob"] = s.norm_topk_prob;
  c["score_function"] = "sigmoid";
  c["moe_router_enable_expert_bias"] = s.moe_router_enable_expert_bias;
  c["router_dtype"] = s.router_dtype == DType::kF32   ? "fp32"
                      : s.router_dtype == DType::kF16 ? "fp16"
                                                      : "bf16";
  c["output_router_logits"] = false;
  c["torch_dtype"] = torch_dtype;
  if (s.pad_token_id >= 0) c["pad_token_id"] = s.pad_token_id;
  if (s.eos_token_ids.size() == 1) {
    c["eos_token_id"] = s.eos_token_ids[0];
  } else if (!s.eos_token_ids.empty()) {
    c["eos_token_id"] = s.eos_token_ids;
  }
  std::string text = c.dump(2) + "\n";
  absl::StatusOr<model::ModelConfig> parsed =
      model::ParseModelConfig(text, "random checkpoint spec");
  if (!parsed.ok()) return parsed.status();
  return text;
}

absl::Status WriteRandomCheckpoint(const RandomCheckpointSpec& spec_in, const std::string& dir) {
  RandomCheckpointSpec spec = spec_in;
  // Tokenizer first: it may decide the pad / eos ids and must fit the vocabulary.
  bool copy_tokenizer = false;
  if (!spec.tokenizer_dir.empty()) {
    std::error_code ec;
    if (fs::is_directory(spec.tokenizer_dir, ec)) {
      copy_tokenizer = true;
    } else if (spec.tokenizer_dir != DefaultTokenizerDir()) {
      return absl::NotFoundError(
          absl::StrCat(spec.tokenizer_dir, ": tokenizer directory not found"));
    }
  }
  if (copy_tokenizer) {
    DMOE_ASSIGN_OR_RETURN(TokenizerInfo info, InspectTokenizer(spec.tokenizer_dir));
    if (info.max_id >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          spec.tokenizer_dir, "/tokenizer.json: has token id ", info.max_id,
          ", which does not fit vocab_size ", spec.vocab_size));
    }
    if (info.endoftext_id >= 0) {
      if (spec.pad_token_id < 0) spec.pad_token_id = info.endoftext_id;
      if (spec.eos_token_ids.empty()) spec.eos_token_ids = {info.endoftext_id};
    }
  }
  DMOE_ASSIGN_OR_RETURN(std::string config_text, RandomCheckpointConfigJson(spec));

  const std::vector<PlannedTensor> tensors = PlanTensors(spec);
  DMOE_ASSIGN_OR_RETURN(std::vector<int> shard_of, AssignShards(tensors, spec.num_shards));

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return FsError("cannot create directory", dir, ec);

  // One writer per file, all open at once: tensors are generated in model order and each goes
  // straight to its file, so only one tensor is ever held in memory.
  std::vector<std::string> file_names;
  if (spec.num_shards == 1) {
    file_names.push_back(kSingleFile);
  } else {
    for (int i = 0; i < spec.num_shards; ++i) file_names.push_back(ShardFileName(i, spec.num_shards));
  }
  std::vector<std::vector<model::SafetensorsTensorInfo>> infos(file_names.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    infos[shard_of[i]].push_back({tensors[i].name, tensors[i].dtype, tensors[i].shape});
  }
  std::vector<std::unique_ptr<model::SafetensorsWriter>> writers;
  for (size_t f = 0; f < file_names.size(); ++f) {
    DMOE_ASSIGN_OR_RETURN(auto writer,
                          model::SafetensorsWriter::Create(dir + "/" + file_names[f],
                                                           std::move(infos[f]),
                                                           {{"format", "pt"}}));
    writers.push_back(std::move(writer));
  }
  ThreadPool pool(/*num_threads=*/0);
  std::string buffer;
  for (size_t i = 0; i < tensors.size(); ++i) {
    FillTensor(tensors[i], spec.seed, pool, &buffer);
    DMOE_RETURN_IF_ERROR(writers[shard_of[i]]->Write(tensors[i].name, buffer.data(), buffer.size()));
  }
  std::string().swap(buffer);
  for (auto& writer : writers) DMOE_RETURN_IF_ERROR(writer->Finish());

  if (spec.num_shards > 1) {
    Json index = Json::object();
    uint64_t total = 0;
    Json weight_map = Json::object();
    for (size_t i = 0; i < tensors.size(); ++i) {
      total += tensors[i].nbytes();
      weight_map[tensors[i].name] = file_names[shard_of[i]];
    }
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = std::move(weight_map);
    DMOE_RETURN_IF_ERROR(WriteTextFile(dir + "/" + kIndexFile, index.dump(2) + "\n"));
  }
  DMOE_RETURN_IF_ERROR(WriteTextFile(dir + "/config.json", config_text));

  // Remove weights of an earlier checkpoint in the same directory (other shard counts).
  std::set<std::string> keep(file_names.begin(), file_names.end());
  if (spec.num_shards > 1) keep.insert(kIndexFile);
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsWeightsFile(name) && keep.count(name) == 0) stale.push_back(it->path());
  }
  if (ec) return FsError("cannot list", dir, ec);
  for (const fs::path& path : stale) {
    fs::remove(path, ec);
    if (ec) return FsError("cannot remove stale file", path.string(), ec);
  }

  if (copy_tokenizer && !fs::equivalent(spec.tokenizer_dir, dir, ec)) {
    std::vector<fs::path> files;
    for (fs::directory_iterator it(spec.tokenizer_dir, ec), end; !ec && it != end;
         it.increment(ec)) {
      const std::string name = it->path().filename().string();
      std::error_code type_ec;
      if (it->is_regular_file(type_ec) && name != "config.json" && !IsWeightsFile(name)) {
        files.push_back(it->path());
      }
    }
    if (ec) return FsError("cannot list", spec.tokenizer_dir, ec);
    for (const fs::path& path : files) {
      fs::copy_file(path, fs::path(dir) / path.filename(), fs::copy_options::overwrite_existing,
                    ec);
      if (ec) return FsError("cannot copy tokenizer file", path.string(), ec);
    }
  }
  return absl::OkStatus();
}

}  // namespace dmoe::tools
