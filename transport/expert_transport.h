// The expert data plane seen from an attention replica: ExpertTransport is one endpoint (one
// replica of one expert shard) that computes rows routed to its experts. Implementations:
// expert::InProcessExpertTransport (expert_service/; embedded mode, tests), GrpcExpertTransport
// (CPU clusters), NcclExpertTransport (GPU hosts).
// The attention code only sees model::ExpertExecutor (ShardedExpertExecutor), which
// fans a layer's rows out over transports.
#ifndef DMOE_TRANSPORT_EXPERT_TRANSPORT_H_
#define DMOE_TRANSPORT_EXPERT_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/shard_info.h"

namespace dmoe::transport {

// The rows of one MoE layer sent to one shard. Non-owning: the pointers must stay valid for
// the duration of the RunExperts call.
struct ExpertRows {
  int64_t layer = 0;                    // absolute decoder layer (a MoE layer)
  int64_t num_rows = 0;                 // n (may be 0)
  int64_t hidden_size = 0;              // H
  const float* hidden = nullptr;        // F32 [n, H], row-major
  const int32_t* expert_ids = nullptr;  // [n], global expert ids inside the shard's range
  // Tracing metadata, carried to the shard unchanged.
  std::string request_id{};
  int64_t step = 0;
  uint64_t placement_version = 0;
};

// Thread-safe: concurrent RunExperts calls are allowed.
class ExpertTransport {
 public:
  virtual ~ExpertTransport() = default;

  // Names the endpoint in errors and logs ("127.0.0.1:4242", "inproc:shard-0-r1").
  virtual const std::string& address() const = 0;

  // out[i] = expert_{expert_ids[i]}(hidden[i]), F32 [n, H], unweighted (the caller applies
  // routing weights). `out` is caller-allocated (may be null when n == 0) and holds the
  // result only when OK is returned; on error its contents are unspecified. Errors carry the
  // shard's status code with the address in the message: INVALID_ARGUMENT for a malformed
  // call, DEADLINE_EXCEEDED past `deadline`, UNAVAILABLE when the endpoint cannot be reached
  // or is draining, RESOURCE_EXHAUSTED when it is overloaded.
  virtual absl::Status RunExperts(const ExpertRows& rows, absl::Time deadline, float* out) = 0;

  // What the endpoint serves (for compatibility checks before routing to it).
  virtual absl::StatusOr<ShardInfo> GetShardInfo(absl::Time deadline) = 0;
};

// Transports are shared: one endpoint may appear in several placements (versions).
using ExpertTransportSharedPtr = std::shared_ptr<ExpertTransport>;

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_EXPERT_TRANSPORT_H_
