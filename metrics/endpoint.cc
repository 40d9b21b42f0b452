#include "metrics/endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "metrics/catalog.h"
#include "prometheus/text_serializer.h"

namespace dmoe::metrics {
namespace {

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;  // the scraper went away
    sent += static_cast<size_t>(n);
  }
}

std::string Response(const char* status, const char* content_type, const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
}

}  // namespace

ProcessMetrics NewProcessMetrics(const std::string& role, const std::string& model_version) {
  ProcessMetrics m{std::make_shared<prometheus::Registry>(), model_version};
  GaugeFamily(*m.registry, "dmoe_info", model_version).Add({{"role", role}}).Set(1);
  return m;
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, std::shared_ptr<prometheus::Registry> registry) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535 ||
      inet_pton(AF_INET, listen.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics listen address '", listen, "' is not IPV4:PORT (e.g. 0.0.0.0:9400)"));
  }
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->registry_ = std::move(registry);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 64) != 0 || getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string error = std::strerror(errno);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ", error));
  }
  endpoint->listen_fd_ = fd;
  endpoint->address_ = absl::StrCat(listen.substr(0, colon), ":", ntohs(addr.sin_port));
  endpoint->thread_ = std::thread([e = endpoint.get()] { e->Serve(); });
  return endpoint;
}

absl::StatusOr<ServedMetrics> ServeProcessMetrics(const std::string& role,
                                                  const std::string& model_version,
                                                  const std::string& listen,
                                                  const ProcessMetrics& injected) {
  ServedMetrics served;
  served.metrics = injected;
  if (listen.empty()) return served;
  if (!served.metrics.registry) served.metrics = NewProcessMetrics(role, model_version);
  auto endpoint = MetricsEndpoint::Start(listen, served.metrics.registry);
  if (!endpoint.ok()) return endpoint.status();
  served.endpoint = *std::move(endpoint);
  DMOE_LOG(INFO) << "metrics on http://" << served.endpoint->address() << "/metrics";
  return served;
}

namespace {
std::atomic<bool>& Serving() {
  static std::atomic<bool> serving{false};
  return serving;
}
}  // namespace

void MarkServing(bool serving) { Serving() = serving; }

MetricsEndpoint::~MetricsEndpoint() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
}

void MetricsEndpoint::Serve() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;  // wakes up to notice stop_
    const int connection = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    Answer(connection);
    close(connection);
  }
}

void MetricsEndpoint::Answer(int connection) {
  // A scrape is one small request; a client that stalls gets 2 s, then the next one is served.
  timeval timeout{2, 0};
  setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  std::string request;
  char buf[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    const ssize_t n = recv(connection, buf, sizeof(buf), 0);
    if (n <= 0) return;
    request.append(buf, static_cast<size_t>(n));
  }
  const std::string line = request.substr(0, request.find("\r\n"));
  if (line.rfind("GET ", 0) != 0) {
    SendAll(connection, Response("405 Method Not Allowed", "text/plain", "GET /metrics only\n"));
    return;
  }
  std::string path = line.substr(4, line.find(' ', 4) - 4);
  path = path.substr(0, path.find('?'));
  if (path == "/health") {
    SendAll(connection, Serving() ? Response("200 OK", "text/plain", "serving\n")
                                  : Response("503 Service Unavailable", "text/plain",
                                             "not serving yet\n"));
    return;
  }
  if (path != "/metrics" && path != "/") {
    SendAll(connection, Response("404 Not Found", "text/plain",
                                 "metrics are at /metrics, health at /health\n"));
    return;
  }
  std::ostringstream body;
  prometheus::TextSerializer().Serialize(body, registry_->Collect());
  SendAll(connection, Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", body.str()));
}

}  // namespace dmoe::metrics
