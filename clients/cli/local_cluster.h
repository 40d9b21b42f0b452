// A dmoe cluster of real processes on loopback (`dmoe cluster up`, the integration tests):
// a dmoe-router (the public Generation API) in front of a dmoe-scheduler, N dmoe-attention
// replicas and the expert shards (dmoe-expert) with their replicas, each on a free port, the
// pods registered with the scheduler. Processes run in their own session, so they outlive `dmoe cluster up`.
#ifndef DMOE_CLIENTS_CLI_LOCAL_CLUSTER_H_
#define DMOE_CLIENTS_CLI_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dmoe::cli {

struct LocalClusterOptions {
  std::string model_dir;
  std::string bin_dir;            // where dmoe-router / -scheduler / -attention / -expert live
  std::string run_dir;            // logs (and the state file of `dmoe cluster up`)
  int routers = 1;                // dmoe-router processes in front of the scheduler
  int attention = 1;              // attention replicas
  int expert_shards = 2;          // expert ranges of equal size
  int expert_replicas = 1;        // pods per range
  int port = 0;                   // the router's (public) port; 0 = free
  int http_port = 0;              // the router's OpenAI-compatible HTTP port; 0 = free, < 0 = none
  int threads = 1;                // compute threads per pod
  std::string attention_device = "cpu";  // --device of the attention replicas: cpu | cuda
  std::string expert_device = "cpu";     // --device of the expert pods: cpu | cuda
  // --expert-transport of attention replicas and expert pods: grpc | nccl (both devices cuda).
  std::string expert_transport = "grpc";
  std::vector<std::string> scheduler_args;  // extra flags for dmoe-scheduler
  bool metrics = true;            // every process serves /metrics on a free loopback port
  // Mutual TLS on every internal port and TLS on the router's public port: a CA and one
  // certificate per process are made in RUN_DIR/tls; API keys required at the routers, made
  // into RUN_DIR/api-keys (docs/security.md).
  bool secure = false;
  absl::Duration startup_timeout = absl::Seconds(60);

  absl::Status Validate() const;
};

struct ClusterProcess {
  std::string role;      // "router", "scheduler", "attention", "expert"
  std::string name;      // e.g. "expert-1-r0"
  pid_t pid = 0;
  std::string address{}; // host:port it listens on
  std::string log{};     // its log file
  std::string metrics{}; // host:port of its /metrics endpoint ("" without one)
  int expert_first = 0;  // expert pods
  int expert_last = 0;
  // Its command line with the addresses it got, so a restart listens where it did.
  std::vector<std::string> argv{};
};

struct LocalCluster {
  std::string router;    // the address clients call (dmoe-router; the first of `routers`)
  std::vector<std::string> routers;  // every router's address
  std::string http;      // the router's OpenAI-compatible HTTP API, host:port ("" = none)
  std::string scheduler; // where pods register (also serves the Generation API)
  std::string tls_ca;    // secure clusters: the CA clients verify the router with ("" = plaintext)
  // Secure clusters: the API keys made for clients, "NAME KEY" per line (a user key, then an
  // admin key), readable by the user only; the routers' --api-keys file holds their hashes.
  std::string api_key_file;
  std::vector<ClusterProcess> processes;
};

// Starts every process and waits until the scheduler sees all pods and a complete expert
// placement. On error every process it started is killed; the error names the process and
// quotes its log's last lines.
absl::StatusOr<LocalCluster> StartLocalCluster(const LocalClusterOptions& options);

// Starts one more pod of `role` ("attention" or "expert" with [first, last)) into `cluster`.
absl::StatusOr<ClusterProcess> StartPod(const LocalClusterOptions& options, LocalCluster& cluster,
                                        const std::string& role, int first, int last,
                                        const std::string& name);

// Starts processes[index] again (after it died or was killed) with its command line and on
// the addresses it had: clients and pods find it where it was. Waits until it listens.
absl::Status RestartProcess(const LocalClusterOptions& options, LocalCluster& cluster,
                            size_t index);

// SIGTERM to every process, SIGKILL to those still alive after `grace`; reaps children.
void StopLocalCluster(const LocalCluster& cluster, absl::Duration grace = absl::Seconds(10));

// State file of `dmoe cluster up` / `down` (JSON).
absl::Status WriteClusterState(const LocalCluster& cluster, const std::string& path);
absl::StatusOr<LocalCluster> ReadClusterState(const std::string& path);

// The directory of the running executable (where the role binaries are installed).
std::string SelfBinDir();

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_LOCAL_CLUSTER_H_
