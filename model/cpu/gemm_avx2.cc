// The AVX2+FMA GEMM: the AVX-512 path's arithmetic on 256-bit registers. A 16-lane accumulator
// is a pair of __m256 (lanes 0-7, lanes 8-15), each lane takes the same FMAs in the same order,
// the masked tail feeds zeros exactly as the AVX-512 masked loads do, and the lane fold is the
// same tree, so every output has the AVX-512 path's bits.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/dtype.h"
#include "model/cpu/gemm_isa.h"
#include "model/cpu/lane_fold.h"

namespace dmoe::model::internal {
namespace {

constexpr int kTileRows = 4;
constexpr int kLanes = 16;

#define DMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

// Load 8 weights starting at element i of a row as F32; the partial form reads only the first
// `count` (0..7) and leaves zeros in the other lanes, as the AVX-512 masked loads do.
struct F32Loader2 {
  DMOE_AVX2 static __m256 Load(const void* row, int64_t i) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  }
  DMOE_AVX2 static __m256 LoadPartial(const void* row, int64_t i, int count) {
    alignas(32) float tmp[8] = {};
    std::memcpy(tmp, static_cast<const float*>(row) + i, count * sizeof(float));
    return _mm256_load_ps(tmp);
  }
};
struct Bf16Loader2 {
  DMOE_AVX2 static __m256 Widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  DMOE_AVX2 static __m256 Load(const void* row, int64_t i) {
    return Widen(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)));
  }
  DMOE_AVX2 static __m256 LoadPartial(const void* row, int64_t i, int count) {
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, static_cast<const uint16_t*>(row) + i, count * sizeof(uint16_t));
    return Widen(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
};
struct F16Loader2 {
  DMOE_AVX2 static __m256 Load(const void* row, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)));
  }
  DMOE_AVX2 static __m256 LoadPartial(const void* row, int64_t i, int count) {
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, static_cast<const uint16_t*>(row) + i, count * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
};

DMOE_AVX2 const float* RowAsF32Avx2(const WeightMatrix& w, int64_t n, float* dst) {
  const int64_t k = w.cols;
  if (w.dtype == DType::kF32) return static_cast<const float*>(w.Row(n));
  int64_t i = 0;
  if (w.dtype == DType::kI8) {  // q8: 8 values share one scale (blocks of 32)
    const int8_t* q = static_cast<const int8_t*>(w.Row(n));
    const float* scales = w.scales + n * (k / kQ8Block);
    for (; i + 8 <= k; i += 8) {
      const __m256 v = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i))));
      _mm256_storeu_ps(dst + i, _mm256_mul_ps(v, _mm256_set1_ps(scales[i / kQ8Block])));
    }
    for (; i < k; ++i) dst[i] = static_cast<float>(q[i]) * scales[i / kQ8Block];
    return dst;
  }
  for (; i + 8 <= k; i += 8) {
    _mm256_storeu_ps(dst + i, w.dtype == DType::kBF16 ? Bf16Loader2::Load(w.Row(n), i)
                                                      : F16Loader2::Load(w.Row(n), i));
  }
  const uint16_t* src = static_cast<const uint16_t*>(w.Row(n));
  for (; i < k; ++i) dst[i] = w.dtype == DType::kBF16 ? Bf16ToF32(src[i]) : F16ToF32(src[i]);
  return dst;
}

// acc[t][r] (one 8-lane half `half` of the 16-lane accumulators) for kTokens tokens x 2 rows:
// the half's lanes see the same FMAs in the same order as in the AVX-512 path; the halves are
// independent, so computing them one after the other changes no bits. 2 rows x <= 4 tokens
// keeps accumulators, x and w within AVX2's 16 registers.
template <int kTokens, typename Loader>
DMOE_AVX2 inline void HalfTileAvx2(const float* x, int64_t k, const void* row0, const void* row1,
                                   int half, __m256* acc /* [kTokens][2] */) {
  __m256 a[kTokens][2];
  for (int t = 0; t < kTokens; ++t) a[t][0] = a[t][1] = _mm256_setzero_ps();
  const int off = 8 * half;
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    const __m256 w0 = Loader::Load(row0, i + off), w1 = Loader::Load(row1, i + off);
    for (int t = 0; t < kTokens; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * k + i + off);
      a[t][0] = _mm256_fmadd_ps(xv, w0, a[t][0]);
      a[t][1] = _mm256_fmadd_ps(xv, w1, a[t][1]);
    }
  }
  if (i < k) {
    // The AVX-512 tail: masked lanes get 0 * 0 added, so this half does the same.
    const int count = static_cast<int>(std::clamp<int64_t>(k - i - off, 0, 8));
    const __m256 w0 = Loader::LoadPartial(row0, i + off, count);
    const __m256 w1 = Loader::LoadPartial(row1, i + off, count);
    for (int t = 0; t < kTokens; ++t) {
      const __m256 xv = F32Loader2::LoadPartial(x + t * k, i + off, count);
      a[t][0] = _mm256_fmadd_ps(xv, w0, a[t][0]);
      a[t][1] = _mm256_fmadd_ps(xv, w1, a[t][1]);
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    acc[t * 2] = a[t][0];
    acc[t * 2 + 1] = a[t][1];
  }
}

// out[t * 4 + r] = dot(x[t], row r) for kTokens tokens x 4 rows, as DotTileAvx512.
template <int kTokens, typename Loader>
DMOE_AVX2 inline void DotTileAvx2(const float* x, int64_t k, const void* const* rows,
                                  float* out /* [kTokens][kTileRows] */) {
  // lo[t][r] / hi[t][r]: lanes 0-7 / 8-15 of the accumulator of token t, row r.
  __m256 lo[kTokens][kTileRows], hi[kTokens][kTileRows];
  for (int pair = 0; pair < kTileRows / 2; ++pair) {
    for (int half = 0; half < 2; ++half) {
      __m256 acc[kTokens * 2];
      HalfTileAvx2<kTokens, Loader>(x, k, rows[2 * pair], rows[2 * pair + 1], half, acc);
      for (int t = 0; t < kTokens; ++t) {
        for (int j = 0; j < 2; ++j) (half ? hi : lo)[t][2 * pair + j] = acc[t * 2 + j];
      }
    }
  }
  if constexpr (kTokens == 1) {
    for (int r = 0; r < kTileRows; ++r) out[r] = ReduceAdd1Avx2(lo[0][r], hi[0][r]);
  } else {
    // ReduceAdd8x8Avx2 puts the sum of a[2j + c] in lane 4c + j: a[2r + c] = the accumulator
    // of token 2 * pair + c, row r, gives lanes 4c + r, the layout of out.
    for (int pair = 0; pair < (kTokens + 1) / 2; ++pair) {
      __m256 a[8];
      for (int r = 0; r < kTileRows; ++r) {
        for (int c = 0; c < 2; ++c) {
          const int t = 2 * pair + c;
          a[2 * r + c] = t < kTokens ? _mm256_add_ps(hi[t < kTokens ? t : 0][r],
                                                     lo[t < kTokens ? t : 0][r])
                                     : _mm256_setzero_ps();
        }
      }
      const __m256 folded = ReduceAdd8x8Avx2(a);
      if (2 * pair + 1 < kTokens) {
        _mm256_storeu_ps(out + 8 * pair, folded);
      } else {
        _mm_storeu_ps(out + 8 * pair, _mm256_castps256_ps128(folded));
      }
    }
  }
}

template <typename Loader>
DMOE_AVX2 void TileAllTokensAvx2(const float* x, int64_t m, int64_t k, const void* const* rows,
                                 int nr, int64_t n, float* y, int64_t ldy) {
  constexpr int kTokenTile = 4;
  float out[kTokenTile * kTileRows];
  int64_t t = 0;
  auto store = [&](int tokens) {
    for (int j = 0; j < tokens; ++j)
      for (int r = 0; r < nr; ++r) y[(t + j) * ldy + n + r] = out[j * kTileRows + r];
  };
  for (; t + kTokenTile <= m; t += kTokenTile) {
    DotTileAvx2<4, Loader>(x + t * k, k, rows, out);
    store(4);
  }
  switch (m - t) {
    case 3: DotTileAvx2<3, Loader>(x + t * k, k, rows, out); store(3); break;
    case 2: DotTileAvx2<2, Loader>(x + t * k, k, rows, out); store(2); break;
    case 1: DotTileAvx2<1, Loader>(x + t * k, k, rows, out); store(1); break;
    default: break;
  }
}

}  // namespace

DMOE_AVX2 void GemmRowsAvx2(const float* x, int64_t m, const WeightMatrix& w, int64_t n0,
                            int64_t n1, float* y, int64_t ldy, float* scratch) {
  const int64_t k = w.cols;
  // The same tiling, widening and prefetch as GemmRowsAvx512 (see there for why).
  const bool widen_once = w.dtype != DType::kF32 && (m > 4 || w.dtype == DType::kI8);
  const size_t row_bytes = static_cast<size_t>(k) * DTypeSize(w.dtype);
  auto prefetch_rows = [&](int64_t first, int64_t count) {
    const char* p = static_cast<const char*>(w.data) + static_cast<size_t>(first) * row_bytes;
    const size_t bytes = static_cast<size_t>(count) * row_bytes;
    for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  };
  prefetch_rows(n0, std::min<int64_t>(kTileRows, n1 - n0));
  for (int64_t n = n0; n < n1; n += kTileRows) {
    const int nr = static_cast<int>(std::min<int64_t>(kTileRows, n1 - n));
    if (n + kTileRows < n1) {
      prefetch_rows(n + kTileRows, std::min<int64_t>(kTileRows, n1 - n - kTileRows));
    }
    const void* rows[kTileRows];
    for (int r = 0; r < kTileRows; ++r) {
      if (r >= nr) {
        rows[r] = rows[0];
      } else if (widen_once) {
        rows[r] = RowAsF32Avx2(w, n + r, scratch + r * k);
      } else {
        rows[r] = w.Row(n + r);
      }
    }
    if (widen_once || w.dtype == DType::kF32) {
      TileAllTokensAvx2<F32Loader2>(x, m, k, rows, nr, n, y, ldy);
    } else if (w.dtype == DType::kBF16) {
      TileAllTokensAvx2<Bf16Loader2>(x, m, k, rows, nr, n, y, ldy);
    } else {
      TileAllTokensAvx2<F16Loader2>(x, m, k, rows, nr, n, y, ldy);
    }
  }
}

#undef DMOE_AVX2

}  // namespace dmoe::model::internal
