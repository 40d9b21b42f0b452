#include "cluster/placement.h"

namespace dmoe::cluster {

std::vector<std::vector<int32_t>> ExpertsOfShard(const ExpertMap& map, int32_t shard) {
  std::vector<std::vector<int32_t>> out(map.size());
  for (size_t l = 0; l < map.size(); ++l) {
    for (size_t e = 0; e < map[l].size(); ++e) {
      for (int32_t s : map[l][e]) {
        if (s == shard) out[l].push_back(static_cast<int32_t>(e));
      }
    }
  }
  return out;
}

int32_t FindShard(const Placement& placement, int64_t first, int64_t last) {
  for (size_t i = 0; i < placement.shards.size(); ++i) {
    if (placement.shards[i].expert_first == first && placement.shards[i].expert_last == last) {
      return static_cast<int32_t>(i);
    }
  }
  return -1;
}

}  // namespace dmoe::cluster
