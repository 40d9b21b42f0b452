// UTF-8 and byte-level helpers of the tokenizer (tokenizer_internal.h).
#include <array>
#include <string>
#include <string_view>

#include "model/tokenizer_internal.h"

namespace dmoe::model::tokenizer_internal {
namespace {

// Number of bytes a UTF-8 sequence starting with `lead` has (0 when `lead` cannot start one).
int Utf8Width(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether `b` may follow `lead` as the second byte (the Unicode table 3-7 ranges, which rule out
// overlongs, surrogates and code points above U+10FFFF).
bool ValidSecondByte(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

bool IsContinuation(uint8_t b) { return b >= 0x80 && b <= 0xBF; }

// Length of the longest well-formed prefix of a sequence at `pos` (1 for an invalid lead byte),
// and whether that prefix is a whole character.
size_t ScanSequence(std::string_view s, size_t pos, bool* complete) {
  const uint8_t lead = static_cast<uint8_t>(s[pos]);
  const int width = Utf8Width(lead);
  *complete = false;
  if (width == 1) {
    *complete = true;
    return 1;
  }
  if (width == 0) return 1;
  size_t n = 1;
  while (n < static_cast<size_t>(width) && pos + n < s.size()) {
    const uint8_t b = static_cast<uint8_t>(s[pos + n]);
    const bool ok = n == 1 ? ValidSecondByte(lead, b) : IsContinuation(b);
    if (!ok) return n;
    ++n;
  }
  *complete = n == static_cast<size_t>(width);
  return n;
}

struct ByteTables {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 512> to_byte;  // code points < 512 cover the whole mapping
};

const ByteTables& Tables() {
  static const ByteTables* tables = [] {
    auto* t = new ByteTables();
    t->to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const char32_t cp =
          printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      AppendUtf8(cp, &t->to_unicode[b]);
      t->to_byte[cp] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return *tables;
}

}  // namespace

size_t DecodeUtf8(std::string_view s, size_t pos, char32_t* cp) {
  if (pos >= s.size()) return 0;
  bool complete = false;
  const size_t n = ScanSequence(s, pos, &complete);
  if (!complete) return 0;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data() + pos);
  switch (n) {
    case 1:
      *cp = p[0];
      break;
    case 2:
      *cp = ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
      break;
    case 3:
      *cp = ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
      break;
    default:
      *cp = ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
  }
  return n;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool complete = false;
    const size_t n = ScanSequence(bytes, pos, &complete);
    if (complete) {
      out.append(bytes.substr(pos, n));
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD for the maximal ill-formed subpart
    }
    pos += n;
  }
  return out;
}

size_t IncompleteUtf8TailLength(std::string_view bytes) {
  const size_t size = bytes.size();
  for (size_t back = 1; back <= 3 && back <= size; ++back) {
    const size_t pos = size - back;
    const uint8_t b = static_cast<uint8_t>(bytes[pos]);
    if (IsContinuation(b)) continue;
    bool complete = false;
    const size_t n = ScanSequence(bytes, pos, &complete);
    // A lead byte whose well-formed prefix runs to the end without completing.
    return (!complete && pos + n == size && Utf8Width(b) > 1) ? back : 0;
  }
  return 0;
}

bool IsWhiteSpace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

const std::string& ByteToUnicode(uint8_t b) { return Tables().to_unicode[b]; }

std::optional<uint8_t> UnicodeToByte(char32_t cp) {
  if (cp >= Tables().to_byte.size()) return std::nullopt;
  const int16_t b = Tables().to_byte[cp];
  if (b < 0) return std::nullopt;
  return static_cast<uint8_t>(b);
}

std::string ByteLevelEncode(std::string_view text) {
  const ByteTables& t = Tables();
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out.append(t.to_unicode[static_cast<uint8_t>(c)]);
  return out;
}

std::string ByteLevelDecodeToken(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    char32_t cp = 0;
    const size_t n = DecodeUtf8(token, pos, &cp);
    std::optional<uint8_t> b = n == 0 ? std::nullopt : UnicodeToByte(cp);
    if (!b.has_value()) return std::string(token);
    out.push_back(static_cast<char>(*b));
    pos += n;
  }
  return out;
}

}  // namespace dmoe::model::tokenizer_internal
