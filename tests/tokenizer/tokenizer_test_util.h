// Helpers shared by the tokenizer tests: source-tree paths and the variant patches of
// tests/tokenizer/data/variants (applied exactly like tests/reference/encode_reference.js).
#ifndef DMOE_TESTS_TOKENIZER_TOKENIZER_TEST_UTIL_H_
#define DMOE_TESTS_TOKENIZER_TOKENIZER_TEST_UTIL_H_

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_variant.h"

namespace dmoe::model::testing {

inline std::string SourceDir() {
  return DMOE_TEST_SOURCE_DIR;
}

inline std::string TinyTokenizerDir() { return SourceDir() + "/tools/data/tiny_tokenizer"; }

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// tokenizer.json text of the tiny tokenizer with variant `name` applied ("tiny" = unchanged).
inline std::string VariantTokenizerJson(const std::string& name) {
  const std::string base = ReadFileOrDie(TinyTokenizerDir() + "/tokenizer.json");
  if (name == "tiny") return base;
  const auto variant = nlohmann::json::parse(
      ReadFileOrDie(SourceDir() + "/tests/tokenizer/data/variants/" + name + ".json"));
  return ApplyVariant(nlohmann::json::parse(base), variant).dump();
}

inline std::unique_ptr<Tokenizer> LoadVariantOrDie(const std::string& name) {
  auto tokenizer = Tokenizer::FromJson(VariantTokenizerJson(name), "", name);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

}  // namespace dmoe::model::testing

#endif  // DMOE_TESTS_TOKENIZER_TOKENIZER_TEST_UTIL_H_
