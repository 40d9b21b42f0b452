#include "router/traffic_split.h"

#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dmoe::router {
namespace {

// Weights per declared version from a (possibly partial) list. `field` names the offending
// input in errors ("weights", "--split").
absl::StatusOr<std::vector<int>> ResolveWeights(const std::vector<std::string>& versions,
                                                const std::vector<VersionWeight>& weights,
                                                const std::string& field) {
  std::vector<int> percent(versions.size(), 0);
  std::set<std::string> seen;
  int sum = 0;
  for (const VersionWeight& w : weights) {
    size_t i = 0;
    while (i < versions.size() && versions[i] != w.version) ++i;
    if (i == versions.size()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": unknown version '", w.version,
                                                     "' (the router serves ",
                                                     absl::StrJoin(versions, ", "), ")"));
    }
    if (!seen.insert(w.version).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": version '", w.version, "' is listed twice"));
    }
    if (w.percent < 0 || w.percent > 100) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": the weight of '", w.version,
                                                     "' must be in [0, 100], got ", w.percent));
    }
    percent[i] = w.percent;
    sum += w.percent;
  }
  if (sum != 100) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": weights must sum to 100, got ", sum, " (", FormatSplit(weights),
                     ")"));
  }
  return percent;
}

}  // namespace

absl::StatusOr<std::vector<VersionWeight>> ParseSplit(const std::string& text,
                                                      const std::string& field) {
  std::vector<VersionWeight> out;
  for (absl::string_view part : absl::StrSplit(text, ',',
                                               absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(part, '=');
    absl::string_view name = absl::StripAsciiWhitespace(kv.first);
    int percent = 0;
    if (name.empty() || !absl::SimpleAtoi(absl::StripAsciiWhitespace(kv.second), &percent)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": expected VERSION=PERCENT[,VERSION=PERCENT...], got '", part, "'"));
    }
    out.push_back({.version = std::string(name), .percent = percent});
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": no VERSION=PERCENT given"));
  }
  return out;
}

std::string FormatSplit(const std::vector<VersionWeight>& weights) {
  return absl::StrJoin(weights, ",", [](std::string* out, const VersionWeight& w) {
    absl::StrAppend(out, w.version, "=", w.percent);
  });
}

int BucketOfKey(std::string_view key) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : key) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return static_cast<int>(hash % kNumBuckets);
}

absl::Status TrafficSplitOptions::Validate() const {
  if (versions.empty()) return absl::InvalidArgumentError("versions: at least one is needed");
  std::set<std::string> seen;
  for (const std::string& v : versions) {
    if (v.empty()) return absl::InvalidArgumentError("versions: a version name is empty");
    if (!seen.insert(v).second) {
      return absl::InvalidArgumentError(absl::StrCat("versions: '", v, "' is declared twice"));
    }
  }
  if (!weights.empty()) {
    absl::StatusOr<std::vector<int>> resolved = ResolveWeights(versions, weights, "weights");
    if (!resolved.ok()) return resolved.status();
  }
  if (!stable.empty() && !seen.count(stable)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stable: unknown version '", stable, "' (the router serves ",
                     absl::StrJoin(versions, ", "), ")"));
  }
  return rollback.Validate();
}

absl::StatusOr<std::unique_ptr<TrafficSplit>> TrafficSplit::Create(
    const TrafficSplitOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  std::vector<int> percent(options.versions.size(), 0);
  if (options.weights.empty()) {
    percent[0] = 100;
  } else {
    DMOE_ASSIGN_OR_RETURN(percent, ResolveWeights(options.versions, options.weights, "weights"));
  }
  int stable = 0;
  while (!options.stable.empty() && options.versions[stable] != options.stable) ++stable;
  return std::unique_ptr<TrafficSplit>(new TrafficSplit(options, std::move(percent), stable));
}

TrafficSplit::TrafficSplit(const TrafficSplitOptions& options, std::vector<int> percent,
                           int stable)
    : versions_(options.versions),
      clock_(options.clock),
      percent_(std::move(percent)),
      stable_(stable),
      policy_(options.rollback) {}

int TrafficSplit::IndexOf(const std::string& version) const {
  for (size_t i = 0; i < versions_.size(); ++i) {
    if (versions_[i] == version) return static_cast<int>(i);
  }
  return -1;
}

std::string TrafficSplit::VersionOfBucketLocked(int bucket) const {
  int end = 0;
  for (size_t i = 0; i < versions_.size(); ++i) {
    end += percent_[i];
    if (bucket < end) return versions_[i];
  }
  return versions_[stable_];  // unreachable while the weights sum to 100
}

std::string TrafficSplit::VersionOfBucket(int bucket) const {
  absl::ReaderMutexLock lock(&mu_);
  return VersionOfBucketLocked(bucket);
}

absl::StatusOr<std::string> TrafficSplit::Pick(const std::string& client_key,
                                               const std::string& explicit_version) {
  if (!explicit_version.empty()) {
    if (IndexOf(explicit_version) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.version: unknown version '", explicit_version, "' (the router serves ",
          absl::StrJoin(versions_, ", "), ")"));
    }
    return explicit_version;
  }
  absl::MutexLock lock(&mu_);
  const int bucket = client_key.empty() ? absl::Uniform(rng_, 0, kNumBuckets)
                                        : BucketOfKey(client_key);
  return VersionOfBucketLocked(bucket);
}

absl::Status TrafficSplit::SetSplit(const std::vector<VersionWeight>& weights,
                                    const std::string& stable) {
  DMOE_ASSIGN_OR_RETURN(std::vector<int> percent, ResolveWeights(versions_, weights, "weights"));
  const int stable_index = stable.empty() ? -2 : IndexOf(stable);
  if (stable_index == -1) {
    return absl::InvalidArgumentError(absl::StrCat("stable: unknown version '", stable,
                                                   "' (the router serves ",
                                                   absl::StrJoin(versions_, ", "), ")"));
  }
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < versions_.size(); ++i) {
    if (percent[i] != percent_[i]) policy_.Reset(versions_[i]);
  }
  percent_ = std::move(percent);
  if (stable_index >= 0) stable_ = stable_index;
  rolled_back_ = false;
  DMOE_LOG(INFO) << "traffic split " << FormatSplit(weights) << ", stable "
                 << versions_[stable_];
  return absl::OkStatus();
}

std::optional<RollbackEvent> TrafficSplit::Record(const std::string& version,
                                                  absl::StatusCode code,
                                                  absl::Duration latency) {
  const int index = IndexOf(version);
  if (index < 0) return std::nullopt;
  const absl::Time now = Now();
  absl::MutexLock lock(&mu_);
  policy_.Record(version, now, code, latency);
  if (index == stable_ || percent_[index] == 0) return std::nullopt;
  std::optional<Breach> breach = policy_.Check(version, now);
  if (!breach) return std::nullopt;
  for (size_t i = 0; i < versions_.size(); ++i) {
    percent_[i] = static_cast<int>(i) == stable_ ? 100 : 0;
  }
  rolled_back_ = true;
  ++rollbacks_;
  last_rollback_ = RollbackEvent{.version = version, .breach = *breach, .at = now};
  DMOE_LOG(WARNING) << "canary rollback: version " << version << " " << breach->bound << " "
                    << breach->measured << " exceeds the bound " << breach->limit << " over "
                    << breach->stats.requests << " calls in the last "
                    << absl::FormatDuration(policy_.options().window)
                    << "; all traffic to stable version " << versions_[stable_];
  return last_rollback_;
}

SplitSnapshot TrafficSplit::Snapshot() const {
  const absl::Time now = Now();
  absl::MutexLock lock(&mu_);  // exclusive: Stats prunes the windows
  SplitSnapshot s;
  for (size_t i = 0; i < versions_.size(); ++i) {
    s.versions.push_back({.version = versions_[i],
                          .percent = percent_[i],
                          .stable = static_cast<int>(i) == stable_,
                          .window = policy_.Stats(versions_[i], now)});
  }
  s.stable = versions_[stable_];
  s.policy = policy_.options();
  s.rolled_back = rolled_back_;
  s.last_rollback = last_rollback_;
  s.rollbacks = rollbacks_;
  return s;
}

}  // namespace dmoe::router
