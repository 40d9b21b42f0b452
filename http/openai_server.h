// The OpenAI-compatible HTTP API (docs/http-api.md) in front of a Generation gRPC endpoint:
// POST /v1/completions and /v1/chat/completions (streamed as server-sent events with
// "stream": true), GET /v1/models and GET /health. Each HTTP request becomes one Generation
// call on `channel` (the process's own gRPC server, through its in-process channel), so the
// router, `dmoe serve` and dmoe-scheduler serve the same API with the same defaults.
//
// HTTP library: cpp-httplib (Debian's libcpp-httplib-dev): a small, well-kept server with a
// thread pool and chunked responses for SSE, and a client for the tests; unlike civetweb
// (prometheus-cpp's) its worker threads are plain std::threads with the default stack.
#ifndef DMOE_HTTP_OPENAI_SERVER_H_
#define DMOE_HTTP_OPENAI_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace httplib {
class Server;
}

namespace dmoe::http {

struct OpenAiServerOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one
  int threads = 64;                    // concurrent HTTP requests (a stream holds one)
};

class OpenAiServer {
 public:
  // Binds and starts serving; INVALID_ARGUMENT for a malformed address, UNAVAILABLE when the
  // address cannot be bound.
  static absl::StatusOr<std::unique_ptr<OpenAiServer>> Start(
      const OpenAiServerOptions& options, std::shared_ptr<grpc::Channel> channel);
  ~OpenAiServer();  // stops: open streams are cancelled

  // "HOST:PORT" with the bound port.
  const std::string& address() const { return address_; }
  int port() const { return port_; }

 private:
  OpenAiServer() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string address_;
  int port_ = 0;
};

}  // namespace dmoe::http

#endif  // DMOE_HTTP_OPENAI_SERVER_H_
