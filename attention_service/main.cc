// dmoe-attention: one attention replica as a gRPC server.
//
//   dmoe-attention --model DIR --scheduler 127.0.0.1:7000 --listen 127.0.0.1:0
//
// Loads every non-expert tensor, registers with the scheduler (which pushes the expert
// placement) and serves dmoe.v1.AttentionService with grpc.health.v1 and reflection. Logs
// "listening on HOST:PORT" once it serves; drains on SIGTERM / SIGINT. Startup errors exit 2.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "attention_service/attention_engine.h"
#include "attention_service/attention_server.h"
#include "attention_service/cluster_experts.h"
#include "cluster/communicator_client.h"
#include "cluster/grpc_server.h"
#include "cluster/membership_agent.h"
#include "common/auth/tls.h"
#include "common/gpu_index.h"
#include "common/logging.h"
#include "metrics/endpoint.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "transport/nccl_pairing_client.h"
#include "transport/nccl_peering.h"

namespace {
int Fail(const std::string& message) {
  std::cerr << "dmoe-attention: " << message << "\n";
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Attention replica: attention, dense layers, routers, shared experts, lm_head and "
               "the KV cache (dmoe.v1.AttentionService)."};
  std::string model_dir, model_name, listen = "127.0.0.1:0", scheduler, kernels = "cpu";
  int threads = 0, micro_batches = 2;
  int64_t kv_pages = 8192;
  double drain_timeout_s = 10;
  app.add_option("--model", model_dir, "Checkpoint directory")->required();
  app.add_option("--scheduler", scheduler, "Scheduler address to register with")->required();
  app.add_option("--listen", listen, "host:port; port 0 picks a free port")->capture_default_str();
  app.add_option("--model-name", model_name, "Reported name (default: directory name)");
  app.add_option("--threads", threads, "Compute threads (0 = all cores)")->capture_default_str();
  app.add_option("--micro-batches", micro_batches,
                 "Micro-batches in flight per step (overlap attention with expert calls)")
      ->capture_default_str();
  app.add_option("--kv-pages", kv_pages, "KV cache capacity in 32-token pages")->capture_default_str();
  app.add_option("--kernels", kernels, "cpu | reference")->capture_default_str();
  app.add_option("--drain-timeout-s", drain_timeout_s, "Seconds queued steps get on SIGTERM")
      ->capture_default_str();
  std::string model_version = "v1";
  std::string metrics_listen;
  app.add_option("--model-version", model_version,
                 "Served model version (the model_version label of every metric)")
      ->capture_default_str();
  app.add_option("--metrics-listen", metrics_listen,
                 "host:port of the Prometheus /metrics endpoint (port 0 picks one); empty: none");
  std::string device = "cpu";
  app.add_option("--device", device,
                 "cpu, or cuda: attention, dense layers, routers, shared experts and the KV "
                 "cache on GPU 0; routed experts still go to the expert shards (one "
                 "micro-batch; see docs/cuda.md)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  int gpu = 0;
  app.add_option("--gpu", gpu, dmoe::kGpuFlagHelp)->capture_default_str();
  std::string expert_transport = "grpc";
  app.add_option("--expert-transport", expert_transport,
                 "grpc, or nccl: pair with every expert pod over NCCL, using gRPC for a pod "
                 "until its link is up and after a link failure (needs --device cuda; see "
                 "docs/expert-data-plane.md)")
      ->check(CLI::IsMember({"grpc", "nccl"}))
      ->capture_default_str();
  dmoe::auth::TlsOptions tls;
  dmoe::auth::AddTlsFlags(app, tls);
  CLI11_PARSE(app, argc, argv);
  // Mutual TLS: the port requires the scheduler's certificate, and this replica presents its
  // own to the scheduler and the expert pods.
  auto server_credentials = dmoe::auth::SetUpPodTls(tls);
  if (!server_credentials.ok()) return Fail(server_credentials.status().ToString());
  if (absl::Status s = dmoe::ValidateGpuFlag(gpu); !s.ok()) return Fail(s.ToString());
  const dmoe::transport::ExpertTransportKind transport_kind =
      *dmoe::transport::ParseExpertTransportKind(expert_transport);
  if (absl::Status s =
          dmoe::transport::CheckExpertTransportFlags(transport_kind, device, !scheduler.empty());
      !s.ok()) {
    return Fail(s.ToString());
  }
  if (model_name.empty()) model_name = std::filesystem::path(model_dir).filename().string();

  dmoe::cluster::ShutdownSignals signals;  // before any thread starts

  auto checkpoint = dmoe::model::Checkpoint::Open(model_dir);
  if (!checkpoint.ok()) return Fail(checkpoint.status().ToString());
  auto weights = dmoe::model::LoadModelWeights(**checkpoint, {.load_dense = true, .load_experts = false});
  if (!weights.ok()) return Fail(weights.status().ToString());
  dmoe::model::Model model((*checkpoint)->config(), *weights);
  auto fingerprint = dmoe::model::ConfigFingerprintOfDir(model_dir);
  if (!fingerprint.ok()) return Fail(fingerprint.status().ToString());

  auto served_metrics =
      dmoe::metrics::ServeProcessMetrics("attention", model_version, metrics_listen);
  if (!served_metrics.ok()) return Fail(served_metrics.status().ToString());
  const dmoe::metrics::ProcessMetrics& metrics = served_metrics->metrics;
  std::shared_ptr<dmoe::transport::DispatchMetrics> dispatch_metrics;
  if (metrics.registry) {
    dispatch_metrics = std::make_shared<dmoe::transport::DispatchMetrics>(
        metrics, model.config().num_experts);
  }
  dmoe::attention::ClusterExperts experts(model.config().num_experts, dispatch_metrics);
  experts.EnableLoadCounting(  // the scheduler's expert balancing load window
      model.config().first_k_dense_replace,
      model.config().num_hidden_layers - model.config().first_k_dense_replace);
  auto engine = dmoe::attention::AttentionEngine::Create(
      {.kernels = kernels, .num_threads = threads, .kv_max_pages = kv_pages,
       .micro_batches = micro_batches, .device = device, .cuda_device = gpu},
      model, [&](dmoe::model::Kernels&) { return experts.NewExecutor(); });
  if (!engine.ok()) return Fail(engine.status().ToString());
  dmoe::attention::AttentionServer service({.model_name = model_name, .metrics = metrics},
                                           **engine);

  auto server = dmoe::cluster::StartGrpcServer(
      {.listen = listen, .services = {&service}, .metrics = metrics,
       .credentials = *server_credentials});
  if (!server.ok()) return Fail(server.status().ToString());
  const std::string& address = server->address;

  // --expert-transport nccl: pairing with every expert pod in the background, gRPC until a
  // pod's link is up (transport/nccl_peering.h). The GPU link (communicator + exchange rounds)
  // is not built yet (connect is null): every pod stays on gRPC, with one warning per pod and
  // dmoe_expert_transport_fallbacks_total{reason="refused"}.
  std::unique_ptr<dmoe::transport::NcclPeering> peering;
  if (transport_kind == dmoe::transport::ExpertTransportKind::kNccl) {
    dmoe::transport::NcclPeeringOptions peering_options;
    peering_options.attention_address = address;
    peering_options.hidden_size = model.config().hidden_size;
    peering_options.metrics = metrics;
    dmoe::transport::NcclPeeringDeps peering_deps;
    peering_deps.fetch_id = [scheduler](const std::string& group, uint64_t failed_generation,
                                        absl::Time deadline) {
      return dmoe::cluster::FetchCommunicatorId(scheduler, group, failed_generation, deadline);
    };
    peering_deps.pair = dmoe::transport::PairOverGrpc;
    auto created = dmoe::transport::NcclPeering::Create(peering_options, std::move(peering_deps));
    if (!created.ok()) return Fail(created.status().ToString());
    peering = *std::move(created);
    experts.SetTransportWrapper([p = peering.get()](dmoe::transport::ExpertTransportSharedPtr t) {
      return p->Wrap(std::move(t));
    });
  }

  dmoe::v1::RegisterRequest registration;
  registration.set_role(dmoe::v1::POD_ROLE_ATTENTION);
  registration.set_address(address);
  registration.set_config_fingerprint(*fingerprint);
  dmoe::cluster::MembershipAgent agent(
      {.scheduler_address = scheduler,
       .registration = registration,
       .on_placement = [&](const dmoe::cluster::Placement& p) { experts.Update(p); },
       .applied_version = [&] { return experts.version(); },
       .expert_tokens = [&] { return experts.TakeExpertTokens(); }});
  DMOE_LOG(INFO) << "dmoe-attention: model " << model_dir << ", device " << device
                 << (device == "cuda" ? dmoe::DescribeGpuFlag(gpu) : "") << ", "
                 << (*engine)->options().micro_batches << " micro-batch(es), KV " << kv_pages
                 << " pages, scheduler " << scheduler;

  const int signal_number = signals.Wait();
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining";
  server->MarkNotServing();
  service.StartDraining();
  agent.Stop();
  server->server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(drain_timeout_s * 1000)));
  DMOE_LOG(INFO) << "drained; exiting";
  return 0;
}
