#include "scheduler/membership.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"

namespace dmoe::scheduler {

namespace {

// A random nonzero 31-bit epoch (the ids stay positive in every language's int64).
uint64_t RandomEpoch() {
  std::random_device rd;
  uint64_t epoch = 0;
  while (epoch == 0) epoch = (static_cast<uint64_t>(rd()) ^ (static_cast<uint64_t>(rd()) << 16)) & 0x7fffffffu;
  return epoch;
}

}  // namespace

Membership::Membership(const MembershipOptions& options)
    : options_(options), next_id_((RandomEpoch() << 32) | 1) {}

absl::StatusOr<uint64_t> Membership::Register(const PodInfo& pod) {
  if (pod.address.empty()) return absl::InvalidArgumentError("address is empty");
  if (pod.role == PodRole::kExpert &&
      (pod.expert_first < 0 || pod.expert_first >= pod.expert_last ||
       pod.expert_last > options_.num_experts)) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert range [", pod.expert_first, ", ", pod.expert_last,
                     ") is not inside [0, ", options_.num_experts, ")"));
  }
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  for (auto& [id, m] : members_) {
    if (m.pod.role == pod.role && m.pod.address == pod.address) {
      m.pod = pod;
      m.last_heartbeat = Now();
      BumpIfPlacementChangedLocked();
      return id;
    }
    if (pod.role == PodRole::kExpert && m.pod.role == PodRole::kExpert) {
      const bool same = m.pod.expert_first == pod.expert_first && m.pod.expert_last == pod.expert_last;
      const bool overlap = pod.expert_first < m.pod.expert_last && m.pod.expert_first < pod.expert_last;
      if (overlap && !same) {
        return absl::FailedPreconditionError(absl::StrCat(
            "expert range [", pod.expert_first, ", ", pod.expert_last, ") of ", pod.address,
            " overlaps [", m.pod.expert_first, ", ", m.pod.expert_last, ") of ", m.pod.address));
      }
    }
  }
  const uint64_t id = next_id_++;
  members_[id] = {pod, Now()};
  BumpIfPlacementChangedLocked();
  return id;
}

absl::Status Membership::Heartbeat(uint64_t member_id, double busy_seconds) {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  auto it = members_.find(member_id);
  if (it == members_.end()) {
    return absl::NotFoundError(absl::StrCat("member ", member_id, " is unknown or its lease expired"));
  }
  Member& m = it->second;
  const absl::Time now = Now();
  m.last_heartbeat = now;
  if (m.busy_seconds >= 0 && busy_seconds >= m.busy_seconds && now > m.busy_sampled) {
    const double ratio = std::clamp(
        (busy_seconds - m.busy_seconds) / absl::ToDoubleSeconds(now - m.busy_sampled), 0.0, 1.0);
    // Smoothed over a few heartbeats, so one idle or busy second does not flap the HPA.
    m.busy_ratio = 0.7 * m.busy_ratio + 0.3 * ratio;
  }
  m.busy_seconds = busy_seconds;
  m.busy_sampled = now;
  return absl::OkStatus();
}

std::vector<ShardStatus> Membership::ShardStatuses() {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  std::map<std::pair<int64_t, int64_t>, ShardStatus> shards;
  for (const auto& [id, m] : members_) {
    if (m.pod.role != PodRole::kExpert) continue;
    ShardStatus& s = shards[{m.pod.expert_first, m.pod.expert_last}];
    s.expert_first = m.pod.expert_first;
    s.expert_last = m.pod.expert_last;
    ++s.replicas;
    s.busy_ratio += m.busy_ratio;  // summed here, averaged below
  }
  std::vector<ShardStatus> out;
  for (auto& [range, s] : shards) {
    const double total_busy = s.busy_ratio;
    s.busy_ratio = total_busy / static_cast<double>(s.replicas);
    s.desired_replicas = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(total_busy / options_.target_busy_ratio - 1e-9)));
    out.push_back(s);
  }
  return out;
}

void Membership::Remove(uint64_t member_id) {
  absl::MutexLock lock(&mu_);
  members_.erase(member_id);
  BumpIfPlacementChangedLocked();
}

void Membership::ReportFailure(const std::string& address) {
  absl::MutexLock lock(&mu_);
  for (auto it = members_.begin(); it != members_.end();) {
    it = it->second.pod.address == address ? members_.erase(it) : std::next(it);
  }
  BumpIfPlacementChangedLocked();
}

void Membership::ExpireLocked() {
  const absl::Time now = Now();
  for (auto it = members_.begin(); it != members_.end();) {
    it = now - it->second.last_heartbeat > options_.lease ? members_.erase(it) : std::next(it);
  }
  BumpIfPlacementChangedLocked();
}

void Membership::BumpIfPlacementChangedLocked() {
  std::set<std::string> entries;
  for (const auto& [id, m] : members_) {
    entries.insert(m.pod.role == PodRole::kExpert
                       ? absl::StrCat("E", m.pod.expert_first, ":", m.pod.expert_last, "@", m.pod.address)
                       : absl::StrCat("A@", m.pod.address));
  }
  std::string signature;
  for (const std::string& e : entries) absl::StrAppend(&signature, e, ";");
  if (signature != placement_signature_) {
    placement_signature_ = signature;
    ++version_;
  }
}

cluster::Placement Membership::CurrentPlacement() {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  std::map<std::pair<int64_t, int64_t>, std::vector<std::string>> by_range;
  for (const auto& [id, m] : members_) {
    if (m.pod.role != PodRole::kExpert) continue;
    by_range[{m.pod.expert_first, m.pod.expert_last}].push_back(m.pod.address);
  }
  cluster::Placement p;
  p.version = version_;
  p.num_experts = options_.num_experts;
  int64_t covered_to = 0;
  bool contiguous = true;
  for (auto& [range, replicas] : by_range) {
    std::sort(replicas.begin(), replicas.end());
    p.shards.push_back({range.first, range.second, replicas});
    contiguous = contiguous && range.first == covered_to;
    covered_to = range.second;
  }
  p.complete = contiguous && covered_to == options_.num_experts && options_.num_experts > 0;
  return p;
}

std::vector<std::string> Membership::AttentionAddresses() {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  std::vector<std::string> out;
  for (const auto& [id, m] : members_)
    if (m.pod.role == PodRole::kAttention) out.push_back(m.pod.address);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<MemberView> Membership::Members() {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  std::vector<MemberView> out;
  for (const auto& [id, m] : members_) out.push_back({id, m.pod, Now() - m.last_heartbeat});
  return out;
}

uint64_t Membership::placement_version() {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  return version_;
}

}  // namespace dmoe::scheduler
