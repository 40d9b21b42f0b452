// Tokenizer::FromJson on an arbitrary tokenizer.json (a model directory is not always
// trusted: `dmoe serve --model DIR` on a downloaded checkpoint). The input is the
// tokenizer.json text; everything after a "\n#config\n" line, if present, is
// tokenizer_config.json. A tokenizer that loads then encodes, decodes and renders a few fixed
// strings.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view kSplit = "\n#config\n";
  const size_t split = input.find(kSplit);
  const std::string tokenizer_json(input.substr(0, split));
  const std::string config_json =
      split == std::string_view::npos ? "" : std::string(input.substr(split + kSplit.size()));

  auto tokenizer = dmoe::model::Tokenizer::FromJson(tokenizer_json, config_json, "fuzz");
  if (!tokenizer.ok()) return 0;
  const dmoe::model::Tokenizer& t = **tokenizer;
  const int32_t vocab = t.vocab_size();
  if (vocab < 0) std::abort();
  for (std::string_view text : {std::string_view("Hello, world! 123 <|mask|><|endoftext|>"),
                                std::string_view("  \t\n\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80 x"),
                                std::string_view("\xff\xfe\x80 broken")}) {
    const std::vector<int32_t> ids = t.Encode(text);
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab) {
        std::cerr << "Encode(\"" << text << "\") gave id " << id << ", vocab_size " << vocab << "\n";
        std::abort();
      }
    }
    (void)t.Decode(ids, false);
    (void)t.Decode(ids, true);
  }
  std::vector<int32_t> all;
  for (int32_t id = 0; id < vocab && id < 4096; ++id) {
    all.push_back(id);
    (void)t.TokenBytes(id);
    if (auto token = t.IdToToken(id)) (void)t.TokenToId(*token);
    (void)t.IsSpecial(id);
  }
  (void)t.Decode(all, false);
  (void)dmoe::model::ResolveDecodeTokenIds(t, std::nullopt, std::nullopt);
  return 0;
}
