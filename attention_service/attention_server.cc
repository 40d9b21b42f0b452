#include "attention_service/attention_server.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "metrics/catalog.h"

namespace dmoe::attention {

absl::StatusOr<SegmentRequest> SegmentFromProto(const dmoe::v1::SegmentPlan& p, int index) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("segments[", index, "].", what));
  };
  const int64_t n = p.tokens_size();
  if (n == 0) return bad("tokens is empty");
  if (p.start() < 0) return bad("start must be >= 0");
  if (p.persist() < 0 || p.persist() > n) return bad("persist must be in [0, tokens]");
  if (p.logits_from() < 0 || p.logits_from() >= n) return bad("logits_from must be in [0, tokens)");
  if (p.attention_block() <= 0) return bad("attention_block must be >= 1");
  SegmentRequest s;
  s.sequence_id = p.sequence_id();
  s.reset_cache = p.reset_cache();
  s.plan.start = p.start();
  s.plan.tokens.assign(p.tokens().begin(), p.tokens().end());
  s.plan.persist = p.persist();
  s.plan.attention_block = p.attention_block();
  s.plan.logits_from = p.logits_from();
  s.plan.stream = p.stream();
  s.plan.sampling = {.temperature = p.sampling().temperature(),
                     .top_k = p.sampling().top_k(),
                     .top_p = p.sampling().top_p() == 0.0f ? 1.0f : p.sampling().top_p(),
                     .seed = p.sampling().seed()};
  if (absl::Status st = s.plan.sampling.Validate(); !st.ok()) {
    return bad(absl::StrCat("sampling: ", st.message()));
  }
  return s;
}

AttentionServer::AttentionServer(const AttentionServerOptions& options, AttentionEngine& engine)
    : options_(options), engine_(engine) {
  if (const metrics::ProcessMetrics& m = options_.metrics; m.registry) {
    step_seconds_ = &metrics::AddHistogram(
        metrics::HistogramFamily(*m.registry, "dmoe_attention_step_seconds", m.model_version),
        "dmoe_attention_step_seconds");
    sequences_ =
        &metrics::GaugeFamily(*m.registry, "dmoe_attention_sequences", m.model_version).Add({});
    positions_ =
        &metrics::CounterFamily(*m.registry, "dmoe_attention_positions_total", m.model_version)
             .Add({});
    busy_seconds_ = &metrics::CounterFamily(*m.registry, "dmoe_attention_busy_seconds_total",
                                            m.model_version)
                         .Add({});
  }
  worker_ = std::thread([this] { WorkerLoop(); });
}

AttentionServer::~AttentionServer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  worker_.join();
}

void AttentionServer::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool AttentionServer::Post(std::function<void()> work, bool is_step) {
  absl::MutexLock lock(&mu_);  // unlocking wakes the worker (WorkOrStopping)
  if (is_step && queued_steps_ >= options_.max_queued_steps) return false;
  queued_steps_ += is_step ? 1 : 0;
  queue_.push_back({std::move(work), is_step});
  return true;
}

void AttentionServer::CountWork(const std::vector<SegmentRequest>& segments,
                                const StepTimings& timings) {
  int64_t positions = 0;
  for (const SegmentRequest& s : segments) positions += static_cast<int64_t>(s.plan.tokens.size());
  positions_->Increment(static_cast<double>(positions));
  // Lane-seconds: the micro-batches run side by side, each busy for the step's time minus its
  // own wait for experts, so positions / busy is the rate of one lane (one thread's worth).
  const double lane_seconds = timings.forward_seconds * std::max(1, timings.lanes);
  busy_seconds_->Increment(std::max(0.0, lane_seconds - timings.expert_seconds));
}

void AttentionServer::WorkerLoop() {
  for (;;) {
    Work work;
    {
      absl::MutexLock lock(&mu_, absl::Condition(this, &AttentionServer::WorkOrStopping));
      if (queue_.empty()) return;  // stopping and drained
      work = std::move(queue_.front());
      queue_.pop_front();
      queued_steps_ -= work.is_step ? 1 : 0;
    }
    work.run();
  }
}

grpc::ServerUnaryReactor* AttentionServer::Step(grpc::CallbackServerContext* context,
                                                const dmoe::v1::StepRequest* request,
                                                dmoe::v1::StepResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "attention replica is draining"));
      return reactor;
    }
  }
  auto segments = std::make_shared<std::vector<SegmentRequest>>();
  for (int i = 0; i < request->segments_size(); ++i) {
    auto s = SegmentFromProto(request->segments(i), i);
    if (!s.ok()) {
      reactor->Finish(ToGrpcStatus(s.status()));
      return reactor;
    }
    segments->push_back(*std::move(s));
  }
  const bool posted = Post([this, context, reactor, segments, response] {
    if (context->IsCancelled()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "step cancelled by the caller"));
      return;
    }
    StepTimings timings;
    const absl::Time start = absl::Now();
    auto proposals = engine_.Step(*segments, &timings, absl::FromChrono(context->deadline()));
    if (step_seconds_) {
      step_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - start));
      sequences_->Set(static_cast<double>(engine_.Info().sequences));
      if (proposals.ok()) CountWork(*segments, timings);
    }
    if (!proposals.ok()) {
      // Tells the scheduler the fault is an expert shard's, not this replica's.
      if (timings.expert_failure) context->AddTrailingMetadata("dmoe-fault", "experts");
      reactor->Finish(ToGrpcStatus(proposals.status()));
      return;
    }
    for (size_t i = 0; i < segments->size(); ++i) {
      dmoe::v1::SegmentProposal* p = response->add_proposals();
      p->set_sequence_id((*segments)[i].sequence_id);
      p->mutable_tokens()->Add((*proposals)[i].tokens.begin(), (*proposals)[i].tokens.end());
      p->mutable_confidence()->Add((*proposals)[i].confidence.begin(),
                                   (*proposals)[i].confidence.end());
    }
    response->set_forward_seconds(timings.forward_seconds);
    response->set_expert_seconds(timings.expert_seconds);
    reactor->Finish(grpc::Status::OK);
  });
  if (!posted) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "attention replica step queue is full"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServer::Release(grpc::CallbackServerContext* context,
                                                   const dmoe::v1::ReleaseRequest* request,
                                                   dmoe::v1::ReleaseResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::vector<std::string> ids(request->sequence_ids().begin(), request->sequence_ids().end());
  // Release waits for a running step, so it too goes through the step thread; it is never
  // refused (max_queued_steps bounds steps only): a dropped Release would leak KV pages, and
  // a burst of them (a whole batch finishing) must not push the next Step out of the queue.
  if (!Post(
          [this, reactor, ids, response] {
            response->set_released(engine_.Release(ids));
            reactor->Finish(grpc::Status::OK);
          },
          /*is_step=*/false)) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue is full"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServer::GetInfo(grpc::CallbackServerContext* context,
                                                   const dmoe::v1::GetAttentionInfoRequest*,
                                                   dmoe::v1::GetAttentionInfoResponse* response) {
  const model::ModelConfig& c = engine_.model().config();
  AttentionInfo info = engine_.Info();
  response->set_model_name(options_.model_name);
  response->set_model_type(c.model_type);
  response->set_vocab_size(c.vocab_size);
  response->set_max_position_embeddings(c.max_position_embeddings);
  response->set_kv_page_tokens(engine_.options().kv_page_tokens);
  response->set_kv_pages_total(info.kv_pages_total);
  response->set_kv_pages_used(info.kv_pages_used);
  response->set_sequences(info.sequences);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace dmoe::attention
