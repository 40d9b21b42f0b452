// What `dmoe generate` says to a new user's mistakes: each message names the actual problem
// (a table of command lines and the error each must print), and none of them crashes.
#include <cstdlib>
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/command.h"
#include "tests/testing/temp_dir.h"

namespace {

using ::testing::HasSubstr;

struct ErrorCase {
  std::string name;
  std::string args;      // after `dmoe`; {model} is the tiny diffusion model, {tmp} a temp dir
  std::string message;   // the whole "error: ..." line must contain this
};

std::string Expand(std::string s, const std::string& model, const std::string& tmp) {
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"{model}", model},
                                   {"{tmp}", tmp}}) {
    for (size_t at = s.find(key); at != std::string::npos; at = s.find(key, at)) {
      s.replace(at, key.size(), value);
    }
  }
  return s;
}

TEST(CliErrorsTest, EachMessageNamesTheActualProblem) {
  const char* bin_dir = std::getenv("DMOE_BIN_DIR");
  if (bin_dir == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
  const std::string model = DMOE_TINY_DIFFUSION_DIR;
  dmoe_testing::TempDir tmp;
  std::filesystem::create_directories(tmp.Join("empty"));
  std::filesystem::create_directories(tmp.Join("dir_config/config.json"));  // unreadable file

  const ErrorCase cases[] = {
      {"missing directory", "generate --model {tmp}/nonexistent --prompt hi",
       "error: model directory {tmp}/nonexistent does not exist"},
      {"a file, not a directory", "generate --model {model}/config.json --prompt hi",
       "error: {model}/config.json is not a directory"},
      {"directory without config.json", "generate --model {tmp}/empty --prompt hi",
       "error: {tmp}/empty has no config.json"},
      {"config.json that cannot be read", "generate --model {tmp}/dir_config --prompt hi",
       "{tmp}/dir_config/config.json"},
      {"empty --prompt", "generate --model {model} --prompt ''", "error: --prompt is empty"},
      {"empty --chat", "generate --model {model} --chat ''", "error: --chat is empty"},
      {"empty --prompt-ids", "generate --model {model} --prompt-ids ''",
       "error: --prompt-ids is empty"},
      {"no prompt", "generate --model {model}",
       "error: give exactly one of --prompt, --chat or --prompt-ids (none given)"},
      {"two prompts", "generate --model {model} --prompt a --chat b",
       "error: give exactly one of --prompt, --chat or --prompt-ids (several given)"},
      // The server's own check and message (engine::CheckFitsContext).
      {"past the context", "generate --model {model} --prompt hi --max-new-tokens 100000000",
       "error: prompt is too long: 1 prompt tokens + max_new_tokens 100000000 exceed the "
       "model's max_position_embeddings 4096"},
      {"bad mode", "generate --model {model} --prompt hi --mode causal",
       "error: --mode must be 'diffusion' or 'ar', got 'causal'"},
      {"bad threshold", "generate --model {model} --prompt hi --threshold 2",
       "error: threshold must be in [0, 1], got 2"},
      {"serve: missing directory", "serve --model {tmp}/nonexistent --listen 127.0.0.1:0",
       "model directory {tmp}/nonexistent does not exist"},
      {"eval: missing task file",
       "eval --model {model} --tasks {tmp}/none.jsonl", "{tmp}/none.jsonl"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
        std::string(bin_dir) + "/dmoe " + Expand(c.args, model, tmp.path()));
    EXPECT_EQ(r.exit_code, 1) << r.err;  // a clean error exit: no crash, no hang
    EXPECT_THAT(r.err, HasSubstr(Expand(c.message, model, tmp.path())));
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

}  // namespace
