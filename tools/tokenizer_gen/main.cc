// dmoe-train-tokenizer: trains a tiny byte-level BPE tokenizer in the Ling 2.0 layout.
//   dmoe-train-tokenizer --vocab-size 1536 --output tools/data/tiny_tokenizer corpus.txt
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "model/tokenizer.h"
#include "tools/tokenizer_gen/bpe_trainer.h"

int main(int argc, char** argv) {
  CLI::App app{"Train a byte-level BPE tokenizer (Ling 2.0 / LLaDA2 layout) on text files"};
  dmoe::tools::BpeTrainerOptions options;
  std::vector<std::string> inputs;
  std::string output;
  app.add_option("inputs", inputs, "UTF-8 text files to train on")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("-o,--output", output, "directory for tokenizer.json and tokenizer_config.json")
      ->required();
  app.add_option("--vocab-size", options.vocab_size,
                 "total ids including the special tokens (exclusive with --merges)");
  app.add_option("--merges", options.num_merges, "number of merges to learn");
  app.add_option("--min-frequency", options.min_frequency, "least pair count worth a merge")
      ->capture_default_str();
  app.add_option("--pattern", options.split_pattern,
                 "pre-tokenizer split regex (default: the Ling 2.0 pattern)");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> texts;
  for (const std::string& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
  }
  auto model = dmoe::tools::TrainBpe(texts, options);
  if (!model.ok()) {
    std::cerr << "dmoe-train-tokenizer: " << model.status() << "\n";
    return 1;
  }
  if (absl::Status st = dmoe::tools::WriteTokenizerFiles(output, *model, options); !st.ok()) {
    std::cerr << "dmoe-train-tokenizer: " << st << "\n";
    return 1;
  }
  // Read the result back through the real loader, so a file we cannot load is never written
  // silently.
  auto tokenizer = dmoe::model::Tokenizer::Load(output);
  if (!tokenizer.ok()) {
    std::cerr << "dmoe-train-tokenizer: wrote an unloadable tokenizer: " << tokenizer.status()
              << "\n";
    return 1;
  }
  std::cout << "wrote " << output << ": " << model->vocab.size() << " BPE tokens, "
            << model->merges.size() << " merges, " << options.special_tokens.size()
            << " special tokens, vocab_size " << (*tokenizer)->vocab_size() << "\n";
  for (const std::string& t : options.special_tokens) {
    std::cout << "  " << t << " = " << (*tokenizer)->TokenToId(t).value_or(-1) << "\n";
  }
  return 0;
}
