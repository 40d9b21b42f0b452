// The GPU forward over sequences: gpu::CudaModel on a DeviceWorker, a paged device KV pool and
// one CudaKvSequence per sequence id. An attention replica (`dmoe-attention --device cuda`,
// AttentionEngineOptions::device "cuda") hands the routed experts of every MoE layer to its
// ExpertExecutor (the cluster's expert shards) through CudaModelOptions::host_experts; the
// in-process StepExecutor (`dmoe serve|generate --device cuda`, scheduler/cuda_step_executor.h)
// passes no executor and the device computes the experts it holds.
//
// This header has no CUDA types: it is compiled into every build. In a build without CUDA
// (DMOE_ENABLE_CUDA=OFF) CreateCudaAttention answers FAILED_PRECONDITION.
#ifndef DMOE_ATTENTION_SERVICE_DEVICE_ATTENTION_H_
#define DMOE_ATTENTION_SERVICE_DEVICE_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention_service/attention_engine.h"
#include "engine/sampling.h"
#include "model/config.h"
#include "model/expert_executor.h"
#include "model/weights.h"

namespace dmoe::attention {

struct DeviceAttentionOptions {
  int device = 0;  // CUDA device ordinal
  int64_t kv_page_tokens = 32;
  int64_t kv_max_pages = 8192;
  // Rows (tokens) of one device forward; larger steps are split into several forwards, one
  // plan longer than this is INVALID_ARGUMENT.
  int64_t max_rows = 4096;
  int64_t max_segments = 256;
  int max_queue = 64;  // the DeviceWorker's queue
};

// Thread-safe (every call hands its work to the DeviceWorker and waits). The caller
// (AttentionEngine) serialises Step and has validated ids and sampling.
class DeviceAttention {
 public:
  virtual ~DeviceAttention() = default;
  // Same contract as AttentionEngine::Step: FAILED_PRECONDITION when plan.start != the cached
  // length; a failed step clears the caches it moved.
  virtual absl::StatusOr<std::vector<engine::Proposal>> Step(
      const std::vector<SegmentRequest>& segments) = 0;
  virtual int64_t Release(const std::vector<std::string>& sequence_ids) = 0;
  // Updated at the end of every device call (no device round trip).
  virtual int64_t pages_in_use() const = 0;
  virtual int64_t sequences() const = 0;
};

// Starts a DeviceWorker, uploads every tensor `weights` holds, allocates the KV pool and a
// CudaModel. With `experts` its MoE layers call it (must outlive the result; called on the
// device thread) and uploaded experts are never read; without, `weights` must hold every
// expert. FAILED_PRECONDITION
// "--device cuda: ..." without CUDA or without a usable GPU; RESOURCE_EXHAUSTED naming
// --kv-pages when the pool does not fit.
absl::StatusOr<std::unique_ptr<DeviceAttention>> CreateCudaAttention(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const DeviceAttentionOptions& options, model::ExpertExecutor* experts);

}  // namespace dmoe::attention

#endif  // DMOE_ATTENTION_SERVICE_DEVICE_ATTENTION_H_
