// dmoe tokenize: encode text or decode ids with a model's tokenizer.
#include <iostream>
#include <memory>

#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/status_macros.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {
namespace {

struct TokenizeFlags {
  std::string model_dir;
  std::string text;
  bool text_given = false;
  std::string ids;
  bool json = false;
};

absl::Status RunTokenize(const TokenizeFlags& f) {
  if (f.text_given == !f.ids.empty()) {
    return absl::InvalidArgumentError("give exactly one of --text or --ids");
  }
  DMOE_ASSIGN_OR_RETURN(auto tokenizer, model::Tokenizer::Load(f.model_dir));
  std::vector<int32_t> ids;
  std::string text;
  if (f.text_given) {
    text = f.text;
    ids = tokenizer->Encode(text);
  } else {
    DMOE_ASSIGN_OR_RETURN(ids, ParseIdList(f.ids, "--ids"));
    for (int32_t id : ids) {
      if (id >= tokenizer->vocab_size()) {
        return absl::InvalidArgumentError("--ids: id " + std::to_string(id) +
                                          " is outside the vocabulary of size " +
                                          std::to_string(tokenizer->vocab_size()));
      }
    }
    text = tokenizer->Decode(ids, /*skip_special_tokens=*/false);
  }
  if (f.json) {
    std::cout << nlohmann::json{{"ids", ids}, {"text", SanitizeUtf8(text)}}.dump() << std::endl;
  } else if (f.text_given) {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? "," : "") << ids[i];
    std::cout << std::endl;
  } else {
    std::cout << text << std::endl;
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterTokenizeCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Encode text or decode token ids");
  cmd->add_option("--model", flags->model_dir, "Directory with tokenizer.json")->required();
  cmd->add_option("--text", flags->text, "Text to encode")
      ->each([flags](const std::string&) { flags->text_given = true; });
  cmd->add_option("--ids", flags->ids, "Ids to decode, e.g. 1,2,3");
  cmd->add_flag("--json", flags->json, "Print {\"ids\": [...], \"text\": ...}");
  cmd->callback([flags, exit_code] {
    absl::Status status = RunTokenize(*flags);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
