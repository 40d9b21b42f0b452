// Runs `dmoe bench --engine` ($DMOE_BIN_DIR/dmoe, set by dmoe_cc_test) on a tiny random
// checkpoint and checks the JSON report.
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"
#include "tests/testing/tiny_checkpoint.h"

namespace {

TEST(BenchCommandTest, EngineJsonReport) {
  const char* bin_dir = std::getenv("DMOE_BIN_DIR");
  if (bin_dir == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
  dmoe_testing::TinyCheckpointDir tiny;
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      std::string(bin_dir) + "/dmoe bench --engine " + tiny.dir() +
      " --concurrency 2 --requests 4 --prompt-tokens 8 --max-new-tokens 8 --threads 1"
      " --mask-id 4000 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const std::string& text = r.out;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << text;
  for (const char* field :
       {"mode", "concurrency", "requests", "ok", "generated_tokens", "forwards", "wall_seconds",
        "tokens_per_second", "tpf", "ttfb_p50", "ttfb_p99", "latency_p50", "latency_p99",
        "errors"}) {
    EXPECT_TRUE(j.contains(field)) << field << " missing in " << text;
  }
  EXPECT_EQ(j["mode"], "engine");
  EXPECT_EQ(j["concurrency"], 2);
  EXPECT_EQ(j["requests"], 4);
  EXPECT_EQ(j["ok"], 4);
  EXPECT_TRUE(j["errors"].is_object());
  EXPECT_TRUE(j["errors"].empty()) << text;
  // Stop ids are off: every request generates exactly --max-new-tokens.
  EXPECT_EQ(j["generated_tokens"], 4 * 8);
  EXPECT_GT(j["forwards"].get<int64_t>(), 0);
  EXPECT_GT(j["tokens_per_second"].get<double>(), 0);
  EXPECT_NEAR(j["tpf"].get<double>(),
              j["generated_tokens"].get<double>() / j["forwards"].get<double>(), 1e-9);
  EXPECT_LE(j["ttfb_p50"].get<double>(), j["ttfb_p99"].get<double>());
  EXPECT_LE(j["latency_p50"].get<double>(), j["latency_p99"].get<double>());
}

}  // namespace
