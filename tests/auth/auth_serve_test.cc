// Security of `dmoe serve`'s API (service): an EmbeddedServer (scheduler + GenerationServer +
// the tiny diffusion model) with a keys file and TLS on 127.0.0.1:0, called through the C++
// client over TLS. Every Generation route refuses a missing or unknown key and serves the
// right one; a plaintext client is refused; tokens per minute is enforced; the HTTP API maps a
// bad bearer to 401 and passes a good one on.
#include <httplib.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cpp/generation_client.h"
#include "common/auth/api_keys.h"
#include "common/auth/certificates.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "serve/embedded_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace dmoe {
namespace {

using dmoe_testing::IsOk;
using dmoe_testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kUserKey[] = "dmoe-serve-user";
constexpr char kThriftyKey[] = "dmoe-serve-thrifty";

class AuthServeTest : public ::testing::Test {
 protected:
  static absl::StatusOr<std::unique_ptr<serve::EmbeddedServer>> StartServer(
      const auth::TlsOptions& tls, const std::string& keys_file) {
    serve::EmbeddedServerOptions options;  // field by field: GCC 12 misreads the nested init
    options.api.model_dir = DMOE_TINY_DIFFUSION_DIR;
    options.api.http_listen = "127.0.0.1:0";
    options.api.api_keys_file = keys_file;
    options.api.tls = tls;
    options.num_threads = 2;
    return serve::EmbeddedServer::Start(options);
  }
  static void SetUpTestSuite() {
    dir_ = new dmoe_testing::TempDir();
    ASSERT_THAT(auth::MakeCertificateAuthority(dir_->path()), IsOk());
    absl::StatusOr<auth::TlsOptions> tls = auth::IssueCertificate(dir_->path(), "serve");
    ASSERT_THAT(tls.status(), IsOk());
    dmoe_testing::WriteFileOrDie(
        dir_->Join("keys"),
        absl::StrCat("acme user ", auth::HexDigest(auth::Sha256(kUserKey)), "\n",
                     "thrifty user ", auth::HexDigest(auth::Sha256(kThriftyKey)), " tpm=1\n"));
    auto started = StartServer(*tls, dir_->Join("keys"));
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }

  static std::unique_ptr<client::GenerationClient> Client(const std::string& key,
                                                          bool tls = true) {
    client::ClientOptions options;
    options.target = absl::StrCat("localhost:", server_->port());
    options.timeout = absl::Seconds(30);
    options.api_key = key;
    if (tls) options.tls_ca_file = dir_->Join("ca.pem");
    auto c = client::GenerationClient::Connect(options);
    EXPECT_THAT(c.status(), IsOk());
    return *std::move(c);
  }
  static dmoe::v1::GenerateRequest Request() {
    dmoe::v1::GenerateRequest r;
    r.set_text("red cat");
    r.mutable_params()->set_max_new_tokens(8);
    return r;
  }
  // Each route's status with `key`.
  static std::vector<absl::StatusCode> EveryRoute(const std::string& key) {
    auto c = Client(key);
    dmoe::v1::TokenizeRequest tokenize;
    tokenize.set_text("red cat");
    return {c->Generate(Request()).status().code(),
            c->GenerateStream(Request(), nullptr).status().code(),
            c->Tokenize(tokenize).status().code(), c->ListModels().status().code()};
  }
  httplib::Client Http() {
    const std::string& a = server_->http_address();
    httplib::Client c(a.substr(0, a.rfind(':')), std::stoi(a.substr(a.rfind(':') + 1)));
    c.set_read_timeout(60, 0);
    return c;
  }

  static dmoe_testing::TempDir* dir_;
  static serve::EmbeddedServer* server_;
};

dmoe_testing::TempDir* AuthServeTest::dir_ = nullptr;
serve::EmbeddedServer* AuthServeTest::server_ = nullptr;

using Codes = std::vector<absl::StatusCode>;

TEST_F(AuthServeTest, EveryRouteNeedsAKey) {
  EXPECT_EQ(EveryRoute(""), Codes(4, absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(EveryRoute("dmoe-wrong"), Codes(4, absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(EveryRoute(kUserKey), Codes(4, absl::StatusCode::kOk));
}

TEST_F(AuthServeTest, PlaintextClientIsRefused) {
  EXPECT_THAT(Client(kUserKey, /*tls=*/false)->ListModels().status(),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(AuthServeTest, TokensPerMinute) {
  auto c = Client(kThriftyKey);
  EXPECT_THAT(c->Generate(Request()).status(), IsOk());  // spends more than the minute's 1
  EXPECT_THAT(c->Generate(Request()).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("retry after")));
}

TEST_F(AuthServeTest, HttpPassesTheBearerOn) {
  httplib::Client http = Http();
  const std::string body = R"({"prompt": "red cat", "max_tokens": 8})";
  auto wrong = http.Post("/v1/completions", {{"Authorization", "Bearer dmoe-wrong"}}, body,
                         "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  EXPECT_THAT(wrong->body, HasSubstr("authentication_error"));
  auto ok = http.Post("/v1/completions", {{"Authorization", std::string("Bearer ") + kUserKey}},
                      body, "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  auto health = http.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200) << health->body;
}

}  // namespace
}  // namespace dmoe
