#include "common/nccl/nccl_communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dmoe::nccl {
namespace {

// Polling interval while waiting on NCCL or the stream: short enough not to add visible
// latency to a layer's exchange (tens of microseconds), long enough not to burn a core.
constexpr absl::Duration kPollInterval = absl::Microseconds(20);

}  // namespace

absl::StatusOr<int> NcclVersion() {
  int version = 0;
  const ncclResult_t r = ncclGetVersion(&version);
  if (r != ncclSuccess) return NcclResultToStatus(r, "ncclGetVersion");
  return version;
}

absl::StatusOr<std::string> NewUniqueId() {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) return NcclResultToStatus(r, "ncclGetUniqueId");
  return std::string(id.internal, sizeof(id.internal));
}

absl::Status NcclResultToStatus(ncclResult_t result, const std::string& what) {
  if (result == ncclSuccess) return absl::OkStatus();
  const char* detail = ncclGetLastError(nullptr);
  std::string message = absl::StrCat(
      what, ": ", ncclGetErrorString(result), detail != nullptr && *detail != '\0' ? " (" : "",
      detail != nullptr ? detail : "", detail != nullptr && *detail != '\0' ? ")" : "");
  switch (result) {
    case ncclInvalidArgument:
      return absl::InvalidArgumentError(message);
    case ncclInvalidUsage:
      return absl::FailedPreconditionError(message);
    case ncclSystemError:
    case ncclRemoteError:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status NcclCommunicatorOptions::Validate() const {
  if (unique_id.size() != sizeof(ncclUniqueId)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unique_id must be ", sizeof(ncclUniqueId), " bytes, got ", unique_id.size()));
  }
  if (num_ranks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_ranks must be >= 1, got ", num_ranks));
  }
  if (rank < 0 || rank >= num_ranks) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank must be in [0, ", num_ranks, "), got ", rank));
  }
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  return absl::OkStatus();
}

std::string NcclCommunicator::Describe() const {
  return absl::StrCat("NCCL communicator '", options_.name, "' rank ", options_.rank, "/",
                      options_.num_ranks);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const NcclCommunicatorOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(options));
  ncclUniqueId id;
  std::memcpy(id.internal, options.unique_id.data(), sizeof(id.internal));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.commName = c->options_.name.c_str();
  const ncclResult_t r =
      ncclCommInitRankConfig(&c->comm_, options.num_ranks, id, options.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (c->comm_ != nullptr) c->Abort();
    c->aborted_ = true;  // nothing to finalize
    return NcclResultToStatus(r, absl::StrCat(c->Describe(), ": ncclCommInitRankConfig"));
  }
  DMOE_RETURN_IF_ERROR(
      c->AwaitReady(absl::Now() + options.timeout, "init (waiting for all ranks)"));
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  if (!aborted_) {
    const ncclResult_t r = ncclCommFinalize(comm_);
    absl::Status s = r == ncclSuccess || r == ncclInProgress
                         ? AwaitReady(absl::Now() + options_.timeout, "finalize")
                         : NcclResultToStatus(r, "ncclCommFinalize");
    if (!s.ok()) {
      DMOE_LOG(WARNING) << Describe() << ": " << s;
      Abort();  // no-op when AwaitReady already aborted
    }
  }
  if (!aborted_) {
    ncclCommDestroy(comm_);
  }
  comm_ = nullptr;
}

void NcclCommunicator::Abort() {
  if (aborted_ || comm_ == nullptr) {
    aborted_ = true;
    return;
  }
  aborted_ = true;
  const ncclResult_t r = ncclCommAbort(comm_);
  if (r != ncclSuccess)
    DMOE_LOG(WARNING) << Describe() << ": ncclCommAbort: " << ncclGetErrorString(r);
}

absl::Status NcclCommunicator::AwaitReady(absl::Time deadline, const std::string& what) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) {
      absl::Status status = NcclResultToStatus(state, absl::StrCat(Describe(), ": ", what));
      Abort();
      return status;
    }
    if (absl::Now() > deadline) {
      Abort();
      return absl::DeadlineExceededError(absl::StrCat(Describe(), ": ", what,
                                                      " did not complete before the deadline; "
                                                      "communicator aborted"));
    }
    absl::SleepFor(kPollInterval);
  }
}

absl::Status NcclCommunicator::SendRecv(const std::vector<NcclP2p>& ops, cudaStream_t stream,
                                        absl::Time deadline) {
  if (aborted_) {
    return absl::FailedPreconditionError(absl::StrCat(Describe(), " was aborted"));
  }
  for (const NcclP2p& op : ops) {
    if (op.peer < 0 || op.peer >= options_.num_ranks || (op.buffer == nullptr && op.count > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(Describe(), ": bad send/recv (peer ", op.peer, ", count ", op.count, ")"));
    }
  }
  ncclResult_t r = ncclGroupStart();
  if (r != ncclSuccess) return NcclResultToStatus(r, "ncclGroupStart");
  ncclResult_t first_error = ncclSuccess;
  for (const NcclP2p& op : ops) {
    r = op.kind == NcclP2p::Kind::kSend
            ? ncclSend(op.buffer, op.count, op.type, op.peer, comm_, stream)
            : ncclRecv(op.buffer, op.count, op.type, op.peer, comm_, stream);
    if (r != ncclSuccess && r != ncclInProgress && first_error == ncclSuccess) first_error = r;
  }
  r = ncclGroupEnd();  // always balance the group, even after an error
  if (first_error != ncclSuccess) {
    absl::Status status = NcclResultToStatus(first_error, absl::StrCat(Describe(), ": send/recv"));
    Abort();
    return status;
  }
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status status = NcclResultToStatus(r, absl::StrCat(Describe(), ": ncclGroupEnd"));
    Abort();
    return status;
  }
  return AwaitReady(deadline, "enqueue of a send/recv group");
}

absl::Status NcclCommunicator::Wait(cudaStream_t stream, absl::Time deadline,
                                    const std::string& what) {
  if (aborted_) {
    return absl::FailedPreconditionError(absl::StrCat(Describe(), " was aborted"));
  }
  while (true) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e == cudaSuccess) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state == ncclSuccess || state == ncclInProgress) return absl::OkStatus();
      absl::Status status = NcclResultToStatus(state, absl::StrCat(Describe(), ": ", what));
      Abort();
      return absl::UnavailableError(status.message());
    }
    if (e != cudaErrorNotReady) {
      Abort();
      return absl::InternalError(absl::StrCat(Describe(), ": ", what, ": CUDA error ",
                                              cudaGetErrorName(e), " (", cudaGetErrorString(e),
                                              ")"));
    }
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress) {
      absl::Status status = NcclResultToStatus(state, absl::StrCat(Describe(), ": ", what));
      Abort();
      return absl::UnavailableError(
          absl::StrCat(status.message(), "; a peer failed, communicator aborted"));
    }
    if (absl::Now() > deadline) {
      Abort();
      return absl::DeadlineExceededError(
          absl::StrCat(Describe(), ": ", what,
                       " not finished by the deadline (a peer is dead or did not "
                       "post its side); communicator aborted"));
    }
    absl::SleepFor(kPollInterval);
  }
}

}  // namespace dmoe::nccl
