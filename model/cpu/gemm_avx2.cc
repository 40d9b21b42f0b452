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

// 16 lanes as two halves.
struct Lanes16 {
  __m256 lo, hi;
};

// Loads 16 weights starting at element i of a row as F32; the masked form reads only the
// first `count` (< 16) and leaves zeros in the other lanes.
struct F32Loader2 {
  DMOE_AVX2 static Lanes16 Load(const void* row, int64_t i) {
    const float* p = static_cast<const float*>(row) + i;
    return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
  }
  DMOE_AVX2 static Lanes16 LoadPartial(const void* row, int64_t i, int count) {
    alignas(32) float tmp[kLanes] = {};
    std::memcpy(tmp, static_cast<const float*>(row) + i, count * sizeof(float));
    return {_mm256_load_ps(tmp), _mm256_load_ps(tmp + 8)};
  }
};
struct Bf16Loader2 {
  DMOE_AVX2 static __m256 Widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  DMOE_AVX2 static Lanes16 Load(const void* row, int64_t i) {
    const uint16_t* p = static_cast<const uint16_t*>(row) + i;
    return {Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
            Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  DMOE_AVX2 static Lanes16 LoadPartial(const void* row, int64_t i, int count) {
    alignas(32) uint16_t tmp[kLanes] = {};
    std::memcpy(tmp, static_cast<const uint16_t*>(row) + i, count * sizeof(uint16_t));
    return Load(tmp, 0);
  }
};
struct F16Loader2 {
  DMOE_AVX2 static Lanes16 Load(const void* row, int64_t i) {
    const uint16_t* p = static_cast<const uint16_t*>(row) + i;
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  DMOE_AVX2 static Lanes16 LoadPartial(const void* row, int64_t i, int count) {
    alignas(32) uint16_t tmp[kLanes] = {};
    std::memcpy(tmp, static_cast<const uint16_t*>(row) + i, count * sizeof(uint16_t));
    return Load(tmp, 0);
  }
};

DMOE_AVX2 const float* RowAsF32Avx2(const WeightMatrix& w, int64_t n, float* dst) {
  const int64_t k = w.cols;
  if (w.dtype == DType::kF32) return static_cast<const float*>(w.Row(n));
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    const Lanes16 v =
        w.dtype == DType::kBF16 ? Bf16Loader2::Load(w.Row(n), i) : F16Loader2::Load(w.Row(n), i);
    _mm256_storeu_ps(dst + i, v.lo);
    _mm256_storeu_ps(dst + i + 8, v.hi);
  }
  const uint16_t* src = static_cast<const uint16_t*>(w.Row(n));
  for (; i < k; ++i) dst[i] = w.dtype == DType::kBF16 ? Bf16ToF32(src[i]) : F16ToF32(src[i]);
  return dst;
}

// out[t * 4 + r] = dot(x[t], row r) for kTokens tokens x 4 rows, as DotTileAvx512.
template <int kTokens, typename Loader>
DMOE_AVX2 inline void DotTileAvx2(const float* x, int64_t k, const void* const* rows,
                                  float* out /* [kTokens][kTileRows] */) {
  Lanes16 acc[kTokens][kTileRows];
  for (int t = 0; t < kTokens; ++t)
    for (int r = 0; r < kTileRows; ++r) acc[t][r] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  auto step = [&](const Lanes16* xv, const Lanes16* wv) DMOE_AVX2 {
    for (int r = 0; r < kTileRows; ++r) {
      for (int t = 0; t < kTokens; ++t) {
        acc[t][r].lo = _mm256_fmadd_ps(xv[t].lo, wv[r].lo, acc[t][r].lo);
        acc[t][r].hi = _mm256_fmadd_ps(xv[t].hi, wv[r].hi, acc[t][r].hi);
      }
    }
  };
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    Lanes16 xv[kTokens], wv[kTileRows];
    for (int t = 0; t < kTokens; ++t) xv[t] = F32Loader2::Load(x + t * k, i);
    for (int r = 0; r < kTileRows; ++r) wv[r] = Loader::Load(rows[r], i);
    step(xv, wv);
  }
  if (i < k) {
    const int count = static_cast<int>(k - i);
    Lanes16 xv[kTokens], wv[kTileRows];
    for (int t = 0; t < kTokens; ++t) xv[t] = F32Loader2::LoadPartial(x + t * k, i, count);
    for (int r = 0; r < kTileRows; ++r) wv[r] = Loader::LoadPartial(rows[r], i, count);
    step(xv, wv);
  }
  if constexpr (kTokens == 1) {
    for (int r = 0; r < kTileRows; ++r) out[r] = ReduceAdd1Avx2(acc[0][r].lo, acc[0][r].hi);
  } else {
    // ReduceAdd8x8Avx2 puts the sum of a[2j + c] in lane 4c + j: a[2r + t] = acc[t][r] for
    // tokens t, t + 1 gives lanes 4t + r, the layout of out.
    for (int pair = 0; pair < (kTokens + 1) / 2; ++pair) {
      __m256 a[8];
      for (int r = 0; r < kTileRows; ++r) {
        for (int c = 0; c < 2; ++c) {
          const int t = 2 * pair + c;
          a[2 * r + c] = t < kTokens ? _mm256_add_ps(acc[t < kTokens ? t : 0][r].hi,
                                                     acc[t < kTokens ? t : 0][r].lo)
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
  const bool widen_once = w.dtype != DType::kF32 && m > 4;
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
