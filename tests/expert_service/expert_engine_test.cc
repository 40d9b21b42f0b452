// ExpertEngine (the shard core, no gRPC): rows computed equal LocalExpertExecutor bit for bit,
// malformed requests are INVALID_ARGUMENT naming the field, deadlines, concurrent callers,
// and the Submit queue's ownership rules (rejections, cancellation, queue full, shutdown).
#include "expert_service/expert_engine.h"

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "model/cpu/make_kernels.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/concurrency.h"
#include "tests/transport/expert_test_util.h"

namespace dmoe::expert {
namespace {

using ::dmoe::expert_testing::BitIdentical;
using ::testing::HasSubstr;

constexpr int64_t kHidden = 64;  // tiny preset

class ExpertEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tiny = expert_testing::TinyModel::Create();
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    tiny_ = tiny->release();
  }
  static void TearDownTestSuite() {
    delete tiny_;
    tiny_ = nullptr;
  }

  std::unique_ptr<ExpertEngine> Engine(ExpertEngineOptions options) {
    options.model_dir = tiny_->dir();
    auto engine = ExpertEngine::Create(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
  }

  // n rows of deterministic activations routed to `ids`.
  struct Rows {
    std::vector<float> hidden;
    std::vector<int32_t> ids;
    ExpertRequest Request(int64_t layer) const {
      const int64_t n = static_cast<int64_t>(ids.size());
      return {.layer = layer,
              .hidden = {.dtype = WireDType::kF32,
                         .shape = {n, kHidden},
                         .data = hidden.data(),
                         .size_bytes = hidden.size() * sizeof(float)},
              .expert_ids = {.dtype = WireDType::kI32,
                             .shape = {n},
                             .data = ids.data(),
                             .size_bytes = ids.size() * sizeof(int32_t)}};
    }
  };
  static Rows MakeRows(const std::vector<int32_t>& ids, int salt = 0) {
    Rows rows{.hidden = std::vector<float>(ids.size() * kHidden), .ids = ids};
    for (size_t i = 0; i < rows.hidden.size(); ++i) {
      rows.hidden[i] = static_cast<float>((i * 7919 + salt * 31) % 101) / 50.0f - 1.0f;
    }
    return rows;
  }
  // What LocalExpertExecutor computes for the rows (top_k = 1: one slot per row).
  static std::vector<float> Expected(const Rows& rows, int64_t layer) {
    auto kernels = model::MakeKernels("cpu", 2);
    model::LocalExpertExecutor local(tiny_->full_weights(), **kernels);
    const int64_t n = static_cast<int64_t>(rows.ids.size());
    model::Routing routing{.num_tokens = n, .top_k = 1, .experts = rows.ids,
                           .weights = std::vector<float>(n, 1.0f)};
    std::vector<float> out(n * kHidden);
    EXPECT_TRUE(local.RunExperts(layer, rows.hidden.data(), n, kHidden, routing, out.data()).ok());
    return out;
  }

  static expert_testing::TinyModel* tiny_;
};

expert_testing::TinyModel* ExpertEngineTest::tiny_ = nullptr;

TEST_F(ExpertEngineTest, ShardInfoDescribesTheShard) {
  auto engine = Engine({.model_name = "tiny-test", .expert_first = 4, .expert_last = 12});
  ASSERT_NE(engine, nullptr);
  const transport::ShardInfo& info = engine->info();
  EXPECT_EQ(info.model_name, "tiny-test");
  EXPECT_EQ(info.model_type, "llada2_moe");
  EXPECT_EQ(info.hidden_size, 64);
  EXPECT_EQ(info.num_hidden_layers, 3);
  EXPECT_EQ(info.first_moe_layer, 1);
  EXPECT_EQ(info.num_experts, 16);
  EXPECT_EQ(info.num_experts_per_tok, 4);
  EXPECT_EQ(info.moe_intermediate_size, 32);
  EXPECT_EQ(info.expert_first, 4);
  EXPECT_EQ(info.expert_last, 12);
  EXPECT_EQ(info.weight_dtype, "BF16");
  auto fingerprint = model::ConfigFingerprintOfDir(tiny_->dir());
  ASSERT_TRUE(fingerprint.ok());
  EXPECT_EQ(info.config_fingerprint, *fingerprint);
  EXPECT_EQ(info.config_fingerprint.size(), 16u);
  EXPECT_TRUE(transport::CheckShardCompatible(info, tiny_->config(), 4, 12, *fingerprint).ok());
  EXPECT_EQ(transport::CheckShardCompatible(info, tiny_->config(), 0, 12).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(transport::CheckShardCompatible(info, tiny_->config(), 4, 12, "0123456789abcdef").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ExpertEngineTest, RowsAreBitIdenticalToLocalExecutor) {
  auto engine = Engine({.expert_first = 0, .expert_last = 8, .threads_per_worker = 2});
  ASSERT_NE(engine, nullptr);
  // Unsorted ids, repeats, experts with one row, expert 6 with none.
  const Rows rows = MakeRows({3, 0, 7, 3, 5, 1, 1, 2, 4, 3, 0, 7, 5});
  for (int64_t layer : {1, 2}) {
    std::vector<float> out(rows.hidden.size(), -1.0f);
    absl::Status status = engine->Run(rows.Request(layer), absl::InfiniteFuture(), out.data());
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_TRUE(BitIdentical(out, Expected(rows, layer))) << "layer " << layer;
  }
  EXPECT_EQ(engine->rows_computed(), 26);
}

// Expert balancing: experts outside the range are served once loaded, bit-identically, and
// refused again once released; the budget and the ids are checked.
TEST_F(ExpertEngineTest, ResidentExpertsOutsideTheRangeAreServedUntilReleased) {
  auto engine = Engine({.expert_first = 4, .expert_last = 8});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({1, 5, 12, 1, 7});
  std::vector<float> out(rows.ids.size() * kHidden);
  absl::Status refused = engine->Run(rows.Request(1), absl::InfiniteFuture(), out.data());
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("expert 1 is outside"));

  // MoE layers [1, 3) of the tiny model: layer index 0 is layer 1.
  ASSERT_TRUE(engine->SetResidentExperts({{1, 12}, {}}, /*max_per_layer=*/2).ok());
  EXPECT_EQ(engine->resident_extra_experts(), 2);
  ASSERT_TRUE(engine->Run(rows.Request(1), absl::InfiniteFuture(), out.data()).ok());
  EXPECT_TRUE(BitIdentical(out, Expected(rows, 1)));
  // Loaded for layer 1 only.
  EXPECT_EQ(engine->Run(rows.Request(2), absl::InfiniteFuture(), out.data()).code(),
            absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(engine->SetResidentExperts({{12}, {}}).ok());  // 1 released
  EXPECT_EQ(engine->Run(rows.Request(1), absl::InfiniteFuture(), out.data()).code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(engine->SetResidentExperts({{1, 2, 3}}, 2).code(),
            absl::StatusCode::kInvalidArgument);  // over the budget
  EXPECT_EQ(engine->SetResidentExperts({{16}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->SetResidentExperts({{}, {}, {}}).code(),
            absl::StatusCode::kInvalidArgument);  // 3 layers, the model has 2 MoE layers
  EXPECT_EQ(engine->resident_extra_experts(), 1);  // failed calls change nothing
}

TEST_F(ExpertEngineTest, ZeroRowsSucceed) {
  auto engine = Engine({.expert_first = 0, .expert_last = 8});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({});
  EXPECT_TRUE(engine->Run(rows.Request(1), absl::InfiniteFuture(), nullptr).ok());
}

TEST_F(ExpertEngineTest, UnalignedWireBytesAreAccepted) {
  auto engine = Engine({.expert_first = 0, .expert_last = 16});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({9, 2, 15});
  // Shift the bytes by one, as a wire buffer may be.
  std::vector<char> hidden(rows.hidden.size() * sizeof(float) + 1), ids(3 * sizeof(int32_t) + 1);
  std::memcpy(hidden.data() + 1, rows.hidden.data(), hidden.size() - 1);
  std::memcpy(ids.data() + 1, rows.ids.data(), ids.size() - 1);
  ExpertRequest request = rows.Request(2);
  request.hidden.data = hidden.data() + 1;
  request.expert_ids.data = ids.data() + 1;
  std::vector<float> out(rows.hidden.size());
  ASSERT_TRUE(engine->Run(request, absl::InfiniteFuture(), out.data()).ok());
  EXPECT_TRUE(BitIdentical(out, Expected(rows, 2)));
}

TEST_F(ExpertEngineTest, MalformedRequestsAreInvalidArgumentNamingTheField) {
  auto engine = Engine({.expert_first = 4, .expert_last = 12});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({4, 5, 11});
  struct Case {
    std::string name;
    std::function<void(ExpertRequest&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"dense layer", [](ExpertRequest& r) { r.layer = 0; }, "layer: 0 is not a MoE layer"},
      {"unknown layer", [](ExpertRequest& r) { r.layer = 7; }, "layer: 7"},
      {"hidden dtype", [](ExpertRequest& r) { r.hidden.dtype = WireDType::kBF16; },
       "hidden.dtype: expected F32, got BF16"},
      {"hidden rank", [](ExpertRequest& r) { r.hidden.shape = {3 * kHidden}; },
       "hidden.shape: expected [n, 64], got [192]"},
      {"hidden width", [](ExpertRequest& r) { r.hidden.shape = {2, 96}; },
       "hidden.shape: expected [n, 64], got [2, 96]"},
      {"negative rows", [](ExpertRequest& r) { r.hidden.shape = {-3, kHidden}; }, "hidden.shape"},
      {"hidden bytes", [](ExpertRequest& r) { r.hidden.size_bytes -= 4; }, "hidden.data: expected 768 bytes"},
      {"ids dtype", [](ExpertRequest& r) { r.expert_ids.dtype = WireDType::kF32; },
       "expert_ids.dtype: expected I32, got F32"},
      {"ids count", [](ExpertRequest& r) { r.expert_ids.shape = {2}; },
       "expert_ids.shape: expected [3]"},
      {"ids bytes", [](ExpertRequest& r) { r.expert_ids.size_bytes = 8; }, "expert_ids.data"},
  };
  for (const Case& c : cases) {
    ExpertRequest request = rows.Request(1);
    c.mutate(request);
    std::vector<float> out(rows.hidden.size());
    absl::Status status = engine->Run(request, absl::InfiniteFuture(), out.data());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.name;
  }
  for (int32_t bad : {3, 12, -1}) {
    const Rows out_of_range = MakeRows({4, bad});
    absl::Status status = engine->Run(out_of_range.Request(1), absl::InfiniteFuture(), nullptr);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()),
                HasSubstr(absl::StrCat("expert_ids[1]: expert ", bad,
                                       " is outside this shard's range [4, 12)")));
  }
  EXPECT_EQ(engine->rows_computed(), 0);
}

TEST_F(ExpertEngineTest, PastDeadlineIsDeadlineExceeded) {
  auto engine = Engine({});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({1, 2});
  std::vector<float> out(rows.hidden.size());
  absl::Status status = engine->Run(rows.Request(1), absl::Now() - absl::Milliseconds(1), out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

TEST_F(ExpertEngineTest, CreateRejectsBadOptions) {
  auto missing = ExpertEngine::Create({.model_dir = tiny_->dir() + "/nope"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  auto range = ExpertEngine::Create({.model_dir = tiny_->dir(), .expert_first = 10, .expert_last = 20});
  EXPECT_EQ(range.status().code(), absl::StatusCode::kInvalidArgument) << range.status();
  EXPECT_THAT(std::string(range.status().message()), HasSubstr("experts: [10, 20)"));
  auto empty = ExpertEngine::Create({.model_dir = tiny_->dir(), .expert_first = 5, .expert_last = 5});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  auto workers = ExpertEngine::Create({.model_dir = tiny_->dir(), .num_workers = 0});
  EXPECT_THAT(std::string(workers.status().message()), HasSubstr("num_workers"));
  auto device = ExpertEngine::Create({.model_dir = tiny_->dir(), .device = "tpu"});
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(device.status().message()), HasSubstr("device"));
  auto rows = ExpertEngine::Create({.model_dir = tiny_->dir(), .device_max_rows = 0});
  EXPECT_THAT(std::string(rows.status().message()), HasSubstr("device_max_rows"));
}

TEST_F(ExpertEngineTest, ConcurrentCallersGetTheSameBits) {
  auto engine = Engine({.num_workers = 2, .threads_per_worker = 1});
  ASSERT_NE(engine, nullptr);
  std::vector<Rows> inputs;
  std::vector<std::vector<float>> expected;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> ids;
    for (int j = 0; j < 40; ++j) ids.push_back((j * 5 + i) % 16);
    inputs.push_back(MakeRows(ids, i));
    expected.push_back(Expected(inputs.back(), 1 + i % 2));
  }
  std::atomic<int> mismatches{0};
  dmoe_testing::RunConcurrently(4, [&](int t) {
    for (int iter = 0; iter < 25; ++iter) {
      const int i = (t + iter) % 4;
      std::vector<float> out(inputs[i].hidden.size());
      absl::Status status =
          engine->Run(inputs[i].Request(1 + i % 2), absl::InfiniteFuture(), out.data());
      if (!status.ok() || !BitIdentical(out, expected[i])) ++mismatches;
    }
  });
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(engine->rows_computed(), 4 * 25 * 40);
}

// Records what the engine did with a submitted item; optionally blocks in OutputBuffer.
class FakeWork final : public ExpertWork {
 public:
  struct Result {
    absl::Notification done;
    absl::Status status;
    std::vector<float> out;
    absl::Notification entered_output;  // OutputBuffer was called
    absl::Notification* release = nullptr;  // OutputBuffer waits for it when set
  };
  FakeWork(ExpertRequest request, Result* result, bool cancelled = false)
      : request_(std::move(request)), result_(result), cancelled_(cancelled) {}
  const ExpertRequest& request() const override { return request_; }
  absl::Time deadline() const override { return absl::InfiniteFuture(); }
  bool cancelled() const override { return cancelled_; }
  float* OutputBuffer(int64_t num_rows, int64_t hidden_size) override {
    result_->entered_output.Notify();
    if (result_->release != nullptr) result_->release->WaitForNotification();
    result_->out.resize(num_rows * hidden_size);
    return result_->out.data();
  }
  void Done(const absl::Status& status, double /*compute_seconds*/) override {
    result_->status = status;
    result_->done.Notify();
  }

 private:
  ExpertRequest request_;
  Result* result_;
  bool cancelled_;
};

TEST_F(ExpertEngineTest, SubmitComputesOnAWorkerAndFinishesEveryItem) {
  auto engine = Engine({.expert_first = 0, .expert_last = 8});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({1, 7, 1, 0});
  FakeWork::Result ok, invalid, cancelled;
  engine->Submit(std::make_unique<FakeWork>(rows.Request(2), &ok));
  ExpertRequest bad = rows.Request(2);
  bad.hidden.dtype = WireDType::kF16;
  engine->Submit(std::make_unique<FakeWork>(bad, &invalid));
  EXPECT_TRUE(invalid.done.HasBeenNotified());  // rejected from Submit itself
  EXPECT_EQ(invalid.status.code(), absl::StatusCode::kInvalidArgument);
  engine->Submit(std::make_unique<FakeWork>(rows.Request(2), &cancelled, /*cancelled=*/true));
  ok.done.WaitForNotification();
  ASSERT_TRUE(ok.status.ok()) << ok.status;
  EXPECT_TRUE(BitIdentical(ok.out, Expected(rows, 2)));
  cancelled.done.WaitForNotification();
  EXPECT_EQ(cancelled.status.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(cancelled.entered_output.HasBeenNotified());
}

TEST_F(ExpertEngineTest, FullQueueIsResourceExhaustedAndShutdownFailsQueuedWork) {
  auto engine = Engine({.num_workers = 1, .max_queue = 1});
  ASSERT_NE(engine, nullptr);
  const Rows rows = MakeRows({2, 3});
  absl::Notification release;
  FakeWork::Result running, queued, rejected;
  running.release = &release;
  engine->Submit(std::make_unique<FakeWork>(rows.Request(1), &running));
  running.entered_output.WaitForNotification();  // the only worker is now busy
  engine->Submit(std::make_unique<FakeWork>(rows.Request(1), &queued));
  engine->Submit(std::make_unique<FakeWork>(rows.Request(1), &rejected));
  ASSERT_TRUE(rejected.done.HasBeenNotified());
  EXPECT_EQ(rejected.status.code(), absl::StatusCode::kResourceExhausted) << rejected.status;

  // Destruction fails the queued item, then waits for the running one.
  std::thread destroy([&] { engine.reset(); });
  queued.done.WaitForNotification();
  EXPECT_EQ(queued.status.code(), absl::StatusCode::kUnavailable) << queued.status;
  release.Notify();
  destroy.join();
  ASSERT_TRUE(running.done.HasBeenNotified());
  EXPECT_TRUE(running.status.ok()) << running.status;
}

}  // namespace
}  // namespace dmoe::expert
