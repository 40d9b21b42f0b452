// The one place where absl::Status and grpc::Status meet (STYLE.md §6). Abseil keeps its codes
// in sync with google.rpc.Code, so the mapping is a straight code copy in both directions.
#ifndef DMOE_COMMON_GRPC_STATUS_H_
#define DMOE_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace dmoe {

// Same code, same message. Codes outside gRPC's range (none today) become UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse, for clients: same code, same message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace dmoe

#endif  // DMOE_COMMON_GRPC_STATUS_H_
