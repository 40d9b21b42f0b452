#include "model/model.h"

#include <chrono>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace dmoe::model {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

KvCacheOptions Model::KvOptions(int64_t page_tokens, int64_t max_pages) const {
  return {.num_layers = config_.num_hidden_layers,
          .kv_width = config_.kv_width(),
          .page_tokens = page_tokens,
          .max_pages = max_pages};
}

absl::Status ValidateForwardSegment(size_t index, const SegmentShape& s, const ModelConfig& config,
                                    const SegmentCapacity& capacity) {
  const int64_t n = static_cast<int64_t>(s.tokens.size());
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("forward segment ", index, ": ", what));
  };
  if (n == 0) return bad("no tokens");
  if (s.attention_block <= 0) return bad("attention_block must be positive");
  if (s.persist < 0 || s.persist > n) return bad("persist outside [0, tokens]");
  if (s.logits_from < 0 || s.logits_from > n) return bad("logits_from outside [0, tokens]");
  if (!s.has_kv && (s.start != 0 || s.persist != 0)) {
    return bad("a segment without a KV cache must start at 0 and persist nothing");
  }
  if (s.has_kv && !capacity.kv_cache) return bad("the model was created without a KV pool");
  if (s.has_kv && s.cached_length != s.start) {
    return bad(absl::StrCat("start ", s.start, " != cached length ", s.cached_length));
  }
  if (s.start + n > config.max_position_embeddings) {
    return bad(absl::StrCat("positions up to ", s.start + n, " exceed max_position_embeddings ",
                            config.max_position_embeddings));
  }
  if (s.has_kv && capacity.max_pages > 0 &&
      (s.start + s.persist + capacity.page_tokens - 1) / capacity.page_tokens >
          capacity.max_pages) {
    return bad("prefix longer than max_pages_per_segment pages");
  }
  for (int32_t t : s.tokens) {
    if (t < 0 || t >= config.vocab_size) {
      return bad(absl::StrCat("token id ", t, " outside [0, ", config.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Validate(const std::vector<ForwardSegment>& segments) const {
  for (size_t i = 0; i < segments.size(); ++i) {
    DMOE_RETURN_IF_ERROR(ValidateForwardSegment(i, ShapeOf(segments[i]), config_));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<float>>> Model::Forward(
    std::vector<ForwardSegment>& segments, Kernels& kernels, ExpertExecutor& experts,
    ForwardStats* stats) const {
  DMOE_RETURN_IF_ERROR(Validate(segments));
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, d = c.head_dim;
  const int64_t qkv_width = c.qkv_width(), q_width = c.q_width(), kv_width = c.kv_width();

  // Row layout: segments' tokens concatenated.
  std::vector<int64_t> row_begin(segments.size() + 1, 0);
  for (size_t i = 0; i < segments.size(); ++i) {
    row_begin[i + 1] = row_begin[i] + static_cast<int64_t>(segments[i].tokens.size());
  }
  const int64_t rows = row_begin.back();
  std::vector<int64_t> positions(rows);
  for (size_t i = 0; i < segments.size(); ++i) {
    for (int64_t j = 0; j < static_cast<int64_t>(segments[i].tokens.size()); ++j) {
      positions[row_begin[i] + j] = segments[i].start + j;
    }
    if (segments[i].kv) DMOE_RETURN_IF_ERROR(segments[i].kv->Reserve(segments[i].start + segments[i].persist));
  }

  std::vector<float> x(rows * hidden), h(rows * hidden), qkv(rows * qkv_width),
      attn(rows * q_width), f(rows * hidden);
  for (size_t i = 0; i < segments.size(); ++i) {
    for (size_t j = 0; j < segments[i].tokens.size(); ++j) {
      weights_.embed.RowToF32(segments[i].tokens[j], &x[(row_begin[i] + j) * hidden]);
    }
  }

  const QkNormRopeParams rope{.num_heads = c.num_attention_heads,
                              .num_kv_heads = c.num_key_value_heads,
                              .head_dim = d,
                              .rotary_dim = c.rotary_dim,
                              .eps = static_cast<float>(c.rms_norm_eps),
                              .rope_theta = c.rope_theta};
  const RoutingParams routing_params{.num_experts = c.num_experts,
                                     .top_k = c.num_experts_per_tok,
                                     .n_group = c.n_group,
                                     .topk_group = c.topk_group,
                                     .norm_topk_prob = c.norm_topk_prob,
                                     .routed_scaling_factor =
                                         static_cast<float>(c.routed_scaling_factor)};
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<const float*> k_rows, v_rows;
  std::vector<int64_t> k_positions;
  double t_attn = 0, t_moe = 0;

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    double t0 = Now();
    kernels.RmsNorm(x.data(), rows, hidden, lw.input_norm.data(), eps, h.data());
    kernels.MatMul(h.data(), rows, lw.qkv, qkv.data());
    QkNormRopeParams layer_rope = rope;
    layer_rope.q_norm = lw.q_norm.empty() ? nullptr : lw.q_norm.data();
    layer_rope.k_norm = lw.k_norm.empty() ? nullptr : lw.k_norm.data();
    kernels.QkNormRope(qkv.data(), rows, positions.data(), layer_rope);

    for (size_t i = 0; i < segments.size(); ++i) {
      ForwardSegment& s = segments[i];
      const int64_t n = static_cast<int64_t>(s.tokens.size());
      k_rows.clear();
      v_rows.clear();
      k_positions.clear();
      for (int64_t p = 0; p < s.start; ++p) {
        k_rows.push_back(s.kv->KeyRow(l, p));
        v_rows.push_back(s.kv->ValueRow(l, p));
        k_positions.push_back(p);
      }
      for (int64_t j = 0; j < n; ++j) {
        const float* row = &qkv[(row_begin[i] + j) * qkv_width];
        k_rows.push_back(row + q_width);
        v_rows.push_back(row + q_width + kv_width);
        k_positions.push_back(s.start + j);
      }
      kernels.Attention({.num_queries = n,
                         .q = &qkv[row_begin[i] * qkv_width],
                         .q_stride = qkv_width,
                         .q_positions = &positions[row_begin[i]],
                         .num_keys = static_cast<int64_t>(k_rows.size()),
                         .k_rows = k_rows.data(),
                         .v_rows = v_rows.data(),
                         .k_positions = k_positions.data(),
                         .block = s.attention_block,
                         .num_heads = c.num_attention_heads,
                         .num_kv_heads = c.num_key_value_heads,
                         .head_dim = d,
                         .scale = 1.0f / std::sqrt(static_cast<float>(d)),
                         .out = &attn[row_begin[i] * q_width],
                         .out_stride = q_width});
      // Persisted K/V are written after this layer's attention has read the in-flight rows.
      for (int64_t j = 0; j < s.persist; ++j) {
        const float* row = &qkv[(row_begin[i] + j) * qkv_width];
        std::copy_n(row + q_width, kv_width, s.kv->KeyRow(l, s.start + j));
        std::copy_n(row + q_width + kv_width, kv_width, s.kv->ValueRow(l, s.start + j));
      }
    }
    kernels.MatMul(attn.data(), rows, lw.o_proj, f.data());
    AddInPlace(x.data(), f.data(), rows * hidden);
    kernels.RmsNorm(x.data(), rows, hidden, lw.post_norm.data(), eps, h.data());
    double t1 = Now();

    if (!c.IsMoeLayer(l)) {
      kernels.Ffn(h.data(), rows, lw.dense, f.data());
    } else {
      const int64_t k = c.num_experts_per_tok;
      std::vector<float> router_logits(rows * c.num_experts);
      kernels.MatMul(h.data(), rows, lw.router, router_logits.data());
      Routing routing =
          RouteTokens(router_logits.data(), rows, lw.expert_bias.data(), routing_params);
      std::vector<float> slots(rows * k * hidden);
      DMOE_RETURN_IF_ERROR(experts.RunExperts(l, h.data(), rows, hidden, routing, slots.data()));
      if (!lw.shared.empty()) {
        kernels.Ffn(h.data(), rows, lw.shared, f.data());
      } else {
        std::fill(f.begin(), f.end(), 0.0f);
      }
      // f = (sum over slots in slot order of w * expert_out) + shared_out
      std::vector<float> moe(hidden);
      for (int64_t t = 0; t < rows; ++t) {
        std::fill(moe.begin(), moe.end(), 0.0f);
        for (int64_t s = 0; s < k; ++s) {
          const float w = routing.weights[t * k + s];
          const float* y = &slots[(t * k + s) * hidden];
          for (int64_t j = 0; j < hidden; ++j) moe[j] += w * y[j];
        }
        float* out = &f[t * hidden];
        for (int64_t j = 0; j < hidden; ++j) out[j] = moe[j] + out[j];
      }
    }
    AddInPlace(x.data(), f.data(), rows * hidden);
    t_attn += t1 - t0;
    t_moe += Now() - t1;
  }

  // One final norm + lm_head over every segment's output rows: the head is read once.
  double t2 = Now();
  std::vector<int64_t> out_begin(segments.size() + 1, 0);
  for (size_t i = 0; i < segments.size(); ++i) {
    ForwardSegment& s = segments[i];
    if (s.kv) s.kv->Commit(s.start + s.persist);
    out_begin[i + 1] = out_begin[i] + static_cast<int64_t>(s.tokens.size()) - s.logits_from;
  }
  const int64_t out_rows = out_begin.back();
  std::vector<float> normed(out_rows * hidden), all_logits(out_rows * c.vocab_size);
  for (size_t i = 0; i < segments.size(); ++i) {
    std::copy_n(&x[(row_begin[i] + segments[i].logits_from) * hidden],
                (out_begin[i + 1] - out_begin[i]) * hidden, &normed[out_begin[i] * hidden]);
  }
  kernels.RmsNorm(normed.data(), out_rows, hidden, weights_.final_norm.data(), eps, normed.data());
  kernels.MatMul(normed.data(), out_rows, weights_.lm_head, all_logits.data());
  std::vector<std::vector<float>> logits(segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    logits[i].assign(all_logits.begin() + out_begin[i] * c.vocab_size,
                     all_logits.begin() + out_begin[i + 1] * c.vocab_size);
  }
  if (stats) {
    stats->attention_seconds += t_attn;
    stats->moe_seconds += t_moe;
    stats->head_seconds += Now() - t2;
  }
  return logits;
}

}  // namespace dmoe::model
