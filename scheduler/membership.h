// Cluster membership and expert placement (the scheduler's; no gRPC). Pods register with
// their role and address (expert pods with their expert range) and heartbeat; a pod whose
// lease lapses drops out. The placement is derived from the live expert pods: one shard per
// distinct range, its replicas the pods serving exactly that range; every change bumps the
// version.
#ifndef DMOE_SCHEDULER_MEMBERSHIP_H_
#define DMOE_SCHEDULER_MEMBERSHIP_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cluster/placement.h"
#include "scheduler/expert_balancer.h"

namespace dmoe::scheduler {

enum class PodRole { kAttention, kExpert };

struct PodInfo {
  PodRole role = PodRole::kAttention;
  std::string address;
  int64_t expert_first = 0;  // expert pods: [expert_first, expert_last)
  int64_t expert_last = 0;
};

struct MemberView {
  uint64_t member_id = 0;
  PodInfo pod;
  absl::Duration since_heartbeat;
};

// One expert shard's live replicas and load, for metrics and autoscaling.
struct ShardStatus {
  int64_t expert_first = 0;
  int64_t expert_last = 0;
  int64_t replicas = 0;
  double busy_ratio = 0;        // mean over replicas of the fraction of time computing
  int64_t desired_replicas = 1;  // ceil(sum of busy ratios / target_busy_ratio), at least 1
};

struct MembershipOptions {
  int64_t num_experts = 0;
  absl::Duration heartbeat_period = absl::Seconds(1);
  absl::Duration lease = absl::Seconds(10);  // missed heartbeats for this long: dropped
  std::function<absl::Time()> clock = nullptr;  // null: absl::Now
  // Expert autoscaling: the busy ratio each replica should run at (desired replicas).
  double target_busy_ratio = 0.7;
  // Expert balancing: the MoE layers whose routed tokens attention pods report, and how long
  // the scheduler remembers them (ExpertLoadWindow). num_moe_layers 0: no load window.
  int64_t first_moe_layer = 0;
  int64_t num_moe_layers = 0;
  absl::Duration load_window = absl::Seconds(60);
};

// What the expert balancer plans from (Membership::BalanceSnapshot).
struct BalanceSnapshot {
  ShardRanges shards;           // live expert shards, in placement order
  bool complete = false;        // they cover every expert
  cluster::ExpertMap active;    // the map attention pods route by (the range map if none)
  bool changing = false;        // a map is staged, or the previous one not yet released
  ExpertLoad load;              // tokens per (layer, expert) over the window
  int64_t window_tokens = 0;
};

// Thread-safe.
class Membership {
 public:
  explicit Membership(const MembershipOptions& options);

  // Adds the pod (or re-adds one with the same role and address, keeping its id).
  // INVALID_ARGUMENT for an empty address or a bad range; FAILED_PRECONDITION when an expert
  // range overlaps a different live range.
  absl::StatusOr<uint64_t> Register(const PodInfo& pod);
  // NOT_FOUND when the member is unknown or its lease expired (it must register again).
  // `busy_seconds`: the pod's cumulative expert compute time (0 for attention pods).
  // `applied_version`: the placement version the pod routes by (attention) or whose experts
  // it loaded (expert); `expert_tokens`: attention pods' routed tokens since the previous
  // heartbeat, [layer index][expert] flattened (ignored unless it has that size).
  absl::Status Heartbeat(uint64_t member_id, double busy_seconds = 0,
                         uint64_t applied_version = 0,
                         const std::vector<int64_t>& expert_tokens = {});
  // Drops the member now (graceful shutdown, or a caller that saw it fail).
  void Remove(uint64_t member_id);
  // Marks the pod at `address` dead until it registers again (a failed call to it).
  void ReportFailure(const std::string& address);

  cluster::Placement CurrentPlacement();
  std::vector<std::string> AttentionAddresses();
  std::vector<MemberView> Members();
  uint64_t placement_version();
  // Expert shards (distinct live ranges) in expert order, with their load.
  std::vector<ShardStatus> ShardStatuses();
  const MembershipOptions& options() const { return options_; }

  // Expert balancing (docs/expert-balancing.md). Stages `map` (over `shards`, which must be
  // the live shards of BalanceSnapshot) with up to `redundant_slots` extra experts per shard
  // and layer: expert pods see it in the placement and load its experts; once every expert
  // pod of those shards reported the staged version as applied, it becomes the map attention
  // pods route by (a new version), the old one stays loaded until every attention pod applied
  // the new version, then it is released. A staged map whose shard left is dropped (the
  // active map stays: the last good placement). FAILED_PRECONDITION while a change is under
  // way; INVALID_ARGUMENT when `shards` are not the live ones or the map has another shape.
  absl::Status StageExpertMap(const ShardRanges& shards, cluster::ExpertMap map,
                              int64_t redundant_slots) ABSL_LOCKS_EXCLUDED(mu_);
  BalanceSnapshot Balance() ABSL_LOCKS_EXCLUDED(mu_);
  // Maps staged and switched to since creation (metrics).
  int64_t expert_maps_applied() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Member {
    PodInfo pod;
    absl::Time last_heartbeat;
    // Load from heartbeats: the last busy_seconds sample and a smoothed busy ratio.
    double busy_seconds = -1;  // -1: no sample yet
    absl::Time busy_sampled{};
    double busy_ratio = 0;
    uint64_t applied_version = 0;
  };
  // An expert map over the shards (ranges) it was planned for; version 0 until published.
  struct StoredMap {
    ShardRanges shards;
    cluster::ExpertMap map;
    uint64_t version = 0;
  };
  // The live expert ranges, sorted (the placement's shards).
  ShardRanges RangesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `stored` re-indexed onto `ranges`: holders whose shard left are dropped, an expert left
  // without one goes to its home shard.
  cluster::ExpertMap TranslateLocked(const StoredMap& stored, const ShardRanges& ranges) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Promotes a staged map that every expert pod loaded, releases the previous map once every
  // attention pod switched, drops a staged map whose shard left.
  void AdvanceMapsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }
  void ExpireLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BumpIfPlacementChangedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  MembershipOptions options_;
  absl::Mutex mu_;
  // Member ids are (epoch << 32) | counter with a random epoch per Membership: after a
  // scheduler restart a pod holding an old id cannot renew a new pod's lease (NOT_FOUND makes
  // it register again).
  uint64_t next_id_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Member> members_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  std::string placement_signature_ ABSL_GUARDED_BY(mu_);
  std::optional<StoredMap> active_map_ ABSL_GUARDED_BY(mu_);
  std::optional<StoredMap> staged_map_ ABSL_GUARDED_BY(mu_);
  std::optional<StoredMap> previous_map_ ABSL_GUARDED_BY(mu_);
  int64_t redundant_slots_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t map_generation_ ABSL_GUARDED_BY(mu_) = 0;  // part of the placement signature
  int64_t maps_applied_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<ExpertLoadWindow> load_window_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_MEMBERSHIP_H_
