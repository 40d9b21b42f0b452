// Runs a test body on several threads at once and joins them, for the tests that race callers
// on one engine, tokenizer, scheduler or cluster.
#ifndef DMOE_TESTS_TESTING_CONCURRENCY_H_
#define DMOE_TESTS_TESTING_CONCURRENCY_H_

#include <future>
#include <type_traits>
#include <utility>
#include <vector>

namespace dmoe_testing {

// Calls body(0), ..., body(n - 1), each on its own thread, all started before any is waited
// for, and returns when every call has returned. A body that returns a value gives back the
// results in index order (std::vector<R>); a void body gives back nothing. EXPECT_* works in
// `body`; an ASSERT_* there only ends that one call.
//   std::vector<int64_t> tokens = RunConcurrently(16, [&](int i) { return Send(i); });
template <typename Body>
auto RunConcurrently(int n, Body&& body) {
  using Result = std::invoke_result_t<Body&, int>;
  std::vector<std::future<Result>> calls;
  calls.reserve(n);
  for (int i = 0; i < n; ++i) {
    calls.push_back(std::async(std::launch::async, [&body, i] { return body(i); }));
  }
  if constexpr (std::is_void_v<Result>) {
    for (std::future<Result>& call : calls) call.get();
  } else {
    std::vector<Result> results;
    results.reserve(n);
    for (std::future<Result>& call : calls) results.push_back(call.get());
    return results;
  }
}

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_CONCURRENCY_H_
