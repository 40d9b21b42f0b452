// gRPC adapter of an attention replica: AttentionService over an AttentionEngine. Handlers
// validate and convert, then hand the work to the replica's step thread; the reaction never
// blocks on compute (STYLE.md §7).
#ifndef DMOE_ATTENTION_SERVICE_ATTENTION_SERVER_H_
#define DMOE_ATTENTION_SERVICE_ATTENTION_SERVER_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
  void StartDraining() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Adds a successful step to positions_ and busy_seconds_.
  void CountWork(const std::vector<SegmentRequest>& segments, const StepTimings& timings);
  bool WorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }
  struct Work {
    std::function<void()> run;
    bool is_step = true;
  };
  // Queues work for the worker; false when `is_step` and max_queued_steps steps are queued.
  bool Post(std::function<void()> work, bool is_step = true) ABSL_LOCKS_EXCLUDED(mu_);

  AttentionServerOptions options_;
  AttentionEngine& engine_;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Gauge* sequences_ = nullptr;
  // Positions computed and the lane-seconds spent on them, expert round trips excluded: one
  // micro-batch's rate (`dmoe plan --attention-metrics`).
  prometheus::Counter* positions_ = nullptr;
  prometheus::Counter* busy_seconds_ = nullptr;
  absl::Mutex mu_;
  std::deque<Work> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_steps_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace dmoe::attention

#endif  // DMOE_ATTENTION_SERVICE_ATTENTION_SERVER_H_
