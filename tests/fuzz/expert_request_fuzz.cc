// The expert shard's RunExperts request checks on an arbitrary serialized RunExpertsRequest
// (what reaches its internal port): the tensors are viewed as ExpertServer does, then
// ExpertEngine::Validate against the tiny model's shard (models/tiny-diffusion, all experts),
// and an accepted request of at most 64 rows is computed with ExpertEngine::Run.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "expert_service/expert_engine.h"
#include "google/protobuf/stubs/logging.h"
#include "proto/dmoe/v1/expert.pb.h"

namespace {

// As ToView in expert_service/expert_server.cc.
dmoe::expert::TensorView ToView(const dmoe::v1::Tensor& tensor) {
  dmoe::expert::TensorView view;
  view.dtype = static_cast<dmoe::expert::WireDType>(tensor.dtype());
  view.shape.assign(tensor.shape().begin(), tensor.shape().end());
  view.data = tensor.data().data();
  view.size_bytes = tensor.data().size();
  return view;
}

dmoe::expert::ExpertEngine& TheShard() {
  static dmoe::expert::ExpertEngine* shard = [] {
    dmoe::expert::ExpertEngineOptions options;
    options.model_dir = std::string(DMOE_SOURCE_DIR) + "/models/tiny-diffusion";
    auto engine = dmoe::expert::ExpertEngine::Create(options);
    if (!engine.ok()) {
      std::cerr << engine.status() << "\n";
      std::abort();
    }
    return engine->release();
  }();
  return *shard;
}

}  // namespace

// Invalid UTF-8 in string fields is an ordinary parse failure here; don't log each one.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dmoe::expert::ExpertEngine& shard = TheShard();
  dmoe::v1::RunExpertsRequest proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return 0;
  dmoe::expert::ExpertRequest request;
  request.request_id = proto.request_id();
  request.step = proto.step();
  request.layer = proto.layer();
  request.placement_version = proto.placement_version();
  request.hidden = ToView(proto.hidden());
  request.expert_ids = ToView(proto.expert_ids());
  auto rows = shard.Validate(request);
  if (!rows.ok() || *rows > 64) return 0;
  std::vector<float> out(static_cast<size_t>(*rows * shard.config().hidden_size));
  const absl::Status status = shard.Run(request, absl::InfiniteFuture(), out.data());
  if (!status.ok()) {
    std::cerr << "Run failed after Validate accepted the request: " << status << "\n";
    std::abort();
  }
  return 0;
}
