// ExpertTransport over gRPC (dmoe.v1.ExpertService): one channel to one expert replica.
#ifndef DMOE_TRANSPORT_GRPC_EXPERT_TRANSPORT_H_
#define DMOE_TRANSPORT_GRPC_EXPERT_TRANSPORT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "transport/expert_transport.h"

namespace dmoe::transport {

struct GrpcExpertTransportOptions {
  // gRPC target of the replica, e.g. "127.0.0.1:4242" or "dns:///expert-0.expert:4242".
  std::string target{};
  // Largest message sent or received, in bytes (see ExpertServerOptions::max_message_bytes);
  // must be at least the shard's largest response.
  int max_message_bytes = 1 << 30;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe: concurrent calls share the channel (HTTP/2 multiplexing). Calls fail fast
// (no wait-for-ready): a replica that is down answers UNAVAILABLE at once, so the caller can
// fail over to another one.
class GrpcExpertTransport final : public ExpertTransport {
 public:
  // Creates a channel to options.target with the process's internal credentials
  // (common/internal_credentials.h); connects lazily on the first call.
  static absl::StatusOr<std::unique_ptr<GrpcExpertTransport>> Create(
      const GrpcExpertTransportOptions& options);
  // Over an existing channel (e.g. ExpertServer::InProcessChannel()); `address` names the
  // endpoint in errors.
  GrpcExpertTransport(std::shared_ptr<grpc::Channel> channel, std::string address);
  ~GrpcExpertTransport() override;

  const std::string& address() const override { return address_; }
  // Serializes rows into one RunExpertsRequest (deadline set on the call) and copies the
  // response's output into `out` after checking its dtype and shape (INTERNAL otherwise).
  // gRPC errors keep their code; the message names the address:
  // "127.0.0.1:4242: RunExperts layer 3: <grpc message>".
  absl::Status RunExperts(const ExpertRows& rows, absl::Time deadline, float* out) override;
  absl::StatusOr<ShardInfo> GetShardInfo(absl::Time deadline) override;

 private:
  class Stub;  // the generated dmoe.v1.ExpertService stub (kept out of this header)
  std::string address_;
  std::unique_ptr<Stub> stub_;
};

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_GRPC_EXPERT_TRANSPORT_H_
