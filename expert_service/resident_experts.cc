#include "expert_service/resident_experts.h"

#include <algorithm>

namespace dmoe::expert {

std::vector<std::vector<int32_t>> ExtraExpertsFor(const cluster::Placement& placement,
                                                  int64_t first, int64_t last) {
  const int32_t shard = cluster::FindShard(placement, first, last);
  std::vector<std::vector<int32_t>> out;
  if (shard < 0) return out;
  for (const cluster::ExpertMap* map :
       {&placement.layers, &placement.staged_layers, &placement.previous_layers}) {
    const std::vector<std::vector<int32_t>> mine = cluster::ExpertsOfShard(*map, shard);
    if (out.size() < mine.size()) out.resize(mine.size());
    for (size_t l = 0; l < mine.size(); ++l) {
      for (int32_t e : mine[l]) {
        if (e < first || e >= last) out[l].push_back(e);
      }
    }
  }
  for (auto& layer : out) {
    std::sort(layer.begin(), layer.end());
    layer.erase(std::unique(layer.begin(), layer.end()), layer.end());
  }
  return out;
}

absl::Status FollowPlacement(ExpertEngine& engine, const cluster::Placement& placement) {
  return engine.SetResidentExperts(
      ExtraExpertsFor(placement, engine.info().expert_first, engine.info().expert_last));
}

}  // namespace dmoe::expert
