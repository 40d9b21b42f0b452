// A blocking HTTP GET for tests that talk to real HTTP servers (Prometheus, /metrics).
#ifndef DMOE_TESTS_TESTING_HTTP_H_
#define DMOE_TESTS_TESTING_HTTP_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dmoe_testing {

// The body of a 200 answer; UNAVAILABLE naming the URL for connection errors and other codes.
absl::StatusOr<std::string> HttpGet(const std::string& url,
                                    absl::Duration timeout = absl::Seconds(10));

// `text` with every character outside [A-Za-z0-9-_.~] percent-encoded (query parameters).
std::string UrlEncode(const std::string& text);

// A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot take port 0).
int PickFreePort();

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_HTTP_H_
