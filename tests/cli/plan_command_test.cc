// `dmoe plan` run as a user would ($DMOE_BIN_DIR/dmoe) on the tiny diffusion model: a skewed
// profile scraped from an HTTP /metrics (a local server on port 0) and from a file, a memory
// bound that forces shards, the JSON and text reports, and the error for missing rates.
#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"
#include "tests/testing/temp_dir.h"

namespace {

using ::testing::HasSubstr;

// Tiny diffusion model: MoE layers 1-3, 16 experts. Expert 0 takes 100 tokens, the others 10.
std::string SkewedProfile() {
  std::string text = "# TYPE dmoe_expert_tokens_total counter\n";
  for (int layer = 1; layer <= 3; ++layer) {
    for (int e = 0; e < 16; ++e) {
      text += "dmoe_expert_tokens_total{model_version=\"tiny\",layer=\"" + std::to_string(layer) +
              "\",expert=\"" + std::to_string(e) + "\"} " + (e == 0 ? "100" : "10") + "\n";
    }
  }
  return text;
}

class PlanCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin = std::getenv("DMOE_BIN_DIR");
    if (bin == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
    dmoe_ = std::string(bin) + "/dmoe plan --model " + DMOE_TINY_DIFFUSION_DIR;
  }
  std::string dmoe_;
};

TEST_F(PlanCommandTest, ScrapedSkewedProfileUnderAMemoryBound) {
  httplib::Server server;
  const std::string profile = SkewedProfile();
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(profile, "text/plain; version=0.0.4");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  // bind_to_any_port listens already: a connection waits in the backlog until accept.
  std::thread serving([&] { server.listen_after_bind(); });
  // 0.001 GiB: at most 7 experts (of 3 MoE layers, 48 KiB each) per pod: 3 shards of <= 6
  // experts and one redundant slot.
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      dmoe_ + " --load http://127.0.0.1:" + std::to_string(port) +
      " --target-tokens-per-s 50 --attention-positions-per-s 1000 --shard-rows-per-s 5000"
      " --forwards-per-token 1 --expert-pod-memory-gib 0.001 --json --show-map");
  server.stop();
  serving.join();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["expert_shards"], 3);
  EXPECT_EQ(j["redundant_slots"], 1);
  EXPECT_LT(j["planned_imbalance"].get<double>(), j["range_imbalance"].get<double>());
  EXPECT_GT(j["redundant_experts"].get<int>(), 0);
  EXPECT_EQ(j["redundant_copies"].size(), j["redundant_experts"].get<size_t>());
  EXPECT_TRUE(j["fits_memory"].get<bool>());
  EXPECT_DOUBLE_EQ(j["routed_tokens"].get<double>(), 3 * (100 + 15 * 10));
  // 50 tokens/s x 1 forward x 32 positions = 1600 positions/s. A replica's token: 32
  // positions at 1000/s, then per MoE layer (3) the wait for the hottest shard's share of 128
  // rows at 5000 rows/s; at 80%.
  EXPECT_DOUBLE_EQ(j["positions_per_s"].get<double>(), 1600);
  const double imbalance = j["planned_imbalance"].get<double>();
  const double replica_s = 32.0 / 1000 + 3 * 128 * imbalance / 3 / 5000;
  // Two micro-batches per replica (the default): one computes while the other waits.
  EXPECT_EQ(j["attention_replicas"].get<int>(),
            static_cast<int>(std::ceil(50 * replica_s / 2 / 0.8 - 1e-9)));
  // x 12 rows per position (top-4, 3 MoE layers) = 19200 rows/s, x imbalance / 3 shards.
  EXPECT_DOUBLE_EQ(j["rows_per_s"].get<double>(), 19200);
  const double hottest = 19200 * imbalance / 3;
  EXPECT_EQ(j["expert_replicas"].get<int>(), static_cast<int>(std::ceil(hottest / 4000 - 1e-9)));
}

TEST_F(PlanCommandTest, PredictsALayoutFromMeasuredMetrics) {
  dmoe_testing::TempDir tmp;
  // An attention replica: 4000 positions in 2 s of its own work, round trips of 0.9 s in all,
  // steps of 20 ms; expert pods: 0.5 s computing 10000 rows; scheduler iterations of 25 ms.
  std::ofstream(tmp.Join("attention.prom"))
      << "dmoe_attention_positions_total{model_version=\"t\"} 4000\n"
         "dmoe_attention_busy_seconds_total{model_version=\"t\"} 2\n"
         "dmoe_expert_dispatch_seconds_sum{model_version=\"t\",shard=\"0\"} 0.9\n"
         "dmoe_expert_dispatch_seconds_count{model_version=\"t\",shard=\"0\"} 300\n"
         "dmoe_attention_step_seconds_sum{model_version=\"t\"} 2\n"
         "dmoe_attention_step_seconds_count{model_version=\"t\"} 100\n";
  std::ofstream(tmp.Join("experts.prom"))
      << "dmoe_expert_rows_total 10000\ndmoe_expert_busy_seconds_total 0.5\n"
         "dmoe_expert_compute_seconds_sum 0.5\ndmoe_expert_compute_seconds_count 300\n";
  std::ofstream(tmp.Join("scheduler.prom"))
      << "dmoe_iteration_duration_seconds_sum 2.5\ndmoe_iteration_duration_seconds_count 100\n";
  std::ofstream(tmp.Join("bench.json")) << "{\"forwards\": 100, \"generated_tokens\": 80}";
  std::ofstream(tmp.Join("profile.prom")) << SkewedProfile();
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      dmoe_ + " --predict --attention-replicas 2 --expert-shards 4 --expert-replicas 1"
      " --attention-metrics " + tmp.Join("attention.prom") + " --shard-metrics " +
      tmp.Join("experts.prom") + " --scheduler-metrics " + tmp.Join("scheduler.prom") +
      " --bench-json " + tmp.Join("bench.json") + " --positions-per-token 50 --shared-cores 2"
      " --load " + tmp.Join("profile.prom") + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_DOUBLE_EQ(j["attention_positions_per_s"].get<double>(), 2000);
  EXPECT_DOUBLE_EQ(j["shard_rows_per_s"].get<double>(), 20000);
  EXPECT_NEAR(j["dispatch_us_per_row"].get<double>(), 40, 1e-9);  // 0.4 s / 10000 rows
  EXPECT_NEAR(j["step_overhead_ms"].get<double>(), 5, 1e-9);
  EXPECT_DOUBLE_EQ(j["forwards_per_token"].get<double>(), 1.25);
  // Ranges of 4 experts: shard 0 holds 130 of 250 tokens per layer, the mean is 62.5.
  const double imbalance = 130 / 62.5;
  EXPECT_NEAR(j["imbalance"].get<double>(), imbalance, 1e-9);
  // Per token: 50 positions at 2000/s; per MoE layer (3) 200 rows (top-4), the hottest
  // shard's share (ι/4, above the 2 cores' 1/2) at 20000 rows/s plus 40 us per row; then per
  // forward the scheduler's 5 ms.
  const double replica_s = 50.0 / 2000 + 3 * 200 * (imbalance / 4 / 20000 + 40e-6);
  EXPECT_NEAR(j["predicted_latency_ms"].get<double>(), (replica_s + 1.25 * 0.005) * 1000, 1e-6);
  // Two replicas of 2 micro-batches, 4 pods: min(2 x 2 / replica_s, 4 x 20000 / ι / 600
  // rows, 2 cores / (50/2000 + 600 x (1/20000 + 40e-6)) core-seconds).
  const double expected = std::min({4 / replica_s, 4 * 20000 / imbalance / 600,
                                    2 / (50.0 / 2000 + 600 * (1.0 / 20000 + 40e-6))});
  EXPECT_NEAR(j["predicted_tokens_per_s"].get<double>(), expected, 1e-6);

  const dmoe_testing::CommandResult bad = dmoe_testing::RunCommand(
      dmoe_ + " --predict --expert-shards 17 --gflops 5");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("--expert-shards 17 > 16 experts"));
}

TEST_F(PlanCommandTest, ProfileFileTextReport) {
  dmoe_testing::TempDir tmp;
  std::ofstream(tmp.Join("profile.prom")) << SkewedProfile();
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      dmoe_ + " --load " + tmp.Join("profile.prom") +
      " --target-tokens-per-s 20 --gflops 5 --target-latency-ms 1000");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* line : {"cost model", "attention replicas", "expert shards", "expert replicas",
                           "redundant slots", "imbalance", "predicted", "750 routed tokens"}) {
    EXPECT_THAT(r.out, HasSubstr(line));
  }
}

TEST_F(PlanCommandTest, MissingRatesAndBadProfilesAreErrors) {
  dmoe_testing::TempDir tmp;
  const dmoe_testing::CommandResult no_rates =
      dmoe_testing::RunCommand(dmoe_ + " --target-tokens-per-s 20");
  EXPECT_EQ(no_rates.exit_code, 1);
  EXPECT_THAT(no_rates.err, HasSubstr("--attention-positions-per-s or --gflops"));
  std::ofstream(tmp.Join("dense.prom")) << "dmoe_expert_tokens_total{layer=\"0\",expert=\"1\"} 3\n";
  const dmoe_testing::CommandResult dense = dmoe_testing::RunCommand(
      dmoe_ + " --target-tokens-per-s 20 --gflops 5 --load " + tmp.Join("dense.prom"));
  EXPECT_EQ(dense.exit_code, 1);
  EXPECT_THAT(dense.err, HasSubstr("layer 0 is not a MoE layer"));
  std::ofstream(tmp.Join("bench.json")) << "{\"forwards\": \"many\", \"generated_tokens\": 4}";
  const dmoe_testing::CommandResult bench = dmoe_testing::RunCommand(
      dmoe_ + " --target-tokens-per-s 20 --gflops 5 --bench-json " + tmp.Join("bench.json"));
  EXPECT_EQ(bench.exit_code, 1);
  EXPECT_THAT(bench.err, HasSubstr("not a dmoe bench --json report"));
  std::ofstream(tmp.Join("bench2.json")) << "{\"forwards\": 6, \"generated_tokens\": 4}";
  const dmoe_testing::CommandResult bench2 = dmoe_testing::RunCommand(
      dmoe_ + " --target-tokens-per-s 20 --gflops 5 --json --bench-json " + tmp.Join("bench2.json"));
  EXPECT_EQ(bench2.exit_code, 0) << bench2.err;
  EXPECT_THAT(bench2.out, HasSubstr("\"forwards_per_token\": 1.5"));
  const dmoe_testing::CommandResult missing = dmoe_testing::RunCommand(
      dmoe_ + " --target-tokens-per-s 20 --gflops 5 --load " + tmp.Join("nope.prom"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("cannot read"));
}

}  // namespace
