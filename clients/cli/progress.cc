#include "clients/cli/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dmoe::cli {

bool StderrIsTerminal() { return isatty(STDERR_FILENO) != 0; }

ProgressLine::ProgressLine(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled) {}

std::string ProgressLine::Format(const std::string& label, int64_t done, int64_t total,
                                 const std::string& detail, double elapsed_seconds) {
  std::string line = absl::StrCat(label, " ", done, "/", total);
  if (!detail.empty()) absl::StrAppend(&line, " \u00b7 ", detail);
  if (done > 0 && done < total) {
    const double eta = elapsed_seconds / static_cast<double>(done) * (total - done);
    absl::StrAppend(&line, " \u00b7 ETA ", absl::StrFormat("%.0f", std::ceil(eta)), " s");
  }
  return line;
}

void ProgressLine::Update(int64_t done, const std::string& detail) {
  if (!enabled_) return;
  absl::MutexLock lock(&mu_);
  const Clock::time_point now = Clock::now();
  if (drawn_ && done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  drawn_ = true;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "\r\033[K%s", Format(label_, done, total_, detail, elapsed).c_str());
  std::fflush(stderr);
}

void ProgressLine::Finish() {
  if (!enabled_) return;
  absl::MutexLock lock(&mu_);
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace dmoe::cli
