#include "scheduler/scheduler.h"
#include "scheduler/scheduler_metrics.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/generation_params.h"

namespace dmoe::scheduler {
namespace {
// The executor's key for a request's sequence.
std::string SequenceId(RequestHandle handle) { return absl::StrCat("r", handle); }

// What makes two submissions with one request id the same request: prompt and params.
std::string Fingerprint(const std::string& id, const std::vector<int32_t>& prompt,
                        const engine::GenerationParams& params) {
  JournaledRequest r;
  r.request_id = id;
  r.prompt = prompt;
  r.params = params;
  return internal::EncodeAccept(r);
}
}  // namespace

struct Scheduler::Entry {
  explicit Entry(engine::Sequence s) : sequence(std::move(s)) {}

  RequestHandle handle = 0;
  std::string request_id;
  engine::Sequence sequence;
  int64_t pages = 0;                 // KV page estimate, reserved while admitted
  absl::Time deadline = absl::InfiniteFuture();
  RequestCallbacks callbacks;
  absl::Time submitted;
  absl::Time admitted;
  absl::Time first_tokens = absl::InfinitePast();
  bool admitted_flag = false;        // holds a KV reservation
  bool reset_cache = false;          // the next plan re-prefills (the executor lost the cache)
  int64_t admission_seq = 0;
  int64_t last_scheduled_step = -1;
  int64_t emitted = 0;               // ids passed to on_tokens (or journalled) so far
  RequestHandle caller = 0;          // the attached caller's handle (Cancel, Detach); 0: none
  absl::Time detached_since = absl::InfiniteFuture();
  // Journal only.
  bool journaled = false;
  std::string fingerprint;
  int64_t produced = 0;              // ids taken from the sequence (a resumed one replays)
  std::vector<int32_t> committed;    // the ids committed so far (emitted of them)
  std::vector<float> committed_logprobs;
  bool replay_mismatch_logged = false;
  std::optional<int64_t> stopped_at;  // on_tokens ended it here (a stop string matched)
  absl::Time last_commit;            // when on_tokens last ran (metrics)
  int64_t forwards_at_commit = 0;    // sequence.forwards() then
};

absl::Status SchedulerOptions::Validate() const {
  auto at_least_one = [](const char* field, int64_t value) {
    return value >= 1 ? absl::OkStatus()
                      : absl::InvalidArgumentError(
                            absl::StrCat(field, " must be >= 1, got ", value));
  };
  // Each bound must let at least one request make progress.
  DMOE_RETURN_IF_ERROR(at_least_one("max_batch_tokens", max_batch_tokens));
  DMOE_RETURN_IF_ERROR(at_least_one("max_batch_sequences", max_batch_sequences));
  DMOE_RETURN_IF_ERROR(at_least_one("max_running", max_running));
  // Requests reach the batch through the queue (admission happens at step boundaries), so a
  // zero-length queue would refuse everything.
  DMOE_RETURN_IF_ERROR(at_least_one("max_queue", max_queue));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerOptions& options,
                                                             const model::ModelConfig& config,
                                                             StepExecutor& executor) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto scheduler = std::unique_ptr<Scheduler>(new Scheduler(options, config, executor));
  if (options.journal) scheduler->ResumeFromJournal();
  if (options.start_step_thread) scheduler->thread_ = std::thread([s = scheduler.get()] { s->Loop(); });
  return scheduler;
}

Scheduler::Scheduler(const SchedulerOptions& options, const model::ModelConfig& config,
                     StepExecutor& executor)
    : options_(options), config_(config), executor_(executor) {}

Scheduler::~Scheduler() { Stop(); }

absl::Time Scheduler::Now() const { return options_.clock ? options_.clock() : absl::Now(); }

int64_t Scheduler::PagesNeeded(const SchedulerRequest& request) const {
  const int64_t page = options_.kv_page_tokens;
  const int64_t block =
      request.params.mode == engine::DecodeMode::kDiffusion ? request.params.block_length : 0;
  const int64_t tokens =
      static_cast<int64_t>(request.prompt.size()) + request.params.max_new_tokens + block;
  return (tokens + page - 1) / page;
}

absl::Status Scheduler::ValidateRequest(const SchedulerRequest& request) const {
  const model::ModelConfig& config = config_;
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    const int32_t id = request.prompt[i];
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: token id ", id, " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  DMOE_RETURN_IF_ERROR(request.params.Validate(config.vocab_size));
  DMOE_RETURN_IF_ERROR(engine::CheckFitsContext(static_cast<int64_t>(request.prompt.size()),
                                                request.params.max_new_tokens, config));
  const int64_t pages = PagesNeeded(request);
  const int64_t capacity = executor_.KvPagesCapacity();
  // capacity 0 is a cluster between attention replicas: the request waits (unavailable_grace).
  if (capacity > 0 && pages > capacity) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs ", pages, " KV pages of ", options_.kv_page_tokens,
        " tokens (prompt + max_new_tokens + block_length) but the KV cache holds ", capacity));
  }
  return absl::OkStatus();
}

absl::StatusOr<RequestHandle> Scheduler::Submit(SchedulerRequest request) {
  absl::StatusOr<RequestHandle> handle = Enqueue(std::move(request));
  if (!handle.ok() && options_.metrics) options_.metrics->OnRejected(handle.status().code());
  return handle;
}

absl::StatusOr<RequestHandle> Scheduler::Enqueue(SchedulerRequest request) {
  DMOE_RETURN_IF_ERROR(ValidateRequest(request));
  const int64_t pages = PagesNeeded(request);
  const bool journaled = options_.journal != nullptr && !request.request_id.empty();
  JournaledRequest accepted;
  if (journaled) {
    accepted.request_id = request.request_id;
    accepted.prompt = request.prompt;
    accepted.params = request.params;
    accepted.deadline = request.deadline;
  }
  DMOE_ASSIGN_OR_RETURN(engine::Sequence sequence,
                        engine::Sequence::Create(std::move(request.prompt), request.params));
  auto entry = std::make_unique<Entry>(std::move(sequence));
  entry->request_id = request.request_id;
  entry->pages = pages;
  entry->deadline = request.deadline;
  entry->submitted = Now();
  entry->journaled = journaled;
  if (journaled) {
    entry->fingerprint = Fingerprint(accepted.request_id, accepted.prompt, accepted.params);
  }

  // Journal only: the lookup, the accept record and the queueing under one lock, so two calls
  // with one id never start two requests.
  absl::MutexLock lock(&mu_);
  if (journaled && !stopping_) {
    DMOE_ASSIGN_OR_RETURN(std::optional<RequestHandle> attached,
                          ReattachLocked(request, entry->fingerprint));
    if (attached) return *attached;
  }
  if (draining_ || stopping_) {
    return absl::UnavailableError("the scheduler is draining and accepts no new requests");
  }
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_queue,
        " requests wait for KV capacity); retry later"));
  }
  if (journaled) {
    absl::Status written = options_.journal->Accept(accepted);
    if (!written.ok()) {
      DMOE_LOG(ERROR) << "journal: " << written;
      return absl::UnavailableError(absl::StrCat(
          "the scheduler cannot journal the request (", written.message(), "); retry later"));
    }
  }
  entry->callbacks = std::move(request.callbacks);
  entry->handle = next_handle_++;
  entry->caller = entry->handle;
  const RequestHandle handle = entry->handle;
  if (journaled) by_id_[entry->request_id] = {handle, entry->fingerprint};
  waiting_.push_back(std::move(entry));
  ++in_flight_;
  return handle;
}

absl::StatusOr<std::optional<RequestHandle>> Scheduler::ReattachLocked(
    SchedulerRequest& request, const std::string& fingerprint) {
  const std::string* existing = nullptr;
  if (auto it = by_id_.find(request.request_id); it != by_id_.end()) {
    existing = &it->second.second;
  } else if (auto r = retained_.find(request.request_id); r != retained_.end()) {
    existing = &r->second.fingerprint;
  } else {
    return std::nullopt;
  }
  if (*existing != fingerprint) {
    return absl::AlreadyExistsError(absl::StrCat(
        "request_id: '", request.request_id,
        "' names a request with another prompt or other parameters; use a new id"));
  }
  Attach attach;
  attach.caller = next_handle_++;
  attach.request_id = request.request_id;
  attach.callbacks = std::move(request.callbacks);
  const RequestHandle caller = attach.caller;
  attaches_.push_back(std::move(attach));
  ++in_flight_;
  ++reattached_;
  if (options_.metrics) options_.metrics->OnReattached();
  return caller;
}

void Scheduler::ResumeFromJournal() {
  const absl::Time now = Now();
  for (const JournaledRequest& r : options_.journal->recovered()) {
    SchedulerRequest request;
    request.request_id = r.request_id;
    request.prompt = r.prompt;
    request.params = r.params;
    request.deadline = r.deadline;
    absl::Status valid = ValidateRequest(request);
    absl::StatusOr<engine::Sequence> sequence =
        valid.ok() ? engine::Sequence::Create(r.prompt, r.params)
                   : absl::StatusOr<engine::Sequence>(valid);
    if (!sequence.ok()) {
      DMOE_LOG(WARNING) << "journal: request '" << r.request_id
                        << "' cannot be resumed: " << sequence.status();
      if (absl::Status ended = options_.journal->End(r.request_id); !ended.ok()) {
        DMOE_LOG(ERROR) << "journal: " << ended;
      }
      continue;
    }
    auto entry = std::make_unique<Entry>(*std::move(sequence));
    entry->request_id = r.request_id;
    entry->pages = PagesNeeded(request);
    entry->deadline = r.deadline;
    entry->submitted = now;
    entry->detached_since = now;
    entry->journaled = true;
    entry->fingerprint = Fingerprint(r.request_id, r.prompt, r.params);
    entry->committed = r.ids;
    entry->committed_logprobs = r.logprobs;
    entry->emitted = static_cast<int64_t>(r.ids.size());
    absl::MutexLock lock(&mu_);
    entry->handle = next_handle_++;
    by_id_[entry->request_id] = {entry->handle, entry->fingerprint};
    waiting_.push_back(std::move(entry));
    ++in_flight_;
    ++resumed_;
    if (options_.metrics) options_.metrics->OnResumed();
  }
  absl::MutexLock lock(&mu_);
  if (resumed_ > 0) {
    DMOE_LOG(INFO) << "journal " << options_.journal->options().path << ": resuming " << resumed_
                   << " unfinished request(s); each waits up to "
                   << options_.detached_grace << " for its client to re-attach";
  }
}

void Scheduler::RetainLocked(const Entry& e, const absl::StatusOr<RequestResult>& result,
                             absl::Time now) {
  while (!retained_order_.empty() &&
         (static_cast<int64_t>(retained_.size()) >= options_.max_retained ||
          now - retained_order_.front().second > options_.retention)) {
    auto it = retained_.find(retained_order_.front().first);
    if (it != retained_.end() && it->second.ended == retained_order_.front().second) {
      retained_.erase(it);
    }
    retained_order_.pop_front();
  }
  // Only results: a request that failed or was cancelled starts again when sent again.
  if (!result.ok() || options_.max_retained <= 0) return;
  retained_[e.request_id] = Retained{*result, e.fingerprint, now};
  retained_order_.emplace_back(e.request_id, now);
}

// A. Callers that re-attached to (or detached from) a request since the last step. A new caller
// first gets every id committed so far; its stop strings may end the request right here.
int64_t Scheduler::ProcessAttachments(absl::Time now) {
  std::vector<Attach> attaches;
  absl::flat_hash_set<RequestHandle> detached;
  {
    absl::MutexLock lock(&mu_);
    attaches.swap(attaches_);
    detached.swap(detached_);
  }
  if (attaches.empty() && detached.empty()) return 0;
  // Entries leave running_ and waiting_ only on this thread, so the pointers stay valid.
  auto find = [&](auto&& match) -> Entry* {
    for (auto& e : running_) {
      if (match(*e)) return e.get();
    }
    absl::MutexLock lock(&mu_);
    for (auto& e : waiting_) {
      if (match(*e)) return e.get();
    }
    return nullptr;
  };
  std::vector<Entry*> stopped;
  for (Attach& a : attaches) {
    Entry* e = find([&](const Entry& x) { return x.request_id == a.request_id; });
    if (e != nullptr) {
      RequestCallbacks old = std::exchange(e->callbacks, std::move(a.callbacks));
      e->caller = a.caller;
      e->detached_since = absl::InfiniteFuture();
      if (old.on_done) {
        old.on_done(absl::AbortedError(absl::StrCat(
            "request '", e->request_id, "' was re-attached by another call")));
      }
      if (e->emitted > 0 && e->callbacks.on_tokens && !e->stopped_at) {
        CommittedTokens so_far;
        so_far.ids = e->committed;
        so_far.logprobs = e->committed_logprobs;
        if (KeepIds keep = e->callbacks.on_tokens(so_far)) {
          e->stopped_at = static_cast<int64_t>(std::min(*keep, e->committed.size()));
          stopped.push_back(e);
        }
      }
    } else {
      std::optional<RequestResult> result;
      {
        absl::MutexLock lock(&mu_);
        if (auto it = retained_.find(a.request_id); it != retained_.end()) {
          result = it->second.result;
        }
      }
      if (!result) {
        if (a.callbacks.on_done) {
          a.callbacks.on_done(absl::UnavailableError(absl::StrCat(
              "request '", a.request_id, "' ended before the call could re-attach; send it again")));
        }
      } else {
        if (!result->ids.empty() && a.callbacks.on_tokens) {
          CommittedTokens all;
          all.ids = result->ids;
          all.logprobs = result->logprobs;
          if (KeepIds keep = a.callbacks.on_tokens(all); keep && *keep < result->ids.size()) {
            result->ids.resize(*keep);
            result->logprobs.resize(*keep);
            result->finish_reason = engine::FinishReason::kStop;
          }
        }
        if (a.callbacks.on_done) a.callbacks.on_done(*std::move(result));
      }
    }
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
  for (RequestHandle h : detached) {
    Entry* e = find([&](const Entry& x) { return x.caller == h; });
    if (e == nullptr) continue;
    RequestCallbacks old = std::exchange(e->callbacks, RequestCallbacks{});
    e->caller = 0;
    e->detached_since = now;
    if (old.on_done) {
      old.on_done(absl::CancelledError("the caller went away; the request goes on"));
    }
  }
  // A re-attached caller's stop string matched in what was committed already.
  for (Entry* e : stopped) {
    std::unique_ptr<Entry> owned;
    if (auto it = std::find_if(running_.begin(), running_.end(),
                               [e](const std::unique_ptr<Entry>& x) { return x.get() == e; });
        it != running_.end()) {
      owned = std::move(*it);
      running_.erase(it);
    } else {
      absl::MutexLock lock(&mu_);
      auto w = std::find_if(waiting_.begin(), waiting_.end(),
                            [e](const std::unique_ptr<Entry>& x) { return x.get() == e; });
      owned = std::move(*w);
      waiting_.erase(w);
    }
    RequestResult result = Result(*owned, now);
    Finish(std::move(owned), std::move(result));
  }
  {
    absl::MutexLock lock(&mu_);
    running_count_ = static_cast<int64_t>(running_.size());
  }
  return static_cast<int64_t>(stopped.size());
}

void Scheduler::Cancel(RequestHandle handle) {
  absl::MutexLock lock(&mu_);
  cancelled_.insert(handle);
}

void Scheduler::Detach(RequestHandle handle) {
  absl::MutexLock lock(&mu_);
  detached_.insert(handle);
}

void Scheduler::StartDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool Scheduler::WaitUntilIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(
                                  +[](int64_t* in_flight) { return *in_flight == 0; },
                                  &in_flight_),
                              timeout);
}

SchedulerStats Scheduler::Stats() const {
  absl::MutexLock lock(&mu_);
  return {.running = running_count_,
          .waiting = static_cast<int64_t>(waiting_.size()),
          .steps = steps_,
          .kv_pages_reserved = reserved_pages_,
          .kv_pages_capacity = executor_.KvPagesCapacity(),
          .draining = draining_,
          .resumed = resumed_,
          .reattached = reattached_};
}

bool Scheduler::HasWork() const {
  return stopping_ || !waiting_.empty() || !cancelled_.empty() || !attaches_.empty() ||
         !detached_.empty();
}

void Scheduler::Loop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      // running_ belongs to this thread; with nothing running, sleep until there is news.
      if (running_.empty()) mu_.Await(absl::Condition(this, &Scheduler::HasWork));
      if (stopping_) return;
    }
    const StepReport report = RunStep();
    if (report.stalled || (report.scheduled.empty() && !running_.empty())) {
      // Nothing could run (no capacity): poll again shortly instead of spinning.
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(50));
    }
  }
}

StepReport Scheduler::Step() {
  DMOE_CHECK(!options_.start_step_thread) << "Step() is for schedulers without a step thread";
  return RunStep();
}

void Scheduler::Finish(std::unique_ptr<Entry> entry, absl::StatusOr<RequestResult> result,
                       bool interrupted) {
  if (entry->admitted_flag) {
    executor_.Release({SequenceId(entry->handle)});
    entry->admitted_flag = false;
    absl::MutexLock lock(&mu_);
    reserved_pages_ -= entry->pages;
  }
  if (!result.ok()) {
    DMOE_LOG(INFO) << "request " << entry->request_id << " ended: " << result.status();
  }
  if (options_.metrics) {
    const absl::StatusCode code = result.status().code();
    const std::string reason =
        result.ok() ? engine::FinishReasonName(result->finish_reason)
        : code == absl::StatusCode::kCancelled        ? "cancelled"
        : code == absl::StatusCode::kDeadlineExceeded ? "deadline"
                                                      : "error";
    options_.metrics->OnFinished(reason.c_str(), result.ok() ? result->seconds : 0.0,
                                 result.ok() ? result->tokens_per_forward() : 0.0);
    if (result.ok()) options_.metrics->OnEdited(result->edits, result->remasks);
  }
  if (entry->journaled) {
    // Ended requests are never resumed; interrupted ones (Stop) are, by the next scheduler.
    if (!interrupted) {
      if (absl::Status ended = options_.journal->End(entry->request_id); !ended.ok()) {
        DMOE_LOG(ERROR) << "journal: " << ended;
      }
    }
    absl::MutexLock lock(&mu_);
    if (auto it = by_id_.find(entry->request_id);
        it != by_id_.end() && it->second.first == entry->handle) {
      by_id_.erase(it);
    }
    if (!interrupted) RetainLocked(*entry, result, Now());
  }
  if (entry->callbacks.on_done) entry->callbacks.on_done(std::move(result));
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

StepReport Scheduler::RunStep() {
  StepReport report;
  const absl::Time now = Now();
  const int64_t capacity = executor_.KvPagesCapacity();
  const bool unavailable_too_long = TrackCapacity(capacity, now);
  report.finished += ProcessAttachments(now);
  report.finished += EndCancelledAndExpired(now, unavailable_too_long);
  report.finished += Admit(capacity, now, report);
  if (capacity == 0) {
    report.stalled = true;
    PublishState(capacity);
    return report;
  }
  Batch batch = FormBatch(report);
  if (batch.entries.empty()) {
    PublishState(capacity);
    return report;
  }
  const absl::StatusOr<std::vector<engine::Proposal>> proposals = ExecuteBatch(batch, report);
  report.finished += FinishRequests(ApplyOutcome(batch, proposals, report));
  {
    absl::MutexLock lock(&mu_);
    ++steps_;
  }
  if (options_.metrics && proposals.ok()) {
    options_.metrics->OnIteration(static_cast<int64_t>(batch.entries.size()), report.batch_tokens,
                                  report.forward_seconds);
  }
  PublishState(capacity);
  if (options_.step_observer) options_.step_observer(report);
  return report;
}

// 0. An executor without capacity (no attention replica serving) holds every request for
// unavailable_grace; past it they fail, so a cluster that lost its replicas does not hang.
bool Scheduler::TrackCapacity(int64_t capacity, absl::Time now) {
  if (capacity > 0) {
    unavailable_since_ = absl::InfiniteFuture();
  } else if (unavailable_since_ == absl::InfiniteFuture()) {
    unavailable_since_ = now;
    DMOE_LOG(WARNING) << "no executor capacity (no attention replica serving); holding requests "
                      << "for up to " << options_.unavailable_grace;
  }
  return now - unavailable_since_ >= options_.unavailable_grace;
}

absl::Status Scheduler::EndReason(const Entry& e, const absl::flat_hash_set<RequestHandle>& cancelled,
                                  absl::Time now, bool unavailable_too_long) const {
  if (e.caller != 0 && cancelled.contains(e.caller)) {
    return absl::CancelledError("the request was cancelled");
  }
  if (options_.journal && e.caller == 0 && now - e.detached_since >= options_.detached_grace) {
    return absl::CancelledError(absl::StrCat("no caller re-attached to request '", e.request_id,
                                             "' within ",
                                             absl::FormatDuration(options_.detached_grace)));
  }
  if (now >= e.deadline) {
    return absl::DeadlineExceededError(
        absl::StrCat("the request's deadline passed after ", e.sequence.forwards(),
                     " forwards and ", e.emitted, " generated tokens"));
  }
  if (unavailable_too_long) {
    return absl::UnavailableError(absl::StrCat("no attention replica has served for ",
                                               absl::FormatDuration(now - unavailable_since_),
                                               "; retry later"));
  }
  return absl::OkStatus();
}

// 1. Cancellations and deadlines, queued and running. Freed KV goes back before admission,
// so it is reused in this very step.
int64_t Scheduler::EndCancelledAndExpired(absl::Time now, bool unavailable_too_long) {
  std::vector<std::pair<std::unique_ptr<Entry>, absl::Status>> ended;
  absl::flat_hash_set<RequestHandle> cancelled;
  {
    absl::MutexLock lock(&mu_);
    cancelled.swap(cancelled_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      absl::Status reason = EndReason(**it, cancelled, now, unavailable_too_long);
      if (reason.ok()) {
        ++it;
      } else {
        ended.emplace_back(std::move(*it), std::move(reason));
        it = waiting_.erase(it);
      }
    }
  }
  for (auto& e : running_) {
    absl::Status reason = EndReason(*e, cancelled, now, unavailable_too_long);
    if (!reason.ok()) ended.emplace_back(std::move(e), std::move(reason));
  }
  std::erase(running_, nullptr);
  for (auto& [e, status] : ended) Finish(std::move(e), std::move(status));
  return static_cast<int64_t>(ended.size());
}

// 2. Admission, FIFO while the head's KV estimate fits (no overtaking: a big request is never
// starved by a stream of small ones). Fills the report's running / waiting / step.
int64_t Scheduler::Admit(int64_t capacity, absl::Time now, StepReport& report) {
  std::vector<std::pair<std::unique_ptr<Entry>, absl::Status>> ended;
  {
    absl::MutexLock lock(&mu_);
    // A head that can never fit (capacity shrank since it was submitted) fails instead of
    // blocking the FIFO forever.
    while (capacity > 0 && running_.empty() && !waiting_.empty() &&
           waiting_.front()->pages > capacity) {
      Entry& head = *waiting_.front();
      ended.emplace_back(std::move(waiting_.front()),
                         absl::ResourceExhaustedError(absl::StrCat(
                             "the request needs ", head.pages, " KV pages but the cluster's KV "
                             "cache now holds ", capacity)));
      waiting_.pop_front();
    }
    while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running &&
           reserved_pages_ + waiting_.front()->pages <= capacity) {
      std::unique_ptr<Entry> e = std::move(waiting_.front());
      waiting_.pop_front();
      e->admitted = now;
      e->admission_seq = admissions_++;
      e->admitted_flag = true;
      reserved_pages_ += e->pages;
      if (options_.metrics) {
        options_.metrics->OnAdmitted(e->sequence.prompt_length(),
                                     absl::ToDoubleSeconds(now - e->submitted));
      }
      e->last_commit = now;
      e->forwards_at_commit = e->sequence.forwards();
      running_.push_back(std::move(e));
    }
    running_count_ = static_cast<int64_t>(running_.size());
    report.running = running_count_;
    report.waiting = static_cast<int64_t>(waiting_.size());
    report.step = steps_;
  }
  for (auto& [e, status] : ended) Finish(std::move(e), std::move(status));
  return static_cast<int64_t>(ended.size());
}

// 3. The batch: least recently scheduled first (admission order breaks ties), greedily under
// the token budget. Whatever is skipped goes first next step, so nothing starves; a plan over
// the whole budget runs when it is first, alone.
Scheduler::Batch Scheduler::FormBatch(StepReport& report) {
  std::vector<Entry*> order;
  for (auto& e : running_) order.push_back(e.get());
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    if (a->last_scheduled_step != b->last_scheduled_step) {
      return a->last_scheduled_step < b->last_scheduled_step;
    }
    return a->admission_seq < b->admission_seq;
  });
  Batch batch;
  for (Entry* e : order) {
    if (static_cast<int64_t>(batch.entries.size()) >= options_.max_batch_sequences) break;
    engine::StepPlan plan = e->sequence.NextStep();
    const int64_t tokens = static_cast<int64_t>(plan.tokens.size());
    if (!batch.entries.empty() && report.batch_tokens + tokens > options_.max_batch_tokens) {
      continue;
    }
    report.batch_tokens += tokens;
    report.scheduled.push_back(e->handle);
    batch.entries.push_back(e);
    batch.steps.push_back({SequenceId(e->handle), std::move(plan), e->reset_cache, e->deadline});
  }
  return batch;
}

// 4. One batched forward. When the executor lost caches (ABORTED: an attention replica died or
// restarted), the sequences it lost re-prefill from the committed tokens this scheduler holds
// and the step is retried for them (and for those it did not run), up to max_step_retries
// times; the sequences on healthy replicas keep the proposals they got. Output is unchanged.
absl::StatusOr<std::vector<engine::Proposal>> Scheduler::ExecuteBatch(Batch& batch,
                                                                      StepReport& report) {
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<engine::Proposal>> proposals = executor_.Execute(batch.steps);
  std::vector<engine::Proposal> merged;
  std::vector<size_t> pending;  // batch indices the last Execute covered, in its order
  for (int retry = 0; !proposals.ok() &&
                      proposals.status().code() == absl::StatusCode::kAborted &&
                      retry < options_.max_step_retries;
       ++retry) {
    if (merged.empty()) {  // the first retry: the whole batch was pending
      merged.resize(batch.steps.size());
      for (size_t j = 0; j < batch.steps.size(); ++j) pending.push_back(j);
    }
    std::optional<PartialStep> partial = executor_.TakePartialStep();
    if (partial && partial->fate.size() != pending.size()) partial.reset();  // not trusted
    std::vector<size_t> redo;
    int64_t lost = 0;
    for (size_t k = 0; k < pending.size(); ++k) {
      const size_t j = pending[k];
      const StepFate fate = partial ? partial->fate[k] : StepFate::kCacheLost;
      if (fate == StepFate::kDone) {
        merged[j] = std::move(partial->proposals[k]);
        continue;
      }
      if (fate == StepFate::kCacheLost) {
        batch.entries[j]->sequence.ResetCache();
        batch.steps[j].plan = batch.entries[j]->sequence.NextStep();
        batch.steps[j].reset_cache = true;
        ++lost;
      }
      redo.push_back(j);
    }
    DMOE_LOG(WARNING) << "step " << report.step << ": " << proposals.status().message()
                      << "; re-prefilling " << lost << " of " << batch.entries.size()
                      << " sequence(s), retrying " << redo.size()
                      << (partial ? "" : " (no per-sequence outcome: all re-prefill)");
    pending = std::move(redo);
    std::vector<SequenceStep> steps;
    for (size_t j : pending) steps.push_back(batch.steps[j]);
    proposals = steps.empty() ? std::vector<engine::Proposal>() : executor_.Execute(steps);
  }
  for (Entry* e : batch.entries) e->reset_cache = false;
  report.forward_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (merged.empty() || !proposals.ok()) return proposals;  // no retry, or it failed
  for (size_t k = 0; k < pending.size(); ++k) merged[pending[k]] = std::move((*proposals)[k]);
  return merged;
}

// 5. The step's outcome for each sequence: the denoising policy applied to its proposals, or
// the batch held (the last replica went away) or failed. Returns the requests that ended.
std::vector<std::pair<Scheduler::Entry*, absl::StatusOr<RequestResult>>> Scheduler::ApplyOutcome(
    const Batch& batch, const absl::StatusOr<std::vector<engine::Proposal>>& proposals,
    StepReport& report) {
  std::vector<std::pair<Entry*, absl::StatusOr<RequestResult>>> done;
  if (!proposals.ok() && proposals.status().code() == absl::StatusCode::kUnavailable &&
      executor_.KvPagesCapacity() == 0) {
    // The last replica went away mid-step: hold the batch and re-prefill it once one serves.
    DMOE_LOG(WARNING) << "step " << report.step << ": " << proposals.status().message()
                      << "; holding " << batch.entries.size() << " sequence(s)";
    for (Entry* e : batch.entries) {
      e->sequence.ResetCache();
      e->reset_cache = true;
    }
    report.stalled = true;
    return done;
  }
  if (!proposals.ok()) {
    // The batch's caches may hold half-written rows: drop them. The requests fail with the
    // forward's error (the cluster scheduler retries on another replica instead).
    DMOE_LOG(ERROR) << "step " << report.step << " failed for " << batch.entries.size()
                    << " requests: " << proposals.status();
    for (Entry* e : batch.entries) {
      e->sequence.ResetCache();
      e->reset_cache = true;
      done.emplace_back(e, proposals.status());
    }
    return done;
  }
  const absl::Time after = Now();
  for (size_t j = 0; j < batch.entries.size(); ++j) {
    Entry& e = *batch.entries[j];
    e.last_scheduled_step = report.step;
    absl::Status applied = e.sequence.Apply(batch.steps[j].plan, (*proposals)[j]);
    if (!applied.ok()) {
      done.emplace_back(&e, absl::InternalError(absl::StrCat("applying step: ", applied.message())));
      continue;
    }
    StreamCommitted(e, after);
    if (e.sequence.done() || e.stopped_at) done.emplace_back(&e, Result(e, after));
  }
  return done;
}

// New final tokens to on_tokens (and the canvas to on_step) after an applied step.
void Scheduler::StreamCommitted(Entry& e, absl::Time after) {
  std::vector<int32_t> fresh = e.sequence.TakeNewTokens();
  if (!fresh.empty() && !e.stopped_at) {
    const bool first = e.first_tokens == absl::InfinitePast();
    if (options_.metrics) {
      options_.metrics->OnCommitted(
          static_cast<int64_t>(fresh.size()), e.sequence.forwards() - e.forwards_at_commit,
          first, absl::ToDoubleSeconds(after - (first ? e.submitted : e.last_commit)));
    }
    e.last_commit = after;
    e.forwards_at_commit = e.sequence.forwards();
    if (first) e.first_tokens = after;
    const int64_t start = e.produced;
    const int64_t n = static_cast<int64_t>(fresh.size());
    e.produced += n;
    // A resumed request replays from its prompt: ids below `emitted` were committed (and
    // streamed) before the restart. Decoding is deterministic, so they must come out equal.
    const int64_t skip = std::clamp<int64_t>(e.emitted - start, 0, n);
    for (int64_t i = 0; i < skip && !e.replay_mismatch_logged; ++i) {
      if (fresh[i] != e.committed[start + i]) {
        e.replay_mismatch_logged = true;
        DMOE_LOG(ERROR) << "request '" << e.request_id << "': the replay after a restart "
                        << "committed id " << fresh[i] << " at offset " << start + i
                        << " where the journal holds " << e.committed[start + i]
                        << " (was the model or the build changed?)";
      }
    }
    if (skip < n) {
      CommittedTokens committed;
      committed.offset = e.emitted;
      committed.ids.assign(fresh.begin() + skip, fresh.end());
      const std::vector<float> logprobs = e.sequence.FinalLogprobs();
      committed.logprobs.assign(logprobs.begin() + start + skip, logprobs.begin() + start + n);
      if (e.journaled) {
        absl::Status written = options_.journal->Commit(e.request_id, committed.offset,
                                                        committed.ids, committed.logprobs);
        if (!written.ok()) DMOE_LOG(ERROR) << "journal: " << written;
        e.committed.insert(e.committed.end(), committed.ids.begin(), committed.ids.end());
        e.committed_logprobs.insert(e.committed_logprobs.end(), committed.logprobs.begin(),
                                    committed.logprobs.end());
      }
      const int64_t count = static_cast<int64_t>(committed.ids.size());
      if (e.callbacks.on_tokens) {
        if (KeepIds keep = e.callbacks.on_tokens(committed)) {
          e.stopped_at = e.emitted + std::min<int64_t>(static_cast<int64_t>(*keep), count);
        }
      }
      e.emitted += count;
    }
  }
  // The block this step denoised (the finished one when the step finished it), every step.
  if (e.callbacks.on_step && e.sequence.params().mode == engine::DecodeMode::kDiffusion) {
    e.callbacks.on_step({.forward = e.sequence.forwards(),
                         .block_start = e.sequence.denoised_block_start(),
                         .block = e.sequence.DenoisedBlock(),
                         .mask_id = e.sequence.params().mask_id,
                         .prompt_length = e.sequence.prompt_length()});
  }
}

RequestResult Scheduler::Result(const Entry& e, absl::Time after) {
  RequestResult r;
  if (e.journaled) {
    // What was committed, which for a resumed request includes the ids of before the restart.
    r.ids = e.committed;
    r.logprobs = e.committed_logprobs;
  } else {
    r.ids = e.sequence.FinalTokens();
    r.logprobs = e.sequence.FinalLogprobs();
  }
  r.finish_reason = e.sequence.finish_reason();
  if (e.stopped_at) {
    r.ids.resize(std::min<size_t>(r.ids.size(), *e.stopped_at));
    r.logprobs.resize(r.ids.size());
    r.finish_reason = engine::FinishReason::kStop;
  }
  r.forwards = e.sequence.forwards();
  r.edits = e.sequence.edits();
  r.remasks = e.sequence.remasks();
  r.prompt_tokens = e.sequence.prompt_length();
  r.queue_seconds = absl::ToDoubleSeconds(e.admitted - e.submitted);
  r.first_block_seconds = absl::ToDoubleSeconds(e.first_tokens - e.submitted);
  r.seconds = absl::ToDoubleSeconds(after - e.submitted);
  return r;
}

// 6. Finished requests leave the batch and free their KV.
int64_t Scheduler::FinishRequests(
    std::vector<std::pair<Entry*, absl::StatusOr<RequestResult>>> done) {
  for (auto& [ptr, result] : done) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [p = ptr](const std::unique_ptr<Entry>& e) { return e.get() == p; });
    std::unique_ptr<Entry> e = std::move(*it);
    running_.erase(it);
    {
      absl::MutexLock lock(&mu_);
      running_count_ = static_cast<int64_t>(running_.size());
    }
    Finish(std::move(e), std::move(result));
  }
  return static_cast<int64_t>(done.size());
}

void Scheduler::PublishState(int64_t capacity) {
  if (!options_.metrics) return;
  absl::MutexLock lock(&mu_);
  options_.metrics->SetState(static_cast<int64_t>(running_.size()),
                             static_cast<int64_t>(waiting_.size()), reserved_pages_, capacity);
}

void Scheduler::Stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    draining_ = true;
  }
  if (thread_.joinable()) thread_.join();
  std::deque<std::unique_ptr<Entry>> waiting;
  std::vector<Attach> attaches;
  {
    absl::MutexLock lock(&mu_);
    waiting.swap(waiting_);
    cancelled_.clear();
    detached_.clear();
    attaches.swap(attaches_);
  }
  const absl::Status stopped =
      absl::UnavailableError("the scheduler stopped before the request finished");
  std::vector<std::unique_ptr<Entry>> running = std::move(running_);
  running_.clear();
  {
    absl::MutexLock lock(&mu_);
    running_count_ = 0;
  }
  for (auto& e : running) Finish(std::move(e), stopped, /*interrupted=*/true);
  for (auto& e : waiting) Finish(std::move(e), stopped, /*interrupted=*/true);
  for (Attach& a : attaches) {
    if (a.callbacks.on_done) a.callbacks.on_done(stopped);
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
}

}  // namespace dmoe::scheduler
