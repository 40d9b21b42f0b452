// `dmoe chaos` as a user runs it, for 60 s on the tiny model (issue 11 item 3's smoke run):
// a loopback cluster of 2 routers, a journalling scheduler, 2 attention replicas and 2 expert
// shards x 2 pods serves 4 streams while a pod of each role in turn is SIGKILLed and restarted
// every 12 s and another is SIGSTOPped for 2 s between kills, and 500 malformed requests hit
// every port. Every request must complete with the ids of `dmoe generate`; none may fail or be
// lost; every kill must be recovered from; no process may crash.
#include <cstdlib>
#include <iostream>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"

namespace {

TEST(ChaosSmokeTest, KillsAndPausesOfEveryRoleLoseNothing) {
  const char* bin = std::getenv("DMOE_BIN_DIR");
  if (bin == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      std::string(bin) + "/dmoe chaos --model " + DMOE_TINY_DIFFUSION_DIR +
      " --duration 60 --streams 4 --kill-every 12 --pause-seconds 2 --max-new-tokens 32"
      " --flood 500 --json");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out << r.err;
  EXPECT_GT(j["sent"].get<int>(), 20);
  EXPECT_EQ(j["completed"], j["sent"]);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_EQ(j["lost"], 0);
  EXPECT_EQ(j["wrong"], 0);
  std::set<std::string> killed;
  int pauses = 0;
  for (const auto& fault : j["faults"]) {
    if (fault["kind"] == "pause") {
      ++pauses;
      continue;
    }
    killed.insert(fault["role"].get<std::string>());
    EXPECT_FALSE(fault.contains("error")) << fault.dump();
    ASSERT_FALSE(fault["recovery_s"].is_null()) << "no block after " << fault.dump();
    EXPECT_LT(fault["recovery_s"].get<double>(), 30) << fault.dump();
  }
  // Kills at 12, 24, 36 and 48 s: one round of the four roles.
  EXPECT_EQ(killed, (std::set<std::string>{"router", "scheduler", "attention", "expert"}));
  EXPECT_EQ(pauses, 5);  // at 6, 18, 30, 42 and 54 s
  // 500 malformed requests at every port meanwhile: answered, and no process crashed.
  EXPECT_EQ(j["flood"]["sent"], 500);
  EXPECT_TRUE(j["crashed"].empty()) << j["crashed"].dump();
  // Unclear replies (a 5 s deadline missed on a loaded 2-core machine) are reported, not
  // failed on: `dmoe chaos --flood 10000` is the measured run (docs/reliability.md).
  if (!j["flood"]["unclear_examples"].empty()) {
    std::cerr << "unclear flood replies: " << j["flood"]["unclear_examples"].dump(1) << "\n";
  }
}

}  // namespace
