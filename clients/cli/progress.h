// One self-redrawing progress line on stderr for long commands (`dmoe bench`, `dmoe eval`):
// "label 12/40 · <what the command adds> · ETA 8 s". Only on a terminal: when stderr is a pipe
// or a file the line is never drawn, so logs and JSON consumers see nothing extra.
#ifndef DMOE_CLIENTS_CLI_PROGRESS_H_
#define DMOE_CLIENTS_CLI_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace dmoe::cli {

// Thread-safe: bench workers report from several threads.
class ProgressLine {
 public:
  // `enabled` false: every call is a no-op (use StderrIsTerminal()).
  ProgressLine(std::string label, int64_t total, bool enabled);
  ~ProgressLine() { Finish(); }

  // `done` items of `total` finished; `detail` is shown after the count. Redraws at most
  // ten times a second (and always for the last item).
  void Update(int64_t done, const std::string& detail = "") ABSL_LOCKS_EXCLUDED(mu_);
  // Erases the line (before the command prints its report).
  void Finish() ABSL_LOCKS_EXCLUDED(mu_);

  // The text Update draws, for tests: "label 3/10 · detail · ETA 7 s".
  static std::string Format(const std::string& label, int64_t done, int64_t total,
                            const std::string& detail, double elapsed_seconds);

 private:
  using Clock = std::chrono::steady_clock;
  const std::string label_;
  const int64_t total_;
  const bool enabled_;
  const Clock::time_point start_ = Clock::now();
  absl::Mutex mu_;
  Clock::time_point last_draw_ ABSL_GUARDED_BY(mu_);
  bool drawn_ ABSL_GUARDED_BY(mu_) = false;
};

bool StderrIsTerminal();

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_PROGRESS_H_
