// The OpenAI-compatible HTTP API of `dmoe serve` (an EmbeddedServer on the committed tiny
// diffusion model): plain HTTP, curl, and the official `openai` npm package as real clients.
// At temperature 0 every path gives the text of the gRPC API; stream chunks concatenate to the
// unary text; bad requests get OpenAI's error body with the right status.
#include <httplib.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "clients/cpp/generation_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "serve/embedded_server.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/testing/command.h"
#include "tests/testing/http.h"

namespace dmoe {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

constexpr char kChat[] = "Reverse the list:\nred\ncat\nmoon\nship";

class OpenAiHttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    serve::EmbeddedServerOptions options;  // field by field: GCC 12 misreads the nested init
    options.api.model_dir = DMOE_TINY_DIFFUSION_DIR;
    options.api.http_listen = "127.0.0.1:0";
    options.num_threads = 2;
    auto started = serve::EmbeddedServer::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  // The gRPC API's text for the same chat request (temperature 0, 32 tokens).
  static std::string GrpcChatText() {
    auto client = client::GenerationClient::FromChannel(server_->InProcessChannel());
    dmoe::v1::GenerateRequest request;
    auto* m = request.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(kChat);
    request.mutable_params()->set_max_new_tokens(32);
    auto response = client->Generate(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->text() : "";
  }

  httplib::Client Http() {
    const std::string& a = server_->http_address();
    httplib::Client c(a.substr(0, a.rfind(':')), std::stoi(a.substr(a.rfind(':') + 1)));
    c.set_read_timeout(60, 0);
    return c;
  }

  static serve::EmbeddedServer* server_;
};

serve::EmbeddedServer* OpenAiHttpTest::server_ = nullptr;

TEST_F(OpenAiHttpTest, ChatCompletionEqualsTheGrpcApi) {
  httplib::Client http = Http();
  const Json body = {{"messages", {{{"role", "user"}, {"content", kChat}}}}, {"max_tokens", 32}};
  auto res = http.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json j = Json::parse(res->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "tiny-diffusion");
  EXPECT_EQ(j["choices"][0]["message"]["content"], GrpcChatText());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_GT(j["usage"]["prompt_tokens"], 0);
  EXPECT_GT(j["usage"]["forwards"], 0);
  EXPECT_EQ(j["usage"]["total_tokens"],
            j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
}

TEST_F(OpenAiHttpTest, StreamedChunksConcatenateToTheUnaryText) {
  httplib::Client http = Http();
  const Json body = {{"messages", {{{"role", "user"}, {"content", kChat}}}},
                     {"max_tokens", 32},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  auto res = http.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_THAT(res->get_header_value("Content-Type"), HasSubstr("text/event-stream"));
  std::string text, finish;
  bool usage = false, done = false;
  size_t at = 0;
  while ((at = res->body.find("data: ", at)) != std::string::npos) {
    const size_t end = res->body.find("\n\n", at);
    const std::string data = res->body.substr(at + 6, end - at - 6);
    at = end;
    ASSERT_FALSE(done) << "data after [DONE]";
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    const Json chunk = Json::parse(data);
    EXPECT_THAT(chunk["id"].get<std::string>(), ::testing::StartsWith("chatcmpl-req-"));
    if (!chunk["usage"].is_null()) usage = true;
    for (const Json& choice : chunk["choices"]) {
      if (choice["delta"].contains("content")) text += choice["delta"]["content"];
      if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
    }
  }
  EXPECT_TRUE(done);
  EXPECT_TRUE(usage);
  EXPECT_EQ(finish, "stop");
  EXPECT_EQ(text, GrpcChatText());
}

TEST_F(OpenAiHttpTest, ModelsHealthAndErrors) {
  httplib::Client http = Http();
  auto models = http.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(Json::parse(models->body)["data"][0]["id"], "tiny-diffusion");
  auto health = http.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* message;
  };
  const Case cases[] = {
      {"/v1/completions", R"({"prompt": "x", "max_tokens": -1})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt": 5})", 400, "prompt"},
      {"/v1/completions", "{", 400, "not valid JSON"},
      {"/v1/completions", R"({"prompt": "x", "model": "other"})", 400, "model.name"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 100000000})", 400,
       "prompt is too long"},
      {"/v1/chat/completions", R"({"messages": "hi"})", 400, "messages"},
      {"/v1/nowhere", "{}", 404, "no route"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    auto res = http.Post(c.path, c.body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, c.status);
    const Json j = Json::parse(res->body, nullptr, false);
    ASSERT_TRUE(j.contains("error")) << res->body;
    EXPECT_THAT(j["error"]["message"].get<std::string>(), HasSubstr(c.message));
  }
  // The server keeps serving after every one of them.
  auto again = http.Get("/health");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
}

TEST_F(OpenAiHttpTest, StopStringsTruncate) {
  httplib::Client http = Http();
  const std::string full = GrpcChatText();
  ASSERT_NE(full.find("moon"), std::string::npos) << full;
  const Json body = {{"messages", {{{"role", "user"}, {"content", kChat}}}},
                     {"max_tokens", 32},
                     {"stop", "moon"}};
  auto res = http.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  const Json j = Json::parse(res->body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], full.substr(0, full.find("moon")));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
}

// Server-sent chunks of a streamed response: their text concatenated, the finish reason and
// the per-token logprobs of every chunk.
struct SseResult {
  std::string text, finish;
  Json logprobs = Json::array();
};
SseResult ReadSse(const std::string& body, bool chat) {
  SseResult out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string data = body.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") break;
    const Json chunk = Json::parse(data);
    for (const Json& choice : chunk["choices"]) {
      if (chat && choice["delta"].contains("content")) out.text += choice["delta"]["content"];
      if (!chat) out.text += choice["text"];
      if (!choice["finish_reason"].is_null()) out.finish = choice["finish_reason"];
      if (!choice["logprobs"].is_null()) {
        for (const Json& t : choice["logprobs"]["content"]) out.logprobs.push_back(t);
      }
    }
  }
  return out;
}

TEST_F(OpenAiHttpTest, StreamedStopStringsTruncateLikeUnary) {
  httplib::Client http = Http();
  const std::string full = GrpcChatText();
  const size_t at = full.find("moon");
  ASSERT_NE(at, std::string::npos) << full;
  const Json body = {{"messages", {{{"role", "user"}, {"content", kChat}}}},
                     {"max_tokens", 32},
                     {"stop", {"moon"}},
                     {"stream", true}};
  auto res = http.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  const SseResult sse = ReadSse(res->body, /*chat=*/true);
  EXPECT_EQ(sse.text, full.substr(0, at));
  EXPECT_EQ(sse.finish, "stop");
}

TEST_F(OpenAiHttpTest, LogprobsOfTheChosenTokens) {
  httplib::Client http = Http();
  const Json chat = {{"messages", {{{"role", "user"}, {"content", kChat}}}},
                     {"max_tokens", 32},
                     {"logprobs", true}};
  auto res = http.Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(res);
  const Json j = Json::parse(res->body);
  const Json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_TRUE(content.is_array()) << res->body;
  EXPECT_EQ(static_cast<int>(content.size()), j["usage"]["completion_tokens"].get<int>());
  std::string bytes;
  for (const Json& t : content) {
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    for (int b : t["bytes"]) bytes += static_cast<char>(b);
  }
  EXPECT_EQ(bytes, j["choices"][0]["message"]["content"]);

  // Streamed: the same logprobs, chunk by chunk.
  Json streamed_body = chat;
  streamed_body["stream"] = true;
  auto streamed = http.Post("/v1/chat/completions", streamed_body.dump(), "application/json");
  ASSERT_TRUE(streamed);
  EXPECT_EQ(ReadSse(streamed->body, /*chat=*/true).logprobs, content);

  // Completions: tokens / token_logprobs / text_offset.
  const Json completion = {{"prompt", "The quick brown"}, {"max_tokens", 16}, {"logprobs", 0}};
  auto c = http.Post("/v1/completions", completion.dump(), "application/json");
  ASSERT_TRUE(c);
  const Json cj = Json::parse(c->body);
  const Json& lp = cj["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.is_object()) << c->body;
  EXPECT_EQ(lp["tokens"].size(), lp["token_logprobs"].size());
  EXPECT_EQ(static_cast<int>(lp["tokens"].size()), cj["usage"]["completion_tokens"].get<int>());

  // Alternatives are refused with OpenAI's error body naming the parameter.
  Json top = chat;
  top["top_logprobs"] = 2;
  auto refused = http.Post("/v1/chat/completions", top.dump(), "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 400);
  EXPECT_EQ(Json::parse(refused->body)["error"]["param"], "top_logprobs");
}

TEST_F(OpenAiHttpTest, Curl) {
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      "curl -sS -N http://" + server_->http_address() +
      "/v1/completions -H 'Content-Type: application/json' "
      "-d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 16, \"stream\": true}'");
  if (r.exit_code == 127) GTEST_SKIP() << "curl not installed";
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"object\":\"text_completion\""));
  EXPECT_THAT(r.out, ::testing::EndsWith("data: [DONE]\n\n"));
}

// The official openai npm package (scripts/setup installs it in tests/http/openai_node).
TEST_F(OpenAiHttpTest, OfficialOpenAiNodeClient) {
  const std::string dir = std::string(DMOE_SOURCE_DIR) + "/tests/http/openai_node";
  if (!std::filesystem::exists(dir + "/node_modules/openai")) {
    GTEST_SKIP() << "openai npm package missing: run scripts/setup";
  }
  const dmoe_testing::CommandResult r = dmoe_testing::RunCommand(
      "node " + dir + "/client_test.js http://" + server_->http_address() + "/v1 '" +
      std::string("Reverse the list:\nred\ncat\nmoon\nship") + "' 'Once upon a time'");
  if (r.exit_code == 127) GTEST_SKIP() << "node not installed";
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j["models"][0], "tiny-diffusion");
  const std::string text = GrpcChatText();
  EXPECT_EQ(j["chat"]["text"], text);
  EXPECT_EQ(j["chat"]["finish"], "stop");
  std::string streamed;
  for (const Json& c : j["chat_stream"]["chunks"]) streamed += c.get<std::string>();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(j["chat_stream"]["finish"], "stop");
  EXPECT_GT(j["chat_stream"]["usage"]["forwards"], 0);
  std::string completion;
  for (const Json& c : j["completion_stream"]) completion += c.get<std::string>();
  EXPECT_EQ(completion, j["completion"]["text"]);
  EXPECT_EQ(j["bad"]["status"], 400);
  EXPECT_EQ(j["bad"]["param"], "max_tokens");
}

// A client that goes away mid-stream cancels its request: the scheduler frees the KV pages at
// the next block, long before the generation would have ended, and counts it as cancelled on
// /metrics. The server's stop ids are overridden with one the model never writes, so only the
// length limit (4000 tokens, seconds of decoding) would end it.
TEST(OpenAiHttpDisconnectTest, ClosingTheStreamFreesTheRequestsKv) {
  serve::EmbeddedServerOptions options;  // field by field: GCC 12 misreads the nested init
  options.api.model_dir = DMOE_TINY_DIFFUSION_DIR;
  options.api.http_listen = "127.0.0.1:0";
  options.api.metrics_listen = "127.0.0.1:0";
  options.api.stop_ids = std::vector<int32_t>{};  // set and empty: only the length limit
  options.num_threads = 2;
  auto server = serve::EmbeddedServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string& a = (*server)->http_address();
  httplib::Client http(a.substr(0, a.rfind(':')), std::stoi(a.substr(a.rfind(':') + 1)));
  const Json body = {{"prompt", "red cat moon"}, {"max_tokens", 4000}, {"stream", true},
                     {"threshold", 1.0}};
  int chunks = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
    return ++chunks < 2;  // then hang up
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  EXPECT_FALSE(http.send(req, response, error));  // the client cancelled its own read
  EXPECT_EQ(chunks, 2);

  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  auto idle = [&] {
    const scheduler::SchedulerStats stats = (*server)->scheduler().Stats();
    return stats.running == 0 && stats.waiting == 0 && stats.kv_pages_reserved == 0;
  };
  while (!idle() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(idle());
  auto metrics = dmoe_testing::HttpGet(absl::StrCat("http://", (*server)->metrics_address(), "/metrics"));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("finished_reason=\"cancelled\"} 1\n"));
  EXPECT_THAT(*metrics, HasSubstr("finished_reason=\"length\"} 0\n"));
  EXPECT_THAT(*metrics, HasSubstr("dmoe_kv_cache_pages_used{model_version=\"\"} 0\n"));
}

}  // namespace
}  // namespace dmoe
