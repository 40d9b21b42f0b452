#include "expert_service/nccl_pairing.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "transport/nccl_pairing_client.h"

namespace dmoe::expert {

absl::StatusOr<transport::NcclPairAnswer> NcclPairingHost::Pair(
    const transport::NcclPairSpec& spec, absl::Time deadline) {
  if (options_.transport != transport::ExpertTransportKind::kNccl) {
    return absl::FailedPreconditionError(
        "this expert pod serves gRPC only (--expert-transport grpc)");
  }
  if (spec.group.empty() || spec.group.size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("group: must be 1 to 256 characters, got ", spec.group.size()));
  }
  if (spec.generation == 0) return absl::InvalidArgumentError("generation: must be >= 1");
  if (spec.hidden_size != options_.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size: ", spec.hidden_size,
                                                   ", this pod's model has ",
                                                   options_.hidden_size));
  }
  if (spec.max_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_rows: must be >= 1, got ", spec.max_rows));
  }
  if (spec.heartbeat <= absl::ZeroDuration() || spec.heartbeat * 3 > options_.idle_timeout) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heartbeat_seconds: must be in (0, ", absl::ToDoubleSeconds(options_.idle_timeout) / 3,
        "] (a third of this pod's idle timeout), got ", absl::ToDoubleSeconds(spec.heartbeat)));
  }
  if (!deps_.start_serve) {
    return absl::FailedPreconditionError(
        "this expert pod cannot serve NCCL peers (it needs --device cuda in a build with NCCL "
        "and the NCCL serve loop; docs/expert-data-plane.md)");
  }
  {
    absl::MutexLock lock(&mu_);
    if (!peers_.contains(spec.attention_address) &&
        static_cast<int>(peers_.size()) >= options_.max_peers) {
      return absl::ResourceExhaustedError(
          absl::StrCat("this expert pod already serves ", options_.max_peers, " NCCL peers"));
    }
  }
  absl::StatusOr<CommunicatorId> id = deps_.fetch_id(spec.group, deadline);
  if (!id.ok()) {
    return absl::UnavailableError(
        absl::StrCat("communicator id of ", spec.group, ": ", id.status().ToString()));
  }
  if (id->generation != spec.generation) {
    return absl::AbortedError(absl::StrCat("generation: ", spec.generation, ", the scheduler's is ",
                                           id->generation, " (fetch the id again)"));
  }
  if (absl::Status s = deps_.start_serve(spec, *id, options_.idle_timeout); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    peers_[spec.attention_address] = id->generation;
  }
  DMOE_LOG(INFO) << "NCCL peer " << spec.attention_address << " paired (group " << spec.group
                 << ", generation " << id->generation << ")";
  transport::NcclPairAnswer answer;
  answer.generation = id->generation;
  answer.idle_timeout = options_.idle_timeout;
  return answer;
}

std::map<std::string, uint64_t> NcclPairingHost::peers() {
  absl::MutexLock lock(&mu_);
  return peers_;
}

NcclPairingService::NcclPairingService(NcclPairingHost& host) : host_(host) {
  thread_ = std::thread([this] { Loop(); });
}

NcclPairingService::~NcclPairingService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

grpc::ServerUnaryReactor* NcclPairingService::Pair(grpc::CallbackServerContext* context,
                                                   const v1::PairNcclRequest* request,
                                                   v1::PairNcclResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Call call{.reactor = reactor,
            .spec = transport::FromProto(*request),
            .deadline = absl::FromChrono(context->deadline()),
            .response = response};
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down"));
  } else {
    queue_.push_back(std::move(call));
  }
  return reactor;
}

void NcclPairingService::Loop() {
  while (true) {
    Call call;
    bool stopping = false;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](NcclPairingService* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
            return s->stopping_ || !s->queue_.empty();
          },
          this));
      if (queue_.empty()) return;
      call = std::move(queue_.front());
      queue_.pop_front();
      stopping = stopping_;
    }
    if (stopping) {
      call.reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down"));
      continue;
    }
    absl::StatusOr<transport::NcclPairAnswer> answer = host_.Pair(call.spec, call.deadline);
    if (!answer.ok()) {
      call.reactor->Finish(ToGrpcStatus(answer.status()));
      continue;
    }
    *call.response = transport::ToProto(*answer);
    call.reactor->Finish(grpc::Status::OK);
  }
}

}  // namespace dmoe::expert
