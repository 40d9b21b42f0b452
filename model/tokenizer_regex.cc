// PCRE2-backed regex with Oniguruma (Hugging Face `tokenizers`) matching semantics.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/tokenizer_internal.h"

namespace dmoe::model::tokenizer_internal {
namespace {

using tokenizer_internal::Cat;

constexpr std::string_view kWordClass = R"(\p{L}\p{M}\p{Nd}\p{Pc})";

pcre2_code* AsCode(void* p) { return static_cast<pcre2_code*>(p); }

}  // namespace

std::string TranslateOnigurumaPattern(std::string_view pattern) {
  // Oniguruma with a Unicode encoding gives \s the White_Space property (U+0085 yes, U+180E
  // no), \w the Word property and \h the hex digits; PCRE2 10.42 differs on each, so those
  // escapes are spelled out. Everything else is common syntax and passes through.
  std::string out;
  out.reserve(pattern.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      switch (e) {
        case 's':
          out.append(R"(\p{White_Space})");
          break;
        case 'S':
          out.append(R"(\P{White_Space})");
          break;
        case 'w':
          out += Cat(in_class ? "" : "[", kWordClass, in_class ? "" : "]");
          break;
        case 'W':
          if (in_class) {
            out.append(R"(\W)");
          } else {
            out += Cat("[^", kWordClass, "]");
          }
          break;
        case 'h':
          out.append(in_class ? "0-9a-fA-F" : "[0-9a-fA-F]");
          break;
        case 'u': {  // Ruby's \uHHHH is PCRE2's \x{HHHH}
          const std::string_view hex = pattern.substr(i + 1, 4);
          if (hex.size() == 4 &&
              hex.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos) {
            out += Cat("\\x{", hex, "}");
            i += 4;
          } else {
            out.append("\\u");
          }
          break;
        }
        case 'H':
          out.append(in_class ? R"(\H)" : "[^0-9a-fA-F]");
          break;
        case 'Q': {  // \Q...\E literal run: copy verbatim
          const size_t end = pattern.find("\\E", i + 1);
          const size_t stop = end == std::string_view::npos ? pattern.size() : end + 2;
          out.append("\\Q");
          out.append(pattern.substr(i + 1, stop - (i + 1)));
          i = stop - 1;
          break;
        }
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);  // POSIX class such as [:alpha:]
      if (end != std::string_view::npos) {
        out.append(pattern.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern, bool literal) {
  const std::string translated =
      literal ? std::string(pattern) : TranslateOnigurumaPattern(pattern);
  pcre2_compile_context* ctx = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(ctx, PCRE2_NEWLINE_LF);
  // PCRE2_LITERAL admits no other pattern options besides UTF.
  const uint32_t options =
      literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), options, &error, &offset, ctx);
  pcre2_compile_context_free(ctx);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(
        Cat("regex '", pattern, "' does not compile: ", reinterpret_cast<const char*>(message),
            " at offset ", offset));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
  return std::unique_ptr<Regex>(new Regex(std::string(pattern), code));
}

Regex::~Regex() { pcre2_code_free(AsCode(code_)); }

int Regex::MatchAt(std::string_view text, size_t start, size_t* s, size_t* e) const {
  struct MatchData {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    ~MatchData() { pcre2_match_data_free(data); }
  };
  thread_local MatchData md;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc =
      pcre2_match(AsCode(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK, md.data, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    rc = pcre2_match(AsCode(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                     md.data, nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc < 0) return rc;
  // rc == 0 only says the ovector has no room for capture groups; the whole match is there.
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
  *s = ov[0];
  *e = ov[1];
  return 1;
}

absl::Status Regex::FindAll(std::string_view text,
                            std::vector<std::pair<size_t, size_t>>* matches) const {
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= text.size()) {
    size_t s = 0;
    size_t e = 0;
    const int rc = MatchAt(text, last_end, &s, &e);
    if (rc == 0) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      return absl::InternalError(
          Cat("regex '", pattern_, "' failed: ", reinterpret_cast<const char*>(message)));
    }
    if (s == e && have_last && last_match_end == e) {
      // No empty match right after the previous match: step one character and search again.
      char32_t cp = 0;
      const size_t n = DecodeUtf8(text, last_end, &cp);
      last_end += n == 0 ? 1 : n;
      continue;
    }
    last_end = e;
    have_last = true;
    last_match_end = e;
    matches->emplace_back(s, e);
  }
  return absl::OkStatus();
}

bool Regex::Matches(std::string_view text) const {
  size_t s = 0;
  size_t e = 0;
  return MatchAt(text, 0, &s, &e) == 1;
}

}  // namespace dmoe::model::tokenizer_internal
