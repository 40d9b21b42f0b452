// Normalised mean squared error, the accuracy measure of the kernel parity tests (STYLE.md
// §10): each fast or device op is compared with the naive reference by NMSE and a per-op,
// per-dtype tolerance.
#ifndef DMOE_TESTS_TESTING_NMSE_H_
#define DMOE_TESTS_TESTING_NMSE_H_

#include "absl/types/span.h"

namespace dmoe_testing {

// sum (actual - expected)^2 / sum expected^2. 0 when both are all zero; +inf on a size
// mismatch, a NaN, or any error against an all-zero `expected`, so a broken op can never pass
// a tolerance check.
double Nmse(absl::Span<const float> actual, absl::Span<const float> expected);

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_NMSE_H_
