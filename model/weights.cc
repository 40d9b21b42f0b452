#include "model/weights.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dmoe::model {
namespace {

// Binds tensors by name and remembers which ones were used.
class Binder {
 public:
  explicit Binder(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}

  // A q8 matrix (I8) also binds its "<name>.q8_scale" (F32 [rows, cols / 32]).
  absl::StatusOr<WeightMatrix> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    DMOE_ASSIGN_OR_RETURN(TensorView view, checkpoint_.GetWithShape(name, {rows, cols}));
    used_.insert(name);
    WeightMatrix m{view.dtype, rows, cols, view.data};
    if (view.dtype != DType::kI8) return m;
    const std::string scale_name = name + kQ8ScaleSuffix;
    if (cols % kQ8Block != 0) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint_.FileOf(name), ": q8 tensor '", name,
                                                     "' has ", cols, " columns, not a multiple of ",
                                                     kQ8Block));
    }
    DMOE_ASSIGN_OR_RETURN(TensorView scales,
                          checkpoint_.GetWithShape(scale_name, {rows, cols / kQ8Block}));
    if (scales.dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint_.FileOf(scale_name), ": '",
                                                     scale_name, "' is ", std::string(DTypeName(scales.dtype)),
                                                     ", expected F32"));
    }
    used_.insert(scale_name);
    m.scales = static_cast<const float*>(scales.data);
    return m;
  }

  // Norms, biases and the router stay float in a q8 checkpoint.
  absl::StatusOr<WeightMatrix> FloatMatrix(const std::string& name, int64_t rows, int64_t cols) {
    DMOE_ASSIGN_OR_RETURN(WeightMatrix m, Matrix(name, rows, cols));
    if (m.dtype == DType::kI8) return NotFloat(name);
    return m;
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) {
    DMOE_ASSIGN_OR_RETURN(TensorView view, checkpoint_.GetWithShape(name, {n}));
    if (view.dtype == DType::kI8) return NotFloat(name);
    used_.insert(name);
    std::vector<float> out(n);
    ConvertToF32(view.dtype, view.data, out.data(), n);
    return out;
  }

  absl::StatusOr<FfnWeights> Ffn(const std::string& prefix, int64_t hidden, int64_t width) {
    FfnWeights ffn;
    DMOE_ASSIGN_OR_RETURN(ffn.gate, Matrix(prefix + ".gate_proj.weight", width, hidden));
    DMOE_ASSIGN_OR_RETURN(ffn.up, Matrix(prefix + ".up_proj.weight", width, hidden));
    DMOE_ASSIGN_OR_RETURN(ffn.down, Matrix(prefix + ".down_proj.weight", hidden, width));
    return ffn;
  }

  void MarkUsed(const std::string& name) { used_.insert(name); }
  absl::Status NotFloat(const std::string& name) const {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint_.FileOf(name), ": tensor '", name,
        "' is I8; only the large matrices may be q8 (norms, biases and the router stay float)"));
  }
  const std::set<std::string>& used() const { return used_; }

 private:
  const Checkpoint& checkpoint_;
  std::set<std::string> used_;
};

bool IsExpertTensor(const std::string& name) {
  return name.find(".mlp.experts.") != std::string::npos;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const Checkpoint& checkpoint,
                                              const WeightLoadOptions& options) {
  const ModelConfig& c = checkpoint.config();
  const int64_t h = c.hidden_size;
  int64_t first = options.expert_first;
  int64_t last = options.expert_last < 0 ? c.num_experts : options.expert_last;
  if (options.load_experts && (first < 0 || first > last || last > c.num_experts)) {
    return absl::InvalidArgumentError(absl::StrCat("expert range [", first, ", ", last,
                                                   ") is outside [0, ", c.num_experts, ")"));
  }
  Binder bind(checkpoint);
  ModelWeights w;
  if (options.load_dense) {
    DMOE_ASSIGN_OR_RETURN(w.embed, bind.Matrix("model.word_embeddings.weight", c.vocab_size, h));
    DMOE_ASSIGN_OR_RETURN(w.final_norm, bind.Vector("model.norm.weight", h));
    if (c.tie_word_embeddings && !checkpoint.Has("lm_head.weight")) {
      w.lm_head = w.embed;
    } else {
      DMOE_ASSIGN_OR_RETURN(w.lm_head, bind.Matrix("lm_head.weight", c.vocab_size, h));
    }
  }
  w.layers.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& lw = w.layers[l];
    const std::string p = absl::StrCat("model.layers.", l);
    if (options.load_dense) {
      DMOE_ASSIGN_OR_RETURN(lw.input_norm, bind.Vector(p + ".input_layernorm.weight", h));
      DMOE_ASSIGN_OR_RETURN(lw.qkv, bind.Matrix(p + ".attention.query_key_value.weight",
                                                c.qkv_width(), h));
      if (c.use_qk_norm) {
        DMOE_ASSIGN_OR_RETURN(lw.q_norm,
                              bind.Vector(p + ".attention.query_layernorm.weight", c.head_dim));
        DMOE_ASSIGN_OR_RETURN(lw.k_norm,
                              bind.Vector(p + ".attention.key_layernorm.weight", c.head_dim));
      }
      DMOE_ASSIGN_OR_RETURN(lw.o_proj, bind.Matrix(p + ".attention.dense.weight", h, c.q_width()));
      DMOE_ASSIGN_OR_RETURN(lw.post_norm, bind.Vector(p + ".post_attention_layernorm.weight", h));
      if (!c.IsMoeLayer(l)) {
        DMOE_ASSIGN_OR_RETURN(lw.dense, bind.Ffn(p + ".mlp", h, c.intermediate_size));
      } else {
        DMOE_ASSIGN_OR_RETURN(lw.router,
                              bind.FloatMatrix(p + ".mlp.gate.weight", c.num_experts, h));
        if (c.moe_router_enable_expert_bias) {
          DMOE_ASSIGN_OR_RETURN(lw.expert_bias,
                                bind.Vector(p + ".mlp.gate.expert_bias", c.num_experts));
        } else {
          lw.expert_bias.assign(c.num_experts, 0.0f);
        }
        if (c.num_shared_experts > 0) {
          DMOE_ASSIGN_OR_RETURN(lw.shared, bind.Ffn(p + ".mlp.shared_experts", h,
                                                    c.num_shared_experts * c.moe_intermediate_size));
        }
      }
    }
    if (options.load_experts && c.IsMoeLayer(l)) {
      lw.experts.resize(c.num_experts);
      for (int64_t e = first; e < last; ++e) {
        DMOE_ASSIGN_OR_RETURN(lw.experts[e], bind.Ffn(absl::StrCat(p, ".mlp.experts.", e), h,
                                                      c.moe_intermediate_size));
      }
    }
  }
  // Tensors this process deliberately leaves to another role are not "unknown".
  int64_t ignored = 0;
  std::string example;
  for (const std::string& name : checkpoint.TensorNames()) {
    if (bind.used().count(name)) continue;
    bool other_role = (IsExpertTensor(name) && !options.load_experts) ||
                      (!IsExpertTensor(name) && !options.load_dense) ||
                      (IsExpertTensor(name) && options.load_experts);
    if (other_role || name.find("inv_freq") != std::string::npos) continue;
    if (example.empty()) example = name;
    ++ignored;
  }
  if (ignored > 0) {
    DMOE_LOG(INFO) << checkpoint.dir() << ": ignoring " << ignored
                   << " tensor(s) the model does not use (e.g. '" << example << "')";
  }
  return w;
}

uint64_t WeightBytes(const ModelWeights& weights) {
  uint64_t total = weights.embed.nbytes() + weights.lm_head.nbytes();
  for (const LayerWeights& l : weights.layers) {
    total += l.qkv.nbytes() + l.o_proj.nbytes() + l.dense.nbytes() + l.router.nbytes() +
             l.shared.nbytes();
    for (const FfnWeights& e : l.experts) total += e.nbytes();
  }
  return total;
}

}  // namespace dmoe::model
