// The tokenizers the fuzz targets encode and decode with: the tiny model's (models/
// tiny-diffusion, the Ling 2.0 layout at a small vocabulary) and the variants of
// tests/tokenizer/data/variants (other pre-tokenizers, normalizers, added-token edge cases)
// applied to tools/data/tiny_tokenizer, as the tokenizer tests do.
#ifndef DMOE_TESTS_FUZZ_FUZZ_TOKENIZERS_H_
#define DMOE_TESTS_FUZZ_FUZZ_TOKENIZERS_H_

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_variant.h"

namespace dmoe_fuzz {

inline std::string ReadSourceFile(const std::string& relative) {
  const std::string path = std::string(DMOE_SOURCE_DIR) + "/" + relative;
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) {
    std::cerr << "fuzz: cannot read " << path << "\n";
    std::abort();
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// [0] is the tiny tokenizer itself; loaded once per process.
inline const std::vector<std::unique_ptr<dmoe::model::Tokenizer>>& Tokenizers() {
  static const auto* tokenizers = [] {
    auto* out = new std::vector<std::unique_ptr<dmoe::model::Tokenizer>>;
    const std::string config = ReadSourceFile("models/tiny-diffusion/tokenizer_config.json");
    std::vector<std::string> jsons = {ReadSourceFile("models/tiny-diffusion/tokenizer.json")};
    const std::string base = ReadSourceFile("tools/data/tiny_tokenizer/tokenizer.json");
    for (const char* name : {"added_edges", "gpt2_style", "ling_nfc", "raw_split", "splits"}) {
      const auto variant = nlohmann::json::parse(
          ReadSourceFile(std::string("tests/tokenizer/data/variants/") + name + ".json"));
      jsons.push_back(dmoe::model::testing::ApplyVariant(nlohmann::json::parse(base), variant).dump());
    }
    for (const std::string& json : jsons) {
      auto tokenizer = dmoe::model::Tokenizer::FromJson(json, config, "fuzz");
      if (!tokenizer.ok()) {  // e.g. ling_nfc in a build without ICU
        std::cerr << "fuzz: tokenizer variant left out: " << tokenizer.status() << "\n";
        continue;
      }
      out->push_back(std::move(*tokenizer));
    }
    if (out->empty()) std::abort();
    return out;
  }();
  return *tokenizers;
}

}  // namespace dmoe_fuzz

#endif  // DMOE_TESTS_FUZZ_FUZZ_TOKENIZERS_H_
