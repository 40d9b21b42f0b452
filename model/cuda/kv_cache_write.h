// Persists K/V rows of the QKV buffer into the paged device KV pool (what Model::Forward does
// with std::copy_n after a layer's attention has read the in-flight rows).
#ifndef DMOE_MODEL_CUDA_KV_CACHE_WRITE_H_
#define DMOE_MODEL_CUDA_KV_CACHE_WRITE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "model/cuda/kv_layout.h"

namespace dmoe::gpu {

struct KvCacheWriteArgs {
  const float* qkv = nullptr;  // F32 [*, qkv_stride]; K at [k_offset, +kv_width), V at
  int64_t qkv_stride = 0;      // [v_offset, +kv_width) of each row
  int64_t k_offset = 0;        // Nq * D
  int64_t v_offset = 0;        // (Nq + Nkv) * D
  float* kv_pool = nullptr;    // F32, KvPoolLayout
  KvPoolLayout kv;
  int64_t layer = 0;
  int32_t num_rows = 0;
  const int32_t* rows = nullptr;   // I32 [num_rows]: source rows of qkv
  const int32_t* pages = nullptr;  // I32 [num_rows]: destination page ids
  const int32_t* slots = nullptr;  // I32 [num_rows]: token slot within the page
};

// num_rows == 0 is a no-op. INVALID_ARGUMENT for null pointers.
absl::Status LaunchKvCacheWrite(const KvCacheWriteArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_KV_CACHE_WRITE_H_
