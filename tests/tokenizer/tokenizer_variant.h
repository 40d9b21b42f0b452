// The variant patches of tests/tokenizer/data/variants applied to a tokenizer.json, exactly
// like tests/reference/encode_reference.js. No GoogleTest: the fuzz targets use it too.
#ifndef DMOE_TESTS_TOKENIZER_TOKENIZER_VARIANT_H_
#define DMOE_TESTS_TOKENIZER_TOKENIZER_VARIANT_H_

#include <string>

#include "nlohmann/json.hpp"

namespace dmoe::model::testing {

// Mirrors applyVariant() in tests/reference/encode_reference.js.
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
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        base["model"][m.key()] = m.value();
    } else {
      base[key] = it.value();
    }
  }
  return base;
}

}  // namespace dmoe::model::testing

#endif  // DMOE_TESTS_TOKENIZER_TOKENIZER_VARIANT_H_
