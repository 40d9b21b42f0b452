#include "transport/nccl_peering.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "metrics/catalog.h"

namespace dmoe::transport {

absl::StatusOr<ExpertTransportKind> ParseExpertTransportKind(std::string_view text) {
  if (text == "grpc") return ExpertTransportKind::kGrpc;
  if (text == "nccl") return ExpertTransportKind::kNccl;
  return absl::InvalidArgumentError(
      absl::StrCat("--expert-transport: expected grpc or nccl, got '", std::string(text), "'"));
}

std::string_view ExpertTransportKindName(ExpertTransportKind kind) {
  return kind == ExpertTransportKind::kNccl ? "nccl" : "grpc";
}

absl::Status CheckExpertTransportFlags(ExpertTransportKind kind, std::string_view device,
                                       bool has_scheduler) {
  if (kind != ExpertTransportKind::kNccl) return absl::OkStatus();
  if (device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--expert-transport nccl needs --device cuda (NCCL moves GPU buffers), got --device ",
        std::string(device)));
  }
  if (!has_scheduler) {
    return absl::InvalidArgumentError(
        "--expert-transport nccl needs --scheduler (it hands out the communicator ids)");
  }
  return absl::OkStatus();
}

std::string NcclPairGroup(std::string_view attention_address, std::string_view expert_address) {
  return absl::StrCat("nccl:", std::string(attention_address), "+", std::string(expert_address));
}

absl::Status NcclPeeringOptions::Validate() const {
  if (attention_address.empty()) return absl::InvalidArgumentError("attention_address is empty");
  if (hidden_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size must be >= 1, got ", hidden_size));
  }
  if (max_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_rows must be >= 1, got ", max_rows));
  }
  if (heartbeat <= absl::ZeroDuration() || step_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat and step_timeout must be positive");
  }
  if (min_backoff <= absl::ZeroDuration() || max_backoff < min_backoff) {
    return absl::InvalidArgumentError("backoff: need 0 < min_backoff <= max_backoff");
  }
  if (poll_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("poll_interval must be >= 0");
  }
  return absl::OkStatus();
}

// Bounded label sets: transport {grpc, nccl}; reason {refused, pairing_failed, link_failed,
// heartbeat_failed}.
struct NcclPeering::Metrics {
  explicit Metrics(const metrics::ProcessMetrics& m) {
    if (!m.registry) return;
    auto& peers =
        metrics::GaugeFamily(*m.registry, "dmoe_expert_transport_peers", m.model_version);
    grpc_peers = &peers.Add({{"transport", "grpc"}});
    nccl_peers = &peers.Add({{"transport", "nccl"}});
    fallbacks = &metrics::CounterFamily(*m.registry, "dmoe_expert_transport_fallbacks_total",
                                        m.model_version);
  }
  void LinkUp() {
    if (!grpc_peers) return;
    grpc_peers->Decrement();
    nccl_peers->Increment();
  }
  void LinkDown(const char* reason) {
    if (!grpc_peers) return;
    nccl_peers->Decrement();
    grpc_peers->Increment();
    Fallback(reason);
  }
  void Fallback(const char* reason) {
    if (fallbacks) fallbacks->Add({{"reason", reason}}).Increment();
  }
  prometheus::Gauge* grpc_peers = nullptr;
  prometheus::Gauge* nccl_peers = nullptr;
  prometheus::Family<prometheus::Counter>* fallbacks = nullptr;
};

// One expert pod. Thread-safe.
class NcclPeering::Peer {
 public:
  Peer(ExpertTransportSharedPtr grpc_transport, std::shared_ptr<Metrics> metrics,
       absl::Duration min_backoff)
      : grpc(std::move(grpc_transport)), metrics_(std::move(metrics)), min_backoff_(min_backoff) {}

  const std::string& address() const { return grpc->address(); }

  std::shared_ptr<NcclLink> link() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    return link_;
  }

  // Drops `failed` if it is still the current link: the peer is on gRPC from now on, and the
  // next pairing reports this generation as failed so the scheduler hands out a fresh id.
  void Drop(const std::shared_ptr<NcclLink>& failed, const absl::Status& why, const char* reason)
      ABSL_LOCKS_EXCLUDED(mu) {
    std::shared_ptr<NcclLink> dropped;  // destroyed outside the lock (it aborts a communicator)
    uint64_t dropped_generation = 0;
    {
      absl::MutexLock lock(&mu);
      if (link_ != failed || link_ == nullptr) return;  // already dropped by another call
      dropped = std::move(link_);
      link_.reset();
      failed_generation = generation;
      dropped_generation = generation;
      next_attempt = absl::Now() + min_backoff_;
      backoff = min_backoff_;
      ++fallbacks;
      last_error = std::string(why.message());
    }
    metrics_->LinkDown(reason);
    DMOE_LOG(WARNING) << "expert " << address() << ": NCCL link (generation " << dropped_generation
                      << ") failed, falling back to gRPC until it is rebuilt: " << why;
  }

  void Install(NcclLinkPtr link, uint64_t link_generation) ABSL_LOCKS_EXCLUDED(mu) {
    {
      absl::MutexLock lock(&mu);
      link_ = std::move(link);
      generation = link_generation;
      failed_generation = 0;
      backoff = absl::ZeroDuration();
      last_use = absl::Now();
      ++pairings;
      last_error.clear();
    }
    metrics_->LinkUp();
    DMOE_LOG(INFO) << "expert " << address() << ": NCCL link up (generation " << link_generation
                   << "); its rows go over NCCL";
  }

  const ExpertTransportSharedPtr grpc;
  absl::Mutex mu;
  uint64_t generation ABSL_GUARDED_BY(mu) = 0;
  uint64_t failed_generation ABSL_GUARDED_BY(mu) = 0;
  absl::Time next_attempt ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  absl::Duration backoff ABSL_GUARDED_BY(mu) = absl::ZeroDuration();
  absl::Time last_use ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  int64_t pairings ABSL_GUARDED_BY(mu) = 0;
  int64_t fallbacks ABSL_GUARDED_BY(mu) = 0;
  int64_t nccl_calls ABSL_GUARDED_BY(mu) = 0;
  int64_t grpc_calls ABSL_GUARDED_BY(mu) = 0;
  std::string last_error ABSL_GUARDED_BY(mu);

 private:
  std::shared_ptr<NcclLink> link_ ABSL_GUARDED_BY(mu);
  const std::shared_ptr<Metrics> metrics_;
  const absl::Duration min_backoff_;
};

namespace {

// The transport ClusterExperts hands to the sharded executor for one expert pod.
class PeerTransport final : public ExpertTransport {
 public:
  explicit PeerTransport(std::shared_ptr<NcclPeering::Peer> peer) : peer_(std::move(peer)) {}

  const std::string& address() const override { return peer_->address(); }

  absl::Status RunExperts(const ExpertRows& rows, absl::Time deadline, float* out) override {
    if (std::shared_ptr<NcclLink> link = peer_->link()) {
      absl::Status s = link->RunExperts(rows, deadline, out);
      if (s.ok() || s.code() == absl::StatusCode::kInvalidArgument) {
        // A malformed call would fail the same way over gRPC: it is the caller's error.
        absl::MutexLock lock(&peer_->mu);
        ++peer_->nccl_calls;
        peer_->last_use = absl::Now();
        return s;
      }
      peer_->Drop(link, s, "link_failed");
    }
    {
      absl::MutexLock lock(&peer_->mu);
      ++peer_->grpc_calls;
    }
    return peer_->grpc->RunExperts(rows, deadline, out);
  }

  absl::StatusOr<ShardInfo> GetShardInfo(absl::Time deadline) override {
    return peer_->grpc->GetShardInfo(deadline);
  }

 private:
  std::shared_ptr<NcclPeering::Peer> peer_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<NcclPeering>> NcclPeering::Create(const NcclPeeringOptions& options,
                                                                 NcclPeeringDeps deps) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (!deps.fetch_id || !deps.pair) {
    return absl::InvalidArgumentError("NcclPeeringDeps: fetch_id and pair are required");
  }
  auto peering = std::unique_ptr<NcclPeering>(new NcclPeering(options, std::move(deps)));
  if (options.poll_interval > absl::ZeroDuration()) {
    peering->thread_ = std::thread([p = peering.get()] { p->Loop(); });
  }
  return peering;
}

NcclPeering::NcclPeering(const NcclPeeringOptions& options, NcclPeeringDeps deps)
    : options_(options),
      deps_(std::move(deps)),
      metrics_(std::make_shared<Metrics>(options.metrics)) {}

NcclPeering::~NcclPeering() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

ExpertTransportSharedPtr NcclPeering::Wrap(ExpertTransportSharedPtr grpc) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Peer>& peer = peers_[grpc->address()];
  if (!peer) {
    // Peers and their metrics are shared with the transports, which may outlive this object.
    peer = std::make_shared<Peer>(std::move(grpc), metrics_, options_.min_backoff);
    if (metrics_->grpc_peers) metrics_->grpc_peers->Increment();
  }
  return std::make_shared<PeerTransport>(peer);
}

void NcclPeering::Loop() {
  while (true) {
    PollOnce();
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.poll_interval)) return;
  }
}

void NcclPeering::PollOnce() {
  std::vector<std::shared_ptr<Peer>> peers;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [address, peer] : peers_) peers.push_back(peer);
  }
  for (const std::shared_ptr<Peer>& peer : peers) {
    const absl::Time now = absl::Now();
    std::shared_ptr<NcclLink> link;
    bool attempt = false, heartbeat = false;
    {
      absl::MutexLock lock(&peer->mu);
      attempt = now >= peer->next_attempt;
      heartbeat = now - peer->last_use >= options_.heartbeat;
    }
    link = peer->link();
    if (link == nullptr) {
      if (attempt) TryPair(*peer);
      continue;
    }
    if (!heartbeat) continue;
    absl::Status s = link->Heartbeat(now + options_.step_timeout);
    if (s.ok()) {
      absl::MutexLock lock(&peer->mu);
      peer->last_use = absl::Now();
    } else {
      peer->Drop(link, s, "heartbeat_failed");
    }
  }
}

void NcclPeering::TryPair(Peer& peer) {
  const absl::Time deadline = absl::Now() + options_.step_timeout;
  NcclPairSpec spec;
  spec.group = NcclPairGroup(options_.attention_address, peer.address());
  spec.attention_address = options_.attention_address;
  spec.expert_address = peer.address();
  spec.hidden_size = options_.hidden_size;
  spec.max_rows = options_.max_rows;
  spec.heartbeat = options_.heartbeat;
  uint64_t failed_generation = 0;
  {
    absl::MutexLock lock(&peer.mu);
    failed_generation = peer.failed_generation;
  }
  // Stays on gRPC; the next attempt after a doubling backoff (a refusal: the longest).
  auto fail = [&](const absl::Status& why, const char* reason, bool refused) {
    bool changed = false;
    {
      absl::MutexLock lock(&peer.mu);
      peer.backoff = refused ? options_.max_backoff
                             : std::clamp(peer.backoff * 2, options_.min_backoff,
                                          options_.max_backoff);
      peer.next_attempt = absl::Now() + peer.backoff;
      ++peer.fallbacks;
      changed = peer.last_error != why.message();
      peer.last_error = std::string(why.message());
    }
    metrics_->Fallback(reason);
    if (changed) {  // one warning per peer and reason, not one per retry
      DMOE_LOG(WARNING) << "expert " << peer.address()
                        << ": --expert-transport nccl: staying on gRPC for this pod: " << why;
    }
  };
  if (!deps_.connect) {
    fail(absl::FailedPreconditionError(
             "this attention replica cannot open NCCL links (it needs --device cuda in a build "
             "with NCCL)"),
         "refused", true);
    return;
  }
  absl::StatusOr<ShardInfo> shard = peer.grpc->GetShardInfo(deadline);
  if (!shard.ok()) return fail(shard.status(), "pairing_failed", false);
  absl::StatusOr<CommunicatorId> id = deps_.fetch_id(spec.group, failed_generation, deadline);
  if (!id.ok()) return fail(id.status(), "pairing_failed", false);
  spec.generation = id->generation;
  absl::StatusOr<NcclPairAnswer> answer = deps_.pair(spec, deadline);
  if (!answer.ok()) {
    const bool refused = answer.status().code() == absl::StatusCode::kFailedPrecondition;
    return fail(answer.status(), refused ? "refused" : "pairing_failed", refused);
  }
  if (answer->generation != id->generation || answer->num_ranks != 2 ||
      answer->expert_rank != 1) {
    return fail(absl::InternalError(absl::StrCat(
                    "Pair answered generation ", answer->generation, ", ranks ",
                    answer->num_ranks, ", expert rank ", answer->expert_rank, "; expected ",
                    id->generation, ", 2, 1")),
                "pairing_failed", false);
  }
  absl::StatusOr<NcclLinkPtr> link = deps_.connect(spec, *id, *answer, *shard);
  if (!link.ok()) {
    {
      // That id is spent: the expert may have joined and aborted. Ask for a fresh one.
      absl::MutexLock lock(&peer.mu);
      peer.failed_generation = id->generation;
    }
    return fail(link.status(), "pairing_failed", false);
  }
  peer.Install(*std::move(link), id->generation);
}

std::vector<NcclPeering::PeerStatus> NcclPeering::Peers() {
  std::vector<std::shared_ptr<Peer>> peers;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [address, peer] : peers_) peers.push_back(peer);
  }
  std::vector<PeerStatus> out;
  for (const std::shared_ptr<Peer>& peer : peers) {
    const bool on_nccl = peer->link() != nullptr;
    absl::MutexLock lock(&peer->mu);
    PeerStatus s;
    s.address = peer->address();
    s.on_nccl = on_nccl;
    s.generation = peer->generation;
    s.pairings = peer->pairings;
    s.fallbacks = peer->fallbacks;
    s.nccl_calls = peer->nccl_calls;
    s.grpc_calls = peer->grpc_calls;
    s.last_error = peer->last_error;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace dmoe::transport
