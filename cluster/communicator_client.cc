#include "cluster/communicator_client.h"

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "common/internal_credentials.h"
#include "proto/dmoe/v1/cluster.grpc.pb.h"

namespace dmoe::cluster {

absl::StatusOr<CommunicatorId> FetchCommunicatorId(const std::string& scheduler_address,
                                                   const std::string& group,
                                                   uint64_t failed_generation,
                                                   absl::Time deadline) {
  auto stub = dmoe::v1::Cluster::NewStub(
      CreateInternalChannel(scheduler_address));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  dmoe::v1::GetCommunicatorRequest request;
  request.set_group(group);
  request.set_failed_generation(failed_generation);
  dmoe::v1::GetCommunicatorResponse response;
  const grpc::Status status = stub->GetCommunicator(&context, request, &response);
  if (!status.ok()) {
    const absl::Status s = FromGrpcStatus(status);
    return absl::Status(s.code(), absl::StrCat("GetCommunicator('", group, "') from scheduler ",
                                                scheduler_address, ": ", s.message()));
  }
  return CommunicatorId{.unique_id = response.unique_id(), .generation = response.generation()};
}

}  // namespace dmoe::cluster
