#include "router/canary_policy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dmoe::router {

absl::Status CanaryPolicyOptions::Validate() const {
  if (window <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollback window must be > 0, got ", absl::FormatDuration(window)));
  }
  if (min_requests < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollback min_requests must be >= 1, got ", min_requests));
  }
  if (!(max_error_ratio >= 0 && max_error_ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollback max_error_ratio must be in [0, 1], got ", max_error_ratio));
  }
  if (max_latency_p95 < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("rollback max_latency_p95 must be >= 0, got ",
                                                   absl::FormatDuration(max_latency_p95)));
  }
  if (max_samples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("rollback max_samples must be >= 1, got ", max_samples));
  }
  return absl::OkStatus();
}

bool CanaryPolicy::CountsAsError(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kAborted:
      return true;
    default:
      return false;
  }
}

void CanaryPolicy::Record(const std::string& version, absl::Time at, absl::StatusCode code,
                          absl::Duration latency) {
  std::deque<Outcome>& window = windows_[version];
  window.push_back({.at = at, .latency = latency, .error = CountsAsError(code)});
  while (static_cast<int64_t>(window.size()) > options_.max_samples) window.pop_front();
}

void CanaryPolicy::Prune(std::deque<Outcome>& window, absl::Time now) const {
  while (!window.empty() && window.front().at <= now - options_.window) window.pop_front();
}

WindowStats CanaryPolicy::Stats(const std::string& version, absl::Time now) {
  WindowStats stats;
  auto it = windows_.find(version);
  if (it == windows_.end()) return stats;
  Prune(it->second, now);
  if (it->second.empty()) return stats;
  std::vector<absl::Duration> latencies;
  latencies.reserve(it->second.size());
  for (const Outcome& o : it->second) {
    ++stats.requests;
    stats.errors += o.error;
    latencies.push_back(o.latency);
  }
  stats.error_ratio = static_cast<double>(stats.errors) / stats.requests;
  // Nearest rank: the smallest latency with at least 95% of the calls at or below it.
  const size_t rank = static_cast<size_t>(std::ceil(0.95 * latencies.size())) - 1;
  std::nth_element(latencies.begin(), latencies.begin() + rank, latencies.end());
  stats.p95_latency = latencies[rank];
  return stats;
}

std::optional<Breach> CanaryPolicy::Check(const std::string& version, absl::Time now) {
  WindowStats stats = Stats(version, now);
  if (stats.requests < options_.min_requests) return std::nullopt;
  if (stats.error_ratio > options_.max_error_ratio) {
    return Breach{.bound = "error_ratio",
                  .limit = options_.max_error_ratio,
                  .measured = stats.error_ratio,
                  .stats = stats};
  }
  if (options_.max_latency_p95 > absl::ZeroDuration() &&
      stats.p95_latency > options_.max_latency_p95) {
    return Breach{.bound = "latency_p95_seconds",
                  .limit = absl::ToDoubleSeconds(options_.max_latency_p95),
                  .measured = absl::ToDoubleSeconds(stats.p95_latency),
                  .stats = stats};
  }
  return std::nullopt;
}

void CanaryPolicy::Reset(const std::string& version) { windows_.erase(version); }

}  // namespace dmoe::router
