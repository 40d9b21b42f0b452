// dmoe: serve and run LLaDA2.0-family block-diffusion MoE models.
#include "clients/cli/commands.h"

int main(int argc, char** argv) { return dmoe::cli::RunCli(argc, argv); }
