// The denoising scheduler's core (ARCHITECTURE.md "scheduler/"): the canonical state of every
// request and the step loop that drives them, with no gRPC in sight.
//
// Continuous batching at step granularity: every step takes the next StepPlan of each
// running sequence (engine::Sequence), packs as many as the token budget allows into one
// engine::ExecutePlans call, and applies the proposals. Requests join at the next step after
// they are admitted and leave as soon as they finish, so a short request never waits for a
// long one. Kernels are batch-invariant, so a request's ids do not depend on what it was
// batched with: the output equals `dmoe generate` (engine::Engine) for the same request.
//
// Admission is bounded by KV capacity: a request is admitted when its worst-case page count,
// ceil((prompt + max_new_tokens + block_length) / page_tokens), fits next to the running
// requests' estimates, so a forward never runs out of KV pages. Requests that do not fit yet
// wait in a bounded FIFO queue; past its bound Submit is RESOURCE_EXHAUSTED.
#ifndef DMOE_SCHEDULER_SCHEDULER_H_
#define DMOE_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/sequence.h"
#include "model/config.h"
#include "scheduler/request_journal.h"
#include "scheduler/step_executor.h"

namespace dmoe::scheduler {
class SchedulerMetrics;
}

namespace dmoe::scheduler {

// Identifies a submitted request inside one Scheduler. Never reused.
using RequestHandle = uint64_t;

// What one step did; passed to SchedulerOptions::step_observer and returned by Step().
struct StepReport {
  int64_t step = 0;                       // 0-based count of forwards the scheduler ran
  std::vector<RequestHandle> scheduled;   // requests in this step's batch, in batch order
  int64_t batch_tokens = 0;               // sum of the scheduled plans' token counts
  int64_t running = 0;                    // admitted requests when the batch was formed
  int64_t waiting = 0;                    // queued requests when the batch was formed
  int64_t finished = 0;                   // requests that ended at this step (any outcome)
  double forward_seconds = 0;             // wall time of the batched forward
  // The executor had no capacity (a cluster between attention replicas): nothing ran, or
  // the batch is held to be re-prefilled once a replica serves again.
  bool stalled = false;
};

struct SchedulerOptions {
  // Token budget of one step: the sum of the batched plans' token counts (a decoding step
  // of a diffusion sequence is one block, a prefill is the prompt). Bounds step latency and
  // activation memory. A single plan bigger than the budget (a long prefill) still runs, alone.
  int64_t max_batch_tokens = 4096;
  // Sequences per step (activation memory and per-step latency of the attention part).
  int64_t max_batch_sequences = 64;
  // Admitted, unfinished requests; admission is also bounded by KV capacity.
  int64_t max_running = 256;
  // Requests waiting for admission. Submit past it is RESOURCE_EXHAUSTED, which a client may
  // retry elsewhere; an unbounded queue would only turn overload into timeouts.
  int64_t max_queue = 256;
  // true: Create starts the step-loop thread. false: nothing runs until the owner calls
  // Step() (deterministic tests, or an owner that has its own loop).
  bool start_step_thread = true;
  // Time source for deadlines and timings; null means absl::Now. Tests inject a fake clock.
  std::function<absl::Time()> clock = nullptr;
  // Called on the step thread after every step (metrics, tracing). May be null. Must not
  // block, and must not call Step() or Stop().
  std::function<void(const StepReport&)> step_observer = nullptr;
  // Tokens per KV page of the executor (the diffusion block length); admission counts pages.
  int64_t kv_page_tokens = 32;
  // A step whose executor lost caches (ABORTED: a replica died) is re-planned from the
  // committed tokens and retried this many times before its requests fail.
  int max_step_retries = 3;
  // How long requests are held (queued, or their batch paused) while the executor has no
  // capacity at all, e.g. a cluster whose only attention replica is re-registering, before
  // they fail with UNAVAILABLE. Rolling restarts and lease blips must not fail requests.
  absl::Duration unavailable_grace = absl::Seconds(30);
  // Prometheus series (scheduler/scheduler_metrics.h); null: none. Must outlive the scheduler.
  SchedulerMetrics* metrics = nullptr;

  // The journal of accepted requests and committed blocks (scheduler/request_journal.h,
  // docs/operations.md); null: none. Must outlive the scheduler. With a journal:
  // - every request with a request_id is journalled (accept, each committed block, its end);
  // - Create resumes the journal's unfinished requests: each re-runs from its prompt (decoding
  //   is deterministic, so it commits the same ids) and streams only past the ids journalled;
  // - Submit de-duplicates by request_id: a request that is running, resumed or retained
  //   re-attaches the new caller (it gets the committed ids so far, then the rest);
  // - Stop() leaves unfinished requests in the journal for the next scheduler.
  RequestJournal* journal = nullptr;
  // Journal only: how long, and how many, finished requests' results stay re-attachable.
  absl::Duration retention = absl::Minutes(5);
  int64_t max_retained = 10000;
  // Journal only: a request without a caller (Detach()ed, or resumed and not re-attached yet)
  // is cancelled after this long, so abandoned requests do not run to the end.
  absl::Duration detached_grace = absl::Seconds(30);

  // INVALID_ARGUMENT naming the field when a bound is < 1 (max_queue may be 0: no waiting).
  absl::Status Validate() const;
};

// The block a step denoised, after its commits (for visualisation, GenerateRequest.canvas_events).
struct CanvasSnapshot {
  int64_t forward = 0;              // the request's forwards so far (1 after its first step)
  int64_t block_start = 0;          // absolute position of block[0]
  std::vector<int32_t> block;       // still-masked positions hold mask_id
  int32_t mask_id = -1;
  int64_t prompt_length = 0;        // positions below this are the prompt's tail
};

// How a finished request went.
struct RequestResult {
  std::vector<int32_t> ids;         // generated ids, ending after the first stop token
  std::vector<float> logprobs;      // per id: its log-probability when committed
  engine::FinishReason finish_reason = engine::FinishReason::kNone;
  int64_t forwards = 0;
  int64_t edits = 0;                // token editing: T2T rewrites (re-masks included)
  int64_t remasks = 0;
  int64_t prompt_tokens = 0;
  double queue_seconds = 0;         // Submit -> admission
  double first_block_seconds = 0;   // Submit -> first final tokens
  double seconds = 0;               // Submit -> end
  double tokens_per_forward() const {
    return forwards ? static_cast<double>(ids.size()) / static_cast<double>(forwards) : 0.0;
  }
};

// Per-request callbacks. All of them run on the scheduler's step thread (on the caller of
// Step() / Stop() when there is no step thread), one request's calls in order and never
// concurrently with each other. They must not block (a gRPC reactor only queues a write)
// and must not call Step() or Stop(); Submit() and Cancel() are fine. Any may be null.
// New final ids: whole committed blocks in diffusion mode, single tokens in AR mode.
struct CommittedTokens {
  int64_t offset = 0;               // generated ids before ids[0]
  std::vector<int32_t> ids;
  std::vector<float> logprobs;      // parallel to ids
};

// on_tokens' answer: nullopt = go on; a value = end the request now, successfully, as
// FinishReason::kStop with its output cut after that many of the delivered ids (a stop string
// matched). Its KV is freed at once, no further forward is spent on it.
using KeepIds = std::optional<size_t>;

struct RequestCallbacks {
  // Concatenated, the calls give RequestResult::ids (as cut by a KeepIds answer).
  std::function<KeepIds(const CommittedTokens& tokens)> on_tokens;
  // After every applied step while the request runs (diffusion mode only). Costs a copy of
  // the block per step; leave null unless wanted.
  std::function<void(const CanvasSnapshot& canvas)> on_step;
  // Exactly once, after every other callback of the request: the result, or CANCELLED
  // (Cancel), DEADLINE_EXCEEDED (deadline passed before the end), UNAVAILABLE (the scheduler
  // stopped first) or the error of a failed forward. The request's KV pages are free by then.
  // With a journal the caller can also be let go while the request goes on: ABORTED when
  // another call re-attached to the request, CANCELLED when its caller was Detach()ed.
  std::function<void(absl::StatusOr<RequestResult> result)> on_done;
};

struct SchedulerRequest {
  // For logs; with SchedulerOptions::journal also the request's identity (de-duplication and
  // re-attachment by id). Empty: never journalled.
  std::string request_id;
  std::vector<int32_t> prompt;
  // Complete parameters: mask_id and stop_ids already resolved by the caller.
  engine::GenerationParams params;
  absl::Time deadline = absl::InfiniteFuture();
  RequestCallbacks callbacks = {};
};

// Counters for health, metrics and tests. A consistent snapshot.
struct SchedulerStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t steps = 0;
  int64_t kv_pages_reserved = 0;    // sum of the running requests' page estimates
  int64_t kv_pages_capacity = 0;
  bool draining = false;
  int64_t resumed = 0;              // requests resumed from the journal by Create
  int64_t reattached = 0;           // Submits that re-attached to an existing request
};

// Thread-safe: Submit, Cancel, Stats, StartDrain and WaitUntilIdle may be called from any
// thread. Step() is for the owner of a scheduler without a step thread and must not run
// concurrently with itself or Stop(). The executor is used only by the step thread (or the
// Step() caller) and must outlive the scheduler.
class Scheduler {
 public:
  // INVALID_ARGUMENT when options fail Validate(). `config` validates requests; `executor`
  // runs the forwards: in this process (LocalStepExecutor) or on attention replicas
  // (RemoteAttentionExecutor). The scheduler keeps every request's committed tokens, so an
  // executor that loses caches (ABORTED) costs a re-prefill, never a request.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerOptions& options,
                                                           const model::ModelConfig& config,
                                                           StepExecutor& executor);
  // Stop()s.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Validates and queues a request; it joins the batch at a later step. On error no callback
  // is ever called and the request is dropped:
  //   INVALID_ARGUMENT naming the field: empty prompt, prompt id outside the vocabulary,
  //     prompt + max_new_tokens over max_position_embeddings, bad decoding/sampling values;
  //   RESOURCE_EXHAUSTED: the waiting queue is full, or the request alone needs more KV pages
  //     than the pool has;
  //   UNAVAILABLE: the scheduler is draining or stopped.
  //   ALREADY_EXISTS (journal only): request_id names a different request (prompt or params).
  // With a journal, a request_id that names a running, resumed or retained request re-attaches
  // instead (see SchedulerOptions::journal): the handle returned is this caller's, its
  // on_tokens first gets every id committed so far as one call at offset 0, then the rest; a
  // previous caller's on_done gets ABORTED. A finished one's caller gets its ids and result.
  absl::StatusOr<RequestHandle> Submit(SchedulerRequest request);

  // Ends the request at the next step with CANCELLED and frees its KV. No-op for unknown or
  // finished handles. Never blocks on a step.
  void Cancel(RequestHandle handle);
  // The caller behind `handle` goes away but the request goes on (journal only: a client that
  // may re-attach by request id). Its on_done gets CANCELLED at the next step; without a
  // re-attach within detached_grace the request is cancelled. No-op for unknown handles.
  void Detach(RequestHandle handle);

  // Manual mode (start_step_thread = false): admits, expires and cancels requests and runs
  // one batched forward if any request is running. Returns what it did (an empty `scheduled`
  // when nothing ran).
  StepReport Step();

  // Refuses new requests from now on (UNAVAILABLE); running and queued ones go on.
  void StartDrain();
  // Blocks until no request is running or waiting, or `timeout` passes. True when idle.
  bool WaitUntilIdle(absl::Duration timeout);
  // Stops the step thread and ends every remaining request with UNAVAILABLE (its on_done runs
  // on the calling thread). Idempotent.
  void Stop();

  SchedulerStats Stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Entry;
  struct Attach {
    RequestHandle caller = 0;
    std::string request_id;
    RequestCallbacks callbacks;
  };
  struct Retained {
    RequestResult result;
    std::string fingerprint;
    absl::Time ended;
  };
  Scheduler(const SchedulerOptions& options, const model::ModelConfig& config,
            StepExecutor& executor);

  absl::Time Now() const;
  int64_t PagesNeeded(const SchedulerRequest& request) const;
  absl::Status ValidateRequest(const SchedulerRequest& request) const;
  absl::StatusOr<RequestHandle> Enqueue(SchedulerRequest request);
  // Journal only: queues `request`'s callbacks onto the request of the same id when there is
  // one (its handle); nullopt when there is none.
  absl::StatusOr<std::optional<RequestHandle>> ReattachLocked(SchedulerRequest& request,
                                                              const std::string& fingerprint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResumeFromJournal();
  // Step thread: hands queued re-attaches and detaches to their requests.
  int64_t ProcessAttachments(absl::Time now);
  void RetainLocked(const Entry& e, const absl::StatusOr<RequestResult>& result, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Running / waiting / KV gauges; `capacity` is the step's KvPagesCapacity().
  void PublishState(int64_t capacity);
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();
  // One step on the step thread's state (running_); takes mu_ itself where needed. Its phases,
  // in order:
  StepReport RunStep();
  // Whether the executor has had no capacity for unavailable_grace (tracks since when).
  bool TrackCapacity(int64_t capacity, absl::Time now);
  // Why a request ends before this step (cancelled, deadline, no replica); OK to go on.
  absl::Status EndReason(const Entry& e, const absl::flat_hash_set<RequestHandle>& cancelled,
                         absl::Time now, bool unavailable_too_long) const;
  // Each returns how many requests it ended.
  int64_t EndCancelledAndExpired(absl::Time now, bool unavailable_too_long);
  int64_t Admit(int64_t capacity, absl::Time now, StepReport& report);
  struct Batch {
    std::vector<Entry*> entries;
    std::vector<SequenceStep> steps;  // steps[i] is entries[i]'s plan
  };
  Batch FormBatch(StepReport& report);
  absl::StatusOr<std::vector<engine::Proposal>> ExecuteBatch(Batch& batch, StepReport& report);
  std::vector<std::pair<Entry*, absl::StatusOr<RequestResult>>> ApplyOutcome(
      const Batch& batch, const absl::StatusOr<std::vector<engine::Proposal>>& proposals,
      StepReport& report);
  void StreamCommitted(Entry& e, absl::Time after);
  static RequestResult Result(const Entry& e, absl::Time after);
  int64_t FinishRequests(std::vector<std::pair<Entry*, absl::StatusOr<RequestResult>>> done);
  // `interrupted`: the scheduler stops under the request, which stays in the journal.
  void Finish(std::unique_ptr<Entry> entry, absl::StatusOr<RequestResult> result,
              bool interrupted = false);

  const SchedulerOptions options_;
  const model::ModelConfig config_;
  StepExecutor& executor_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Entry>> waiting_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<RequestHandle> cancelled_ ABSL_GUARDED_BY(mu_);
  RequestHandle next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Mirrors of the step thread's state, for Stats() and WaitUntilIdle().
  int64_t running_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reserved_pages_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  // Step thread only: since when the executor has had no capacity (InfiniteFuture: it has).
  absl::Time unavailable_since_ = absl::InfiniteFuture();
  // Submitted requests whose on_done has not returned yet, and queued re-attaches.
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Journal only: request id -> handle of every queued or running request, finished results
  // kept for re-attachment, and the re-attaches / detaches the step thread has yet to apply.
  // by_id_: request id -> (handle, fingerprint: its prompt and params, journal-encoded).
  absl::flat_hash_map<std::string, std::pair<RequestHandle, std::string>> by_id_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Retained> retained_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<std::string, absl::Time>> retained_order_ ABSL_GUARDED_BY(mu_);
  std::vector<Attach> attaches_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<RequestHandle> detached_ ABSL_GUARDED_BY(mu_);
  int64_t resumed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reattached_ ABSL_GUARDED_BY(mu_) = 0;

  // Owned by the step thread (or the Step() caller).
  std::vector<std::unique_ptr<Entry>> running_;
  int64_t admissions_ = 0;
  bool stopped_ = false;

  std::thread thread_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_SCHEDULER_H_
