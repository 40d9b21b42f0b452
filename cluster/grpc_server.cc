#include "cluster/grpc_server.h"

#include <pthread.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "metrics/endpoint.h"
#include "metrics/grpc_metrics.h"

namespace dmoe::cluster {

std::shared_ptr<grpc::Channel> GrpcServer::InProcessChannel() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  args.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  return server->InProcessChannel(args);
}

void GrpcServer::MarkNotServing() {
  if (server == nullptr) return;
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    health->Shutdown();
  }
}

absl::StatusOr<GrpcServer> StartGrpcServer(const GrpcServerOptions& options) {
  const size_t colon = options.listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == options.listen.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", options.listen, "' is not host:port"));
  }
  // Both are process-wide switches read when a ServerBuilder is created.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Without this Linux lets a second server bind the same port and steal half the calls.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  GrpcServer started;
  builder.AddListeningPort(
      options.listen,
      options.credentials ? options.credentials : grpc::InsecureServerCredentials(),
      &started.port);
  for (grpc::Service* service : options.services) builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  metrics::AddGrpcServerMetrics(builder, options.metrics);
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || started.port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  if (grpc::HealthCheckServiceInterface* health = started.server->GetHealthCheckService()) {
    health->SetServingStatus(true);
    for (const std::string& name : options.health_services) health->SetServingStatus(name, true);
  }
  metrics::MarkServing(true);  // GET /health on the metrics port (plaintext probes)
  started.address = absl::StrCat(options.listen.substr(0, colon), ":", started.port);
  DMOE_LOG(INFO) << "listening on " << started.address;
  return started;
}

ShutdownSignals::ShutdownSignals() {
  sigemptyset(&signals_);
  sigaddset(&signals_, SIGTERM);
  sigaddset(&signals_, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
}

int ShutdownSignals::Wait() {
  int signal_number = 0;
  sigwait(&signals_, &signal_number);
  metrics::MarkServing(false);  // draining from here on: GET /health answers 503
  return signal_number;
}

}  // namespace dmoe::cluster
