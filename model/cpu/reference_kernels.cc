#include "model/cpu/reference_kernels.h"

#include <cmath>
#include <limits>

namespace dmoe::model {

float WeightAt(const WeightMatrix& w, int64_t row, int64_t col) {
  const int64_t i = row * w.cols + col;
  switch (w.dtype) {
    case DType::kF32: return static_cast<const float*>(w.data)[i];
    case DType::kBF16: return Bf16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::kF16: return F16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::kI8:
      return static_cast<float>(static_cast<const int8_t*>(w.data)[i]) *
             w.scales[row * (w.cols / kQ8Block) + col / kQ8Block];
  }
  return 0.0f;
}

std::vector<float> RopeInverseFrequencies(int64_t rotary_dim, double theta) {
  std::vector<float> inv(rotary_dim / 2);
  for (int64_t j = 0; j < rotary_dim / 2; ++j) {
    float exponent = static_cast<float>(2 * j) / static_cast<float>(rotary_dim);
    inv[j] = 1.0f / std::pow(static_cast<float>(theta), exponent);
  }
  return inv;
}

// y[i][n] = sum_k x[i][k] * W[n][k]
void ReferenceKernels::MatMul(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t n = 0; n < w.rows; ++n) {
      float acc = 0.0f;
      for (int64_t k = 0; k < w.cols; ++k) acc += x[i * w.cols + k] * WeightAt(w, n, k);
      y[i * w.rows + n] = acc;
    }
  }
}

// y = weight * x * rsqrt(mean(x^2) + eps)
void ReferenceKernels::RmsNorm(const float* x, int64_t rows, int64_t n, const float* weight,
                               float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += x[r * n + i] * x[r * n + i];
    float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = weight[i] * (x[r * n + i] * inv);
  }
}

// Per head: x = RMSNorm(x); then for i < R/2 (NeoX pairing i, i + R/2):
//   x[i] = x1 cos - x2 sin,  x[i + R/2] = x2 cos + x1 sin,  angle = pos * inv_freq[i].
void ReferenceKernels::QkNormRope(float* qkv, int64_t m, const int64_t* positions,
                                  const QkNormRopeParams& p) {
  const int64_t d = p.head_dim, half = p.rotary_dim / 2;
  const int64_t row_width = (p.num_heads + 2 * p.num_kv_heads) * d;
  std::vector<float> inv_freq = RopeInverseFrequencies(p.rotary_dim, p.rope_theta);
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t h = 0; h < p.num_heads + p.num_kv_heads; ++h) {
      float* x = qkv + t * row_width + h * d;
      const float* norm = h < p.num_heads ? p.q_norm : p.k_norm;
      if (norm) RmsNorm(x, 1, d, norm, p.eps, x);
      for (int64_t i = 0; i < half; ++i) {
        float angle = static_cast<float>(positions[t]) * inv_freq[i];
        float c = std::cos(angle), s = std::sin(angle);
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
      }
    }
  }
}

// out = softmax(q k^T * scale + mask) v per head; KV head = head / (Nq / Nkv).
void ReferenceKernels::Attention(const AttentionArgs& a) {
  const int64_t group = a.num_heads / a.num_kv_heads, d = a.head_dim;
  std::vector<float> scores(a.num_keys);
  for (int64_t i = 0; i < a.num_queries; ++i) {
    const int64_t q_block = a.q_positions[i] / a.block;
    for (int64_t h = 0; h < a.num_heads; ++h) {
      const float* q = a.q + i * a.q_stride + h * d;
      const int64_t kv_off = (h / group) * d;
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < a.num_keys; ++j) {
        if (a.k_positions[j] / a.block > q_block) continue;
        float dot = 0.0f;
        for (int64_t c = 0; c < d; ++c) dot += q[c] * a.k_rows[j][kv_off + c];
        scores[j] = dot * a.scale;
        if (scores[j] > max_score) max_score = scores[j];
      }
      float denom = 0.0f;
      for (int64_t j = 0; j < a.num_keys; ++j) {
        if (a.k_positions[j] / a.block > q_block) continue;
        scores[j] = std::exp(scores[j] - max_score);
        denom += scores[j];
      }
      float* out = a.out + i * a.out_stride + h * d;
      for (int64_t c = 0; c < d; ++c) out[c] = 0.0f;
      for (int64_t j = 0; j < a.num_keys; ++j) {
        if (a.k_positions[j] / a.block > q_block) continue;
        float p = scores[j] / denom;
        for (int64_t c = 0; c < d; ++c) out[c] += p * a.v_rows[j][kv_off + c];
      }
    }
  }
}

// silu(g) * u = g / (1 + exp(-g)) * u
void ReferenceKernels::SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void ReferenceKernels::Ffn(const float* x, int64_t m, const FfnWeights& w, float* y) {
  const int64_t width = w.gate.rows;
  std::vector<float> gate(m * width), up(m * width);
  MatMul(x, m, w.gate, gate.data());
  MatMul(x, m, w.up, up.data());
  SwiGlu(gate.data(), up.data(), m * width, gate.data());
  MatMul(gate.data(), m, w.down, y);
}

void ReferenceKernels::Experts(const float* hidden, int64_t hidden_size,
                               const std::vector<ExpertTask>& tasks, float* out) {
  for (const ExpertTask& task : tasks) {
    const int64_t m = static_cast<int64_t>(task.input_rows.size());
    if (m == 0) continue;
    std::vector<float> x(m * hidden_size), y(m * hidden_size);
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(hidden + task.input_rows[i] * hidden_size, hidden_size, &x[i * hidden_size]);
    }
    Ffn(x.data(), m, *task.weights, y.data());
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(&y[i * hidden_size], hidden_size, out + task.output_rows[i] * hidden_size);
    }
  }
}

}  // namespace dmoe::model
