// The per-ISA GEMM implementations behind GemmRows (gemm.h). Internal to model/cpu: callers
// use GemmRows, which dispatches on ActiveKernelIsa().
#ifndef DMOE_MODEL_CPU_GEMM_ISA_H_
#define DMOE_MODEL_CPU_GEMM_ISA_H_

#include <cstdint>

#include "model/weights.h"

namespace dmoe::model::internal {

// GemmRows on AVX2+FMA+F16C: bit-identical to the AVX-512 path. Only call it on a CPU with
// those features.
void GemmRowsAvx2(const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1,
                  float* y, int64_t ldy, float* scratch);

}  // namespace dmoe::model::internal

#endif  // DMOE_MODEL_CPU_GEMM_ISA_H_
