#include "clients/cli/commands.h"

namespace dmoe::cli {

int RunCli(int argc, char** argv) {
  CLI::App app{"dmoe: serving block-diffusion mixture-of-experts language models (LLaDA2.0)"};
  app.require_subcommand(1);
  int exit_code = 0;
  RegisterGenerateCommand(app, &exit_code);
  RegisterTokenizeCommand(app, &exit_code);
  RegisterInspectCommand(app, &exit_code);
  RegisterQuantizeCommand(app, &exit_code);
  RegisterEvalCommand(app, &exit_code);
  RegisterServeCommand(app, &exit_code);
  RegisterClusterCommand(app, &exit_code);
  RegisterClientCommand(app, &exit_code);
  RegisterBenchCommand(app, &exit_code);
  RegisterMetricsCommand(app, &exit_code);
  RegisterAdminCommand(app, &exit_code);
  RegisterKeysCommand(app, &exit_code);
  RegisterPlanCommand(app, &exit_code);
  RegisterChaosCommand(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;  // usage errors: exit 2, like most Unix tools
  }
  return exit_code;
}

}  // namespace dmoe::cli
