// Scheduler unit tests on a tiny random checkpoint (no gRPC). Most drive the scheduler by hand
// (start_step_thread = false) so steps are exact: iteration tables in the style of
// TensorRT-LLM's capacitySchedulerTest list, step by step, which requests join, run and leave.
// Iteration tables use decoding whose length does not depend on the random model's outputs
// (no stop tokens; autoregressive, or diffusion with threshold 1 = one token per forward).
#include "scheduler/scheduler.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/endpoint.h"
#include "prometheus/registry.h"
#include "serve/in_process_model.h"
#include "scheduler/request_journal.h"
#include "scheduler/scheduler_metrics.h"
#include "tests/scheduler/scheduler_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::scheduler {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

using scheduler_testing::kMask;
using scheduler_testing::Prompt;

constexpr int64_t kMaxPositions = 1024;

engine::GenerationParams Ar(int64_t max_new) {
  engine::GenerationParams p;
  p.mode = engine::DecodeMode::kAutoregressive;
  p.max_new_tokens = max_new;
  p.mask_id = kMask;
  return p;
}

// One token per forward: nothing is above threshold 1, so each step commits its quota of 1.
engine::GenerationParams OnePerStep(int64_t block, int64_t max_new) {
  engine::GenerationParams p;
  p.threshold = 1.0f;
  p.block_length = block;
  p.steps = block;
  p.max_new_tokens = max_new;
  p.mask_id = kMask;
  return p;
}

// What the callbacks of one request saw.
struct Outcome {
  std::vector<int32_t> streamed;
  std::vector<int64_t> offsets;
  std::vector<float> logprobs;
  std::optional<size_t> stop_at_streamed;  // on_tokens ends the request after this many ids
  int canvas_events = 0;
  bool done = false;
  absl::StatusOr<RequestResult> result = absl::UnknownError("not finished");
};

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tools::RandomCheckpointSpec spec = dmoe_testing::DecodingSpec(/*seed=*/11);
    spec.max_position_embeddings = kMaxPositions;
    checkpoint_ = new dmoe_testing::TinyCheckpointDir(spec);
  }
  static void TearDownTestSuite() {
    delete checkpoint_;
    checkpoint_ = nullptr;
  }

  // A fresh model with its own KV pool, and a scheduler over it.
  void Init(SchedulerOptions options, int64_t page_tokens = 32, int64_t max_pages = 1024) {
    ASSERT_TRUE(checkpoint_->ok()) << checkpoint_->status();
    scheduler_.reset();
    DMOE_ASSERT_OK_AND_ASSIGN(model_, serve::InProcessModel::Create({.model_dir = checkpoint_->dir(),
                                                              .num_threads = 2,
                                                              .kv_page_tokens = page_tokens,
                                                              .kv_max_pages = max_pages}));
    if (!options.clock) options.clock = [this] { return now_; };
    options.kv_page_tokens = page_tokens;
    DMOE_ASSERT_OK_AND_ASSIGN(scheduler_,
                              Scheduler::Create(options, model_->config(), model_->step_executor()));
  }

  static SchedulerOptions Manual(int64_t max_batch_tokens = 4096) {
    return {.max_batch_tokens = max_batch_tokens, .start_step_thread = false};
  }

  // Submits a request whose callbacks record into outcomes_[name].
  absl::StatusOr<RequestHandle> Submit(const std::string& name, std::vector<int32_t> prompt,
                                       const engine::GenerationParams& params,
                                       absl::Time deadline = absl::InfiniteFuture(),
                                       bool canvas = false) {
    Outcome* o = &outcomes_[name];
    SchedulerRequest request{.request_id = name,
                             .prompt = std::move(prompt),
                             .params = params,
                             .deadline = deadline};
    request.callbacks.on_tokens = [o](const CommittedTokens& t) -> KeepIds {
      o->offsets.push_back(t.offset);
      o->streamed.insert(o->streamed.end(), t.ids.begin(), t.ids.end());
      o->logprobs.insert(o->logprobs.end(), t.logprobs.begin(), t.logprobs.end());
      if (o->stop_at_streamed && o->streamed.size() >= *o->stop_at_streamed) {
        return t.ids.size() - (o->streamed.size() - *o->stop_at_streamed);
      }
      return std::nullopt;
    };
    if (canvas) request.callbacks.on_step = [o](const CanvasSnapshot&) { ++o->canvas_events; };
    request.callbacks.on_done = [o](absl::StatusOr<RequestResult> r) {
      EXPECT_FALSE(o->done) << "on_done called twice";
      o->done = true;
      o->result = std::move(r);
    };
    absl::StatusOr<RequestHandle> handle = scheduler_->Submit(std::move(request));
    if (handle.ok()) names_[*handle] = name;
    return handle;
  }

  std::vector<std::string> Names(const std::vector<RequestHandle>& handles) {
    std::vector<std::string> out;
    for (RequestHandle h : handles) out.push_back(names_[h]);
    return out;
  }

  static dmoe_testing::TinyCheckpointDir* checkpoint_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
  std::unique_ptr<serve::InProcessModel> model_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::string, Outcome> outcomes_;
  std::map<RequestHandle, std::string> names_;
};

dmoe_testing::TinyCheckpointDir* SchedulerTest::checkpoint_ = nullptr;

TEST_F(SchedulerTest, OptionsValidateNamesTheField) {
  EXPECT_THAT(SchedulerOptions{}.Validate(), dmoe_testing::IsOk());
  EXPECT_THAT((SchedulerOptions{.max_batch_tokens = 0}.Validate()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_batch_tokens")));
  EXPECT_THAT((SchedulerOptions{.max_batch_sequences = 0}.Validate()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_batch_sequences")));
  EXPECT_THAT((SchedulerOptions{.max_running = -1}.Validate()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_running")));
  EXPECT_THAT((SchedulerOptions{.max_queue = 0}.Validate()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_queue")));
}

TEST_F(SchedulerTest, InvalidRequestsNameTheField) {
  Init(Manual(), /*page_tokens=*/32, /*max_pages=*/8);
  auto bad = [&](std::vector<int32_t> prompt, engine::GenerationParams p) {
    return Submit("bad", std::move(prompt), p);
  };
  engine::GenerationParams ok = OnePerStep(8, 8);
  EXPECT_THAT(bad({}, ok), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt")));
  EXPECT_THAT(bad({1, 5000}, ok),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt: token id 5000")));
  engine::GenerationParams p = ok;
  p.threshold = 1.5f;
  EXPECT_THAT(bad({1}, p), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("threshold")));
  p = ok;
  p.sampling.temperature = -1;
  EXPECT_THAT(bad({1}, p), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("temperature")));
  p = ok;
  p.sampling.top_p = 0;
  EXPECT_THAT(bad({1}, p), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_p")));
  p = ok;
  p.max_new_tokens = 0;
  EXPECT_THAT(bad({1}, p), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_new_tokens")));
  p = ok;
  p.block_length = 0;
  EXPECT_THAT(bad({1}, p), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_length")));
  // Over-long: prompt + max_new_tokens > max_position_embeddings.
  p = OnePerStep(8, 100);
  EXPECT_THAT(bad(Prompt(kMaxPositions - 99, 1), p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_position_embeddings")));
  // Fits the model but never the KV cache (8 pages of 32 tokens).
  p = OnePerStep(8, 300);
  EXPECT_THAT(bad(Prompt(10, 1), p),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("KV pages")));
  // Nothing of the above was queued; the scheduler still works.
  EXPECT_EQ(scheduler_->Stats().waiting, 0);
  ASSERT_THAT(Submit("good", Prompt(5, 2), OnePerStep(8, 4)), dmoe_testing::IsOk());
  while (!outcomes_["good"].done) scheduler_->Step();
  EXPECT_THAT(outcomes_["good"].result, dmoe_testing::IsOk());
}

// Token budget 16, autoregressive (a prefill is the prompt, then 1 token per step):
// A, B (10-token prompts) and C (30) arrive together, D (4) before step 2. Least recently
// scheduled go first; a plan that does not fit waits one step; C's 30-token prefill is over
// the whole budget and runs alone; requests leave as soon as they finish.
TEST_F(SchedulerTest, IterationTableTokenBudget) {
  Init(Manual(/*max_batch_tokens=*/16));
  struct Row {
    int64_t step;
    std::vector<std::string> submit_before;
    std::vector<std::string> scheduled;
    int64_t batch_tokens;
    int64_t running;  // admitted when the batch was formed
    std::vector<std::string> finished_after;
  };
  const std::map<std::string, std::pair<int64_t, int64_t>> spec = {
      {"A", {10, 4}}, {"B", {10, 4}}, {"C", {30, 4}}, {"D", {4, 2}}};  // prompt, max_new
  const std::vector<Row> table = {
      {0, {"A", "B", "C"}, {"A"}, 10, 3, {}},
      {1, {}, {"B", "A"}, 11, 3, {}},
      {2, {"D"}, {"C"}, 30, 4, {}},
      {3, {}, {"D", "A", "B", "C"}, 7, 4, {}},
      {4, {}, {"A", "B", "C", "D"}, 4, 4, {"A", "D"}},
      {5, {}, {"B", "C"}, 2, 2, {"B", "C"}},
      {6, {}, {}, 0, 0, {}},
  };
  int32_t salt = 0;
  for (const Row& row : table) {
    SCOPED_TRACE(::testing::Message() << "step " << row.step);
    for (const std::string& name : row.submit_before) {
      auto [prompt, max_new] = spec.at(name);
      ASSERT_THAT(Submit(name, Prompt(prompt, ++salt), Ar(max_new)), dmoe_testing::IsOk());
    }
    StepReport report = scheduler_->Step();
    EXPECT_THAT(Names(report.scheduled), ElementsAreArray(row.scheduled));
    EXPECT_EQ(report.batch_tokens, row.batch_tokens);
    EXPECT_EQ(report.running, row.running);
    std::vector<std::string> finished;
    for (auto& [name, o] : outcomes_) {
      if (o.done && std::find(row.finished_after.begin(), row.finished_after.end(), name) !=
                        row.finished_after.end()) {
        finished.push_back(name);
      }
    }
    EXPECT_EQ(finished.size(), row.finished_after.size());
    EXPECT_EQ(report.finished, static_cast<int64_t>(row.finished_after.size()));
  }
  for (auto& [name, o] : outcomes_) {
    ASSERT_THAT(o.result, dmoe_testing::IsOk()) << name;
    EXPECT_EQ(o.result->forwards, spec.at(name).second) << name;
    EXPECT_EQ(o.result->ids.size(), static_cast<size_t>(spec.at(name).second)) << name;
    EXPECT_EQ(o.result->finish_reason, engine::FinishReason::kLength);
    EXPECT_EQ(o.streamed, o.result->ids) << name;  // AR streams every token
  }
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
}

// Diffusion, one token per forward, blocks of 4: E (prompt 4, 8 new = 2 blocks of 4 steps)
// runs alone for 2 steps; F (prompt 2, 2 new: one forward commits both, the quota being
// block / min(steps, max_new) = 2) joins at step 2, goes first as the least recently
// scheduled, and leaves after it; E's blocks stream whole, at the step that completes them.
TEST_F(SchedulerTest, IterationTableDiffusionJoinAndLeave) {
  Init(Manual());
  struct Row {
    int64_t step;
    std::vector<std::string> submit_before;
    std::vector<std::string> scheduled;
    int64_t batch_tokens;
    size_t e_streamed;  // E's final tokens so far
  };
  // E: [prompt 4 | block of 4] = 8 tokens, then 4, 4, 4; the next block carries the clean
  // previous block: 4 + 4 = 8, then 4, 4, 4. F: its block [p p m m], 4 tokens.
  const std::vector<Row> table = {
      {0, {"E"}, {"E"}, 8, 0},
      {1, {}, {"E"}, 4, 0},
      {2, {"F"}, {"F", "E"}, 8, 0},
      {3, {}, {"E"}, 4, 4},
      {4, {}, {"E"}, 8, 4},
      {5, {}, {"E"}, 4, 4},
      {6, {}, {"E"}, 4, 4},
      {7, {}, {"E"}, 4, 8},
      {8, {}, {}, 0, 8},
  };
  for (const Row& row : table) {
    SCOPED_TRACE(::testing::Message() << "step " << row.step);
    for (const std::string& name : row.submit_before) {
      const bool e = name == "E";
      ASSERT_THAT(Submit(name, Prompt(e ? 4 : 2, e ? 1 : 2), OnePerStep(4, e ? 8 : 2),
                         absl::InfiniteFuture(), /*canvas=*/true),
                  dmoe_testing::IsOk());
    }
    StepReport report = scheduler_->Step();
    EXPECT_THAT(Names(report.scheduled), ElementsAreArray(row.scheduled));
    EXPECT_EQ(report.batch_tokens, row.batch_tokens);
    EXPECT_EQ(outcomes_["E"].streamed.size(), row.e_streamed);
  }
  ASSERT_THAT(outcomes_["E"].result, dmoe_testing::IsOk());
  EXPECT_EQ(outcomes_["E"].offsets, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(outcomes_["E"].streamed, outcomes_["E"].result->ids);
  EXPECT_EQ(outcomes_["E"].result->forwards, 8);
  EXPECT_EQ(outcomes_["E"].canvas_events, 8);  // every step, the last one included
  ASSERT_THAT(outcomes_["F"].result, dmoe_testing::IsOk());
  EXPECT_EQ(outcomes_["F"].result->ids.size(), 2u);
  EXPECT_EQ(outcomes_["F"].result->forwards, 1);
  EXPECT_EQ(outcomes_["F"].canvas_events, 1);  // its one step
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
}

// KV capacity 6 pages of 8 tokens; each request needs ceil((10 + 6 + 8) / 8) = 3 pages, so two
// run at a time. The queue holds 2; past it Submit is RESOURCE_EXHAUSTED. Admission follows
// KV, and the pool never exceeds its capacity.
TEST_F(SchedulerTest, AdmissionBoundedByKvAndQueueBound) {
  Init({.max_queue = 2, .start_step_thread = false}, /*page_tokens=*/8, /*max_pages=*/6);
  const engine::GenerationParams p = OnePerStep(8, 6);
  ASSERT_THAT(Submit("r0", Prompt(10, 0), p), dmoe_testing::IsOk());
  ASSERT_THAT(Submit("r1", Prompt(10, 1), p), dmoe_testing::IsOk());
  EXPECT_THAT(Submit("r2", Prompt(10, 2), p),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queue is full")));
  StepReport first = scheduler_->Step();
  EXPECT_EQ(first.running, 2);
  EXPECT_EQ(scheduler_->Stats().kv_pages_reserved, 6);
  ASSERT_THAT(Submit("r3", Prompt(10, 3), p), dmoe_testing::IsOk());
  ASSERT_THAT(Submit("r4", Prompt(10, 4), p), dmoe_testing::IsOk());
  EXPECT_THAT(Submit("r5", Prompt(10, 5), p),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // r3, r4 wait until r0, r1 finish and free their pages.
  int64_t steps = 1;
  while (!outcomes_["r4"].done && steps < 100) {
    StepReport report = scheduler_->Step();
    ++steps;
    EXPECT_LE(report.running, 2);
    EXPECT_LE(model_->kv_pool().pages_in_use(), 6);
    if (!outcomes_["r0"].done) {
      EXPECT_EQ(report.waiting, 2);
    }
  }
  for (const char* name : {"r0", "r1", "r3", "r4"}) {
    EXPECT_THAT(outcomes_[name].result, dmoe_testing::IsOk()) << name;
  }
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
  EXPECT_EQ(scheduler_->Stats().kv_pages_reserved, 0);
  EXPECT_EQ(scheduler_->Stats().running, 0);
}

TEST_F(SchedulerTest, CancellationFreesKvAtTheNextStep) {
  Init(Manual(), /*page_tokens=*/8, /*max_pages=*/64);
  DMOE_ASSERT_OK_AND_ASSIGN(RequestHandle running, Submit("running", Prompt(20, 1), OnePerStep(8, 64)));
  scheduler_->Step();
  scheduler_->Step();
  EXPECT_GT(model_->kv_pool().pages_in_use(), 0);
  // A queued request (the pool is big enough; it is queued because no step ran yet).
  DMOE_ASSERT_OK_AND_ASSIGN(RequestHandle queued, Submit("queued", Prompt(5, 2), OnePerStep(8, 8)));
  scheduler_->Cancel(running);
  scheduler_->Cancel(queued);
  scheduler_->Cancel(12345);  // unknown: ignored
  StepReport report = scheduler_->Step();
  EXPECT_TRUE(report.scheduled.empty());
  EXPECT_EQ(report.finished, 2);
  EXPECT_THAT(outcomes_["running"].result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(outcomes_["queued"].result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
  EXPECT_EQ(scheduler_->Stats().kv_pages_reserved, 0);
  scheduler_->Cancel(running);  // already finished: no second on_done
  scheduler_->Step();
}

// What a stop string does (GenerationServer): on_tokens asks to keep only part of a block; the
// request ends at once as a successful stop, its result cut there, its KV free.
TEST_F(SchedulerTest, OnTokensCanEndTheRequestEarlyAsAStop) {
  Init(Manual(), /*page_tokens=*/8, /*max_pages=*/64);
  engine::GenerationParams params = OnePerStep(4, 40);
  params.stop_ids.clear();
  outcomes_["cut"].stop_at_streamed = 6;  // in the middle of the second 4-token block
  DMOE_ASSERT_OK(Submit("cut", Prompt(9, 3), params).status());
  DMOE_ASSERT_OK(Submit("whole", Prompt(9, 3), params).status());
  for (int i = 0; i < 200 && !(outcomes_["cut"].done && outcomes_["whole"].done); ++i) {
    scheduler_->Step();
  }
  const Outcome& cut = outcomes_["cut"];
  const Outcome& whole = outcomes_["whole"];
  DMOE_ASSERT_OK(cut.result.status());
  DMOE_ASSERT_OK(whole.result.status());
  ASSERT_EQ(whole.result->ids.size(), 40u);
  EXPECT_EQ(cut.result->ids,
            std::vector<int32_t>(whole.result->ids.begin(), whole.result->ids.begin() + 6));
  EXPECT_EQ(cut.result->finish_reason, engine::FinishReason::kStop);
  EXPECT_EQ(whole.result->finish_reason, engine::FinishReason::kLength);
  EXPECT_LT(cut.result->forwards, whole.result->forwards);  // no forward after the stop
  // Logprobs travel with the ids, in the stream and in the result.
  ASSERT_EQ(cut.result->logprobs.size(), 6u);
  EXPECT_EQ(whole.logprobs, whole.result->logprobs);
  for (float lp : whole.result->logprobs) EXPECT_LE(lp, 0.0f);
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
  EXPECT_EQ(scheduler_->Stats().kv_pages_reserved, 0);
}

TEST_F(SchedulerTest, DeadlinesEndRequestsWithDeadlineExceeded) {
  Init(Manual(), /*page_tokens=*/8, /*max_pages=*/64);
  ASSERT_THAT(Submit("slow", Prompt(20, 1), OnePerStep(8, 64), now_ + absl::Seconds(1)),
              dmoe_testing::IsOk());
  ASSERT_THAT(Submit("relaxed", Prompt(20, 2), OnePerStep(8, 8), now_ + absl::Hours(1)),
              dmoe_testing::IsOk());
  scheduler_->Step();
  scheduler_->Step();
  EXPECT_FALSE(outcomes_["slow"].done);
  now_ += absl::Seconds(2);
  // Queued past its deadline: never runs.
  ASSERT_THAT(Submit("late", Prompt(5, 3), OnePerStep(8, 8), now_ - absl::Seconds(1)),
              dmoe_testing::IsOk());
  StepReport report = scheduler_->Step();
  EXPECT_THAT(Names(report.scheduled), ElementsAreArray({"relaxed"}));
  EXPECT_THAT(outcomes_["slow"].result,
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("deadline")));
  EXPECT_THAT(outcomes_["late"].result, StatusIs(absl::StatusCode::kDeadlineExceeded));
  while (!outcomes_["relaxed"].done) scheduler_->Step();
  EXPECT_THAT(outcomes_["relaxed"].result, dmoe_testing::IsOk());
  EXPECT_DOUBLE_EQ(outcomes_["relaxed"].result->seconds, 2.0);  // the fake clock's
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
}

TEST_F(SchedulerTest, DrainRefusesNewRequestsAndStopEndsTheRest) {
  Init(Manual());
  ASSERT_THAT(Submit("a", Prompt(5, 1), OnePerStep(8, 32)), dmoe_testing::IsOk());
  scheduler_->Step();
  ASSERT_THAT(Submit("b", Prompt(5, 2), OnePerStep(8, 32)), dmoe_testing::IsOk());
  scheduler_->StartDrain();
  EXPECT_TRUE(scheduler_->Stats().draining);
  EXPECT_THAT(Submit("c", Prompt(5, 3), OnePerStep(8, 8)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("draining")));
  EXPECT_FALSE(scheduler_->WaitUntilIdle(absl::Milliseconds(1)));
  scheduler_->Stop();
  EXPECT_THAT(outcomes_["a"].result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(outcomes_["b"].result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(scheduler_->WaitUntilIdle(absl::ZeroDuration()));
  EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
}

// Exactness with the real step thread: through the scheduler, batched with whatever else is
// running, each request's ids equal a solo engine::Engine::Generate run.
class SchedulerExactnessTest : public SchedulerTest {
 protected:
  using Case = scheduler_testing::Case;

  // The greedy cases, some sampling (temperature, top-k, top-p) and some without a stop id.
  static std::vector<Case> MixedCases(int n) {
    std::vector<Case> cases = scheduler_testing::GreedyCases(n);
    for (int i = 0; i < n; ++i) {
      engine::GenerationParams& p = cases[i].params;
      if (i % 3 == 1) {
        p.sampling = {.temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 100u + i};
      }
      if (i % 7 == 6) p.stop_ids = {};
    }
    return cases;
  }

  // Submits `cases` from several threads into the running scheduler: each result and its
  // streamed ids equal a solo engine run.
  void ExpectBatchedEqualsSolo(const std::vector<Case>& cases, int64_t max_batch_tokens) {
    std::atomic<size_t> widest_batch{0};
    Init({.max_batch_tokens = max_batch_tokens,
          .clock = [] { return absl::Now(); },
          .step_observer = [&widest_batch](const StepReport& report) {
            widest_batch = std::max(widest_batch.load(), report.scheduled.size());
          }});
    const std::vector<engine::GenerationResult> solo =
        scheduler_testing::SoloRuns(checkpoint_->dir(), cases);
    const scheduler_testing::ConcurrentRun run =
        scheduler_testing::SubmitConcurrently(*scheduler_, cases, absl::Seconds(60));
    ASSERT_TRUE(run.finished) << "requests still running after 60 s";
    scheduler_testing::ExpectEqualsSolo(run, solo);
    for (size_t i = 0; i < cases.size(); ++i) {
      if (run.results[i].ok()) {
        EXPECT_EQ(run.streamed[i], run.results[i]->ids) << "request " << i;
      }
    }
    EXPECT_TRUE(scheduler_->WaitUntilIdle(absl::Seconds(1)));
    EXPECT_EQ(model_->kv_pool().pages_in_use(), 0);
    // Not vacuous: requests really shared steps.
    if (cases.size() > 1) {
      EXPECT_GT(widest_batch.load(), 1u);
    }
    scheduler_.reset();  // the observer refers to this frame
  }
};

TEST_F(SchedulerExactnessTest, OneRequestEqualsEngine) {
  ExpectBatchedEqualsSolo(MixedCases(1), 4096);
}

TEST_F(SchedulerExactnessTest, SixteenConcurrentMixedRequestsEqualSoloEngineRuns) {
  ExpectBatchedEqualsSolo(MixedCases(16), 4096);
}

TEST_F(SchedulerExactnessTest, SixteenRequestsUnderATightTokenBudget) {
  ExpectBatchedEqualsSolo(MixedCases(16), 48);
}

}  // namespace
}  // namespace dmoe::scheduler

namespace dmoe::scheduler {
namespace {

// The value of series `name` with label `label`=`value` (any labels when label is empty) in
// the registry; counters, gauges, and histogram counts.
double Collected(prometheus::Registry& registry, const std::string& name,
                 const std::string& label = "", const std::string& value = "") {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    double sum = 0;
    for (const prometheus::ClientMetric& m : family.metric) {
      bool match = label.empty();
      for (const prometheus::ClientMetric::Label& l : m.label) {
        match = match || (l.name == label && l.value == value);
      }
      if (!match) continue;
      sum += family.type == prometheus::MetricType::Counter   ? m.counter.value
             : family.type == prometheus::MetricType::Gauge   ? m.gauge.value
             : family.type == prometheus::MetricType::Histogram
                 ? static_cast<double>(m.histogram.sample_count)
                 : 0;
    }
    return sum;
  }
  return -1;
}

TEST_F(SchedulerTest, MetricsCountRequestsTokensForwardsAndOutcomes) {
  metrics::ProcessMetrics process = metrics::NewProcessMetrics("scheduler", "v7");
  SchedulerMetrics scheduler_metrics(process);
  SchedulerOptions options = Manual();
  options.metrics = &scheduler_metrics;
  Init(options);
  prometheus::Registry& r = *process.registry;

  // Rejected at submission: counted by code, never admitted.
  EXPECT_FALSE(Submit("bad", {}, OnePerStep(8, 8)).ok());
  EXPECT_EQ(Collected(r, "dmoe_requests_rejected_total", "grpc_code", "INVALID_ARGUMENT"), 1);

  // Two blocks of 8 at one token per forward: 8 forwards per block, 16 tokens.
  ASSERT_TRUE(Submit("a", Prompt(5, 1), OnePerStep(8, 16)).ok());
  DMOE_ASSERT_OK_AND_ASSIGN(RequestHandle b, Submit("b", Prompt(7, 2), OnePerStep(8, 64)));
  scheduler_->Step();
  EXPECT_EQ(Collected(r, "dmoe_num_requests_running"), 2);
  EXPECT_EQ(Collected(r, "dmoe_prompt_tokens_total"), 12);
  EXPECT_GT(Collected(r, "dmoe_kv_cache_pages_used"), 0);
  EXPECT_GT(Collected(r, "dmoe_kv_cache_usage_perc"), 0);
  while (!outcomes_["a"].done) scheduler_->Step();
  scheduler_->Cancel(b);
  scheduler_->Step();
  ASSERT_TRUE(outcomes_["a"].result.ok());
  const RequestResult& result = *outcomes_["a"].result;

  EXPECT_EQ(Collected(r, "dmoe_requests_finished_total", "finished_reason", "length"), 1);
  EXPECT_EQ(Collected(r, "dmoe_requests_finished_total", "finished_reason", "cancelled"), 1);
  EXPECT_EQ(Collected(r, "dmoe_e2e_request_latency_seconds"), 1);  // only normal ends
  EXPECT_EQ(Collected(r, "dmoe_tokens_per_forward"), 1);
  // One observation per committed block (on_tokens call); the first of each request is TTFB.
  // (The first block is partial: it starts with the prompt's tail.)
  const double blocks =
      static_cast<double>(outcomes_["a"].offsets.size() + outcomes_["b"].offsets.size());
  EXPECT_EQ(Collected(r, "dmoe_time_to_first_block_seconds"), 2);
  EXPECT_EQ(Collected(r, "dmoe_inter_block_latency_seconds"), blocks - 2);
  EXPECT_EQ(Collected(r, "dmoe_denoise_steps_per_block"), blocks);
  // Generated tokens: a's 16 plus b's first block.
  EXPECT_EQ(Collected(r, "dmoe_generation_tokens_total"),
            static_cast<double>(result.ids.size() + outcomes_["b"].streamed.size()));
  // Per-request forwards = sum of batch sizes over iterations.
  EXPECT_EQ(Collected(r, "dmoe_iterations_total"),
            Collected(r, "dmoe_iteration_sequences"));
  EXPECT_GE(Collected(r, "dmoe_forwards_total"), static_cast<double>(result.forwards));
  EXPECT_EQ(Collected(r, "dmoe_num_requests_running"), 0);
  EXPECT_EQ(Collected(r, "dmoe_kv_cache_pages_used"), 0);
  EXPECT_EQ(Collected(r, "dmoe_info", "role", "scheduler"), 1);
  // Every family carries the process's model_version.
  for (const prometheus::MetricFamily& family : r.Collect()) {
    for (const prometheus::ClientMetric& m : family.metric) {
      bool versioned = false;
      for (const auto& l : m.label) versioned |= l.name == "model_version" && l.value == "v7";
      EXPECT_TRUE(versioned) << family.name;
    }
  }
}

TEST_F(SchedulerTest, JournalMetricsCountRecordsFsyncsReattachesAndResumes) {
  metrics::ProcessMetrics process = metrics::NewProcessMetrics("scheduler", "v7");
  SchedulerMetrics scheduler_metrics(process);
  prometheus::Registry& r = *process.registry;
  EXPECT_EQ(Collected(r, "dmoe_requests_resumed_total"), -1);  // none without a journal
  dmoe_testing::TempDir dir;
  RequestJournalOptions journal_options;
  journal_options.path = dir.Join("journal");
  journal_options.fsync = JournalFsync::kAlways;
  scheduler_metrics.ObserveJournal(journal_options);
  DMOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<RequestJournal> journal,
                            RequestJournal::Open(journal_options));
  SchedulerOptions options = Manual();
  options.metrics = &scheduler_metrics;
  options.journal = journal.get();
  Init(options);

  ASSERT_TRUE(Submit("a", Prompt(5, 1), OnePerStep(8, 16)).ok());
  while (!outcomes_["a"].done) scheduler_->Step();
  const double commits = static_cast<double>(outcomes_["a"].offsets.size());
  EXPECT_EQ(Collected(r, "dmoe_journal_records_total", "type", "accept"), 1);
  EXPECT_EQ(Collected(r, "dmoe_journal_records_total", "type", "commit"), commits);
  EXPECT_EQ(Collected(r, "dmoe_journal_records_total", "type", "end"), 1);
  EXPECT_EQ(Collected(r, "dmoe_journal_fsync_seconds"), 2 + commits);  // fsync always
  EXPECT_EQ(Collected(r, "dmoe_journal_bytes_total") + 8,
            static_cast<double>(std::filesystem::file_size(journal_options.path)));

  // The same request again (a client's retry) re-attaches to the kept result.
  outcomes_.erase("a");
  ASSERT_TRUE(Submit("a", Prompt(5, 1), OnePerStep(8, 16)).ok());
  scheduler_->Step();
  EXPECT_TRUE(outcomes_["a"].done);
  EXPECT_EQ(Collected(r, "dmoe_requests_reattached_total"), 1);

  // A request interrupted by a stop is resumed by the next scheduler on the reopened journal.
  ASSERT_TRUE(Submit("b", Prompt(7, 2), OnePerStep(8, 64)).ok());
  scheduler_->Step();
  scheduler_.reset();
  journal.reset();
  DMOE_ASSERT_OK_AND_ASSIGN(journal, RequestJournal::Open(journal_options));
  options.journal = journal.get();
  Init(options);
  EXPECT_EQ(Collected(r, "dmoe_requests_resumed_total"), 1);
  scheduler_.reset();  // before the journal it appends to
}

}  // namespace
}  // namespace dmoe::scheduler
