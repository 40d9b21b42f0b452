// Token id lists as users type them on a command line ("1,2,3").
#ifndef DMOE_COMMON_ID_LIST_H_
#define DMOE_COMMON_ID_LIST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dmoe {

// Parses "1,2,3" (spaces allowed). INVALID_ARGUMENT naming `flag` on junk or an empty list.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text, const std::string& flag);

}  // namespace dmoe

#endif  // DMOE_COMMON_ID_LIST_H_
