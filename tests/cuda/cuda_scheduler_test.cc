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
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/weights.h"
#include "serve/cuda_step_executor.h"
#include "serve/in_process_model.h"
#include "scheduler/scheduler.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::scheduler {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::HasSubstr;

constexpr int32_t kMask = 4000;
constexpr int32_t kStop = 4001;

std::vector<int32_t> Prompt(int64_t length, int32_t salt) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < length; ++i) {
    p.push_back(static_cast<int32_t>((i * 37 + salt * 101 + 5) % 3900));
  }
  return p;
}

struct Case {
  std::vector<int32_t> prompt;
  engine::GenerationParams params;
};

// Greedy: thresholds 0 .. 0.95, block lengths 32 / 8 / 4 / 16, one AR request.
std::vector<Case> GreedyCases(int n) {
  std::vector<Case> cases;
  for (int i = 0; i < n; ++i) {
    engine::GenerationParams p;
    p.mask_id = kMask;
    p.stop_ids = {kStop};
    p.threshold = std::vector<float>{0.0f, 0.5f, 0.9f, 0.95f}[i % 4];
    p.block_length = std::vector<int64_t>{32, 8, 4, 16}[i % 4];
    p.max_new_tokens = 10 + 7 * (i % 5);
    if (i % 5 == 3) p.mode = engine::DecodeMode::kAutoregressive;
    cases.push_back({Prompt(3 + (i * 11) % 40, i), p});
  }
  return cases;
}

class CudaSchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    tools::RandomCheckpointSpec spec = dmoe_testing::TinySpec();
    spec.tokenizer_dir = "";
    spec.seed = 11;
    spec.lm_head_std = 0.6;  // confidences spread over (0, 1): thresholds matter
    spec.dtype = DType::kF32;
    tiny_ = std::make_unique<dmoe_testing::TinyCheckpointDir>(spec);
    ASSERT_TRUE(tiny_->ok()) << tiny_->status();
  }

  std::vector<engine::GenerationResult> Solo(const std::vector<Case>& cases) {
    auto engine = engine::Engine::Create({.model_dir = tiny_->dir(), .num_threads = 2});
    EXPECT_TRUE(engine.ok()) << engine.status();
    std::vector<engine::GenerationResult> out;
    for (const Case& c : cases) {
      auto r = (*engine)->Generate({{c.prompt, c.params}});
      EXPECT_TRUE(r.ok()) << r.status();
      out.push_back((*r)[0]);
    }
    return out;
  }

  // Submits every case from four threads and checks each result against the CPU engine.
  void RunConcurrently(StepExecutor& executor, const model::ModelConfig& config,
                       const std::vector<Case>& cases) {
    const std::vector<engine::GenerationResult> solo = Solo(cases);
    std::atomic<size_t> widest_batch{0};
    auto scheduler = Scheduler::Create(
        {.max_batch_tokens = 4096,
         .step_observer = [&widest_batch](const StepReport& report) {
           widest_batch = std::max(widest_batch.load(), report.scheduled.size());
         }},
        config, executor);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    absl::Mutex mu;
    std::vector<absl::StatusOr<RequestResult>> results(cases.size(),
                                                       absl::UnknownError("not finished"));
    int remaining = static_cast<int>(cases.size());
    std::vector<std::thread> submitters;
    for (int t = 0; t < 4; ++t) {
      submitters.emplace_back([&, t] {
        for (size_t i = t; i < cases.size(); i += 4) {
          SchedulerRequest request{.request_id = absl::StrCat("r", i),
                                   .prompt = cases[i].prompt,
                                   .params = cases[i].params};
          request.callbacks.on_done = [&, i](absl::StatusOr<RequestResult> r) {
            absl::MutexLock lock(&mu);
            results[i] = std::move(r);
            --remaining;
          };
          EXPECT_THAT((*scheduler)->Submit(std::move(request)), dmoe_testing::IsOk());
          absl::SleepFor(absl::Milliseconds(1 + (i % 3)));
        }
      });
    }
    for (auto& t : submitters) t.join();
    {
      absl::MutexLock lock(&mu);
      ASSERT_TRUE(mu.AwaitWithTimeout(
          absl::Condition(+[](int* r) { return *r == 0; }, &remaining), absl::Seconds(120)));
    }
    for (size_t i = 0; i < cases.size(); ++i) {
      ASSERT_THAT(results[i], dmoe_testing::IsOk()) << "request " << i;
      EXPECT_EQ(results[i]->ids, solo[i].ids) << "request " << i;
      EXPECT_EQ(results[i]->forwards, solo[i].forwards) << "request " << i;
      EXPECT_EQ(results[i]->finish_reason, solo[i].finish_reason) << "request " << i;
    }
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
  RunConcurrently((*model)->step_executor(), (*model)->config(), GreedyCases(12));
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
  RunConcurrently(**executor, (*checkpoint)->config(), GreedyCases(8));
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
  RunConcurrently((*model)->step_executor(), (*model)->config(), cases);
}

}  // namespace
}  // namespace dmoe::scheduler
