// Fills device memory with deterministic pseudo-random values, generated on the GPU (the GPU
// benchmark's weights: no 32 GB file, no host-to-device copy). value[i] = mean + std * u_i *
// sqrt(3), u_i uniform in [-1, 1) from splitmix64(seed, i): uniform with the given mean and
// standard deviation. Same (seed, count) -> same values on every GPU.
#ifndef DMOE_MODEL_CUDA_RANDOM_FILL_H_
#define DMOE_MODEL_CUDA_RANDOM_FILL_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace dmoe::gpu {

struct RandomFillArgs {
  void* data = nullptr;  // dtype [count]
  DType dtype = DType::kBF16;
  int64_t count = 0;
  uint64_t seed = 0;
  float mean = 0.0f;
  float std = 1.0f;
};

// count == 0 is a no-op. INVALID_ARGUMENT for a null pointer.
absl::Status LaunchRandomFill(const RandomFillArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_RANDOM_FILL_H_
