// Tokenizer::Encode of arbitrary bytes (the prompt of every request), then Decode, TokenBytes
// and the StreamingDetokenizer over the ids. The first byte picks the tokenizer variant.
// Checked: every id is in [0, vocab_size), and the tiny (byte-level) tokenizer round-trips
// valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_tokenizers.h"

namespace {

bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& tokenizers = dmoe_fuzz::Tokenizers();
  const size_t which = data[0] % tokenizers.size();
  const dmoe::model::Tokenizer& tokenizer = *tokenizers[which];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  const std::vector<int32_t> ids = tokenizer.Encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tokenizer.vocab_size()) std::abort();
    (void)tokenizer.TokenBytes(id);
    (void)tokenizer.IdToToken(id);
  }
  const std::string decoded = tokenizer.Decode(ids, /*skip_special_tokens=*/false);
  (void)tokenizer.Decode(ids, /*skip_special_tokens=*/true);
  if (which == 0 && ValidUtf8(text) && decoded != text) std::abort();

  dmoe::model::StreamingDetokenizer detokenizer(tokenizer, /*skip_special_tokens=*/false);
  std::string streamed;
  for (int32_t id : ids) streamed += detokenizer.Push({id});
  streamed += detokenizer.Flush();
  // Only the byte-level tokenizers stream exactly what Decode gives: a variant without the
  // ByteLevel decoder (raw_split) joins tokens in Decode.
  if (which == 0 && ValidUtf8(decoded) && streamed != decoded) std::abort();
  return 0;
}
