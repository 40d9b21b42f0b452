#include "tools/tokenizer_gen/bpe_trainer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/status_macros.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace dmoe::tools {
namespace {

namespace ti = ::dmoe::model::tokenizer_internal;
using ti::Cat;

// A Jinja rendering of the Ling 2.0 template (thinking off, no tools); it produces the same text
// as dmoe::model::RenderChat for plain user / assistant / system / tool turns.
constexpr const char* kChatTemplate =
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system_text = messages[0].content + '\\n' -%}"
    "{%- else -%}{%- set system_text = '' -%}{%- endif -%}"
    "{{- '<role>SYSTEM</role>' + system_text + 'detailed thinking off<|role_end|>' -}}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}"
    "{{- '<role>HUMAN</role>' + m.content + '<|role_end|>' -}}"
    "{%- elif m.role == 'system' -%}"
    "{%- if not loop.first -%}{{- '<role>SYSTEM</role>' + m.content + '<|role_end|>' -}}{%- endif "
    "-%}"
    "{%- elif m.role == 'assistant' -%}"
    "{{- '<role>ASSISTANT</role>' + m.content + '<|role_end|>' -}}"
    "{%- elif m.role in ['tool', 'observation'] -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role not in ['tool', 'observation'] -%}"
    "{{- '<role>OBSERVATION</role>' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role not in ['tool', 'observation'] -%}"
    "{{- '<|role_end|>' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<role>ASSISTANT</role>' -}}{%- endif -%}";

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

std::string Pattern(const BpeTrainerOptions& options) {
  return options.split_pattern.empty() ? std::string(ti::kLingPattern) : options.split_pattern;
}

nlohmann::ordered_json ByteLevelComponent() {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", false}};
}

}  // namespace

absl::Status BpeTrainerOptions::Validate() const {
  if ((vocab_size > 0) == (num_merges > 0)) {
    return absl::InvalidArgumentError("give exactly one of vocab_size and num_merges (> 0)");
  }
  if (vocab_size > 0 && vocab_size < 256 + static_cast<int>(special_tokens.size())) {
    return absl::InvalidArgumentError(Cat("vocab_size ", vocab_size, " is below 256 byte tokens + ",
                                          special_tokens.size(), " special tokens"));
  }
  if (min_frequency < 1) return absl::InvalidArgumentError("min_frequency must be >= 1");
  for (const std::string& t : special_tokens) {
    if (t.empty()) return absl::InvalidArgumentError("special_tokens contains an empty token");
  }
  return absl::OkStatus();
}

absl::StatusOr<BpeModelData> TrainBpe(const std::vector<std::string>& texts,
                                      const BpeTrainerOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  DMOE_ASSIGN_OR_RETURN(auto regex, ti::Regex::Compile(Pattern(options), /*literal=*/false));

  // Pre-token counts. std::map keeps the word order (and so everything below) deterministic.
  std::map<std::string, int64_t> counts;
  std::vector<std::pair<size_t, size_t>> spans;
  for (const std::string& raw : texts) {
    const std::string text = ti::Utf8Lossy(raw);
    spans.clear();
    DMOE_RETURN_IF_ERROR(regex->FindAll(text, &spans));
    for (const auto& [s, e] : spans) {
      if (e > s) ++counts[text.substr(s, e - s)];
    }
  }

  BpeModelData model;
  absl::flat_hash_map<std::string, int32_t> ids;
  for (int b = 0; b < 256; ++b) {
    model.vocab.push_back(ti::ByteToUnicode(static_cast<uint8_t>(b)));
    ids[model.vocab.back()] = b;
  }
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(counts.size());
  for (const auto& [piece, count] : counts) {
    Word w{{}, count};
    for (char c : piece) w.symbols.push_back(static_cast<uint8_t>(c));
    words.push_back(std::move(w));
  }

  const int target_bpe_vocab =
      options.vocab_size > 0 ? options.vocab_size - static_cast<int>(options.special_tokens.size())
                             : 0;
  auto done = [&] {
    return options.vocab_size > 0 ? static_cast<int>(model.vocab.size()) >= target_bpe_vocab
                                  : static_cast<int>(model.merges.size()) >= options.num_merges;
  };
  absl::flat_hash_map<uint64_t, int64_t> pair_counts;
  while (!done()) {
    pair_counts.clear();
    for (const Word& w : words) {
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i) {
        pair_counts[PairKey(w.symbols[i], w.symbols[i + 1])] += w.count;
      }
    }
    uint64_t best = 0;
    int64_t best_count = 0;
    for (const auto& [key, count] : pair_counts) {
      if (count > best_count || (count == best_count && key < best)) {
        best = key;
        best_count = count;
      }
    }
    if (best_count < options.min_frequency) break;  // nothing frequent enough is left
    const auto left = static_cast<int32_t>(best >> 32);
    const auto right = static_cast<int32_t>(best & 0xFFFFFFFFu);
    const std::string merged = model.vocab[left] + model.vocab[right];
    int32_t new_id;
    if (auto it = ids.find(merged); it != ids.end()) {
      new_id = it->second;  // another pair already built this string
    } else {
      new_id = static_cast<int32_t>(model.vocab.size());
      model.vocab.push_back(merged);
      ids[merged] = new_id;
    }
    model.merges.emplace_back(model.vocab[left], model.vocab[right]);
    for (Word& w : words) {
      std::vector<int32_t>& s = w.symbols;
      size_t out = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          s[out++] = new_id;
          ++i;
        } else {
          s[out++] = s[i];
        }
      }
      s.resize(out);
    }
  }
  return model;
}

std::string TokenizerJson(const BpeModelData& model, const BpeTrainerOptions& options) {
  using ojson = nlohmann::ordered_json;
  ojson root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  ojson added = ojson::array();
  for (size_t i = 0; i < options.special_tokens.size(); ++i) {
    added.push_back({{"id", model.vocab.size() + i},
                     {"content", options.special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  root["added_tokens"] = added;
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Split"},
                              {"pattern", {{"Regex", Pattern(options)}}},
                              {"behavior", "Isolated"},
                              {"invert", false}},
                             ByteLevelComponent()}}};
  root["post_processor"] = ByteLevelComponent();
  root["decoder"] = ByteLevelComponent();
  ojson vocab = ojson::object();
  for (size_t id = 0; id < model.vocab.size(); ++id) vocab[model.vocab[id]] = id;
  ojson merges = ojson::array();
  for (const auto& [a, b] : model.merges) merges.push_back({a, b});
  root["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", nullptr},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"ignore_merges", false},
                   {"vocab", vocab},
                   {"merges", merges}};
  return root.dump(1, ' ', /*ensure_ascii=*/false) + "\n";
}

std::string TokenizerConfigJson(const BpeTrainerOptions& options) {
  nlohmann::ordered_json c;
  c["add_bos_token"] = false;
  c["add_eos_token"] = false;
  c["bos_token"] = options.bos_token;
  c["eos_token"] = options.eos_token;
  c["pad_token"] = options.pad_token;
  c["clean_up_tokenization_spaces"] = false;
  c["model_max_length"] = 32768;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  c["chat_template"] = kChatTemplate;
  return c.dump(2) + "\n";
}

absl::Status WriteTokenizerFiles(const std::string& dir, const BpeModelData& model,
                                 const BpeTrainerOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(Cat("cannot create ", dir, ": ", ec.message()));
  const std::pair<std::string, std::string> files[] = {
      {"tokenizer.json", TokenizerJson(model, options)},
      {"tokenizer_config.json", TokenizerConfigJson(options)}};
  for (const auto& [name, content] : files) {
    const std::string path = Cat(dir, "/", name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    if (!out) return absl::InternalError(Cat("cannot write ", path));
  }
  return absl::OkStatus();
}

}  // namespace dmoe::tools
