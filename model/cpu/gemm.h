// The CPU GEMM core of the fast backend: y = x W^T with W in its stored dtype (F32/BF16/F16),
// F32 accumulation. Weight rows are converted once per 4-row tile into F32 scratch and
// streamed once, so a block forward reads every touched weight byte once.
//
// Batch invariance: each y[t][n] is one dot product over k in a fixed order (16 lanes, k
// ascending, masked tail, fixed lane reduction) whatever m, the tile or the thread split are,
// and whichever of the AVX-512 and AVX2 paths runs it.
#ifndef DMOE_MODEL_CPU_GEMM_H_
#define DMOE_MODEL_CPU_GEMM_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "model/weights.h"

namespace dmoe::model {

// y[t * ldy + n] = dot(x[t * w.cols ...], W[n]) for t < m and n0 <= n < n1.
// `scratch` holds at least GemmScratchFloats(w.cols) floats. Single-threaded.
void GemmRows(const float* x, int64_t m, const WeightMatrix& w, int64_t n0, int64_t n1, float* y,
              int64_t ldy, float* scratch);

int64_t GemmScratchFloats(int64_t k);

// The instruction sets the fast CPU kernels have code for. kAvx2 (AVX2+FMA+F16C) and kAvx512
// (AVX-512 F/BW/VL+FMA+F16C) give bit-identical results (same products, sums and lane fold);
// kGeneric is plain C++.
enum class KernelIsa { kGeneric, kAvx2, kAvx512 };

// "generic", "avx2", "avx512".
std::string_view KernelIsaName(KernelIsa isa);

// Whether this CPU (and OS) runs `isa`'s code.
bool CpuSupports(KernelIsa isa);

// The ISA the fast kernels (GemmRows, FastKernels) run: the best this CPU supports, unless the
// environment variable DMOE_KERNELS (generic|avx2|avx512, read once at first use) or
// SetKernelIsa chose another. A DMOE_KERNELS naming an unknown or unsupported ISA is reported
// on stderr and ignored. Thread-safe.
KernelIsa ActiveKernelIsa();

// Forces the ISA of every later kernel call in this process, e.g. from a --kernels-isa flag or a
// test; "" or "auto" restores the best supported one. INVALID_ARGUMENT for an unknown name,
// FAILED_PRECONDITION for an ISA this CPU lacks. Call it between forwards, not during one.
absl::Status SetKernelIsa(std::string_view name);

// KernelIsaName(ActiveKernelIsa()): the implementation GemmRows dispatches to.
std::string_view GemmIsa();

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CPU_GEMM_H_
