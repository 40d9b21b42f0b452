// Capacity planning (dmoe plan): the cost model's formulas on a hand-computed config, the
// Prometheus profile parser, and the plan on uniform and skewed profiles under throughput,
// latency and memory targets.
#include "scheduler/capacity_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dmoe::scheduler {
namespace {

using ::testing::HasSubstr;

// H 64, q 64 (2 heads x 32), kv 32, 3 layers (1 dense), dense width 128, 8 experts top-2 of
// width 16, 1 shared expert, vocab 100, BF16, block 4.
model::ModelConfig SmallConfig() {
  model::ModelConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 32;
  c.num_hidden_layers = 3;
  c.first_k_dense_replace = 1;
  c.intermediate_size = 128;
  c.moe_intermediate_size = 16;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.num_shared_experts = 1;
  c.vocab_size = 100;
  c.torch_dtype = DType::kBF16;
  c.block_length = 4;
  return c;
}

CapacityRates Rates() {
  CapacityRates r;
  r.forwards_per_token = 2;
  r.attention_positions_per_s = 300;
  r.shard_rows_per_s = 1000;
  r.utilization = 0.8;
  r.micro_batches = 1;
  return r;
}

ExpertLoad OneHotExpert() {  // expert 0 (shard 0 of 4) takes 100 of 170 tokens, per layer
  return ExpertLoad(2, std::vector<double>{100, 10, 10, 10, 10, 10, 10, 10});
}

TEST(CapacityPlanTest, TokenCostsFollowTheWrittenFormulas) {
  const TokenCosts t = ComputeTokenCosts(SmallConfig(), /*context_tokens=*/10);
  // 3 x (2·64·128 + 2·64·64 + 4·10·64) + 6·64·128 + 2 x (2·64·8 + 6·64·1·16) + 2·64·100
  EXPECT_DOUBLE_EQ(t.attention_flops, 157696);
  EXPECT_DOUBLE_EQ(t.expert_row_flops, 6 * 64 * 16);
  EXPECT_DOUBLE_EQ(t.rows_per_position, 4);          // top-2 x 2 MoE layers
  EXPECT_DOUBLE_EQ(t.expert_weight_bytes, 3 * 64 * 16 * 2);
  EXPECT_DOUBLE_EQ(t.row_wire_bytes, 2 * 64 * 4);
}

TEST(CapacityPlanTest, ParsesExpertTokensFromPrometheusText) {
  const std::string text =
      "# HELP dmoe_expert_tokens_total Tokens routed to each expert of each MoE layer.\n"
      "# TYPE dmoe_expert_tokens_total counter\n"
      "dmoe_expert_tokens_total{model_version=\"a\",layer=\"1\",expert=\"0\"} 100\n"
      "dmoe_expert_tokens_total{expert=\"7\",layer=\"2\",model_version=\"a\"} 5 1700000000000\n"
      "dmoe_expert_imbalance_ratio{model_version=\"a\",layer=\"1\"} 3.5\n"
      "\n"
      // a second pod's scrape, concatenated: summed
      "dmoe_expert_tokens_total{model_version=\"b\",layer=\"1\",expert=\"0\"} 2.5e1\r\n";
  auto load = ParseExpertLoadProfile(text, SmallConfig());
  ASSERT_TRUE(load.ok()) << load.status();
  ASSERT_EQ(load->size(), 2u);  // MoE layers 1 and 2
  ASSERT_EQ((*load)[0].size(), 8u);
  EXPECT_DOUBLE_EQ((*load)[0][0], 125);
  EXPECT_DOUBLE_EQ((*load)[1][7], 5);
  EXPECT_DOUBLE_EQ((*load)[1][0], 0);
}

TEST(CapacityPlanTest, ProfileErrorsNameTheProblem) {
  const model::ModelConfig c = SmallConfig();
  auto dense = ParseExpertLoadProfile("dmoe_expert_tokens_total{layer=\"0\",expert=\"1\"} 3\n", c);
  EXPECT_EQ(dense.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dense.status().message(), HasSubstr("layer 0 is not a MoE layer"));
  auto expert = ParseExpertLoadProfile("dmoe_expert_tokens_total{layer=\"1\",expert=\"8\"} 3\n", c);
  EXPECT_THAT(expert.status().message(), HasSubstr("expert 8 >= 8"));
  auto value = ParseExpertLoadProfile("dmoe_expert_tokens_total{layer=\"1\",expert=\"1\"} x\n", c);
  EXPECT_THAT(value.status().message(), HasSubstr("not a number"));
  auto labels = ParseExpertLoadProfile("dmoe_expert_tokens_total{layer=\"1\"} 3\n", c);
  EXPECT_THAT(labels.status().message(), HasSubstr("layer and expert labels"));
  auto none = ParseExpertLoadProfile("dmoe_expert_rows_total 3\n", c);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  auto broken = ParseExpertLoadProfile("dmoe_expert_tokens_total{layer=\"1 3\n", c);
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CapacityPlanTest, MeasuredShardRateIsRowsOverBusySeconds) {
  auto rate = MeasuredShardRowsPerSecond(
      "dmoe_expert_rows_total{model_version=\"a\"} 1000\n"
      "dmoe_expert_busy_seconds_total{model_version=\"a\"} 2\n"
      "dmoe_expert_rows_total{model_version=\"a\"} 500\n"
      "dmoe_expert_busy_seconds_total{model_version=\"a\"} 1\n");
  ASSERT_TRUE(rate.ok()) << rate.status();
  EXPECT_DOUBLE_EQ(*rate, 500);
  EXPECT_EQ(MeasuredShardRowsPerSecond("dmoe_expert_rows_total 5\n").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CapacityPlanTest, MeasuredAttentionRateRowCostAndStepOverhead) {
  const std::string attention =
      "dmoe_attention_positions_total{model_version=\"a\"} 3000\n"
      "dmoe_attention_busy_seconds_total{model_version=\"a\"} 1.5\n"
      "dmoe_attention_positions_total{model_version=\"a\"} 1000\n"
      "dmoe_attention_busy_seconds_total{model_version=\"a\"} 0.5\n"
      "dmoe_expert_dispatch_seconds_sum{model_version=\"a\",shard=\"0\"} 0.3\n"
      "dmoe_expert_dispatch_seconds_count{model_version=\"a\",shard=\"0\"} 100\n"
      "dmoe_expert_dispatch_seconds_sum{model_version=\"a\",shard=\"1\"} 0.5\n"
      "dmoe_expert_dispatch_seconds_count{model_version=\"a\",shard=\"1\"} 100\n"
      "dmoe_attention_step_seconds_sum{model_version=\"a\"} 2\n"
      "dmoe_attention_step_seconds_count{model_version=\"a\"} 100\n";
  const std::string experts =
      "dmoe_expert_compute_seconds_sum{model_version=\"a\"} 0.2\n"
      "dmoe_expert_compute_seconds_count{model_version=\"a\"} 200\n"
      "dmoe_expert_rows_total{model_version=\"a\"} 6000\n";
  auto rate = MeasuredAttentionPositionsPerSecond(attention);
  ASSERT_TRUE(rate.ok()) << rate.status();
  EXPECT_DOUBLE_EQ(*rate, 2000);
  // 0.8 s of round trips, 0.2 s of compute: 0.6 s for 6000 rows.
  auto per_row = MeasuredDispatchMicrosPerRow(attention, experts);
  ASSERT_TRUE(per_row.ok()) << per_row.status();
  EXPECT_NEAR(*per_row, 100, 1e-9);
  // Compute longer than the round trips (clock noise): no negative cost.
  auto none = MeasuredDispatchMicrosPerRow(attention,
                                           "dmoe_expert_compute_seconds_sum 1\n"
                                           "dmoe_expert_rows_total 10\n");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0);
  // Iterations of 25 ms, attention steps of 20 ms.
  auto overhead = MeasuredStepOverheadMs(
      "dmoe_iteration_duration_seconds_sum 2.5\ndmoe_iteration_duration_seconds_count 100\n",
      attention);
  ASSERT_TRUE(overhead.ok()) << overhead.status();
  EXPECT_NEAR(*overhead, 5, 1e-9);
  EXPECT_EQ(MeasuredAttentionPositionsPerSecond("dmoe_attention_positions_total 5\n")
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(MeasuredDispatchMicrosPerRow(attention, "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(MeasuredStepOverheadMs("", attention).status().code(), absl::StatusCode::kNotFound);
}

TEST(CapacityPlanTest, PredictionWithMeasuredCostsAndSharedCores) {
  CapacityRates r = Rates();
  r.positions_per_token = 10;  // prefill and recomputed blocks: more than 2 forwards x 4
  r.dispatch_ms = 1;
  r.dispatch_us_per_row = 100;
  r.step_overhead_ms = 3;
  // 20 rows per MoE layer and token. An attention replica per token: 10/300 s, then per
  // layer the hottest of 4 even shards (20/4 rows at 1000/s) and moving 20 rows (100 us each).
  const double replica_s = 10.0 / 300 + 2 * (20.0 / 4 / 1000 + 20 * 100e-6);
  CapacityPrediction own = PredictCapacity(SmallConfig(), r, 1, 4, 1, 1.0);
  EXPECT_NEAR(own.replica_tokens_per_s, 1 / replica_s, 1e-9);
  // A lone request also waits, per forward, for 2 layers x 1 ms and the scheduler's 3 ms.
  EXPECT_NEAR(own.latency_ms, (replica_s + 2 * (2 * 0.001 + 0.003)) * 1000, 1e-9);
  // min(1 replica, 4 x 1000 / 40 rows per token)
  EXPECT_NEAR(own.tokens_per_s, std::min(1 / replica_s, 100.0), 1e-9);
  // Two shared cores: the 4 shards compute 2 at a time, and all work shares the 2 cores.
  r.shared_cores = 2;
  const double shared_replica_s = 10.0 / 300 + 2 * (20.0 / 2 / 1000 + 20 * 100e-6);
  CapacityPrediction shared = PredictCapacity(SmallConfig(), r, 2, 4, 1, 1.0);
  EXPECT_NEAR(shared.replica_tokens_per_s, 1 / shared_replica_s, 1e-9);
  // 2 cores / (10/300 + 40 rows x (1 ms + 100 us)) core-seconds per token
  EXPECT_NEAR(shared.tokens_per_s, 2 / (10.0 / 300 + 40 * 1.1e-3), 1e-9);
  // Two micro-batches: one computes while the other waits.
  r.micro_batches = 2;
  EXPECT_NEAR(PredictCapacity(SmallConfig(), r, 2, 4, 1, 1.0).replica_tokens_per_s,
              2 / shared_replica_s, 1e-9);
  r.micro_batches = 1;
  // A hot shard slower than the cores' share sets the pace.
  CapacityPrediction skewed = PredictCapacity(SmallConfig(), r, 1, 4, 1, 3.0);
  EXPECT_NEAR(skewed.replica_tokens_per_s,
              1 / (10.0 / 300 + 2 * (20.0 * 3 / 4 / 1000 + 20 * 100e-6)), 1e-9);
}

TEST(CapacityPlanTest, PlannedImbalanceOfALayout) {
  const ExpertLoad load = OneHotExpert();
  EXPECT_EQ(PlannedImbalance({}, 8, 4, 2, ExpertPlanOptions{}), 1);
  EXPECT_EQ(PlannedImbalance(load, 8, 1, 0, ExpertPlanOptions{}), 1);
  // Ranges of 2 experts: shard 0 holds 110 of 170 tokens, the mean is 42.5.
  EXPECT_NEAR(PlannedImbalance(load, 8, 4, 0, ExpertPlanOptions{}), 110 / 42.5, 1e-9);
  // Redundant slots spread the hot expert: lower, never higher.
  cluster::ExpertMap map;
  const double balanced = PlannedImbalance(load, 8, 4, 2, ExpertPlanOptions{}, &map);
  EXPECT_LT(balanced, 110 / 42.5);
  ASSERT_EQ(map.size(), 2u);
  EXPECT_GT(map[0][0].size(), 1u);  // expert 0 has copies
}

TEST(CapacityPlanTest, UniformLoadSizesPoolsByThroughput) {
  CapacityTarget target;
  target.tokens_per_s = 100;
  auto plan = PlanCapacity(SmallConfig(), {}, target, Rates());
  ASSERT_TRUE(plan.ok()) << plan.status();
  // 100 tokens/s x 2 forwards x 4 positions = 800 positions/s. A replica spends 8/300 s on
  // a token's positions and waits 2 layers x 16 rows / 1000 rows/s for its experts: 17.05
  // tokens/s, 13.6 at 80%.
  EXPECT_DOUBLE_EQ(plan->positions_per_s, 800);
  EXPECT_EQ(plan->attention_replicas, 8);
  // 800 x 4 rows = 3200 rows/s on one shard; 800 per pod at 80%.
  EXPECT_DOUBLE_EQ(plan->rows_per_s, 3200);
  EXPECT_EQ(plan->expert_shards, 1);
  EXPECT_EQ(plan->expert_replicas, 4);
  EXPECT_EQ(plan->redundant_slots, 0);
  // Lone request: (4/300 s + 2 layers x 8 rows / 1000 rows/s) x 2 forwards per token.
  EXPECT_NEAR(plan->latency_ms, 58.6667, 1e-3);
  // min(8 replicas x 17.05, 4 x 1000 / 32 rows per token)
  EXPECT_NEAR(plan->predicted_tokens_per_s, 125, 1e-9);
  EXPECT_TRUE(plan->notes.empty());
}

TEST(CapacityPlanTest, LatencyTargetAddsShards) {
  CapacityTarget target;
  target.tokens_per_s = 100;
  target.latency_ms = 40;  // 1 shard: 58.7 ms, 2: 42.7 ms, 4: 34.7 ms
  auto plan = PlanCapacity(SmallConfig(), {}, target, Rates());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->expert_shards, 3);  // 8 rows x 1/3 per layer: 37.3 ms
  EXPECT_NEAR(plan->latency_ms, (4.0 / 300 + 2 * 8.0 / 3 / 1000) * 2 * 1000, 1e-9);
  EXPECT_TRUE(plan->meets_latency);
  EXPECT_EQ(plan->expert_replicas, 2);  // 3200 / 3 = 1067 rows/s per shard, 800 per pod

  target.latency_ms = 20;  // attention alone takes 26.7 ms per token
  auto out_of_reach = PlanCapacity(SmallConfig(), {}, target, Rates());
  ASSERT_TRUE(out_of_reach.ok());
  EXPECT_FALSE(out_of_reach->meets_latency);
  EXPECT_EQ(out_of_reach->expert_shards, 8);  // the fastest layout
  ASSERT_FALSE(out_of_reach->notes.empty());
  EXPECT_THAT(out_of_reach->notes[0], HasSubstr("out of reach"));
}

TEST(CapacityPlanTest, SkewedLoadGetsTheFewestRedundantSlotsThatReachTheBound) {
  CapacityTarget target;
  target.tokens_per_s = 100;
  target.latency_ms = 36;  // needs 4 shards on a uniform load
  CapacityRates rates = Rates();
  auto plan = PlanCapacity(SmallConfig(), OneHotExpert(), target, rates);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_NEAR(plan->range_imbalance, 110.0 / 42.5, 1e-9);
  EXPECT_LE(plan->planned_imbalance, rates.imbalance_bound);
  EXPECT_GE(plan->redundant_slots, 1);
  EXPECT_EQ(plan->map.size(), 2u);
  EXPECT_EQ(plan->map[0][0].size() > 1, true);  // the hot expert is replicated
  // The plan's imbalance is the balancer's on the same shards and slots.
  ExpertPlanOptions o;
  o.redundant_slots = plan->redundant_slots;
  EXPECT_DOUBLE_EQ(plan->planned_imbalance,
                   Imbalance(PlanExpertMap(OneHotExpert(), plan->shards, o), OneHotExpert(),
                             plan->expert_shards));
  // Fewest: one slot less stays above the bound.
  rates.max_redundant_slots = plan->redundant_slots - 1;
  auto fewer = PlanCapacity(SmallConfig(), OneHotExpert(), target, rates);
  ASSERT_TRUE(fewer.ok());
  EXPECT_GT(fewer->planned_imbalance, rates.imbalance_bound);
  // Replicas follow the hottest shard: rows x imbalance / shards.
  EXPECT_DOUBLE_EQ(plan->hottest_shard_rows_per_s,
                   3200 * plan->planned_imbalance / plan->expert_shards);
}

TEST(CapacityPlanTest, MemoryBoundsShardsAndSlots) {
  CapacityTarget target;
  target.tokens_per_s = 100;
  CapacityRates rates = Rates();
  // An expert of both MoE layers: 2 x 6144 bytes. 8 experts do not fit, 4 do, 5 do not.
  rates.expert_pod_memory_bytes = 60000;
  auto plan = PlanCapacity(SmallConfig(), OneHotExpert(), target, rates);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->expert_shards, 2);
  EXPECT_EQ(plan->redundant_slots, 0);
  EXPECT_TRUE(plan->fits_memory);
  EXPECT_DOUBLE_EQ(plan->expert_pod_weight_bytes, 4 * 2 * 6144);
  ASSERT_FALSE(plan->notes.empty());
  EXPECT_THAT(plan->notes.back(), HasSubstr("stays above the bound"));

  rates.expert_pod_memory_bytes = 1000;  // not even one expert
  auto none = PlanCapacity(SmallConfig(), {}, target, rates);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->fits_memory);
}

TEST(CapacityPlanTest, RejectsBadInputs) {
  CapacityTarget target;
  EXPECT_FALSE(PlanCapacity(SmallConfig(), {}, target, Rates()).ok());  // no tokens/s
  target.tokens_per_s = 10;
  CapacityRates rates = Rates();
  rates.shard_rows_per_s = 0;
  EXPECT_FALSE(PlanCapacity(SmallConfig(), {}, target, rates).ok());
  EXPECT_FALSE(PlanCapacity(SmallConfig(), ExpertLoad(1, std::vector<double>(8, 1)), target,
                            Rates())
                   .ok());  // profile of the wrong shape
}

}  // namespace
}  // namespace dmoe::scheduler
