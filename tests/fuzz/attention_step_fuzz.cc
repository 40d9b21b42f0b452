// The attention replica's Step on an arbitrary serialized StepRequest (what reaches its
// internal port): SegmentFromProto for every segment and ValidateSegments, as
// AttentionServer::Step does, then the accepted batch runs through AttentionEngine::Step on the
// tiny model (models/tiny-diffusion, CPU kernels, in-process experts): token ids, positions,
// persist/logits ranges and sampling knobs all come from the input. Steps over 256 tokens in
// all are only validated (speed). Every sequence is released after each input, so an input
// reproduces on its own.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "attention_service/attention_engine.h"
#include "attention_service/attention_server.h"
#include "engine/engine.h"
#include "google/protobuf/stubs/logging.h"
#include "model/expert_executor.h"
#include "proto/dmoe/v1/attention.pb.h"

namespace {

struct Replica {
  std::unique_ptr<dmoe::engine::Engine> engine;
  std::unique_ptr<dmoe::attention::AttentionEngine> attention;
};

Replica& TheReplica() {
  static Replica* replica = [] {
    auto* r = new Replica;
    auto engine = dmoe::engine::Engine::Create(
        {.model_dir = std::string(DMOE_SOURCE_DIR) + "/models/tiny-diffusion", .num_threads = 1});
    if (!engine.ok()) {
      std::cerr << engine.status() << "\n";
      std::abort();
    }
    r->engine = *std::move(engine);
    const dmoe::model::Model& model = r->engine->model();
    auto attention = dmoe::attention::AttentionEngine::Create(
        {.num_threads = 1, .kv_max_pages = 64}, model, [&model](dmoe::model::Kernels& k) {
          return std::make_unique<dmoe::model::LocalExpertExecutor>(model.weights(), k);
        });
    if (!attention.ok()) {
      std::cerr << attention.status() << "\n";
      std::abort();
    }
    r->attention = *std::move(attention);
    return r;
  }();
  return *replica;
}

}  // namespace

// Invalid UTF-8 in string fields is an ordinary parse failure here; don't log each one.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Replica& replica = TheReplica();
  dmoe::v1::StepRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<dmoe::attention::SegmentRequest> segments;
  std::vector<std::string> ids;
  size_t tokens = 0;
  for (int i = 0; i < request.segments_size(); ++i) {
    auto segment = dmoe::attention::SegmentFromProto(request.segments(i), i);
    if (!segment.ok()) return 0;
    tokens += segment->plan.tokens.size();
    ids.push_back(segment->sequence_id);
    segments.push_back(*std::move(segment));
  }
  if (!dmoe::attention::ValidateSegments(segments).ok()) return 0;
  if (tokens > 256) return 0;
  auto proposals = replica.attention->Step(segments);
  if (proposals.ok() && proposals->size() != segments.size()) std::abort();
  replica.attention->Release(ids);
  return 0;
}
