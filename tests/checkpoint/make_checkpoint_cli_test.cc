// Runs the dmoe-make-checkpoint binary (DMOE_BIN_DIR is set by dmoe_cc_test).
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "tests/testing/command.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace {

using ::testing::HasSubstr;

using RunResult = ::dmoe_testing::CommandResult;

class MakeCheckpointCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin_dir = std::getenv("DMOE_BIN_DIR");
    if (bin_dir == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
    binary_ = std::string(bin_dir) + "/dmoe-make-checkpoint";
  }

  RunResult Run(const std::string& args) { return dmoe_testing::RunCommand(binary_ + " " + args); }

  dmoe_testing::TempDir tmp_;
  std::string binary_;
};

TEST_F(MakeCheckpointCliTest, WritesTinyWithOverrides) {
  const std::string dir = tmp_.Join("ckpt");
  RunResult r = Run("--out " + dir +
                    " --preset tiny --kind ar --dtype f16 --seed 5 --shards 2 --layers 2 "
                    "--experts 8 --groups 2 --topk-groups 1 --lm-head-std 0.5 --no-tokenizer");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("wrote tiny ar checkpoint to " + dir));
  EXPECT_THAT(r.out, HasSubstr("2 layers"));
  EXPECT_THAT(r.out, HasSubstr("in 2 file(s)"));
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, dmoe::model::Checkpoint::Open(dir));
  EXPECT_EQ(ckpt->config().num_hidden_layers, 2);
  EXPECT_EQ(ckpt->config().num_experts, 8);
  EXPECT_EQ(ckpt->config().kind, dmoe::model::ModelKind::kAutoregressive);
  EXPECT_EQ(ckpt->config().torch_dtype, dmoe::DType::kF16);

  // Idempotent.
  r = Run("--out " + dir + " --preset tiny --kind ar --dtype f16 --seed 5 --layers 2 "
          "--experts 8 --groups 2 --topk-groups 1 --no-tokenizer");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("in 1 file(s)"));
}

TEST_F(MakeCheckpointCliTest, ErrorsExitWithTwo) {
  RunResult r = Run("--out " + tmp_.Join("a") + " --preset huge");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown checkpoint preset 'huge'"));

  r = Run("--preset tiny");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--out"));

  r = Run("--out " + tmp_.Join("b") + " --experts 15");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("n_group"));

  r = Run("--out " + tmp_.Join("c") + " --kind sideways");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--kind"));

  r = Run("--out " + tmp_.Join("d") + " --dtype int8");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--dtype"));

  r = Run("--out " + tmp_.Join("e") + " --layers banana");
  EXPECT_EQ(r.exit_code, 2);

  r = Run("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--preset"));
}

}  // namespace
