// The BPE trainer behind dmoe-train-tokenizer (tools/tokenizer_gen).
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_test_util.h"
#include "tools/tokenizer_gen/bpe_trainer.h"

namespace dmoe::tools {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kTexts = {
    "the cat sat on the mat. the cat ate the rat.\n",
    "Then the other cat sat there, and the mat was theirs; 123 456.\n",
    "don't stop the cat's song: la la la la\n"};

BpeTrainerOptions Options(int vocab_size, int num_merges, int min_frequency) {
  BpeTrainerOptions options;
  options.vocab_size = vocab_size;
  options.num_merges = num_merges;
  options.min_frequency = min_frequency;
  return options;
}

TEST(TokenizerTrainerTest, LearnsFrequentPairsFirst) {
  BpeTrainerOptions options = Options(0, 5, 2);
  auto model = TrainBpe(kTexts, options);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->merges.size(), 5u);
  EXPECT_EQ(model->vocab.size(), 256u + 5u);
  // "he" (the, Then, there, theirs, other) is the most frequent pair of this text.
  EXPECT_EQ(model->merges[0], (std::pair<std::string, std::string>("h", "e")));
  EXPECT_EQ(model->vocab[65], "A");  // id = byte value for the byte alphabet
}

TEST(TokenizerTrainerTest, DeterministicAndSizedByVocab) {
  BpeTrainerOptions options = Options(290, 0, 1);
  auto a = TrainBpe(kTexts, options);
  auto b = TrainBpe(kTexts, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->vocab.size(), 290u - options.special_tokens.size());
  EXPECT_EQ(a->merges, b->merges);
  EXPECT_EQ(TokenizerJson(*a, options), TokenizerJson(*b, options));
}

TEST(TokenizerTrainerTest, StopsWhenPairsAreRare) {
  BpeTrainerOptions options = Options(0, 100000, 3);
  auto model = TrainBpe(kTexts, options);
  ASSERT_TRUE(model.ok());
  EXPECT_LT(model->merges.size(), 1000u);
}

TEST(TokenizerTrainerTest, ValidatesOptions) {
  EXPECT_EQ(TrainBpe(kTexts, Options(0, 0, 2)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TrainBpe(kTexts, Options(100, 0, 2)).status().code(),
            absl::StatusCode::kInvalidArgument);  // below 256 + 8
  EXPECT_EQ(TrainBpe(kTexts, Options(300, 3, 2)).status().code(),
            absl::StatusCode::kInvalidArgument);  // both sizes given
  EXPECT_EQ(TrainBpe(kTexts, Options(0, 3, 0)).status().code(), absl::StatusCode::kInvalidArgument);
  BpeTrainerOptions options = Options(0, 3, 2);
  options.split_pattern = "(oops";
  auto bad = TrainBpe(kTexts, options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTrainerTest, WritesALoadableLingStyleTokenizer) {
  BpeTrainerOptions options = Options(/*vocab_size=*/280, /*num_merges=*/0, /*min_frequency=*/1);
  auto model = TrainBpe(kTexts, options);
  ASSERT_TRUE(model.ok());
  const std::string json = TokenizerJson(*model, options);
  const auto parsed = nlohmann::json::parse(json);
  EXPECT_EQ(parsed["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
  EXPECT_EQ(parsed["pre_tokenizer"]["pretokenizers"][0]["behavior"], "Isolated");
  EXPECT_EQ(parsed["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(parsed["decoder"]["type"], "ByteLevel");
  const auto config = nlohmann::json::parse(TokenizerConfigJson(options));
  EXPECT_EQ(config["add_bos_token"], false);
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");

  auto tokenizer = model::Tokenizer::FromJson(json, TokenizerConfigJson(options), "trained");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 280);
  EXPECT_EQ((*tokenizer)->TokenToId("<|startoftext|>"), 272);
  EXPECT_EQ((*tokenizer)->TokenToId("</think>"), 279);
  EXPECT_THAT((*tokenizer)->chat_template(), HasSubstr("<role>HUMAN</role>"));
  for (const std::string& text : kTexts) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
    EXPECT_LT(ids.size(), text.size());  // merges were applied
    EXPECT_EQ((*tokenizer)->Decode(ids, false), text);
  }
}

TEST(TokenizerTrainerTest, CommittedTinyTokenizerIsReproducible) {
  // docs/tokenizer.md records this command; the committed files must be its output.
  const std::string corpus = model::testing::ReadFileOrDie(model::testing::SourceDir() +
                                                           "/tools/data/tokenizer_corpus.txt");
  BpeTrainerOptions options = Options(1536, 0, 2);
  auto model = TrainBpe({corpus}, options);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string dir = model::testing::TinyTokenizerDir();
  EXPECT_EQ(TokenizerJson(*model, options), model::testing::ReadFileOrDie(dir + "/tokenizer.json"));
  EXPECT_EQ(TokenizerConfigJson(options),
            model::testing::ReadFileOrDie(dir + "/tokenizer_config.json"));
}

}  // namespace
}  // namespace dmoe::tools
