// A StepExecutor whose forwards run on one GPU (gpu::CudaModel): `dmoe serve --device cuda`,
// `dmoe generate --device cuda`. The checkpoint's weights are uploaded once; each sequence's KV
// cache lives in a paged device pool. Greedy proposals come from the lm_head kernel (top-1 id
// and its probability; logits stay on the GPU); for requests that sample (temperature > 0) or
// filter (top_k / top_p) the rows' logits come back and engine::SampleRows, the CPU engine's
// sampler, runs on the host.
//
// This header has no CUDA types: it is compiled into every build. In a build without CUDA
// (DMOE_ENABLE_CUDA=OFF) CreateCudaStepExecutor answers FAILED_PRECONDITION.
#ifndef DMOE_SERVE_CUDA_STEP_EXECUTOR_H_
#define DMOE_SERVE_CUDA_STEP_EXECUTOR_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/sampling.h"
#include "engine/sequence.h"
#include "model/config.h"
#include "model/weights.h"
#include "scheduler/step_executor.h"

namespace dmoe::serve {

struct CudaStepExecutorOptions {
  int device = 0;                // CUDA device ordinal
  int64_t kv_page_tokens = 32;   // tokens per KV page
  int64_t kv_max_pages = 8192;   // device KV pool, allocated up front (F32)
  // Rows (tokens) of one device forward. A step with more rows in total is split into several
  // forwards; one plan longer than this (a long prompt's prefill) is INVALID_ARGUMENT.
  int64_t max_rows = 4096;
  int64_t max_segments = 256;    // sequences per device forward (larger steps are split)
  int max_queue = 64;            // the DeviceWorker's queue

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Starts a DeviceWorker on options.device, uploads every tensor `weights` holds, allocates the
// KV pool and the forward's scratch. `config` / `weights` are only read during the call.
// Errors: FAILED_PRECONDITION when built without CUDA or when no GPU is usable (the
// DeviceWorker's message), RESOURCE_EXHAUSTED when weights + KV pool do not fit, INVALID_ARGUMENT
// for bad options. Greedy requests get their proposals from the device's fused lm_head
// reduction; requests that sample are sampled on the host over the returned logits.
absl::StatusOr<std::unique_ptr<scheduler::StepExecutor>> CreateCudaStepExecutor(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const CudaStepExecutorOptions& options);

}  // namespace dmoe::serve

#endif  // DMOE_SERVE_CUDA_STEP_EXECUTOR_H_
