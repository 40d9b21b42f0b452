// dmoe-scheduler: the cluster's scheduler role, one per model version. It serves the public
// Generation API (tokenizer, chat template, continuous batching, the denoising policy) and the
// Cluster service that attention replicas and expert shards register with; the forwards run
// on those pods.
//
//   dmoe-scheduler --model DIR --listen 127.0.0.1:0 [--lease-seconds S] [API flags]
//
// Logs "listening on HOST:PORT" once it serves; drains on SIGTERM / SIGINT (health
// NOT_SERVING, requests in flight get --drain-seconds). Errors print "error: ..." and exit 1.
#include <cstdio>
#include <memory>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"
#include "cluster/grpc_server.h"
#include "common/auth/tls.h"
#include "common/internal_credentials.h"
#include "common/logging.h"
#include "scheduler/api_flags.h"
#include "scheduler/scheduler_server.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The scheduler of one model version: the public Generation API and the Cluster "
               "service that attention replicas and expert shards register with."};
  dmoe::scheduler::ApiFlags api_flags;
  dmoe::scheduler::AddApiFlags(app, api_flags);
  double lease_seconds = 10;
  app.add_option("--lease-seconds", lease_seconds,
                 "A pod without a heartbeat for this long drops out")
      ->capture_default_str();
  double step_timeout_s = 60;
  app.add_option("--step-timeout-s", step_timeout_s,
                 "An attention replica that does not answer a step in this many seconds is "
                 "treated as failed for it (its sequences move); it rejoins when it recovers")
      ->capture_default_str();
  dmoe::scheduler::SchedulerServerOptions server_options;
  dmoe::scheduler::ExpertRebalancerOptions& balance = server_options.balancer;
  double rebalance_interval_s = 30, load_window_s = 60;
  app.add_flag("--expert-balancing", server_options.expert_balancing,
               "Rebalance experts over the shards from measured load (docs/expert-balancing.md)");
  app.add_option("--redundant-slots", balance.plan.redundant_slots,
                 "Experts outside its range each shard may compute, per layer")
      ->capture_default_str();
  app.add_option("--imbalance-bound", balance.imbalance_bound,
                 "Rebalance when max/mean shard load over the window passes this")
      ->capture_default_str();
  app.add_option("--rebalance-interval-s", rebalance_interval_s,
                 "At most one expert map change per this many seconds")
      ->capture_default_str();
  app.add_option("--load-window-s", load_window_s,
                 "Routed tokens per (layer, expert) are counted over this many seconds")
      ->capture_default_str();
  app.add_option("--min-window-tokens", balance.min_window_tokens,
                 "No rebalance with fewer routed tokens than this in the window")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  dmoe::cluster::ShutdownSignals signals;  // before any thread starts
  absl::StatusOr<dmoe::scheduler::GenerationEndpointOptions> api =
      dmoe::scheduler::ToEndpointOptions(api_flags);
  if (!api.ok()) return Fail(api.status());
  server_options.api = *std::move(api);
  // The scheduler calls its attention replicas with its own certificate (mutual TLS).
  auto internal_credentials = dmoe::auth::ChannelCredentials(api_flags.tls);
  if (!internal_credentials.ok()) return Fail(internal_credentials.status());
  dmoe::SetInternalChannelCredentials(*internal_credentials, api_flags.tls.server_name);
  server_options.lease = absl::Seconds(lease_seconds);
  if (!(step_timeout_s > 0)) return Fail(absl::InvalidArgumentError("--step-timeout-s must be > 0"));
  server_options.step_timeout = absl::Seconds(step_timeout_s);
  balance.min_interval = absl::Seconds(rebalance_interval_s);
  server_options.load_window = absl::Seconds(load_window_s);
  if (server_options.expert_balancing) {
    DMOE_LOG(INFO) << "expert balancing: " << balance.plan.redundant_slots
                   << " redundant slot(s) per shard and layer, bound " << balance.imbalance_bound
                   << ", at most every " << rebalance_interval_s << " s, window "
                   << load_window_s << " s, min " << balance.min_window_tokens << " tokens";
  }
  auto server = dmoe::scheduler::SchedulerServer::Start(server_options);
  if (!server.ok()) return Fail(server.status());
  std::printf("listening on %s\n", (*server)->address().c_str());
  std::fflush(stdout);

  const int signal_number = signals.Wait();
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining (up to " << api_flags.drain_seconds
                 << " s)";
  (*server)->Drain(absl::Seconds(api_flags.drain_seconds));
  DMOE_LOG(INFO) << "drained; exiting";
  return 0;
}
