// Live comparison with Hugging Face `tokenizers` (label `reference`): runs
// tests/reference/encode_reference.js on the test strings plus a seeded set of random strings
// for the tiny tokenizer and each variant, and compares ids and decodings. Skipped when node
// or tests/reference/node_modules/tokenizers is missing (`cd tests/reference && npm install`).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_test_util.h"

namespace dmoe::model {
namespace {

using testing::ReadFileOrDie;
using testing::SourceDir;

bool CommandSucceeds(const std::string& command) { return std::system(command.c_str()) == 0; }

std::string RunAndCapture(const std::string& command, int* exit_code) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *exit_code = -1;
    return out;
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  *exit_code = pclose(pipe);
  return out;
}

// Strings drawn from pieces that stress pre-tokenisation, added tokens and UTF-8 handling.
std::vector<std::string> RandomStrings(int count, uint32_t seed) {
  static const std::vector<std::string> kPieces = {"a",
                                                   "Z",
                                                   "the",
                                                   " ",
                                                   "  ",
                                                   "\t",
                                                   "\n",
                                                   "\r\n",
                                                   "\n\n",
                                                   "0",
                                                   "42",
                                                   "3.14",
                                                   "'s",
                                                   "'LL",
                                                   "'",
                                                   "\"",
                                                   "!",
                                                   "?!",
                                                   "...",
                                                   "-",
                                                   "_",
                                                   "(",
                                                   ")",
                                                   "{",
                                                   "}",
                                                   "<",
                                                   ">",
                                                   "<|",
                                                   "|>",
                                                   "mask",
                                                   "<|mask|>",
                                                   "<|endoftext|>",
                                                   "<role>",
                                                   "</role>",
                                                   "<|role_end|>",
                                                   "<think>",
                                                   "é",
                                                   "e\u0301",
                                                   "ß",
                                                   "ſ",
                                                   "你",
                                                   "好",
                                                   "日本",
                                                   "한",
                                                   "🙂",
                                                   "👍🏽",
                                                   "👨‍👩‍👧",
                                                   "€",
                                                   "½",
                                                   "²",
                                                   "\u00a0",
                                                   "\u3000",
                                                   "\u0085",
                                                   "\u200b",
                                                   "\ufb01",
                                                   "K",
                                                   "x",
                                                   "model",
                                                   "[W]",
                                                   "<|sep|>",
                                                   "<tool_call>"};
  // Plus single code points from ranges where Unicode properties and normalisation differ.
  static const std::vector<std::pair<char32_t, char32_t>> kRanges = {
      {0x20, 0x7E},       {0x00, 0x20},      {0x80, 0x24F},    {0x300, 0x36F},   {0x370, 0x52F},
      {0x600, 0x6FF},     {0x900, 0x97F},    {0x1100, 0x11FF}, {0x1E00, 0x1FFF}, {0x2000, 0x206F},
      {0x2070, 0x22FF},   {0x3000, 0x30FF},  {0x4E00, 0x4FFF}, {0xAC00, 0xAD00}, {0xFB00, 0xFFFD},
      {0x1F300, 0x1F6FF}, {0x1D400, 0x1D7FF}};
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) {
    const int len = static_cast<int>(rng() % 24);
    std::string s;
    for (int k = 0; k < len; ++k) {
      if (rng() % 3 != 0) {
        s += kPieces[rng() % kPieces.size()];
        continue;
      }
      const auto& [lo, hi] = kRanges[rng() % kRanges.size()];
      char32_t cp = lo + rng() % (hi - lo + 1);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      tokenizer_internal::AppendUtf8(cp, &s);
    }
    out.push_back(std::move(s));
  }
  return out;
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

class TokenizerReferenceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    reference_dir_ = SourceDir() + "/tests/reference";
    if (!std::filesystem::exists(reference_dir_ + "/node_modules/tokenizers")) {
      GTEST_SKIP() << "tests/reference/node_modules/tokenizers missing (npm install)";
    }
    if (!CommandSucceeds("node --version > /dev/null 2>&1")) GTEST_SKIP() << "node not found";
  }
  std::string reference_dir_;
};

TEST_P(TokenizerReferenceTest, MatchesHuggingFaceLive) {
  const std::string name = GetParam();
  std::vector<std::string> cases =
      nlohmann::json::parse(ReadFileOrDie(SourceDir() + "/tests/tokenizer/data/test_strings.json"))
          .get<std::vector<std::string>>();
  // DMOE_TOKENIZER_FUZZ_COUNT / _SEED scale the random part up for a longer manual run.
  for (std::string& s : RandomStrings(EnvInt("DMOE_TOKENIZER_FUZZ_COUNT", 400),
                                      EnvInt("DMOE_TOKENIZER_FUZZ_SEED", 20240630))) {
    cases.push_back(std::move(s));
  }

  const std::string tmp = ::testing::TempDir() + "dmoe_tokenizer_reference_" + name;
  std::filesystem::create_directories(tmp);
  const std::string cases_path = tmp + "/cases.json";
  const std::string tokenizer_path = tmp + "/tokenizer.json";
  std::ofstream(cases_path) << nlohmann::json(cases).dump();
  const std::string tokenizer_json = testing::VariantTokenizerJson(name);
  std::ofstream(tokenizer_path) << tokenizer_json;

  int exit_code = 0;
  const std::string output =
      RunAndCapture("node '" + reference_dir_ + "/encode_reference.js' --tokenizer '" +
                        tokenizer_path + "' --cases '" + cases_path + "' --no-vocab",
                    &exit_code);
  ASSERT_EQ(exit_code, 0) << output;
  const auto reference = nlohmann::json::parse(output);
  auto tokenizer = Tokenizer::FromJson(tokenizer_json, "", name);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), reference["vocab_size"].get<int32_t>());
  ASSERT_EQ(reference["cases"].size(), cases.size());
  int mismatches = 0;
  for (const auto& c : reference["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const bool same =
        (*tokenizer)->Encode(text) == ids &&
        (*tokenizer)->Decode(ids, false) == c["decoded"].get<std::string>() &&
        (*tokenizer)->Decode(ids, true) == c["decoded_skip_special"].get<std::string>();
    if (!same && ++mismatches <= 10) {
      ADD_FAILURE() << "variant " << name << " differs from Hugging Face on "
                    << nlohmann::json(text).dump() << "\n  expected ids " << c["ids"].dump()
                    << "\n  got      ids " << nlohmann::json((*tokenizer)->Encode(text)).dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(Variants, TokenizerReferenceTest,
                         ::testing::Values("tiny", "gpt2_style", "ling_nfc", "splits", "raw_split",
                                           "added_edges"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace dmoe::model
