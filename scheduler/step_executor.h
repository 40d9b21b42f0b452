// Where the scheduler's batched forwards run: in this process (an AttentionEngine with local
// or sharded experts) or on remote attention replicas over gRPC. The scheduler owns the
// sequences (the canonical state); an executor only holds their KV caches, which it may lose.
#ifndef DMOE_SCHEDULER_STEP_EXECUTOR_H_
#define DMOE_SCHEDULER_STEP_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/sampling.h"
#include "engine/sequence.h"

namespace dmoe::scheduler {

struct SequenceStep {
  std::string sequence_id;
  engine::StepPlan plan;
  bool reset_cache = false;  // the plan re-prefills from position 0
  // The request's deadline: remote executors bound their calls by the batch's earliest one.
  absl::Time deadline = absl::InfiniteFuture();
};

// What an ABORTED Execute did to each of its steps, when the executor can tell (one replica of
// several failed): the others' proposals stand and only the lost sequences re-prefill.
enum class StepFate {
  kDone,       // ran; its proposal is valid (and its cache advanced)
  kNotRun,     // untouched: run the same step again
  kCacheLost,  // its KV cache is gone: Sequence::ResetCache, re-plan with reset_cache
};
struct PartialStep {
  std::vector<StepFate> fate;               // per step of the aborted call
  std::vector<engine::Proposal> proposals;  // per step; valid where fate is kDone
};

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // One batched forward; proposals in request order. ABORTED means some sequence's cache was
  // lost (a replica died or restarted): the caller asks TakePartialStep what happened to each
  // step, re-plans the lost ones with reset_cache and retries those and the ones not run
  // (without an answer it resets every sequence of the batch). UNAVAILABLE: no replica /
  // expert can serve now. Other codes are the request's fault or internal.
  virtual absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<SequenceStep>& steps) = 0;
  // Right after an ABORTED Execute: each step's fate, or nullopt when unknown.
  virtual std::optional<PartialStep> TakePartialStep() { return std::nullopt; }
  // Frees finished or cancelled sequences' caches (best effort).
  virtual void Release(const std::vector<std::string>& sequence_ids) = 0;
  // KV capacity in pages of `page_tokens` tokens, for admission.
  virtual int64_t KvPagesCapacity() = 0;
};

using StepExecutorPtr = std::unique_ptr<StepExecutor>;

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_STEP_EXECUTOR_H_
