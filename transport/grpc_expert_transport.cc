#include "transport/grpc_expert_transport.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/internal_credentials.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/dmoe/v1/expert.grpc.pb.h"
#include "proto/dmoe/v1/expert.pb.h"

namespace dmoe::transport {
namespace {

// absl and gRPC share the google.rpc.Code numbering.
absl::Status FromGrpcStatus(const grpc::Status& status, const std::string& address,
                            const std::string& what) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(address, ": ", what, ": ", status.error_message()));
}

void SetDeadline(grpc::ClientContext& context, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture()) context.set_deadline(absl::ToChronoTime(deadline));
}

}  // namespace

class GrpcExpertTransport::Stub {
 public:
  explicit Stub(const std::shared_ptr<grpc::Channel>& channel)
      : stub(v1::ExpertService::NewStub(channel)) {}
  std::unique_ptr<v1::ExpertService::Stub> stub;
};

absl::Status GrpcExpertTransportOptions::Validate() const {
  if (target.empty()) return absl::InvalidArgumentError("target: must not be empty");
  if (max_message_bytes < 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: ", max_message_bytes, " is below 1024"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GrpcExpertTransport>> GrpcExpertTransport::Create(
    const GrpcExpertTransportOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  auto channel =
      CreateInternalChannel(options.target, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("target: cannot create a channel to '", options.target, "'"));
  }
  return std::make_unique<GrpcExpertTransport>(std::move(channel), options.target);
}

GrpcExpertTransport::GrpcExpertTransport(std::shared_ptr<grpc::Channel> channel,
                                         std::string address)
    : address_(std::move(address)), stub_(std::make_unique<Stub>(channel)) {}

GrpcExpertTransport::~GrpcExpertTransport() = default;

absl::Status GrpcExpertTransport::RunExperts(const ExpertRows& rows, absl::Time deadline,
                                             float* out) {
  const size_t hidden_bytes = static_cast<size_t>(rows.num_rows * rows.hidden_size) * sizeof(float);
  v1::RunExpertsRequest request;
  request.set_request_id(rows.request_id);
  request.set_step(rows.step);
  request.set_layer(rows.layer);
  request.set_placement_version(rows.placement_version);
  v1::Tensor* hidden = request.mutable_hidden();
  hidden->set_dtype(v1::DTYPE_F32);
  hidden->add_shape(rows.num_rows);
  hidden->add_shape(rows.hidden_size);
  hidden->mutable_data()->assign(reinterpret_cast<const char*>(rows.hidden), hidden_bytes);
  v1::Tensor* ids = request.mutable_expert_ids();
  ids->set_dtype(v1::DTYPE_I32);
  ids->add_shape(rows.num_rows);
  ids->mutable_data()->assign(reinterpret_cast<const char*>(rows.expert_ids),
                              static_cast<size_t>(rows.num_rows) * sizeof(int32_t));

  grpc::ClientContext context;
  SetDeadline(context, deadline);
  v1::RunExpertsResponse response;
  const std::string what = absl::StrCat("RunExperts layer ", rows.layer);
  grpc::Status status = stub_->stub->RunExperts(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, address_, what);

  const v1::Tensor& output = response.output();
  const bool shape_ok = output.shape_size() == 2 && output.shape(0) == rows.num_rows &&
                        output.shape(1) == rows.hidden_size;
  if (output.dtype() != v1::DTYPE_F32 || !shape_ok || output.data().size() != hidden_bytes) {
    return absl::InternalError(absl::StrCat(
        address_, ": ", what, ": response output is ", v1::DType_Name(output.dtype()), " [",
        absl::StrJoin(output.shape(), ", "), "] with ", output.data().size(),
        " bytes, expected DTYPE_F32 [", rows.num_rows, ", ", rows.hidden_size, "]"));
  }
  if (hidden_bytes > 0) std::memcpy(out, output.data().data(), hidden_bytes);
  return absl::OkStatus();
}

absl::StatusOr<ShardInfo> GrpcExpertTransport::GetShardInfo(absl::Time deadline) {
  grpc::ClientContext context;
  SetDeadline(context, deadline);
  v1::GetShardInfoResponse response;
  grpc::Status status = stub_->stub->GetShardInfo(&context, v1::GetShardInfoRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status, address_, "GetShardInfo");
  ShardInfo info;
  info.model_name = response.model_name();
  info.model_type = response.model_type();
  info.hidden_size = response.hidden_size();
  info.num_hidden_layers = response.num_hidden_layers();
  info.first_moe_layer = response.first_moe_layer();
  info.num_experts = response.num_experts();
  info.num_experts_per_tok = response.num_experts_per_tok();
  info.moe_intermediate_size = response.moe_intermediate_size();
  info.expert_first = response.expert_first();
  info.expert_last = response.expert_last();
  info.weight_dtype = response.weight_dtype();
  info.config_fingerprint = response.config_fingerprint();
  return info;
}

}  // namespace dmoe::transport
