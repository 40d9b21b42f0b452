#include "transport/nccl/nccl_expert_exchange.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/cuda/cuda_status.h"

namespace dmoe::transport {

using nccl::NcclP2p;

absl::Status NcclExpertExchangeOptions::Validate(int num_ranks) const {
  if (hidden_size <= 0) return absl::InvalidArgumentError("hidden_size must be positive");
  if (max_rows_per_peer <= 0)
    return absl::InvalidArgumentError("max_rows_per_peer must be positive");
  for (size_t i = 0; i < serve_peers.size(); ++i) {
    if (serve_peers[i] < 0 || serve_peers[i] >= num_ranks ||
        (i > 0 && serve_peers[i] <= serve_peers[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("serve_peers must be sorted, unique ranks in [0, ", num_ranks, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<NcclExpertExchange>> NcclExpertExchange::Create(
    nccl::NcclCommunicator& comm, const NcclExpertExchangeOptions& options, NcclServeFn serve) {
  DMOE_RETURN_IF_ERROR(options.Validate(comm.num_ranks()));
  if (!options.serve_peers.empty() && !serve) {
    return absl::InvalidArgumentError("a rank with serve_peers needs a serve function");
  }
  std::unique_ptr<NcclExpertExchange> x(new NcclExpertExchange(comm, options, std::move(serve)));
  const size_t rows = options.max_rows_per_peer, h = options.hidden_size;
  const size_t ranks = comm.num_ranks(), served = options.serve_peers.size();
  for (size_t j = 0; j < served; ++j) {
    DMOE_ASSIGN_OR_RETURN(gpu::DeviceBuffer hidden, gpu::DeviceBuffer::Allocate(rows * h * 4));
    DMOE_ASSIGN_OR_RETURN(gpu::DeviceBuffer out, gpu::DeviceBuffer::Allocate(rows * h * 4));
    DMOE_ASSIGN_OR_RETURN(gpu::DeviceBuffer ids, gpu::DeviceBuffer::Allocate(rows * 4));
    x->recv_hidden_.push_back(std::move(hidden));
    x->recv_out_.push_back(std::move(out));
    x->recv_ids_.push_back(std::move(ids));
  }
  DMOE_ASSIGN_OR_RETURN(x->send_headers_, gpu::DeviceBuffer::Allocate(ranks * 2 * 8));
  DMOE_ASSIGN_OR_RETURN(x->recv_headers_,
                        gpu::DeviceBuffer::Allocate(std::max<size_t>(served, 1) * 2 * 8));
  DMOE_ASSIGN_OR_RETURN(x->send_status_,
                        gpu::DeviceBuffer::Allocate(std::max<size_t>(served, 1) * 8));
  DMOE_ASSIGN_OR_RETURN(x->recv_status_, gpu::DeviceBuffer::Allocate(ranks * 8));
  DMOE_ASSIGN_OR_RETURN(x->host_words_, gpu::PinnedBuffer::Allocate(
                                            (3 * ranks + 3 * std::max<size_t>(served, 1)) * 8));
  return x;
}

absl::Status NcclExpertExchange::RunRound(int64_t layer,
                                          const std::vector<NcclRowsToPeer>& outgoing,
                                          gpu::DeviceContext& ctx, absl::Time deadline) {
  const int ranks = comm_.num_ranks();
  const int64_t h = options_.hidden_size;
  const size_t served = options_.serve_peers.size();
  std::vector<bool> seen(ranks, false);
  for (const NcclRowsToPeer& o : outgoing) {
    if (o.peer < 0 || o.peer >= ranks || seen[o.peer]) {
      return absl::InvalidArgumentError(
          absl::StrCat("outgoing rows: bad or repeated peer ", o.peer));
    }
    seen[o.peer] = true;
    if (o.num_rows < 0 ||
        (o.num_rows > 0 && (o.hidden == nullptr || o.expert_ids == nullptr || o.out == nullptr))) {
      return absl::InvalidArgumentError(
          absl::StrCat("outgoing rows for peer ", o.peer, ": negative count or null buffer"));
    }
  }
  cudaStream_t stream = ctx.stream;
  int64_t* words = host_words_.as<int64_t>();
  int64_t* h_send_headers = words;                                            // [ranks][2]
  int64_t* h_recv_headers = words + 2 * ranks;                                // [served][2]
  int64_t* h_send_status = h_recv_headers + 2 * std::max<size_t>(served, 1);  // [served]
  int64_t* h_recv_status = h_send_status + std::max<size_t>(served, 1);       // [ranks]
  int64_t* d_send_headers = send_headers_.as<int64_t>();
  int64_t* d_recv_headers = recv_headers_.as<int64_t>();
  int64_t* d_send_status = send_status_.as<int64_t>();
  int64_t* d_recv_status = recv_status_.as<int64_t>();

  // 1. Headers.
  std::vector<NcclP2p> ops;
  for (size_t i = 0; i < outgoing.size(); ++i) {
    h_send_headers[2 * i] = layer;
    h_send_headers[2 * i + 1] = outgoing[i].num_rows;
    ops.push_back({NcclP2p::Kind::kSend, d_send_headers + 2 * i, 2, ncclInt64, outgoing[i].peer});
  }
  for (size_t j = 0; j < served; ++j) {
    ops.push_back(
        {NcclP2p::Kind::kRecv, d_recv_headers + 2 * j, 2, ncclInt64, options_.serve_peers[j]});
  }
  if (!outgoing.empty()) {
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        d_send_headers, h_send_headers, outgoing.size() * 2 * 8, cudaMemcpyHostToDevice, stream));
  }
  if (ops.empty()) return absl::OkStatus();  // a rank with no peers at all
  DMOE_RETURN_IF_ERROR(comm_.SendRecv(ops, stream, deadline));
  if (served > 0) {
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_recv_headers, d_recv_headers, served * 2 * 8,
                                              cudaMemcpyDeviceToHost, stream));
  }
  DMOE_RETURN_IF_ERROR(comm_.Wait(stream, deadline, "expert header exchange"));
  std::vector<int64_t> served_rows(served), served_layer(served);
  for (size_t j = 0; j < served; ++j) {
    served_layer[j] = h_recv_headers[2 * j];
    served_rows[j] = h_recv_headers[2 * j + 1];
    if (served_rows[j] < 0 || served_rows[j] > options_.max_rows_per_peer) {
      comm_.Abort();  // the peer would send more than the buffers hold: the stream is lost
      return absl::ResourceExhaustedError(
          absl::StrCat("rank ", options_.serve_peers[j], " announced ", served_rows[j],
                       " rows, more than max_rows_per_peer ", options_.max_rows_per_peer,
                       "; communicator aborted"));
    }
  }

  // 2. Payload.
  ops.clear();
  for (const NcclRowsToPeer& o : outgoing) {
    if (o.num_rows == 0) continue;
    ops.push_back({NcclP2p::Kind::kSend, const_cast<int32_t*>(o.expert_ids),
                   static_cast<size_t>(o.num_rows), ncclInt32, o.peer});
    ops.push_back({NcclP2p::Kind::kSend, const_cast<float*>(o.hidden),
                   static_cast<size_t>(o.num_rows * h), ncclFloat32, o.peer});
  }
  for (size_t j = 0; j < served; ++j) {
    if (served_rows[j] == 0) continue;
    ops.push_back({NcclP2p::Kind::kRecv, recv_ids_[j].data(), static_cast<size_t>(served_rows[j]),
                   ncclInt32, options_.serve_peers[j]});
    ops.push_back({NcclP2p::Kind::kRecv, recv_hidden_[j].data(),
                   static_cast<size_t>(served_rows[j] * h), ncclFloat32, options_.serve_peers[j]});
  }
  if (!ops.empty()) {
    DMOE_RETURN_IF_ERROR(comm_.SendRecv(ops, stream, deadline));
    DMOE_RETURN_IF_ERROR(comm_.Wait(stream, deadline, "expert dispatch"));
  }

  // 3. Compute what was received.
  for (size_t j = 0; j < served; ++j) {
    absl::Status status;
    if (served_rows[j] > 0) {
      NcclServeRequest request;
      request.peer = options_.serve_peers[j];
      request.layer = served_layer[j];
      request.num_rows = served_rows[j];
      request.hidden_size = h;
      request.hidden = recv_hidden_[j].as<float>();
      request.expert_ids = recv_ids_[j].as<int32_t>();
      request.out = recv_out_[j].as<float>();
      status = serve_(request, ctx);
    }
    h_send_status[j] = static_cast<int64_t>(status.code());
  }

  // 4. Answers: a status word per pair, then the rows (sent even after a failed compute, so
  // both sides agree on the messages; the receiver discards them).
  ops.clear();
  if (served > 0) {
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(d_send_status, h_send_status, served * 8, cudaMemcpyHostToDevice, stream));
  }
  for (size_t j = 0; j < served; ++j) {
    ops.push_back({NcclP2p::Kind::kSend, d_send_status + j, 1, ncclInt64, options_.serve_peers[j]});
    if (served_rows[j] > 0) {
      ops.push_back({NcclP2p::Kind::kSend, recv_out_[j].data(),
                     static_cast<size_t>(served_rows[j] * h), ncclFloat32,
                     options_.serve_peers[j]});
    }
  }
  for (size_t i = 0; i < outgoing.size(); ++i) {
    const NcclRowsToPeer& o = outgoing[i];
    ops.push_back({NcclP2p::Kind::kRecv, d_recv_status + i, 1, ncclInt64, o.peer});
    if (o.num_rows > 0) {
      ops.push_back(
          {NcclP2p::Kind::kRecv, o.out, static_cast<size_t>(o.num_rows * h), ncclFloat32, o.peer});
    }
  }
  DMOE_RETURN_IF_ERROR(comm_.SendRecv(ops, stream, deadline));
  if (!outgoing.empty()) {
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_recv_status, d_recv_status, outgoing.size() * 8,
                                              cudaMemcpyDeviceToHost, stream));
  }
  DMOE_RETURN_IF_ERROR(comm_.Wait(stream, deadline, "expert combine"));
  for (size_t i = 0; i < outgoing.size(); ++i) {
    if (h_recv_status[i] != 0) {
      return absl::Status(static_cast<absl::StatusCode>(h_recv_status[i]),
                          absl::StrCat("expert rank ", outgoing[i].peer, ": computing layer ",
                                       layer, " failed (see that rank's log)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace dmoe::transport
