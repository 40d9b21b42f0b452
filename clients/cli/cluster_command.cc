// dmoe cluster up|down|status: a cluster of real processes on loopback.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "clients/cli/local_cluster.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {
namespace {

namespace fs = std::filesystem;

std::string DefaultRunDir() {
  const char* tmp = std::getenv("TMPDIR");
  return (fs::path(tmp ? tmp : "/tmp") / absl::StrCat("dmoe-cluster-", getuid())).string();
}

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

absl::Status RunUp(LocalClusterOptions options, const std::string& state_file) {
  if (auto existing = ReadClusterState(state_file); existing.ok()) {
    for (const ClusterProcess& p : existing->processes) {
      if (Alive(p.pid)) {
        return absl::AlreadyExistsError(absl::StrCat("a cluster is already up (router ",
                                                     existing->router, "); run `dmoe cluster down`"));
      }
    }
  }
  options.model_dir = fs::absolute(options.model_dir).string();
  std::fprintf(stderr, "starting scheduler, %d expert shard(s) x %d replica(s), %d attention "
               "replica(s) for %s ...\n", options.expert_shards, options.expert_replicas,
               options.attention, options.model_dir.c_str());
  DMOE_ASSIGN_OR_RETURN(LocalCluster cluster, StartLocalCluster(options));
  DMOE_RETURN_IF_ERROR(WriteClusterState(cluster, state_file));
  for (const ClusterProcess& p : cluster.processes) {
    std::fprintf(stderr, "  %-14s pid %-7d %-22s %s\n", p.name.c_str(), p.pid, p.address.c_str(),
                 p.metrics.empty() ? "" : ("metrics http://" + p.metrics + "/metrics").c_str());
  }
  if (!cluster.http.empty()) {
    std::fprintf(stderr, "OpenAI-compatible HTTP API at http://%s/v1\n", cluster.http.c_str());
  }
  if (!cluster.tls_ca.empty()) {
    std::fprintf(stderr, "mutual TLS inside the cluster; clients verify the router with --tls-ca %s\n",
                 cluster.tls_ca.c_str());
  }
  if (!cluster.api_key_file.empty()) {
    std::fprintf(stderr, "API keys required at the router: a user and an admin key in %s "
                 "(e.g. DMOE_API_KEY=$(awk '$1 == \"user\" {print $2}' %s))\n",
                 cluster.api_key_file.c_str(), cluster.api_key_file.c_str());
  }
  std::fprintf(stderr, "logs and state in %s\n", options.run_dir.c_str());
  std::printf("%s\n", cluster.router.c_str());  // the router address, alone on stdout
  return absl::OkStatus();
}

absl::Status RunDown(const std::string& state_file) {
  DMOE_ASSIGN_OR_RETURN(LocalCluster cluster, ReadClusterState(state_file));
  StopLocalCluster(cluster);
  fs::remove(state_file);
  std::fprintf(stderr, "stopped %zu process(es)\n", cluster.processes.size());
  return absl::OkStatus();
}

absl::Status RunStatus(const std::string& state_file, bool json) {
  DMOE_ASSIGN_OR_RETURN(LocalCluster cluster, ReadClusterState(state_file));
  if (json) {
    nlohmann::json processes = nlohmann::json::array();
    for (const ClusterProcess& p : cluster.processes) {
      processes.push_back({{"role", p.role}, {"name", p.name}, {"pid", p.pid},
                           {"address", p.address}, {"metrics", p.metrics},
                           {"running", Alive(p.pid)}, {"log", p.log}});
    }
    std::printf("%s\n", nlohmann::json{{"router", cluster.router},
                                        {"http", cluster.http},
                                        {"scheduler", cluster.scheduler},
                                        {"tls_ca", cluster.tls_ca},
                                        {"api_key_file", cluster.api_key_file},
                                        {"processes", processes}}
                            .dump(2)
                            .c_str());
    return absl::OkStatus();
  }
  std::printf("router %s%s\n", cluster.router.c_str(),
              cluster.tls_ca.empty() ? "" : absl::StrCat(" (TLS, CA ", cluster.tls_ca, ")").c_str());
  if (!cluster.http.empty()) std::printf("http   %s\n", cluster.http.c_str());
  if (!cluster.api_key_file.empty()) std::printf("keys   %s\n", cluster.api_key_file.c_str());
  for (const ClusterProcess& p : cluster.processes) {
    std::printf("  %-14s pid %-7d %-22s %-8s %s\n", p.name.c_str(), p.pid, p.address.c_str(),
                Alive(p.pid) ? "running" : "exited",
                p.metrics.empty() ? "" : ("metrics http://" + p.metrics + "/metrics").c_str());
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterClusterCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<LocalClusterOptions>();
  auto run_dir = std::make_shared<std::string>(DefaultRunDir());
  CLI::App* cmd = app.add_subcommand("cluster", "Run a dmoe cluster of real processes on loopback");
  cmd->require_subcommand(1);
  cmd->add_option("--run-dir", *run_dir, "Logs and state file")->capture_default_str();
  auto state_file = [run_dir] { return (fs::path(*run_dir) / "state.json").string(); };

  CLI::App* up = cmd->add_subcommand("up", "Start scheduler, attention replicas and expert shards");
  up->add_option("--model", options->model_dir, "Checkpoint directory")->required();
  up->add_option("--attention", options->attention, "Attention replicas")->capture_default_str();
  up->add_option("--expert-shards", options->expert_shards, "Expert ranges")->capture_default_str();
  up->add_option("--expert-replicas", options->expert_replicas, "Pods per expert range")
      ->capture_default_str();
  up->add_option("--port", options->port, "The router's port (0 = a free one)")->capture_default_str();
  up->add_option("--http-port", options->http_port,
                 "The router's OpenAI-compatible HTTP port (0 = a free one, -1 = none)")
      ->capture_default_str();
  up->add_option("--threads", options->threads, "Compute threads per pod")->capture_default_str();
  up->add_option("--attention-device", options->attention_device,
                 "Where attention replicas compute: cpu, or cuda (GPU 0 of this host)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  up->add_option("--expert-device", options->expert_device,
                 "Where expert pods compute: cpu, or cuda (GPU 0 of this host, shared by every "
                 "expert pod)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  up->add_option("--expert-transport", options->expert_transport,
                 "How attention replicas reach expert pods: grpc, or nccl (both devices cuda; "
                 "gRPC per pod until its NCCL link is up; docs/expert-data-plane.md)")
      ->check(CLI::IsMember({"grpc", "nccl"}))
      ->capture_default_str();
  up->add_flag("--secure", options->secure,
               "Mutual TLS between every process, TLS and API keys at the router's port, with a "
               "CA and certificates made in RUN_DIR/tls and keys in RUN_DIR/api-keys "
               "(docs/security.md)");
  up->callback([options, run_dir, state_file, exit_code] {
    options->run_dir = *run_dir;
    options->bin_dir = SelfBinDir();
    absl::Status status = RunUp(*options, state_file());
    *exit_code = status.ok() ? 0 : ReportError(status);
  });

  CLI::App* down = cmd->add_subcommand("down", "Stop the cluster started by `dmoe cluster up`");
  down->callback([state_file, exit_code] {
    absl::Status status = RunDown(state_file());
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
  CLI::App* status_cmd = cmd->add_subcommand("status", "List the cluster's processes");
  auto status_json = std::make_shared<bool>(false);
  status_cmd->add_flag("--json", *status_json,
                       "One JSON object: router, http, scheduler, processes (role, pid, addresses)");
  status_cmd->callback([state_file, status_json, exit_code] {
    absl::Status status = RunStatus(state_file(), *status_json);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
