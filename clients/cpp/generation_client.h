// C++ client of the public API (proto/dmoe/v1/generation.proto; docs/api.md). A thin,
// blocking wrapper over the generated stub: deadlines per call, absl::Status errors with the
// server's code and message, a per-event callback for streaming, and (RetryPolicy) retries on
// fallback targets that re-attach to the request by its id.
//
//   DMOE_ASSIGN_OR_RETURN(auto client, dmoe::client::GenerationClient::Connect(
//                                          {.target = "127.0.0.1:50051"}));
//   dmoe::v1::GenerateRequest request;
//   request.set_text("Hello");
//   request.mutable_params()->set_max_new_tokens(64);
//   DMOE_ASSIGN_OR_RETURN(dmoe::v1::GenerateResponse response, client->Generate(request));
#ifndef DMOE_CLIENTS_CPP_GENERATION_CLIENT_H_
#define DMOE_CLIENTS_CPP_GENERATION_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"

namespace dmoe::client {

// When and how often Generate / GenerateStream are sent again after a failure that
// IsRetryable accepts. Every try carries the same request_id (one is made up client-side when
// the request has none) and, for streams, resume_from_offset = the ids the caller already
// got, so the caller sees each block once, in order, none missing. Re-attaching to the
// request that was running needs a journalling scheduler (`--journal`, docs/operations.md);
// without one a retry starts the request anew, which yields the same ids (decoding is
// deterministic given the prompt, the parameters and the seed) at the cost of recomputing
// them.
struct RetryPolicy {
  // Tries in all, the first included; 1: never retry. >= 1.
  int max_attempts = 1;
  // No retry starts later than this after the call began (the call's own deadline still
  // bounds every try); InfiniteDuration: only max_attempts bounds them. > 0.
  absl::Duration max_retry_time = absl::Seconds(30);
  // Wait before the first retry, multiplied by backoff_multiplier for each further one, up to
  // max_backoff. The first retry of a call goes to the next target at once when there is one
  // (a dead router is not worth waiting for); >= 0, multiplier >= 1.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  double backoff_multiplier = 2.0;
  // Told before each retry (logs); not owned, must outlive the client. Null: nobody is told.
  // (An interface, not a std::function: GCC 12 misreads one inside a designated initializer.)
  class Observer {
   public:
    virtual ~Observer() = default;
    // `failure` ended the previous try; `attempt` is the try about to start (2 for the first
    // retry), on `target`. Called on the calling thread.
    virtual void OnRetry(const absl::Status& failure, int attempt, const std::string& target) = 0;
  };
  Observer* observer = nullptr;

  bool enabled() const { return max_attempts > 1; }
  // The wait before retry number `retry` (1 for the first retry).
  absl::Duration Backoff(int retry) const;
  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Whether a failed Generate / GenerateStream may be sent again with the same request id:
// UNAVAILABLE only (the peer is gone or unreachable: a killed router or scheduler, a broken
// connection, a draining server, a request that ended before the call could re-attach). Not
// ABORTED (another call re-attached to the request and took it over: retrying would take it
// back), not DEADLINE_EXCEEDED or CANCELLED (the caller's limits), not RESOURCE_EXHAUSTED
// (a tenant limit; retrying at once makes it worse), and never a verdict on the request itself
// (INVALID_ARGUMENT, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND, ...).
bool IsRetryable(const absl::Status& status);

struct ClientOptions {
  // "host:port" (any gRPC target string works, e.g. "dns:///router:8001").
  std::string target;
  // Further targets (routers, or a scheduler's other address) that retries go to, round robin
  // after `target`; empty: retries go to `target` again. Only used when retry.enabled().
  std::vector<std::string> fallback_targets = {};
  // Retries of Generate / GenerateStream (RetryPolicy); the default does not retry.
  RetryPolicy retry = {};
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
  // Creates a channel to options.target and each fallback target (connects lazily, on the
  // first call): TLS with tls_ca_file, plaintext without. NOT_FOUND when a PEM file cannot be
  // read.
  static absl::StatusOr<std::unique_ptr<GenerationClient>> Connect(const ClientOptions& options);
  // Uses existing channels (e.g. in-process ones in tests): the first is the target, the rest
  // are the fallbacks. options.target and options.fallback_targets are ignored.
  static std::unique_ptr<GenerationClient> FromChannel(std::shared_ptr<grpc::Channel> channel,
                                                       const ClientOptions& options = {});
  static std::unique_ptr<GenerationClient> FromChannels(
      std::vector<std::shared_ptr<grpc::Channel>> channels, const ClientOptions& options = {});

  // Errors are the server's status (docs/api.md), or DEADLINE_EXCEEDED / UNAVAILABLE from
  // the transport. With options.retry, a retryable failure is sent again (RetryPolicy); the
  // error returned is the last try's.
  absl::StatusOr<dmoe::v1::GenerateResponse> Generate(const dmoe::v1::GenerateRequest& request,
                                                      const CallOptions& call = {});

  // Called on the calling thread for every event in order (blocks, canvas steps, final).
  // Return false to cancel the call: the server ends the request and frees its KV, and
  // GenerateStream returns CANCELLED. Across retries every block event is delivered once:
  // its offset continues where the previous one ended (ids the retried stream sends again are
  // dropped). Canvas events of a retried stream may repeat steps the caller saw already. With
  // retries on, a retryable failure after the final event arrived is not an error (the caller
  // has everything).
  using StreamCallback = std::function<bool(const dmoe::v1::GenerateStreamResponse& event)>;
  // Returns the final event (statistics, held-back text tail). `on_event` may be null.
  absl::StatusOr<dmoe::v1::FinalEvent> GenerateStream(const dmoe::v1::GenerateRequest& request,
                                                      const StreamCallback& on_event,
                                                      const CallOptions& call = {});

  absl::StatusOr<dmoe::v1::TokenizeResponse> Tokenize(const dmoe::v1::TokenizeRequest& request,
                                                      const CallOptions& call = {});
  absl::StatusOr<dmoe::v1::ListModelsResponse> ListModels(const CallOptions& call = {});

  // Blocks until the first target's channel is connected: UNAVAILABLE naming the target after
  // `timeout`.
  absl::Status WaitForReady(absl::Duration timeout);

 private:
  struct Target {
    std::string name;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<dmoe::v1::Generation::Stub> stub;
  };
  // What one stream has delivered to the caller so far (across tries).
  struct StreamProgress;

  GenerationClient(std::vector<std::shared_ptr<grpc::Channel>> channels,
                   std::vector<std::string> names, const ClientOptions& options);
  // The call's deadline (absolute, InfiniteFuture: none), counted from `start`.
  absl::Time Deadline(const CallOptions& call, absl::Time start) const;
  // The deadline and authorization metadata.
  void Configure(grpc::ClientContext& context, const CallOptions& call, absl::Time deadline) const;
  // The request as every try sends it: with a request id when retries are on.
  dmoe::v1::GenerateRequest WithRequestId(const dmoe::v1::GenerateRequest& request) const;
  // After a failed try number `attempt` (1-based) of a call that began at `start`: whether to
  // try again, after waiting the backoff; advances `target` to the next one (and makes it the
  // one later calls start on).
  bool PrepareRetry(const absl::Status& status, int attempt, absl::Time start,
                    absl::Time deadline, size_t& target) const;
  // One try of a stream on `target`.
  absl::Status StreamOnce(const Target& target, const dmoe::v1::GenerateRequest& request,
                          const StreamCallback& on_event, const CallOptions& call,
                          absl::Time deadline, StreamProgress& progress) const;

  ClientOptions options_;
  std::vector<Target> targets_;  // [0] is options.target
  // Where calls start: the target the last retry went to.
  mutable std::atomic<size_t> preferred_{0};
};

}  // namespace dmoe::client

#endif  // DMOE_CLIENTS_CPP_GENERATION_CLIENT_H_
