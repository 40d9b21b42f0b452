// Embedding gather on the GPU: x[t] = table[ids[t]] widened to F32 (MODEL-SPEC.md §1.2, no
// scale). All pointers are device pointers.
#ifndef DMOE_MODEL_CUDA_EMBEDDING_H_
#define DMOE_MODEL_CUDA_EMBEDDING_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace dmoe::gpu {

struct EmbeddingArgs {
  const int32_t* ids = nullptr;  // I32 [num_tokens]
  int64_t num_tokens = 0;
  const void* table = nullptr;  // table_dtype [vocab_size, hidden]
  DType table_dtype = DType::kBF16;
  int64_t vocab_size = 0;
  int64_t hidden = 0;
  float* out = nullptr;  // F32 [num_tokens, hidden]
};

// Enqueues the gather on `stream`. An id outside [0, vocab_size) yields a NaN row (callers
// validate ids on the host first; the NaN makes a missed check visible). num_tokens == 0 is a
// no-op. INVALID_ARGUMENT for null pointers or non-positive sizes; launch errors as
// CudaErrorToStatus.
absl::Status LaunchEmbedding(const EmbeddingArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_EMBEDDING_H_
