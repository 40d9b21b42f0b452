#include "clients/cli/denoise_view.h"

#include <sys/ioctl.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "clients/cli/cli_common.h"

namespace dmoe::cli {
namespace {

constexpr char kMask[] = "\u2591";          // ░
constexpr char kPromptMarker[] = "\u2026";  // …
constexpr char kNewline[] = "\u23ce";       // ⏎
constexpr char kHighlight[] = "\033[1;32m";
constexpr char kEditHighlight[] = "\033[1;33m";
constexpr char kDim[] = "\033[2m";
constexpr char kReset[] = "\033[0m";

// Decodes the code point at s[*i] (valid UTF-8, as SanitizeUtf8 leaves it) and advances *i.
char32_t NextCodePoint(const std::string& s, size_t* i) {
  const unsigned char c = s[*i];
  const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
  char32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
  for (int k = 1; k < len && *i + k < s.size(); ++k) cp = (cp << 6) | (s[*i + k] & 0x3F);
  *i += len;
  return cp;
}

int CodePointWidth(char32_t cp) {
  if ((cp >= 0x0300 && cp <= 0x036F) || cp == 0x200B || (cp >= 0xFE00 && cp <= 0xFE0F)) return 0;
  const bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) ||
                    (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
                    (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
                    (cp >= 0xFFE0 && cp <= 0xFFE6) || (cp >= 0x1F300 && cp <= 0x1F64F) ||
                    (cp >= 0x1F900 && cp <= 0x1F9FF) || (cp >= 0x20000 && cp <= 0x3FFFD);
  return wide ? 2 : 1;
}

// A token's text on one line: newlines as ⏎, tabs as a space, other control bytes dropped.
std::string Printable(const std::string& raw) {
  std::string out;
  for (char c : SanitizeUtf8(raw)) {
    if (c == '\n') {
      out += kNewline;
    } else if (c == '\t') {
      out += ' ';
    } else if ((static_cast<unsigned char>(c) >= 0x20 && c != 0x7F) ||
               static_cast<unsigned char>(c) >= 0x80) {
      out += c;
    }
  }
  return out;
}

// Cuts `text` to at most `width` columns.
std::string Truncate(const std::string& text, int width) {
  size_t i = 0;
  int used = 0;
  while (i < text.size()) {
    size_t next = i;
    const int w = CodePointWidth(NextCodePoint(text, &next));
    if (used + w > width) break;
    used += w;
    i = next;
  }
  return text.substr(0, i);
}

}  // namespace

int TerminalColumns(int fd) {
  struct winsize size = {};
  if (ioctl(fd, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  if (const char* columns = std::getenv("COLUMNS"); columns != nullptr) {
    const int n = std::atoi(columns);
    if (n > 0) return n;
  }
  return 80;
}

DenoiseView::TokenText TokenTextOf(const model::Tokenizer* tokenizer) {
  if (tokenizer == nullptr) return [](int32_t id) { return absl::StrCat("[", id, "]"); };
  // Special tokens (<|endoftext|>, <|role_end|>, ...) as one ◇: the tiny models fill the tail
  // of a block with them, and their full names would hide the text.
  return [tokenizer](int32_t id) {
    return tokenizer->IsSpecial(id) ? std::string("\u25c7") : tokenizer->TokenBytes(id);
  };
}

int DisplayWidth(const std::string& utf8) {
  int width = 0;
  for (size_t i = 0; i < utf8.size();) width += CodePointWidth(NextCodePoint(utf8, &i));
  return width;
}

DenoiseView::DenoiseView(DenoiseViewOptions options, TokenText token_text)
    : options_(options), token_text_(std::move(token_text)) {
  if (options_.width < 8) options_.width = 8;
}

std::vector<DenoiseView::Piece> DenoiseView::Pieces(const Canvas& canvas) const {
  const bool same_block = canvas.block_start == previous_block_start_;
  std::vector<Piece> pieces;
  for (size_t i = 0; i < canvas.tokens.size(); ++i) {
    if (canvas.block_start + static_cast<int64_t>(i) < canvas.prompt_length) continue;
    const int32_t t = canvas.tokens[i];
    const bool was_masked = !same_block || i >= previous_tokens_.size() ||
                            previous_tokens_[i] == canvas.mask_id;
    // Token editing rewrites decoded tokens of the current block, or re-masks them.
    const bool edited = !was_masked && previous_tokens_[i] != t;
    if (t == canvas.mask_id) {
      pieces.push_back({kMask, 1, false, edited});
      continue;
    }
    std::string text = Printable(token_text_(t));
    const int width = DisplayWidth(text);
    pieces.push_back({std::move(text), width, was_masked, edited});
  }
  return pieces;
}

std::string DenoiseView::Status(const Canvas& canvas, const std::vector<Piece>& pieces) const {
  int64_t edited = 0;
  for (const Piece& p : pieces) edited += p.edited;
  int64_t generated = 0, filled = 0;
  for (size_t i = 0; i < canvas.tokens.size(); ++i) {
    if (canvas.block_start + static_cast<int64_t>(i) < canvas.prompt_length) continue;
    ++generated;
    filled += canvas.tokens[i] != canvas.mask_id;
  }
  const int64_t percent = generated > 0 ? filled * 100 / generated : 100;
  return absl::StrCat("block @", canvas.block_start, " \u00b7 forward ", canvas.forward,
                      " \u00b7 ", filled, "/", generated, " filled (", percent, "%)",
                      edited > 0 ? absl::StrCat(" \u00b7 ", edited, " edited") : "");
}

std::vector<std::string> DenoiseView::Wrap(const std::string& status,
                                           const std::vector<Piece>& pieces) const {
  const int width = options_.width;
  std::vector<std::string> lines = {Truncate(status, width)};
  std::string line;
  int used = 0;
  auto flush = [&] {
    lines.push_back(std::move(line));
    line.clear();
    used = 0;
  };
  auto append = [&](const std::string& text, int w, const Piece& p) {
    if (used > 0 && used + w > width) flush();
    line += p.fresh    ? absl::StrCat(kHighlight, text, kReset)
            : p.edited ? absl::StrCat(kEditHighlight, text, kReset)
                       : text;
    used += w;
  };
  for (const Piece& p : pieces) {
    if (p.width <= width) {
      append(p.text, p.width, p);
      continue;
    }
    // Longer than a whole line: split it by code points.
    for (size_t i = 0; i < p.text.size();) {
      const size_t begin = i;
      const int w = CodePointWidth(NextCodePoint(p.text, &i));
      append(p.text.substr(begin, i - begin), w, p);
    }
  }
  if (used > 0 || lines.size() == 1) flush();
  return lines;
}

std::string DenoiseView::Render(const Canvas& canvas) {
  const std::vector<Piece> pieces = Pieces(canvas);
  const bool has_prompt = canvas.block_start < canvas.prompt_length;
  std::string out;
  if (!options_.tty) {
    absl::StrAppend(&out, "[", Status(canvas, pieces), "] ", has_prompt ? kPromptMarker : "");
    for (const Piece& p : pieces) out += p.text;
    out += "\n";
  } else {
    out = Clear();
    std::vector<Piece> body;
    if (has_prompt) body.push_back({absl::StrCat(kDim, kPromptMarker, kReset), 1, false, false});
    body.insert(body.end(), pieces.begin(), pieces.end());
    const std::vector<std::string> lines = Wrap(Status(canvas, pieces), body);
    for (size_t i = 0; i < lines.size(); ++i) absl::StrAppend(&out, i ? "\n" : "", lines[i]);
    lines_on_screen_ = static_cast<int>(lines.size());
  }
  previous_block_start_ = canvas.block_start;
  previous_tokens_ = canvas.tokens;
  return out;
}

std::string DenoiseView::Clear() {
  if (!options_.tty || lines_on_screen_ == 0) return "";
  std::string out;
  if (lines_on_screen_ > 1) absl::StrAppend(&out, "\033[", lines_on_screen_ - 1, "A");
  out += "\r\033[J";
  lines_on_screen_ = 0;
  return out;
}

}  // namespace dmoe::cli
