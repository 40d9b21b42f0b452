#include "transport/nccl/nccl_expert_transport.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/expert_rows.h"

namespace dmoe::transport {

absl::Status NcclExpertTransportOptions::Validate() const {
  if (expert_rank < 0) return absl::InvalidArgumentError("expert_rank must be >= 0");
  if (max_rows <= 0) return absl::InvalidArgumentError("max_rows must be positive");
  if (shard.expert_last <= shard.expert_first) {
    return absl::InvalidArgumentError("shard: empty expert range");
  }
  return absl::OkStatus();
}

NcclExpertTransport::NcclExpertTransport(gpu::DeviceWorker& worker, NcclExpertExchange& exchange,
                                         const NcclExpertTransportOptions& options)
    : worker_(worker),
      exchange_(exchange),
      options_(options),
      address_(absl::StrCat("nccl:rank", options.expert_rank)) {}

absl::StatusOr<std::unique_ptr<NcclExpertTransport>> NcclExpertTransport::Create(
    gpu::DeviceWorker& worker, NcclExpertExchange& exchange,
    const NcclExpertTransportOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  if (options.expert_rank >= exchange.comm().num_ranks()) {
    return absl::InvalidArgumentError(absl::StrCat("expert_rank ", options.expert_rank,
                                                   " outside the communicator's ",
                                                   exchange.comm().num_ranks(), " ranks"));
  }
  if (options.shard.hidden_size != 0 &&
      options.shard.hidden_size != exchange.options().hidden_size) {
    return absl::InvalidArgumentError("shard hidden_size differs from the exchange's");
  }
  std::unique_ptr<NcclExpertTransport> t(new NcclExpertTransport(worker, exchange, options));
  const size_t rows = options.max_rows, h = exchange.options().hidden_size;
  DMOE_RETURN_IF_ERROR(worker.Run([&](gpu::DeviceContext&) -> absl::Status {
    DMOE_ASSIGN_OR_RETURN(t->hidden_, gpu::DeviceBuffer::Allocate(rows * h * 4));
    DMOE_ASSIGN_OR_RETURN(t->out_, gpu::DeviceBuffer::Allocate(rows * h * 4));
    DMOE_ASSIGN_OR_RETURN(t->ids_, gpu::DeviceBuffer::Allocate(rows * 4));
    return absl::OkStatus();
  }));
  return t;
}

NcclExpertTransport::~NcclExpertTransport() {
  // Device memory is released on the device thread (STYLE.md §8).
  absl::Status s = worker_.Run([this](gpu::DeviceContext&) {
    hidden_ = gpu::DeviceBuffer();
    out_ = gpu::DeviceBuffer();
    ids_ = gpu::DeviceBuffer();
    return absl::OkStatus();
  });
  (void)s;  // a worker already shutting down freed nothing; the process is going away
}

absl::Status NcclExpertTransport::RunExperts(const ExpertRows& rows, absl::Time deadline,
                                             float* out) {
  const int64_t n = rows.num_rows, h = rows.hidden_size;
  auto invalid = [&](const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(address_, ": RunExperts layer ", rows.layer, ": ", what));
  };
  if (n < 0 || n > options_.max_rows) {
    return invalid(absl::StrCat(n, " rows, max_rows is ", options_.max_rows));
  }
  if (h != exchange_.options().hidden_size) {
    return invalid(absl::StrCat("hidden_size ", h, ", the exchange carries ",
                                exchange_.options().hidden_size));
  }
  if (n > 0 && (rows.hidden == nullptr || rows.expert_ids == nullptr || out == nullptr)) {
    return invalid("null buffer");
  }
  for (int64_t i = 0; i < n; ++i) {
    if (rows.expert_ids[i] < options_.shard.expert_first ||
        rows.expert_ids[i] >= options_.shard.expert_last) {
      return invalid(absl::StrCat("expert_ids[", i, "] = ", rows.expert_ids[i], " outside [",
                                  options_.shard.expert_first, ", ", options_.shard.expert_last,
                                  ")"));
    }
  }
  absl::Status status = worker_.Run([&](gpu::DeviceContext& ctx) -> absl::Status {
    cudaStream_t stream = ctx.stream;
    if (n > 0) {
      DMOE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(hidden_.data(), rows.hidden, n * h * 4, cudaMemcpyHostToDevice, stream));
      DMOE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(ids_.data(), rows.expert_ids, n * 4, cudaMemcpyHostToDevice, stream));
    }
    NcclRowsToPeer to;
    to.peer = options_.expert_rank;
    to.num_rows = n;
    to.hidden = hidden_.as<float>();
    to.expert_ids = ids_.as<int32_t>();
    to.out = out_.as<float>();
    DMOE_RETURN_IF_ERROR(exchange_.RunRound(rows.layer, {to}, ctx, deadline));
    if (n > 0) {
      DMOE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(out, out_.data(), n * h * 4, cudaMemcpyDeviceToHost, stream));
      DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    }
    return absl::OkStatus();
  });
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(address_, ": RunExperts layer ", rows.layer, ": ",
                                                  status.message()));
}

absl::StatusOr<ShardInfo> NcclExpertTransport::GetShardInfo(absl::Time /*deadline*/) {
  return options_.shard;
}

NcclServeFn MakeHostServeFn(ExpertTransport& local, absl::Duration timeout) {
  struct Scratch {
    std::vector<float> hidden, out;
    std::vector<int32_t> ids;
  };
  auto scratch = std::make_shared<Scratch>();
  return [&local, timeout, scratch](const NcclServeRequest& r,
                                    gpu::DeviceContext& ctx) -> absl::Status {
    const size_t n = r.num_rows, h = r.hidden_size;
    scratch->hidden.resize(n * h);
    scratch->out.resize(n * h);
    scratch->ids.resize(n);
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(scratch->hidden.data(), r.hidden, n * h * 4,
                                              cudaMemcpyDeviceToHost, ctx.stream));
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(scratch->ids.data(), r.expert_ids, n * 4,
                                              cudaMemcpyDeviceToHost, ctx.stream));
    DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx.stream));
    ExpertRows rows;
    rows.layer = r.layer;
    rows.num_rows = r.num_rows;
    rows.hidden_size = r.hidden_size;
    rows.hidden = scratch->hidden.data();
    rows.expert_ids = scratch->ids.data();
    DMOE_RETURN_IF_ERROR(local.RunExperts(rows, absl::Now() + timeout, scratch->out.data()));
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(r.out, scratch->out.data(), n * h * 4, cudaMemcpyHostToDevice, ctx.stream));
    DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx.stream));  // scratch is reused
    return absl::OkStatus();
  };
}

absl::StatusOr<NcclServeFn> MakeCudaServeFn(const gpu::CudaWeights& weights, int64_t max_rows) {
  DMOE_ASSIGN_OR_RETURN(gpu::CudaExpertRows rows, gpu::CudaExpertRows::Create(weights, max_rows));
  struct State {
    gpu::CudaExpertRows rows;
    std::vector<int32_t> ids;
  };
  auto s = std::make_shared<State>(State{std::move(rows), {}});
  return NcclServeFn([&weights, s](const NcclServeRequest& r,
                                   gpu::DeviceContext& ctx) -> absl::Status {
    const model::ModelConfig& c = weights.config();
    if (r.hidden_size != c.hidden_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("hidden_size ", r.hidden_size, ", the model has ", c.hidden_size));
    }
    // The ids come from a peer's device: check them on the host before any kernel reads the
    // expert pointer table with them.
    s->ids.resize(r.num_rows);
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s->ids.data(), r.expert_ids, r.num_rows * 4,
                                              cudaMemcpyDeviceToHost, ctx.stream));
    DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx.stream));
    for (int64_t i = 0; i < r.num_rows; ++i) {
      if (s->ids[i] < 0 || s->ids[i] >= c.num_experts) {
        return absl::InvalidArgumentError(
            absl::StrCat("expert_ids[", i, "] = ", s->ids[i], " outside [0, ", c.num_experts, ")"));
      }
      if (!weights.HoldsExpert(r.layer, s->ids[i])) {
        return absl::InvalidArgumentError(absl::StrCat("expert_ids[", i, "] = ", s->ids[i],
                                                       ": this rank holds no weights for it in "
                                                       "layer ", r.layer));
      }
    }
    return s->rows.Enqueue(r.layer, r.hidden, r.expert_ids, r.num_rows, r.out, ctx.stream);
  });
}

}  // namespace dmoe::transport
