// The lane fold every fast CPU dot product ends with, for many dots at once.
//
// A dot product of the fast backend accumulates 16 lanes (lane l sums the terms at indices
// l mod 16, in ascending order) and then folds the lanes in one fixed tree: a[l] + a[l + 8],
// then + 4, + 2, + 1, which is what _mm512_reduce_add_ps (GCC) and the generic code do. These
// helpers fold several such accumulators together with shuffles; each sum still takes exactly
// the same additions, so results keep their bits. Internal to model/cpu.
#ifndef DMOE_MODEL_CPU_LANE_FOLD_H_
#define DMOE_MODEL_CPU_LANE_FOLD_H_

#include <immintrin.h>

namespace dmoe::model::internal {

// Lane 4c + j of the result is the lane sum of v[c + 4j], folded exactly as
// _mm512_reduce_add_ps folds one vector (a[l] + a[l + 8], then + 4, + 2, + 1), so every sum
// keeps its bits; 16 vectors take 15 shuffle pairs and 15 adds instead of 16 separate folds.
__attribute__((target("avx512f"))) inline __m512 ReduceAdd16(const __m512* v) {
  __m512 u[8], w[4], z[2];
  // u[i]: lanes 0-7 hold a[l] + a[l + 8] of v[2i], lanes 8-15 those of v[2i + 1].
  for (int i = 0; i < 8; ++i) {
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  // w[i]: 128-bit chunk j holds the 4-lane partial sums of v[4i + j].
  for (int i = 0; i < 4; ++i) {
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  }
  // z[i]: chunk c holds the 2-lane partial sums of v[8i + c] and v[8i + 4 + c].
  for (int i = 0; i < 2; ++i) {
    const __m512d x = _mm512_castps_pd(w[2 * i]), y = _mm512_castps_pd(w[2 * i + 1]);
    z[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// The AVX2 form of the fold (a 16-lane accumulator is two __m256: lanes 0-7 and 8-15).

// The fold of one accumulator, in _mm512_reduce_add_ps's order.
__attribute__((target("avx2"))) inline float ReduceAdd1Avx2(__m256 lo, __m256 hi) {
  const __m256 s1 = _mm256_add_ps(hi, lo);  // a[l + 8] + a[l]
  const __m128 s2 = _mm_add_ps(_mm256_extractf128_ps(s1, 1), _mm256_castps256_ps128(s1));
  const __m128 s3 = _mm_add_ps(s2, _mm_shuffle_ps(s2, s2, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(s3) + _mm_cvtss_f32(_mm_shuffle_ps(s3, s3, _MM_SHUFFLE(1, 1, 1, 1)));
}

// The last three steps (+ 4, + 2, + 1) for 8 accumulators already folded once (a[i] holds
// lanes l + 8 and l of accumulator i added): lane 4c + j of the result is the sum of
// a[2j + c].
__attribute__((target("avx2"))) inline __m256 ReduceAdd8x8Avx2(const __m256* a) {
  __m256 b[4], c[2];
  // b[i]: 128-bit half h holds the 4-lane partial sums of a[2i + h].
  for (int i = 0; i < 4; ++i) {
    b[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
                         _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31));
  }
  // c[i]: half h holds the 2-lane partial sums of a[4i + h] and a[4i + 2 + h].
  for (int i = 0; i < 2; ++i) {
    const __m256d x = _mm256_castps_pd(b[2 * i]), y = _mm256_castps_pd(b[2 * i + 1]);
    c[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
  }
  // Half h: sums of a[h], a[2 + h], a[4 + h], a[6 + h].
  return _mm256_add_ps(_mm256_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

}  // namespace dmoe::model::internal

#endif  // DMOE_MODEL_CPU_LANE_FOLD_H_
