// Status propagation macros (STYLE.md §3). Our Abseil (20220623) predates ABSL_RETURN_IF_ERROR,
// so these carry our own prefix; when Abseil is upgraded this becomes a mechanical rename.
#ifndef DMOE_COMMON_STATUS_MACROS_H_
#define DMOE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DMOE_STATUS_CONCAT_INNER_(a, b) a##b
#define DMOE_STATUS_CONCAT_(a, b) DMOE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define DMOE_RETURN_IF_ERROR(expr)                   \
  do {                                               \
    ::absl::Status dmoe_status_ = (expr);            \
    if (!dmoe_status_.ok()) return dmoe_status_;     \
  } while (0)

// DMOE_ASSIGN_OR_RETURN(auto x, MakeX()); declares/assigns `lhs` from a StatusOr or returns
// its error.
#define DMOE_ASSIGN_OR_RETURN(lhs, rexpr) \
  DMOE_ASSIGN_OR_RETURN_IMPL_(DMOE_STATUS_CONCAT_(dmoe_statusor_, __LINE__), lhs, rexpr)

#define DMOE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                \
  if (!statusor.ok()) return statusor.status();           \
  lhs = std::move(statusor).value()

#endif  // DMOE_COMMON_STATUS_MACROS_H_
