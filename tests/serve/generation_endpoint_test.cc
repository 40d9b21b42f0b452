// Service tests (STYLE.md §12 tier 3): a real EmbeddedServer (GenerationServer over the
// Scheduler over a tiny random checkpoint) called through the real C++ client. The main
// suite runs over an in-process channel and over TCP on 127.0.0.1:0. Cancellation,
// deadlines, backpressure, bad input and drain are checked here, and after each the server
// still answers.
#include "scheduler/generation_server.h"

#include <atomic>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/generation_client.h"
#include "common/grpc_status.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "serve/embedded_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::serve {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kMaxPositions = 2048;

std::vector<int32_t> Ids(int64_t length, int32_t salt) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < length; ++i) p.push_back(static_cast<int32_t>((i * 31 + salt * 7 + 3) % 3900));
  return p;
}

dmoe::v1::GenerateRequest IdsRequest(const std::vector<int32_t>& ids) {
  dmoe::v1::GenerateRequest r;
  r.mutable_prompt_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  return r;
}

// A generation of `tokens` forwards (one token per forward, no stop tokens): long enough to
// cancel, time out or hold KV while a test looks.
dmoe::v1::GenerateRequest LongRequest(int64_t tokens) {
  dmoe::v1::GenerateRequest r = IdsRequest(Ids(8, 99));
  r.mutable_params()->set_max_new_tokens(tokens);
  r.mutable_params()->set_threshold(1.0f);
  r.mutable_params()->set_block_length(32);
  r.mutable_params()->set_steps(32);
  r.mutable_params()->mutable_stop_ids();  // present and empty: no stop tokens
  return r;
}

// grpc.health.v1.Health/Check through a generic stub (Debian ships no C++ health stubs):
// HealthCheckRequest{service = 1}, HealthCheckResponse{status = 1}.
absl::StatusOr<int> HealthStatus(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service) {
  grpc::GenericStub stub(channel);
  std::string bytes;
  if (!service.empty()) {
    bytes.push_back(0x0a);
    bytes.push_back(static_cast<char>(service.size()));  // < 128
    bytes += service;
  }
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  response.Dump(&slices);
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (out.empty()) return 0;
  if (out.size() == 2 && out[0] == 0x08) return out[1];
  return absl::InternalError("unexpected health response");
}

// Polls `cond` for up to 10 s.
template <typename F>
bool Eventually(F cond) {
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (absl::Now() < end) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return cond();
}

class ServiceTestBase {
 protected:
  static void MakeCheckpoint() {
    if (checkpoint_) return;
    tools::RandomCheckpointSpec spec = dmoe_testing::TinySpec();
    spec.seed = 3;
    spec.max_position_embeddings = kMaxPositions;
    checkpoint_ = new dmoe_testing::TinyCheckpointDir(spec);
    has_tokenizer_ = std::filesystem::exists(checkpoint_->dir() + "/tokenizer.json");
  }

  // Starts a server on 127.0.0.1:0 (ids 4000 / 4001 as mask / stop without a tokenizer).
  std::unique_ptr<EmbeddedServer> StartServer(
      int64_t kv_pages = 8192, int64_t max_queue = 64,
      scheduler::SchedulerOptions scheduler_options = {}) {
    scheduler_options.max_queue = max_queue;
    EmbeddedServerOptions options{.api = {.model_dir = checkpoint_->dir(),
                                          .model_name = "tiny",
                                          .model_version = "v1",
                                          .kv_pages = kv_pages,
                                          .scheduler = scheduler_options},
                                  .num_threads = 2};
    if (!has_tokenizer_) {
      options.api.mask_id = 4000;
      options.api.stop_ids = std::vector<int32_t>{4001};
    }
    auto server = EmbeddedServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  static std::unique_ptr<client::GenerationClient> TcpClient(const EmbeddedServer& server) {
    auto c = client::GenerationClient::Connect({.target = server.address()});
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  // The request run by the single-process engine with the server's decoding ids.
  engine::GenerationResult EngineRun(EmbeddedServer& server,
                                     const dmoe::v1::GenerateRequest& request) {
    const dmoe::v1::ModelInfo info = server.service().Info();
    auto engine = engine::Engine::Create({.model_dir = checkpoint_->dir(), .num_threads = 2});
    EXPECT_TRUE(engine.ok()) << engine.status();
    engine::GenerationParams p;
    p.block_length = info.block_length();
    p.mask_id = info.mask_id();
    p.stop_ids.assign(info.stop_ids().begin(), info.stop_ids().end());
    const auto& in = request.params();
    if (in.has_max_new_tokens()) p.max_new_tokens = in.max_new_tokens();
    if (in.has_threshold()) p.threshold = in.threshold();
    if (in.has_block_length()) p.block_length = in.block_length();
    if (in.has_steps()) p.steps = in.steps();
    if (in.has_temperature()) p.sampling.temperature = in.temperature();
    if (in.has_top_k()) p.sampling.top_k = in.top_k();
    if (in.has_top_p()) p.sampling.top_p = in.top_p();
    if (in.has_seed()) p.sampling.seed = in.seed();
    std::vector<int32_t> prompt(request.prompt_ids().ids().begin(), request.prompt_ids().ids().end());
    auto r = (*engine)->Generate({{prompt, p}});
    EXPECT_TRUE(r.ok()) << r.status();
    return (*r)[0];
  }

  static bool Idle(EmbeddedServer& server) {
    const scheduler::SchedulerStats stats = server.scheduler().Stats();
    return stats.running == 0 && stats.waiting == 0 && server.kv_pool().pages_in_use() == 0;
  }

  // The server still serves a short request.
  static void ExpectAlive(client::GenerationClient& client) {
    dmoe::v1::GenerateRequest r = IdsRequest(Ids(6, 1));
    r.mutable_params()->set_max_new_tokens(8);
    EXPECT_THAT(client.Generate(r, {.timeout = absl::Seconds(30)}), dmoe_testing::IsOk());
  }

  static dmoe_testing::TinyCheckpointDir* checkpoint_;
  static bool has_tokenizer_;
};

dmoe_testing::TinyCheckpointDir* ServiceTestBase::checkpoint_ = nullptr;
bool ServiceTestBase::has_tokenizer_ = false;

enum class Transport { kInProcess, kTcp };

class GenerationServiceTest : public ServiceTestBase, public ::testing::TestWithParam<Transport> {
 protected:
  static void SetUpTestSuite() { MakeCheckpoint(); }
  void SetUp() override {
    ASSERT_TRUE(checkpoint_->ok()) << checkpoint_->status();
    server_ = StartServer();
    ASSERT_NE(server_, nullptr);
    client_ = GetParam() == Transport::kTcp
                  ? TcpClient(*server_)
                  : client::GenerationClient::FromChannel(server_->InProcessChannel());
  }
  std::unique_ptr<EmbeddedServer> server_;
  std::unique_ptr<client::GenerationClient> client_;
};

TEST_P(GenerationServiceTest, UnaryAndStreamingEqualTheEngine) {
  std::vector<dmoe::v1::GenerateRequest> requests;
  requests.push_back(IdsRequest(Ids(12, 1)));  // defaults: threshold 0.95, B 32
  requests.back().mutable_params()->set_max_new_tokens(64);
  requests.push_back(IdsRequest(Ids(40, 2)));
  requests.back().mutable_params()->set_max_new_tokens(50);
  requests.back().mutable_params()->set_block_length(8);
  requests.back().mutable_params()->set_threshold(0.5f);
  requests.push_back(IdsRequest(Ids(5, 3)));
  requests.back().mutable_params()->set_max_new_tokens(20);
  requests.back().mutable_params()->set_temperature(0.7f);
  requests.back().mutable_params()->set_top_k(30);
  requests.back().mutable_params()->set_seed(9);
  requests.back().mutable_params()->set_block_length(4);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    dmoe::v1::GenerateRequest request = requests[i];
    request.mutable_params()->set_logprobs(true);
    DMOE_ASSERT_OK_AND_ASSIGN(dmoe::v1::GenerateResponse unary, client_->Generate(request));
    const engine::GenerationResult solo = EngineRun(*server_, request);
    EXPECT_EQ(std::vector<int32_t>(unary.ids().begin(), unary.ids().end()), solo.ids);
    // Logprobs: the engine's, bit for bit (the engine's are checked against a direct
    // log-softmax in tests/engine).
    std::vector<float> logprobs;
    for (const dmoe::v1::TokenLogprob& t : unary.logprobs()) logprobs.push_back(t.logprob());
    EXPECT_EQ(logprobs, solo.logprobs);
    EXPECT_EQ(unary.stats().forwards(), solo.forwards);
    EXPECT_EQ(unary.stats().finish_reason(), scheduler::ToProto(solo.finish_reason));
    EXPECT_EQ(unary.stats().prompt_tokens(), request.prompt_ids().ids_size());
    EXPECT_EQ(unary.stats().generated_tokens(), unary.ids_size());
    EXPECT_FALSE(unary.request_id().empty());
    EXPECT_EQ(unary.model().name(), "tiny");

    // Streaming: blocks in order, contiguous, concatenating to the unary result.
    std::vector<int32_t> ids;
    std::vector<float> streamed_logprobs;
    std::string text;
    int blocks = 0, canvases = 0;
    dmoe::v1::GenerateRequest stream_request = request;
    stream_request.set_canvas_events(i == 1);
    DMOE_ASSERT_OK_AND_ASSIGN(
        dmoe::v1::FinalEvent final_event,
        client_->GenerateStream(stream_request, [&](const dmoe::v1::GenerateStreamResponse& e) {
          EXPECT_FALSE(e.has_final() && e.has_block());
          if (e.has_block()) {
            EXPECT_EQ(e.block().offset(), static_cast<int64_t>(ids.size()));
            ids.insert(ids.end(), e.block().ids().begin(), e.block().ids().end());
            for (const dmoe::v1::TokenLogprob& t : e.block().logprobs()) {
              streamed_logprobs.push_back(t.logprob());
            }
            text += e.block().text();
            ++blocks;
          }
          if (e.has_canvas()) {
            EXPECT_EQ(e.canvas().tokens_size(), 8);
            EXPECT_EQ(e.canvas().mask_id(), server_->service().Info().mask_id());
            ++canvases;
          }
          return true;
        }));
    text += final_event.text();
    EXPECT_EQ(ids, std::vector<int32_t>(unary.ids().begin(), unary.ids().end()));
    EXPECT_EQ(text, unary.text());
    EXPECT_EQ(streamed_logprobs, logprobs);
    EXPECT_EQ(final_event.stats().forwards(), unary.stats().forwards());
    EXPECT_EQ(final_event.stats().finish_reason(), unary.stats().finish_reason());
    EXPECT_GE(blocks, 1);
    EXPECT_EQ(canvases > 0, i == 1);
  }
  EXPECT_TRUE(Eventually([&] { return Idle(*server_); }));
}

TEST_P(GenerationServiceTest, BadInputIsInvalidArgumentNamingTheField) {
  auto expect_invalid = [&](const dmoe::v1::GenerateRequest& r, const std::string& field) {
    SCOPED_TRACE(field);
    EXPECT_THAT(client_->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
    EXPECT_THAT(client_->GenerateStream(r, nullptr),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(field)));
  };
  expect_invalid(dmoe::v1::GenerateRequest(), "prompt");        // no prompt at all
  expect_invalid(IdsRequest({}), "prompt");                     // empty ids
  dmoe::v1::GenerateRequest empty_text;
  empty_text.set_text("");
  expect_invalid(empty_text, "prompt");
  expect_invalid(IdsRequest({1, 99999}), "prompt");             // id outside the vocabulary
  dmoe::v1::GenerateRequest r = IdsRequest(Ids(4, 1));
  r.mutable_model()->set_name("no-such-model");
  expect_invalid(r, "model.name");
  r = IdsRequest(Ids(4, 1));
  r.mutable_model()->set_version("v9");
  expect_invalid(r, "model.version");
  r = IdsRequest(Ids(kMaxPositions - 100, 1));                  // + 128 new > 2048
  expect_invalid(r, "max_position_embeddings");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_temperature(-1);
  expect_invalid(r, "temperature");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_top_p(1.5f);
  expect_invalid(r, "top_p");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_top_k(-2);
  expect_invalid(r, "top_k");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_threshold(2);
  expect_invalid(r, "threshold");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_block_length(0);
  expect_invalid(r, "block_length");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_max_new_tokens(0);
  expect_invalid(r, "max_new_tokens");
  r = IdsRequest(Ids(4, 1));
  r.mutable_params()->set_mode(static_cast<dmoe::v1::DecodeMode>(7));
  expect_invalid(r, "mode");
  if (!has_tokenizer_) {
    dmoe::v1::GenerateRequest text;
    text.set_text("hello");
    EXPECT_THAT(client_->Generate(text),
                StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("prompt_ids")));
  }
  ExpectAlive(*client_);
  EXPECT_TRUE(Eventually([&] { return Idle(*server_); }));
}

TEST_P(GenerationServiceTest, ListModelsTokenizeAndTextPrompts) {
  DMOE_ASSERT_OK_AND_ASSIGN(dmoe::v1::ListModelsResponse models, client_->ListModels());
  ASSERT_EQ(models.models_size(), 1);
  const dmoe::v1::ModelInfo& m = models.models(0);
  EXPECT_EQ(m.name(), "tiny");
  EXPECT_EQ(m.version(), "v1");
  EXPECT_EQ(m.model_type(), "llada2_moe");
  EXPECT_EQ(m.default_mode(), dmoe::v1::DECODE_MODE_DIFFUSION);
  EXPECT_EQ(m.max_position_embeddings(), kMaxPositions);
  EXPECT_EQ(m.has_tokenizer(), has_tokenizer_);
  EXPECT_GE(m.mask_id(), 0);

  dmoe::v1::TokenizeRequest tokenize;
  tokenize.set_text("The quick brown fox");
  if (!has_tokenizer_) {
    EXPECT_THAT(client_->Tokenize(tokenize), StatusIs(absl::StatusCode::kFailedPrecondition));
    GTEST_SKIP() << "the tiny checkpoint has no tokenizer (tools/data/tiny_tokenizer missing)";
  }
  DMOE_ASSERT_OK_AND_ASSIGN(dmoe::v1::TokenizeResponse tokens, client_->Tokenize(tokenize));
  ASSERT_GT(tokens.ids_size(), 0);
  EXPECT_EQ(tokens.tokens_size(), tokens.ids_size());

  // A text prompt is its token ids.
  dmoe::v1::GenerateRequest text;
  text.set_text("The quick brown fox");
  text.mutable_params()->set_max_new_tokens(24);
  dmoe::v1::GenerateRequest ids = IdsRequest(std::vector<int32_t>(tokens.ids().begin(), tokens.ids().end()));
  ids.mutable_params()->set_max_new_tokens(24);
  DMOE_ASSERT_OK_AND_ASSIGN(dmoe::v1::GenerateResponse a, client_->Generate(text));
  DMOE_ASSERT_OK_AND_ASSIGN(dmoe::v1::GenerateResponse b, client_->Generate(ids));
  EXPECT_EQ(std::vector<int32_t>(a.ids().begin(), a.ids().end()),
            std::vector<int32_t>(b.ids().begin(), b.ids().end()));
  EXPECT_EQ(a.text(), server_->tokenizer()->Decode(std::vector<int32_t>(a.ids().begin(), a.ids().end()), true));

  dmoe::v1::GenerateRequest chat;
  dmoe::v1::ChatMessage* msg = chat.mutable_chat()->add_messages();
  msg->set_role("user");
  msg->set_content("hi");
  chat.mutable_params()->set_max_new_tokens(8);
  DMOE_ASSERT_OK_AND_ASSIGN(dmoe::v1::GenerateResponse c, client_->Generate(chat));
  EXPECT_GT(c.stats().prompt_tokens(), 1);
  msg->set_role("wizard");
  EXPECT_THAT(client_->Generate(chat), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chat")));
}

INSTANTIATE_TEST_SUITE_P(Transports, GenerationServiceTest,
                         ::testing::Values(Transport::kInProcess, Transport::kTcp),
                         [](const ::testing::TestParamInfo<Transport>& info) {
                           return info.param == Transport::kTcp ? "Tcp" : "InProcess";
                         });

// Cancellation, deadlines, backpressure and drain, over TCP.
class GenerationServiceLifecycleTest : public ServiceTestBase, public ::testing::Test {
 protected:
  static void SetUpTestSuite() { MakeCheckpoint(); }
  void SetUp() override { ASSERT_TRUE(checkpoint_->ok()) << checkpoint_->status(); }
};

TEST_F(GenerationServiceLifecycleTest, ClientCancellationFreesKv) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = TcpClient(*server);
  int blocks = 0;
  int64_t pages_while_running = 0;
  auto status = client->GenerateStream(LongRequest(1500), [&](const dmoe::v1::GenerateStreamResponse& e) {
    if (e.has_block()) ++blocks;
    pages_while_running = server->kv_pool().pages_in_use();
    return blocks < 2;  // cancel after the second block
  });
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_GT(pages_while_running, 0);
  EXPECT_TRUE(Eventually([&] { return Idle(*server); }))
      << "pages in use: " << server->kv_pool().pages_in_use();
  EXPECT_TRUE(Eventually([&] { return server->service().active_calls() == 0; }));
  ExpectAlive(*client);
}

TEST_F(GenerationServiceLifecycleTest, DeadlineExceededFreesKv) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = TcpClient(*server);
  EXPECT_THAT(client->Generate(LongRequest(1500), {.timeout = absl::Milliseconds(200)}),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(client->GenerateStream(LongRequest(1500), nullptr, {.timeout = absl::Milliseconds(200)}),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(Eventually([&] { return Idle(*server); }));
  EXPECT_TRUE(Eventually([&] { return server->service().active_calls() == 0; }));
  ExpectAlive(*client);
}

// One long request fills the KV cache (60 pages; it needs 49), a second waits in the queue
// (max_queue 1), a third is refused with RESOURCE_EXHAUSTED.
TEST_F(GenerationServiceLifecycleTest, BackpressureIsResourceExhausted) {
  auto server = StartServer(/*kv_pages=*/60, /*max_queue=*/1);
  ASSERT_NE(server, nullptr);
  auto client = TcpClient(*server);
  std::atomic<bool> stop{false};
  auto long_stream = [&] {
    return client->GenerateStream(LongRequest(1500),
                                  [&](const dmoe::v1::GenerateStreamResponse&) { return !stop.load(); });
  };
  auto first = std::async(std::launch::async, long_stream);
  ASSERT_TRUE(Eventually([&] { return server->scheduler().Stats().running == 1; }));
  auto second = std::async(std::launch::async, long_stream);
  ASSERT_TRUE(Eventually([&] { return server->scheduler().Stats().waiting == 1; }));
  dmoe::v1::GenerateRequest third = IdsRequest(Ids(4, 5));
  third.mutable_params()->set_max_new_tokens(4);
  EXPECT_THAT(client->Generate(third),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queue is full")));
  // A request that could never fit the KV cache is refused too.
  EXPECT_THAT(client->Generate(LongRequest(1990)),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("KV")));
  stop.store(true);
  EXPECT_THAT(first.get(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(second.get(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_TRUE(Eventually([&] { return Idle(*server); }));
  ExpectAlive(*client);
}

// Drain: health turns NOT_SERVING, new calls get UNAVAILABLE, the request in flight finishes.
// A step observer holds the step thread while the test looks, so the request is surely still
// in flight then.
TEST_F(GenerationServiceLifecycleTest, GracefulDrainFinishesInFlightRequests) {
  absl::Mutex mu;
  bool hold = false;
  std::atomic<bool> held{false};
  scheduler::SchedulerOptions scheduler_options;
  scheduler_options.step_observer = [&](const scheduler::StepReport&) {
    absl::MutexLock lock(&mu);
    held = hold;
    mu.Await(absl::Condition(+[](bool* h) { return !*h; }, &hold));
  };
  auto server = StartServer(8192, 64, scheduler_options);
  ASSERT_NE(server, nullptr);
  auto client = TcpClient(*server);
  auto channel = server->InProcessChannel();
  EXPECT_EQ(HealthStatus(channel, "").value_or(-1), 1);  // SERVING
  EXPECT_EQ(HealthStatus(channel, "dmoe.v1.Generation").value_or(-1), 1);
  EXPECT_THAT(HealthStatus(channel, "no.such.Service"), StatusIs(absl::StatusCode::kNotFound));

  std::atomic<int> blocks{0};
  auto in_flight = std::async(std::launch::async, [&] {
    return client->GenerateStream(LongRequest(100), [&](const dmoe::v1::GenerateStreamResponse& e) {
      if (e.has_block()) ++blocks;
      return true;
    });
  });
  ASSERT_TRUE(Eventually([&] { return blocks.load() >= 1; }));
  {
    absl::MutexLock lock(&mu);
    hold = true;
  }
  ASSERT_TRUE(Eventually([&] { return held.load(); }));  // the step thread is parked
  std::thread drain([&] { server->Drain(absl::Seconds(30)); });
  EXPECT_TRUE(Eventually([&] {
    absl::StatusOr<int> s = HealthStatus(channel, "");
    return s.ok() && *s == 2;  // NOT_SERVING
  }));
  dmoe::v1::GenerateRequest late = IdsRequest(Ids(4, 5));
  late.mutable_params()->set_max_new_tokens(4);
  EXPECT_THAT(client->Generate(late), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("draining")));
  {
    absl::MutexLock lock(&mu);
    hold = false;
  }
  absl::StatusOr<dmoe::v1::FinalEvent> result = in_flight.get();
  drain.join();
  ASSERT_THAT(result, dmoe_testing::IsOk());
  EXPECT_EQ(result->stats().generated_tokens(), 100);
  EXPECT_EQ(server->kv_pool().pages_in_use(), 0);
}

}  // namespace
}  // namespace dmoe::serve
