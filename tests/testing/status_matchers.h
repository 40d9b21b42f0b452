// gMock matchers for absl::Status / absl::StatusOr<T>. Our Abseil (20220623) predates
// absl/status/status_matchers.h; these follow its names (absl_testing::StatusIs, IsOk) so a
// later upgrade is a rename. Namespace dmoe_testing, not dmoe::testing, so that `testing::`
// inside namespace dmoe keeps meaning GoogleTest.
//
//   EXPECT_THAT(Parse(x), dmoe_testing::StatusIs(absl::StatusCode::kInvalidArgument,
//                                                testing::HasSubstr("hidden_size")));
//   DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, Checkpoint::Open(dir));
#ifndef DMOE_TESTS_TESTING_STATUS_MATCHERS_H_
#define DMOE_TESTS_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dmoe_testing {
namespace internal {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

class StatusIsMatcher {
 public:
  StatusIsMatcher(absl::StatusCode code, ::testing::Matcher<const std::string&> message)
      : code_(code), message_(std::move(message)) {}

  template <typename T>
  bool MatchAndExplain(const T& value, ::testing::MatchResultListener* listener) const {
    const absl::Status& status = GetStatus(value);
    *listener << "whose status is " << status;
    if (status.code() != code_) return false;
    return message_.MatchAndExplain(std::string(status.message()), listener);
  }
  void DescribeTo(std::ostream* os) const {
    *os << "has status code " << absl::StatusCodeToString(code_) << " and a message that ";
    message_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "does not have status code " << absl::StatusCodeToString(code_)
        << " or has a message that ";
    message_.DescribeNegationTo(os);
  }

 private:
  absl::StatusCode code_;
  ::testing::Matcher<const std::string&> message_;
};

}  // namespace internal

// Matches a Status or StatusOr whose code is `code` and whose message matches `message`.
template <typename MessageMatcher>
::testing::PolymorphicMatcher<internal::StatusIsMatcher> StatusIs(absl::StatusCode code,
                                                                  MessageMatcher message) {
  return ::testing::MakePolymorphicMatcher(internal::StatusIsMatcher(
      code, ::testing::SafeMatcherCast<const std::string&>(std::move(message))));
}
inline ::testing::PolymorphicMatcher<internal::StatusIsMatcher> StatusIs(absl::StatusCode code) {
  return StatusIs(code, ::testing::_);
}
inline ::testing::PolymorphicMatcher<internal::StatusIsMatcher> IsOk() {
  return StatusIs(absl::StatusCode::kOk);
}

}  // namespace dmoe_testing

#define DMOE_EXPECT_OK(expr) EXPECT_THAT((expr), ::dmoe_testing::IsOk())
#define DMOE_ASSERT_OK(expr) ASSERT_THAT((expr), ::dmoe_testing::IsOk())

// DMOE_ASSERT_OK_AND_ASSIGN(auto x, MakeX()); fails the test (returning) if MakeX() fails.
#define DMOE_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  DMOE_TESTING_ASSIGN_IMPL_(DMOE_TESTING_CONCAT_(dmoe_testing_so_, __LINE__), lhs, rexpr)
#define DMOE_TESTING_CONCAT_INNER_(a, b) a##b
#define DMOE_TESTING_CONCAT_(a, b) DMOE_TESTING_CONCAT_INNER_(a, b)
#define DMOE_TESTING_ASSIGN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  ASSERT_TRUE(statusor.ok()) << statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // DMOE_TESTS_TESTING_STATUS_MATCHERS_H_
