#include "model/stop_strings.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dmoe::model {

absl::Status ValidateStopStrings(const std::vector<std::string>& stop, absl::string_view field) {
  if (stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": at most ", kMaxStopStrings,
                                                   " stop strings, got ", stop.size()));
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] is empty"));
    }
    if (stop[i].size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] is ", stop[i].size(),
                                                     " bytes; the limit is ",
                                                     kMaxStopStringBytes));
    }
  }
  return absl::OkStatus();
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop) : stop_(std::move(stop)) {
  for (const std::string& s : stop_) {
    if (!s.empty()) hold_ = std::max(hold_, s.size() - 1);
  }
}

std::string StopStringMatcher::Push(absl::string_view text) {
  if (stopped_) return "";
  pending_.append(text.data(), text.size());
  size_t match = std::string::npos;
  for (const std::string& s : stop_) {
    if (s.empty()) continue;
    const size_t at = pending_.find(s);
    if (at < match) {
      match = at;
      matched_ = s;
    }
  }
  if (match != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, match);
    pending_.clear();
    return out;
  }
  // Keep the last hold_ bytes: they might be the start of a stop string.
  if (pending_.size() <= hold_) return "";
  size_t cut = pending_.size() - hold_;
  // Never split a UTF-8 character: back up to its first byte.
  while (cut > 0 && cut < pending_.size() &&
         (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string StopStringMatcher::Flush() {
  std::string out = stopped_ ? "" : pending_;
  pending_.clear();
  return out;
}

StopStringDetokenizer::StopStringDetokenizer(const Tokenizer& tokenizer,
                                             bool skip_special_tokens,
                                             std::vector<std::string> stop)
    : detokenizer_(tokenizer, skip_special_tokens),
      matcher_(stop),
      any_stop_(!stop.empty()) {}

StopStringDetokenizer::Chunk StopStringDetokenizer::Push(const std::vector<int32_t>& ids) {
  Chunk chunk;
  if (matcher_.stopped()) {
    chunk.stop_after = 0;
    return chunk;
  }
  if (!any_stop_) {
    chunk.text = detokenizer_.Push(ids);
    return chunk;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    chunk.text += matcher_.Push(detokenizer_.Push({ids[i]}));
    if (matcher_.stopped()) {
      chunk.stop_after = i + 1;
      break;
    }
  }
  return chunk;
}

std::string StopStringDetokenizer::Flush() {
  if (matcher_.stopped()) return "";
  std::string tail = matcher_.Push(detokenizer_.Flush());
  return tail + matcher_.Flush();
}

}  // namespace dmoe::model
