// dmoe-router: the public Generation API in front of one scheduler per model version, with a
// weighted, sticky traffic split, the RouterAdmin API and automatic canary rollback
// (docs/canary.md). --metrics-listen serves /metrics (router/router_metrics.h).
//
//   dmoe-router --backend 127.0.0.1:7000 --listen 127.0.0.1:0
//   dmoe-router --version-backend v1=127.0.0.1:7000 --version-backend v2=127.0.0.1:7001
//               --split v1=90,v2=10 --stable v1 --listen 127.0.0.1:0
//
// Logs "listening on HOST:PORT"; grpc.health.v1 and reflection; drains on SIGTERM / SIGINT.
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "cluster/grpc_server.h"
#include "common/auth/tls.h"
#include "common/logging.h"
#include "http/openai_server.h"
#include "metrics/catalog.h"
#include "metrics/endpoint.h"
#include "router/generation_proxy.h"

int main(int argc, char** argv) {
  CLI::App app{"dmoe router: the public dmoe.v1.Generation API in front of the schedulers of "
               "one or more model versions"};
  std::string backend, model_version = "v1", split, stable, listen = "127.0.0.1:0";
  std::string metrics_listen, http_listen, api_keys_file;
  std::vector<std::string> version_backends;
  double drain_seconds = 30, reattach_timeout_seconds = 30;
  dmoe::router::CanaryPolicyOptions rollback;
  double window_seconds = 60, latency_p95_seconds = 0;
  auto* single = app.add_option("--backend", backend,
                                "The scheduler's address (host:port) when one version is served");
  app.add_option("--model-version", model_version, "The version name of --backend")
      ->capture_default_str();
  auto* multi = app.add_option("--version-backend", version_backends,
                               "VERSION=HOST:PORT, repeatable: one scheduler per model version "
                               "(declaration order = sticky bucket order)");
  single->excludes(multi);
  app.add_option("--split", split,
                 "Initial weights, VERSION=PERCENT,... summing to 100 (default: 100 to the "
                 "first version)");
  app.add_option("--stable", stable, "Rollback target (default: the first version)");
  app.add_option("--rollback-window-seconds", window_seconds,
                 "Sliding window of call outcomes per version")
      ->capture_default_str();
  app.add_option("--rollback-min-requests", rollback.min_requests,
                 "Calls a canary needs in the window before it can be rolled back")
      ->capture_default_str();
  app.add_option("--rollback-error-ratio", rollback.max_error_ratio,
                 "Roll a canary back when its window's error ratio exceeds this")
      ->capture_default_str();
  app.add_option("--rollback-latency-p95-seconds", latency_p95_seconds,
                 "Roll a canary back when its window's p95 call duration exceeds this (0 = off)")
      ->capture_default_str();
  app.add_option("--listen", listen, "host:port; port 0 picks a free port")->capture_default_str();
  app.add_option("--drain-seconds", drain_seconds, "Time calls in flight get on SIGTERM")
      ->capture_default_str();
  app.add_option("--reattach-timeout-s", reattach_timeout_seconds,
                 "How long a call whose scheduler was lost keeps trying to re-attach to it (same "
                 "request id, resumed at the offset the caller has); 0: the loss is the "
                 "caller's error")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--http-listen", http_listen,
                 "host:port of the OpenAI-compatible HTTP API (docs/http-api.md); empty: none");
  app.add_option("--metrics-listen", metrics_listen,
                 "host:port of the Prometheus /metrics endpoint (port 0 picks one); empty: none");
  app.add_option("--api-keys", api_keys_file,
                 "API keys file (NAME ROLE SHA256HEX [rps=N] [streams=N] [tpm=N] per line; "
                 "docs/security.md): Generation needs a key, RouterAdmin an admin key; re-read "
                 "when it changes. Empty: no authentication");
  dmoe::auth::TlsOptions tls;
  dmoe::auth::AddTlsFlags(app, tls);
  CLI11_PARSE(app, argc, argv);
  if (absl::Status valid = tls.Validate(); !valid.ok()) {
    std::cerr << "dmoe-router: " << valid.message() << "\n";
    return 2;
  }

  dmoe::router::GenerationProxyOptions options;
  if (!backend.empty()) {
    options.backends.push_back({.version = model_version, .address = backend});
  }
  for (const std::string& vb : version_backends) {
    const size_t eq = vb.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == vb.size()) {
      std::cerr << "dmoe-router: --version-backend: expected VERSION=HOST:PORT, got '" << vb
                << "'\n";
      return 2;
    }
    options.backends.push_back({.version = vb.substr(0, eq), .address = vb.substr(eq + 1)});
  }
  if (options.backends.empty()) {
    std::cerr << "dmoe-router: give --backend or at least one --version-backend\n";
    return 2;
  }
  if (!split.empty()) {
    auto parsed = dmoe::router::ParseSplit(split, "--split");
    if (!parsed.ok()) {
      std::cerr << "dmoe-router: " << parsed.status().message() << "\n";
      return 2;
    }
    options.split = *parsed;
  }
  options.stable = stable;
  rollback.window = absl::Seconds(window_seconds);
  rollback.max_latency_p95 = absl::Seconds(latency_p95_seconds);
  options.rollback = rollback;
  options.reattach.timeout = absl::Seconds(reattach_timeout_seconds);
  dmoe::cluster::ShutdownSignals signals;  // before any thread starts

  // The process's registry and /metrics (dmoe_info and the gRPC handled counter carry the
  // initial stable version as model_version; the router's own series label each version).
  auto served_metrics = dmoe::metrics::ServeProcessMetrics(
      "router", stable.empty() ? options.backends.front().version : stable, metrics_listen);
  if (!served_metrics.ok()) {
    std::cerr << "dmoe-router: " << served_metrics.status().message() << "\n";
    return 2;
  }
  const dmoe::metrics::ProcessMetrics& metrics = served_metrics->metrics;
  options.registry = metrics.registry;

  std::unique_ptr<dmoe::auth::ApiKeys> api_keys;
  if (!api_keys_file.empty()) {
    dmoe::auth::ApiKeysOptions keys_options;
    keys_options.path = api_keys_file;
    if (metrics.registry) {
      keys_options.refusals = &dmoe::metrics::CounterFamily(
          *metrics.registry, "dmoe_api_refusals_total", metrics.model_version);
    }
    auto loaded = dmoe::auth::ApiKeys::Load(keys_options);
    if (!loaded.ok()) {
      std::cerr << "dmoe-router: --api-keys: " << loaded.status().message() << "\n";
      return 2;
    }
    api_keys = *std::move(loaded);
    options.api_keys = api_keys.get();
  } else {
    DMOE_LOG(INFO) << "API keys off: Generation and RouterAdmin take unauthenticated calls "
                      "(--api-keys FILE turns them on)";
  }
  // The public port: TLS, callers authenticate with API keys. The schedulers' ports: mutual
  // TLS with the same certificate as the client's.
  auto server_credentials =
      dmoe::auth::ServerCredentials(tls, dmoe::auth::ClientCertificates::kNotRequested);
  auto backend_credentials = dmoe::auth::ChannelCredentials(tls);
  if (!server_credentials.ok() || !backend_credentials.ok()) {
    std::cerr << "dmoe-router: "
              << (server_credentials.ok() ? backend_credentials.status()
                                          : server_credentials.status())
                     .message()
              << "\n";
    return 2;
  }
  options.backend_credentials = *backend_credentials;
  options.backend_server_name = tls.server_name;
  auto proxy = dmoe::router::GenerationProxy::Create(options);
  if (!proxy.ok()) {
    std::cerr << "dmoe-router: " << proxy.status().message() << "\n";
    return 2;
  }
  auto server = dmoe::cluster::StartGrpcServer(
      {.listen = listen,
       .services = {proxy->get(), &(*proxy)->admin_service()},
       .health_services = {dmoe::v1::Generation::service_full_name()},
       .metrics = metrics,
       .max_message_bytes = dmoe::cluster::kMaxGrpcMessageBytes,
       .credentials = *server_credentials});
  if (!server.ok()) {
    std::cerr << "dmoe-router: " << server.status().message() << "\n";
    return 2;
  }
  // The HTTP API calls this router's own gRPC service, so it takes the same split and canary
  // policy as every gRPC client.
  std::unique_ptr<dmoe::http::OpenAiServer> http;
  if (!http_listen.empty()) {
    auto started = dmoe::http::OpenAiServer::Start({.listen = http_listen},
                                                  server->InProcessChannel());
    if (!started.ok()) {
      std::cerr << "dmoe-router: " << started.status().message() << "\n";
      return 2;
    }
    http = *std::move(started);
    DMOE_LOG(INFO) << "OpenAI-compatible HTTP API at http://" << http->address();
  }
  std::vector<std::string> described;
  for (const auto& b : options.backends) described.push_back(b.version + "=" + b.address);
  const dmoe::router::SplitSnapshot snapshot = (*proxy)->split().Snapshot();
  std::vector<dmoe::router::VersionWeight> weights;
  for (const auto& v : snapshot.versions) weights.push_back({v.version, v.percent});
  DMOE_LOG(INFO) << "dmoe-router: backends " << absl::StrJoin(described, " ") << ", split "
                 << dmoe::router::FormatSplit(weights) << ", stable " << snapshot.stable
                 << ", rollback window " << window_seconds << " s, min requests "
                 << rollback.min_requests << ", error ratio > " << rollback.max_error_ratio
                 << ", p95 > " << latency_p95_seconds << " s (0 = off)";
  const int signal_number = signals.Wait();
  DMOE_LOG(INFO) << "signal " << signal_number << ": draining";
  server->MarkNotServing();
  server->server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000)));
  http.reset();  // after the gRPC calls it made have ended
  return 0;
}
