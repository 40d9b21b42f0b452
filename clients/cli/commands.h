// Subcommands of the `dmoe` CLI. Each Register* adds its subcommand and flags to the app and
// sets the callback that runs it; the callback returns the process exit code through
// `*exit_code`.
#ifndef DMOE_CLIENTS_CLI_COMMANDS_H_
#define DMOE_CLIENTS_CLI_COMMANDS_H_

#include "CLI/CLI.hpp"

namespace dmoe::cli {

// Parses argv as the `dmoe` command line and runs the chosen subcommand; returns the exit code.
int RunCli(int argc, char** argv);

void RegisterGenerateCommand(CLI::App& app, int* exit_code);
void RegisterTokenizeCommand(CLI::App& app, int* exit_code);
void RegisterInspectCommand(CLI::App& app, int* exit_code);
void RegisterQuantizeCommand(CLI::App& app, int* exit_code);
void RegisterEvalCommand(CLI::App& app, int* exit_code);
void RegisterServeCommand(CLI::App& app, int* exit_code);
void RegisterClusterCommand(CLI::App& app, int* exit_code);
void RegisterClientCommand(CLI::App& app, int* exit_code);
void RegisterBenchCommand(CLI::App& app, int* exit_code);
void RegisterMetricsCommand(CLI::App& app, int* exit_code);
void RegisterAdminCommand(CLI::App& app, int* exit_code);
void RegisterKeysCommand(CLI::App& app, int* exit_code);
void RegisterPlanCommand(CLI::App& app, int* exit_code);
void RegisterChaosCommand(CLI::App& app, int* exit_code);

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_COMMANDS_H_
