// The CPU GEMM core of the fast backend: y = x W^T with W in its stored dtype (F32/BF16/F16),
// F32 accumulation. Weight rows are converted once per 4-row tile into F32 scratch and
// streamed once, so a block forward reads every touched weight byte once.
//
// Batch invariance: each y[t][n] is one dot product over k in a fixed order (16 lanes, k
// ascending, masked tail, fixed lane reduction) whatever m, the tile or the thread split are.
#ifndef DMOE_MODEL_CPU_GEMM_H_
#define DMOE_MODEL_CPU_GEMM_H_

#include <cstdint>
#include <string_view>

#include "model/weights.h"

namespace dmoe::model {

// y[t * ldy + n] = dot(x[t * w.cols ...], W[n]) for t < m and n0 <= n < n1.
// `scratch` holds at least GemmScratchFloats(w.cols) floats. Single-threaded.
void GemmRows(const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
              int64_t ldy, float* scratch);

int64_t GemmScratchFloats(int64_t k);

// "avx512" or "generic": the implementation GemmRows dispatches to on this CPU.
std::string_view GemmIsa();

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CPU_GEMM_H_
