// The OpenAI wire format: request bodies to Generation API requests, errors, chunks, stop
// strings (http/openai_protocol.h).
#include "http/openai_protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing/status_matchers.h"

namespace dmoe::http {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

TEST(OpenAiProtocolTest, ChatRequestMapsEveryKnob) {
  absl::StatusOr<OpenAiCall> call = ParseOpenAiRequest(R"({
      "model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
      "max_completion_tokens": 12, "temperature": 0.5, "top_p": 0.9, "seed": 7, "top_k": 20,
      "block_length": 16, "threshold": 0.8, "steps": 4, "stop": ["\n\n"], "stream": true,
      "stream_options": {"include_usage": true}, "user": "u1", "unknown_field": 1})",
                                                       Endpoint::kChatCompletions);
  ASSERT_TRUE(call.ok()) << call.status();
  const dmoe::v1::GenerateRequest& r = call->request;
  EXPECT_EQ(r.model().name(), "tiny");
  ASSERT_EQ(r.chat().messages_size(), 2);
  EXPECT_EQ(r.chat().messages(1).role(), "user");
  EXPECT_EQ(r.chat().messages(1).content(), "hi");
  EXPECT_EQ(r.params().max_new_tokens(), 12);
  EXPECT_FLOAT_EQ(r.params().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(r.params().top_p(), 0.9f);
  EXPECT_EQ(r.params().seed(), 7u);
  EXPECT_EQ(r.params().top_k(), 20);
  EXPECT_EQ(r.params().block_length(), 16);
  EXPECT_FLOAT_EQ(r.params().threshold(), 0.8f);
  EXPECT_EQ(r.params().steps(), 4);
  EXPECT_TRUE(call->stream);
  EXPECT_TRUE(call->include_usage);
  EXPECT_THAT(call->request.params().stop(), ::testing::ElementsAre("\n\n"));
}

TEST(OpenAiProtocolTest, LeftOutKnobsStayUnsetForTheServerDefaults) {
  absl::StatusOr<OpenAiCall> call =
      ParseOpenAiRequest(R"({"prompt": "Once upon"})", Endpoint::kCompletions);
  ASSERT_TRUE(call.ok()) << call.status();
  const dmoe::v1::DecodingParams& p = call->request.params();
  EXPECT_FALSE(p.has_max_new_tokens());
  EXPECT_FALSE(p.has_temperature());
  EXPECT_FALSE(p.has_threshold());
  EXPECT_FALSE(p.has_block_length());
  EXPECT_FALSE(p.has_stop_ids());
  EXPECT_EQ(call->request.text(), "Once upon");
}

TEST(OpenAiProtocolTest, CompletionPromptForms) {
  auto ids = ParseOpenAiRequest(R"({"prompt": [1, 2, 3]})", Endpoint::kCompletions);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(ids->request.prompt_ids().ids(), ::testing::ElementsAre(1, 2, 3));
  auto one = ParseOpenAiRequest(R"({"prompt": ["text"]})", Endpoint::kCompletions);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->request.text(), "text");
  auto nested = ParseOpenAiRequest(R"({"prompt": [[4, 5]]})", Endpoint::kCompletions);
  ASSERT_TRUE(nested.ok());
  EXPECT_THAT(nested->request.prompt_ids().ids(), ::testing::ElementsAre(4, 5));
}

TEST(OpenAiProtocolTest, BadRequestsNameTheParameter) {
  struct Case {
    const char* body;
    Endpoint endpoint;
    const char* param;
  };
  const Case cases[] = {
      {"not json", Endpoint::kCompletions, "body"},
      {"[1]", Endpoint::kCompletions, "body"},
      {"{}", Endpoint::kCompletions, "prompt"},
      {R"({"prompt": ""})", Endpoint::kCompletions, "prompt"},
      {R"({"prompt": ["a", "b"]})", Endpoint::kCompletions, "prompt"},
      {R"({"prompt": "x", "max_tokens": -1})", Endpoint::kCompletions, "max_tokens"},
      {R"({"prompt": "x", "max_tokens": "8"})", Endpoint::kCompletions, "max_tokens"},
      {R"({"prompt": "x", "temperature": 3})", Endpoint::kCompletions, "temperature"},
      {R"({"prompt": "x", "n": 2})", Endpoint::kCompletions, "n"},
      {R"({"prompt": "x", "stop": [1]})", Endpoint::kCompletions, "stop"},
      {R"({"prompt": "x", "stop": ["a","b","c","d","e"]})", Endpoint::kCompletions, "stop"},
      {R"({"prompt": "x", "stream": "yes"})", Endpoint::kCompletions, "stream"},
      {R"({"prompt": "x", "logprobs": 2})", Endpoint::kCompletions, "logprobs"},
      {R"({"prompt": "x", "logprobs": "yes"})", Endpoint::kCompletions, "logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})",
       Endpoint::kChatCompletions, "logprobs"},
      {R"({"prompt": "x", "model": 5})", Endpoint::kCompletions, "model"},
      {R"({"messages": []})", Endpoint::kChatCompletions, "messages"},
      {R"({"messages": [{"content": "x"}]})", Endpoint::kChatCompletions, "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       Endpoint::kChatCompletions, "messages[0].content"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    absl::StatusOr<OpenAiCall> call = ParseOpenAiRequest(c.body, c.endpoint);
    ASSERT_FALSE(call.ok());
    EXPECT_EQ(call.status().code(), absl::StatusCode::kInvalidArgument);
    const Json error = ErrorJson(call.status());
    EXPECT_EQ(error["error"]["param"], c.param);
    EXPECT_EQ(error["error"]["type"], "invalid_request_error");
    EXPECT_EQ(HttpStatusFor(call.status().code()), 400);
  }
}

TEST(OpenAiProtocolTest, ErrorStatusForEveryCode) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  const Json e = ErrorJson(absl::InvalidArgumentError(
      "prompt is too long: 5 prompt tokens + max_new_tokens 9 exceed the model's ..."));
  EXPECT_EQ(e["error"]["param"], nullptr);  // a sentence, not "param: ..."
  EXPECT_EQ(e["error"]["code"], "INVALID_ARGUMENT");
}

TEST(OpenAiProtocolTest, ChunksAndUsage) {
  OpenAiCall chat;
  chat.endpoint = Endpoint::kChatCompletions;
  chat.include_usage = true;
  const Json first = ChunkJson(chat, "chatcmpl-1", 5, "m", "Hel", "", /*first=*/true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "Hel");
  EXPECT_EQ(first["choices"][0]["finish_reason"], nullptr);
  const Json last = ChunkJson(chat, "chatcmpl-1", 5, "m", "", "length", /*first=*/false);
  EXPECT_FALSE(last["choices"][0]["delta"].contains("content"));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  dmoe::v1::GenerationStats stats;
  stats.set_prompt_tokens(4);
  stats.set_generated_tokens(6);
  stats.set_forwards(3);
  stats.set_tokens_per_forward(2.0);
  const Json usage = UsageChunkJson(chat, "chatcmpl-1", 5, "m", stats);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 10);
  EXPECT_EQ(usage["usage"]["forwards"], 3);
  EXPECT_EQ(usage["usage"]["tokens_per_forward"], 2.0);

  OpenAiCall completion;
  const Json whole = CompletionJson(completion, "cmpl-1", 5, "m", "text", "stop", stats);
  EXPECT_EQ(whole["object"], "text_completion");
  EXPECT_EQ(whole["choices"][0]["text"], "text");
  EXPECT_EQ(whole["usage"]["completion_tokens"], 6);
}

TEST(OpenAiProtocolTest, StopStringsAndLogprobsGoToTheGenerationApi) {
  absl::StatusOr<OpenAiCall> call = ParseOpenAiRequest(
      R"({"prompt": "x", "stop": ["END", "\n\n"], "logprobs": 0})", Endpoint::kCompletions);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_THAT(call->request.params().stop(), ::testing::ElementsAre("END", "\n\n"));
  EXPECT_TRUE(call->request.params().logprobs());
  call = ParseOpenAiRequest(R"({"messages": [{"role": "user", "content": "x"}], "stop": "END",
                                "logprobs": true, "top_logprobs": 0})",
                            Endpoint::kChatCompletions);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_THAT(call->request.params().stop(), ::testing::ElementsAre("END"));
  EXPECT_TRUE(call->request.params().logprobs());
  call = ParseOpenAiRequest(R"({"prompt": "x"})", Endpoint::kCompletions);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_FALSE(call->request.params().logprobs());
  // Alternatives are not reported: asking for them is an error naming the parameter.
  EXPECT_EQ(ErrorJson(ParseOpenAiRequest(R"({"messages": [{"role": "user", "content": "x"}],
                                              "logprobs": true, "top_logprobs": 3})",
                                         Endpoint::kChatCompletions)
                          .status())["error"]["param"],
            "top_logprobs");
}

TEST(OpenAiProtocolTest, LogprobsJsonInBothShapes) {
  google::protobuf::RepeatedPtrField<dmoe::v1::TokenLogprob> tokens;
  dmoe::v1::TokenLogprob* a = tokens.Add();
  a->set_id(7);
  a->set_logprob(-0.5f);
  a->set_token("Hi");
  dmoe::v1::TokenLogprob* b = tokens.Add();
  b->set_id(9);
  b->set_logprob(-1.25f);
  b->set_token("\xe2\x82");  // the first two bytes of a 3-byte character

  OpenAiCall off;
  EXPECT_TRUE(LogprobsJson(off, tokens, 0).is_null());

  OpenAiCall completion;
  completion.request.mutable_params()->set_logprobs(true);
  const Json c = LogprobsJson(completion, tokens, 10);
  EXPECT_EQ(c["tokens"], Json::array({"Hi", "bytes:\\xe2\\x82"}));
  EXPECT_EQ(c["token_logprobs"], Json::array({-0.5, -1.25}));
  EXPECT_EQ(c["text_offset"], Json::array({10, 12}));
  EXPECT_TRUE(c["top_logprobs"].is_null());
  (void)c.dump();  // valid UTF-8 throughout (dump throws otherwise)

  OpenAiCall chat;
  chat.endpoint = Endpoint::kChatCompletions;
  chat.request.mutable_params()->set_logprobs(true);
  const Json content = LogprobsJson(chat, tokens, 0)["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "Hi");
  EXPECT_EQ(content[0]["logprob"], -0.5);
  EXPECT_EQ(content[0]["bytes"], Json::array({72, 105}));
  EXPECT_EQ(content[0]["top_logprobs"], Json::array());
  EXPECT_EQ(content[1]["bytes"], Json::array({0xe2, 0x82}));
  const Json whole = CompletionJson(chat, "chatcmpl-1", 5, "m", "Hi", "stop",
                                    dmoe::v1::GenerationStats(), LogprobsJson(chat, tokens, 0));
  EXPECT_EQ(whole["choices"][0]["logprobs"]["content"].size(), 2u);
}

TEST(OpenAiProtocolTest, TokenEditingExtrasMapToTheGenerationApi) {
  absl::StatusOr<OpenAiCall> call = ParseOpenAiRequest(
      R"({"prompt": "x", "editing": "quality", "edit_threshold": 0.25, "max_post_steps": 4})",
      Endpoint::kCompletions);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->request.params().editing(), "quality");
  EXPECT_FLOAT_EQ(call->request.params().edit_threshold(), 0.25f);
  EXPECT_EQ(call->request.params().max_post_steps(), 4);
  EXPECT_FALSE(ParseOpenAiRequest(R"({"prompt": "x", "edit_threshold": 2})",
                                  Endpoint::kCompletions)
                   .ok());
  EXPECT_FALSE(
      ParseOpenAiRequest(R"({"prompt": "x", "editing": 1})", Endpoint::kCompletions).ok());
}

}  // namespace
}  // namespace dmoe::http
