// Byte-level BPE tokenizer (tokenizer.h). The pipeline mirrors Hugging Face `tokenizers`
// step by step, because ids must be identical:
//   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest),
//   2. the remaining pieces are normalised and tokens with normalized=true are cut out,
//   3. each remaining piece runs through the pre-tokenizer steps (Split / ByteLevel),
//   4. each pre-token is BPE-merged (lowest merge rank first, HF's heap order),
//   5. the post-processor adds its special tokens.
#include "model/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"

#ifdef DMOE_HAVE_ICU
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace dmoe::model {
namespace {

using json = nlohmann::json;
using tokenizer_internal::AsAbsl;
using tokenizer_internal::ByteLevelDecodeToken;
using tokenizer_internal::ByteLevelEncode;
using tokenizer_internal::Cat;
using tokenizer_internal::DecodeUtf8;
using tokenizer_internal::IsWhiteSpace;
using tokenizer_internal::Regex;

constexpr size_t kMaxCachedPieceBytes = 256;  // like HF's BPE cache (long words are not cached)
constexpr size_t kMaxCacheEntries = 1 << 16;  // HF also stops inserting once full

// ---- JSON helpers (nlohmann::json without exceptions) ---------------------------------------

class JsonContext {
 public:
  explicit JsonContext(std::string source) : source_(std::move(source)) {}
  absl::Status Invalid(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(Cat(source_, ": field '", field, "' ", what));
  }
  absl::Status Unimplemented(std::string_view field, std::string_view what) const {
    return absl::UnimplementedError(Cat(source_, ": field '", field, "' ", what));
  }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
};

// Null when `obj` is not an object, lacks `key` or holds null there.
const json* Find(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<bool> GetBool(const JsonContext& ctx, const json& obj, std::string_view key,
                             std::string_view field, bool fallback) {
  const json* v = Find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return ctx.Invalid(field, "must be a boolean");
  return v->get<bool>();
}

absl::StatusOr<std::optional<std::string>> GetOptString(const JsonContext& ctx, const json& obj,
                                                        std::string_view key,
                                                        std::string_view field) {
  const json* v = Find(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return ctx.Invalid(field, "must be a string or null");
  return std::optional<std::string>(v->get_ref<const std::string&>());
}

absl::StatusOr<std::string> GetType(const JsonContext& ctx, const json& obj,
                                    std::string_view field) {
  const json* v = Find(obj, "type");
  if (v == nullptr || !v->is_string()) {
    return ctx.Invalid(Cat(field, ".type"), "is missing or not a string");
  }
  return v->get<std::string>();
}

absl::StatusOr<int32_t> ToId(const JsonContext& ctx, const json& v, std::string_view field) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
    return ctx.Invalid(field, "must be a non-negative 32-bit integer id");
  }
  return static_cast<int32_t>(v.get<int64_t>());
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    char32_t cp = 0;
    const size_t n = DecodeUtf8(s, pos, &cp);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

// ---- Pipeline pieces -------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  // What id -> token gives back: HF stores the normalised content of normalized=true tokens
  // (their ids are still looked up by the original content).
  std::string stored_content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// Leftmost-longest literal matcher over added-token contents (HF uses Aho-Corasick with
// MatchKind::LeftmostLongest; a byte trie walked from each position gives the same matches).
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) {}
  void Add(std::string_view pattern, int index) {
    if (pattern.empty()) return;
    int32_t node = 0;
    for (char c : pattern) {
      const auto b = static_cast<uint8_t>(c);
      int32_t next = -1;
      for (const auto& [byte, child] : nodes_[node].children) {
        if (byte == b) next = child;
      }
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(b, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].index < 0) nodes_[node].index = index;  // first pattern wins on duplicates
  }
  bool empty() const { return nodes_.size() == 1; }

  // Finds the leftmost-longest match starting at or after `from`.
  bool Find(std::string_view text, size_t from, size_t* start, size_t* end, int* index) const {
    for (size_t pos = from; pos < text.size(); ++pos) {
      int32_t node = 0;
      int best = -1;
      size_t best_end = 0;
      for (size_t i = pos; i < text.size(); ++i) {
        const auto b = static_cast<uint8_t>(text[i]);
        int32_t next = -1;
        for (const auto& [byte, child] : nodes_[node].children) {
          if (byte == b) next = child;
        }
        if (next < 0) break;
        node = next;
        if (nodes_[node].index >= 0) {
          best = nodes_[node].index;
          best_end = i + 1;
        }
      }
      if (best >= 0) {
        *start = pos;
        *end = best_end;
        *index = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;
    int index = -1;
  };
  std::vector<Node> nodes_;
};

// A piece of text, or an added token already resolved to its id.
struct Segment {
  std::string text;
  int32_t id = -1;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  std::shared_ptr<const Regex> regex;  // Split pattern; GPT-2 regex for ByteLevel(use_regex)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

enum class NormalizerKind { kNfc, kNfd, kNfkc, kNfkd };

// One element of a post-processor template: a run of special-token ids or the sequence.
struct TemplatePiece {
  bool is_sequence = false;
  std::vector<int32_t> ids;
};

struct PostProcessorStep {
  std::vector<TemplatePiece> single;
};

struct TokenizerConfigInfo {
  std::string chat_template;
  std::string bos_token;
  std::string eos_token;
  std::string pad_token;
};

std::shared_ptr<const Regex> Gpt2Regex() {
  static const std::shared_ptr<const Regex> regex = [] {
    auto r = Regex::Compile(tokenizer_internal::kGpt2Pattern, /*literal=*/false);
    DMOE_CHECK(r.ok()) << r.status();
    return std::shared_ptr<const Regex>(std::move(*r));
  }();
  return regex;
}

// Rust `regex` \w (used by HF for single_word): Alphabetic, marks, decimal digits, connector
// punctuation, join controls.
bool IsRustWordChar(std::string_view ch) {
  static const Regex* regex = [] {
    auto r = Regex::Compile(R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", false);
    DMOE_CHECK(r.ok()) << r.status();
    return r->release();
  }();
  return regex->Matches(ch);
}

// The first / last character of `s` (empty when `s` is empty).
std::string_view FirstChar(std::string_view s) {
  if (s.empty()) return s;
  char32_t cp = 0;
  const size_t n = DecodeUtf8(s, 0, &cp);
  return s.substr(0, n == 0 ? 1 : n);
}
std::string_view LastChar(std::string_view s) {
  if (s.empty()) return s;
  size_t pos = s.size() - 1;
  while (pos > 0 && (static_cast<uint8_t>(s[pos]) & 0xC0) == 0x80) --pos;
  return s.substr(pos);
}

// Byte offset where the run of trailing white space of `s` starts.
size_t TrailingSpaceStart(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    std::string_view last = LastChar(s.substr(0, end));
    char32_t cp = 0;
    if (DecodeUtf8(last, 0, &cp) == 0 || !IsWhiteSpace(cp)) break;
    end -= last.size();
  }
  return end;
}
// Length of the run of leading white space of `s`.
size_t LeadingSpaceLength(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    char32_t cp = 0;
    const size_t n = DecodeUtf8(s, pos, &cp);
    if (n == 0 || !IsWhiteSpace(cp)) break;
    pos += n;
  }
  return pos;
}

// ---- BPE model -------------------------------------------------------------------------------

struct MergeInfo {
  int32_t rank;
  int32_t new_id;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class BpeModel {
 public:
  absl::flat_hash_map<std::string, int32_t> vocab;
  absl::flat_hash_map<int32_t, std::string> vocab_r;
  absl::flat_hash_map<uint64_t, MergeInfo> merges;
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  // Appends the ids of one pre-token (HF BPE::tokenize without dropout).
  void Tokenize(std::string_view word, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      auto it = vocab.find(AsAbsl(word));
      if (it != vocab.end()) {
        out->push_back(it->second);
        return;
      }
    }
    std::vector<Symbol> symbols = InitialSymbols(word);
    MergeAll(&symbols);
    for (const Symbol& s : symbols) {
      if (s.len > 0) out->push_back(s.id);
    }
  }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    size_t len;  // bytes of the original word; 0 once merged into its left neighbour
  };

  std::vector<Symbol> InitialSymbols(std::string_view word) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&symbols](int32_t id, size_t len) {
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, -1, len});
      if (index > 0) symbols[index - 1].next = index;
    };
    // Pending run of unknown characters (HF adds it lazily so fuse_unk can extend it).
    bool has_unk = false;
    int32_t unk_id = 0;
    size_t unk_len = 0;
    size_t pos = 0;
    while (pos < word.size()) {
      char32_t cp = 0;
      size_t n = DecodeUtf8(word, pos, &cp);
      if (n == 0) n = 1;
      const bool is_first = pos == 0;
      const bool is_last = pos + n == word.size();
      std::string piece;
      if (!is_first) piece = continuing_subword_prefix;
      piece.append(word.substr(pos, n));
      if (is_last) piece.append(end_of_word_suffix);
      pos += n;
      auto it = vocab.find(piece);
      if (it != vocab.end()) {
        if (has_unk) {
          add(unk_id, unk_len);
          has_unk = false;
        }
        add(it->second, n);
        continue;
      }
      if (byte_fallback) {
        std::vector<int32_t> bytes;
        for (char c : piece) {
          char name[8];
          std::snprintf(name, sizeof(name), "<0x%02X>",
                        static_cast<unsigned>(static_cast<uint8_t>(c)));
          auto bit = vocab.find(absl::string_view(name));
          if (bit == vocab.end()) break;
          bytes.push_back(bit->second);
        }
        if (bytes.size() == piece.size()) {
          for (int32_t id : bytes) add(id, 1);
          continue;
        }
      }
      if (unk_token.has_value()) {
        auto uit = vocab.find(*unk_token);
        if (uit == vocab.end()) continue;  // HF fails here; we drop the character instead
        if (has_unk && fuse_unk) {
          unk_len += n;
        } else {
          if (has_unk) add(unk_id, unk_len);
          has_unk = true;
          unk_id = uit->second;
          unk_len = n;
        }
      }
      // No unk token: HF silently drops the character.
    }
    if (has_unk) add(unk_id, unk_len);
    return symbols;
  }

  // HF Word::merge_all: a min-heap on (rank, position); stale entries are skipped when the
  // pair at that position no longer produces the same token.
  void MergeAll(std::vector<Symbol>* symbols_ptr) const {
    std::vector<Symbol>& symbols = *symbols_ptr;
    struct Candidate {
      int32_t rank;
      int32_t pos;
      int32_t new_id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges.find(PairKey(symbols[i].id, symbols[i + 1].id));
      if (it != merges.end()) {
        queue.push({it->second.rank, static_cast<int32_t>(i), it->second.new_id});
      }
    }
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (left.len == 0 || left.next < 0) continue;
      const int32_t right_pos = left.next;
      const Symbol right = symbols[right_pos];
      auto it = merges.find(PairKey(left.id, right.id));
      if (it == merges.end() || it->second.new_id != top.new_id) continue;
      left.id = top.new_id;
      left.len += right.len;
      left.next = right.next;
      symbols[right_pos].len = 0;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      if (left.prev >= 0) {
        auto pit = merges.find(PairKey(symbols[left.prev].id, left.id));
        if (pit != merges.end()) queue.push({pit->second.rank, left.prev, pit->second.new_id});
      }
      if (left.next >= 0) {
        auto nit = merges.find(PairKey(left.id, symbols[left.next].id));
        if (nit != merges.end()) queue.push({nit->second.rank, top.pos, nit->second.new_id});
      }
    }
  }
};

// ---- The tokenizer ---------------------------------------------------------------------------

// Thread-safe: immutable after FromJson except the word cache, which has its own mutex.
class BpeTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text) const override;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string TokenBytes(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  std::optional<std::string> IdToToken(int32_t id) const override;
  bool IsSpecial(int32_t id) const override { return special_ids_.contains(id); }
  int32_t vocab_size() const override { return vocab_size_; }
  const std::string& chat_template() const override { return config_.chat_template; }
  const std::string& bos_token() const override { return config_.bos_token; }
  const std::string& eos_token() const override { return config_.eos_token; }
  const std::string& pad_token() const override { return config_.pad_token; }
  void SetChatTemplate(std::string t) { config_.chat_template = std::move(t); }

  absl::Status ParseModel(const JsonContext& ctx, const json& root);
  absl::Status ParseAddedTokens(const JsonContext& ctx, const json& root);
  absl::Status ParseNormalizer(const JsonContext& ctx, const json* node, std::string_view field);
  absl::Status ParsePreTokenizer(const JsonContext& ctx, const json* node, std::string_view field);
  absl::Status ParsePostProcessor(const JsonContext& ctx, const json* node, std::string_view field);
  absl::Status ParseDecoder(const JsonContext& ctx, const json* node, std::string_view field);
  absl::Status ParseConfig(const JsonContext& ctx, const json& root);
  absl::Status Finish(const JsonContext& ctx);

 private:
  std::vector<Segment> SplitAddedTokens(std::string text, const TokenTrie& trie) const;
  std::string Normalize(std::string text) const;
  void PreTokenize(std::string piece, std::vector<std::string>* out) const;
  void TokenizeWord(const std::string& word, std::vector<int32_t>* out) const;
  const std::string* TokenString(int32_t id) const;

  BpeModel model_;
  std::vector<AddedToken> added_;                        // HF id order of assignment
  absl::flat_hash_map<std::string, int32_t> added_ids_;  // content -> id
  absl::flat_hash_map<int32_t, int> added_by_id_;        // id -> index into added_
  absl::flat_hash_set<int32_t> special_ids_;
  TokenTrie raw_trie_;         // tokens with normalized=false, matched in the raw text
  TokenTrie normalized_trie_;  // tokens with normalized=true, matched after normalisation
  std::vector<NormalizerKind> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizer_;
  std::vector<PostProcessorStep> post_processor_;
  bool byte_level_decoder_ = false;
  int32_t vocab_size_ = 0;
  TokenizerConfigInfo config_;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

absl::Status BpeTokenizer::ParseModel(const JsonContext& ctx, const json& root) {
  const json* model = Find(root, "model");
  if (model == nullptr || !model->is_object()) return ctx.Invalid("model", "is missing");
  const json* type = Find(*model, "type");
  if (type != nullptr && !type->is_string()) return ctx.Invalid("model.type", "must be a string");
  // HF infers the model from its fields when "type" is absent; vocab + merges means BPE.
  if (type != nullptr && type->get_ref<const std::string&>() != "BPE") {
    return ctx.Unimplemented(
        "model.type", Cat("is '", type->get<std::string>(), "'; only BPE models are supported"));
  }
  const json* vocab = Find(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return ctx.Invalid("model.vocab", "is missing or not an object");
  }
  const json* dropout = Find(*model, "dropout");
  if (dropout != nullptr && (!dropout->is_number() || dropout->get<double>() != 0.0)) {
    return ctx.Unimplemented("model.dropout", "must be null (BPE dropout is not supported)");
  }
  model_.vocab.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    DMOE_ASSIGN_OR_RETURN(int32_t id,
                          ToId(ctx, it.value(), Cat("model.vocab[\"", it.key(), "\"]")));
    model_.vocab[it.key()] = id;
    model_.vocab_r[id] = it.key();
  }
  DMOE_ASSIGN_OR_RETURN(model_.unk_token,
                        GetOptString(ctx, *model, "unk_token", "model.unk_token"));
  DMOE_ASSIGN_OR_RETURN(auto prefix, GetOptString(ctx, *model, "continuing_subword_prefix",
                                                  "model.continuing_subword_prefix"));
  model_.continuing_subword_prefix = prefix.value_or("");
  DMOE_ASSIGN_OR_RETURN(
      auto suffix, GetOptString(ctx, *model, "end_of_word_suffix", "model.end_of_word_suffix"));
  model_.end_of_word_suffix = suffix.value_or("");
  DMOE_ASSIGN_OR_RETURN(model_.fuse_unk, GetBool(ctx, *model, "fuse_unk", "model.fuse_unk", false));
  DMOE_ASSIGN_OR_RETURN(model_.byte_fallback,
                        GetBool(ctx, *model, "byte_fallback", "model.byte_fallback", false));
  DMOE_ASSIGN_OR_RETURN(model_.ignore_merges,
                        GetBool(ctx, *model, "ignore_merges", "model.ignore_merges", false));
  if (model_.unk_token.has_value() && !model_.vocab.contains(*model_.unk_token)) {
    DMOE_LOG(WARNING) << ctx.source() << ": model.unk_token '" << *model_.unk_token
                      << "' is not in the vocabulary; unknown characters will be dropped";
  }

  const json* merges = Find(*model, "merges");
  if (merges == nullptr) return absl::OkStatus();  // a BPE without merges is allowed
  if (!merges->is_array()) return ctx.Invalid("model.merges", "must be an array");
  model_.merges.reserve(merges->size());
  const size_t prefix_len = model_.continuing_subword_prefix.size();
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    const std::string field = Cat("model.merges[", i, "]");
    std::string a;
    std::string b;
    if (m.is_string()) {  // legacy "a b"
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return ctx.Invalid(field, Cat("'", s, "' is not two tokens separated by one space"));
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return ctx.Invalid(field, "must be \"a b\" or [\"a\", \"b\"]");
    }
    auto ait = model_.vocab.find(a);
    auto bit = model_.vocab.find(b);
    if (ait == model_.vocab.end() || bit == model_.vocab.end()) {
      return ctx.Invalid(field, Cat("refers to token '", ait == model_.vocab.end() ? a : b,
                                    "' which is not in model.vocab"));
    }
    const std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : std::string());
    auto mit = model_.vocab.find(merged);
    if (mit == model_.vocab.end()) {
      return ctx.Invalid(field, Cat("produces token '", merged, "' which is not in model.vocab"));
    }
    // Later duplicates overwrite earlier ones, as in HF's HashMap collect.
    model_.merges[PairKey(ait->second, bit->second)] = {static_cast<int32_t>(i), mit->second};
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseAddedTokens(const JsonContext& ctx, const json& root) {
  const json* tokens = Find(root, "added_tokens");
  if (tokens == nullptr) return absl::OkStatus();
  if (!tokens->is_array()) return ctx.Invalid("added_tokens", "must be an array");
  const auto model_size = static_cast<int64_t>(model_.vocab.size());
  for (size_t i = 0; i < tokens->size(); ++i) {
    const json& t = (*tokens)[i];
    const std::string field = Cat("added_tokens[", i, "]");
    const json* content = Find(t, "content");
    if (content == nullptr || !content->is_string()) {
      return ctx.Invalid(Cat(field, ".content"), "is missing or not a string");
    }
    AddedToken token;
    token.content = content->get<std::string>();
    DMOE_ASSIGN_OR_RETURN(token.special, GetBool(ctx, t, "special", field + ".special", false));
    DMOE_ASSIGN_OR_RETURN(token.single_word,
                          GetBool(ctx, t, "single_word", field + ".single_word", false));
    DMOE_ASSIGN_OR_RETURN(token.lstrip, GetBool(ctx, t, "lstrip", field + ".lstrip", false));
    DMOE_ASSIGN_OR_RETURN(token.rstrip, GetBool(ctx, t, "rstrip", field + ".rstrip", false));
    DMOE_ASSIGN_OR_RETURN(token.normalized,
                          GetBool(ctx, t, "normalized", field + ".normalized", !token.special));
    if (token.content.empty()) continue;
    // HF ignores the "id" field: a token keeps its vocab id, otherwise it gets the next id
    // after the model vocabulary / the largest added id (AddedVocabulary::add_tokens).
    bool duplicate = false;
    for (const AddedToken& other : added_) {
      duplicate |= other.content == token.content && other.special == token.special &&
                   other.single_word == token.single_word && other.lstrip == token.lstrip &&
                   other.rstrip == token.rstrip && other.normalized == token.normalized;
    }
    if (duplicate) continue;
    if (auto it = added_ids_.find(token.content); it != added_ids_.end()) {
      token.id = it->second;
    } else if (auto vit = model_.vocab.find(token.content); vit != model_.vocab.end()) {
      token.id = vit->second;
    } else if (added_ids_.empty()) {
      token.id = static_cast<int32_t>(model_size);
    } else {
      int64_t max_id = 0;
      for (const auto& [c, id] : added_ids_) max_id = std::max<int64_t>(max_id, id);
      token.id =
          static_cast<int32_t>(max_id >= model_size || model_size == 0 ? max_id + 1 : model_size);
    }
    if (const json* declared = Find(t, "id"); declared != nullptr &&
                                              declared->is_number_integer() &&
                                              declared->get<int64_t>() != token.id) {
      DMOE_LOG(WARNING) << ctx.source() << ": added token '" << token.content << "' declares id "
                        << declared->get<int64_t>() << " but gets id " << token.id
                        << " (Hugging Face assigns added-token ids the same way)";
    }
    added_ids_[token.content] = token.id;
    // The same content added again with other flags replaces the earlier entry.
    auto existing = std::find_if(added_.begin(), added_.end(),
                                 [&](const AddedToken& o) { return o.content == token.content; });
    if (existing != added_.end()) {
      *existing = token;
    } else {
      added_.push_back(token);
    }
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseNormalizer(const JsonContext& ctx, const json* node,
                                           std::string_view field) {
  if (node == nullptr) return absl::OkStatus();
  DMOE_ASSIGN_OR_RETURN(std::string type, GetType(ctx, *node, field));
  if (type == "Sequence") {
    const json* list = Find(*node, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return ctx.Invalid(Cat(field, ".normalizers"), "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      DMOE_RETURN_IF_ERROR(ParseNormalizer(ctx, &(*list)[i], Cat(field, ".normalizers[", i, "]")));
    }
    return absl::OkStatus();
  }
  NormalizerKind kind;
  if (type == "NFC") {
    kind = NormalizerKind::kNfc;
  } else if (type == "NFD") {
    kind = NormalizerKind::kNfd;
  } else if (type == "NFKC") {
    kind = NormalizerKind::kNfkc;
  } else if (type == "NFKD") {
    kind = NormalizerKind::kNfkd;
  } else {
    return ctx.Unimplemented(
        Cat(field, ".type"),
        Cat("is normalizer '", type, "'; supported: null, NFC, NFD, NFKC, NFKD, Sequence"));
  }
#ifndef DMOE_HAVE_ICU
  return ctx.Unimplemented(Cat(field, ".type"),
                           Cat("is normalizer '", type, "', but dmoe was built without ICU"));
#endif
  normalizers_.push_back(kind);
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizer(const JsonContext& ctx, const json* node,
                                             std::string_view field) {
  if (node == nullptr) return absl::OkStatus();
  DMOE_ASSIGN_OR_RETURN(std::string type, GetType(ctx, *node, field));
  if (type == "Sequence") {
    const json* list = Find(*node, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return ctx.Invalid(Cat(field, ".pretokenizers"), "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      DMOE_RETURN_IF_ERROR(
          ParsePreTokenizer(ctx, &(*list)[i], Cat(field, ".pretokenizers[", i, "]")));
    }
    return absl::OkStatus();
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    DMOE_ASSIGN_OR_RETURN(step.add_prefix_space, GetBool(ctx, *node, "add_prefix_space",
                                                         Cat(field, ".add_prefix_space"), true));
    DMOE_ASSIGN_OR_RETURN(bool use_regex,
                          GetBool(ctx, *node, "use_regex", Cat(field, ".use_regex"), true));
    if (use_regex) step.regex = Gpt2Regex();
    pre_tokenizer_.push_back(std::move(step));
    return absl::OkStatus();
  }
  if (type != "Split") {
    return ctx.Unimplemented(Cat(field, ".type"), Cat("is pre-tokenizer '", type,
                                                      "'; supported: Split, ByteLevel, Sequence"));
  }
  const json* pattern = Find(*node, "pattern");
  const std::string pattern_field = Cat(field, ".pattern");
  if (pattern == nullptr || !pattern->is_object()) {
    return ctx.Invalid(pattern_field, "must be {\"Regex\": ...} or {\"String\": ...}");
  }
  const json* regex = Find(*pattern, "Regex");
  const json* literal = Find(*pattern, "String");
  const json* chosen = regex != nullptr ? regex : literal;
  if (chosen == nullptr || !chosen->is_string()) {
    return ctx.Invalid(pattern_field, "must be {\"Regex\": ...} or {\"String\": ...}");
  }
  auto compiled = Regex::Compile(chosen->get_ref<const std::string&>(), regex == nullptr);
  if (!compiled.ok()) return ctx.Invalid(pattern_field, std::string(compiled.status().message()));
  step.regex = std::shared_ptr<const Regex>(std::move(*compiled));
  DMOE_ASSIGN_OR_RETURN(step.invert, GetBool(ctx, *node, "invert", Cat(field, ".invert"), false));
  const json* behavior = Find(*node, "behavior");
  const std::string behavior_name =
      behavior != nullptr && behavior->is_string() ? behavior->get<std::string>() : "";
  if (behavior_name == "Removed") {
    step.behavior = SplitBehavior::kRemoved;
  } else if (behavior_name == "Isolated") {
    step.behavior = SplitBehavior::kIsolated;
  } else if (behavior_name == "MergedWithPrevious") {
    step.behavior = SplitBehavior::kMergedWithPrevious;
  } else if (behavior_name == "MergedWithNext") {
    step.behavior = SplitBehavior::kMergedWithNext;
  } else if (behavior_name == "Contiguous") {
    step.behavior = SplitBehavior::kContiguous;
  } else {
    return ctx.Invalid(Cat(field, ".behavior"),
                       Cat("is '", behavior_name,
                           "'; expected Removed, Isolated, MergedWithPrevious, "
                           "MergedWithNext or Contiguous"));
  }
  pre_tokenizer_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePostProcessor(const JsonContext& ctx, const json* node,
                                              std::string_view field) {
  if (node == nullptr) return absl::OkStatus();
  DMOE_ASSIGN_OR_RETURN(std::string type, GetType(ctx, *node, field));
  if (type == "ByteLevel") return absl::OkStatus();  // only touches offsets
  if (type == "Sequence") {
    const json* list = Find(*node, "processors");
    if (list == nullptr || !list->is_array()) {
      return ctx.Invalid(Cat(field, ".processors"), "must be an array");
    }
    for (size_t i = 0; i < list->size(); ++i) {
      DMOE_RETURN_IF_ERROR(
          ParsePostProcessor(ctx, &(*list)[i], Cat(field, ".processors[", i, "]")));
    }
    return absl::OkStatus();
  }
  PostProcessorStep step;
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    // {"cls": [token, id], "sep": [token, id]}: [CLS] A [SEP].
    for (const char* key : {"cls", "sep"}) {
      const json* pair = Find(*node, key);
      if (pair == nullptr || !pair->is_array() || pair->size() != 2) {
        return ctx.Invalid(Cat(field, ".", key), "must be [token, id]");
      }
      DMOE_ASSIGN_OR_RETURN(int32_t id, ToId(ctx, (*pair)[1], Cat(field, ".", key, "[1]")));
      if (std::string_view(key) == "sep") step.single.push_back({.is_sequence = true, .ids = {}});
      step.single.push_back({.is_sequence = false, .ids = {id}});
    }
    post_processor_.push_back(std::move(step));
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return ctx.Unimplemented(Cat(field, ".type"),
                             Cat("is post-processor '", type,
                                 "'; supported: ByteLevel, TemplateProcessing, "
                                 "BertProcessing, RobertaProcessing, Sequence"));
  }
  const json* single = Find(*node, "single");
  if (single == nullptr || !single->is_array()) {
    return ctx.Invalid(Cat(field, ".single"), "must be an array");
  }
  const json* specials = Find(*node, "special_tokens");
  for (size_t i = 0; i < single->size(); ++i) {
    const json& piece = (*single)[i];
    const std::string piece_field = Cat(field, ".single[", i, "]");
    if (const json* seq = Find(piece, "Sequence"); seq != nullptr) {
      step.single.push_back({.is_sequence = true, .ids = {}});
      continue;
    }
    const json* special = Find(piece, "SpecialToken");
    const json* name = special != nullptr ? Find(*special, "id") : nullptr;
    if (name == nullptr || !name->is_string()) {
      return ctx.Invalid(piece_field,
                         "must be {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
    }
    const json* entry =
        specials != nullptr ? Find(*specials, name->get_ref<const std::string&>()) : nullptr;
    const json* ids = entry != nullptr ? Find(*entry, "ids") : nullptr;
    if (ids == nullptr || !ids->is_array()) {
      return ctx.Invalid(Cat(field, ".special_tokens"),
                         Cat("has no ids for '", name->get<std::string>(), "'"));
    }
    TemplatePiece tp;
    for (size_t k = 0; k < ids->size(); ++k) {
      DMOE_ASSIGN_OR_RETURN(int32_t id, ToId(ctx, (*ids)[k], Cat(field, ".special_tokens.ids")));
      tp.ids.push_back(id);
    }
    step.single.push_back(std::move(tp));
  }
  post_processor_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseDecoder(const JsonContext& ctx, const json* node,
                                        std::string_view field) {
  if (node == nullptr) return absl::OkStatus();  // HF joins tokens with spaces
  DMOE_ASSIGN_OR_RETURN(std::string type, GetType(ctx, *node, field));
  if (type == "ByteLevel") {
    byte_level_decoder_ = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    const json* list = Find(*node, "decoders");
    if (list != nullptr && list->is_array() && list->size() == 1) {
      return ParseDecoder(ctx, &(*list)[0], Cat(field, ".decoders[0]"));
    }
  }
  return ctx.Unimplemented(Cat(field, ".type"),
                           Cat("is decoder '", type, "'; supported: null, ByteLevel"));
}

// Accepts "tok" or {"content": "tok", ...} (transformers' serialised AddedToken).
std::string TokenName(const json* v) {
  if (v == nullptr) return "";
  if (v->is_string()) return v->get<std::string>();
  if (const json* c = Find(*v, "content"); c != nullptr && c->is_string())
    return c->get<std::string>();
  return "";
}

absl::Status BpeTokenizer::ParseConfig(const JsonContext& ctx, const json& root) {
  if (!root.is_object()) return ctx.Invalid("(root)", "must be a JSON object");
  if (const json* t = Find(root, "chat_template"); t != nullptr) {
    if (t->is_string()) {
      config_.chat_template = t->get<std::string>();
    } else if (t->is_array()) {  // [{"name": ..., "template": ...}]: prefer "default"
      for (const json& entry : *t) {
        const json* tmpl = Find(entry, "template");
        const json* name = Find(entry, "name");
        if (tmpl == nullptr || !tmpl->is_string()) continue;
        const bool is_default =
            name != nullptr && name->is_string() && name->get<std::string>() == "default";
        if (config_.chat_template.empty() || is_default)
          config_.chat_template = tmpl->get<std::string>();
      }
    } else {
      return ctx.Invalid("chat_template", "must be a string or a list of templates");
    }
  }
  config_.bos_token = TokenName(Find(root, "bos_token"));
  config_.eos_token = TokenName(Find(root, "eos_token"));
  config_.pad_token = TokenName(Find(root, "pad_token"));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Finish(const JsonContext& ctx) {
  int64_t max_id = -1;
  for (const auto& [token, id] : model_.vocab) max_id = std::max<int64_t>(max_id, id);
  for (size_t i = 0; i < added_.size(); ++i) {
    AddedToken& t = added_[i];
    t.stored_content = t.normalized ? Normalize(t.content) : t.content;
    max_id = std::max<int64_t>(max_id, t.id);
    added_by_id_[t.id] = static_cast<int>(i);
    if (t.special) special_ids_.insert(t.id);
  }
  if (max_id >= INT32_MAX) return ctx.Invalid("model.vocab", "has ids that do not fit in int32");
  vocab_size_ = static_cast<int32_t>(max_id + 1);
  // Encode emits the post-processor's ids as they are: each must name a token, or Encode would
  // hand the model an id outside the vocabulary (found by tests/fuzz/tokenizer_json_fuzz.cc).
  for (const PostProcessorStep& step : post_processor_) {
    for (const TemplatePiece& piece : step.single) {
      for (int32_t id : piece.ids) {
        if (TokenString(id) == nullptr) {
          return ctx.Invalid("post_processor.special_tokens",
                             Cat("has id ", id, ", which is neither in model.vocab nor an added token"));
        }
      }
    }
  }
  // HF builds the tries from the special tokens first, then the others, each in insertion order.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < added_.size(); ++i) {
      const AddedToken& t = added_[i];
      if (t.special != (pass == 0)) continue;
      if (!t.normalized) {
        raw_trie_.Add(t.content, static_cast<int>(i));
      } else {
        normalized_trie_.Add(t.stored_content, static_cast<int>(i));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<Segment> BpeTokenizer::SplitAddedTokens(std::string text, const TokenTrie& trie) const {
  std::vector<Segment> out;
  if (trie.empty()) {
    out.push_back({std::move(text), -1});
    return out;
  }
  size_t start_offset = 0;
  size_t search = 0;
  size_t s = 0;
  size_t e = 0;
  int index = -1;
  while (trie.Find(text, search, &s, &e, &index)) {
    search = e;  // matches never overlap, even when discarded below
    const AddedToken& token = added_[index];
    std::string_view view(text);
    if (token.single_word) {
      const bool start_space = s == 0 || !IsRustWordChar(LastChar(view.substr(0, s)));
      const bool stop_space = e == text.size() || !IsRustWordChar(FirstChar(view.substr(e)));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) s = std::max(TrailingSpaceStart(view.substr(0, s)), start_offset);
    if (token.rstrip) e += LeadingSpaceLength(view.substr(e));
    if (start_offset < s) out.push_back({text.substr(start_offset, s - start_offset), -1});
    out.push_back({"", token.id});
    start_offset = e;  // may even move back when rstrip swallowed the next match, as in HF
  }
  if (start_offset < text.size()) out.push_back({text.substr(start_offset), -1});
  return out;
}

std::string BpeTokenizer::Normalize(std::string text) const {
#ifdef DMOE_HAVE_ICU
  for (NormalizerKind kind : normalizers_) {
    const bool ascii = std::all_of(text.begin(), text.end(),
                                   [](char c) { return static_cast<uint8_t>(c) < 0x80; });
    if (ascii) break;  // every normalisation form leaves ASCII unchanged
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = nullptr;
    switch (kind) {
      case NormalizerKind::kNfc:
        n = icu::Normalizer2::getNFCInstance(status);
        break;
      case NormalizerKind::kNfd:
        n = icu::Normalizer2::getNFDInstance(status);
        break;
      case NormalizerKind::kNfkc:
        n = icu::Normalizer2::getNFKCInstance(status);
        break;
      case NormalizerKind::kNfkd:
        n = icu::Normalizer2::getNFKDInstance(status);
        break;
    }
    if (U_FAILURE(status) || n == nullptr) continue;
    icu::UnicodeString result = n->normalize(icu::UnicodeString::fromUTF8(text), status);
    if (U_FAILURE(status)) continue;
    text.clear();
    result.toUTF8String(text);
  }
#endif
  return text;
}

// Applies one Split step to `piece` (HF NormalizedString::split + Pattern::find_matches).
void ApplySplit(const PreTokenizerStep& step, std::string_view piece,
                std::vector<std::string>* out) {
  std::vector<std::pair<size_t, size_t>> found;
  if (absl::Status st = step.regex->FindAll(piece, &found); !st.ok()) {
    DMOE_LOG(ERROR) << st;  // keep what was found; the rest stays one piece
  }
  struct Span {
    size_t start, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [s, e] : found) {
    if (prev != s) spans.push_back({prev, s, false});
    spans.push_back({s, e, true});
    prev = e;
  }
  if (prev != piece.size()) spans.push_back({prev, piece.size(), false});
  if (step.invert) {
    for (Span& sp : spans) sp.is_match = !sp.is_match;
  }
  std::vector<Span> result;  // is_match here means "remove"
  switch (step.behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& sp : spans) result.push_back({sp.start, sp.end, false});
      break;
    case SplitBehavior::kRemoved:
      result = spans;
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& sp : spans) {
        if (sp.is_match == previous_match && !result.empty()) {
          result.back().end = sp.end;
        } else {
          result.push_back({sp.start, sp.end, false});
        }
        previous_match = sp.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& sp : spans) {
        if (sp.is_match && !previous_match && !result.empty()) {
          result.back().end = sp.end;
        } else {
          result.push_back({sp.start, sp.end, false});
        }
        previous_match = sp.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !result.empty()) {
          result.back().start = it->start;
        } else {
          result.push_back({it->start, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(result.begin(), result.end());
      break;
    }
  }
  for (const Span& sp : result) {
    if (!sp.is_match && sp.end > sp.start)
      out->emplace_back(piece.substr(sp.start, sp.end - sp.start));
  }
}

void BpeTokenizer::PreTokenize(std::string piece, std::vector<std::string>* out) const {
  std::vector<std::string> pieces;
  if (!piece.empty()) pieces.push_back(std::move(piece));
  std::vector<std::string> next;
  for (const PreTokenizerStep& step : pre_tokenizer_) {
    next.clear();
    for (std::string& p : pieces) {
      if (step.kind == PreTokenizerStep::Kind::kSplit) {
        ApplySplit(step, p, &next);
        continue;
      }
      // ByteLevel: optional prefix space, optional GPT-2 split, then bytes -> characters.
      if (step.add_prefix_space && p.front() != ' ') p.insert(p.begin(), ' ');
      if (step.regex == nullptr) {
        next.push_back(ByteLevelEncode(p));
        continue;
      }
      std::vector<std::string> parts;
      PreTokenizerStep isolated = step;
      isolated.behavior = SplitBehavior::kIsolated;
      isolated.invert = false;
      ApplySplit(isolated, p, &parts);
      for (const std::string& part : parts) next.push_back(ByteLevelEncode(part));
    }
    pieces.swap(next);
  }
  for (std::string& p : pieces) out->push_back(std::move(p));
}

void BpeTokenizer::TokenizeWord(const std::string& word, std::vector<int32_t>* out) const {
  if (word.size() > kMaxCachedPieceBytes) {
    model_.Tokenize(word, out);
    return;
  }
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  model_.Tokenize(word, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  absl::MutexLock lock(&cache_mu_);
  if (cache_.size() < kMaxCacheEntries) cache_.emplace(word, std::move(ids));
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  // HF only ever sees valid UTF-8 (Rust &str); replace invalid bytes first.
  std::string input = IsValidUtf8(text) ? std::string(text) : tokenizer_internal::Utf8Lossy(text);
  std::vector<int32_t> ids;
  std::vector<std::string> words;
  for (Segment& raw : SplitAddedTokens(std::move(input), raw_trie_)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    for (Segment& seg : SplitAddedTokens(Normalize(std::move(raw.text)), normalized_trie_)) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
        continue;
      }
      words.clear();
      PreTokenize(std::move(seg.text), &words);
      for (const std::string& w : words) TokenizeWord(w, &ids);
    }
  }
  for (const PostProcessorStep& step : post_processor_) {
    std::vector<int32_t> processed;
    for (const TemplatePiece& piece : step.single) {
      const std::vector<int32_t>& src = piece.is_sequence ? ids : piece.ids;
      processed.insert(processed.end(), src.begin(), src.end());
    }
    ids.swap(processed);
  }
  return ids;
}

const std::string* BpeTokenizer::TokenString(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    return &added_[it->second].stored_content;
  }
  if (auto it = model_.vocab_r.find(id); it != model_.vocab_r.end()) return &it->second;
  return nullptr;
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    const std::string* token = TokenString(id);
    if (token == nullptr) continue;  // unknown ids are dropped, as in HF
    if (skip_special_tokens && IsSpecial(id)) continue;
    if (byte_level_decoder_) {
      bytes.append(ByteLevelDecodeToken(*token));
    } else {
      if (!first) bytes.push_back(' ');
      bytes.append(*token);
    }
    first = false;
  }
  return tokenizer_internal::Utf8Lossy(bytes);
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  const std::string* token = TokenString(id);
  if (token == nullptr) return "";
  return byte_level_decoder_ ? ByteLevelDecodeToken(*token) : *token;
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_ids_.find(AsAbsl(token)); it != added_ids_.end()) return it->second;
  if (auto it = model_.vocab.find(AsAbsl(token)); it != model_.vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> BpeTokenizer::IdToToken(int32_t id) const {
  const std::string* token = TokenString(id);
  if (token == nullptr) return std::nullopt;
  return *token;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(Cat("error reading ", path));
  return ss.str();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> BuildTokenizer(const std::string& tokenizer_json,
                                                          const std::string& config_json,
                                                          const std::string& source) {
  const JsonContext ctx(Cat(source, " (tokenizer.json)"));
  json root = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(Cat(ctx.source(), ": not valid JSON"));
  }
  if (!root.is_object()) return ctx.Invalid("(root)", "must be a JSON object");
  for (const char* key : {"truncation", "padding"}) {
    if (Find(root, key) != nullptr) {
      DMOE_LOG(WARNING) << ctx.source() << ": '" << key
                        << "' is set but ignored; Encode never truncates or pads";
    }
  }
  auto tok = std::make_unique<BpeTokenizer>();
  DMOE_RETURN_IF_ERROR(tok->ParseModel(ctx, root));
  DMOE_RETURN_IF_ERROR(tok->ParseNormalizer(ctx, Find(root, "normalizer"), "normalizer"));
  DMOE_RETURN_IF_ERROR(tok->ParseAddedTokens(ctx, root));
  DMOE_RETURN_IF_ERROR(tok->ParsePreTokenizer(ctx, Find(root, "pre_tokenizer"), "pre_tokenizer"));
  DMOE_RETURN_IF_ERROR(
      tok->ParsePostProcessor(ctx, Find(root, "post_processor"), "post_processor"));
  DMOE_RETURN_IF_ERROR(tok->ParseDecoder(ctx, Find(root, "decoder"), "decoder"));
  DMOE_RETURN_IF_ERROR(tok->Finish(ctx));
  if (!config_json.empty()) {
    const JsonContext cctx(Cat(source, " (tokenizer_config.json)"));
    json config = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) {
      return absl::InvalidArgumentError(Cat(cctx.source(), ": not valid JSON"));
    }
    DMOE_RETURN_IF_ERROR(tok->ParseConfig(cctx, config));
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

const std::string& Tokenizer::EmptyString() {
  static const std::string* empty = new std::string();
  return *empty;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& tokenizer_json,
                                                               const std::string& config_json,
                                                               const std::string& source) {
  try {
    return BuildTokenizer(tokenizer_json, config_json, source);
  } catch (const std::exception& e) {  // nlohmann::json may throw; nothing escapes our API
    return absl::InvalidArgumentError(Cat(source, ": malformed tokenizer: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir) {
  const std::string path = Cat(dir, "/tokenizer.json");
  DMOE_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(path));
  std::string config_json;
  if (auto config = ReadFile(Cat(dir, "/tokenizer_config.json")); config.ok()) {
    config_json = std::move(*config);
  } else if (!absl::IsNotFound(config.status())) {
    return config.status();
  }
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                        FromJson(tokenizer_json, config_json, dir));
  if (tokenizer->chat_template().empty()) {
    // Newer checkpoints keep the template in its own file.
    if (auto jinja = ReadFile(Cat(dir, "/chat_template.jinja")); jinja.ok()) {
      static_cast<BpeTokenizer*>(tokenizer.get())->SetChatTemplate(std::move(*jinja));
    }
  }
  return tokenizer;
}

// ---- ResolveDecodeTokenIds -------------------------------------------------------------------

absl::StatusOr<DecodeTokenIds> ResolveDecodeTokenIds(
    const Tokenizer& tokenizer, std::optional<int32_t> mask_override,
    std::optional<std::vector<int32_t>> stop_override) {
  constexpr std::string_view kMask = "<|mask|>";
  DecodeTokenIds out;
  if (mask_override.has_value()) {
    if (*mask_override < 0) {
      return absl::InvalidArgumentError(Cat("mask id override ", *mask_override, " is negative"));
    }
    out.mask_id = *mask_override;
  } else {
    std::optional<int32_t> mask = tokenizer.TokenToId(kMask);
    if (!mask.has_value()) {
      return absl::FailedPreconditionError(
          Cat("the tokenizer has no '", kMask,
              "' token; the diffusion decoder needs one (pass a mask id override)"));
    }
    out.mask_id = *mask;
  }
  std::vector<std::string> stop_names;
  if (stop_override.has_value()) {
    out.stop_ids = *stop_override;
    for (int32_t id : out.stop_ids) {
      if (id < 0) return absl::InvalidArgumentError(Cat("stop id override ", id, " is negative"));
      stop_names.push_back(tokenizer.IdToToken(id).value_or(Cat("id ", id)));
    }
  } else {
    for (std::string_view name : {"<|endoftext|>", "<|role_end|>"}) {
      if (std::optional<int32_t> id = tokenizer.TokenToId(name); id.has_value()) {
        out.stop_ids.push_back(*id);
        stop_names.emplace_back(name);
      }
    }
  }
  for (size_t i = 0; i < out.stop_ids.size(); ++i) {
    if (out.stop_ids[i] == out.mask_id) {
      return absl::FailedPreconditionError(
          Cat("mask token '", tokenizer.IdToToken(out.mask_id).value_or(std::string(kMask)),
              "' (id ", out.mask_id, ") is also the stop token '", stop_names[i],
              "'; the LLaDA2 tokenizer must map them to different ids"));
    }
  }
  return out;
}

// ---- StreamingDetokenizer --------------------------------------------------------------------

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamingDetokenizer::Push(const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (skip_special_tokens_ && tokenizer_.IsSpecial(id)) continue;
    pending_.append(tokenizer_.TokenBytes(id));
  }
  const size_t keep = tokenizer_internal::IncompleteUtf8TailLength(pending_);
  std::string out =
      tokenizer_internal::Utf8Lossy(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out = tokenizer_internal::Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace dmoe::model
