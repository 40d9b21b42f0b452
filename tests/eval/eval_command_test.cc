// Runs `dmoe eval` (DMOE_BIN_DIR is set by dmoe_cc_test) on a tiny random checkpoint: answers
// are taken from `dmoe generate` with the same settings, so which samples are correct is known
// exactly; checks the per-task and overall figures and the JSON fields.
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

using RunResult = ::dmoe_testing::CommandResult;

class EvalCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin_dir = std::getenv("DMOE_BIN_DIR");
    if (bin_dir == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
    binary_ = std::string(bin_dir) + "/dmoe";
    ASSERT_TRUE(tiny_.ok()) << tiny_.status();
  }

  RunResult Run(const std::string& args) { return dmoe_testing::RunCommand(binary_ + " " + args); }

  Json RunJson(const std::string& args) {
    RunResult r = Run(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
    Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  // What `dmoe generate` writes for this prompt flag (e.g. "--chat 'hi'").
  std::string Generated(const std::string& prompt_flag, const std::string& extra = "") {
    Json j = RunJson("generate --model " + tiny_.dir() + " " + prompt_flag +
                     " --max-new-tokens 8 --json " + extra);
    return j.value("text", "");
  }

  std::string WriteTasks(const Json& rows) {
    std::string text;
    for (const Json& r : rows) text += r.dump() + "\n";
    const std::string path = tmp_.Join("tasks.jsonl");
    dmoe_testing::WriteFileOrDie(path, text);
    return path;
  }

  dmoe_testing::TinyCheckpointDir tiny_;
  dmoe_testing::TempDir tmp_;
  std::string binary_;
};

TEST_F(EvalCommandTest, ExactMatchPerTaskAndOverall) {
  const std::string chat = Generated("--chat 'hello there'");
  const std::string raw = Generated("--prompt 'The quick brown fox'");
  const std::string tasks = WriteTasks(Json::array({
      // Surrounding whitespace does not count.
      {{"task", "alpha"}, {"chat", "hello there"}, {"answer", "  " + chat + "\n"}},
      {{"task", "alpha"}, {"chat", "hello there"}, {"answer", chat + " and more"}},
      {{"task", "beta"}, {"prompt", "The quick brown fox"}, {"answer", raw}},
      // A message list renders like "chat".
      {{"task", "beta"},
       {"prompt", Json::array({{{"role", "user"}, {"content", "hello there"}}})},
       {"answer", chat}},
      // No "task": the default task.
      {{"chat", "hello there"}, {"answer", "certainly not this"}},
  }));
  Json j = RunJson("eval --model " + tiny_.dir() + " --tasks " + tasks +
                   " --max-new-tokens 8 --json");
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["mode"], "diffusion");
  EXPECT_FLOAT_EQ(j["threshold"].get<float>(), 0.95f);
  EXPECT_EQ(j["block_length"], 32);
  EXPECT_EQ(j["max_new_tokens"], 8);
  ASSERT_TRUE(j["tasks"].contains("alpha"));
  ASSERT_TRUE(j["tasks"].contains("beta"));
  ASSERT_TRUE(j["tasks"].contains("default"));
  EXPECT_EQ(j["tasks"]["alpha"]["n"], 2);
  EXPECT_EQ(j["tasks"]["alpha"]["correct"], 1);
  EXPECT_DOUBLE_EQ(j["tasks"]["alpha"]["accuracy"].get<double>(), 0.5);
  EXPECT_EQ(j["tasks"]["beta"]["correct"], 2);
  EXPECT_EQ(j["tasks"]["default"]["correct"], 0);
  EXPECT_EQ(j["overall"]["n"], 5);
  EXPECT_EQ(j["overall"]["correct"], 3);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.6);
  EXPECT_NEAR(j["mean_task_accuracy"].get<double>(), (0.5 + 1.0 + 0.0) / 3, 1e-12);

  // TPF = generated tokens / forwards, summed over samples.
  int64_t tokens = 0, forwards = 0;
  for (const auto& [name, t] : j["tasks"].items()) {
    tokens += t["tokens"].get<int64_t>();
    forwards += t["forwards"].get<int64_t>();
    for (const char* key : {"tokens_per_forward", "seconds", "tokens_per_second"}) {
      EXPECT_TRUE(t.contains(key)) << name << " lacks " << key;
    }
  }
  EXPECT_EQ(j["forwards"], forwards);
  EXPECT_EQ(j["overall"]["tokens"], tokens);
  ASSERT_GT(forwards, 0);
  EXPECT_DOUBLE_EQ(j["tokens_per_forward"].get<double>(),
                   static_cast<double>(tokens) / static_cast<double>(forwards));
  EXPECT_GT(j["tokens_per_second"].get<double>(), 0.0);

  // Batching changes neither outputs nor forward counts (the engine is batch-invariant).
  Json batched = RunJson("eval --model " + tiny_.dir() + " --tasks " + tasks +
                         " --max-new-tokens 8 --batch 3 --json");
  EXPECT_EQ(batched["overall"]["correct"], 3);
  EXPECT_EQ(batched["forwards"], forwards);
}

TEST_F(EvalCommandTest, AutoregressiveModeIsOneTokenPerForward) {
  const std::string ar = Generated("--chat 'hello there'", "--mode ar");
  const std::string tasks = WriteTasks(Json::array({
      {{"task", "t"}, {"chat", "hello there"}, {"answer", ar}},
      {{"task", "t"}, {"chat", "something else"}, {"answer", "no"}},
  }));
  Json j = RunJson("eval --model " + tiny_.dir() + " --tasks " + tasks +
                   " --max-new-tokens 8 --mode ar --json");
  EXPECT_EQ(j["mode"], "ar");
  EXPECT_TRUE(j["threshold"].is_null());
  EXPECT_EQ(j["tasks"]["t"]["correct"], 1);
  EXPECT_EQ(j["forwards"], j["overall"]["tokens"]);
  EXPECT_DOUBLE_EQ(j["tokens_per_forward"].get<double>(), 1.0);
}

TEST_F(EvalCommandTest, EditingPresetsReportEdits) {
  const std::string tasks = WriteTasks(Json::array({
      {{"task", "a"}, {"chat", "one"}, {"answer", "x"}},
      {{"task", "b"}, {"chat", "two"}, {"answer", "x"}},
  }));
  const std::string common = "eval --model " + tiny_.dir() + " --tasks " + tasks +
                             " --max-new-tokens 8 --json";
  Json off = RunJson(common + " --editing off");
  EXPECT_TRUE(off["edit_threshold"].is_null());
  EXPECT_TRUE(off["max_post_steps"].is_null());
  EXPECT_EQ(off["edits"], 0);
  EXPECT_EQ(off["remasks"], 0);

  // The model card's speed mode: threshold 0.5, edit threshold 0, 16 post steps.
  Json speed = RunJson(common + " --editing speed");
  EXPECT_FLOAT_EQ(speed["threshold"].get<float>(), 0.5f);
  EXPECT_FLOAT_EQ(speed["edit_threshold"].get<float>(), 0.0f);
  EXPECT_EQ(speed["max_post_steps"], 16);
  int64_t edits = 0, remasks = 0;
  for (const auto& [name, t] : speed["tasks"].items()) {
    edits += t["edits"].get<int64_t>();
    remasks += t["remasks"].get<int64_t>();
  }
  EXPECT_EQ(speed["edits"], edits);
  EXPECT_EQ(speed["remasks"], remasks);
  EXPECT_LE(remasks, edits);

  // Explicit flags override the preset.
  Json q = RunJson(common + " --editing quality --edit-threshold 1 --max-post-steps 2");
  EXPECT_FLOAT_EQ(q["threshold"].get<float>(), 0.7f);
  EXPECT_FLOAT_EQ(q["edit_threshold"].get<float>(), 1.0f);
  EXPECT_EQ(q["max_post_steps"], 2);
  EXPECT_EQ(q["edits"], 0);  // confidence > 1 never happens

  RunResult table = Run("eval --model " + tiny_.dir() + " --tasks " + tasks +
                        " --max-new-tokens 8 --editing speed");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("edit threshold 0.00"));
  EXPECT_THAT(table.out, HasSubstr("edits"));
}

// The committed T2T model (tools/train/run_t2t.sh, docs/training.md "Token editing") keeps its
// accuracy under the editing presets, while the LLaDA2.0-style model it started from, never
// trained at visible positions, rewrites its answers into nonsense. Coarse bounds, not the
// measured figures, so a numerics change in the kernels does not break this.
TEST_F(EvalCommandTest, CommittedT2TModelEditsSafelyUnlikeItsLLaDA20Parent) {
  const std::string models = DMOE_MODELS_DIR;
  const std::string t2t = models + "/tiny-diffusion-t2t";
  const std::string common = " --tasks " + t2t + "/eval_tasks.jsonl --limit 4 --threads 1 --json";
  Json t2t_off = RunJson("eval --model " + t2t + common + " --editing off --threshold 0.5");
  Json t2t_speed = RunJson("eval --model " + t2t + common + " --editing speed");
  Json base_speed = RunJson("eval --model " + models + "/tiny-diffusion" + common +
                            " --editing speed");
  ASSERT_TRUE(t2t_off.is_object() && t2t_speed.is_object() && base_speed.is_object());
  EXPECT_GE(t2t_speed["accuracy"].get<double>(), 0.5);
  EXPECT_GE(t2t_speed["accuracy"].get<double>(), t2t_off["accuracy"].get<double>() - 0.1);
  EXPECT_LE(t2t_speed["edits"].get<int64_t>(), 10);
  EXPECT_GT(base_speed["edits"].get<int64_t>(), 100);
  EXPECT_LT(base_speed["accuracy"].get<double>(), t2t_speed["accuracy"].get<double>() - 0.3);
}

TEST_F(EvalCommandTest, LimitSamplesAndTable) {
  const std::string tasks = WriteTasks(Json::array({
      {{"task", "a"}, {"chat", "one"}, {"answer", "x"}},
      {{"task", "a"}, {"chat", "two"}, {"answer", "x"}},
      {{"task", "b"}, {"chat", "three"}, {"answer", "x"}},
  }));
  const std::string samples = tmp_.Join("samples.jsonl");
  RunResult r = Run("eval --model " + tiny_.dir() + " --tasks " + tasks +
                    " --max-new-tokens 8 --limit 1 --samples " + samples);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("accuracy"));
  EXPECT_THAT(r.out, HasSubstr("TPF"));
  EXPECT_THAT(r.out, HasSubstr("all"));
  const std::string lines = dmoe_testing::ReadFileOrDie(samples);
  int n = 0;
  for (char c : lines) n += c == '\n';
  EXPECT_EQ(n, 2);  // one sample of each task
  Json first = Json::parse(lines.substr(0, lines.find('\n')));
  for (const char* key : {"task", "answer", "output", "correct", "tokens", "forwards"}) {
    EXPECT_TRUE(first.contains(key)) << key;
  }
}

TEST_F(EvalCommandTest, BadTaskFilesNameTheLine) {
  const std::string path = tmp_.Join("bad.jsonl");
  dmoe_testing::WriteFileOrDie(path, "{\"task\": \"a\", \"chat\": \"hi\", \"answer\": \"x\"}\n"
                                     "{\"task\": \"a\", \"chat\": \"hi\"}\n");
  RunResult r = Run("eval --model " + tiny_.dir() + " --tasks " + path);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("bad.jsonl:2"));
  EXPECT_THAT(r.err, HasSubstr("answer"));

  dmoe_testing::WriteFileOrDie(path, "{\"chat\": \"hi\", \"prompt\": \"hi\", \"answer\": \"x\"}\n");
  r = Run("eval --model " + tiny_.dir() + " --tasks " + path);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("exactly one of"));

  r = Run("eval --model " + tiny_.dir() + " --tasks " + tmp_.Join("missing.jsonl"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("missing.jsonl"));
}

}  // namespace
