// Which model version serves a call: integer weights per version (summing to 100), sticky
// buckets per client key, the stable version automatic rollbacks return to, and the rollback
// itself (CanaryPolicy decides, TrafficSplit acts). No gRPC: GenerationProxy and
// RouterAdminService are its adapters.
//
// Stickiness: a client key hashes (FNV-1a) to a bucket in [0, 100); buckets map to versions
// by cumulative weights in declaration order (v1 takes [0, w1), v2 [w1, w1 + w2), ...). A
// key therefore stays on its version for as long as a weight change does not move its
// bucket's version; growing the last-declared canary at the expense of the first only moves
// keys onto the canary, never back and forth. Calls without a key draw a random bucket.
#ifndef DMOE_ROUTER_TRAFFIC_SPLIT_H_
#define DMOE_ROUTER_TRAFFIC_SPLIT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/canary_policy.h"

namespace dmoe::router {

inline constexpr int kNumBuckets = 100;

struct VersionWeight {
  std::string version;
  int percent = 0;
};

// Parses "v1=90,v2=10" (spaces allowed). INVALID_ARGUMENT naming `field` on junk; the
// weights are not validated against a set of versions here.
absl::StatusOr<std::vector<VersionWeight>> ParseSplit(const std::string& text,
                                                      const std::string& field);
// "v1=90,v2=10".
std::string FormatSplit(const std::vector<VersionWeight>& weights);

// The bucket of a client key, in [0, kNumBuckets): FNV-1a, stable across processes and builds.
int BucketOfKey(std::string_view key);

struct TrafficSplitOptions {
  // Every version the router serves, in declaration order (the bucket order). Non-empty,
  // distinct, non-empty names.
  std::vector<std::string> versions = {};
  // Initial weights: known versions, each >= 0, summing to 100; an unlisted version gets 0.
  // Empty: 100 to the first version.
  std::vector<VersionWeight> weights = {};
  // The rollback target; empty: the first version.
  std::string stable = "";
  CanaryPolicyOptions rollback = {};
  // Time source (tests inject a fake clock); null: absl::Now.
  std::function<absl::Time()> clock = nullptr;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// The automatic rollback that happened.
struct RollbackEvent {
  std::string version;  // the canary that lost its traffic
  Breach breach;
  absl::Time at;
};

struct VersionState {
  std::string version;
  int percent = 0;
  bool stable = false;
  WindowStats window;
};

struct SplitSnapshot {
  std::vector<VersionState> versions;  // declaration order
  std::string stable;
  CanaryPolicyOptions policy;
  bool rolled_back = false;
  std::optional<RollbackEvent> last_rollback;
  int64_t rollbacks = 0;
};

// Thread-safe.
class TrafficSplit {
 public:
  static absl::StatusOr<std::unique_ptr<TrafficSplit>> Create(const TrafficSplitOptions& options);

  // The version for one call. `explicit_version` non-empty: that version whatever its
  // weight (INVALID_ARGUMENT naming model.version when unknown). Otherwise the bucket of
  // `client_key`, or a random bucket when the key is empty.
  absl::StatusOr<std::string> Pick(const std::string& client_key,
                                   const std::string& explicit_version);
  // The version owning `bucket` under the current weights.
  std::string VersionOfBucket(int bucket) const;

  // Replaces the weights (unlisted versions get 0) and, when `stable` is non-empty, the
  // stable version. INVALID_ARGUMENT naming `weights` or `stable`: unknown or repeated
  // version, weight outside [0, 100], sum other than 100. Clears the rollback flag and the
  // windows of the versions whose weight changed.
  absl::Status SetSplit(const std::vector<VersionWeight>& weights, const std::string& stable);

  // Records the outcome of a call `version` served. When `version` is a canary (not stable,
  // weight > 0) whose window now breaks a bound, rolls it back: every non-stable version's
  // weight goes to 0 and the stable one's to 100; logs one WARNING line (version, bound,
  // measured value) and returns the event.
  std::optional<RollbackEvent> Record(const std::string& version, absl::StatusCode code,
                                      absl::Duration latency);

  SplitSnapshot Snapshot() const;
  const std::vector<std::string>& versions() const { return versions_; }

 private:
  TrafficSplit(const TrafficSplitOptions& options, std::vector<int> percent, int stable);
  absl::Time Now() const { return clock_ ? clock_() : absl::Now(); }
  int IndexOf(const std::string& version) const;  // -1 when unknown
  std::string VersionOfBucketLocked(int bucket) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const std::vector<std::string> versions_;
  const std::function<absl::Time()> clock_;
  mutable absl::Mutex mu_;
  std::vector<int> percent_ ABSL_GUARDED_BY(mu_);  // parallel to versions_
  int stable_ ABSL_GUARDED_BY(mu_);                // index into versions_
  // mutable: Snapshot() prunes the windows it reports.
  mutable CanaryPolicy policy_ ABSL_GUARDED_BY(mu_);
  bool rolled_back_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<RollbackEvent> last_rollback_ ABSL_GUARDED_BY(mu_);
  int64_t rollbacks_ ABSL_GUARDED_BY(mu_) = 0;
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_TRAFFIC_SPLIT_H_
