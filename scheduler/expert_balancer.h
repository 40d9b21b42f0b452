// Expert load balancing (docs/expert-balancing.md): the planning half, pure and deterministic.
// From the tokens routed per (MoE layer, expert) over a sliding window, PlanExpertMap computes
// which shards compute each expert: every shard keeps its own range ("home") and gets up to
// `redundant_slots` other experts per layer, into which the hottest experts of the most loaded
// shard are replicated or moved. No gRPC, no threads, no clock.
#ifndef DMOE_SCHEDULER_EXPERT_BALANCER_H_
#define DMOE_SCHEDULER_EXPERT_BALANCER_H_

#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cluster/placement.h"

namespace dmoe::scheduler {

// Per MoE layer, per expert: tokens routed ([layer index][expert]).
using ExpertLoad = std::vector<std::vector<double>>;
// Expert shards by their home range [first, last), sorted and covering [0, num_experts).
using ShardRanges = std::vector<std::pair<int64_t, int64_t>>;

struct ExpertPlanOptions {
  // Experts outside its range a shard may compute, per layer (memory: this many experts'
  // weights per layer, on top of the range).
  int64_t redundant_slots = 2;
  // Stop improving a layer once its imbalance (max over mean shard load) is at most this:
  // each further move costs a slot and a load for little gain.
  double target_imbalance = 1.05;

  absl::Status Validate() const;
};

// The range map: every expert of each of `num_layers` layers on its home shard.
cluster::ExpertMap RangeExpertMap(const ShardRanges& shards, int64_t num_experts,
                                  int64_t num_layers);

// Load of each shard in one layer, an expert's load split evenly over its holders (what
// load-aware dispatch approaches). holders: [expert] -> shard indices.
std::vector<double> ShardLoads(const std::vector<std::vector<int32_t>>& holders,
                               const std::vector<double>& load, int64_t num_shards);

// Sum over layers of the most loaded shard's load over the sum of the mean shard loads: the
// time MoE layers take with the slowest shard setting the pace, relative to a perfect spread
// (1 = even). 1 when nothing was routed.
double Imbalance(const cluster::ExpertMap& map, const ExpertLoad& load, int64_t num_shards);

// The deterministic plan. Per layer, starting from the range map:
//   repeat: take the most loaded shard (ties: lowest index); over the experts it computes
//   (by load share descending, ties lower id) and every other shard that may take the expert
//   (its home, or one with a free redundant slot; lowest index first), try replicating the
//   expert there (its load then splits over one more holder) and moving it there (the shard
//   drops it); apply the first candidate with the lowest resulting maximum shard load;
//   until no candidate lowers that maximum or the layer's imbalance is at most
//   target_imbalance.
// This is EPLB's idea (replicate the hottest experts into redundant slots, greedy packing by
// load, ties by id) anchored at each shard's range, so a layer that is already even keeps
// its range map and a rebalance moves only the experts that pay for it.
cluster::ExpertMap PlanExpertMap(const ExpertLoad& load, const ShardRanges& shards,
                                 const ExpertPlanOptions& options);

// Experts that a shard computes under `to` but not under `from`, summed over shards and
// layers (the loads a switch costs). Maps must have the same shape.
int64_t ExpertMoves(const cluster::ExpertMap& from, const cluster::ExpertMap& to);

// Tokens routed per (layer, expert) over the last `window`, from counts added as they arrive
// (attention pods' heartbeats). Thread-compatible.
class ExpertLoadWindow {
 public:
  ExpertLoadWindow(int64_t num_layers, int64_t num_experts, absl::Duration window)
      : num_layers_(num_layers), num_experts_(num_experts), window_(window),
        sum_(static_cast<size_t>(num_layers * num_experts), 0) {}

  // `counts`: [layer index][expert] flattened; ignored unless its size is layers x experts.
  // Returns whether it was taken.
  bool Add(absl::Time now, const std::vector<int64_t>& counts);
  // Sums over the entries younger than the window at `now`.
  ExpertLoad Load(absl::Time now);
  int64_t total_tokens(absl::Time now);

 private:
  void Evict(absl::Time now);

  int64_t num_layers_;
  int64_t num_experts_;
  absl::Duration window_;
  std::deque<std::pair<absl::Time, std::vector<int64_t>>> entries_;
  std::vector<int64_t> sum_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_EXPERT_BALANCER_H_
