// NcclCommunicator: the RAII owner of one NCCL communicator (STYLE.md §8). Created and used only
// on the DeviceWorker thread of its device; every operation takes an explicit stream; every
// NCCL error becomes an absl::Status. The communicator runs in NCCL's non-blocking mode
// (ncclConfig_t::blocking = 0): no call ever waits without a deadline. When a deadline passes
// or NCCL reports an asynchronous error (a peer died, a network error), the communicator is
// aborted with ncclCommAbort, which also makes NCCL kernels still waiting on the GPU exit, and
// the caller gets a clear error instead of a hang. An aborted communicator refuses further
// work (FAILED_PRECONDITION); the owner creates a new one with a new unique id.
#ifndef DMOE_COMMON_NCCL_NCCL_COMMUNICATOR_H_
#define DMOE_COMMON_NCCL_NCCL_COMMUNICATOR_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dmoe::nccl {

// ncclGetVersion, e.g. 22809 for 2.28.9. Works without a GPU.
absl::StatusOr<int> NcclVersion();

// A fresh communicator id (ncclGetUniqueId) as its 128 raw bytes, so it can travel in a
// protobuf `bytes` field: one process (the scheduler) creates it and hands it to every rank.
absl::StatusOr<std::string> NewUniqueId();

// Maps an NCCL result to a status: ncclInvalidArgument -> INVALID_ARGUMENT, ncclInvalidUsage
// -> FAILED_PRECONDITION, ncclSystemError / ncclRemoteError -> UNAVAILABLE (a peer or the
// network failed; the caller may retry elsewhere), others -> INTERNAL. The message names
// `what`, the NCCL error string and ncclGetLastError's detail.
absl::Status NcclResultToStatus(ncclResult_t result, const std::string& what);

struct NcclCommunicatorOptions {
  // The 128 bytes of NewUniqueId(), the same on every rank.
  std::string unique_id;
  int num_ranks = 0;
  int rank = -1;
  // Init and every wait give up after this: the communicator is aborted and the call returns
  // DEADLINE_EXCEEDED (per-call deadlines passed to Wait can be shorter).
  absl::Duration timeout = absl::Seconds(60);
  // Names the communicator in errors and in NCCL's logs (ncclConfig_t::commName).
  std::string name = "dmoe";

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// One point-to-point operation of a group (see NcclCommunicator::SendRecv).
struct NcclP2p {
  enum class Kind { kSend, kRecv };
  Kind kind = Kind::kSend;
  void* buffer = nullptr;  // device memory; const for sends
  size_t count = 0;        // elements of `type`; 0 is allowed (matched by a 0-count op)
  ncclDataType_t type = ncclFloat32;
  int peer = 0;
};

// Owned by the DeviceWorker thread of its device (the device must be current on the calling
// thread for every method, the destructor included). Not thread-safe.
class NcclCommunicator {
 public:
  // ncclCommInitRankConfig in non-blocking mode, then waits (polling) until every rank has
  // joined. DEADLINE_EXCEEDED when that takes longer than options.timeout (a rank never came);
  // INVALID_ARGUMENT for bad options; other NCCL errors as NcclResultToStatus.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(
      const NcclCommunicatorOptions& options);
  // Healthy: ncclCommFinalize (flushes outstanding work, bounded by the timeout) and
  // ncclCommDestroy. Otherwise, or when finalizing times out: ncclCommAbort.
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return options_.rank; }
  int num_ranks() const { return options_.num_ranks; }
  bool aborted() const { return aborted_; }
  const NcclCommunicatorOptions& options() const { return options_; }

  // Enqueues `ops` as one NCCL group on `stream` (sends and receives to and from any peers,
  // self included, progress together, so matching pairs cannot deadlock). Returns once NCCL
  // has enqueued the work (the non-blocking group end has completed) or `deadline` passed,
  // not when the data has arrived: use Wait for that. Errors abort the communicator, except
  // INVALID_ARGUMENT for a bad op (null buffer with count > 0, peer out of range).
  absl::Status SendRecv(const std::vector<NcclP2p>& ops, cudaStream_t stream, absl::Time deadline);

  // Waits until all work enqueued on `stream` has finished, polling the stream and NCCL's
  // asynchronous error. UNAVAILABLE (communicator aborted) when NCCL reports an error;
  // DEADLINE_EXCEEDED (communicator aborted) when the work has not finished by `deadline`,
  // e.g. because a peer died or never posted its side. `what` names the step in the message.
  absl::Status Wait(cudaStream_t stream, absl::Time deadline, const std::string& what);

  // ncclCommAbort. Idempotent.
  void Abort();

 private:
  explicit NcclCommunicator(const NcclCommunicatorOptions& options) : options_(options) {}
  // Polls ncclCommGetAsyncError until it is no longer ncclInProgress. OK when it becomes
  // ncclSuccess; otherwise aborts and returns the error (DEADLINE_EXCEEDED past `deadline`).
  absl::Status AwaitReady(absl::Time deadline, const std::string& what);
  std::string Describe() const;

  NcclCommunicatorOptions options_;
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
};

}  // namespace dmoe::nccl

#endif  // DMOE_COMMON_NCCL_NCCL_COMMUNICATOR_H_
