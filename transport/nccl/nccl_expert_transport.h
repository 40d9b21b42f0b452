// ExpertTransport over NCCL (issue 6): the attention side of one (attention rank, expert rank)
// pair of an NcclExpertExchange. RunExperts copies the rows to the device, runs one exchange
// round with the expert rank (header, payload, compute there, answer) and copies the answer
// back; the expert rank runs NcclExpertExchange::ServeRound in a loop on its own device thread.
// The communicator's unique id comes from outside (nccl::NewUniqueId on the scheduler, handed
// to both ranks over gRPC). With expert_rank == the own rank (a one-rank communicator) the
// same round serves the rows locally through NCCL self send/recv: the one-GPU test setup.
//
// Also here: the two NcclServeFn an expert rank can plug into its exchange, computing on the
// host through any ExpertTransport (e.g. an in-process ExpertEngine) or on the GPU with the
// grouped expert kernels over CudaWeights.
#ifndef DMOE_TRANSPORT_NCCL_NCCL_EXPERT_TRANSPORT_H_
#define DMOE_TRANSPORT_NCCL_NCCL_EXPERT_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/shard_info.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_buffer.h"
#include "model/cuda/device_worker.h"
#include "transport/expert_transport.h"
#include "transport/nccl/nccl_expert_exchange.h"

namespace dmoe::transport {

struct NcclExpertTransportOptions {
  int expert_rank = 0;      // the expert replica's rank in the exchange's communicator
  ShardInfo shard;  // what that replica serves (from the scheduler's placement)
  int64_t max_rows = 4096;  // rows per call (device staging capacity)

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe: calls are serialised on the DeviceWorker that owns the exchange (one round at a
// time, in call order, as the lockstep protocol requires).
class NcclExpertTransport final : public ExpertTransport {
 public:
  // `worker` and `exchange` (which lives on `worker`'s device thread) must outlive the
  // transport. Allocates the staging buffers on the device thread.
  static absl::StatusOr<std::unique_ptr<NcclExpertTransport>> Create(
      gpu::DeviceWorker& worker, NcclExpertExchange& exchange,
      const NcclExpertTransportOptions& options);
  ~NcclExpertTransport() override;

  // "nccl:rank<r>".
  const std::string& address() const override { return address_; }
  // INVALID_ARGUMENT (nothing sent): n > max_rows, hidden_size != the exchange's, an expert id
  // outside the shard's range, null buffers. Exchange errors (DEADLINE_EXCEEDED / UNAVAILABLE
  // after a dead peer, the peer's compute error) pass through, prefixed with address().
  absl::Status RunExperts(const ExpertRows& rows, absl::Time deadline, float* out) override;
  // options.shard (no round trip: NCCL carries data only).
  absl::StatusOr<ShardInfo> GetShardInfo(absl::Time deadline) override;

 private:
  NcclExpertTransport(gpu::DeviceWorker& worker, NcclExpertExchange& exchange,
                      const NcclExpertTransportOptions& options);

  gpu::DeviceWorker& worker_;
  NcclExpertExchange& exchange_;
  NcclExpertTransportOptions options_;
  std::string address_;
  // Device thread only.
  gpu::DeviceBuffer hidden_, ids_, out_;
};

// Serves rows on the host: copies them off the device, calls `local` (which must outlive the
// function; an InProcessExpertTransport over an ExpertEngine, for instance) and copies the
// answer back. The call's deadline is `timeout` from its start.
NcclServeFn MakeHostServeFn(ExpertTransport& local, absl::Duration timeout = absl::Seconds(60));

// Serves rows on the GPU with LaunchMoeGroup + LaunchGroupedExperts (top_k 1: each row is its
// own slot) over the routed experts of `weights` (which must outlive the function). Scratch
// for `max_rows` rows is allocated here, on the calling (device) thread. Ids outside
// [0, num_experts) or of experts `weights` does not hold are INVALID_ARGUMENT (checked on the
// host before any kernel runs).
absl::StatusOr<NcclServeFn> MakeCudaServeFn(const gpu::CudaWeights& weights, int64_t max_rows);

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_NCCL_NCCL_EXPERT_TRANSPORT_H_
