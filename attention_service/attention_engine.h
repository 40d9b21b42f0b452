// The core of an attention replica (no gRPC): the model's non-expert weights, the block-paged
// KV cache of the sequences placed here, and the step that runs the scheduler's plans through
// one batched forward. Routed experts are reached through an ExpertExecutor (in-process or
// sharded over a transport).
#ifndef DMOE_ATTENTION_SERVICE_ATTENTION_ENGINE_H_
#define DMOE_ATTENTION_SERVICE_ATTENTION_ENGINE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/sampling.h"
#include "engine/sequence.h"
#include "model/expert_executor.h"
#include "model/kernels.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace dmoe::attention {

class DeviceAttention;

struct AttentionEngineOptions {
  std::string kernels = "cpu";   // "cpu" or "reference"
  int num_threads = 0;           // compute threads over all lanes (<= 0: all cores)
  int64_t kv_page_tokens = 32;
  int64_t kv_max_pages = 8192;
  // Micro-batches per step, each on its own lane (kernels + expert executor + thread): while
  // one waits for its experts the other computes attention. 1 = one batched forward.
  int micro_batches = 1;
  // "cpu", or "cuda": the forward runs on GPU `cuda_device` (gpu::CudaModel, device KV pool of
  // kv_max_pages pages, routed experts through the expert executor per MoE layer; see
  // device_attention.h and docs/cuda.md §9). On cuda there is one lane (micro_batches > 1 is
  // reduced to 1: the device thread runs one forward at a time), `kernels` / `num_threads`
  // serve only the expert executor's host side, and only greedy plans are accepted.
  std::string device = "cpu";
  int cuda_device = 0;

  absl::Status Validate() const;
};

// An expert executor that can bound its calls by the current step's deadline.
class StepDeadlineAware {
 public:
  virtual ~StepDeadlineAware() = default;
  virtual void SetStepDeadline(absl::Time deadline) = 0;
};

// Builds the expert executor of one lane around that lane's kernels.
using ExpertExecutorFactory =
    std::function<std::unique_ptr<model::ExpertExecutor>(model::Kernels& kernels)>;

// One sequence's segment of a step.
struct SegmentRequest {
  std::string sequence_id;
  engine::StepPlan plan;
  bool reset_cache = false;  // drop what is cached for the sequence first
};

// What every step checks before touching a cache: non-empty, distinct sequence ids and valid
// sampling. INVALID_ARGUMENT naming the segment.
absl::Status ValidateSegments(const std::vector<SegmentRequest>& segments);

// FAILED_PRECONDITION unless the replica's cached length for the segment's sequence equals
// plan.start (the scheduler then re-plans with reset_cache).
absl::Status CheckCachedLength(const SegmentRequest& segment, int64_t cached_length);

struct StepTimings {
  double forward_seconds = 0;
  double expert_seconds = 0;  // summed over lanes
  int lanes = 1;                // micro-batches run concurrently
  // The step failed because an expert dispatch failed (not because of this replica).
  bool expert_failure = false;
};

struct AttentionInfo {
  int64_t kv_pages_total = 0;
  int64_t kv_pages_used = 0;
  int64_t sequences = 0;
};

// Thread-safe: Step calls are serialised; Release and Info may be called concurrently.
class AttentionEngine {
 public:
  // `model` must outlive the engine (its weights need only the non-expert tensors).
  static absl::StatusOr<std::unique_ptr<AttentionEngine>> Create(
      const AttentionEngineOptions& options, const model::Model& model,
      const ExpertExecutorFactory& experts);
  ~AttentionEngine();

  // Runs every segment and returns their proposals in request order. Errors name the
  // sequence: INVALID_ARGUMENT (duplicate id, bad plan), FAILED_PRECONDITION (plan.start !=
  // cached length: the scheduler must re-plan with reset_cache), RESOURCE_EXHAUSTED (KV full),
  // or the expert executor's error. A failed step leaves every sequence's cache as it was.
  // `deadline` (the caller's) bounds the step's expert calls where the executor supports it
  // (StepDeadlineAware).
  absl::StatusOr<std::vector<engine::Proposal>> Step(const std::vector<SegmentRequest>& segments,
                                                     StepTimings* timings = nullptr,
                                                     absl::Time deadline = absl::InfiniteFuture())
      ABSL_LOCKS_EXCLUDED(step_mu_, sequences_mu_);
  // Frees sequences' KV; returns how many were known.
  int64_t Release(const std::vector<std::string>& sequence_ids)
      ABSL_LOCKS_EXCLUDED(step_mu_, sequences_mu_);
  AttentionInfo Info() const ABSL_LOCKS_EXCLUDED(sequences_mu_);
  const model::Model& model() const { return model_; }
  const AttentionEngineOptions& options() const { return options_; }
  // The KV pages of this replica (for tests and metrics: pages_in_use()). Unused (empty) on
  // --device cuda, whose pages live on the device (Info() reports them).
  const model::KvCachePool& kv_pool() const { return pool_; }

 private:
  struct Lane;
  AttentionEngine(const AttentionEngineOptions& options, const model::Model& model);
  absl::StatusOr<std::vector<engine::Proposal>> DeviceStep(
      const std::vector<SegmentRequest>& segments, StepTimings* timings, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);

  AttentionEngineOptions options_;
  const model::Model& model_;
  model::KvCachePool pool_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::unique_ptr<DeviceAttention> device_;  // options_.device == "cuda"
  // Serialises Step, and Release (a running step may be using the caches it frees). lanes_
  // and device_ are not guarded: fixed after Create, and lanes_ used by Step only.
  absl::Mutex step_mu_;
  mutable absl::Mutex sequences_mu_ ABSL_ACQUIRED_AFTER(step_mu_);
  std::map<std::string, std::unique_ptr<model::KvSequence>> sequences_
      ABSL_GUARDED_BY(sequences_mu_);
};

}  // namespace dmoe::attention

#endif  // DMOE_ATTENTION_SERVICE_ATTENTION_ENGINE_H_
