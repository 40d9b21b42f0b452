// The one place where absl::Status and grpc::Status meet (STYLE.md §6). Abseil keeps its codes
// in sync with google.rpc.Code, so the mapping is a straight code copy in both directions.
#ifndef DMOE_COMMON_GRPC_STATUS_H_
#define DMOE_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace dmoe {

// Longest status message sent: the message travels in a header (grpc-message; in the initial
// HEADERS frame when a call fails at once), and a header over the peer's metadata limit
// (8 KiB by default) fails the whole HTTP/2 connection, every call on it included.
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// Same code, same message (cut at kMaxStatusMessageBytes on a UTF-8 character boundary, with
// the original length appended: messages may quote the caller's input). Codes outside gRPC's
// range (none today) become UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The inverse, for clients: same code, same message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace dmoe

#endif  // DMOE_COMMON_GRPC_STATUS_H_
