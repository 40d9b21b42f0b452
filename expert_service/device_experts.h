// The GPU compute of an expert shard (`dmoe-expert --device cuda`): the shard's routed experts
// uploaded to one GPU, and the grouped expert kernels (gpu::CudaExpertRows) run on its
// DeviceWorker. ExpertEngine hands it validated rows instead of running the CPU kernels.
//
// This header has no CUDA types: it is compiled into every build. In a build without CUDA
// (DMOE_ENABLE_CUDA=OFF) CreateCudaExperts answers FAILED_PRECONDITION.
#ifndef DMOE_EXPERT_SERVICE_DEVICE_EXPERTS_H_
#define DMOE_EXPERT_SERVICE_DEVICE_EXPERTS_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"

namespace dmoe::expert {

struct DeviceExpertsOptions {
  int device = 0;  // CUDA device ordinal
  // Rows per device launch (staging and scratch capacity); a larger call runs in chunks,
  // which gives the same result (each row is computed on its own).
  int64_t max_rows = 4096;
  int max_queue = 1024;  // the DeviceWorker's queue
};

// Thread-safe: calls are handed to the DeviceWorker and run one at a time.
class DeviceExperts {
 public:
  virtual ~DeviceExperts() = default;
  // out[i] = expert_{ids[i]}(hidden[i]), F32 [n, hidden_size], unweighted. `hidden` (F32
  // [n, H]) and `ids` (I32 [n]) may have any alignment; the ids have been checked against the
  // shard's range. A sticky CUDA error ends the process (STYLE.md §5).
  virtual absl::Status Compute(int64_t layer, const void* hidden, const void* ids, int64_t n,
                               float* out) = 0;
  // Device memory the uploaded experts take.
  virtual uint64_t weight_bytes() const = 0;
};

// Starts a DeviceWorker and uploads every expert `weights` holds (loaded with load_dense =
// false). FAILED_PRECONDITION "--device cuda: ..." without CUDA or without a usable GPU;
// RESOURCE_EXHAUSTED when the experts do not fit.
absl::StatusOr<std::unique_ptr<DeviceExperts>> CreateCudaExperts(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const DeviceExpertsOptions& options);

}  // namespace dmoe::expert

#endif  // DMOE_EXPERT_SERVICE_DEVICE_EXPERTS_H_
