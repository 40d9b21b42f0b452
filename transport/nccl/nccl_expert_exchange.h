// The NCCL data plane of one MoE layer between attention ranks and expert ranks: one "round"
// moves every attention rank's routed rows to the expert ranks that own them (dispatch),
// lets the expert ranks compute, and moves the unweighted outputs back (combine). All ranks
// of the communicator run the same rounds in the same order (lockstep, like an all-to-all);
// a rank with nothing for a peer still sends it a zero-row header, so no receive ever waits
// for a send that will not come. A rank may be both sides (the one-GPU self send/recv test).
//
// Wire protocol of a round, each step one NCCL group on the device stream:
//   1. header   sender -> expert: int64 {layer, n}
//   2. payload  sender -> expert: int32 expert_ids [n], f32 hidden [n, H]   (skipped if n = 0)
//   3.          expert computes out [n, H] (NcclServeFn)
//   4. answer   expert -> sender: int64 status code, f32 out [n, H]         (out skipped if n = 0)
// Every step waits with the round's deadline; a dead peer surfaces as DEADLINE_EXCEEDED or
// UNAVAILABLE from NcclCommunicator (which has then been aborted), never as a hang.
#ifndef DMOE_TRANSPORT_NCCL_NCCL_EXPERT_EXCHANGE_H_
#define DMOE_TRANSPORT_NCCL_NCCL_EXPERT_EXCHANGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/nccl/nccl_communicator.h"
#include "model/cuda/device_buffer.h"
#include "model/cuda/device_worker.h"

namespace dmoe::transport {

// Rows this rank sends to one expert rank in a round. Device pointers.
struct NcclRowsToPeer {
  int peer = 0;
  int64_t num_rows = 0;                 // n, may be 0
  const float* hidden = nullptr;        // F32 [n, H]
  const int32_t* expert_ids = nullptr;  // I32 [n], global expert ids the peer serves
  float* out = nullptr;                 // F32 [n, H], written with the peer's answer
};

// Rows received from one peer, to be computed by this rank. Device pointers, valid during the
// call only.
struct NcclServeRequest {
  int peer = 0;
  int64_t layer = 0;
  int64_t num_rows = 0;                 // n >= 1
  int64_t hidden_size = 0;              // H
  const float* hidden = nullptr;        // F32 [n, H]
  const int32_t* expert_ids = nullptr;  // I32 [n]
  float* out = nullptr;                 // F32 [n, H]: out[i] = expert_{ids[i]}(hidden[i])
};

// Computes a served request on the device thread (enqueueing on ctx.stream is enough; the
// exchange waits for the stream). A non-OK status is sent to the requesting rank as its
// answer's status code (the round itself continues).
using NcclServeFn =
    std::function<absl::Status(const NcclServeRequest& request, gpu::DeviceContext& ctx)>;

struct NcclExpertExchangeOptions {
  int64_t hidden_size = 0;  // H
  // Ranks whose rows this rank computes (expert ranks: the attention ranks; attention-only
  // ranks: empty). Sorted, unique.
  std::vector<int> serve_peers;
  // Capacity of the receive buffers, per serve peer and round. A header announcing more rows
  // is a protocol error: the communicator is aborted (RESOURCE_EXHAUSTED).
  int64_t max_rows_per_peer = 4096;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate(int num_ranks) const;
};

// Owned by the DeviceWorker thread of its device, like the communicator it uses.
class NcclExpertExchange {
 public:
  // `comm` must outlive the exchange. `serve` may be null only when serve_peers is empty.
  // Allocates the receive buffers on the current device.
  static absl::StatusOr<std::unique_ptr<NcclExpertExchange>> Create(
      nccl::NcclCommunicator& comm, const NcclExpertExchangeOptions& options, NcclServeFn serve);

  const NcclExpertExchangeOptions& options() const { return options_; }
  nccl::NcclCommunicator& comm() { return comm_; }

  // One round (see the file comment): sends `outgoing` (at most one entry per peer), serves
  // every serve peer, and returns when the answers to `outgoing` are in their `out` buffers.
  // Errors: INVALID_ARGUMENT for malformed `outgoing` (nothing was sent); DEADLINE_EXCEEDED /
  // UNAVAILABLE from the communicator (aborted); a peer's compute error with its code, the
  // message naming the peer ("expert rank 3: ...": only the code crosses the wire).
  absl::Status RunRound(int64_t layer, const std::vector<NcclRowsToPeer>& outgoing,
                        gpu::DeviceContext& ctx, absl::Time deadline);

  // An expert rank's round: nothing to send, serve every serve peer.
  absl::Status ServeRound(gpu::DeviceContext& ctx, absl::Time deadline) {
    return RunRound(-1, {}, ctx, deadline);
  }

 private:
  NcclExpertExchange(nccl::NcclCommunicator& comm, const NcclExpertExchangeOptions& options,
                     NcclServeFn serve)
      : comm_(comm), options_(options), serve_(std::move(serve)) {}

  nccl::NcclCommunicator& comm_;
  NcclExpertExchangeOptions options_;
  NcclServeFn serve_;
  // Per serve peer: hidden [max_rows, H], out [max_rows, H], ids [max_rows].
  std::vector<gpu::DeviceBuffer> recv_hidden_, recv_out_, recv_ids_;
  // int64 headers: [num_ranks][2] to send, [serve peers][2] received; int64 status codes:
  // [serve peers] to send, [num_ranks] received.
  gpu::DeviceBuffer send_headers_, recv_headers_, send_status_, recv_status_;
  gpu::PinnedBuffer host_words_;  // staging for the four small arrays above
};

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_NCCL_NCCL_EXPERT_EXCHANGE_H_
