// Minimal leveled logging to stderr and invariant checks (STYLE.md §3: CHECK for invariants,
// graceful Status for anything a client, the network or a dependency can cause).
// Our Abseil predates absl/log; this keeps the same shape (DMOE_LOG(INFO) << ...).
#ifndef DMOE_COMMON_LOGGING_H_
#define DMOE_COMMON_LOGGING_H_

#include <sstream>
#include <string>

namespace dmoe {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2, kFatal = 3 };

// Messages below this severity are dropped. Thread-safe (atomic).
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();

namespace internal {

// Accumulates one log line and writes it atomically on destruction. kFatal aborts.
class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  const char* file_;
  int line_;
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows a stream expression when logging is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace dmoe

#define DMOE_LOG_SEVERITY_INFO ::dmoe::LogSeverity::kInfo
#define DMOE_LOG_SEVERITY_WARNING ::dmoe::LogSeverity::kWarning
#define DMOE_LOG_SEVERITY_ERROR ::dmoe::LogSeverity::kError
#define DMOE_LOG_SEVERITY_FATAL ::dmoe::LogSeverity::kFatal

#define DMOE_LOG(severity)                                                   \
  (DMOE_LOG_SEVERITY_##severity < ::dmoe::MinLogSeverity())                  \
      ? (void)0                                                              \
      : ::dmoe::internal::LogVoidify() &                                     \
            ::dmoe::internal::LogMessage(__FILE__, __LINE__,                 \
                                         DMOE_LOG_SEVERITY_##severity)       \
                .stream()

// Aborts with a message when an internal invariant does not hold.
#define DMOE_CHECK(cond)                                                          \
  (cond) ? (void)0                                                                \
         : ::dmoe::internal::LogVoidify() &                                       \
               ::dmoe::internal::LogMessage(__FILE__, __LINE__,                   \
                                            ::dmoe::LogSeverity::kFatal)          \
                       .stream()                                                  \
                   << "Check failed: " #cond " "

#endif  // DMOE_COMMON_LOGGING_H_
