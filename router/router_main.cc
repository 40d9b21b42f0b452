// dmoe-router: the public Generation API in front of a scheduler.
//
//   dmoe-router --backend 127.0.0.1:7000 --listen 127.0.0.1:0
//
// Logs "listening on HOST:PORT"; grpc.health.v1 and reflection; drains on SIGTERM / SIGINT.
#include <pthread.h>
#include <signal.h>

#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "router/generation_proxy.h"

int main(int argc, char** argv) {
  CLI::App app{"dmoe router: the public dmoe.v1.Generation API in front of a scheduler"};
  std::string backend, listen = "127.0.0.1:0";
  double drain_seconds = 30;
  app.add_option("--backend", backend, "The scheduler's address (host:port)")->required();
  app.add_option("--listen", listen, "host:port; port 0 picks a free port")->capture_default_str();
  app.add_option("--drain-seconds", drain_seconds, "Time calls in flight get on SIGTERM")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  dmoe::router::GenerationProxy proxy(backend);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&proxy);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "dmoe-router: cannot listen on " << listen << "\n";
    return 2;
  }
  DMOE_LOG(INFO) << "dmoe-router: backend " << backend;
  DMOE_LOG(INFO) << "listening on " << listen.substr(0, listen.rfind(':')) << ":" << port;
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining";
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000)));
  return 0;
}
