#include "model/cpu/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/dtype.h"

namespace dmoe::model {
namespace {

constexpr int kTileRows = 4;
constexpr int kLanes = 16;

// Converts row `n` of w to F32 into dst (or returns a pointer into w when already F32).
const float* RowAsF32Generic(const WeightMatrix& w, int64_t n, float* dst) {
  if (w.dtype == DType::kF32) return static_cast<const float*>(w.Row(n));
  ConvertToF32(w.dtype, w.Row(n), dst, w.cols);
  return dst;
}

// ---- generic: 16 independent lanes the compiler can vectorise; same order for every (t, n).
float DotGeneric(const float* x, const float* w, int64_t k) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l] * w[i + l];
  }
  for (int l = 0; i + l < k; ++l) acc[l] += x[i + l] * w[i + l];
  for (int step = kLanes / 2; step > 0; step /= 2) {
    for (int l = 0; l < step; ++l) acc[l] += acc[l + step];
  }
  return acc[0];
}

void GemmRowsGeneric(const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1,
                     float* y, int64_t ldy, float* scratch) {
  const int64_t k = w.cols;
  for (int64_t n = n0; n < n1; ++n) {
    const float* row = RowAsF32Generic(w, n, scratch);
    for (int64_t t = 0; t < m; ++t) y[t * ldy + n] = DotGeneric(x + t * k, row, k);
  }
}

// ---- AVX-512: 2 tokens x 4 weight rows per inner loop (8 accumulators hide FMA latency).
__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) const float* RowAsF32Avx512(
    const WeightMatrix& w, int64_t n, float* dst) {
  const int64_t k = w.cols;
  if (w.dtype == DType::kF32) return static_cast<const float*>(w.Row(n));
  const uint16_t* src = static_cast<const uint16_t*>(w.Row(n));
  int64_t i = 0;
  if (w.dtype == DType::kBF16) {
    for (; i + kLanes <= k; i += kLanes) {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(wide));
    }
    for (; i < k; ++i) dst[i] = Bf16ToF32(src[i]);
  } else {
    for (; i + kLanes <= k; i += kLanes) {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
    }
    for (; i < k; ++i) dst[i] = F16ToF32(src[i]);
  }
  return dst;
}

template <int kTokens>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline void DotTileAvx512(
    const float* x, int64_t k, const float* const* rows, float* out /* [kTokens][kTileRows] */) {
  __m512 acc[kTokens][kTileRows];
  for (int t = 0; t < kTokens; ++t)
    for (int r = 0; r < kTileRows; ++r) acc[t][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    __m512 xv[kTokens];
    for (int t = 0; t < kTokens; ++t) xv[t] = _mm512_loadu_ps(x + t * k + i);
    for (int r = 0; r < kTileRows; ++r) {
      __m512 wv = _mm512_loadu_ps(rows[r] + i);
      for (int t = 0; t < kTokens; ++t) acc[t][r] = _mm512_fmadd_ps(xv[t], wv, acc[t][r]);
    }
  }
  if (i < k) {
    __mmask16 mask = static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 xv[kTokens];
    for (int t = 0; t < kTokens; ++t) xv[t] = _mm512_maskz_loadu_ps(mask, x + t * k + i);
    for (int r = 0; r < kTileRows; ++r) {
      __m512 wv = _mm512_maskz_loadu_ps(mask, rows[r] + i);
      for (int t = 0; t < kTokens; ++t) acc[t][r] = _mm512_fmadd_ps(xv[t], wv, acc[t][r]);
    }
  }
  for (int t = 0; t < kTokens; ++t)
    for (int r = 0; r < kTileRows; ++r) out[t * kTileRows + r] = _mm512_reduce_add_ps(acc[t][r]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) void GemmRowsAvx512(
    const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
    int64_t ldy, float* scratch) {
  const int64_t k = w.cols;
  for (int64_t n = n0; n < n1; n += kTileRows) {
    const int nr = static_cast<int>(std::min<int64_t>(kTileRows, n1 - n));
    const float* rows[kTileRows];
    for (int r = 0; r < kTileRows; ++r) {
      // Short tiles repeat their first row; the extra results are discarded.
      rows[r] = r < nr ? RowAsF32Avx512(w, n + r, scratch + r * k) : rows[0];
    }
    float out[2 * kTileRows];
    int64_t t = 0;
    for (; t + 2 <= m; t += 2) {
      DotTileAvx512<2>(x + t * k, k, rows, out);
      for (int r = 0; r < nr; ++r) {
        y[t * ldy + n + r] = out[r];
        y[(t + 1) * ldy + n + r] = out[kTileRows + r];
      }
    }
    if (t < m) {
      DotTileAvx512<1>(x + t * k, k, rows, out);
      for (int r = 0; r < nr; ++r) y[t * ldy + n + r] = out[r];
    }
  }
}

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
  return has;
}

}  // namespace

int64_t GemmScratchFloats(int64_t k) { return kTileRows * k; }

std::string_view GemmIsa() { return HasAvx512() ? "avx512" : "generic"; }

void GemmRows(const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
              int64_t ldy, float* scratch) {
  if (m <= 0 || n0 >= n1) return;
  if (HasAvx512()) {
    GemmRowsAvx512(x, m, w, n0, n1, y, ldy, scratch);
  } else {
    GemmRowsGeneric(x, m, w, n0, n1, y, ldy, scratch);
  }
}

}  // namespace dmoe::model
