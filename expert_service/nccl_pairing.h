// The expert side of `--expert-transport nccl` (issue 16): NcclPairing.Pair
// (proto/dmoe/v1/nccl_pairing.proto). An attention replica asks this pod to serve it over a
// two-rank NCCL communicator; the pod checks the request, fetches the pair's communicator id
// from the scheduler itself (Cluster.GetCommunicator, so both ranks join the id the scheduler
// made, never one a peer sent), checks the generation and starts the serve loop for that peer.
//
// NcclPairingHost is the core (no gRPC); NcclPairingService the gRPC adapter, which runs the
// blocking steps (the scheduler round trip, the serve-loop start) on its own thread, never in a
// reaction (STYLE.md §7).
#ifndef DMOE_EXPERT_SERVICE_NCCL_PAIRING_H_
#define DMOE_EXPERT_SERVICE_NCCL_PAIRING_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/communicator_id.h"
#include "proto/dmoe/v1/nccl_pairing.grpc.pb.h"
#include "transport/nccl_peering.h"

namespace dmoe::expert {

struct NcclPairingHostOptions {
  // --expert-transport of this pod: kGrpc refuses every pairing (FAILED_PRECONDITION).
  transport::ExpertTransportKind transport = transport::ExpertTransportKind::kGrpc;
  int64_t hidden_size = 0;  // the model's H; a pairing with another H is INVALID_ARGUMENT
  int max_peers = 64;       // attention replicas served over NCCL at once
  // A serve loop aborts its communicator after this long without a round (heartbeats
  // included); at least 3 of the peer's heartbeat periods.
  absl::Duration idle_timeout = absl::Seconds(10);
};

struct NcclPairingHostDeps {
  // Cluster.GetCommunicator at this pod's scheduler (failed_generation 0).
  std::function<absl::StatusOr<CommunicatorId>(const std::string& group,
                                                        absl::Time deadline)>
      fetch_id;
  // Starts joining the communicator as rank 1 and, once joined, the serve loop for the peer
  // on the device thread; returns once the join has started (the peer joins concurrently).
  // Null: this pod cannot serve NCCL peers (FAILED_PRECONDITION; the peer stays on gRPC).
  std::function<absl::Status(const transport::NcclPairSpec& spec,
                             const CommunicatorId& id, absl::Duration idle_timeout)>
      start_serve;
};

// Thread-safe.
class NcclPairingHost {
 public:
  NcclPairingHost(const NcclPairingHostOptions& options, NcclPairingHostDeps deps)
      : options_(options), deps_(std::move(deps)) {}

  // Errors as documented on NcclPairing.Pair. A second pairing of the same attention replica
  // replaces the first (its old serve loop ends on its own when the old communicator aborts).
  absl::StatusOr<transport::NcclPairAnswer> Pair(const transport::NcclPairSpec& spec,
                                                 absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

  // Attention replicas paired so far (by address) and the generation each joined.
  std::map<std::string, uint64_t> peers() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const NcclPairingHostOptions options_;
  const NcclPairingHostDeps deps_;
  absl::Mutex mu_;
  std::map<std::string, uint64_t> peers_ ABSL_GUARDED_BY(mu_);
};

// gRPC adapter. Thread-safe; owns one thread for the blocking steps of Pair.
class NcclPairingService final : public v1::NcclPairing::CallbackService {
 public:
  explicit NcclPairingService(NcclPairingHost& host);  // `host` must outlive the service
  ~NcclPairingService() override;  // answers queued calls UNAVAILABLE, joins the thread

  grpc::ServerUnaryReactor* Pair(grpc::CallbackServerContext* context,
                                 const v1::PairNcclRequest* request,
                                 v1::PairNcclResponse* response) override;

 private:
  struct Call {
    grpc::ServerUnaryReactor* reactor;
    transport::NcclPairSpec spec;
    absl::Time deadline;
    v1::PairNcclResponse* response;
  };
  void Loop();

  NcclPairingHost& host_;
  absl::Mutex mu_;
  std::deque<Call> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dmoe::expert

#endif  // DMOE_EXPERT_SERVICE_NCCL_PAIRING_H_
