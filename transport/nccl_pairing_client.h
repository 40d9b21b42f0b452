// The attention side's NcclPeeringDeps::pair over gRPC (NcclPairing.Pair,
// proto/dmoe/v1/nccl_pairing.proto), and the proto <-> spec conversions both sides share.
#ifndef DMOE_TRANSPORT_NCCL_PAIRING_CLIENT_H_
#define DMOE_TRANSPORT_NCCL_PAIRING_CLIENT_H_

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/dmoe/v1/nccl_pairing.pb.h"
#include "transport/nccl_peering.h"

namespace dmoe::transport {

// NcclPairing.Pair on spec.expert_address by `deadline` (a fresh channel: pairings are rare).
// The pod's status passes through, prefixed with its address; UNAVAILABLE / DEADLINE_EXCEEDED
// when it cannot be reached.
absl::StatusOr<NcclPairAnswer> PairOverGrpc(const NcclPairSpec& spec, absl::Time deadline);

v1::PairNcclRequest ToProto(const NcclPairSpec& spec);
// expert_address is not on the wire: the pod fills in its own.
NcclPairSpec FromProto(const v1::PairNcclRequest& request);
v1::PairNcclResponse ToProto(const NcclPairAnswer& answer);
NcclPairAnswer FromProto(const v1::PairNcclResponse& response);

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_NCCL_PAIRING_CLIENT_H_
