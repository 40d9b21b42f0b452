// The attention side of `--expert-transport nccl` (issue 16): for every expert pod of the
// placement, a per-peer state machine that pairs with the pod over gRPC and then sends that
// pod's rows over an NCCL link, falling back to gRPC whenever there is no working link.
//
//   gRPC ──pair ok──▶ NCCL ──link error / missed heartbeat──▶ gRPC (backoff) ──re-pair──▶ NCCL
//     └──pair refused / failed──▶ gRPC (backoff, retried) ...
//
// Pairing, done by one background thread, never on the request path:
//   1. Cluster.GetCommunicator(group = NcclPairGroup(own address, expert address),
//      failed_generation = the generation that last failed, or 0);
//   2. NcclPairing.Pair on the expert pod (proto/dmoe/v1/nccl_pairing.proto): it fetches the
//      same id, checks the generation and starts joining as rank 1;
//   3. `connect` joins as rank 0 and returns the link (the GPU part: a two-rank communicator,
//      an NcclExpertExchange and an NcclExpertTransport on a DeviceWorker).
// While a link is up, the thread sends it a heartbeat (a zero-row round) whenever no call went
// over it for `heartbeat`, so the expert's serve loop can tell an idle peer from a dead one.
//
// The request path (PeerTransport::RunExperts) sends over the link when there is one; if the
// link fails with anything but INVALID_ARGUMENT, the link is dropped (marked broken, the
// generation remembered for re-pairing), a warning is logged and counted, and the same rows go
// over gRPC in the same call. So NCCL failures cost latency, never a request.
//
// No CUDA, NCCL or gRPC here: the three steps are injected (NcclPeeringDeps), so every state
// transition is tested without a GPU (tests/transport/nccl_peering_test.cc).
#ifndef DMOE_TRANSPORT_NCCL_PEERING_H_
#define DMOE_TRANSPORT_NCCL_PEERING_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/communicator_id.h"
#include "metrics/endpoint.h"
#include "transport/expert_transport.h"
#include "transport/shard_info.h"

namespace dmoe::transport {

// `--expert-transport`: how an attention replica and the expert pods move a layer's rows.
enum class ExpertTransportKind {
  kGrpc,  // ExpertService.RunExperts (default; CPU and GPU pods)
  kNccl,  // an NCCL link per (attention replica, expert pod), gRPC until it is up
};
// "grpc" | "nccl"; INVALID_ARGUMENT naming --expert-transport otherwise.
absl::StatusOr<ExpertTransportKind> ParseExpertTransportKind(std::string_view text);
std::string_view ExpertTransportKindName(ExpertTransportKind kind);

// The startup checks of `--expert-transport` on a pod (dmoe-attention, dmoe-expert):
// INVALID_ARGUMENT naming the flags when nccl is combined with --device cpu (NCCL moves device
// buffers) or without --scheduler (the communicator ids come from it).
absl::Status CheckExpertTransportFlags(ExpertTransportKind kind, std::string_view device,
                                       bool has_scheduler);

// The communicator group of one (attention replica, expert pod) pair: "nccl:<a>+<e>".
std::string NcclPairGroup(std::string_view attention_address, std::string_view expert_address);

// One pairing as both sides see it.
struct NcclPairSpec {
  std::string group;
  uint64_t generation = 0;        // of the communicator id fetched for this attempt
  std::string attention_address;  // rank 0
  std::string expert_address;     // rank 1
  int64_t hidden_size = 0;        // H; F32 rows of H floats
  int64_t max_rows = 0;           // rows per round at most
  absl::Duration heartbeat = absl::Seconds(2);
};

// What the expert pod answered (PairNcclResponse).
struct NcclPairAnswer {
  int num_ranks = 2;
  int expert_rank = 1;
  uint64_t generation = 0;
  absl::Duration idle_timeout = absl::Seconds(10);
};

// An established NCCL link to one expert pod. Thread-safe (calls are serialised on the link's
// device thread, in call order).
class NcclLink {
 public:
  virtual ~NcclLink() = default;
  // As ExpertTransport::RunExperts. A non-OK status other than INVALID_ARGUMENT means the
  // link is unusable (its communicator was aborted).
  virtual absl::Status RunExperts(const ExpertRows& rows, absl::Time deadline, float* out) = 0;
  // A zero-row round. Non-OK: the link is unusable.
  virtual absl::Status Heartbeat(absl::Time deadline) = 0;
};
using NcclLinkPtr = std::unique_ptr<NcclLink>;

// The three outside steps of a pairing (see the file comment). Tests pass fakes.
struct NcclPeeringDeps {
  // Cluster.GetCommunicator at the scheduler.
  std::function<absl::StatusOr<CommunicatorId>(
      const std::string& group, uint64_t failed_generation, absl::Time deadline)>
      fetch_id;
  // NcclPairing.Pair on spec.expert_address.
  std::function<absl::StatusOr<NcclPairAnswer>(const NcclPairSpec& spec, absl::Time deadline)>
      pair;
  // Joins the communicator as rank 0 and returns the link. Null when this process cannot run
  // NCCL links: every peer then stays on gRPC (FAILED_PRECONDITION, logged once per peer).
  std::function<absl::StatusOr<NcclLinkPtr>(const NcclPairSpec& spec,
                                            const CommunicatorId& id,
                                            const NcclPairAnswer& answer, const ShardInfo& shard)>
      connect;
};

struct NcclPeeringOptions {
  // This replica's own gRPC address (rank 0 of every group it names).
  std::string attention_address;
  int64_t hidden_size = 0;   // the model's H
  int64_t max_rows = 4096;   // rows per round (the link's staging capacity)
  // A link with no call for this long gets a heartbeat round.
  absl::Duration heartbeat = absl::Seconds(2);
  // Deadline of each pairing step (fetch, pair, connect) and of a heartbeat.
  absl::Duration step_timeout = absl::Seconds(30);
  // Retry delays after a failed or refused pairing: doubling from min to max. A refusal
  // (FAILED_PRECONDITION: the pod does not serve NCCL) waits max_backoff at once.
  absl::Duration min_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(60);
  // Period of the background thread (pairing attempts, heartbeats). Zero: no thread; tests
  // call PollOnce.
  absl::Duration poll_interval = absl::Milliseconds(200);
  // dmoe_expert_transport_peers{transport}, dmoe_expert_transport_fallbacks_total{reason};
  // null registry: none.
  metrics::ProcessMetrics metrics{};

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe. Owns the background thread (joined by the destructor) and the links.
class NcclPeering {
 public:
  // INVALID_ARGUMENT for bad options or missing fetch_id / pair.
  static absl::StatusOr<std::unique_ptr<NcclPeering>> Create(const NcclPeeringOptions& options,
                                                             NcclPeeringDeps deps);
  ~NcclPeering();
  NcclPeering(const NcclPeering&) = delete;
  NcclPeering& operator=(const NcclPeering&) = delete;

  // The transport to use for the expert pod `grpc` talks to (keyed by grpc->address()): over
  // NCCL while that peer's link is up, over `grpc` otherwise. Pairing with the pod starts in
  // the background. The same address again returns the same transport.
  ExpertTransportSharedPtr Wrap(ExpertTransportSharedPtr grpc) ABSL_LOCKS_EXCLUDED(mu_);

  // One pass of the background thread: a pairing attempt for every peer without a link whose
  // backoff has passed, a heartbeat for every idle link. Blocks for the steps' duration.
  void PollOnce() ABSL_LOCKS_EXCLUDED(mu_);

  struct PeerStatus {
    std::string address;
    bool on_nccl = false;
    uint64_t generation = 0;     // of the current link, or of the last one
    int64_t pairings = 0;        // links established
    int64_t fallbacks = 0;       // links lost, pairings refused or failed
    int64_t nccl_calls = 0;      // RunExperts calls that went over the link
    int64_t grpc_calls = 0;      // RunExperts calls that went over gRPC
    std::string last_error;      // why the peer is (or last was) on gRPC
  };
  std::vector<PeerStatus> Peers() ABSL_LOCKS_EXCLUDED(mu_);

  class Peer;  // per expert pod; defined in the .cc

 private:
  NcclPeering(const NcclPeeringOptions& options, NcclPeeringDeps deps);
  void Loop();
  void TryPair(Peer& peer);

  const NcclPeeringOptions options_;
  const NcclPeeringDeps deps_;
  struct Metrics;
  std::shared_ptr<Metrics> metrics_;  // shared with the peers, which may outlive this object
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Peer>> peers_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_NCCL_PEERING_H_
