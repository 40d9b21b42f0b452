// Expert balancing: the planner on synthetic skews (uniform, Zipf, one very hot expert, a
// shifting hot set) with the resulting imbalance asserted, the load window, the membership's
// staged switch (load, switch, release, fall back) and the rebalancer's triggers.
#include "scheduler/expert_balancer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/expert_rebalancer.h"
#include "scheduler/membership.h"

namespace dmoe::scheduler {
namespace {

constexpr int64_t kExperts = 64;
constexpr int64_t kLayers = 4;

ShardRanges FourShards() { return {{0, 16}, {16, 32}, {32, 48}, {48, 64}}; }

// Zipf(s) over experts, the rank-r expert being order[r]; `tokens` in all.
std::vector<double> Zipf(double s, const std::vector<int32_t>& order, double tokens) {
  std::vector<double> load(kExperts, 0);
  double norm = 0;
  for (int64_t r = 0; r < kExperts; ++r) norm += std::pow(r + 1, -s);
  for (int64_t r = 0; r < kExperts; ++r) load[order[r]] = tokens * std::pow(r + 1, -s) / norm;
  return load;
}

std::vector<int32_t> Identity() {
  std::vector<int32_t> order(kExperts);
  std::iota(order.begin(), order.end(), 0);
  return order;
}

std::vector<int32_t> Shuffled(uint32_t seed) {
  std::vector<int32_t> order = Identity();
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  return order;
}

// Every layer's holders sorted, unique, and within the slot budget.
void ExpectValid(const cluster::ExpertMap& map, const ShardRanges& shards, int64_t slots) {
  for (const auto& layer : map) {
    ASSERT_EQ(static_cast<int64_t>(layer.size()), kExperts);
    std::vector<int64_t> used(shards.size(), 0);
    for (int64_t e = 0; e < kExperts; ++e) {
      ASSERT_FALSE(layer[e].empty()) << "expert " << e;
      EXPECT_TRUE(std::is_sorted(layer[e].begin(), layer[e].end()));
      for (int32_t s : layer[e]) {
        if (e < shards[s].first || e >= shards[s].second) ++used[s];
      }
    }
    for (int64_t u : used) EXPECT_LE(u, slots);
  }
}

struct SkewCase {
  std::string name;
  ExpertLoad load;
  int64_t slots;
  double max_range_imbalance_at_least;  // how skewed the case is without balancing
  double max_planned_imbalance;
};

class PlanTest : public ::testing::TestWithParam<int> {};

std::vector<SkewCase> Cases() {
  std::vector<SkewCase> cases;
  cases.push_back({"uniform", ExpertLoad(kLayers, std::vector<double>(kExperts, 100)), 2, 1.0,
                   1.0});
  // Zipf 1.0 with the hottest experts all in shard 0's range: the worst case for ranges.
  cases.push_back({"zipf_sorted", ExpertLoad(kLayers, Zipf(1.0, Identity(), 1e5)), 4, 2.5,
                   1.15});
  // Zipf 1.2 spread at random over the experts, a different permutation per layer.
  ExpertLoad shuffled;
  for (int l = 0; l < kLayers; ++l) shuffled.push_back(Zipf(1.2, Shuffled(7 + l), 1e5));
  cases.push_back({"zipf_shuffled", shuffled, 2, 1.3, 1.15});
  // One expert takes half of every layer's tokens.
  std::vector<double> hot(kExperts, 1e5 / 2 / (kExperts - 1));
  hot[5] = 1e5 / 2;
  cases.push_back({"one_hot_expert", ExpertLoad(kLayers, hot), 1, 2.0, 1.05});
  return cases;
}

TEST_P(PlanTest, ReachesTheImbalanceBoundWithinTheSlotBudget) {
  const SkewCase c = Cases()[GetParam()];
  SCOPED_TRACE(c.name);
  const ShardRanges shards = FourShards();
  const cluster::ExpertMap range = RangeExpertMap(shards, kExperts, kLayers);
  const double before = Imbalance(range, c.load, 4);
  EXPECT_GE(before, c.max_range_imbalance_at_least);
  const cluster::ExpertMap plan =
      PlanExpertMap(c.load, shards, {.redundant_slots = c.slots, .target_imbalance = 1.05});
  ExpectValid(plan, shards, c.slots);
  const double after = Imbalance(plan, c.load, 4);
  EXPECT_LE(after, c.max_planned_imbalance) << "before " << before;
  EXPECT_LE(after, before);
  // Deterministic: the same load gives the same map.
  EXPECT_EQ(plan, PlanExpertMap(c.load, shards,
                                {.redundant_slots = c.slots, .target_imbalance = 1.05}));
  std::printf("%-16s slots %lld: imbalance %.3f -> %.3f, %lld expert(s) moved\n",
              c.name.c_str(), static_cast<long long>(c.slots), before, after,
              static_cast<long long>(ExpertMoves(range, plan)));
}

INSTANTIATE_TEST_SUITE_P(Skews, PlanTest, ::testing::Range(0, 4));

TEST(PlanExpertMapTest, AnEvenLayerKeepsItsRangeMap) {
  const ExpertLoad load(kLayers, std::vector<double>(kExperts, 100));
  const ShardRanges shards = FourShards();
  EXPECT_EQ(PlanExpertMap(load, shards, {.redundant_slots = 4}),
            RangeExpertMap(shards, kExperts, kLayers));
}

TEST(PlanExpertMapTest, NoSlotsNoChange) {
  const ExpertLoad load(kLayers, Zipf(1.0, Identity(), 1e5));
  const ShardRanges shards = FourShards();
  const cluster::ExpertMap plan = PlanExpertMap(load, shards, {.redundant_slots = 0});
  // Without redundant slots an expert can only stay home.
  EXPECT_EQ(plan, RangeExpertMap(shards, kExperts, kLayers));
}

TEST(PlanExpertMapTest, AShiftingHotSetIsFollowedThroughTheWindow) {
  ExpertLoadWindow window(kLayers, kExperts, absl::Seconds(60));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  auto counts = [](int32_t first_hot) {
    std::vector<int64_t> c(kLayers * kExperts, 10);
    for (int64_t l = 0; l < kLayers; ++l) {
      for (int32_t e = first_hot; e < first_hot + 4; ++e) c[l * kExperts + e] = 2000;
    }
    return c;
  };
  const ShardRanges shards = FourShards();
  const ExpertPlanOptions options{.redundant_slots = 2};
  ASSERT_TRUE(window.Add(t0, counts(0)));  // hot set: experts 0-3 (shard 0)
  const cluster::ExpertMap plan_a = PlanExpertMap(window.Load(t0), shards, options);
  EXPECT_LE(Imbalance(plan_a, window.Load(t0), 4), 1.15);
  // 61 s later only the new hot set (experts 40-43, shard 2) is in the window.
  ASSERT_TRUE(window.Add(t0 + absl::Seconds(61), counts(40)));
  const ExpertLoad load_b = window.Load(t0 + absl::Seconds(61));
  EXPECT_EQ(load_b[0][0], 10);
  EXPECT_EQ(load_b[0][40], 2000);
  EXPECT_GT(Imbalance(plan_a, load_b, 4), 1.5);  // the old plan no longer fits
  const cluster::ExpertMap plan_b = PlanExpertMap(load_b, shards, options);
  EXPECT_LE(Imbalance(plan_b, load_b, 4), 1.15);
  EXPECT_FALSE(window.Add(t0, std::vector<int64_t>(3, 1)));  // wrong size: ignored
}

TEST(ExpertPlanOptionsTest, Validate) {
  EXPECT_TRUE(ExpertPlanOptions{}.Validate().ok());
  EXPECT_EQ(ExpertPlanOptions{.redundant_slots = -1}.Validate().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpertPlanOptions{.target_imbalance = 0.5}.Validate().code(),
            absl::StatusCode::kInvalidArgument);
}

// The membership's staged switch, with a fake clock.
class ExpertMapSwitchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int s = 0; s < 4; ++s) {
      auto id = m_.Register(
          {PodRole::kExpert, absl::StrCat("e", s), s * 16, (s + 1) * 16});
      ASSERT_TRUE(id.ok());
      experts_.push_back(*id);
    }
    auto a = m_.Register({PodRole::kAttention, "a0"});
    ASSERT_TRUE(a.ok());
    attention_ = *a;
  }

  // Every layer: expert 0 on shards 0 and 1.
  cluster::ExpertMap Hot0() {
    cluster::ExpertMap map = RangeExpertMap(FourShards(), kExperts, kLayers);
    for (auto& layer : map) layer[0] = {0, 1};
    return map;
  }

  absl::Time now_ = absl::FromUnixSeconds(1000);
  Membership m_{{.num_experts = kExperts,
                 .lease = absl::Seconds(120),
                 .clock = [this] { return now_; },
                 .first_moe_layer = 1,
                 .num_moe_layers = kLayers}};
  std::vector<uint64_t> experts_;
  uint64_t attention_ = 0;
};

TEST_F(ExpertMapSwitchTest, LoadsThenSwitchesThenReleases) {
  const uint64_t v0 = m_.placement_version();
  ASSERT_TRUE(m_.StageExpertMap(FourShards(), Hot0(), 2).ok());
  cluster::Placement p = m_.CurrentPlacement();
  const uint64_t staged = p.staged_version;
  EXPECT_GT(staged, v0);
  EXPECT_TRUE(p.layers.empty());  // attention pods still route by ranges
  ASSERT_EQ(p.staged_layers.size(), static_cast<size_t>(kLayers));
  EXPECT_THAT(p.staged_layers[0][0], ::testing::ElementsAre(0, 1));
  EXPECT_EQ(p.first_moe_layer, 1);
  EXPECT_EQ(m_.StageExpertMap(FourShards(), Hot0(), 2).code(),
            absl::StatusCode::kFailedPrecondition);

  // Three of four expert pods loaded: still staged.
  for (int s = 0; s < 3; ++s) ASSERT_TRUE(m_.Heartbeat(experts_[s], 0, staged).ok());
  EXPECT_TRUE(m_.CurrentPlacement().layers.empty());
  ASSERT_TRUE(m_.Heartbeat(experts_[3], 0, staged).ok());
  p = m_.CurrentPlacement();
  ASSERT_EQ(p.layers.size(), static_cast<size_t>(kLayers));
  EXPECT_THAT(p.layers[2][0], ::testing::ElementsAre(0, 1));
  EXPECT_TRUE(p.staged_layers.empty());
  // The range map came before: every shard always holds its range, nothing to keep.
  EXPECT_TRUE(p.previous_layers.empty());
  EXPECT_GT(p.version, staged);
  EXPECT_FALSE(m_.Balance().changing);

  // A second change: expert 0 moves from shard 1 to shard 2.
  cluster::ExpertMap next = RangeExpertMap(FourShards(), kExperts, kLayers);
  for (auto& layer : next) layer[0] = {0, 2};
  ASSERT_TRUE(m_.StageExpertMap(FourShards(), next, 2).ok());
  const uint64_t staged2 = m_.CurrentPlacement().staged_version;
  for (uint64_t id : experts_) ASSERT_TRUE(m_.Heartbeat(id, 0, staged2).ok());
  p = m_.CurrentPlacement();
  EXPECT_THAT(p.layers[0][0], ::testing::ElementsAre(0, 2));
  ASSERT_FALSE(p.previous_layers.empty());  // shard 1 keeps expert 0 while attention switches
  EXPECT_THAT(p.previous_layers[0][0], ::testing::ElementsAre(0, 1));
  EXPECT_TRUE(m_.Balance().changing);

  ASSERT_TRUE(m_.Heartbeat(attention_, 0, p.version).ok());
  const cluster::Placement released = m_.CurrentPlacement();
  EXPECT_TRUE(released.previous_layers.empty());
  EXPECT_EQ(released.layers, p.layers);
  EXPECT_GT(released.version, p.version);
  EXPECT_FALSE(m_.Balance().changing);
  EXPECT_EQ(m_.expert_maps_applied(), 2);
}

TEST_F(ExpertMapSwitchTest, AShardLostMidChangeKeepsTheLastGoodPlacement) {
  ASSERT_TRUE(m_.StageExpertMap(FourShards(), Hot0(), 2).ok());
  m_.Remove(experts_[1]);  // shard [16, 32) leaves before loading
  const cluster::Placement p = m_.CurrentPlacement();
  EXPECT_TRUE(p.staged_layers.empty());
  EXPECT_TRUE(p.layers.empty());
  EXPECT_FALSE(m_.Balance().changing);
  EXPECT_EQ(m_.expert_maps_applied(), 0);
}

TEST_F(ExpertMapSwitchTest, AHolderLostAfterTheSwitchFallsBackToTheHomeShard) {
  ASSERT_TRUE(m_.StageExpertMap(FourShards(), Hot0(), 2).ok());
  const uint64_t staged = m_.CurrentPlacement().staged_version;
  for (uint64_t id : experts_) ASSERT_TRUE(m_.Heartbeat(id, 0, staged).ok());
  m_.Remove(experts_[1]);
  const cluster::Placement p = m_.CurrentPlacement();
  ASSERT_EQ(p.shards.size(), 3u);
  ASSERT_FALSE(p.layers.empty());
  EXPECT_THAT(p.layers[0][0], ::testing::ElementsAre(0));  // back home only
}

TEST_F(ExpertMapSwitchTest, StagingChecksTheShardsAndTheShape) {
  EXPECT_EQ(m_.StageExpertMap({{0, 64}}, Hot0(), 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m_.StageExpertMap(FourShards(), cluster::ExpertMap(1), 2).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ExpertMapSwitchTest, RebalancerStagesOnlyPastTheBoundTheTokensAndTheInterval) {
  auto rebalancer = ExpertRebalancer::Create(
      {.plan = {.redundant_slots = 2},
       .imbalance_bound = 1.15,
       .min_interval = absl::Seconds(30),
       .min_window_tokens = 1000,
       .clock = [this] { return now_; }},
      m_, {});
  ASSERT_TRUE(rebalancer.ok()) << rebalancer.status();
  std::vector<int64_t> even(kLayers * kExperts, 10);
  ASSERT_TRUE(m_.Heartbeat(attention_, 0, 0, even).ok());
  RebalanceDecision d = (*rebalancer)->Tick();
  EXPECT_FALSE(d.staged);
  EXPECT_NEAR(d.active_imbalance, 1.0, 1e-9);

  std::vector<int64_t> skewed(kLayers * kExperts, 10);
  for (int64_t l = 0; l < kLayers; ++l) skewed[l * kExperts + 3] = 5000;
  ASSERT_TRUE(m_.Heartbeat(attention_, 0, 0, skewed).ok());
  d = (*rebalancer)->Tick();
  EXPECT_FALSE(d.staged);  // not in the first interval after start
  EXPECT_GT(d.active_imbalance, 1.5);
  now_ += absl::Seconds(30);
  for (uint64_t id : experts_) ASSERT_TRUE(m_.Heartbeat(id, 0, 0).ok());
  d = (*rebalancer)->Tick();
  EXPECT_TRUE(d.staged);
  EXPECT_GT(d.active_imbalance, 1.5);
  EXPECT_LE(d.planned_imbalance, 1.15);
  EXPECT_GT(d.moves, 0);

  // Switch completes; the interval holds the next change back even though load shifts.
  const uint64_t staged = m_.CurrentPlacement().staged_version;
  for (uint64_t id : experts_) ASSERT_TRUE(m_.Heartbeat(id, 0, staged).ok());
  ASSERT_TRUE(m_.Heartbeat(attention_, 0, m_.CurrentPlacement().version).ok());
  std::vector<int64_t> shifted(kLayers * kExperts, 10);
  for (int64_t l = 0; l < kLayers; ++l) shifted[l * kExperts + 50] = 50000;
  now_ += absl::Seconds(10);
  ASSERT_TRUE(m_.Heartbeat(attention_, 0, m_.CurrentPlacement().version, shifted).ok());
  d = (*rebalancer)->Tick();
  EXPECT_FALSE(d.staged);
  EXPECT_GT(d.active_imbalance, 1.15);
  now_ += absl::Seconds(25);
  // Keep the attention pod's lease alive; the window still holds the shifted load.
  ASSERT_TRUE(m_.Heartbeat(attention_, 0, m_.CurrentPlacement().version).ok());
  for (uint64_t id : experts_) {
    ASSERT_TRUE(m_.Heartbeat(id, 0, m_.CurrentPlacement().version).ok());
  }
  d = (*rebalancer)->Tick();
  EXPECT_TRUE(d.staged);
}

}  // namespace
}  // namespace dmoe::scheduler
