// Stop strings (request-supplied) over generated ids: ValidateStopStrings, then the
// StopStringDetokenizer and the StopStringMatcher on what the tiny tokenizer decodes.
// Input (FuzzedDataProvider): up to 4 stop strings, a text for the matcher alone, then the
// generated ids as little-endian uint16 (mod vocab size), pushed in chunks.
// Checked: the text shown never contains a stop string, and is a prefix of the whole decoded
// text; a match's stop_after is within the pushed ids.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzzer/FuzzedDataProvider.h"
#include "model/stop_strings.h"
#include "tests/fuzz/fuzz_tokenizers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const dmoe::model::Tokenizer& tokenizer = *dmoe_fuzz::Tokenizers()[0];
  const bool skip_special = in.ConsumeBool();
  std::vector<std::string> stop(in.ConsumeIntegralInRange<size_t>(0, 4));
  for (std::string& s : stop) s = in.ConsumeRandomLengthString(dmoe::model::kMaxStopStringBytes + 2);
  if (!dmoe::model::ValidateStopStrings(stop, "stop").ok()) return 0;

  const std::string raw_text = in.ConsumeRandomLengthString(1024);  // for the matcher alone

  dmoe::model::StopStringDetokenizer detokenizer(tokenizer, skip_special, stop);
  std::vector<int32_t> all_ids;
  std::string shown;
  size_t kept = 0;
  bool stopped = false;
  while (in.remaining_bytes() > 0 && !stopped) {
    std::vector<int32_t> ids(in.ConsumeIntegralInRange<size_t>(1, 8));
    for (int32_t& id : ids) id = in.ConsumeIntegral<uint16_t>() % tokenizer.vocab_size();
    const auto chunk = detokenizer.Push(ids);
    shown += chunk.text;
    all_ids.insert(all_ids.end(), ids.begin(), ids.end());
    if (chunk.stop_after) {
      if (*chunk.stop_after == 0 || *chunk.stop_after > ids.size()) std::abort();
      kept += *chunk.stop_after;
      stopped = true;
      if (!detokenizer.stopped()) std::abort();
    } else {
      kept += ids.size();
    }
  }
  if (!stopped) shown += detokenizer.Flush();
  for (const std::string& s : stop) {
    if (shown.find(s) != std::string::npos) std::abort();
  }
  // Shown text is a prefix of the decoded ids that were kept (or all of it without a match).
  std::vector<int32_t> kept_ids(all_ids.begin(), all_ids.begin() + kept);
  dmoe::model::StreamingDetokenizer plain(tokenizer, skip_special);
  std::string full;
  for (int32_t id : kept_ids) full += plain.Push({id});
  full += plain.Flush();
  if (full.compare(0, shown.size(), shown) != 0) std::abort();

  // The matcher alone on raw text.
  dmoe::model::StopStringMatcher matcher(stop);
  std::string text_shown;
  for (size_t i = 0; i < raw_text.size() && !matcher.stopped(); i += 3) {
    text_shown += matcher.Push(raw_text.substr(i, 3));
  }
  if (!matcher.stopped()) text_shown += matcher.Flush();
  for (const std::string& s : stop) {
    if (text_shown.find(s) != std::string::npos) std::abort();
  }
  return 0;
}
