// A child process of a test (a dmoe binary, usually) with its stdout on a pipe, for the
// integration tests that start servers, read their "listening on" line and kill them.
#ifndef DMOE_TESTS_TESTING_CHILD_PROCESS_H_
#define DMOE_TESTS_TESTING_CHILD_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace dmoe_testing {

// SIGKILLed and reaped on destruction if alive.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool started() const { return pid_ > 0; }
  // The next line of stdout, or "" on EOF / timeout.
  std::string ReadLine(absl::Duration timeout);
  // Sends `signal` (0: none) and waits up to `timeout` for the exit; the exit code
  // (128 + signal when killed), or -1.
  int SignalAndWait(int signal, absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
};

// Runs argv to completion (60 s per line of output at most); its exit code and stdout.
std::pair<int, std::string> RunArgv(const std::vector<std::string>& argv);

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_CHILD_PROCESS_H_
