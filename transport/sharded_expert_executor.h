// The attention side of the expert data plane: a model::ExpertExecutor that sends each MoE
// layer's routed rows to the expert shards that own them (dispatch) and puts the answers back
// into slot order (combine), with replica selection and failover.
#ifndef DMOE_TRANSPORT_SHARDED_EXPERT_EXECUTOR_H_
#define DMOE_TRANSPORT_SHARDED_EXPERT_EXECUTOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/thread_pool.h"
#include "model/config.h"
#include "model/expert_executor.h"
#include "model/moe_routing.h"
#include "transport/dispatch_metrics.h"
#include "transport/expert_transport.h"

namespace dmoe::transport {

// One shard: experts [expert_first, expert_last) of every MoE layer, served by any of its
// replicas (equivalent endpoints; the executor spreads calls over them).
struct ExpertShard {
  int64_t expert_first = 0;
  int64_t expert_last = 0;
  std::vector<ExpertTransportSharedPtr> replicas{};
};

// Which shard serves which experts (the scheduler's placement).
struct ExpertPlacement {
  uint64_t version = 0;             // carried on every call (tracing)
  std::vector<ExpertShard> shards{};  // sorted by expert_first; each shard's range is its
                                      // "home": it always serves those experts
  // The expert map (expert balancing, docs/expert-balancing.md): holders[i][e] = the shards
  // (indices into `shards`, sorted, unique, at least one) that compute expert e of MoE layer
  // first_moe_layer + i. Empty: every expert goes to its home shard (the range placement).
  // A holder other than the home shard must have loaded the expert
  // (expert::ExpertEngine::SetResidentExperts).
  int64_t first_moe_layer = 0;
  std::vector<std::vector<std::vector<int32_t>>> holders{};
  // Rows in flight to each shard ([shards], non-null), shared by the executors of every lane
  // of an attention replica so that load-aware dispatch sees the other lanes' calls. Empty:
  // the executor counts its own.
  std::vector<std::shared_ptr<std::atomic<int64_t>>> outstanding{};

  // INVALID_ARGUMENT naming the shard ("shards[1]: ...") or map entry ("holders[0][3]: ..."):
  // ranges must be non-empty, sorted, disjoint and cover [0, num_experts) exactly (every
  // expert has exactly one home), every shard needs at least one non-null replica, and a
  // non-empty map names valid shards for every expert of every layer.
  absl::Status Validate(int64_t num_experts) const;
};

struct ShardedExpertExecutorOptions {
  // Routed experts per MoE layer of the model (config num_experts).
  int64_t num_experts = 0;
  // Deadline of each call to a replica, from the moment it is sent. A replica that does not
  // answer in time counts as failed and the rows go to the next replica.
  absl::Duration call_timeout = absl::Seconds(10);
  // A replica that failed is tried after the shard's other replicas for this long, so a dead
  // pod costs one failed call per backoff period instead of one per layer.
  absl::Duration replica_backoff = absl::Seconds(1);
  // Routing, dispatch and combine metrics; may be null. Shared by the lanes' executors.
  std::shared_ptr<DispatchMetrics> metrics = nullptr;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Counters since creation (for tests and metrics).
struct ShardedExpertExecutorStats {
  int64_t calls = 0;            // successful shard calls
  int64_t failed_calls = 0;     // calls that failed (each was retried on another replica if any)
  int64_t rows = 0;             // rows sent in successful calls
};

// Thread-compatible, like every ExpertExecutor: one RunExperts at a time (one forward). Inside
// a call, the shards of the layer are dispatched concurrently on the executor's own threads
// (one per shard beyond the first, which runs on the calling thread).
class ShardedExpertExecutor final : public model::ExpertExecutor {
 public:
  // INVALID_ARGUMENT for bad options or placement. Does not contact any replica
  // (see CheckShards).
  static absl::StatusOr<std::unique_ptr<ShardedExpertExecutor>> Create(
      const ShardedExpertExecutorOptions& options, ExpertPlacement placement);

  // Groups the routed (token, slot) rows by shard, sends each shard one call with its rows in
  // slot order (all shards concurrently; shards that received no rows are not called), and
  // writes row t*top_k+s of slot_out from the answers. With an expert map, a row of an expert
  // held by several shards goes to the holder with the fewest rows (in flight from every lane
  // plus those already given to it in this call), ties to the lowest shard index; the result
  // is bit-identical whichever shard computes a row (batch-invariant kernels). Replicas of a
  // shard are used round robin; a replica that fails with a retriable code (anything but
  // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE) is marked down for replica_backoff
  // and the same rows go to the next replica. With a map, rows a non-home holder failed
  // (every replica down, or "not loaded") are computed again by their home shard, so a shard
  // lost or released during a placement change costs time, not the step. Errors:
  // INVALID_ARGUMENT for an expert id outside [0, num_experts) or a layer the map lacks;
  // UNAVAILABLE "layer L: no live replica for experts [a, b) (...)" when every replica of a
  // shard failed; a non-retriable replica error passes through prefixed with the layer and
  // range. slot_out is unspecified on error.
  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t num_tokens,
                          int64_t hidden_size, const model::Routing& routing,
                          float* slot_out) override;

  // Replaces the placement between forwards (same validation as Create). Replica health
  // state is reset.
  absl::Status SetPlacement(ExpertPlacement placement);
  const ExpertPlacement& placement() const { return placement_; }

  // Tracing metadata for the following calls (the attention step being computed).
  void SetStepContext(std::string request_id, int64_t step);
  // No call of the following forwards outlives `deadline` (the step's caller deadline);
  // each call still gets at most call_timeout.
  void SetStepDeadline(absl::Time deadline) { step_deadline_ = deadline; }

  // Asks every replica for its ShardInfo and checks it can serve its shard of a model with
  // `config` (CheckShardCompatible; `fingerprint` compared unless empty). Returns the
  // first failure, prefixed with the replica's address.
  absl::Status CheckShards(const model::ModelConfig& config, absl::Time deadline,
                           std::string_view fingerprint = {});

  ShardedExpertExecutorStats stats() const { return stats_; }

 private:
  // Per-shard state; touched only by the thread dispatching that shard during a call.
  struct ShardState {
    std::vector<absl::Time> down_until;  // per replica
    uint64_t next_replica = 0;           // round-robin cursor
    double seconds = 0;                  // the last Dispatch's wall time (metrics)
    std::vector<int64_t> slots;          // routed slots (t*top_k+s) of this call, in order
    std::vector<int32_t> expert_ids;     // [n]
    std::vector<float> hidden;           // packed [n, H]
    std::vector<float> out;              // [n, H]
    absl::Status status;
    int64_t failed_calls = 0;
  };

  explicit ShardedExpertExecutor(const ShardedExpertExecutorOptions& options)
      : options_(options) {}
  // Packs `state`'s rows and calls shard `index`'s replicas until one answers.
  void Dispatch(size_t index, ShardState& state, int64_t layer, const float* hidden,
                int64_t hidden_size, int64_t top_k);
  // Rows of the failed calls in states_, computed again by their experts' home shards (map
  // placements only). Returns the first error left.
  absl::Status FallBackToHome(const std::vector<size_t>& active, int64_t layer,
                              const float* hidden, int64_t hidden_size, int64_t top_k);

  ShardedExpertExecutorOptions options_;
  ExpertPlacement placement_;
  std::vector<int32_t> shard_of_expert_;  // [num_experts]
  std::vector<ShardState> states_;        // [shards]
  std::vector<ShardState> fallback_;      // [shards], rows retried at their home shard
  std::vector<std::shared_ptr<std::atomic<int64_t>>> outstanding_;  // [shards]
  std::unique_ptr<ThreadPool> pool_;      // one thread per shard (the caller is one of them)
  std::string request_id_;
  int64_t step_ = 0;
  absl::Time step_deadline_ = absl::InfiniteFuture();
  ShardedExpertExecutorStats stats_;
};

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_SHARDED_EXPERT_EXECUTOR_H_
