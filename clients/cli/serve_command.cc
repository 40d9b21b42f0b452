// dmoe serve: every role in one process (router/embedded_server.h) until SIGTERM or SIGINT,
// then a graceful drain.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "router/embedded_server.h"

namespace dmoe::cli {
namespace {

struct ServeFlags {
  std::string model_dir;
  std::string listen = "127.0.0.1:0";
  std::string model_name;
  std::string model_version = "v1";
  std::string metrics_listen;
  int threads = 0;
  int64_t kv_pages = 8192;
  int64_t kv_page_tokens = 32;
  int64_t max_queue = 256;
  int64_t max_batch_tokens = 4096;
  int64_t max_batch_sequences = 64;
  std::string kernels = "cpu";
  std::string device = "cpu";
  int32_t mask_id = -1;
  std::string stop_ids;
  double drain_seconds = 30;
  bool cluster = false;
  double lease_seconds = 10;
};

absl::Status RunServe(const ServeFlags& f) {
  // Block the shutdown signals before any thread starts, so every thread inherits the mask
  // and only sigwait below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  router::EmbeddedServerOptions options{
      .model_dir = f.model_dir,
      .compute = f.cluster ? router::ComputeMode::kCluster : router::ComputeMode::kInProcess,
      .lease = absl::Seconds(f.lease_seconds),
      .listen = f.listen,
      .model_name = f.model_name,
      .model_version = f.model_version,
      .kernels = f.kernels,
      .device = f.device,
      .num_threads = f.threads,
      .kv_page_tokens = f.kv_page_tokens,
      .kv_pages = f.kv_pages,
      .scheduler = {.max_batch_tokens = f.max_batch_tokens,
                    .max_batch_sequences = f.max_batch_sequences,
                    .max_queue = f.max_queue}};
  options.metrics_listen = f.metrics_listen;
  if (f.mask_id >= 0) options.mask_id = f.mask_id;
  if (!f.stop_ids.empty()) {
    DMOE_ASSIGN_OR_RETURN(options.stop_ids, ParseIdList(f.stop_ids, "--stop-ids"));
  }
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<router::EmbeddedServer> server,
                        router::EmbeddedServer::Start(options));
  std::printf("listening on %s\n", server->address().c_str());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining (up to " << f.drain_seconds
                 << " s)";
  server->Drain(absl::Seconds(f.drain_seconds));
  DMOE_LOG(INFO) << "drained; exiting";
  return absl::OkStatus();
}

}  // namespace

void RegisterServeCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve the Generation gRPC API with every role in this process");
  cmd->add_option("--model", flags->model_dir, "Checkpoint directory (HF layout)")->required();
  cmd->add_option("--listen", flags->listen, "host:port (port 0 picks a free one)")
      ->capture_default_str();
  cmd->add_option("--model-name", flags->model_name,
                  "Served model name (default: the directory's name)");
  cmd->add_option("--model-version", flags->model_version,
                  "Served model version (the model_version label of every metric)")
      ->capture_default_str();
  cmd->add_option("--metrics-listen", flags->metrics_listen,
                  "host:port of the Prometheus /metrics endpoint (port 0 picks one); "
                  "empty: no endpoint");
  cmd->add_option("--threads", flags->threads, "Compute threads (0 = all cores)");
  cmd->add_option("--kv-pages", flags->kv_pages, "KV cache capacity in pages")
      ->capture_default_str();
  cmd->add_option("--kv-page-tokens", flags->kv_page_tokens, "Tokens per KV page")
      ->capture_default_str();
  cmd->add_option("--max-queue", flags->max_queue,
                  "Requests waiting for admission before RESOURCE_EXHAUSTED")
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", flags->max_batch_tokens,
                  "Token budget of one batched step")
      ->capture_default_str();
  cmd->add_option("--max-batch-sequences", flags->max_batch_sequences, "Sequences per step")
      ->capture_default_str();
  cmd->add_option("--kernels", flags->kernels, "cpu (fast) or reference (naive)")
      ->capture_default_str();
  cmd->add_option("--device", flags->device,
                  "Where the forward runs: cpu, or cuda (one GPU holds the weights and the "
                  "--kv-pages KV pool, allocated up front; not with --cluster)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--mask-id", flags->mask_id, "Override the mask token id");
  cmd->add_option("--stop-ids", flags->stop_ids, "Override the stop token ids, e.g. 5,7");
  cmd->add_option("--drain-seconds", flags->drain_seconds,
                  "On SIGTERM/SIGINT, how long requests in flight may take to finish")
      ->capture_default_str();
  cmd->add_flag("--cluster", flags->cluster,
                "Act as a cluster's scheduler (what dmoe-scheduler runs): forwards run on the "
                "attention replicas and expert shards that register here, not in this process");
  cmd->add_option("--lease-seconds", flags->lease_seconds,
                  "Cluster mode: a pod without a heartbeat for this long drops out")
      ->capture_default_str();
  cmd->callback([flags, exit_code] {
    absl::Status status = RunServe(*flags);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
