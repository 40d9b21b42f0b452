#include "tests/testing/command.h"

#include <sys/wait.h>

#include <cstdlib>

#include "tests/testing/temp_dir.h"

namespace dmoe_testing {

CommandResult RunCommand(const std::string& command) {
  TempDir tmp;
  const std::string out = tmp.Join("stdout"), err = tmp.Join("stderr");
  const int status = std::system((command + " >" + out + " 2>" + err + " </dev/null").c_str());
  CommandResult result;
  if (status == -1) {
    result.err = "could not start /bin/sh for: " + command;
    return result;
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = ReadFileOrDie(out);
  result.err = ReadFileOrDie(err);
  return result;
}

}  // namespace dmoe_testing
