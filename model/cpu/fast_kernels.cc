#include "model/cpu/fast_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "model/cpu/gemm.h"
#include "model/cpu/lane_fold.h"
#include "model/cpu/reference_kernels.h"

namespace dmoe::model {
namespace {

constexpr int kLanes = 16;

// Per-thread conversion scratch for GemmRows.
float* GemmScratch(int64_t k) {
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < GemmScratchFloats(k)) scratch.resize(GemmScratchFloats(k));
  return scratch.data();
}

// Lane l of the 16 accumulators sums a[i] * b[i] for i = l mod 16 in ascending i (multiply,
// then add: never fused), then a fixed tree folds the lanes. The AVX-512 version performs the
// same operations lane for lane, so both give the same bits.
float DotGeneric(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i + l < n; ++l) acc[l] += a[i + l] * b[i + l];
  for (int step = kLanes / 2; step > 0; step /= 2)
    for (int l = 0; l < step; ++l) acc[l] += acc[l + step];
  return acc[0];
}

// The product as the compiler must leave it: GCC contracts a vector multiply followed by an
// add into one FMA (one rounding instead of two) when the target has FMA; an empty asm that
// "changes" the product stops that.
__attribute__((target("avx512f"))) inline __m512 Rounded(__m512 product) {
  asm("" : "+v"(product));
  return product;
}

__attribute__((target("avx512f"))) float DotAvx512(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    acc = _mm512_add_ps(acc,
                        Rounded(_mm512_mul_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i))));
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 product = Rounded(
        _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i)));
    acc = _mm512_mask_add_ps(acc, mask, acc, product);
  }
  float lanes[kLanes];
  _mm512_storeu_ps(lanes, acc);
  for (int step = kLanes / 2; step > 0; step /= 2)
    for (int l = 0; l < step; ++l) lanes[l] += lanes[l + step];
  return lanes[0];
}

// scores[j] = DotAvx512(q, rows[j] + offset, n) * scale for 16 rows: the same products, sums
// and lane fold as 16 DotAvx512 calls, the folds done together (ReduceAdd16).
__attribute__((target("avx512f"))) void ScaledDots16Avx512(const float* q,
                                                           const float* const* rows,
                                                           int64_t offset, int64_t n,
                                                           float scale, float* scores) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 qv = _mm512_loadu_ps(q + i);
    for (int j = 0; j < 16; ++j) {
      acc[j] = _mm512_add_ps(acc[j],
                             Rounded(_mm512_mul_ps(qv, _mm512_loadu_ps(rows[j] + offset + i))));
    }
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 qv = _mm512_maskz_loadu_ps(mask, q + i);
    for (int j = 0; j < 16; ++j) {
      const __m512 product =
          Rounded(_mm512_mul_ps(qv, _mm512_maskz_loadu_ps(mask, rows[j] + offset + i)));
      acc[j] = _mm512_mask_add_ps(acc[j], mask, acc[j], product);
    }
  }
  // ReduceAdd16 puts the sum of v[c + 4j] in lane 4c + j: v[c + 4j] = acc[4c + j] gives
  // lane j the sum of row j.
  __m512 v[16];
  for (int c = 0; c < 4; ++c)
    for (int j = 0; j < 4; ++j) v[c + 4 * j] = acc[4 * c + j];
  _mm512_storeu_ps(scores, _mm512_mul_ps(internal::ReduceAdd16(v), _mm512_set1_ps(scale)));
}

// acc[c] += p * v[c] (multiply, then add), element by element.
void AxpyGeneric(float p, const float* v, float* acc, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += p * v[c];
}

__attribute__((target("avx512f"))) void AxpyAvx512(float p, const float* v, float* acc,
                                                   int64_t n) {
  const __m512 pv = _mm512_set1_ps(p);
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    _mm512_storeu_ps(acc + c, _mm512_add_ps(_mm512_loadu_ps(acc + c),
                                            Rounded(_mm512_mul_ps(pv, _mm512_loadu_ps(v + c)))));
  }
  if (c < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - c)) - 1);
    _mm512_mask_storeu_ps(
        acc + c, mask,
        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, acc + c),
                      Rounded(_mm512_mul_ps(pv, _mm512_maskz_loadu_ps(mask, v + c)))));
  }
}

// ---- AVX2: the AVX-512 functions above on two 8-lane halves, lane for lane.
#define DMOE_AVX2 __attribute__((target("avx2,fma")))

DMOE_AVX2 inline __m256 Rounded2(__m256 product) {
  asm("" : "+x"(product));
  return product;
}

// Mask of the first `count` (0..8) lanes, for the masked tails.
DMOE_AVX2 inline __m256i FirstLanes(int64_t count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), index);
}

DMOE_AVX2 float DotAvx2(const float* a, const float* b, int64_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    lo = _mm256_add_ps(lo, Rounded2(_mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i))));
    hi = _mm256_add_ps(
        hi, Rounded2(_mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8))));
  }
  if (i < n) {
    // Lanes past the end keep their sums, as _mm512_mask_add_ps leaves them.
    const __m256i m_lo = FirstLanes(std::min<int64_t>(8, n - i));
    const __m256i m_hi = FirstLanes(std::max<int64_t>(0, n - i - 8));
    const __m256 p_lo = Rounded2(
        _mm256_mul_ps(_mm256_maskload_ps(a + i, m_lo), _mm256_maskload_ps(b + i, m_lo)));
    const __m256 p_hi = Rounded2(_mm256_mul_ps(_mm256_maskload_ps(a + i + 8, m_hi),
                                               _mm256_maskload_ps(b + i + 8, m_hi)));
    lo = _mm256_blendv_ps(lo, _mm256_add_ps(lo, p_lo), _mm256_castsi256_ps(m_lo));
    hi = _mm256_blendv_ps(hi, _mm256_add_ps(hi, p_hi), _mm256_castsi256_ps(m_hi));
  }
  float lanes[kLanes];
  _mm256_storeu_ps(lanes, lo);
  _mm256_storeu_ps(lanes + 8, hi);
  for (int step = kLanes / 2; step > 0; step /= 2)
    for (int l = 0; l < step; ++l) lanes[l] += lanes[l + step];
  return lanes[0];
}

DMOE_AVX2 void AxpyAvx2(float p, const float* v, float* acc, int64_t n) {
  const __m256 pv = _mm256_set1_ps(p);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_loadu_ps(acc + c),
                                            Rounded2(_mm256_mul_ps(pv, _mm256_loadu_ps(v + c)))));
  }
  if (c < n) {
    const __m256i mask = FirstLanes(n - c);
    _mm256_maskstore_ps(acc + c, mask,
                        _mm256_add_ps(_mm256_maskload_ps(acc + c, mask),
                                      Rounded2(_mm256_mul_ps(pv, _mm256_maskload_ps(v + c, mask)))));
  }
}

#undef DMOE_AVX2

inline float Dot(const float* a, const float* b, int64_t n) {
  switch (ActiveKernelIsa()) {
    case KernelIsa::kAvx512: return DotAvx512(a, b, n);
    case KernelIsa::kAvx2: return DotAvx2(a, b, n);
    case KernelIsa::kGeneric: break;
  }
  return DotGeneric(a, b, n);
}

inline void Axpy(float p, const float* v, float* acc, int64_t n) {
  switch (ActiveKernelIsa()) {
    case KernelIsa::kAvx512: AxpyAvx512(p, v, acc, n); return;
    case KernelIsa::kAvx2: AxpyAvx2(p, v, acc, n); return;
    case KernelIsa::kGeneric: break;
  }
  AxpyGeneric(p, v, acc, n);
}

inline float SumSquares(const float* a, int64_t n) { return Dot(a, a, n); }

// Single-threaded SwiGLU FFN for one expert's rows (used inside the per-expert parallel loop).
void FfnSingleThread(const float* x, int64_t m, const FfnWeights& w, float* y) {
  const int64_t width = w.gate.rows, hidden = w.gate.cols;
  // Reused across experts and layers: no allocation per expert.
  thread_local std::vector<float> gate, up;
  if (static_cast<int64_t>(gate.size()) < m * width) {
    gate.resize(m * width);
    up.resize(m * width);
  }
  float* scratch = GemmScratch(std::max(hidden, width));
  GemmRows(x, m, w.gate, 0, width, gate.data(), width, scratch);
  GemmRows(x, m, w.up, 0, width, up.data(), width, scratch);
  for (int64_t i = 0; i < m * width; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  GemmRows(gate.data(), m, w.down, 0, hidden, y, hidden, scratch);
}

}  // namespace

FastKernels::FastKernels(const FastKernelsOptions& options) : pool_(options.num_threads) {}

void FastKernels::MatMul(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  // Chunks of whole 4-row tiles over the output dimension, handed out dynamically: a thread
  // that is slowed down (another process on its core, a cold page) takes fewer chunks instead
  // of holding the others at the join. Every output is one dot whatever thread computes it.
  const int64_t tiles = (w.rows + 3) / 4;
  const int threads = pool_.num_threads();
  const int64_t chunk = std::max<int64_t>(8, tiles / (8 * threads));
  const int64_t workers = std::min<int64_t>(threads, std::max<int64_t>(1, tiles / 8));
  std::atomic<int64_t> next{0};
  pool_.ParallelFor(workers, 1, [&](int64_t, int64_t) {
    float* scratch = GemmScratch(w.cols);
    for (int64_t begin = next.fetch_add(chunk); begin < tiles; begin = next.fetch_add(chunk)) {
      const int64_t end = std::min(begin + chunk, tiles);
      GemmRows(x, m, w, begin * 4, std::min(end * 4, w.rows), y, w.rows, scratch);
    }
  });
}

void FastKernels::RmsNorm(const float* x, int64_t rows, int64_t n, const float* weight, float eps,
                          float* y) {
  // A block's few rows are a microsecond of work: waking the pool would cost more.
  pool_.ParallelFor(rows, std::max<int64_t>(16, 32768 / std::max<int64_t>(1, n)),
                    [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* in = x + r * n;
      float* out = y + r * n;
      float inv = 1.0f / std::sqrt(SumSquares(in, n) / static_cast<float>(n) + eps);
      for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (in[i] * inv);
    }
  });
}

void FastKernels::QkNormRope(float* qkv, int64_t m, const int64_t* positions,
                             const QkNormRopeParams& p) {
  const int64_t d = p.head_dim, half = p.rotary_dim / 2;
  const int64_t heads = p.num_heads + p.num_kv_heads;
  const int64_t row_width = (p.num_heads + 2 * p.num_kv_heads) * d;
  const std::vector<float> inv_freq = RopeInverseFrequencies(p.rotary_dim, p.rope_theta);
  pool_.ParallelFor(m, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> cos_table(half), sin_table(half);
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        float angle = static_cast<float>(positions[t]) * inv_freq[i];
        cos_table[i] = std::cos(angle);
        sin_table[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* x = qkv + t * row_width + h * d;
        const float* norm = h < p.num_heads ? p.q_norm : p.k_norm;
        if (norm) {
          float inv = 1.0f / std::sqrt(SumSquares(x, d) / static_cast<float>(d) + p.eps);
          for (int64_t i = 0; i < d; ++i) x[i] = norm[i] * (x[i] * inv);
        }
        for (int64_t i = 0; i < half; ++i) {
          float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * cos_table[i] - x2 * sin_table[i];
          x[i + half] = x2 * cos_table[i] + x1 * sin_table[i];
        }
      }
    }
  });
}

void FastKernels::Attention(const AttentionArgs& a) {
  const int64_t group = a.num_heads / a.num_kv_heads, d = a.head_dim;
  // One work item per (query, head); scores in thread-local scratch.
  pool_.ParallelFor(a.num_queries * a.num_heads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(a.num_keys);
    std::vector<float> acc(d);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / a.num_heads, h = item % a.num_heads;
      const int64_t q_block = a.q_positions[i] / a.block;
      const float* q = a.q + i * a.q_stride + h * d;
      const int64_t kv_off = (h / group) * d;
      // Keys are in position order, so the visible ones are a prefix of the list.
      int64_t visible = 0;
      while (visible < a.num_keys && a.k_positions[visible] / a.block <= q_block) ++visible;
      float max_score = -std::numeric_limits<float>::infinity();
      int64_t j = 0;
      if (ActiveKernelIsa() == KernelIsa::kAvx512) {
        for (; j + 16 <= visible; j += 16) {
          ScaledDots16Avx512(q, a.k_rows + j, kv_off, d, a.scale, &scores[j]);
        }
      }
      for (; j < visible; ++j) scores[j] = Dot(q, a.k_rows[j] + kv_off, d) * a.scale;
      for (j = 0; j < visible; ++j) max_score = std::max(max_score, scores[j]);
      float denom = 0.0f;
      for (int64_t j = 0; j < visible; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        denom += scores[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < visible; ++j) {
        Axpy(scores[j] / denom, a.v_rows[j] + kv_off, acc.data(), d);
      }
      std::copy(acc.begin(), acc.end(), a.out + i * a.out_stride + h * d);
    }
  });
}

void FastKernels::SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
  pool_.ParallelFor(count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  });
}

void FastKernels::Ffn(const float* x, int64_t m, const FfnWeights& w, float* y) {
  const int64_t width = w.gate.rows;
  std::vector<float> gate(m * width), up(m * width);
  MatMul(x, m, w.gate, gate.data());
  MatMul(x, m, w.up, up.data());
  SwiGlu(gate.data(), up.data(), m * width, gate.data());
  MatMul(gate.data(), m, w.down, y);
}

void FastKernels::Experts(const float* hidden, int64_t hidden_size,
                          const std::vector<ExpertTask>& tasks, float* out) {
  // Whole experts per thread, handed out dynamically: one synchronisation per layer instead
  // of three per expert, and each expert's weights are read by exactly one thread.
  // Largest experts first (longest-processing-time order): the last tasks handed out are
  // the short ones, so the threads finish together. Order does not change any output.
  thread_local std::vector<uint32_t> order;
  order.resize(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) order[i] = static_cast<uint32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return tasks[a].input_rows.size() > tasks[b].input_rows.size();
  });
  const std::vector<uint32_t>& by_size = order;
  std::atomic<size_t> next{0};
  pool_.ParallelFor(pool_.num_threads(), 1, [&](int64_t, int64_t) {
    thread_local std::vector<float> x, y;
    for (size_t i = next.fetch_add(1); i < tasks.size(); i = next.fetch_add(1)) {
      const ExpertTask& task = tasks[by_size[i]];
      const int64_t m = static_cast<int64_t>(task.input_rows.size());
      if (m == 0) continue;
      if (static_cast<int64_t>(x.size()) < m * hidden_size) {
        x.resize(m * hidden_size);
        y.resize(m * hidden_size);
      }
      for (int64_t r = 0; r < m; ++r) {
        std::copy_n(hidden + task.input_rows[r] * hidden_size, hidden_size, &x[r * hidden_size]);
      }
      FfnSingleThread(x.data(), m, *task.weights, y.data());
      for (int64_t r = 0; r < m; ++r) {
        std::copy_n(&y[r * hidden_size], hidden_size, out + task.output_rows[r] * hidden_size);
      }
    }
  });
}

}  // namespace dmoe::model
