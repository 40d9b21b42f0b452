// Integration: the real `dmoe serve` binary on 127.0.0.1:0 and the real `dmoe client
// generate --json` against it print the same result as `dmoe generate --json` on the same
// tiny checkpoint (made with dmoe-make-checkpoint). Binaries come from $DMOE_BIN_DIR. Every
// child process is killed on the way out, whatever the test's outcome.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/child_process.h"
#include "tests/testing/temp_dir.h"

namespace {

std::string BinDir() {
  const char* dir = std::getenv("DMOE_BIN_DIR");
  return dir ? dir : "";
}

using dmoe_testing::Child;
using dmoe_testing::RunArgv;

TEST(ServeIntegrationTest, ClientGenerateThroughServeEqualsGenerate) {
  const std::string bin = BinDir();
  ASSERT_FALSE(bin.empty()) << "DMOE_BIN_DIR is not set";
  const std::string dmoe = bin + "/dmoe";
  dmoe_testing::TempDir tmp;
  const std::string model = tmp.Join("tiny");
  auto [make_code, make_out] =
      RunArgv({bin + "/dmoe-make-checkpoint", "--preset", "tiny", "--out", model});
  ASSERT_EQ(make_code, 0) << make_out;

  // Without a tokenizer the decoding ids come from flags, the same for both commands.
  const bool tokenizer = std::filesystem::exists(model + "/tokenizer.json");
  std::vector<std::string> ids_flags;
  if (!tokenizer) ids_flags = {"--mask-id", "4000", "--stop-ids", "4001"};

  std::vector<std::string> serve = {dmoe, "serve", "--model", model, "--listen", "127.0.0.1:0",
                                    "--threads", "1"};
  serve.insert(serve.end(), ids_flags.begin(), ids_flags.end());
  Child server(serve);
  ASSERT_TRUE(server.started());
  const std::string ready = server.ReadLine(absl::Seconds(60));
  ASSERT_THAT(ready, ::testing::StartsWith("listening on 127.0.0.1:"));
  const std::string address = ready.substr(std::string("listening on ").size());

  struct Case {
    std::vector<std::string> flags;
  };
  std::vector<Case> cases = {
      {{"--prompt-ids", "11,22,33,44,55,66,77", "--max-new-tokens", "40"}},
      {{"--prompt-ids", "5,6,7", "--max-new-tokens", "24", "--block-length", "8", "--threshold",
        "0.5", "--temperature", "0.8", "--top-k", "20", "--seed", "7"}},
      // LLaDA2.1 token editing: explicit knobs (edits happen at edit threshold 0) and a preset.
      {{"--prompt-ids", "11,22,33,44,55,66,77", "--max-new-tokens", "40", "--threshold", "0.5",
        "--edit-threshold", "0", "--max-post-steps", "4"}},
      {{"--prompt-ids", "5,6,7", "--max-new-tokens", "24", "--block-length", "8", "--editing",
        "quality"}},
  };
  if (tokenizer) cases.push_back({{"--chat", "Hello there", "--max-new-tokens", "32"}});
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.flags, " "));
    std::vector<std::string> local = {dmoe, "generate", "--model", model, "--json", "--threads", "1"};
    local.insert(local.end(), c.flags.begin(), c.flags.end());
    if (!tokenizer) local.insert(local.end(), ids_flags.begin(), ids_flags.end());
    auto [local_code, local_out] = RunArgv(local);
    ASSERT_EQ(local_code, 0) << local_out;
    const nlohmann::json expected = nlohmann::json::parse(local_out);
    if (absl::StrContains(absl::StrJoin(c.flags, " "), "--edit-threshold 0")) {
      EXPECT_GT(expected.at("edits").get<int64_t>(), 0);  // not vacuous: tokens were edited
    }

    for (bool stream : {false, true}) {
      std::vector<std::string> remote = {dmoe, "client", "generate", "--router", address, "--json"};
      if (stream) remote.push_back("--stream");
      remote.insert(remote.end(), c.flags.begin(), c.flags.end());
      auto [remote_code, remote_out] = RunArgv(remote);
      ASSERT_EQ(remote_code, 0) << remote_out;
      const nlohmann::json got = nlohmann::json::parse(remote_out);
      for (const char* field : {"ids", "text", "forwards", "tokens_per_forward", "edits",
                                "finish_reason", "prompt_tokens"}) {
        EXPECT_EQ(got.at(field), expected.at(field)) << field << (stream ? " (stream)" : "");
      }
      EXPECT_TRUE(got.contains("seconds"));
    }
  }

  // A bad request is a clean error (exit 1), and the server lives on.
  auto [bad_code, bad_out] =
      RunArgv({dmoe, "client", "generate", "--router", address, "--prompt-ids", "1", "--top-p", "2"});
  EXPECT_EQ(bad_code, 1);
  auto [models_code, models_out] = RunArgv({dmoe, "client", "models", "--router", address});
  EXPECT_EQ(models_code, 0);
  EXPECT_THAT(models_out, ::testing::HasSubstr("\"name\": \"tiny\""));

  EXPECT_EQ(server.SignalAndWait(SIGTERM, absl::Seconds(30)), 0) << "dmoe serve did not drain";
}

}  // namespace
