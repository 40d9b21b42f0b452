// dmoe-expert: one expert shard as a gRPC server.
//
//   dmoe-expert --model /models/tiny --experts 0:8 --listen 127.0.0.1:0 --threads 2
//
// Logs "listening on HOST:PORT" once it serves (port 0 picks a free port), and drains on
// SIGTERM / SIGINT: health NOT_SERVING, in-flight calls finish (up to --drain-timeout-s),
// exit code 0. Startup errors exit with code 2.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cluster/grpc_server.h"
#include "cluster/communicator_client.h"
#include "cluster/membership_agent.h"
#include "common/auth/tls.h"
#include "common/gpu_index.h"
#include "common/logging.h"
#include "expert_service/expert_engine.h"
#include "expert_service/expert_server.h"
#include "expert_service/nccl_pairing.h"
#include "expert_service/resident_experts.h"
#include "metrics/endpoint.h"

namespace {

constexpr int kErrorExit = 2;

int Fail(const std::string& message) {
  std::cerr << "dmoe-expert: " << message << "\n";
  return kErrorExit;
}

// "FIRST:LAST" -> [first, last); "all" -> every expert.
bool ParseExpertRange(const std::string& text, int64_t* first, int64_t* last) {
  if (text == "all") {
    *first = 0;
    *last = -1;
    return true;
  }
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  return parts.size() == 2 && absl::SimpleAtoi(parts[0], first) &&
         absl::SimpleAtoi(parts[1], last);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Serves the routed experts [FIRST, LAST) of every MoE layer over gRPC "
               "(dmoe.v1.ExpertService)."};
  std::string model_dir;
  std::string model_name;
  std::string experts = "all";
  std::string listen = "127.0.0.1:0";
  std::string kernels = "cpu";
  int threads = 1;
  int workers = 1;
  int max_queue = 1024;
  double drain_timeout_s = 10;
  std::string scheduler;
  std::string model_version = "v1";
  std::string metrics_listen;
  app.add_option("--model", model_dir, "Checkpoint directory (config.json + safetensors)")
      ->required();
  app.add_option("--experts", experts, "Expert range FIRST:LAST (half-open) or 'all'")
      ->capture_default_str();
  app.add_option("--listen", listen, "host:port to listen on; port 0 picks a free port")
      ->capture_default_str();
  app.add_option("--threads", threads, "Compute threads per worker")->capture_default_str();
  app.add_option("--workers", workers, "Calls computed concurrently (one kernels instance each)")
      ->capture_default_str();
  app.add_option("--model-name", model_name, "Name reported by GetShardInfo (default: directory name)");
  app.add_option("--kernels", kernels, "cpu | reference")->capture_default_str();
  app.add_option("--max-queue", max_queue, "Queued calls before RESOURCE_EXHAUSTED")
      ->capture_default_str();
  app.add_option("--drain-timeout-s", drain_timeout_s, "Seconds in-flight calls get on SIGTERM")
      ->capture_default_str();
  app.add_option("--scheduler", scheduler,
                 "Scheduler address to register with (cluster mode); empty: standalone");
  app.add_option("--model-version", model_version,
                 "Served model version (the model_version label of every metric)")
      ->capture_default_str();
  app.add_option("--metrics-listen", metrics_listen,
                 "host:port of the Prometheus /metrics endpoint (port 0 picks one); empty: none");
  std::string device = "cpu";
  app.add_option("--device", device,
                 "cpu, or cuda: the shard's experts on GPU 0 (--kernels / --threads then do not "
                 "apply)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  int gpu = 0;
  app.add_option("--gpu", gpu, dmoe::kGpuFlagHelp)->capture_default_str();
  std::string expert_transport = "grpc";
  app.add_option("--expert-transport", expert_transport,
                 "grpc, or nccl: also accept NCCL pairings from attention replicas (needs "
                 "--device cuda and --scheduler; unpaired replicas use gRPC; see "
                 "docs/expert-data-plane.md)")
      ->check(CLI::IsMember({"grpc", "nccl"}))
      ->capture_default_str();
  dmoe::auth::TlsOptions tls;
  dmoe::auth::AddTlsFlags(app, tls);
  CLI11_PARSE(app, argc, argv);
  // Mutual TLS: the port requires an attention replica's certificate, and this shard presents
  // its own to the scheduler.
  auto server_credentials = dmoe::auth::SetUpPodTls(tls);
  if (!server_credentials.ok()) return Fail(std::string(server_credentials.status().ToString()));
  if (absl::Status s = dmoe::ValidateGpuFlag(gpu); !s.ok()) return Fail(s.ToString());
  const dmoe::transport::ExpertTransportKind transport_kind =
      *dmoe::transport::ParseExpertTransportKind(expert_transport);
  if (absl::Status s = dmoe::transport::CheckExpertTransportFlags(transport_kind, device,
                                                                  !scheduler.empty());
      !s.ok()) {
    return Fail(s.ToString());
  }

  auto served_metrics = dmoe::metrics::ServeProcessMetrics("expert", model_version, metrics_listen);
  if (!served_metrics.ok()) return Fail(std::string(served_metrics.status().ToString()));
  const dmoe::metrics::ProcessMetrics& metrics = served_metrics->metrics;

  dmoe::expert::ExpertEngineOptions engine_options{.model_dir = model_dir,
                                                   .model_name = model_name,
                                                   .device = device,
                                                   .cuda_device = gpu,
                                                   .kernels = kernels,
                                                   .num_workers = workers,
                                                   .threads_per_worker = threads,
                                                   .max_queue = max_queue,
                                                   .metrics = metrics};
  if (!ParseExpertRange(experts, &engine_options.expert_first, &engine_options.expert_last)) {
    return Fail("--experts: expected FIRST:LAST or 'all', got '" + experts + "'");
  }

  dmoe::cluster::ShutdownSignals signals;  // before any thread starts

  DMOE_LOG(INFO) << "dmoe-expert: model " << model_dir << ", experts " << experts << ", listen "
                 << listen << ", device " << device
                 << (device == "cuda" ? dmoe::DescribeGpuFlag(gpu) : "") << ", kernels " << kernels << ", workers " << workers << " x "
                 << threads << " thread(s), max queue " << max_queue << ", drain timeout "
                 << drain_timeout_s << " s";
  auto engine = dmoe::expert::ExpertEngine::Create(engine_options);
  if (!engine.ok()) return Fail(std::string(engine.status().ToString()));
  // --expert-transport nccl: the pairing handshake (expert_service/nccl_pairing.h). The serve
  // loop that would run the pair's NCCL rounds on the device thread is not built yet
  // (start_serve is null), so this pod answers pairings FAILED_PRECONDITION and its attention
  // replicas keep using gRPC.
  std::unique_ptr<dmoe::expert::NcclPairingHost> pairing_host;
  std::unique_ptr<dmoe::expert::NcclPairingService> pairing_service;
  std::vector<grpc::Service*> extra_services;
  if (transport_kind == dmoe::transport::ExpertTransportKind::kNccl) {
    dmoe::expert::NcclPairingHostOptions pairing_options;
    pairing_options.transport = transport_kind;
    pairing_options.hidden_size = (*engine)->info().hidden_size;
    dmoe::expert::NcclPairingHostDeps pairing_deps;
    pairing_deps.fetch_id = [scheduler](const std::string& group, absl::Time deadline) {
      return dmoe::cluster::FetchCommunicatorId(scheduler, group, 0, deadline);
    };
    pairing_host = std::make_unique<dmoe::expert::NcclPairingHost>(pairing_options,
                                                                   std::move(pairing_deps));
    pairing_service = std::make_unique<dmoe::expert::NcclPairingService>(*pairing_host);
    extra_services.push_back(pairing_service.get());
    DMOE_LOG(WARNING) << "--expert-transport nccl: this build answers NCCL pairings but has no "
                         "NCCL serve loop yet; attention replicas stay on gRPC for this pod "
                         "(docs/expert-data-plane.md, \"NCCL\")";
  }
  auto server = dmoe::expert::ExpertServer::Create(
      {.listen_address = listen,
       .metrics = metrics,
       .extra_services = extra_services,
       .credentials = *server_credentials},
      **engine);
  if (!server.ok()) return Fail(std::string(server.status().ToString()));
  std::atomic<uint64_t> applied{0};  // placement whose experts this shard loaded
  std::unique_ptr<dmoe::cluster::MembershipAgent> agent;
  if (!scheduler.empty()) {
    const dmoe::transport::ShardInfo& info = (*engine)->info();
    dmoe::v1::RegisterRequest registration;
    registration.set_role(dmoe::v1::POD_ROLE_EXPERT);
    registration.set_address((*server)->address());
    registration.set_expert_first(info.expert_first);
    registration.set_expert_last(info.expert_last);
    registration.set_config_fingerprint(info.config_fingerprint);
    agent = std::make_unique<dmoe::cluster::MembershipAgent>(
        dmoe::cluster::MembershipAgentOptions{
            .scheduler_address = scheduler,
            .registration = registration,
            .on_placement =
                [e = engine->get(), &applied](const dmoe::cluster::Placement& p) {
                  // Load the experts the balancer's maps give this shard, then say so.
                  if (absl::Status s = dmoe::expert::FollowPlacement(*e, p); !s.ok()) {
                    DMOE_LOG(WARNING) << "placement v" << p.version << ": " << s;
                    return;
                  }
                  applied = p.version;
                },
            .busy_seconds = [e = engine->get()] { return e->busy_seconds(); },
            .applied_version = [&applied] { return applied.load(); }});
  }

  const int signal_number = signals.Wait();
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining (up to " << drain_timeout_s << " s)";
  if (agent) {
    // Leave the placement first, then give attention replicas a heartbeat to switch to it,
    // so calls move to the other replicas instead of failing over (scale-in).
    agent->Stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(
        static_cast<int64_t>(std::min(drain_timeout_s, 1.5) * 1000)));
  }
  (*server)->Shutdown(absl::Now() + absl::Seconds(drain_timeout_s));
  server->reset();
  engine->reset();
  DMOE_LOG(INFO) << "drained; exiting";
  return 0;
}
