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

// Same patching as ApplyVariant in tests/tokenizer/tokenizer_test_util.h (that header needs
// GoogleTest).
inline nlohmann::json ApplyVariant(nlohmann::json base, const nlohmann::json& variant) {
  for (auto it = variant.begin(); it != variant.end(); ++it) {
    const std::string& key = it.key();
    if (key == "description") continue;
    if (key == "merges_as_strings") {
      if (it.value().get<bool>()) {
        for (auto& m : base["model"]["merges"]) {
          if (m.is_array()) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
        }
      }
    } else if (key == "added_tokens_extra") {
      for (const auto& t : it.value()) base["added_tokens"].push_back(t);
    } else if (key == "model") {
      for (auto m = it.value().begin(); m != it.value().end(); ++m) base["model"][m.key()] = m.value();
    } else {
      base[key] = it.value();
    }
  }
  return base;
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
      jsons.push_back(ApplyVariant(nlohmann::json::parse(base), variant).dump());
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
