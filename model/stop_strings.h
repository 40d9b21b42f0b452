// Stop strings (OpenAI's `stop`): generated text ends right before the first occurrence of any
// of them. Applied on detokenized text as it streams in, so a client never sees text that a
// later block turns into a match.
#ifndef DMOE_MODEL_STOP_STRINGS_H_
#define DMOE_MODEL_STOP_STRINGS_H_

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/tokenizer.h"

namespace dmoe::model {

// Limits every server applies to a request's stop strings.
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
// INVALID_ARGUMENT naming `field` for too many, empty or over-long stop strings.
absl::Status ValidateStopStrings(const std::vector<std::string>& stop, absl::string_view field);

// Text in, text out: Push returns what may be shown now, holding back a tail that could still
// become the start of a stop string; after a match everything from the match on is dropped and
// stopped() is true.
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stop);
  std::string Push(absl::string_view text);
  std::string Flush();  // at the end: the held-back tail (no match can complete any more)
  bool stopped() const { return stopped_; }
  // The stop string that matched ("" before a match). The earliest match wins; at the same
  // position, the first listed.
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stop_;
  size_t hold_ = 0;      // longest stop string - 1
  std::string pending_;  // text not shown yet
  bool stopped_ = false;
  std::string matched_;
};

// Generated ids in, text out, stop strings applied: a StreamingDetokenizer feeding a
// StopStringMatcher one token at a time, so the token that completes a match is known and the
// ids can be cut there (the completing token is the last one kept).
class StopStringDetokenizer {
 public:
  StopStringDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens,
                        std::vector<std::string> stop);

  struct Chunk {
    std::string text;                 // may be shown now
    std::optional<size_t> stop_after;  // a match completed: keep this many of the pushed ids
  };
  Chunk Push(const std::vector<int32_t>& ids);
  std::string Flush();  // the held-back tail at the end
  bool stopped() const { return matcher_.stopped(); }
  const std::string& matched() const { return matcher_.matched(); }

 private:
  StreamingDetokenizer detokenizer_;
  StopStringMatcher matcher_;
  bool any_stop_;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_STOP_STRINGS_H_
