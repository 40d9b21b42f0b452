// The router's relay of one GenerateStream call to a scheduler, on gRPC's callback threads
// (no thread per stream), re-attaching to the scheduler when the backend stream is lost.
#ifndef DMOE_ROUTER_STREAM_RELAY_H_
#define DMOE_ROUTER_STREAM_RELAY_H_

#include <functional>
#include <string>

#include "absl/time/time.h"
#include "common/auth/authorize.h"
#include "grpcpp/alarm.h"
#include "grpcpp/grpcpp.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"

namespace dmoe::router {

// When a stream that has relayed at least one event fails with UNAVAILABLE (the scheduler
// died, restarted or is draining) before the caller has its final event, the router calls
// again with the same request id and resume_from_offset = the ids already relayed: a
// journalling scheduler re-attaches the request where it is (docs/operations.md), any other
// starts it again and skips what the caller has. The caller sees one unbroken stream. A call
// that never reached its scheduler (down when it began) fails at once, as does a unary call:
// a backend that is down is the caller's (and the canary policy's) to know about quickly.
struct ReattachOptions {
  // How long the router keeps trying after a loss, from the first failed try of a streak
  // (bounded by the caller's deadline too). Zero: the loss is the caller's error.
  absl::Duration timeout = absl::Seconds(30);
  // Wait before a try, doubling per failed try up to max_backoff.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  bool enabled() const { return timeout > absl::ZeroDuration(); }
};

struct StreamRelayOptions {
  dmoe::v1::Generation::Stub* stub = nullptr;  // the picked version's scheduler; not owned
  std::string version;                          // set on the final event's model.version
  ReattachOptions reattach = {};
  // Runs once with the call's final status, before the caller sees it.
  std::function<void(const grpc::Status&)> done = nullptr;
  // Runs before each re-attach try (metrics); may be null.
  std::function<void()> on_reattach = nullptr;
};

// The caller's authorization metadata ("" when none): it goes on to the backend, so a
// scheduler with its own --api-keys sees the same key.
std::string CallerAuthorization(const grpc::CallbackServerContext& context);

// Starts relaying `request` for the caller of `context` (a request without an id gets one,
// "router-<process>-<n>", so that a re-attach names the same request); the returned reactor
// deletes itself when both sides are done.
grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* StartStreamRelay(
    grpc::CallbackServerContext* context, dmoe::v1::GenerateRequest request,
    StreamRelayOptions options, auth::Admission admission);

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_STREAM_RELAY_H_
