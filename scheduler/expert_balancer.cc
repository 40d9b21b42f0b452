#include "scheduler/expert_balancer.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace dmoe::scheduler {
namespace {

bool Holds(const std::vector<int32_t>& holders, int32_t shard) {
  return std::find(holders.begin(), holders.end(), shard) != holders.end();
}

double Max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

// One layer of PlanExpertMap.
std::vector<std::vector<int32_t>> PlanLayer(const std::vector<double>& load,
                                            const std::vector<int32_t>& home, int64_t num_shards,
                                            const ExpertPlanOptions& options) {
  const int64_t num_experts = static_cast<int64_t>(load.size());
  std::vector<std::vector<int32_t>> holders(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) holders[e] = {home[e]};
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  if (total <= 0 || num_shards < 2) return holders;
  const double mean = total / static_cast<double>(num_shards);
  std::vector<int64_t> slots_used(num_shards, 0);
  std::vector<double> shard_load = ShardLoads(holders, load, num_shards);
  // Each step takes one slot or frees one; the bound only guards against cycling.
  const int64_t max_steps = 4 * (num_experts + num_shards * options.redundant_slots);
  for (int64_t step = 0; step < max_steps; ++step) {
    const int64_t hot = std::max_element(shard_load.begin(), shard_load.end()) -
                        shard_load.begin();
    const double current_max = shard_load[hot];
    if (current_max <= options.target_imbalance * mean) break;
    std::vector<int32_t> candidates;  // experts the hottest shard computes
    for (int64_t e = 0; e < num_experts; ++e) {
      if (load[e] > 0 && Holds(holders[e], static_cast<int32_t>(hot))) {
        candidates.push_back(static_cast<int32_t>(e));
      }
    }
    std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return load[a] / holders[a].size() > load[b] / holders[b].size();
    });
    // Strictly lower than now, by more than rounding.
    double best_max = current_max - 1e-9 * total;
    int32_t best_expert = -1, best_target = -1;
    bool best_moves = false;
    std::vector<double> trial;
    for (int32_t e : candidates) {
      const double share = load[e] / static_cast<double>(holders[e].size());
      for (int64_t t = 0; t < num_shards; ++t) {
        const int32_t target = static_cast<int32_t>(t);
        if (Holds(holders[e], target)) continue;
        if (target != home[e] && slots_used[t] >= options.redundant_slots) continue;
        for (bool moves : {false, true}) {
          trial = shard_load;
          if (moves) {
            trial[hot] -= share;
            trial[t] += share;
          } else {
            const double next = load[e] / static_cast<double>(holders[e].size() + 1);
            for (int32_t h : holders[e]) trial[h] -= share - next;
            trial[t] += next;
          }
          const double trial_max = Max(trial);
          if (trial_max < best_max) {
            best_max = trial_max;
            best_expert = e;
            best_target = target;
            best_moves = moves;
          }
        }
      }
    }
    if (best_expert < 0) break;
    std::vector<int32_t>& h = holders[best_expert];
    if (best_moves) {
      h.erase(std::find(h.begin(), h.end(), static_cast<int32_t>(hot)));
      if (hot != home[best_expert]) --slots_used[hot];
    }
    h.push_back(best_target);
    std::sort(h.begin(), h.end());
    if (best_target != home[best_expert]) ++slots_used[best_target];
    shard_load = ShardLoads(holders, load, num_shards);
  }
  return holders;
}

}  // namespace

absl::Status ExpertPlanOptions::Validate() const {
  if (redundant_slots < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("redundant_slots: ", redundant_slots, " is negative"));
  }
  if (target_imbalance < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_imbalance: ", target_imbalance, " < 1 (max over mean is never below 1)"));
  }
  return absl::OkStatus();
}

cluster::ExpertMap RangeExpertMap(const ShardRanges& shards, int64_t num_experts,
                                  int64_t num_layers) {
  std::vector<std::vector<int32_t>> layer(num_experts);
  for (size_t s = 0; s < shards.size(); ++s) {
    for (int64_t e = shards[s].first; e < shards[s].second && e < num_experts; ++e) {
      layer[e] = {static_cast<int32_t>(s)};
    }
  }
  return cluster::ExpertMap(num_layers, layer);
}

std::vector<double> ShardLoads(const std::vector<std::vector<int32_t>>& holders,
                               const std::vector<double>& load, int64_t num_shards) {
  std::vector<double> out(num_shards, 0);
  for (size_t e = 0; e < holders.size() && e < load.size(); ++e) {
    if (holders[e].empty()) continue;
    const double share = load[e] / static_cast<double>(holders[e].size());
    for (int32_t s : holders[e]) out[s] += share;
  }
  return out;
}

double Imbalance(const cluster::ExpertMap& map, const ExpertLoad& load, int64_t num_shards) {
  double max_sum = 0, mean_sum = 0;
  for (size_t l = 0; l < map.size() && l < load.size(); ++l) {
    const std::vector<double> shard_load = ShardLoads(map[l], load[l], num_shards);
    max_sum += Max(shard_load);
    mean_sum += std::accumulate(shard_load.begin(), shard_load.end(), 0.0) /
                static_cast<double>(num_shards);
  }
  return mean_sum > 0 ? max_sum / mean_sum : 1.0;
}

cluster::ExpertMap PlanExpertMap(const ExpertLoad& load, const ShardRanges& shards,
                                 const ExpertPlanOptions& options) {
  const int64_t num_layers = static_cast<int64_t>(load.size());
  const int64_t num_experts = num_layers > 0 ? static_cast<int64_t>(load[0].size()) : 0;
  const int64_t num_shards = static_cast<int64_t>(shards.size());
  cluster::ExpertMap map = RangeExpertMap(shards, num_experts, num_layers);
  if (num_shards == 0) return map;
  std::vector<int32_t> home(num_experts, 0);
  for (int64_t e = 0; e < num_experts; ++e) home[e] = map[0][e].empty() ? 0 : map[0][e][0];
  for (int64_t l = 0; l < num_layers; ++l) {
    map[l] = PlanLayer(load[l], home, num_shards, options);
  }
  return map;
}

int64_t ExpertMoves(const cluster::ExpertMap& from, const cluster::ExpertMap& to) {
  int64_t moves = 0;
  for (size_t l = 0; l < to.size(); ++l) {
    for (size_t e = 0; e < to[l].size(); ++e) {
      for (int32_t s : to[l][e]) {
        if (l >= from.size() || e >= from[l].size() || !Holds(from[l][e], s)) ++moves;
      }
    }
  }
  return moves;
}

bool ExpertLoadWindow::Add(absl::Time now, const std::vector<int64_t>& counts) {
  if (static_cast<int64_t>(counts.size()) != num_layers_ * num_experts_) return false;
  for (size_t i = 0; i < counts.size(); ++i) sum_[i] += counts[i];
  entries_.emplace_back(now, counts);
  Evict(now);
  return true;
}

void ExpertLoadWindow::Evict(absl::Time now) {
  while (!entries_.empty() && now - entries_.front().first > window_) {
    const std::vector<int64_t>& old = entries_.front().second;
    for (size_t i = 0; i < old.size(); ++i) sum_[i] -= old[i];
    entries_.pop_front();
  }
}

ExpertLoad ExpertLoadWindow::Load(absl::Time now) {
  Evict(now);
  ExpertLoad load(num_layers_, std::vector<double>(num_experts_, 0));
  for (int64_t l = 0; l < num_layers_; ++l) {
    for (int64_t e = 0; e < num_experts_; ++e) {
      load[l][e] = static_cast<double>(sum_[l * num_experts_ + e]);
    }
  }
  return load;
}

int64_t ExpertLoadWindow::total_tokens(absl::Time now) {
  Evict(now);
  return std::accumulate(sum_.begin(), sum_.end(), int64_t{0});
}

}  // namespace dmoe::scheduler
