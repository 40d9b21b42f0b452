// The pod side of membership: registers an attention or expert pod with the scheduler, keeps
// its lease with heartbeats, re-registers after a lapse (or a scheduler restart), and reports
// placement changes. Used by dmoe-attention and dmoe-expert.
#ifndef DMOE_CLUSTER_MEMBERSHIP_AGENT_H_
#define DMOE_CLUSTER_MEMBERSHIP_AGENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "proto/dmoe/v1/cluster.grpc.pb.h"
#include "cluster/placement.h"

namespace dmoe::cluster {

struct MembershipAgentOptions {
  std::string scheduler_address;
  dmoe::v1::RegisterRequest registration;  // role, address, range, fingerprint
  // Called on the agent's thread with every new placement version (attention pods).
  std::function<void(const Placement&)> on_placement = nullptr;
  // Expert pods: cumulative expert compute seconds, sent with every heartbeat (autoscaling).
  std::function<double()> busy_seconds = nullptr;
  // Sent with every heartbeat when set (expert balancing, docs/expert-balancing.md): the
  // placement version the pod routes by or whose experts it loaded, and (attention pods) the
  // tokens routed per (MoE layer, expert) since the previous call.
  std::function<uint64_t()> applied_version = nullptr;
  std::function<std::vector<int64_t>()> expert_tokens = nullptr;
};

// Thread-safe. Starts its thread on construction; Stop() (or the destructor) ends it.
class MembershipAgent {
 public:
  explicit MembershipAgent(MembershipAgentOptions options);
  ~MembershipAgent();
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  bool registered() const { return member_id_ != 0; }

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  MembershipAgentOptions options_;
  std::unique_ptr<dmoe::v1::Cluster::Stub> stub_;
  std::atomic<uint64_t> member_id_{0};
  uint64_t placement_version_ = 0;  // the agent's thread only
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dmoe::cluster

#endif  // DMOE_CLUSTER_MEMBERSHIP_AGENT_H_
