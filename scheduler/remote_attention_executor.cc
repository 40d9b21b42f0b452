#include "scheduler/remote_attention_executor.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/internal_credentials.h"
#include "common/logging.h"
#include "grpcpp/grpcpp.h"

namespace dmoe::scheduler {
namespace {

void ToProto(const SequenceStep& s, dmoe::v1::SegmentPlan* p) {
  p->set_sequence_id(s.sequence_id);
  p->set_start(s.plan.start);
  p->mutable_tokens()->Add(s.plan.tokens.begin(), s.plan.tokens.end());
  p->set_persist(s.plan.persist);
  p->set_attention_block(s.plan.attention_block);
  p->set_logits_from(s.plan.logits_from);
  p->set_stream(s.plan.stream);
  p->set_reset_cache(s.reset_cache);
  p->mutable_sampling()->set_temperature(s.plan.sampling.temperature);
  p->mutable_sampling()->set_top_k(s.plan.sampling.top_k);
  p->mutable_sampling()->set_top_p(s.plan.sampling.top_p);
  p->mutable_sampling()->set_seed(s.plan.sampling.seed);
}

bool ReplicaFault(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded ||
         code == absl::StatusCode::kCancelled || code == absl::StatusCode::kUnknown ||
         code == absl::StatusCode::kInternal;
}

}  // namespace

RemoteAttentionExecutor::RemoteAttentionExecutor(const RemoteAttentionExecutorOptions& options,
                                                 Membership& membership)
    : options_(options), membership_(membership) {}

dmoe::v1::AttentionService::Stub* RemoteAttentionExecutor::StubFor(const std::string& address) {
  auto& stub = stubs_[address];
  if (!stub) {
    stub = dmoe::v1::AttentionService::NewStub(
        CreateInternalChannel(address));
  }
  return stub.get();
}

absl::StatusOr<std::string> RemoteAttentionExecutor::PlaceNew(const std::vector<std::string>& live) {
  if (live.empty()) return absl::UnavailableError("no attention replica is registered");
  std::map<std::string, int64_t> load;
  for (const std::string& a : live) load[a] = 0;
  for (const auto& [seq, address] : placement_)
    if (load.count(address)) ++load[address];
  return std::min_element(load.begin(), load.end(),
                          [](const auto& a, const auto& b) { return a.second < b.second; })
      ->first;
}

absl::StatusOr<std::vector<engine::Proposal>> RemoteAttentionExecutor::Execute(
    const std::vector<SequenceStep>& steps) {
  std::vector<std::string> live = membership_.AttentionAddresses();
  std::map<std::string, std::vector<size_t>> by_replica;
  {
    absl::MutexLock lock(&mu_);
    partial_.reset();
    std::vector<size_t> moved;  // sequences whose KV is on a replica that is gone
    for (size_t i = 0; i < steps.size(); ++i) {
      auto it = placement_.find(steps[i].sequence_id);
      const bool alive = it != placement_.end() &&
                         std::find(live.begin(), live.end(), it->second) != live.end();
      if (!alive) {
        auto address = PlaceNew(live);
        if (!address.ok()) return address.status();
        // A sequence that already has KV elsewhere (plan.start > 0) must re-prefill here.
        if (steps[i].plan.start > 0 && !steps[i].reset_cache) moved.push_back(i);
        placement_[steps[i].sequence_id] = *address;
      }
      by_replica[placement_[steps[i].sequence_id]].push_back(i);
    }
    if (!moved.empty()) {  // nothing ran: the moved re-prefill, the rest run as planned
      PartialStep partial;
      partial.fate.assign(steps.size(), StepFate::kNotRun);
      partial.proposals.resize(steps.size());
      for (size_t i : moved) partial.fate[i] = StepFate::kCacheLost;
      partial_ = std::move(partial);
      return absl::AbortedError("sequences moved to another attention replica");
    }
  }

  struct Call {
    std::string address;
    dmoe::v1::StepResponse response;
    grpc::Status status;
    bool expert_fault = false;  // the replica is fine; an expert shard failed
  };
  std::vector<Call> calls;
  for (const auto& [address, indices] : by_replica) calls.push_back({address, {}, {}});
  std::vector<std::thread> threads;
  size_t c = 0;
  for (const auto& [address, indices] : by_replica) {
    dmoe::v1::AttentionService::Stub* stub;
    {
      absl::MutexLock lock(&mu_);
      stub = StubFor(address);
    }
    threads.emplace_back([&, stub, c, indices = indices] {
      dmoe::v1::StepRequest request;
      for (size_t i : indices) ToProto(steps[i], request.add_segments());
      grpc::ClientContext context;
      // The batch's earliest request deadline, capped by the step timeout.
      absl::Time deadline = absl::Now() + options_.step_timeout;
      for (size_t i : indices) deadline = std::min(deadline, steps[i].deadline);
      context.set_deadline(absl::ToChronoTime(deadline));
      calls[c].status = stub->Step(&context, request, &calls[c].response);
      const auto& trailers = context.GetServerTrailingMetadata();
      auto fault = trailers.find("dmoe-fault");
      calls[c].expert_fault = fault != trailers.end() && fault->second == "experts";
    });
    ++c;
  }
  for (auto& t : threads) t.join();

  std::vector<engine::Proposal> proposals(steps.size());
  std::vector<StepFate> fate(steps.size(), StepFate::kDone);
  absl::Status first_error;
  bool aborted = false;
  c = 0;
  for (const auto& [address, indices] : by_replica) {
    const Call& call = calls[c++];
    absl::Status status = FromGrpcStatus(call.status);
    if (!status.ok()) {
      if (call.expert_fault) {
        if (first_error.ok()) {
          first_error = absl::Status(status.code(), absl::StrCat(address, ": ", status.message()));
        }
      } else if (ReplicaFault(status.code())) {
        DMOE_LOG(WARNING) << "attention replica " << address << " failed a step: " << status
                          << "; re-placing its sequences";
        membership_.ReportFailure(address);
        absl::MutexLock lock(&mu_);
        for (auto it = placement_.begin(); it != placement_.end();)
          it = it->second == address ? placement_.erase(it) : std::next(it);
        for (size_t i : indices) fate[i] = StepFate::kCacheLost;
        aborted = true;
      } else if (status.code() == absl::StatusCode::kFailedPrecondition) {
        for (size_t i : indices) fate[i] = StepFate::kCacheLost;
        aborted = true;  // the replica lost those sequences (e.g. restarted)
      } else if (first_error.ok()) {
        first_error = absl::Status(status.code(), absl::StrCat(address, ": ", status.message()));
      }
      continue;
    }
    if (call.response.proposals_size() != static_cast<int>(indices.size())) {
      first_error = absl::InternalError(absl::StrCat(address, " returned ",
                                                     call.response.proposals_size(),
                                                     " proposals for ", indices.size(), " segments"));
      continue;
    }
    for (size_t j = 0; j < indices.size(); ++j) {
      const auto& p = call.response.proposals(static_cast<int>(j));
      proposals[indices[j]].tokens.assign(p.tokens().begin(), p.tokens().end());
      proposals[indices[j]].confidence.assign(p.confidence().begin(), p.confidence().end());
    }
  }
  if (!first_error.ok()) return first_error;
  if (aborted) {
    absl::MutexLock lock(&mu_);
    partial_ = PartialStep{std::move(fate), std::move(proposals)};
    return absl::AbortedError("an attention replica lost sequences; re-prefill");
  }
  return proposals;
}

std::optional<PartialStep> RemoteAttentionExecutor::TakePartialStep() {
  absl::MutexLock lock(&mu_);
  return std::exchange(partial_, std::nullopt);
}

void RemoteAttentionExecutor::Release(const std::vector<std::string>& sequence_ids) {
  std::map<std::string, dmoe::v1::ReleaseRequest> by_replica;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : sequence_ids) {
      auto it = placement_.find(id);
      if (it == placement_.end()) continue;
      by_replica[it->second].add_sequence_ids(id);
      placement_.erase(it);
    }
  }
  for (auto& [address, request] : by_replica) {
    dmoe::v1::AttentionService::Stub* stub;
    {
      absl::MutexLock lock(&mu_);
      stub = StubFor(address);
    }
    // Fire and forget: a lost Release only delays freeing KV on a replica that is dying anyway.
    auto context = std::make_shared<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    auto response = std::make_shared<dmoe::v1::ReleaseResponse>();
    auto req = std::make_shared<dmoe::v1::ReleaseRequest>(std::move(request));
    stub->async()->Release(context.get(), req.get(), response.get(),
                           [context, response, req](grpc::Status) {});
  }
}

int64_t RemoteAttentionExecutor::KvPagesCapacity() {
  std::vector<std::string> live = membership_.AttentionAddresses();
  int64_t total = 0;
  for (const std::string& address : live) {
    int64_t pages;
    {
      absl::MutexLock lock(&mu_);
      auto it = replica_kv_pages_.find(address);
      if (it != replica_kv_pages_.end()) {
        total += it->second;
        continue;
      }
      pages = options_.default_kv_pages;
    }
    dmoe::v1::GetAttentionInfoResponse info;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    dmoe::v1::AttentionService::Stub* stub;
    {
      absl::MutexLock lock(&mu_);
      stub = StubFor(address);
    }
    if (stub->GetInfo(&context, {}, &info).ok()) {
      pages = info.kv_pages_total();
      absl::MutexLock lock(&mu_);
      replica_kv_pages_[address] = pages;
    }
    total += pages;
  }
  return total;
}

}  // namespace dmoe::scheduler
