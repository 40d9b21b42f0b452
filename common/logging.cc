#include "common/logging.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dmoe {
namespace {
std::atomic<int> g_min_severity{static_cast<int>(LogSeverity::kInfo)};
constexpr char kSeverityLetter[] = {'I', 'W', 'E', 'F'};
}  // namespace

void SetMinLogSeverity(LogSeverity severity) { g_min_severity = static_cast<int>(severity); }
LogSeverity MinLogSeverity() { return static_cast<LogSeverity>(g_min_severity.load()); }

namespace internal {

LogMessage::LogMessage(const char* file, int line, LogSeverity severity)
    : file_(file), line_(line), severity_(severity) {}

LogMessage::~LogMessage() {
  const char* base = std::strrchr(file_, '/');
  base = base ? base + 1 : file_;
  std::string line = absl::FormatTime("%m%d %H:%M:%E3S", absl::Now(), absl::LocalTimeZone());
  std::string text = std::string(1, kSeverityLetter[static_cast<int>(severity_)]) + line + " " +
                     base + ":" + std::to_string(line_) + "] " + stream_.str() + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr);  // one write per line: lines never interleave
  if (severity_ == LogSeverity::kFatal) {
    std::fflush(stderr);
    std::abort();
  }
}

}  // namespace internal
}  // namespace dmoe
