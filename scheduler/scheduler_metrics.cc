#include "scheduler/scheduler_metrics.h"

#include <string>

#include "metrics/catalog.h"
#include "metrics/grpc_metrics.h"

namespace dmoe::scheduler {
namespace {

using metrics::AddHistogram;

prometheus::Gauge& Gauge(const metrics::ProcessMetrics& m, const char* name) {
  return metrics::GaugeFamily(*m.registry, name, m.model_version).Add({});
}
prometheus::Counter& Counter(const metrics::ProcessMetrics& m, const char* name) {
  return metrics::CounterFamily(*m.registry, name, m.model_version).Add({});
}
prometheus::Histogram& Histogram(const metrics::ProcessMetrics& m, const char* name) {
  return AddHistogram(metrics::HistogramFamily(*m.registry, name, m.model_version), name);
}

}  // namespace

SchedulerMetrics::SchedulerMetrics(const metrics::ProcessMetrics& m)
    : metrics_(m),
      running_(Gauge(m, "dmoe_num_requests_running")),
      waiting_(Gauge(m, "dmoe_num_requests_waiting")),
      finished_(metrics::CounterFamily(*m.registry, "dmoe_requests_finished_total",
                                       m.model_version)),
      rejected_(metrics::CounterFamily(*m.registry, "dmoe_requests_rejected_total",
                                       m.model_version)),
      time_to_first_block_(Histogram(m, "dmoe_time_to_first_block_seconds")),
      inter_block_(Histogram(m, "dmoe_inter_block_latency_seconds")),
      e2e_(Histogram(m, "dmoe_e2e_request_latency_seconds")),
      queue_time_(Histogram(m, "dmoe_request_queue_time_seconds")),
      prompt_tokens_(Counter(m, "dmoe_prompt_tokens_total")),
      generation_tokens_(Counter(m, "dmoe_generation_tokens_total")),
      forwards_(Counter(m, "dmoe_forwards_total")),
      tokens_edited_(Counter(m, "dmoe_tokens_edited_total")),
      tokens_remasked_(Counter(m, "dmoe_tokens_remasked_total")),
      tokens_per_forward_(Histogram(m, "dmoe_tokens_per_forward")),
      steps_per_block_(Histogram(m, "dmoe_denoise_steps_per_block")),
      iterations_(Counter(m, "dmoe_iterations_total")),
      iteration_sequences_(Histogram(m, "dmoe_iteration_sequences")),
      iteration_tokens_(Histogram(m, "dmoe_iteration_tokens")),
      iteration_seconds_(Histogram(m, "dmoe_iteration_duration_seconds")),
      kv_used_(Gauge(m, "dmoe_kv_cache_pages_used")),
      kv_capacity_(Gauge(m, "dmoe_kv_cache_pages_capacity")),
      kv_usage_(Gauge(m, "dmoe_kv_cache_usage_perc")),
      journal_records_(
          metrics::CounterFamily(*m.registry, "dmoe_journal_records_total", m.model_version)) {
  // Series users alert on exist from the start, at zero.
  for (const char* reason : {"stop", "length", "cancelled", "deadline", "error"}) {
    finished_.Add({{"finished_reason", reason}});
  }
}

void SchedulerMetrics::OnRejected(absl::StatusCode code) {
  rejected_.Add({{"grpc_code", metrics::GrpcCodeName(static_cast<int>(code))}}).Increment();
}

void SchedulerMetrics::OnAdmitted(int64_t prompt_tokens, double queue_seconds) {
  prompt_tokens_.Increment(static_cast<double>(prompt_tokens));
  queue_time_.Observe(queue_seconds);
}

void SchedulerMetrics::OnCommitted(int64_t tokens, int64_t forwards, bool first,
                                   double since_previous) {
  generation_tokens_.Increment(static_cast<double>(tokens));
  steps_per_block_.Observe(static_cast<double>(forwards));
  (first ? time_to_first_block_ : inter_block_).Observe(since_previous);
}

void SchedulerMetrics::OnEdited(int64_t edits, int64_t remasks) {
  tokens_edited_.Increment(static_cast<double>(edits));
  tokens_remasked_.Increment(static_cast<double>(remasks));
}

void SchedulerMetrics::OnFinished(const char* finished_reason, double seconds,
                                  double tokens_per_forward) {
  finished_.Add({{"finished_reason", finished_reason}}).Increment();
  const std::string reason = finished_reason;
  if (reason == "stop" || reason == "length") {
    e2e_.Observe(seconds);
    tokens_per_forward_.Observe(tokens_per_forward);
  }
}

void SchedulerMetrics::OnIteration(int64_t sequences, int64_t tokens, double seconds) {
  iterations_.Increment();
  forwards_.Increment(static_cast<double>(sequences));
  iteration_sequences_.Observe(static_cast<double>(sequences));
  iteration_tokens_.Observe(static_cast<double>(tokens));
  iteration_seconds_.Observe(seconds);
}

void SchedulerMetrics::SetState(int64_t running, int64_t waiting, int64_t kv_pages_used,
                                int64_t kv_pages_capacity) {
  running_.Set(static_cast<double>(running));
  waiting_.Set(static_cast<double>(waiting));
  kv_used_.Set(static_cast<double>(kv_pages_used));
  kv_capacity_.Set(static_cast<double>(kv_pages_capacity));
  kv_usage_.Set(kv_pages_capacity > 0 ? static_cast<double>(kv_pages_used) /
                                            static_cast<double>(kv_pages_capacity)
                                      : 0.0);
}

void SchedulerMetrics::ObserveJournal(RequestJournalOptions& journal) {
  if (!journal_enabled_.load()) {
    for (const char* type : {"accept", "commit", "end"}) journal_records_.Add({{"type", type}});
    journal_bytes_ = &Counter(metrics_, "dmoe_journal_bytes_total");
    journal_fsync_ = &Histogram(metrics_, "dmoe_journal_fsync_seconds");
    resumed_ = &Counter(metrics_, "dmoe_requests_resumed_total");
    reattached_ = &Counter(metrics_, "dmoe_requests_reattached_total");
    journal_enabled_.store(true);
  }
  journal.on_record = [this](const char* type, int64_t bytes) { OnJournalRecord(type, bytes); };
  journal.on_sync = [this](absl::Duration took) { OnJournalSync(absl::ToDoubleSeconds(took)); };
}

void SchedulerMetrics::OnJournalRecord(const char* type, int64_t bytes) {
  if (!journal_enabled_.load()) return;
  journal_records_.Add({{"type", type}}).Increment();
  journal_bytes_->Increment(static_cast<double>(bytes));
}

void SchedulerMetrics::OnJournalSync(double seconds) {
  if (journal_enabled_.load()) journal_fsync_->Observe(seconds);
}

void SchedulerMetrics::OnResumed() {
  if (journal_enabled_.load()) resumed_->Increment();
}

void SchedulerMetrics::OnReattached() {
  if (journal_enabled_.load()) reattached_->Increment();
}

}  // namespace dmoe::scheduler
