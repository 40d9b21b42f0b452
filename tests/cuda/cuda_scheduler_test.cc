// `--device cuda` end to end below the gRPC layer: a Scheduler over the GPU StepExecutor
// (serve::InProcessModel with device "cuda", and serve::CreateCudaStepExecutor with small forward limits so
// steps are split) generates, for several concurrent greedy requests (threshold decoding,
// mixed block lengths, one autoregressive), the same ids as the CPU engine on the tiny F32
// checkpoint. A sampling request is refused at Submit without disturbing the others. Skips
// without a GPU; fails with DMOE_REQUIRE_GPU=1.
#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/weights.h"
#include "serve/cuda_step_executor.h"
#include "serve/in_process_model.h"
#include "scheduler/scheduler.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/scheduler/scheduler_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::scheduler {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::HasSubstr;

using ::dmoe::scheduler_testing::Case;
using ::dmoe::scheduler_testing::GreedyCases;

class CudaSchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    tools::RandomCheckpointSpec spec = dmoe_testing::DecodingSpec(/*seed=*/11);
    spec.dtype = DType::kF32;
    tiny_ = std::make_unique<dmoe_testing::TinyCheckpointDir>(spec);
    ASSERT_TRUE(tiny_->ok()) << tiny_->status();
  }

  // Submits every case from four threads and checks each result against the CPU engine.
  void ExpectBatchedEqualsSolo(StepExecutor& executor, const model::ModelConfig& config,
                               const std::vector<Case>& cases) {
    const std::vector<engine::GenerationResult> solo =
        scheduler_testing::SoloRuns(tiny_->dir(), cases);
    std::atomic<size_t> widest_batch{0};
    auto scheduler = Scheduler::Create(
        {.max_batch_tokens = 4096,
         .step_observer = [&widest_batch](const StepReport& report) {
           widest_batch = std::max(widest_batch.load(), report.scheduled.size());
         }},
        config, executor);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    const scheduler_testing::ConcurrentRun run =
        scheduler_testing::SubmitConcurrently(**scheduler, cases, absl::Seconds(120));
    ASSERT_TRUE(run.finished) << "requests still running after 120 s";
    scheduler_testing::ExpectEqualsSolo(run, solo);
    EXPECT_TRUE((*scheduler)->WaitUntilIdle(absl::Seconds(5)));
    EXPECT_GT(widest_batch.load(), 1u);  // requests really shared device forwards
    scheduler->reset();  // the observer refers to this frame
  }

  std::unique_ptr<dmoe_testing::TinyCheckpointDir> tiny_;
};

TEST_F(CudaSchedulerTest, ConcurrentGreedyRequestsEqualTheCpuEngine) {
  auto model = serve::InProcessModel::Create(
      {.model_dir = tiny_->dir(), .kv_page_tokens = 32, .kv_max_pages = 512, .device = "cuda"});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->device(), "cuda");
  EXPECT_EQ((*model)->step_executor().KvPagesCapacity(), 512);
  ExpectBatchedEqualsSolo((*model)->step_executor(), (*model)->config(), GreedyCases(12));
}

TEST_F(CudaSchedulerTest, StepsSplitIntoSeveralForwardsGiveTheSameIds) {
  auto checkpoint = model::Checkpoint::Open(tiny_->dir());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto weights = model::LoadModelWeights(**checkpoint, {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  // At most 64 rows and 2 sequences per device forward: most steps need several.
  auto executor = serve::CreateCudaStepExecutor(
      (*checkpoint)->config(), *weights,
      {.kv_page_tokens = 16, .kv_max_pages = 512, .max_rows = 64, .max_segments = 2});
  ASSERT_TRUE(executor.ok()) << executor.status();
  ExpectBatchedEqualsSolo(**executor, (*checkpoint)->config(), GreedyCases(8));
}

// Requests that sample or filter get their rows' logits back and the CPU engine's sampler
// (same counter-based RNG): the same tokens as the CPU engine.
TEST_F(CudaSchedulerTest, SamplingRequestsMatchTheCpuEngine) {
  auto model = serve::InProcessModel::Create(
      {.model_dir = tiny_->dir(), .kv_max_pages = 256, .device = "cuda"});
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<Case> cases = GreedyCases(6);
  const std::vector<engine::SamplingParams> sampling = {
      {.temperature = 0.8f, .seed = 3}, {.temperature = 1.0f, .top_k = 20, .seed = 4},
      {.temperature = 0.7f, .top_p = 0.9f, .seed = 5}, {.top_k = 5},
      {.top_p = 0.5f}, {.temperature = 1.2f, .top_k = 50, .top_p = 0.95f, .seed = 6}};
  for (size_t i = 0; i < cases.size(); ++i) cases[i].params.sampling = sampling[i];
  ExpectBatchedEqualsSolo((*model)->step_executor(), (*model)->config(), cases);
}

}  // namespace
}  // namespace dmoe::scheduler
