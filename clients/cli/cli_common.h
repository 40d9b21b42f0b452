// Helpers shared by the CLI subcommands.
#ifndef DMOE_CLIENTS_CLI_CLI_COMMON_H_
#define DMOE_CLIENTS_CLI_CLI_COMMON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/id_list.h"  // ParseIdList, for the subcommands

namespace dmoe::cli {

// Prints "error: <message>" to stderr and returns the exit code for `status` (1).
int ReportError(const absl::Status& status);

// Escapes for JSON output of possibly-invalid UTF-8 (invalid bytes become U+FFFD).
std::string SanitizeUtf8(const std::string& text);

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_CLI_COMMON_H_
