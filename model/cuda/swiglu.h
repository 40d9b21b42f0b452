// SwiGLU on the GPU: out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]
// (ReferenceKernels::SwiGlu). Used between the shared-expert / dense-FFN GEMMs; the routed
// experts fuse it into their grouped GEMM.
#ifndef DMOE_MODEL_CUDA_SWIGLU_H_
#define DMOE_MODEL_CUDA_SWIGLU_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace dmoe::gpu {

struct SwiGluArgs {
  const float* gate = nullptr;  // F32 [count]
  const float* up = nullptr;    // F32 [count]
  int64_t count = 0;
  // out_dtype [count]; may alias gate when F32. A BF16/F16 output feeds the down GEMM directly
  // (see matmul.h on activation rounding).
  void* out = nullptr;
  DType out_dtype = DType::kF32;
};

// count == 0 is a no-op. INVALID_ARGUMENT for null pointers.
absl::Status LaunchSwiGlu(const SwiGluArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_SWIGLU_H_
