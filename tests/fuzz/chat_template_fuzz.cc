// RenderChat (the Ling 2.0 chat template) on arbitrary messages, then Encode of the rendered
// prompt with the tiny tokenizer: the path of every /v1/chat/completions request. Roles are
// mostly the known ones (so the <think> and tool-response branches run), sometimes arbitrary
// bytes; contents are arbitrary.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzzer/FuzzedDataProvider.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_tokenizers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  static const char* const kRoles[] = {"system", "user", "assistant", "tool", "observation"};
  const bool add_generation_prompt = in.ConsumeBool();
  std::vector<dmoe::model::ChatMessage> messages;
  while (in.remaining_bytes() > 0 && messages.size() < 64) {
    dmoe::model::ChatMessage m;
    const uint8_t role = in.ConsumeIntegral<uint8_t>();
    m.role = role < 250 ? kRoles[role % 5] : in.ConsumeRandomLengthString(16);
    m.content = in.ConsumeRandomLengthString(4096);
    messages.push_back(std::move(m));
  }
  auto prompt = dmoe::model::RenderChat(messages, add_generation_prompt);
  if (!prompt.ok()) return 0;
  if (prompt->rfind("<role>SYSTEM</role>", 0) != 0) std::abort();
  const dmoe::model::Tokenizer& tokenizer = *dmoe_fuzz::Tokenizers()[0];
  for (int32_t id : tokenizer.Encode(*prompt)) {
    if (id < 0 || id >= tokenizer.vocab_size()) std::abort();
  }
  return 0;
}
