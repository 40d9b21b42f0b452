// dmoe serve: every role in one process (serve/embedded_server.h) until SIGTERM or SIGINT,
// then a graceful drain. The cluster's scheduler is its own binary, dmoe-scheduler.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/gpu_index.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "cluster/grpc_server.h"
#include "scheduler/api_flags.h"
#include "serve/embedded_server.h"

namespace dmoe::cli {
namespace {

struct ServeFlags {
  scheduler::ApiFlags api;
  int threads = 0;
  std::string kernels = "cpu";
  std::string device = "cpu";
  int gpu = 0;
};

absl::Status RunServe(const ServeFlags& f) {
  DMOE_RETURN_IF_ERROR(ValidateGpuFlag(f.gpu));
  cluster::ShutdownSignals signals;  // before any thread starts
  DMOE_ASSIGN_OR_RETURN(scheduler::GenerationEndpointOptions api,
                        scheduler::ToEndpointOptions(f.api));
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<serve::EmbeddedServer> server,
                        serve::EmbeddedServer::Start({.api = std::move(api),
                                                      .kernels = f.kernels,
                                                      .device = f.device,
                                                      .cuda_device = f.gpu,
                                                      .num_threads = f.threads}));
  std::printf("listening on %s\n", server->address().c_str());
  std::fflush(stdout);

  const int signal_number = signals.Wait();
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining (up to " << f.api.drain_seconds
                 << " s)";
  server->Drain(absl::Seconds(f.api.drain_seconds));
  DMOE_LOG(INFO) << "drained; exiting";
  return absl::OkStatus();
}

}  // namespace

void RegisterServeCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve the Generation gRPC API with every role in this process");
  scheduler::AddApiFlags(*cmd, flags->api);
  cmd->add_option("--threads", flags->threads, "Compute threads (0 = all cores)");
  cmd->add_option("--kernels", flags->kernels, "cpu (fast) or reference (naive)")
      ->capture_default_str();
  cmd->add_option("--device", flags->device,
                  "Where the forward runs: cpu, or cuda (one GPU holds the weights and the "
                  "--kv-pages KV pool, allocated up front)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--gpu", flags->gpu, kGpuFlagHelp)->capture_default_str();
  cmd->callback([flags, exit_code] {
    absl::Status status = RunServe(*flags);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
