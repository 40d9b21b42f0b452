// When to roll a canary back: a sliding window of one model version's call outcomes and the
// bounds it must keep (error ratio, p95 latency). Pure logic with an explicit clock argument,
// no gRPC: TrafficSplit (router/traffic_split.h) feeds it and acts on its verdicts.
#ifndef DMOE_ROUTER_CANARY_POLICY_H_
#define DMOE_ROUTER_CANARY_POLICY_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace dmoe::router {

struct CanaryPolicyOptions {
  // Outcomes older than this no longer count. > 0.
  absl::Duration window = absl::Seconds(60);
  // No verdict before the window holds this many calls of the version: a handful of early
  // failures must not roll back a canary that has barely been tried. >= 1.
  int64_t min_requests = 20;
  // Breach when errors / calls in the window exceeds this. In [0, 1].
  double max_error_ratio = 0.05;
  // Breach when the window's p95 call duration exceeds this; zero = no latency bound. >= 0.
  absl::Duration max_latency_p95 = absl::ZeroDuration();
  // Memory bound: a version's window keeps at most this many outcomes (the oldest go first),
  // so above max_samples / window calls per second the window is effectively shorter. >= 1.
  int64_t max_samples = 10000;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// A version's outcomes in the window.
struct WindowStats {
  int64_t requests = 0;
  int64_t errors = 0;
  double error_ratio = 0;                            // errors / requests; 0 when empty
  absl::Duration p95_latency = absl::ZeroDuration();  // nearest-rank p95; 0 when empty
};

// A bound the window broke.
struct Breach {
  std::string bound;  // "error_ratio" or "latency_p95_seconds"
  double limit = 0;
  double measured = 0;
  WindowStats stats;
};

// Thread-compatible (TrafficSplit calls it under its mutex).
class CanaryPolicy {
 public:
  explicit CanaryPolicy(const CanaryPolicyOptions& options) : options_(options) {}

  // Whether a call that ended with `code` counts against its version: server-side faults
  // (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNKNOWN, DATA_LOSS,
  // UNIMPLEMENTED, ABORTED). The caller's own mistakes or choices (INVALID_ARGUMENT,
  // CANCELLED, NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE, PERMISSION_DENIED,
  // UNAUTHENTICATED, ALREADY_EXISTS) and OK do not: a canary is not rolled back because a
  // client sent bad prompts.
  static bool CountsAsError(absl::StatusCode code);

  // Adds one call of `version` that ended at `at` (calls arrive in roughly increasing `at`).
  void Record(const std::string& version, absl::Time at, absl::StatusCode code,
              absl::Duration latency);
  // The version's outcomes in (now - window, now]; drops older ones.
  WindowStats Stats(const std::string& version, absl::Time now);
  // The first bound the version's window breaks at `now` (error ratio first), if it holds at
  // least min_requests calls.
  std::optional<Breach> Check(const std::string& version, absl::Time now);
  // Forgets the version's outcomes.
  void Reset(const std::string& version);

  const CanaryPolicyOptions& options() const { return options_; }

 private:
  struct Outcome {
    absl::Time at;
    absl::Duration latency;
    bool error;
  };
  void Prune(std::deque<Outcome>& window, absl::Time now) const;

  CanaryPolicyOptions options_;
  std::map<std::string, std::deque<Outcome>> windows_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_CANARY_POLICY_H_
