// API keys at the public front (service): a GenerationProxy + RouterAdmin with a keys file on
// 127.0.0.1:0 in front of a fake Generation backend, the OpenAI HTTP API over the router's
// channel, all called through real stubs / a real HTTP client. Every route refuses a missing
// key, a wrong key and (RouterAdmin) a user key; the right key works; tenant limits answer
// RESOURCE_EXHAUSTED (HTTP 429); the HTTP API maps a bad bearer to 401 and keeps /health open.
#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/auth/api_keys.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "http/openai_server.h"
#include "metrics/catalog.h"
#include "prometheus/registry.h"
#include "proto/dmoe/v1/admin.grpc.pb.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "router/generation_proxy.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::router {
namespace {

using ::testing::HasSubstr;

constexpr char kUserKey[] = "dmoe-user-key";
constexpr char kAdminKey[] = "dmoe-admin-key";
constexpr char kLimitedKey[] = "dmoe-limited-key";

// Answers every call; Generate waits for `release` when `hold` is set.
class FakeGeneration final : public dmoe::v1::Generation::CallbackService {
 public:
  std::atomic<bool> hold{false};
  absl::Notification release;
  std::atomic<int> calls{0};
  std::string last_authorization;  // written by the call, read after it ended

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const dmoe::v1::GenerateRequest*,
                                     dmoe::v1::GenerateResponse* response) override {
    Note(*context);
    response->set_text("ok");
    response->mutable_stats()->set_generated_tokens(1);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (hold) {
      std::thread([this, reactor] {
        release.WaitForNotification();
        reactor->Finish(grpc::Status::OK);
      }).detach();
    } else {
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }
  grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest*) override {
    Note(*context);
    class Writer final : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
     public:
      Writer() {
        event_.mutable_block()->set_text("ok");
        event_.mutable_block()->add_ids(1);
        final_.mutable_final()->mutable_model()->set_name("tiny");
        StartWrite(&event_);
      }
      void OnWriteDone(bool ok) override {
        if (ok && !wrote_final_) {
          wrote_final_ = true;
          StartWrite(&final_);
        } else {
          Finish(grpc::Status::OK);
        }
      }
      void OnDone() override { delete this; }

     private:
      dmoe::v1::GenerateStreamResponse event_, final_;
      bool wrote_final_ = false;
    };
    return new Writer();
  }
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const dmoe::v1::TokenizeRequest*,
                                     dmoe::v1::TokenizeResponse* response) override {
    Note(*context);
    response->add_ids(7);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dmoe::v1::ListModelsRequest*,
                                       dmoe::v1::ListModelsResponse* response) override {
    Note(*context);
    response->add_models()->set_name("tiny");
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  void Note(const grpc::CallbackServerContext& context) {
    ++calls;
    auto it = context.client_metadata().find("authorization");
    last_authorization =
        it == context.client_metadata().end() ? "" : std::string(it->second.data(), it->second.size());
  }
};

class AuthRouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder backend_builder;
    int backend_port = 0;
    backend_builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                                     &backend_port);
    backend_builder.RegisterService(&backend_);
    backend_server_ = backend_builder.BuildAndStart();
    ASSERT_NE(backend_port, 0);

    const std::string path = dir_.Join("keys");
    dmoe_testing::WriteFileOrDie(
        path, absl::StrCat("# tenants\n", "acme user ", auth::HexDigest(auth::Sha256(kUserKey)),
                           "\n", "ops admin ", auth::HexDigest(auth::Sha256(kAdminKey)), "\n",
                           "small user ", auth::HexDigest(auth::Sha256(kLimitedKey)),
                           " streams=1 rps=1000\n"));
    auth::ApiKeysOptions keys_options;
    keys_options.path = path;
    keys_options.refusals =
        &metrics::CounterFamily(*registry_, "dmoe_api_refusals_total", "v1");
    DMOE_ASSERT_OK_AND_ASSIGN(keys_, auth::ApiKeys::Load(keys_options));

    GenerationProxyOptions options;
    options.backends = {{"v1", absl::StrCat("127.0.0.1:", backend_port)}};
    options.api_keys = keys_.get();
    options.registry = registry_;
    DMOE_ASSERT_OK_AND_ASSIGN(proxy_, GenerationProxy::Create(options));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(proxy_.get());
    builder.RegisterService(&proxy_->admin_service());
    grpc::EnableDefaultHealthCheckService(true);
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    server_->GetHealthCheckService()->SetServingStatus(
        dmoe::v1::Generation::service_full_name(), true);
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                       grpc::InsecureChannelCredentials());
    generation_ = dmoe::v1::Generation::NewStub(channel);
    admin_ = dmoe::v1::RouterAdmin::NewStub(channel);
    DMOE_ASSERT_OK_AND_ASSIGN(
        http_, http::OpenAiServer::Start({.listen = "127.0.0.1:0"},
                                         server_->InProcessChannel(grpc::ChannelArguments())));
  }
  void TearDown() override {
    if (!backend_.release.HasBeenNotified()) backend_.release.Notify();
    http_.reset();
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    if (backend_server_) backend_server_->Shutdown(std::chrono::system_clock::now());
  }

  static void Authorize(grpc::ClientContext& context, const std::string& key) {
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
  }

  // Every public route with `key`; returns each call's code.
  std::vector<grpc::StatusCode> CallEveryRoute(const std::string& key) {
    std::vector<grpc::StatusCode> codes;
    dmoe::v1::GenerateRequest request;
    request.mutable_prompt_ids()->add_ids(3);
    {
      grpc::ClientContext context;
      Authorize(context, key);
      dmoe::v1::GenerateResponse response;
      codes.push_back(generation_->Generate(&context, request, &response).error_code());
    }
    {
      grpc::ClientContext context;
      Authorize(context, key);
      auto reader = generation_->GenerateStream(&context, request);
      dmoe::v1::GenerateStreamResponse event;
      while (reader->Read(&event)) {
      }
      codes.push_back(reader->Finish().error_code());
    }
    {
      grpc::ClientContext context;
      Authorize(context, key);
      dmoe::v1::TokenizeRequest tokenize;
      tokenize.set_text("hi");
      dmoe::v1::TokenizeResponse response;
      codes.push_back(generation_->Tokenize(&context, tokenize, &response).error_code());
    }
    {
      grpc::ClientContext context;
      Authorize(context, key);
      dmoe::v1::ListModelsResponse response;
      codes.push_back(generation_->ListModels(&context, {}, &response).error_code());
    }
    return codes;
  }
  std::vector<grpc::StatusCode> CallAdmin(const std::string& key) {
    std::vector<grpc::StatusCode> codes;
    {
      grpc::ClientContext context;
      Authorize(context, key);
      dmoe::v1::GetSplitResponse response;
      codes.push_back(admin_->GetSplit(&context, {}, &response).error_code());
    }
    {
      grpc::ClientContext context;
      Authorize(context, key);
      dmoe::v1::SetSplitRequest request;
      dmoe::v1::VersionWeight* w = request.add_weights();
      w->set_version("v1");
      w->set_percent(100);
      dmoe::v1::SetSplitResponse response;
      codes.push_back(admin_->SetSplit(&context, request, &response).error_code());
    }
    return codes;
  }
  httplib::Client Http() {
    const std::string& a = http_->address();
    httplib::Client c(a.substr(0, a.rfind(':')), std::stoi(a.substr(a.rfind(':') + 1)));
    c.set_read_timeout(30, 0);
    return c;
  }

  dmoe_testing::TempDir dir_;
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  FakeGeneration backend_;
  std::unique_ptr<grpc::Server> backend_server_;
  std::unique_ptr<auth::ApiKeys> keys_;
  std::unique_ptr<GenerationProxy> proxy_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<dmoe::v1::Generation::Stub> generation_;
  std::unique_ptr<dmoe::v1::RouterAdmin::Stub> admin_;
  std::unique_ptr<http::OpenAiServer> http_;
};

using Codes = std::vector<grpc::StatusCode>;

TEST_F(AuthRouterTest, EveryRouteRefusesMissingAndWrongKeys) {
  const Codes unauthenticated(4, grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CallEveryRoute(""), unauthenticated);
  EXPECT_EQ(CallEveryRoute("dmoe-wrong"), unauthenticated);
  EXPECT_EQ(CallAdmin(""), Codes(2, grpc::StatusCode::UNAUTHENTICATED));
  EXPECT_EQ(CallAdmin("dmoe-wrong"), Codes(2, grpc::StatusCode::UNAUTHENTICATED));
  EXPECT_EQ(backend_.calls.load(), 0) << "a refused call reached the backend";
}

TEST_F(AuthRouterTest, UserKeyIsRefusedOnAdminRoutes) {
  EXPECT_EQ(CallAdmin(kUserKey), Codes(2, grpc::StatusCode::PERMISSION_DENIED));
}

TEST_F(AuthRouterTest, RightKeysWork) {
  EXPECT_EQ(CallEveryRoute(kUserKey), Codes(4, grpc::StatusCode::OK));
  EXPECT_EQ(backend_.last_authorization, absl::StrCat("Bearer ", kUserKey))
      << "the key goes on to the scheduler";
  EXPECT_EQ(CallEveryRoute(kAdminKey), Codes(4, grpc::StatusCode::OK));
  EXPECT_EQ(CallAdmin(kAdminKey), Codes(2, grpc::StatusCode::OK));
}

TEST_F(AuthRouterTest, ConcurrentStreamLimit) {
  backend_.hold = true;
  std::thread first([this] {
    grpc::ClientContext context;
    Authorize(context, kLimitedKey);
    dmoe::v1::GenerateRequest request;
    request.mutable_prompt_ids()->add_ids(3);
    dmoe::v1::GenerateResponse response;
    EXPECT_TRUE(generation_->Generate(&context, request, &response).ok());
  });
  while (backend_.calls.load() == 0) absl::SleepFor(absl::Milliseconds(5));
  grpc::ClientContext context;
  Authorize(context, kLimitedKey);
  dmoe::v1::GenerateRequest request;
  request.mutable_prompt_ids()->add_ids(3);
  dmoe::v1::GenerateResponse response;
  grpc::Status second = generation_->Generate(&context, request, &response);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(second.error_message(), HasSubstr("retry"));
  // Calls that take no stream slot still go through.
  {
    grpc::ClientContext tokenize_context;
    Authorize(tokenize_context, kLimitedKey);
    dmoe::v1::TokenizeRequest tokenize;
    tokenize.set_text("hi");
    dmoe::v1::TokenizeResponse tokens;
    EXPECT_TRUE(generation_->Tokenize(&tokenize_context, tokenize, &tokens).ok());
  }
  backend_.release.Notify();
  first.join();
  backend_.hold = false;
  EXPECT_EQ(CallEveryRoute(kLimitedKey), Codes(4, grpc::StatusCode::OK));
}

TEST_F(AuthRouterTest, HttpMapsBearerToGrpc) {
  httplib::Client http = Http();
  const std::string body = R"({"prompt": "hi", "max_tokens": 4})";
  auto none = http.Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_THAT(none->body, HasSubstr("authentication_error"));
  auto wrong = http.Post("/v1/completions", {{"Authorization", "Bearer dmoe-wrong"}}, body,
                         "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  auto models = http.Get("/v1/models", {{"Authorization", "Bearer dmoe-wrong"}});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
  auto ok = http.Get("/v1/models", {{"Authorization", std::string("Bearer ") + kUserKey}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  auto health = http.Get("/health");  // no key
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200) << health->body;
}

}  // namespace
}  // namespace dmoe::router
