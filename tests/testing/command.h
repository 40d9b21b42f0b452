// Runs a shell command (a dmoe binary from $DMOE_BIN_DIR, usually) with its output captured,
// for the tests of the command-line tools.
#ifndef DMOE_TESTS_TESTING_COMMAND_H_
#define DMOE_TESTS_TESTING_COMMAND_H_

#include <string>

namespace dmoe_testing {

struct CommandResult {
  int exit_code = -1;  // -1: did not exit normally (killed by a signal, shell not run)
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs `command` through /bin/sh with stdin from /dev/null (a binary waiting for input would
// hang the test instead of failing it), capturing stdout and stderr separately.
CommandResult RunCommand(const std::string& command);

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_COMMAND_H_
