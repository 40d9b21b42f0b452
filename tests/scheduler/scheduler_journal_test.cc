// The scheduler with a journal (SchedulerOptions::journal) on a tiny random checkpoint, driven
// by hand: a scheduler stopped mid-request, a new one on the same journal resumes the request
// and a caller that re-attaches by id gets ids equal to the uninterrupted run; re-attaching to
// a running or finished request; a detached request cancelled after the grace period.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/request_journal.h"
#include "scheduler/scheduler.h"
#include "serve/in_process_model.h"
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

struct Outcome {
  std::vector<int32_t> streamed;
  std::vector<int64_t> offsets;
  std::vector<float> logprobs;
  int done = 0;
  absl::StatusOr<RequestResult> result = absl::UnknownError("not finished");
};

// Greedy diffusion that commits several tokens on some steps (threshold 0.5), 5 blocks.
engine::GenerationParams Params() {
  engine::GenerationParams p;
  p.threshold = 0.5f;
  p.block_length = 8;
  p.steps = 8;
  p.max_new_tokens = 40;
  p.mask_id = kMask;
  return p;
}

class SchedulerJournalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tools::RandomCheckpointSpec spec = dmoe_testing::DecodingSpec(/*seed=*/11);
    spec.max_position_embeddings = 1024;
    checkpoint_ = new dmoe_testing::TinyCheckpointDir(spec);
  }
  static void TearDownTestSuite() {
    delete checkpoint_;
    checkpoint_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(checkpoint_->ok()) << checkpoint_->status();
    DMOE_ASSERT_OK_AND_ASSIGN(model_, serve::InProcessModel::Create({.model_dir = checkpoint_->dir(),
                                                                     .num_threads = 2,
                                                                     .kv_page_tokens = 32,
                                                                     .kv_max_pages = 256}));
    journal_path_ = dir_.Join("journal");
  }
  void TearDown() override {
    scheduler_.reset();
    journal_.reset();
  }

  // A scheduler over the journal at journal_path_ (reopened), or none when !with_journal.
  void Start(bool with_journal) {
    scheduler_.reset();
    journal_.reset();
    SchedulerOptions options;
    options.start_step_thread = false;
    options.clock = [this] { return now_; };
    options.detached_grace = absl::Seconds(10);
    if (with_journal) {
      RequestJournalOptions journal_options;
      journal_options.path = journal_path_;
      journal_options.fsync = JournalFsync::kNever;
      DMOE_ASSERT_OK_AND_ASSIGN(journal_, RequestJournal::Open(journal_options));
      options.journal = journal_.get();
    }
    DMOE_ASSERT_OK_AND_ASSIGN(scheduler_,
                              Scheduler::Create(options, model_->config(), model_->step_executor()));
  }

  absl::StatusOr<RequestHandle> Submit(const std::string& id, Outcome* o,
                                       std::vector<int32_t> prompt = Prompt(13, 3)) {
    SchedulerRequest request;
    request.request_id = id;
    request.prompt = std::move(prompt);
    request.params = Params();
    request.callbacks.on_tokens = [o](const CommittedTokens& t) -> KeepIds {
      o->offsets.push_back(t.offset);
      o->streamed.insert(o->streamed.end(), t.ids.begin(), t.ids.end());
      o->logprobs.insert(o->logprobs.end(), t.logprobs.begin(), t.logprobs.end());
      return std::nullopt;
    };
    request.callbacks.on_done = [o](absl::StatusOr<RequestResult> r) {
      ++o->done;
      o->result = std::move(r);
    };
    return scheduler_->Submit(std::move(request));
  }

  void StepUntil(const std::function<bool()>& done, int max_steps = 400) {
    for (int i = 0; i < max_steps && !done(); ++i) scheduler_->Step();
    ASSERT_TRUE(done()) << "not done after " << max_steps << " steps";
  }

  // The fault-free run, without a journal.
  RequestResult Reference() {
    Start(/*with_journal=*/false);
    Outcome o;
    EXPECT_TRUE(Submit("ref", &o).ok());
    StepUntil([&] { return o.done > 0; });
    EXPECT_TRUE(o.result.ok()) << o.result.status();
    return o.result.ok() ? *o.result : RequestResult{};
  }

  static dmoe_testing::TinyCheckpointDir* checkpoint_;
  dmoe_testing::TempDir dir_;
  std::string journal_path_;
  std::unique_ptr<serve::InProcessModel> model_;
  std::unique_ptr<RequestJournal> journal_;
  std::unique_ptr<Scheduler> scheduler_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

dmoe_testing::TinyCheckpointDir* SchedulerJournalTest::checkpoint_ = nullptr;

TEST_F(SchedulerJournalTest, RestartedSchedulerResumesAndTheIdsEqualTheUninterruptedRun) {
  const RequestResult reference = Reference();
  ASSERT_GE(reference.ids.size(), 24u);

  // First life: stopped after two blocks were streamed.
  Start(/*with_journal=*/true);
  Outcome first;
  ASSERT_TRUE(Submit("job-1", &first).ok());
  StepUntil([&] { return first.streamed.size() >= 16; });
  ASSERT_EQ(first.done, 0);
  const size_t had = first.streamed.size();
  scheduler_.reset();  // Stop(): the request is interrupted, not ended
  EXPECT_EQ(first.done, 1);
  EXPECT_THAT(first.result.status(), StatusIs(absl::StatusCode::kUnavailable));

  // Second life on the same journal: the request is resumed without a caller.
  Start(/*with_journal=*/true);
  ASSERT_EQ(journal_->recovered().size(), 1u);
  EXPECT_EQ(journal_->recovered()[0].ids.size(), had);
  EXPECT_EQ(scheduler_->Stats().resumed, 1);
  scheduler_->Step();  // the replay runs (below the journalled offset) while nobody listens
  scheduler_->Step();

  // The client re-attaches by id: first every committed id at offset 0, then the rest.
  Outcome second;
  ASSERT_TRUE(Submit("job-1", &second).ok());
  EXPECT_EQ(scheduler_->Stats().reattached, 1);
  StepUntil([&] { return second.done > 0; });
  ASSERT_TRUE(second.result.ok()) << second.result.status();
  EXPECT_EQ(second.offsets.front(), 0);
  EXPECT_THAT(second.streamed, ElementsAreArray(reference.ids));
  EXPECT_THAT(second.logprobs, ElementsAreArray(reference.logprobs));
  EXPECT_THAT(second.result->ids, ElementsAreArray(reference.ids));
  EXPECT_EQ(second.result->finish_reason, reference.finish_reason);
  // What the first caller had plus what came after its offset is the fault-free output.
  std::vector<int32_t> joined = first.streamed;
  joined.insert(joined.end(), second.streamed.begin() + static_cast<int64_t>(had),
                second.streamed.end());
  EXPECT_THAT(joined, ElementsAreArray(reference.ids));
  EXPECT_EQ(journal_->Stats().live_requests, 0);

  // A third life has nothing to resume.
  Start(/*with_journal=*/true);
  EXPECT_TRUE(journal_->recovered().empty());
  EXPECT_EQ(scheduler_->Stats().resumed, 0);
}

TEST_F(SchedulerJournalTest, SameIdReattachesToARunningOrFinishedRequest) {
  const RequestResult reference = Reference();
  Start(/*with_journal=*/true);
  Outcome a;
  ASSERT_TRUE(Submit("x", &a).ok());
  StepUntil([&] { return a.streamed.size() >= 8; });

  // A retry of the same request (another router) takes the stream over.
  Outcome b;
  ASSERT_TRUE(Submit("x", &b).ok());
  scheduler_->Step();
  EXPECT_EQ(a.done, 1);
  EXPECT_THAT(a.result.status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("re-attached")));
  // Another request under the same id is refused.
  Outcome c;
  EXPECT_THAT(Submit("x", &c, Prompt(9, 1)),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("request_id")));
  StepUntil([&] { return b.done > 0; });
  ASSERT_TRUE(b.result.ok()) << b.result.status();
  EXPECT_THAT(b.streamed, ElementsAreArray(reference.ids));

  // Finished: a late caller gets the retained result.
  Outcome late;
  ASSERT_TRUE(Submit("x", &late).ok());
  scheduler_->Step();
  ASSERT_EQ(late.done, 1);
  ASSERT_TRUE(late.result.ok()) << late.result.status();
  EXPECT_THAT(late.streamed, ElementsAreArray(reference.ids));
  EXPECT_THAT(late.result->ids, ElementsAreArray(reference.ids));
}

TEST_F(SchedulerJournalTest, DetachedRequestGoesOnThenIsCancelledAfterTheGrace) {
  Start(/*with_journal=*/true);
  Outcome a;
  DMOE_ASSERT_OK_AND_ASSIGN(RequestHandle handle, Submit("d", &a));
  scheduler_->Step();
  scheduler_->Detach(handle);
  scheduler_->Step();
  EXPECT_EQ(a.done, 1);
  EXPECT_THAT(a.result.status(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(scheduler_->Stats().running, 1);  // it goes on without a caller
  EXPECT_EQ(journal_->Stats().live_requests, 1);
  now_ += absl::Seconds(11);
  scheduler_->Step();
  EXPECT_EQ(scheduler_->Stats().running, 0);
  EXPECT_EQ(journal_->Stats().live_requests, 0);  // ended: never resumed
}

}  // namespace
}  // namespace dmoe::scheduler
