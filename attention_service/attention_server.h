// gRPC adapter of an attention replica: AttentionService over an AttentionEngine. Handlers
// validate and convert, then hand the work to the replica's step thread; the reaction never
// blocks on compute (STYLE.md §7).
#ifndef DMOE_ATTENTION_SERVICE_ATTENTION_SERVER_H_
#define DMOE_ATTENTION_SERVICE_ATTENTION_SERVER_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "attention_service/attention_engine.h"
#include "metrics/endpoint.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "proto/dmoe/v1/attention.grpc.pb.h"

namespace dmoe::attention {

// Converts one proto segment to the engine's form. INVALID_ARGUMENT naming the field.
absl::StatusOr<SegmentRequest> SegmentFromProto(const dmoe::v1::SegmentPlan& proto, int index);

struct AttentionServerOptions {
  std::string model_name;
  size_t max_queued_steps = 16;  // past this, Step answers RESOURCE_EXHAUSTED
  // dmoe_attention_step_seconds and dmoe_attention_sequences; null registry: none.
  metrics::ProcessMetrics metrics{};
};

// Thread-safe.
class AttentionServer final : public dmoe::v1::AttentionService::CallbackService {
 public:
  AttentionServer(const AttentionServerOptions& options, AttentionEngine& engine);
  ~AttentionServer() override;

  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context,
                                 const dmoe::v1::StepRequest* request,
                                 dmoe::v1::StepResponse* response) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const dmoe::v1::ReleaseRequest* request,
                                    dmoe::v1::ReleaseResponse* response) override;
  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* context,
                                    const dmoe::v1::GetAttentionInfoRequest* request,
                                    dmoe::v1::GetAttentionInfoResponse* response) override;

  // New Steps answer UNAVAILABLE; queued ones still run.
  void StartDraining();

 private:
  void WorkerLoop();
  struct Work {
    std::function<void()> run;
    bool is_step = true;
  };
  // Queues work for the worker; false when `is_step` and max_queued_steps steps are queued.
  bool Post(std::function<void()> work, bool is_step = true);

  AttentionServerOptions options_;
  AttentionEngine& engine_;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Gauge* sequences_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Work> queue_;                   // guarded by mu_
  size_t queued_steps_ = 0;                  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  bool draining_ = false;                    // guarded by mu_
  std::thread worker_;
};

}  // namespace dmoe::attention

#endif  // DMOE_ATTENTION_SERVICE_ATTENTION_SERVER_H_
