// Behaviour of the tokenizer beyond the golden comparisons: loading and errors, round trips,
// decoding of broken UTF-8, streaming, decode-token resolution, the chat template, threads.
#include "model/tokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"
#include "tests/testing/concurrency.h"
#include "tests/tokenizer/tokenizer_test_util.h"

namespace dmoe::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ReadFileOrDie;
using testing::TinyTokenizerDir;

constexpr int32_t kStartOfText = 1528;
constexpr int32_t kEndOfText = 1529;
constexpr int32_t kMask = 1530;
constexpr int32_t kRoleEnd = 1531;
constexpr int32_t kRole = 1532;
constexpr int32_t kRoleClose = 1533;

const std::string kEuro = "\xE2\x82\xAC";  // U+20AC, three bytes
const std::string kReplacement = "\xEF\xBF\xBD";

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::Load(TinyTokenizerDir());
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = t->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  static Tokenizer* tokenizer_;
};
Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, TinyTokenizerIds) {
  EXPECT_EQ(tokenizer_->vocab_size(), 1536);
  EXPECT_EQ(tokenizer_->TokenToId("<|startoftext|>"), kStartOfText);
  EXPECT_EQ(tokenizer_->TokenToId("<|endoftext|>"), kEndOfText);
  EXPECT_EQ(tokenizer_->TokenToId("<|mask|>"), kMask);
  EXPECT_EQ(tokenizer_->TokenToId("<|role_end|>"), kRoleEnd);
  EXPECT_EQ(tokenizer_->TokenToId("<role>"), kRole);
  EXPECT_EQ(tokenizer_->TokenToId("</role>"), kRoleClose);
  EXPECT_EQ(tokenizer_->TokenToId("<think>"), 1534);
  EXPECT_EQ(tokenizer_->TokenToId("</think>"), 1535);
  EXPECT_EQ(tokenizer_->TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tokenizer_->IdToToken(kMask), "<|mask|>");
  EXPECT_EQ(tokenizer_->IdToToken(1536), std::nullopt);
  EXPECT_EQ(tokenizer_->IdToToken(-1), std::nullopt);
  EXPECT_TRUE(tokenizer_->IsSpecial(kMask));
  EXPECT_FALSE(tokenizer_->IsSpecial(65));
  // Byte tokens: id = byte value, "A" = 65, "Ġ" (space) = 32.
  EXPECT_EQ(tokenizer_->TokenToId("A"), 65);
  EXPECT_EQ(tokenizer_->TokenToId("\xC4\xA0"), 32);
}

TEST_F(TokenizerTest, ReadsTokenizerConfig) {
  EXPECT_THAT(tokenizer_->chat_template(), HasSubstr("<role>SYSTEM</role>"));
  EXPECT_EQ(tokenizer_->bos_token(), "<|startoftext|>");
  EXPECT_EQ(tokenizer_->eos_token(), "<|endoftext|>");
  EXPECT_EQ(tokenizer_->pad_token(), "<|endoftext|>");
}

TEST_F(TokenizerTest, EmptyStringEncodesToNothing) {
  EXPECT_TRUE(tokenizer_->Encode("").empty());
  EXPECT_EQ(tokenizer_->Decode({}, false), "");
}

TEST_F(TokenizerTest, SpecialTokensSplitOutOfText) {
  const std::vector<int32_t> ids = tokenizer_->Encode("hi<|mask|>there<|endoftext|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.back(), kEndOfText);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kMask), 1);
  EXPECT_EQ(tokenizer_->Encode("<|mask|><|mask|>"), (std::vector<int32_t>{kMask, kMask}));
  // Fragments of a special token are ordinary text.
  for (int32_t id : tokenizer_->Encode("<|mask| |mask|> <mask>"))
    EXPECT_FALSE(tokenizer_->IsSpecial(id));
}

TEST_F(TokenizerTest, RoundTrips) {
  const std::vector<std::string> texts = {"The quick brown fox.",
                                          "  spaces  and\ttabs\n\nnew lines \n",
                                          "don't we'll THEY'RE",
                                          "12345678901234567890",
                                          "café 你好 🙂👍🏽 " + kEuro,
                                          "int main() { return 0; }",
                                          "<role>HUMAN</role>hi<|role_end|><role>ASSISTANT</role>",
                                          "a\u00a0b\u3000c\u0085d"};
  for (const std::string& text : texts) {
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text), false), text);
  }
}

TEST_F(TokenizerTest, SkipSpecialTokensOnDecode) {
  const std::vector<int32_t> ids =
      tokenizer_->Encode("<|startoftext|>hi<|mask|> there<|role_end|>");
  EXPECT_EQ(tokenizer_->Decode(ids, false), "<|startoftext|>hi<|mask|> there<|role_end|>");
  EXPECT_EQ(tokenizer_->Decode(ids, true), "hi there");
}

TEST_F(TokenizerTest, DecodeReplacesInvalidUtf8LikeRust) {
  // Byte tokens have id = byte value, so these ids are raw bytes.
  EXPECT_EQ(tokenizer_->Decode({0xE2, 0x82, 0xAC}, false), kEuro);
  EXPECT_EQ(tokenizer_->Decode({0xE2, 0x82}, false), kReplacement);             // truncated
  EXPECT_EQ(tokenizer_->Decode({0xE2, 0x82, 'A'}, false), kReplacement + "A");  // one per subpart
  EXPECT_EQ(tokenizer_->Decode({0xF0, 'A'}, false), kReplacement + "A");
  EXPECT_EQ(tokenizer_->Decode({0x80, 0x80}, false), kReplacement + kReplacement);
  EXPECT_EQ(tokenizer_->Decode({0xED, 0xA0, 0x80}, false),
            kReplacement + kReplacement + kReplacement);
  EXPECT_EQ(tokenizer_->Decode({0xC0, 0xAF}, false), kReplacement + kReplacement);  // overlong
  EXPECT_EQ(tokenizer_->Decode({0xFF, 'x', 99999, -5}, false),
            kReplacement + "x");  // bad ids dropped
  EXPECT_EQ(tokenizer_->TokenBytes(0xE2), "\xE2");
  EXPECT_EQ(tokenizer_->TokenBytes(kMask), "<|mask|>");
  EXPECT_EQ(tokenizer_->TokenBytes(424242), "");
}

TEST_F(TokenizerTest, InvalidUtf8InputIsReplacedBeforeEncoding) {
  EXPECT_EQ(tokenizer_->Encode("a\xFF"
                               "b"),
            tokenizer_->Encode("a\uFFFD"
                               "b"));
}

TEST_F(TokenizerTest, StreamingHoldsBackSplitCharacters) {
  StreamingDetokenizer stream(*tokenizer_, /*skip_special_tokens=*/true);
  EXPECT_EQ(stream.Push({'a'}), "a");
  EXPECT_EQ(stream.Push({0xE2}), "");
  EXPECT_EQ(stream.Push({0x82}), "");
  EXPECT_EQ(stream.Push({0xAC, 'b'}), kEuro + "b");
  EXPECT_EQ(stream.Push({kMask, 0xF0, 0x9F}), "");  // special skipped, emoji incomplete
  EXPECT_EQ(stream.Push({0x99, 0x82, kRoleEnd}), "\xF0\x9F\x99\x82");
  EXPECT_EQ(stream.Push({0xE2, 'x'}), kReplacement + "x");  // broken sequence: U+FFFD at once
  EXPECT_EQ(stream.Push({0xE4, 0xBD}), "");
  EXPECT_EQ(stream.Flush(), kReplacement);  // incomplete tail
  EXPECT_EQ(stream.Flush(), "");
}

TEST_F(TokenizerTest, StreamingKeepsSpecialTokensWhenAsked) {
  StreamingDetokenizer stream(*tokenizer_, /*skip_special_tokens=*/false);
  EXPECT_EQ(stream.Push({'h', 'i', kRoleEnd}), "hi<|role_end|>");
}

TEST_F(TokenizerTest, StreamingMatchesDecodeTokenByToken) {
  const std::string text = "Grüße 你好世界 🙂🚀 naïve — ∞ " + kEuro;
  const std::vector<int32_t> ids = tokenizer_->Encode(text);
  StreamingDetokenizer stream(*tokenizer_, false);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = stream.Push({id});
    EXPECT_EQ(tokenizer_internal::Utf8Lossy(piece), piece) << "emitted invalid UTF-8";
    out += piece;
  }
  out += stream.Flush();
  EXPECT_EQ(out, text);
}

TEST_F(TokenizerTest, ConcurrentEncodeIsConsistent) {
  const std::string text =
      ReadFileOrDie(testing::SourceDir() + "/tools/data/tokenizer_corpus.txt").substr(0, 6000);
  const std::vector<int32_t> expected = tokenizer_->Encode(text);
  const std::vector<bool> ok = dmoe_testing::RunConcurrently(4, [&](int) {
    bool same = true;
    for (int i = 0; i < 5; ++i) same &= tokenizer_->Encode(text) == expected;
    return same;
  });
  EXPECT_THAT(ok, ElementsAre(true, true, true, true));
}

// ---- ResolveDecodeTokenIds ----

TEST_F(TokenizerTest, ResolveDecodeTokenIdsDefaults) {
  auto ids = ResolveDecodeTokenIds(*tokenizer_, std::nullopt, std::nullopt);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->mask_id, kMask);
  EXPECT_THAT(ids->stop_ids, ElementsAre(kEndOfText, kRoleEnd));
}

TEST_F(TokenizerTest, ResolveDecodeTokenIdsOverrides) {
  auto ids = ResolveDecodeTokenIds(*tokenizer_, 7, std::vector<int32_t>{8, 9});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->mask_id, 7);
  EXPECT_THAT(ids->stop_ids, ElementsAre(8, 9));
}

TEST_F(TokenizerTest, ResolveDecodeTokenIdsRejectsMaskEqualToStop) {
  auto ids = ResolveDecodeTokenIds(*tokenizer_, kRoleEnd, std::nullopt);
  ASSERT_EQ(ids.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ids.status().message()), HasSubstr("<|role_end|>"));
  ids = ResolveDecodeTokenIds(*tokenizer_, std::nullopt, std::vector<int32_t>{kMask});
  ASSERT_EQ(ids.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ids.status().message()), HasSubstr("<|mask|>"));
}

TEST_F(TokenizerTest, ResolveDecodeTokenIdsNeedsAMaskToken) {
  // Without a <|mask|> token the decoder cannot run unless an id is given explicitly.
  auto j = nlohmann::json::parse(ReadFileOrDie(TinyTokenizerDir() + "/tokenizer.json"));
  auto& added = j["added_tokens"];
  for (auto it = added.begin(); it != added.end();) {
    it = (*it)["content"] == "<|mask|>" ? added.erase(it) : it + 1;
  }
  auto no_mask = Tokenizer::FromJson(j.dump(), "", "no-mask");
  ASSERT_TRUE(no_mask.ok()) << no_mask.status();
  auto ids = ResolveDecodeTokenIds(**no_mask, std::nullopt, std::nullopt);
  ASSERT_EQ(ids.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ids.status().message()), HasSubstr("<|mask|>"));
  ids = ResolveDecodeTokenIds(**no_mask, 5, std::nullopt);
  EXPECT_TRUE(ids.ok()) << ids.status();
  // Stop tokens that are absent are simply not listed.
  auto only_mask = nlohmann::json::parse(ReadFileOrDie(TinyTokenizerDir() + "/tokenizer.json"));
  only_mask["added_tokens"] =
      nlohmann::json::array({{{"id", 1528}, {"content", "<|mask|>"}, {"special", true}}});
  auto t = Tokenizer::FromJson(only_mask.dump(), "", "only-mask");
  ASSERT_TRUE(t.ok()) << t.status();
  ids = ResolveDecodeTokenIds(**t, std::nullopt, std::nullopt);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->mask_id, 1528);
  EXPECT_TRUE(ids->stop_ids.empty());
}

// ---- Loading errors ----

absl::Status LoadError(const std::string& tokenizer_json, const std::string& config = "") {
  return Tokenizer::FromJson(tokenizer_json, config, "test-source").status();
}

nlohmann::json TinyJson() {
  return nlohmann::json::parse(ReadFileOrDie(TinyTokenizerDir() + "/tokenizer.json"));
}

TEST(TokenizerLoadTest, MalformedJson) {
  const absl::Status st = LoadError("{\"model\": ");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("test-source"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("not valid JSON"));
  EXPECT_EQ(LoadError("[1, 2]").code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerLoadTest, MissingModelOrVocab) {
  absl::Status st = LoadError("{}");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("'model'"));
  st = LoadError(R"({"model": {"type": "BPE", "merges": []}})");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("model.vocab"));
  st = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerLoadTest, UnsupportedModelType) {
  const absl::Status st = LoadError(R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(st.message()), HasSubstr("WordPiece"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("model.type"));
}

TEST(TokenizerLoadTest, MergeWithUnknownToken) {
  nlohmann::json j = TinyJson();
  j["model"]["merges"].push_back({"zzz-unknown", "a"});
  absl::Status st = LoadError(j.dump());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("zzz-unknown"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("model.merges["));
  j = TinyJson();
  j["model"]["merges"].push_back("a b c");
  EXPECT_EQ(LoadError(j.dump()).code(), absl::StatusCode::kInvalidArgument);
  j = TinyJson();
  j["model"]["merges"].push_back({"q", "z"});  // "qz" is not in the vocabulary
  st = LoadError(j.dump());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("'qz'"));
}

TEST(TokenizerLoadTest, UnsupportedPipelineParts) {
  nlohmann::json j = TinyJson();
  j["normalizer"] = {{"type", "Lowercase"}};
  absl::Status st = LoadError(j.dump());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(st.message()), HasSubstr("Lowercase"));
  j = TinyJson();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  st = LoadError(j.dump());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(st.message()), HasSubstr("Whitespace"));
  j = TinyJson();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_EQ(LoadError(j.dump()).code(), absl::StatusCode::kUnimplemented);
  j = TinyJson();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  st = LoadError(j.dump());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("pre_tokenizer.pretokenizers[0].pattern"));
  j = TinyJson();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_EQ(LoadError(j.dump()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerLoadTest, MalformedConfig) {
  const std::string tokenizer_json = ReadFileOrDie(TinyTokenizerDir() + "/tokenizer.json");
  const absl::Status st = LoadError(tokenizer_json, "{not json");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("tokenizer_config.json"));
  // Huge integers (Ling's model_max_length) and list-form chat templates are accepted.
  auto t = Tokenizer::FromJson(tokenizer_json,
                               R"({"model_max_length": 1000000000000000019884624838656,
                                   "chat_template": [{"name": "tool_use", "template": "T"},
                                                     {"name": "default", "template": "D"}],
                                   "bos_token": {"content": "<|startoftext|>"}})",
                               "cfg");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->chat_template(), "D");
  EXPECT_EQ((*t)->bos_token(), "<|startoftext|>");
}

// Found by tests/fuzz/tokenizer_json_fuzz.cc: a TemplateProcessing post-processor whose
// special token id names no token made Encode return ids outside [0, vocab_size()).
TEST(TokenizerLoadTest, PostProcessorIdsMustNameTokens) {
  nlohmann::json j = TinyJson();
  j["post_processor"] = nlohmann::json::parse(R"({
      "type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [99999], "tokens": ["<s>"]}}})");
  const absl::Status st = LoadError(j.dump());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("post_processor.special_tokens"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("99999"));
  // An id that is a token (here <|startoftext|>) is accepted and emitted first.
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {1528};
  auto t = Tokenizer::FromJson(j.dump(), "", "test-source");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<int32_t> ids = (*t)->Encode("hi");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1528);
  for (int32_t id : ids) EXPECT_LT(id, (*t)->vocab_size());
}

TEST(TokenizerLoadTest, MissingDirectory) {
  auto t = Tokenizer::Load("/nonexistent/dmoe/tokenizer");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("/nonexistent/dmoe/tokenizer"));
}

TEST(TokenizerLoadTest, AddedTokenIdsFollowHuggingFace) {
  // HF ignores the declared ids: a token already in the vocabulary keeps its vocab id, new
  // ones are numbered after the vocabulary in file order.
  nlohmann::json j = TinyJson();
  j["added_tokens"] = nlohmann::json::array({
      {{"id", 9000}, {"content", "<b>"}, {"special", true}},
      {{"id", 5}, {"content", "<a>"}, {"special", true}},
      {{"id", 77}, {"content", "A"}, {"special", false}},
  });
  auto t = Tokenizer::FromJson(j.dump(), "", "ids");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->TokenToId("<b>"), 1528);
  EXPECT_EQ((*t)->TokenToId("<a>"), 1529);
  EXPECT_EQ((*t)->TokenToId("A"), 65);
  EXPECT_EQ((*t)->vocab_size(), 1530);
}

// ---- Internals ----

TEST(TokenizerInternalTest, IncompleteUtf8Tail) {
  using tokenizer_internal::IncompleteUtf8TailLength;
  EXPECT_EQ(IncompleteUtf8TailLength(""), 0u);
  EXPECT_EQ(IncompleteUtf8TailLength("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8TailLength("a\xE2"), 1u);
  EXPECT_EQ(IncompleteUtf8TailLength("a\xE2\x82"), 2u);
  EXPECT_EQ(IncompleteUtf8TailLength("a\xE2\x82\xAC"), 0u);
  EXPECT_EQ(IncompleteUtf8TailLength("\xF0\x9F\x99"), 3u);
  EXPECT_EQ(IncompleteUtf8TailLength("\xE0\x80"), 0u);  // can never complete
  EXPECT_EQ(IncompleteUtf8TailLength("\x82"), 0u);
}

TEST(TokenizerInternalTest, ByteLevelAlphabet) {
  using tokenizer_internal::ByteLevelEncode;
  EXPECT_EQ(ByteLevelEncode(" a\n"),
            "\xC4\xA0"
            "a"
            "\xC4\x8A");  // "Ġ a Ċ"
  EXPECT_EQ(tokenizer_internal::ByteLevelDecodeToken("\xC4\xA0hi"), " hi");
  EXPECT_EQ(tokenizer_internal::ByteLevelDecodeToken("你"), "你");  // not byte-level: kept
  for (int b = 0; b < 256; ++b) {
    const std::string s(1, static_cast<char>(b));
    EXPECT_EQ(tokenizer_internal::ByteLevelDecodeToken(ByteLevelEncode(s)), s);
  }
}

TEST(TokenizerInternalTest, RegexFollowsOniguruma) {
  using tokenizer_internal::Regex;
  auto spans = [](std::string_view pattern, std::string_view text) {
    auto re = Regex::Compile(pattern, false);
    EXPECT_TRUE(re.ok()) << re.status();
    std::vector<std::pair<size_t, size_t>> m;
    EXPECT_TRUE((*re)->FindAll(text, &m).ok());
    return m;
  };
  using P = std::pair<size_t, size_t>;
  // \s is White_Space: U+0085 yes, U+180E / U+200B no.
  EXPECT_THAT(spans(R"(\s)", "a\u0085b\u180Ec\u200Bd"), ElementsAre(P{1, 3}));
  // Empty matches: onig's find_iter steps one character and skips empty matches that touch
  // the previous match.
  EXPECT_THAT(spans("x*", "abxxc"), ElementsAre(P{0, 0}, P{1, 1}, P{2, 4}, P{5, 5}));
  // ^ and $ work at line boundaries (Ruby syntax).
  EXPECT_THAT(spans("a$", "ba\nba\n"), ElementsAre(P{1, 2}, P{4, 5}));
  EXPECT_THAT(spans(R"(\w+)", "ab\u00e9_1 d"), ElementsAre(P{0, 6}, P{7, 8}));
  EXPECT_THAT(spans(R"([\u4e00-\u9fff]+)", "ab\u4f60\u597dc"), ElementsAre(P{2, 8}));
}

// ---- Chat template ----

TEST(TokenizerChatTest, CanonicalSingleTurnPrompt) {
  auto prompt = RenderChat({{"user", "What is 2+2?"}}, true);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>What is "
            "2+2?<|role_end|><role>ASSISTANT</role>");
}

TEST(TokenizerChatTest, SystemMessageAndHistory) {
  auto prompt = RenderChat(
      {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}}, false);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<role>SYSTEM</role>Be brief.\ndetailed thinking off<|role_end|>"
            "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>Hello!<|role_end|>"
            "<role>HUMAN</role>Bye<|role_end|>");
}

TEST(TokenizerChatTest, ToolResultsAndLateSystemMessages) {
  auto prompt = RenderChat({{"user", "Weather?"},
                            {"assistant", "<tool_call>\n{}\n</tool_call>"},
                            {"tool", "sunny"},
                            {"observation", "22C"},
                            {"system", "Answer in French."}},
                           true);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<role>SYSTEM</role>detailed thinking off<|role_end|>"
            "<role>HUMAN</role>Weather?<|role_end|>"
            "<role>ASSISTANT</role><tool_call>\n{}\n</tool_call><|role_end|>"
            "<role>OBSERVATION</role>\n<tool_response>\nsunny\n</tool_response>"
            "\n<tool_response>\n22C\n</tool_response><|role_end|>"
            "<role>SYSTEM</role>Answer in French.<|role_end|><role>ASSISTANT</role>");
}

TEST(TokenizerChatTest, ReasoningIsDroppedFromEarlierTurns) {
  auto prompt = RenderChat({{"user", "Q1"},
                            {"assistant", "<think>\nhmm\n</think>\n\nA1"},
                            {"user", "Q2"},
                            {"assistant", "<think>more</think>A2"}},
                           false);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<role>SYSTEM</role>detailed thinking off<|role_end|>"
            "<role>HUMAN</role>Q1<|role_end|><role>ASSISTANT</role>A1<|role_end|>"
            "<role>HUMAN</role>Q2<|role_end|>"
            "<role>ASSISTANT</role>\n<think>\nmore\n</think>\n\nA2<|role_end|>");
}

TEST(TokenizerChatTest, ReasoningAfterWrappedToolResponses) {
  // Expected text rendered with Jinja from the published Ling-V2 template.
  auto prompt = RenderChat({{"user", "Q"},
                            {"assistant", "\n\n<think>\n\nr1\n</think>\n\n\nans"},
                            {"user", "<tool_response>x</tool_response>"},
                            {"assistant", "a<think>b</think>c</think>d"}},
                           true);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>Q<|role_end|>"
            "<role>ASSISTANT</role>\n<think>\nr1\n</think>\n\nans<|role_end|>"
            "<role>HUMAN</role><tool_response>x</tool_response><|role_end|>"
            "<role>ASSISTANT</role>\n<think>\nb\n</think>\n\nd<|role_end|><role>ASSISTANT</role>");
}

TEST(TokenizerChatTest, EmptyConversation) {
  auto prompt = RenderChat({}, true);
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(*prompt, "<role>SYSTEM</role>detailed thinking off<|role_end|><role>ASSISTANT</role>");
}

TEST(TokenizerChatTest, UnknownRole) {
  auto prompt = RenderChat({{"user", "hi"}, {"wizard", "abracadabra"}}, true);
  EXPECT_EQ(prompt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(prompt.status().message()), HasSubstr("wizard"));
}

TEST_F(TokenizerTest, ChatPromptTokenizesRoleMarkersAsSpecialTokens) {
  auto prompt = RenderChat({{"user", "hi"}}, true);
  ASSERT_TRUE(prompt.ok());
  const std::vector<int32_t> ids = tokenizer_->Encode(*prompt);
  EXPECT_EQ(ids.front(), kRole);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kRole), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kRoleClose), 3);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kRoleEnd), 2);
  EXPECT_EQ(ids.back(), kRoleClose);
}

}  // namespace
}  // namespace dmoe::model
