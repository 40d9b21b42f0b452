// A malformed-request flood (`dmoe chaos --flood N`, issue 11): randomised bad input at every
// port of a running cluster — unparseable bytes and mutated messages at every gRPC method of
// every service (a message of another type, huge fields, NaNs, unknown fields), random bytes on
// the raw TCP ports, malformed JSON at the OpenAI HTTP API — counting what came back.
#ifndef DMOE_CLIENTS_CLI_REQUEST_FLOOD_H_
#define DMOE_CLIENTS_CLI_REQUEST_FLOOD_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dmoe::cli {

// A gRPC port and the services it serves (full names, e.g. "dmoe.v1.Generation"); most
// requests go to those, one in ten to any method (UNIMPLEMENTED).
struct FloodTarget {
  std::string address;
  std::vector<std::string> services;
};

struct FloodOptions {
  std::vector<FloodTarget> grpc_ports;  // every process
  std::string http;                     // the OpenAI HTTP API's host:port ("" = none)
  int64_t requests = 10000;
  uint64_t seed = 1;
  int threads = 4;
};

struct FloodReport {
  int64_t sent = 0;
  // Replies by kind: "grpc:INVALID_ARGUMENT", "http:400", "tcp:closed", ...
  std::map<std::string, int64_t> replies;
  // Replies that say nothing useful: gRPC UNKNOWN or an error without a message (UNIMPLEMENTED
  // for a method the port does not serve is clear as it is), HTTP 5xx,
  // calls still unanswered at their 5 s deadline, TCP connections the server kept open.
  int64_t unclear = 0;
  std::vector<std::string> unclear_examples;  // the first few, for the report
};

// Runs the flood with `threads` senders; returns when every request has been answered.
FloodReport RunRequestFlood(const FloodOptions& options);

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_REQUEST_FLOOD_H_
