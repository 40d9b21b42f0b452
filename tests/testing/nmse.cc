#include "tests/testing/nmse.h"

#include <cmath>
#include <limits>

namespace dmoe_testing {

double Nmse(absl::Span<const float> actual, absl::Span<const float> expected) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (actual.size() != expected.size()) return kInf;
  double err = 0, ref = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double d = static_cast<double>(actual[i]) - expected[i];
    err += d * d;
    ref += static_cast<double>(expected[i]) * expected[i];
  }
  if (std::isnan(err) || std::isnan(ref)) return kInf;
  if (ref == 0) return err == 0 ? 0.0 : kInf;
  return err / ref;
}

}  // namespace dmoe_testing
