// `dmoe plan` run as a user would ($DMOE_BIN_DIR/dmoe) on the tiny diffusion model: a skewed
// profile scraped from an HTTP /metrics (a local server on port 0) and from a file, a memory
// bound that forces shards, the JSON and text reports, and the error for missing rates.
#include <httplib.h>

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
  // 50 tokens/s x 1 forward x 32 positions = 1600 positions/s: 2 replicas of 1000 at 80%.
  EXPECT_DOUBLE_EQ(j["positions_per_s"].get<double>(), 1600);
  EXPECT_EQ(j["attention_replicas"], 2);
  // x 12 rows per position (top-4, 3 MoE layers) = 19200 rows/s, x imbalance / 3 shards.
  EXPECT_DOUBLE_EQ(j["rows_per_s"].get<double>(), 19200);
  const double hottest = 19200 * j["planned_imbalance"].get<double>() / 3;
  EXPECT_EQ(j["expert_replicas"].get<int>(), static_cast<int>(std::ceil(hottest / 4000 - 1e-9)));
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
