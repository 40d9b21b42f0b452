// Stop strings and logprobs through the Generation API (service): an EmbeddedServer on the
// committed tiny diffusion model, whose answer to the reversal prompt is known text, so a stop
// string inside it must cut the output right before the match — unary and streamed alike, ids
// through the token that completed the match — and logprobs must come one per id, the same on
// both paths.
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/generation_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "serve/embedded_server.h"
#include "tests/testing/status_matchers.h"

namespace dmoe {
namespace {

using dmoe_testing::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kChat[] = "Reverse the list:\nred\ncat\nmoon\nship";

std::vector<int32_t> Ids(const google::protobuf::RepeatedField<int32_t>& ids) {
  return {ids.begin(), ids.end()};
}

class StopLogprobsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    serve::EmbeddedServerOptions options;  // field by field: GCC 12 misreads the nested init
    options.api.model_dir = DMOE_TINY_DIFFUSION_DIR;
    options.num_threads = 2;
    auto started = serve::EmbeddedServer::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { client_ = client::GenerationClient::FromChannel(server_->InProcessChannel()); }

  static dmoe::v1::GenerateRequest Chat(int64_t max_new_tokens = 32) {
    dmoe::v1::GenerateRequest request;
    auto* m = request.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(kChat);
    request.mutable_params()->set_max_new_tokens(max_new_tokens);
    return request;
  }

  // The streamed result: concatenated text (final tail included), ids, logprobs, final stats.
  struct Streamed {
    std::string text;
    std::vector<int32_t> ids;
    std::vector<dmoe::v1::TokenLogprob> logprobs;
    dmoe::v1::GenerationStats stats;
  };
  Streamed Stream(const dmoe::v1::GenerateRequest& request) {
    Streamed out;
    auto final_event = client_->GenerateStream(request, [&](const dmoe::v1::GenerateStreamResponse& e) {
      if (e.has_block()) {
        EXPECT_EQ(e.block().offset(), static_cast<int64_t>(out.ids.size()));
        out.text += e.block().text();
        out.ids.insert(out.ids.end(), e.block().ids().begin(), e.block().ids().end());
        out.logprobs.insert(out.logprobs.end(), e.block().logprobs().begin(), e.block().logprobs().end());
      }
      return true;
    });
    EXPECT_TRUE(final_event.ok()) << final_event.status();
    if (final_event.ok()) {
      out.text += final_event->text();
      out.stats = final_event->stats();
    }
    return out;
  }

  static serve::EmbeddedServer* server_;
  std::unique_ptr<client::GenerationClient> client_;
};

serve::EmbeddedServer* StopLogprobsTest::server_ = nullptr;

TEST_F(StopLogprobsTest, StopStringCutsTheOutputBeforeTheMatchOnBothPaths) {
  auto full = client_->Generate(Chat());
  ASSERT_TRUE(full.ok()) << full.status();
  const size_t at = full->text().find("moon");
  ASSERT_NE(at, std::string::npos) << full->text();
  ASSERT_GT(at, 0u);

  dmoe::v1::GenerateRequest request = Chat();
  request.mutable_params()->add_stop("never-in-the-output");
  request.mutable_params()->add_stop("moon");
  auto cut = client_->Generate(request);
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(cut->text(), full->text().substr(0, at));
  EXPECT_EQ(cut->stats().finish_reason(), dmoe::v1::FINISH_REASON_STOP);
  EXPECT_EQ(cut->stats().matched_stop(), "moon");
  EXPECT_EQ(cut->stats().generated_tokens(), cut->ids_size());
  // The ids run through the token that completed "moon": a prefix of the full output's.
  ASSERT_LT(cut->ids_size(), full->ids_size());
  const std::vector<int32_t> full_ids = Ids(full->ids());
  EXPECT_THAT(Ids(cut->ids()), ElementsAreArray(full_ids.begin(), full_ids.begin() + cut->ids_size()));
  const std::string decoded = server_->tokenizer()->Decode(Ids(cut->ids()), true);
  EXPECT_EQ(decoded.find("moon"), at) << decoded;

  const Streamed streamed = Stream(request);
  EXPECT_EQ(streamed.text, cut->text());
  EXPECT_EQ(streamed.ids, Ids(cut->ids()));
  EXPECT_EQ(streamed.stats.finish_reason(), dmoe::v1::FINISH_REASON_STOP);
  EXPECT_EQ(streamed.stats.matched_stop(), "moon");
}

TEST_F(StopLogprobsTest, StopStringsThatNeverMatchChangeNothing) {
  auto full = client_->Generate(Chat());
  ASSERT_TRUE(full.ok()) << full.status();
  dmoe::v1::GenerateRequest request = Chat();
  request.mutable_params()->add_stop("zebra crossing");
  auto same = client_->Generate(request);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->text(), full->text());
  EXPECT_EQ(Ids(same->ids()), Ids(full->ids()));
  EXPECT_EQ(same->stats().finish_reason(), full->stats().finish_reason());
  EXPECT_EQ(same->stats().matched_stop(), "");
  EXPECT_EQ(Stream(request).text, full->text());
}

TEST_F(StopLogprobsTest, LogprobsComeOnePerIdTheSameUnaryAndStreamed) {
  dmoe::v1::GenerateRequest request = Chat();
  auto plain = client_->Generate(request);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->logprobs_size(), 0);  // only when asked for

  request.mutable_params()->set_logprobs(true);
  auto unary = client_->Generate(request);
  ASSERT_TRUE(unary.ok()) << unary.status();
  EXPECT_EQ(Ids(unary->ids()), Ids(plain->ids()));
  ASSERT_EQ(unary->logprobs_size(), unary->ids_size());
  std::string bytes;
  for (int i = 0; i < unary->logprobs_size(); ++i) {
    const dmoe::v1::TokenLogprob& t = unary->logprobs(i);
    EXPECT_EQ(t.id(), unary->ids(i));
    EXPECT_TRUE(std::isfinite(t.logprob()));
    EXPECT_LE(t.logprob(), 0.0f);
    bytes += t.token();
  }
  // Token bytes of the non-special tokens are the text.
  EXPECT_EQ(bytes, unary->text());

  const Streamed streamed = Stream(request);
  ASSERT_EQ(streamed.logprobs.size(), static_cast<size_t>(unary->logprobs_size()));
  for (size_t i = 0; i < streamed.logprobs.size(); ++i) {
    EXPECT_EQ(streamed.logprobs[i].id(), unary->logprobs(i).id());
    EXPECT_EQ(streamed.logprobs[i].logprob(), unary->logprobs(i).logprob());  // same bits
  }

  // With a stop string the logprobs are cut with the ids.
  request.mutable_params()->add_stop("moon");
  auto cut = client_->Generate(request);
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(cut->logprobs_size(), cut->ids_size());
  EXPECT_EQ(Stream(request).logprobs.size(), static_cast<size_t>(cut->ids_size()));
}

TEST_F(StopLogprobsTest, BadStopStringsAreInvalidArgumentNamingTheField) {
  dmoe::v1::GenerateRequest empty = Chat();
  empty.mutable_params()->add_stop("");
  EXPECT_THAT(client_->Generate(empty),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("params.stop")));
  dmoe::v1::GenerateRequest many = Chat();
  for (int i = 0; i < 17; ++i) many.mutable_params()->add_stop(absl::StrCat("s", i));
  EXPECT_THAT(client_->Generate(many),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("params.stop")));
  dmoe::v1::GenerateRequest long_one = Chat();
  long_one.mutable_params()->add_stop(std::string(300, 'x'));
  EXPECT_THAT(client_->GenerateStream(long_one, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("params.stop")));
}

}  // namespace
}  // namespace dmoe
