// C++ client of the public API (proto/dmoe/v1/generation.proto; docs/api.md). A thin,
// blocking wrapper over the generated stub: deadlines per call, absl::Status errors with the
// server's code and message, and a per-event callback for streaming.
//
//   DMOE_ASSIGN_OR_RETURN(auto client, dmoe::client::GenerationClient::Connect(
//                                          {.target = "127.0.0.1:50051"}));
//   dmoe::v1::GenerateRequest request;
//   request.set_text("Hello");
//   request.mutable_params()->set_max_new_tokens(64);
//   DMOE_ASSIGN_OR_RETURN(dmoe::v1::GenerateResponse response, client->Generate(request));
#ifndef DMOE_CLIENTS_CPP_GENERATION_CLIENT_H_
#define DMOE_CLIENTS_CPP_GENERATION_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"

namespace dmoe::client {

struct ClientOptions {
  // "host:port" (any gRPC target string works, e.g. "dns:///router:8001").
  std::string target;
  // Deadline of a call that does not set its own; InfiniteDuration = none.
  absl::Duration timeout = absl::InfiniteDuration();
  // Sent as "authorization: Bearer KEY" metadata on every call (docs/security.md); empty:
  // none.
  std::string api_key = "";
  // PEM file of the CA that signed the server's certificate: connect with TLS. Empty: plaintext.
  std::string tls_ca_file = "";
  // PEM certificate and key presented to servers that require one (mutual TLS, internal
  // ports). Both or neither; only with tls_ca_file.
  std::string tls_cert_file = "";
  std::string tls_key_file = "";

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

struct CallOptions {
  // This call's deadline, counted from the call's start; ZeroDuration = the client's default.
  absl::Duration timeout = absl::ZeroDuration();
  // This call's API key (e.g. the HTTP API passing on its caller's); empty: the client's.
  std::string api_key = "";
};

// Thread-safe: any number of calls may run concurrently from different threads.
class GenerationClient {
 public:
  // Creates a channel to options.target (connects lazily, on the first call): TLS with
  // tls_ca_file, plaintext without. NOT_FOUND when a PEM file cannot be read.
  static absl::StatusOr<std::unique_ptr<GenerationClient>> Connect(const ClientOptions& options);
  // Uses an existing channel (e.g. an in-process one in tests). options.target is ignored.
  static std::unique_ptr<GenerationClient> FromChannel(std::shared_ptr<grpc::Channel> channel,
                                                       const ClientOptions& options = {});

  // Errors are the server's status (docs/api.md), or DEADLINE_EXCEEDED / UNAVAILABLE from
  // the transport.
  absl::StatusOr<dmoe::v1::GenerateResponse> Generate(const dmoe::v1::GenerateRequest& request,
                                                      const CallOptions& call = {});

  // Called on the calling thread for every event in order (blocks, canvas steps, final).
  // Return false to cancel the call: the server ends the request and frees its KV, and
  // GenerateStream returns CANCELLED.
  using StreamCallback = std::function<bool(const dmoe::v1::GenerateStreamResponse& event)>;
  // Returns the final event (statistics, held-back text tail). `on_event` may be null.
  absl::StatusOr<dmoe::v1::FinalEvent> GenerateStream(const dmoe::v1::GenerateRequest& request,
                                                      const StreamCallback& on_event,
                                                      const CallOptions& call = {});

  absl::StatusOr<dmoe::v1::TokenizeResponse> Tokenize(const dmoe::v1::TokenizeRequest& request,
                                                      const CallOptions& call = {});
  absl::StatusOr<dmoe::v1::ListModelsResponse> ListModels(const CallOptions& call = {});

  // Blocks until the channel is connected: UNAVAILABLE naming the target after `timeout`.
  absl::Status WaitForReady(absl::Duration timeout);

 private:
  GenerationClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);
  // The call's deadline and authorization metadata.
  void Configure(grpc::ClientContext& context, const CallOptions& call) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dmoe::v1::Generation::Stub> stub_;
};

}  // namespace dmoe::client

#endif  // DMOE_CLIENTS_CPP_GENERATION_CLIENT_H_
