// dmoe: serve and run LLaDA2.0-family block-diffusion MoE models.
#include <cstdio>

#include "CLI/CLI.hpp"
#include "clients/cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"dmoe: serving block-diffusion mixture-of-experts language models (LLaDA2.0)"};
  app.require_subcommand(1);
  int exit_code = 0;
  dmoe::cli::RegisterGenerateCommand(app, &exit_code);
  dmoe::cli::RegisterTokenizeCommand(app, &exit_code);
  dmoe::cli::RegisterInspectCommand(app, &exit_code);
  dmoe::cli::RegisterEvalCommand(app, &exit_code);
  dmoe::cli::RegisterServeCommand(app, &exit_code);
  dmoe::cli::RegisterClientCommand(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;  // usage errors: exit 2, like most Unix tools
  }
  return exit_code;
}
