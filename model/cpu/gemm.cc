#include "model/cpu/gemm.h"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "model/cpu/gemm_isa.h"
#include "model/cpu/lane_fold.h"

namespace dmoe::model {
namespace {

using internal::ReduceAdd16;

constexpr int kTileRows = 4;
constexpr int kLanes = 16;

// Converts row `n` of w to F32 into dst (or returns a pointer into w when already F32).
const float* RowAsF32Generic(const WeightMatrix& w, int64_t n, float* dst) {
  if (w.dtype == DType::kF32) return static_cast<const float*>(w.Row(n));
  w.RowToF32(n, dst);
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
  int64_t i = 0;
  if (w.dtype == DType::kI8) {  // q8: 16 values share one scale (blocks of 32)
    const int8_t* q = static_cast<const int8_t*>(w.Row(n));
    const float* scales = w.scales + n * (k / kQ8Block);
    for (; i + kLanes <= k; i += kLanes) {
      const __m512 v = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i))));
      _mm512_storeu_ps(dst + i, _mm512_mul_ps(v, _mm512_set1_ps(scales[i / kQ8Block])));
    }
    for (; i < k; ++i) dst[i] = static_cast<float>(q[i]) * scales[i / kQ8Block];
    return dst;
  }
  const uint16_t* src = static_cast<const uint16_t*>(w.Row(n));
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

// Loads 16 weights starting at element i of a row as F32 (masked: only `mask` lanes).
struct F32Loader {
  __attribute__((target("avx512f"))) static __m512 Load(const void* row, int64_t i) {
    return _mm512_loadu_ps(static_cast<const float*>(row) + i);
  }
  __attribute__((target("avx512f"))) static __m512 LoadMasked(const void* row, int64_t i,
                                                               __mmask16 mask) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(row) + i);
  }
};
struct Bf16Loader {
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 Widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 Load(const void* row,
                                                                           int64_t i) {
    return Widen(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i)));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl"))) static __m512 LoadMasked(
      const void* row, int64_t i, __mmask16 mask) {
    return Widen(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + i));
  }
};
struct F16Loader {
  __attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static __m512 Load(const void* row,
                                                                                 int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i)));
  }
  __attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static __m512 LoadMasked(
      const void* row, int64_t i, __mmask16 mask) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + i));
  }
};

// out[t][r] = dot(x[t], row r) for kTokens tokens x 4 rows. Each dot: 16 lanes over k
// ascending, masked tail, then the lane fold of _mm512_reduce_add_ps (done by ReduceAdd16 for
// several tokens) — the same sequence for every tile shape.
template <int kTokens, typename Loader>
__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) inline void DotTileAvx512(
    const float* x, int64_t k, const void* const* rows, float* out /* [kTokens][kTileRows] */) {
  __m512 acc[kTokens][kTileRows];
  for (int t = 0; t < kTokens; ++t)
    for (int r = 0; r < kTileRows; ++r) acc[t][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    __m512 xv[kTokens];
    for (int t = 0; t < kTokens; ++t) xv[t] = _mm512_loadu_ps(x + t * k + i);
    for (int r = 0; r < kTileRows; ++r) {
      __m512 wv = Loader::Load(rows[r], i);
      for (int t = 0; t < kTokens; ++t) acc[t][r] = _mm512_fmadd_ps(xv[t], wv, acc[t][r]);
    }
  }
  if (i < k) {
    __mmask16 mask = static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 xv[kTokens];
    for (int t = 0; t < kTokens; ++t) xv[t] = _mm512_maskz_loadu_ps(mask, x + t * k + i);
    for (int r = 0; r < kTileRows; ++r) {
      __m512 wv = Loader::LoadMasked(rows[r], i, mask);
      for (int t = 0; t < kTokens; ++t) acc[t][r] = _mm512_fmadd_ps(xv[t], wv, acc[t][r]);
    }
  }
  if constexpr (kTokens == 1) {
    for (int r = 0; r < kTileRows; ++r) out[r] = _mm512_reduce_add_ps(acc[0][r]);
  } else {
    // All dots of the tile folded together; missing tokens are zero vectors whose lanes are
    // not stored.
    __m512 v[16];
    for (int t = 0; t < 4; ++t)
      for (int r = 0; r < kTileRows; ++r)
        v[t + 4 * r] = t < kTokens ? acc[t < kTokens ? t : 0][r] : _mm512_setzero_ps();
    __m512 folded = ReduceAdd16(v);
    if constexpr (kTokens == 4) {
      _mm512_storeu_ps(out, folded);
    } else {
      _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << (4 * kTokens)) - 1), folded);
    }
  }
}

template <typename Loader>
__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) void TileAllTokens(
    const float* x, int64_t m, int64_t k, const void* const* rows, int nr, int64_t n, float* y,
    int64_t ldy) {
  constexpr int kTokenTile = 4;
  float out[kTokenTile * kTileRows];
  int64_t t = 0;
  auto store = [&](int tokens) {
    for (int j = 0; j < tokens; ++j)
      for (int r = 0; r < nr; ++r) y[(t + j) * ldy + n + r] = out[j * kTileRows + r];
  };
  for (; t + kTokenTile <= m; t += kTokenTile) {
    DotTileAvx512<4, Loader>(x + t * k, k, rows, out);
    store(4);
  }
  switch (m - t) {
    case 3: DotTileAvx512<3, Loader>(x + t * k, k, rows, out); store(3); break;
    case 2: DotTileAvx512<2, Loader>(x + t * k, k, rows, out); store(2); break;
    case 1: DotTileAvx512<1, Loader>(x + t * k, k, rows, out); store(1); break;
    default: break;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))) void GemmRowsAvx512(
    const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
    int64_t ldy, float* scratch) {
  const int64_t k = w.cols;
  // Few tokens: widen weights in registers as they stream by. Many tokens: widen each tile
  // once into F32 scratch, which every token tile then reuses. Same arithmetic either way.
  // q8 is always widened once (its scales make a register loader of its own not worth it).
  const bool widen_once = w.dtype != DType::kF32 && (m > 4 || w.dtype == DType::kI8);
  // Weight rows are contiguous, so a tile is kTileRows * k consecutive weights, usually a new
  // 4 KiB page, where the hardware prefetchers stop. Requesting every line of the next tile
  // before computing this one keeps the memory busy (about 2x on few-token GEMVs).
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
      // Short tiles repeat their first row; the extra results are discarded.
      if (r >= nr) {
        rows[r] = rows[0];
      } else if (widen_once) {
        rows[r] = RowAsF32Avx512(w, n + r, scratch + r * k);
      } else {
        rows[r] = w.Row(n + r);
      }
    }
    if (widen_once || w.dtype == DType::kF32) {
      TileAllTokens<F32Loader>(x, m, k, rows, nr, n, y, ldy);
    } else if (w.dtype == DType::kBF16) {
      TileAllTokens<Bf16Loader>(x, m, k, rows, nr, n, y, ldy);
    } else {
      TileAllTokens<F16Loader>(x, m, k, rows, nr, n, y, ldy);
    }
  }
}

// CPUID.1:ECX.F16C. Not __builtin_cpu_supports("f16c"): clang 14 rejects that feature name
// (the sanitizer and fuzz builds use clang).
bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

KernelIsa BestIsa() {
  for (KernelIsa isa : {KernelIsa::kAvx512, KernelIsa::kAvx2}) {
    if (CpuSupports(isa)) return isa;
  }
  return KernelIsa::kGeneric;
}

std::optional<KernelIsa> ParseIsa(std::string_view name) {
  for (KernelIsa isa : {KernelIsa::kGeneric, KernelIsa::kAvx2, KernelIsa::kAvx512}) {
    if (name == KernelIsaName(isa)) return isa;
  }
  return std::nullopt;
}

KernelIsa InitialIsa() {
  const char* env = std::getenv("DMOE_KERNELS");
  if (env == nullptr || *env == '\0' || std::string_view(env) == "auto") return BestIsa();
  const std::optional<KernelIsa> isa = ParseIsa(env);
  if (!isa || !CpuSupports(*isa)) {
    std::fprintf(stderr, "dmoe: ignoring DMOE_KERNELS=%s (%s); using %s\n", env,
                 isa ? "not supported by this CPU" : "expected generic, avx2, avx512 or auto",
                 std::string(KernelIsaName(BestIsa())).c_str());
    return BestIsa();
  }
  return *isa;
}

std::atomic<KernelIsa>& ActiveIsaSlot() {
  static std::atomic<KernelIsa> slot{InitialIsa()};
  return slot;
}

}  // namespace

int64_t GemmScratchFloats(int64_t k) { return kTileRows * k; }

std::string_view KernelIsaName(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512: return "avx512";
    case KernelIsa::kAvx2: return "avx2";
    case KernelIsa::kGeneric: break;
  }
  return "generic";
}

bool CpuSupports(KernelIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case KernelIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && HasF16c();
    case KernelIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
    case KernelIsa::kGeneric: return true;
  }
  return false;
#else
  return isa == KernelIsa::kGeneric;
#endif
}

KernelIsa ActiveKernelIsa() { return ActiveIsaSlot().load(std::memory_order_relaxed); }

absl::Status SetKernelIsa(std::string_view name) {
  if (name.empty() || name == "auto") {
    ActiveIsaSlot().store(BestIsa());
    return absl::OkStatus();
  }
  const std::optional<KernelIsa> isa = ParseIsa(name);
  if (!isa) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown kernels ISA '", std::string(name), "' (expected generic, avx2, avx512 or auto)"));
  }
  if (!CpuSupports(*isa)) {
    return absl::FailedPreconditionError(
        absl::StrCat("this CPU does not support the ", std::string(name), " kernels"));
  }
  ActiveIsaSlot().store(*isa);
  return absl::OkStatus();
}

std::string_view GemmIsa() { return KernelIsaName(ActiveKernelIsa()); }

void GemmRows(const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
              int64_t ldy, float* scratch) {
  if (m <= 0 || n0 >= n1) return;
  switch (ActiveKernelIsa()) {
    case KernelIsa::kAvx512: GemmRowsAvx512(x, m, w, n0, n1, y, ldy, scratch); break;
    case KernelIsa::kAvx2: internal::GemmRowsAvx2(x, m, w, n0, n1, y, ldy, scratch); break;
    case KernelIsa::kGeneric: GemmRowsGeneric(x, m, w, n0, n1, y, ldy, scratch); break;
  }
}

}  // namespace dmoe::model
