// How every dmoe process serves gRPC (router, scheduler, attention replica, expert shard and
// `dmoe serve`): one ServerBuilder setup with grpc.health.v1, server reflection, the RPC
// metrics interceptor, one message-size limit, port 0 resolved to the bound port (and logged
// as "listening on HOST:PORT", the line `dmoe cluster up` waits for), and the SIGTERM/SIGINT
// wait that starts a graceful drain.
#ifndef DMOE_CLUSTER_GRPC_SERVER_H_
#define DMOE_CLUSTER_GRPC_SERVER_H_

#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "metrics/endpoint.h"

namespace dmoe::cluster {

// The largest message any dmoe server or client sends or accepts. An expert call carries
// rows x hidden_size x 4 bytes (64 blocks x 32 tokens x 8 slots x 2048 x 4 = 128 MiB for a
// flash-sized batch on one shard), far above gRPC's 4 MiB default; 1 GiB leaves room for
// larger batches and stays below gRPC's 2 GiB hard limit.
inline constexpr int kMaxGrpcMessageBytes = 1 << 30;

struct GrpcServerOptions {
  std::string listen;                     // host:port; port 0 picks a free one
  std::vector<grpc::Service*> services;   // not owned; must outlive the server
  // Full names (e.g. "dmoe.v1.Generation") reported SERVING by grpc.health.v1, besides "".
  std::vector<std::string> health_services{};
  metrics::ProcessMetrics metrics;        // dmoe_grpc_server_handled_total; null registry: none
  int max_message_bytes = kMaxGrpcMessageBytes;
  // TLS / mutual TLS of the listening port (common/auth/tls.h); null: plaintext.
  std::shared_ptr<grpc::ServerCredentials> credentials = nullptr;
};

// A started server and the address it is bound to.
struct GrpcServer {
  std::unique_ptr<grpc::Server> server;
  std::string address;  // "HOST:PORT" with the real port
  int port = 0;

  // A channel to this server that bypasses the network (tests, co-located callers), with the
  // same message size limit as the listening port.
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // Every health status NOT_SERVING, and no later change (what readiness probes watch when a
  // drain starts).
  void MarkNotServing();
};

// INVALID_ARGUMENT when `listen` is not host:port, UNAVAILABLE when it cannot be bound (a
// second server may not share a port: SO_REUSEPORT is off).
absl::StatusOr<GrpcServer> StartGrpcServer(const GrpcServerOptions& options);

// The role binaries' shutdown signals. The constructor blocks SIGTERM and SIGINT in the
// calling thread: construct it before any thread starts, so every thread inherits the mask
// and only Wait() sees them.
class ShutdownSignals {
 public:
  ShutdownSignals();
  // Blocks until SIGTERM or SIGINT arrives; returns the signal number.
  int Wait();

 private:
  sigset_t signals_;
};

}  // namespace dmoe::cluster

#endif  // DMOE_CLUSTER_GRPC_SERVER_H_
