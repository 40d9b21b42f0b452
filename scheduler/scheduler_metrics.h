// The scheduler's Prometheus series (metrics/catalog.cc, role "scheduler"): requests, latency,
// tokens, forwards, TPF, denoising steps per block, batches and KV use. The scheduler calls
// these from its step thread and from Submit; every method is thread-safe and cheap.
#ifndef DMOE_SCHEDULER_SCHEDULER_METRICS_H_
#define DMOE_SCHEDULER_SCHEDULER_METRICS_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "metrics/endpoint.h"
#include "scheduler/request_journal.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"

namespace dmoe::scheduler {

class SchedulerMetrics {
 public:
  explicit SchedulerMetrics(const metrics::ProcessMetrics& metrics);

  void OnRejected(absl::StatusCode code);
  void OnAdmitted(int64_t prompt_tokens, double queue_seconds);
  // A request committed `tokens` new final ids (a block in diffusion mode, one id in AR mode)
  // `forwards` forwards after its previous commit (or admission). `since_previous` is the time
  // since its previous commit, or since submission for the first one (`first`).
  void OnCommitted(int64_t tokens, int64_t forwards, bool first, double since_previous);
  // A request ended. `finished_reason`: stop, length, cancelled, deadline or error.
  // e2e and TPF are observed only for stop / length.
  void OnFinished(const char* finished_reason, double seconds, double tokens_per_forward);
  // A request that ended successfully made `edits` token edits (LLaDA2.1 T2T rewrites), of
  // which `remasks` turned a token back into the mask.
  void OnEdited(int64_t edits, int64_t remasks);
  void OnIteration(int64_t sequences, int64_t tokens, double seconds);
  void SetState(int64_t running, int64_t waiting, int64_t kv_pages_used,
                int64_t kv_pages_capacity);

  // Creates the journal's series (at zero; a scheduler without a journal has none) and points
  // `journal`'s observers at them. Until then the calls below are ignored.
  void ObserveJournal(RequestJournalOptions& journal);
  // An appended record ("accept", "commit" or "end") of `bytes`; one fdatasync.
  void OnJournalRecord(const char* type, int64_t bytes);
  void OnJournalSync(double seconds);
  // A request resumed from the journal on start; a call that re-attached to a request.
  void OnResumed();
  void OnReattached();

 private:
  metrics::ProcessMetrics metrics_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Histogram& time_to_first_block_;
  prometheus::Histogram& inter_block_;
  prometheus::Histogram& e2e_;
  prometheus::Histogram& queue_time_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& forwards_;
  prometheus::Counter& tokens_edited_;
  prometheus::Counter& tokens_remasked_;
  prometheus::Histogram& tokens_per_forward_;
  prometheus::Histogram& steps_per_block_;
  prometheus::Counter& iterations_;
  prometheus::Histogram& iteration_sequences_;
  prometheus::Histogram& iteration_tokens_;
  prometheus::Histogram& iteration_seconds_;
  prometheus::Gauge& kv_used_;
  prometheus::Gauge& kv_capacity_;
  prometheus::Gauge& kv_usage_;
  // Set by ObserveJournal.
  std::atomic<bool> journal_enabled_{false};
  prometheus::Family<prometheus::Counter>& journal_records_;
  prometheus::Counter* journal_bytes_ = nullptr;
  prometheus::Histogram* journal_fsync_ = nullptr;
  prometheus::Counter* resumed_ = nullptr;
  prometheus::Counter* reattached_ = nullptr;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_SCHEDULER_METRICS_H_
