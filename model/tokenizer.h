// Byte-level BPE tokenizer read from a Hugging Face `tokenizer.json` (MODEL-SPEC.md §3).
// Ids equal Hugging Face `tokenizers` for the model families dmoe serves.
#ifndef DMOE_MODEL_TOKENIZER_H_
#define DMOE_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dmoe::model {

// Thread-safe after construction (all methods const).
class Tokenizer {
 public:
  // Reads `<dir>/tokenizer.json` and, if present, `<dir>/tokenizer_config.json`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir);
  // Same from file contents; `source` names the origin in errors. `config_json` may be empty.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const std::string& tokenizer_json,
                                                             const std::string& config_json,
                                                             const std::string& source);
  virtual ~Tokenizer() = default;

  // Encodes like `tokenizers` Tokenizer.encode(text, add_special_tokens=true): added tokens
  // are matched first, the rest is normalised, pre-tokenised, byte-mapped and BPE-merged.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  // Decodes ids to UTF-8 (byte-level decoder). Invalid UTF-8 becomes U+FFFD, as in HF.
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;
  // Raw bytes of one token after byte-level decoding (may be a partial UTF-8 sequence).
  virtual std::string TokenBytes(int32_t id) const = 0;

  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual std::optional<std::string> IdToToken(int32_t id) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // Largest id + 1 (vocab plus added tokens).
  virtual int32_t vocab_size() const = 0;
  // From tokenizer_config.json (empty when absent).
  virtual const std::string& chat_template() const = 0;
  // Token strings named by tokenizer_config.json `bos_token` / `eos_token` / `pad_token`
  // (empty when absent). Informational: Encode never adds them by itself.
  virtual const std::string& bos_token() const { return EmptyString(); }
  virtual const std::string& eos_token() const { return EmptyString(); }
  virtual const std::string& pad_token() const { return EmptyString(); }

 protected:
  static const std::string& EmptyString();
};

// Ids the decoder needs: the mask token and the tokens that end a generation.
struct DecodeTokenIds {
  int32_t mask_id = -1;
  std::vector<int32_t> stop_ids;
};

// Resolves `<|mask|>` and the stop tokens (`<|endoftext|>`, `<|role_end|>`) from the
// tokenizer; `mask_override` / `stop_override` (from flags) replace them when set.
// FAILED_PRECONDITION naming the token when the mask id is missing or equals a stop id.
absl::StatusOr<DecodeTokenIds> ResolveDecodeTokenIds(const Tokenizer& tokenizer,
                                                     std::optional<int32_t> mask_override,
                                                     std::optional<std::vector<int32_t>> stop_override);

// Turns generated ids into text incrementally: a multi-byte UTF-8 character split across
// pushes is emitted once, whole, when its last byte arrives. Thread-compatible.
class StreamingDetokenizer {
 public:
  StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);
  // Returns the text that became complete with `ids`.
  std::string Push(const std::vector<int32_t>& ids);
  // Returns whatever is left (an incomplete tail becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
};

// One chat turn. role: "system", "user", "assistant" (or "observation" for tool results).
struct ChatMessage {
  std::string role;
  std::string content;
};

// Renders messages with the Ling 2.0 chat template (MODEL-SPEC.md §3):
// <role>SYSTEM</role>{system\n}detailed thinking off<|role_end|><role>HUMAN</role>{u}<|role_end|>
// ... and `<role>ASSISTANT</role>` when add_generation_prompt. INVALID_ARGUMENT on unknown roles.
absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_TOKENIZER_H_
