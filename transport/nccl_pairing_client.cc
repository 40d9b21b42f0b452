#include "transport/nccl_pairing_client.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "common/internal_credentials.h"
#include "proto/dmoe/v1/nccl_pairing.grpc.pb.h"

namespace dmoe::transport {

v1::PairNcclRequest ToProto(const NcclPairSpec& spec) {
  v1::PairNcclRequest r;
  r.set_group(spec.group);
  r.set_generation(spec.generation);
  r.set_attention_address(spec.attention_address);
  r.set_hidden_size(spec.hidden_size);
  r.set_max_rows(spec.max_rows);
  r.set_heartbeat_seconds(absl::ToDoubleSeconds(spec.heartbeat));
  return r;
}

NcclPairSpec FromProto(const v1::PairNcclRequest& request) {
  NcclPairSpec spec;
  spec.group = request.group();
  spec.generation = request.generation();
  spec.attention_address = request.attention_address();
  spec.hidden_size = request.hidden_size();
  spec.max_rows = request.max_rows();
  spec.heartbeat = absl::Seconds(request.heartbeat_seconds());
  return spec;
}

v1::PairNcclResponse ToProto(const NcclPairAnswer& answer) {
  v1::PairNcclResponse r;
  r.set_num_ranks(answer.num_ranks);
  r.set_expert_rank(answer.expert_rank);
  r.set_generation(answer.generation);
  r.set_idle_timeout_seconds(absl::ToDoubleSeconds(answer.idle_timeout));
  return r;
}

NcclPairAnswer FromProto(const v1::PairNcclResponse& response) {
  NcclPairAnswer answer;
  answer.num_ranks = response.num_ranks();
  answer.expert_rank = response.expert_rank();
  answer.generation = response.generation();
  answer.idle_timeout = absl::Seconds(response.idle_timeout_seconds());
  return answer;
}

absl::StatusOr<NcclPairAnswer> PairOverGrpc(const NcclPairSpec& spec, absl::Time deadline) {
  auto channel = CreateInternalChannel(spec.expert_address);
  auto stub = v1::NcclPairing::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  v1::PairNcclResponse response;
  grpc::Status status = stub->Pair(&context, ToProto(spec), &response);
  if (!status.ok()) {
    absl::Status s = FromGrpcStatus(status);
    return absl::Status(s.code(), absl::StrCat(spec.expert_address, ": Pair: ", s.message()));
  }
  return FromProto(response);
}

}  // namespace dmoe::transport
