#include "tests/testing/child_process.h"

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "absl/time/clock.h"

extern char** environ;

namespace dmoe_testing {

Child::Child(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe(fds) != 0) return;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  out_ = fds[0];
}

Child::~Child() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_ >= 0) close(out_);
}

std::string Child::ReadLine(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  for (;;) {
    if (size_t nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now()));
    if (ms <= 0) return "";
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) return "";
    char chunk[4096];
    const ssize_t n = read(out_, chunk, sizeof(chunk));
    if (n <= 0) return "";
    buffer_.append(chunk, n);
  }
}

int Child::SignalAndWait(int signal, absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return -1;
}

std::pair<int, std::string> RunArgv(const std::vector<std::string>& argv) {
  Child child(argv);
  std::string out, line;
  for (;;) {
    line = child.ReadLine(absl::Seconds(60));
    if (line.empty()) break;
    out += line + "\n";
  }
  return {child.SignalAndWait(0, absl::Seconds(60)), out};
}

}  // namespace dmoe_testing
