// gRPC adapter of Membership: the Cluster service pods register and heartbeat with.
#ifndef DMOE_SCHEDULER_CLUSTER_SERVER_H_
#define DMOE_SCHEDULER_CLUSTER_SERVER_H_

#include <string>

#include "proto/dmoe/v1/cluster.grpc.pb.h"
#include "scheduler/communicator_ids.h"
#include "scheduler/membership.h"

namespace dmoe::scheduler {

// Thread-safe (Membership is; every handler finishes inline without blocking).
class ClusterServer final : public dmoe::v1::Cluster::CallbackService {
 public:
  // Pods must present this config fingerprint (empty: accept any). NCCL communicator ids come
  // from `unique_ids` (DefaultUniqueIdFactory: NCCL when built with it).
  ClusterServer(Membership& membership, std::string config_fingerprint,
                UniqueIdFactory unique_ids = DefaultUniqueIdFactory())
      : membership_(membership),
        fingerprint_(std::move(config_fingerprint)),
        communicators_(std::move(unique_ids)) {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const dmoe::v1::RegisterRequest* request,
                                     dmoe::v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const dmoe::v1::HeartbeatRequest* request,
                                      dmoe::v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* GetPlacement(grpc::CallbackServerContext* context,
                                         const dmoe::v1::GetPlacementRequest* request,
                                         dmoe::v1::Placement* response) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const dmoe::v1::LeaveRequest* request,
                                  dmoe::v1::LeaveResponse* response) override;
  grpc::ServerUnaryReactor* ListMembers(grpc::CallbackServerContext* context,
                                        const dmoe::v1::ListMembersRequest* request,
                                        dmoe::v1::ListMembersResponse* response) override;
  grpc::ServerUnaryReactor* GetCommunicator(grpc::CallbackServerContext* context,
                                            const dmoe::v1::GetCommunicatorRequest* request,
                                            dmoe::v1::GetCommunicatorResponse* response) override;

 private:
  Membership& membership_;
  std::string fingerprint_;
  CommunicatorIds communicators_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_CLUSTER_SERVER_H_
