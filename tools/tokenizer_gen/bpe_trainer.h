// A small, deterministic byte-level BPE trainer that writes Hugging Face `tokenizer.json` /
// `tokenizer_config.json` files in the Ling 2.0 / LLaDA2 layout (MODEL-SPEC.md §3). Used to
// build the tiny tokenizer the test checkpoints and the demo use (tools/data/tiny_tokenizer).
#ifndef DMOE_TOOLS_TOKENIZER_GEN_BPE_TRAINER_H_
#define DMOE_TOOLS_TOKENIZER_GEN_BPE_TRAINER_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dmoe::tools {

struct BpeTrainerOptions {
  // Total number of ids, special tokens included (like HF's BpeTrainer vocab_size). Exactly
  // one of vocab_size / num_merges must be positive.
  int vocab_size = 0;
  // Number of merges to learn instead of a vocabulary size.
  int num_merges = 0;
  // Pairs seen fewer times than this are never merged (training may stop early).
  int min_frequency = 2;
  // Pre-tokenizer split regex (tokenizer.json dialect); default: the Ling pattern.
  std::string split_pattern;
  // Added as special tokens after the BPE vocabulary, in this order.
  std::vector<std::string> special_tokens = {"<|startoftext|>", "<|endoftext|>", "<|mask|>",
                                             "<|role_end|>",    "<role>",        "</role>",
                                             "<think>",         "</think>"};
  std::string bos_token = "<|startoftext|>";
  std::string eos_token = "<|endoftext|>";
  std::string pad_token = "<|endoftext|>";

  // INVALID_ARGUMENT naming the offending field.
  absl::Status Validate() const;
};

struct BpeModelData {
  std::vector<std::string> vocab;                           // byte-level token strings; index = id
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
};

// Learns merges from `texts`. Each step merges the most frequent adjacent pair (weighted by
// pre-token counts); ties go to the pair with the smaller (left id, right id). The initial
// alphabet is all 256 bytes (id = byte value), so every input stays encodable.
absl::StatusOr<BpeModelData> TrainBpe(const std::vector<std::string>& texts,
                                      const BpeTrainerOptions& options);

// `tokenizer.json`: BPE model, Sequence[Split(pattern, Isolated), ByteLevel(use_regex=false)]
// pre-tokenizer, ByteLevel decoder and post-processor, the special tokens as added tokens.
std::string TokenizerJson(const BpeModelData& model, const BpeTrainerOptions& options);

// `tokenizer_config.json`: bos/eos/pad, add_bos_token=false and the Ling chat template.
std::string TokenizerConfigJson(const BpeTrainerOptions& options);

// Writes both files into `dir` (created if missing).
absl::Status WriteTokenizerFiles(const std::string& dir, const BpeModelData& model,
                                 const BpeTrainerOptions& options);

}  // namespace dmoe::tools

#endif  // DMOE_TOOLS_TOKENIZER_GEN_BPE_TRAINER_H_
