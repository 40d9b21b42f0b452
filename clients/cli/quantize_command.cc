// dmoe quantize: a q8 (weight-only int8) copy of a checkpoint (docs/quantization.md).
#include <cstdio>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "model/quantize.h"

namespace dmoe::cli {

void RegisterQuantizeCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<model::QuantizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "Write a weight-only int8 (q8) copy of a checkpoint that every command loads");
  cmd->add_option("--in", options->in_dir, "Checkpoint directory to read")->required();
  cmd->add_option("--out", options->out_dir, "Directory to write (new or empty)")->required();
  cmd->add_option("--format", options->format,
                  "q8: int8 values with one F32 scale per 32 (router, norms and biases kept)")
      ->capture_default_str();
  cmd->callback([options, exit_code] {
    const absl::Time start = absl::Now();
    options->progress = [](const std::string& line) {
      std::fprintf(stderr, "quantize: %s\n", line.c_str());
    };
    absl::Status status = model::QuantizeCheckpoint(*options);
    if (status.ok()) {
      std::printf("wrote %s checkpoint to %s in %s\n", options->format.c_str(),
                  options->out_dir.c_str(),
                  absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Milliseconds(1)))
                      .c_str());
    }
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
