// `--device cpu|cuda` without a GPU (runs on every machine, in CUDA and CPU-only builds): the
// documented errors of the options, which sampling settings stay on the device, and the real
// binaries ($DMOE_BIN_DIR): `dmoe serve --device cuda` without a GPU
// (or without CUDA in the build) exits non-zero naming --device; `dmoe generate --device cuda
// --top-p 1.5` is refused before any device is touched; `dmoe-attention --device cuda` without a GPU
// and `dmoe-expert --device cuda` without a GPU fail with FAILED_PRECONDITION naming --device.
// `--gpu N` (issue 16): a negative index is refused by every role before anything is loaded; an
// index the process cannot see is FAILED_PRECONDITION naming `--gpu N` at startup.
#include <cstdlib>
#include <string>

#include "attention_service/attention_engine.h"
#include "common/gpu_index.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "serve/embedded_server.h"
#include "serve/cuda_step_executor.h"
#include "serve/in_process_model.h"
#include "tests/testing/command.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tiny_checkpoint.h"
#if DMOE_TEST_CUDA_BUILD
#include "tests/cuda/gpu_test_util.h"
#endif

namespace dmoe::scheduler {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

// True when this build could really run on a GPU of this machine (then "no GPU" errors are
// not what happens, and those cases skip).
bool GpuUsable() {
#if DMOE_TEST_CUDA_BUILD
  std::string why;
  return gpu_testing::GpuAvailable(&why);
#else
  return false;
#endif
}

TEST(DeviceSamplingTest, OnlyPlainGreedyStaysOnTheDevice) {
  // What the fused lm_head reduction computes; everything else is sampled on the host.
  EXPECT_TRUE(engine::SamplingParams{}.IsPlainGreedy());
  EXPECT_TRUE((engine::SamplingParams{.temperature = 0.0f, .seed = 9}.IsPlainGreedy()));
  for (engine::SamplingParams p : {engine::SamplingParams{.temperature = 0.7f},
                                   engine::SamplingParams{.top_k = 5},
                                   engine::SamplingParams{.top_p = 0.9f}}) {
    EXPECT_FALSE(p.IsPlainGreedy());
  }
}

TEST(DeviceOptionsTest, UnknownDeviceIsInvalid) {
  serve::InProcessModelOptions options{.model_dir = "/nonexistent", .device = "tpu"};
  EXPECT_THAT(options.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'cpu' or 'cuda'")));
  serve::EmbeddedServerOptions server;
  server.api.model_dir = "/nonexistent";
  server.device = "tpu";
  EXPECT_THAT(server.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DeviceOptionsTest, CudaExecutorOptionsNameTheField) {
  EXPECT_THAT(serve::CudaStepExecutorOptions{.max_rows = 0}.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_rows")));
}

TEST(DeviceOptionsTest, InProcessCudaWithoutGpuIsFailedPrecondition) {
  if (GpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  tools::RandomCheckpointSpec spec = dmoe_testing::TinySpec();
  spec.tokenizer_dir = "";
  dmoe_testing::TinyCheckpointDir tiny(spec);
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  auto model =
      serve::InProcessModel::Create({.model_dir = tiny.dir(), .kv_max_pages = 8, .device = "cuda"});
#if DMOE_TEST_CUDA_BUILD
  EXPECT_THAT(model.status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                       HasSubstr("--device cuda: cannot use GPU 0")));
#else
  EXPECT_THAT(model.status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--device cuda"), HasSubstr("DMOE_ENABLE_CUDA=OFF"))));
#endif
}

TEST(GpuFlagTest, NegativeIndexIsInvalidArgument) {
  EXPECT_THAT(ValidateGpuFlag(-1),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("--gpu"), HasSubstr(">= 0"), HasSubstr("got -1"))));
  DMOE_EXPECT_OK(ValidateGpuFlag(0));
  DMOE_EXPECT_OK(ValidateGpuFlag(7));  // not checked against the devices until one is opened
}

TEST(GpuFlagTest, IndexBeyondTheVisibleDevicesIsFailedPrecondition) {
  DMOE_EXPECT_OK(CheckGpuIndex(0, 1));
  DMOE_EXPECT_OK(CheckGpuIndex(1, 2));
  EXPECT_THAT(CheckGpuIndex(2, 2),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--gpu 2"), HasSubstr("can see 2 CUDA device(s)"),
                             HasSubstr("CUDA_VISIBLE_DEVICES"))));
  EXPECT_THAT(CheckGpuIndex(-3, 2), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(GpuFlagTest, EveryRolesOptionsRefuseANegativeIndex) {
  serve::InProcessModelOptions in_process{.model_dir = "/m", .device = "cuda", .cuda_device = -1};
  EXPECT_THAT(in_process.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gpu")));
  serve::EmbeddedServerOptions server;
  server.api.model_dir = "/m";
  server.device = "cuda";
  server.cuda_device = -2;
  EXPECT_THAT(server.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gpu")));
  attention::AttentionEngineOptions attention;
  attention.device = "cuda";
  attention.cuda_device = -1;
  EXPECT_THAT(attention.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--gpu")));
}

TEST(GpuFlagTest, InProcessCudaOnAnInvisibleGpuNamesTheFlag) {
  if (GpuUsable()) GTEST_SKIP() << "a GPU is usable here (the index check is CheckGpuIndex's)";
  tools::RandomCheckpointSpec spec = dmoe_testing::TinySpec();
  spec.tokenizer_dir = "";
  dmoe_testing::TinyCheckpointDir tiny(spec);
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  auto model = serve::InProcessModel::Create(
      {.model_dir = tiny.dir(), .kv_max_pages = 8, .device = "cuda", .cuda_device = 5});
  EXPECT_THAT(model.status(), StatusIs(absl::StatusCode::kFailedPrecondition));
#if DMOE_TEST_CUDA_BUILD
  EXPECT_THAT(model.status().message(), HasSubstr("cannot use GPU 5 (--gpu 5)"));
#endif
}

// Runs `command`; returns the exit code (-1: not exited) with stdout then stderr in `output`.
int RunBinary(const std::string& command, std::string* output) {
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(command);
  *output = r.out + r.err;
  return r.exit_code;
}

class DeviceFlagBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin_dir = std::getenv("DMOE_BIN_DIR");
    if (bin_dir == nullptr) GTEST_SKIP() << "DMOE_BIN_DIR is not set";
    bin_ = bin_dir;
    tools::RandomCheckpointSpec spec = dmoe_testing::TinySpec();
    spec.tokenizer_dir = "";
    tiny_ = std::make_unique<dmoe_testing::TinyCheckpointDir>(spec);
    ASSERT_TRUE(tiny_->ok()) << tiny_->status();
  }
  std::string bin_;
  std::unique_ptr<dmoe_testing::TinyCheckpointDir> tiny_;
};

TEST_F(DeviceFlagBinaryTest, ServeCudaWithoutGpuExitsNamingDevice) {
  if (GpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  std::string output;
  const int code = RunBinary(bin_ + "/dmoe serve --model " + tiny_->dir() +
                                 " --mask-id 4000 --kv-pages 8 --device cuda",
                             &output);
  EXPECT_NE(code, 0) << output;
  EXPECT_THAT(output, HasSubstr("--device cuda")) << output;
}

TEST_F(DeviceFlagBinaryTest, ServeRejectsUnknownDevice) {
  std::string output;
  EXPECT_NE(RunBinary(bin_ + "/dmoe serve --model " + tiny_->dir() + " --device tpu", &output), 0);
  EXPECT_THAT(output, HasSubstr("--device")) << output;
}

TEST_F(DeviceFlagBinaryTest, GenerateCudaRefusesBadParametersBeforeTheDevice) {
  // Refused whether or not a GPU (or CUDA) exists: the check comes first.
  std::string output;
  const int code = RunBinary(bin_ + "/dmoe generate --model " + tiny_->dir() +
                                 " --prompt-ids 1,2,3 --mask-id 4000 --max-new-tokens 8"
                                 " --device cuda --top-p 1.5",
                             &output);
  EXPECT_NE(code, 0) << output;
  EXPECT_THAT(output, HasSubstr("top_p must be in (0, 1]")) << output;
  EXPECT_THAT(output, ::testing::Not(HasSubstr("cannot use GPU"))) << output;
}

TEST_F(DeviceFlagBinaryTest, GenerateCudaWithoutGpuExitsNamingDevice) {
  if (GpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  std::string output;
  const int code = RunBinary(bin_ + "/dmoe generate --model " + tiny_->dir() +
                                 " --prompt-ids 1,2,3 --mask-id 4000 --max-new-tokens 8"
                                 " --device cuda",
                             &output);
  EXPECT_NE(code, 0) << output;
  EXPECT_THAT(output, HasSubstr("--device cuda")) << output;
}

TEST_F(DeviceFlagBinaryTest, AttentionCudaWithoutGpuExitsNamingDevice) {
  // With a usable GPU the replica would start serving; that path is cuda_attention_test's.
  if (GpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  std::string output;
  EXPECT_EQ(RunBinary(bin_ + "/dmoe-attention --model " + tiny_->dir() +
                          " --scheduler 127.0.0.1:1 --device cuda",
                      &output),
            2);
  EXPECT_THAT(output, AllOf(HasSubstr("FAILED_PRECONDITION"), HasSubstr("--device cuda")))
      << output;
}

TEST_F(DeviceFlagBinaryTest, ExpertCudaWithoutGpuExitsNamingDevice) {
  // With a usable GPU the shard would start serving; that path is cuda_expert_test's.
  if (GpuUsable()) GTEST_SKIP() << "a GPU is usable here";
  std::string output;
  EXPECT_EQ(RunBinary(bin_ + "/dmoe-expert --model " + tiny_->dir() + " --device cuda", &output),
            2);
  EXPECT_THAT(output, AllOf(HasSubstr("FAILED_PRECONDITION"), HasSubstr("--device cuda")))
      << output;
}

TEST_F(DeviceFlagBinaryTest, EveryRoleRefusesANegativeGpu) {
  const std::string model = " --model " + tiny_->dir();
  for (const std::string& command :
       {bin_ + "/dmoe-attention" + model + " --scheduler 127.0.0.1:1 --device cuda --gpu -1",
        bin_ + "/dmoe-expert" + model + " --device cuda --gpu -1",
        bin_ + "/dmoe serve" + model + " --mask-id 4000 --kv-pages 8 --device cuda --gpu -1",
        bin_ + "/dmoe generate" + model +
            " --prompt-ids 1,2,3 --mask-id 4000 --max-new-tokens 8 --device cuda --gpu -1"}) {
    std::string output;
    EXPECT_NE(RunBinary(command, &output), 0) << command << "\n" << output;
    EXPECT_THAT(output, AllOf(HasSubstr("--gpu"), HasSubstr(">= 0"))) << command << "\n" << output;
    EXPECT_THAT(output, ::testing::Not(HasSubstr("cannot use GPU"))) << output;
  }
}

TEST_F(DeviceFlagBinaryTest, ExpertOnAGpuItCannotSeeNamesTheFlag) {
  // Without a GPU the device is unusable; with fewer than 64 it does not exist. Either way the
  // startup error names --gpu 63 and the pod exits 2.
  std::string output;
  EXPECT_EQ(RunBinary(bin_ + "/dmoe-expert --model " + tiny_->dir() + " --device cuda --gpu 63",
                      &output),
            2);
#if DMOE_TEST_CUDA_BUILD
  EXPECT_THAT(output, AllOf(HasSubstr("FAILED_PRECONDITION"), HasSubstr("--gpu 63"))) << output;
#else
  EXPECT_THAT(output, AllOf(HasSubstr("FAILED_PRECONDITION"), HasSubstr("--device cuda")))
      << output;
#endif
}

TEST_F(DeviceFlagBinaryTest, ExpertTransportNcclIsCheckedAtStartup) {
  // Whether or not a GPU exists: nccl with --device cpu, or without a scheduler, exits 2 naming
  // the flags; an unknown transport is a usage error.
  const std::string model = " --model " + tiny_->dir();
  std::string output;
  EXPECT_EQ(RunBinary(bin_ + "/dmoe-attention" + model +
                          " --scheduler 127.0.0.1:1 --expert-transport nccl",
                      &output),
            2);
  EXPECT_THAT(output, AllOf(HasSubstr("INVALID_ARGUMENT"), HasSubstr("--expert-transport nccl"),
                            HasSubstr("--device cuda")))
      << output;
  EXPECT_EQ(RunBinary(bin_ + "/dmoe-expert" + model + " --expert-transport nccl --device cuda",
                      &output),
            2);
  EXPECT_THAT(output, AllOf(HasSubstr("INVALID_ARGUMENT"), HasSubstr("--scheduler"))) << output;
  EXPECT_NE(RunBinary(bin_ + "/dmoe-expert" + model + " --expert-transport tcp", &output), 0);
  EXPECT_THAT(output, HasSubstr("--expert-transport")) << output;
}

}  // namespace
}  // namespace dmoe::scheduler
