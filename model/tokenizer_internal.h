// Private building blocks of the tokenizer (model/tokenizer.h), shared with the BPE trainer in
// tools/tokenizer_gen/. Not part of the public API: names and behaviour may change.
#ifndef DMOE_MODEL_TOKENIZER_INTERNAL_H_
#define DMOE_MODEL_TOKENIZER_INTERNAL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dmoe::model::tokenizer_internal {

// ---- String building --------------------------------------------------------------------------
// Debian's Abseil keeps absl::string_view distinct from std::string_view, so absl::StrCat does
// not take std::string_view; Cat() is the small replacement used by the tokenizer code.

inline void CatPiece(std::string* out, std::string_view s) { out->append(s); }
inline void CatPiece(std::string* out, const std::string& s) { out->append(s); }
inline void CatPiece(std::string* out, const char* s) { out->append(s); }
inline void CatPiece(std::string* out, absl::string_view s) { out->append(s.data(), s.size()); }
inline void CatPiece(std::string* out, char c) { out->push_back(c); }
template <typename T>
requires std::is_integral_v<T>
inline void CatPiece(std::string* out, T v) { out->append(std::to_string(v)); }
template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  (CatPiece(&out, args), ...);
  return out;
}

// std::string_view -> absl::string_view (for absl containers' heterogeneous lookup).
inline absl::string_view AsAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// ---- UTF-8 ----------------------------------------------------------------------------------

// Decodes the well-formed UTF-8 character starting at `s[pos]`. Returns its length in bytes
// (1..4) and stores the code point in `*cp`, or returns 0 when the bytes there are not a
// complete well-formed character.
size_t DecodeUtf8(std::string_view s, size_t pos, char32_t* cp);

// Appends the UTF-8 encoding of `cp` (must be a Unicode scalar value).
void AppendUtf8(char32_t cp, std::string* out);

// Converts bytes to valid UTF-8 the way Rust's `String::from_utf8_lossy` does (which is what
// Hugging Face uses when decoding): each maximal ill-formed subsequence becomes one U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

// Length of the trailing bytes of `bytes` that form a well-formed but incomplete UTF-8 prefix
// (e.g. `E2 82` of `E2 82 AC`), i.e. bytes that may still become a character. 0..3.
size_t IncompleteUtf8TailLength(std::string_view bytes);

// Unicode White_Space property (what Rust's `char::is_whitespace` and Oniguruma's `\s` test).
bool IsWhiteSpace(char32_t cp);

// ---- Byte-level (GPT-2 bytes_to_unicode) ----------------------------------------------------

// The UTF-8 string of the character that stands for byte `b` in byte-level vocabularies.
const std::string& ByteToUnicode(uint8_t b);

// Inverse of ByteToUnicode for one code point; nullopt when `cp` stands for no byte.
std::optional<uint8_t> UnicodeToByte(char32_t cp);

// Maps every byte of `text` to its byte-level character.
std::string ByteLevelEncode(std::string_view text);

// Maps the characters of one token back to bytes; when some character stands for no byte the
// token's own UTF-8 bytes are returned (what HF's ByteLevel decoder does).
std::string ByteLevelDecodeToken(std::string_view token);

// ---- Regex ----------------------------------------------------------------------------------

// A compiled PCRE2 regex that matches like the Oniguruma regexes Hugging Face `tokenizers`
// uses: UTF + Unicode properties, `\s`/`\S` = White_Space, `\w` = L|M|Nd|Pc, `\h` = hex digit,
// `^`/`$` at line boundaries (Ruby syntax). Thread-safe after construction.
class Regex {
 public:
  // `pattern` is a regex in the tokenizer.json (Oniguruma) dialect, or a literal string when
  // `literal` (HF's `Split` with a `String` pattern). INVALID_ARGUMENT when it does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Successive non-overlapping matches [start, end) (byte offsets) in `text` (valid UTF-8),
  // following onig's `find_iter`: after an empty match the search moves one character on, and
  // an empty match right where the previous match ended is skipped.
  absl::Status FindAll(std::string_view text,
                       std::vector<std::pair<size_t, size_t>>* matches) const;

  // True when the regex matches somewhere in `text`.
  bool Matches(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex(std::string pattern, void* code) : pattern_(std::move(pattern)), code_(code) {}
  // Runs one match from `start`; returns 1 on a match (fills *s, *e), 0 on none, <0 on error.
  int MatchAt(std::string_view text, size_t start, size_t* s, size_t* e) const;

  std::string pattern_;
  void* code_;  // pcre2_code*
};

// Rewrites an Oniguruma-dialect pattern into the PCRE2 equivalent described above.
std::string TranslateOnigurumaPattern(std::string_view pattern);

// The GPT-2 pattern HF's ByteLevel pre-tokenizer applies when `use_regex` is true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The Ling 2.0 / LLaDA2 split pattern of MODEL-SPEC.md §3 (what the trainer writes).
inline constexpr std::string_view kLingPattern =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";

}  // namespace dmoe::model::tokenizer_internal

#endif  // DMOE_MODEL_TOKENIZER_INTERNAL_H_
