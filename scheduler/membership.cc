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
    : options_(options), next_id_((RandomEpoch() << 32) | 1) {
  if (options_.num_moe_layers > 0 && options_.num_experts > 0) {
    absl::MutexLock lock(&mu_);
    load_window_ = std::make_unique<ExpertLoadWindow>(options_.num_moe_layers,
                                                      options_.num_experts, options_.load_window);
  }
}

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

absl::Status Membership::Heartbeat(uint64_t member_id, double busy_seconds,
                                   uint64_t applied_version,
                                   const std::vector<int64_t>& expert_tokens) {
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
  m.applied_version = applied_version;
  if (load_window_ && !expert_tokens.empty()) load_window_->Add(now, expert_tokens);
  BumpIfPlacementChangedLocked();  // an applied version may complete a map change
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
  AdvanceMapsLocked();
  std::set<std::string> entries;
  for (const auto& [id, m] : members_) {
    entries.insert(m.pod.role == PodRole::kExpert
                       ? absl::StrCat("E", m.pod.expert_first, ":", m.pod.expert_last, "@", m.pod.address)
                       : absl::StrCat("A@", m.pod.address));
  }
  std::string signature = absl::StrCat("M", map_generation_, ";");
  for (const std::string& e : entries) absl::StrAppend(&signature, e, ";");
  if (signature != placement_signature_) {
    placement_signature_ = signature;
    ++version_;
  }
  for (std::optional<StoredMap>* map : {&staged_map_, &active_map_}) {
    if (map->has_value() && (*map)->version == 0) (*map)->version = version_;
  }
}

ShardRanges Membership::RangesLocked() const {
  std::set<std::pair<int64_t, int64_t>> ranges;
  for (const auto& [id, m] : members_) {
    if (m.pod.role == PodRole::kExpert) ranges.insert({m.pod.expert_first, m.pod.expert_last});
  }
  return ShardRanges(ranges.begin(), ranges.end());
}

cluster::ExpertMap Membership::TranslateLocked(const StoredMap& stored,
                                               const ShardRanges& ranges) const {
  std::vector<int32_t> index(stored.shards.size(), -1);
  for (size_t i = 0; i < stored.shards.size(); ++i) {
    auto it = std::find(ranges.begin(), ranges.end(), stored.shards[i]);
    if (it != ranges.end()) index[i] = static_cast<int32_t>(it - ranges.begin());
  }
  cluster::ExpertMap out = RangeExpertMap(ranges, options_.num_experts,
                                          static_cast<int64_t>(stored.map.size()));
  for (size_t l = 0; l < stored.map.size(); ++l) {
    for (size_t e = 0; e < stored.map[l].size() && e < out[l].size(); ++e) {
      std::vector<int32_t> holders;
      for (int32_t s : stored.map[l][e]) {
        if (s >= 0 && s < static_cast<int32_t>(index.size()) && index[s] >= 0) {
          holders.push_back(index[s]);
        }
      }
      std::sort(holders.begin(), holders.end());
      if (!holders.empty()) out[l][e] = std::move(holders);
    }
  }
  return out;
}

void Membership::AdvanceMapsLocked() {
  const ShardRanges ranges = RangesLocked();
  auto live = [&](const StoredMap& map) {
    for (const auto& range : map.shards) {
      if (std::find(ranges.begin(), ranges.end(), range) == ranges.end()) return false;
    }
    return true;
  };
  if (staged_map_ && staged_map_->version != 0) {
    if (!live(*staged_map_)) {
      staged_map_.reset();  // a shard left mid-change: keep routing by the active map
      ++map_generation_;
    } else {
      bool loaded = true;
      for (const auto& [id, m] : members_) {
        if (m.pod.role == PodRole::kExpert && m.applied_version < staged_map_->version) {
          loaded = false;
        }
      }
      if (loaded) {
        previous_map_ = std::move(active_map_);
        active_map_ = std::move(staged_map_);
        active_map_->version = 0;  // stamped with the version that publishes it
        staged_map_.reset();
        ++map_generation_;
        ++maps_applied_;
      }
    }
  }
  if (previous_map_ && active_map_ && active_map_->version != 0) {
    bool switched = true;
    for (const auto& [id, m] : members_) {
      if (m.pod.role == PodRole::kAttention && m.applied_version < active_map_->version) {
        switched = false;
      }
    }
    if (switched) {
      previous_map_.reset();
      ++map_generation_;
    }
  }
}

absl::Status Membership::StageExpertMap(const ShardRanges& shards, cluster::ExpertMap map,
                                        int64_t redundant_slots) {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  if (staged_map_ || previous_map_) {
    return absl::FailedPreconditionError("an expert map change is under way");
  }
  if (shards != RangesLocked()) {
    return absl::InvalidArgumentError("shards: not the live expert shards");
  }
  if (static_cast<int64_t>(map.size()) != options_.num_moe_layers) {
    return absl::InvalidArgumentError(absl::StrCat("map: ", map.size(), " layers, expected ",
                                                   options_.num_moe_layers));
  }
  for (const auto& layer : map) {
    if (static_cast<int64_t>(layer.size()) != options_.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "map: a layer has ", layer.size(), " experts, expected ", options_.num_experts));
    }
  }
  redundant_slots_ = redundant_slots;
  staged_map_ = StoredMap{.shards = shards, .map = std::move(map), .version = 0};
  ++map_generation_;
  BumpIfPlacementChangedLocked();
  return absl::OkStatus();
}

BalanceSnapshot Membership::Balance() {
  absl::MutexLock lock(&mu_);
  ExpireLocked();
  BalanceSnapshot out;
  out.shards = RangesLocked();
  int64_t covered = 0;
  for (const auto& [first, last] : out.shards) {
    if (first != covered) break;
    covered = last;
  }
  out.complete = options_.num_experts > 0 && covered == options_.num_experts;
  out.active = active_map_ ? TranslateLocked(*active_map_, out.shards)
                           : RangeExpertMap(out.shards, options_.num_experts,
                                            options_.num_moe_layers);
  out.changing = staged_map_.has_value() || previous_map_.has_value();
  if (load_window_) {
    const absl::Time now = Now();
    out.load = load_window_->Load(now);
    out.window_tokens = load_window_->total_tokens(now);
  }
  return out;
}

int64_t Membership::expert_maps_applied() {
  absl::MutexLock lock(&mu_);
  return maps_applied_;
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
  p.first_moe_layer = options_.first_moe_layer;
  const ShardRanges ranges = RangesLocked();
  if (active_map_) p.layers = TranslateLocked(*active_map_, ranges);
  if (staged_map_) {
    p.staged_layers = TranslateLocked(*staged_map_, ranges);
    p.staged_version = staged_map_->version;
  }
  if (previous_map_) p.previous_layers = TranslateLocked(*previous_map_, ranges);
  if (active_map_ || staged_map_) p.redundant_slots = redundant_slots_;
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
