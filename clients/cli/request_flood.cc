#include "clients/cli/request_flood.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <future>
#include <limits>
#include <mutex>
#include <random>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "proto/dmoe/v1/admin.pb.h"
#include "proto/dmoe/v1/attention.pb.h"
#include "proto/dmoe/v1/cluster.pb.h"
#include "proto/dmoe/v1/expert.pb.h"
#include "proto/dmoe/v1/generation.pb.h"
#include "proto/dmoe/v1/nccl_pairing.pb.h"

namespace dmoe::cli {
namespace {

namespace pb = google::protobuf;
using Rng = std::mt19937_64;

// Every method of the dmoe services, and whether it is the public API. Internal services
// serve authenticated peers (mutual TLS in production): they get malformed bytes and messages
// of other types, not well-formed calls, which would be legitimate control actions.
struct Method {
  std::string path;     // "/dmoe.v1.Generation/Generate"
  std::string service;  // "dmoe.v1.Generation"
  const pb::Descriptor* input;
  bool is_public;
};

std::vector<Method> AllMethods() {
  // Touch each file so its descriptors are in the generated pool.
  const pb::ServiceDescriptor* services[] = {
      dmoe::v1::GenerateRequest::descriptor()->file()->FindServiceByName("Generation"),
      dmoe::v1::RegisterRequest::descriptor()->file()->FindServiceByName("Cluster"),
      dmoe::v1::StepRequest::descriptor()->file()->FindServiceByName("AttentionService"),
      dmoe::v1::RunExpertsRequest::descriptor()->file()->FindServiceByName("ExpertService"),
      dmoe::v1::SetSplitRequest::descriptor()->file()->FindServiceByName("RouterAdmin"),
      dmoe::v1::PairNcclRequest::descriptor()->file()->FindServiceByName("NcclPairing")};
  std::vector<Method> out;
  for (const pb::ServiceDescriptor* s : services) {
    if (s == nullptr) continue;
    for (int i = 0; i < s->method_count(); ++i) {
      const pb::MethodDescriptor* m = s->method(i);
      out.push_back({absl::StrCat("/", s->full_name(), "/", m->name()), s->full_name(),
                     m->input_type(), s->name() == "Generation"});
    }
  }
  return out;
}

std::string RandomBytes(Rng& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// Valid UTF-8 (string fields must be): printable ASCII with some two- and three-byte
// characters and control characters.
std::string RandomText(Rng& rng, size_t n) {
  static const char* const kPieces[] = {"a", "Z", " ", "\n", "\t", "\x01", "{", "\"", "<|mask|>",
                                        "\xc3\xa9", "\xe2\x82\xac", "\xe4\xb8\xad"};
  std::string s;
  while (s.size() < n) s += kPieces[rng() % 12];
  return s;
}

size_t RandomLength(Rng& rng) {
  switch (rng() % 8) {
    case 0: return 0;
    case 1: return 1 << 20;  // 1 MiB
    case 2: return 64 << 10;
    default: return rng() % 64;
  }
}

// Sets a random subset of `m`'s fields to hostile values: extremes, NaN, huge strings and
// repeated fields, enum numbers that do not exist, nested messages.
void Randomize(pb::Message* m, Rng& rng, int depth) {
  const pb::Descriptor* d = m->GetDescriptor();
  const pb::Reflection* r = m->GetReflection();
  static const int64_t kInts[] = {0, -1, 1, std::numeric_limits<int32_t>::max(),
                                  std::numeric_limits<int32_t>::min(),
                                  std::numeric_limits<int64_t>::max(),
                                  std::numeric_limits<int64_t>::min(), 1 << 20};
  static const double kFloats[] = {0, -1, 1e30, -1e30, std::nan(""),
                                   std::numeric_limits<double>::infinity(), 0.5, 2};
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (rng() % 2) continue;
    // Long repeated fields of scalars only (5000 messages of 5000... would not fit in memory).
    const bool scalar = f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE &&
                        f->cpp_type() != pb::FieldDescriptor::CPPTYPE_STRING;
    const int count = !f->is_repeated() ? 1
                      : scalar && rng() % 10 == 0 ? 5000
                                                  : static_cast<int>(rng() % 4);
    for (int k = 0; k < count; ++k) {
      const int64_t iv = rng() % 3 == 0 ? static_cast<int64_t>(rng() % 100000) : kInts[rng() % 8];
      const double fv = kFloats[rng() % 8];
      switch (f->cpp_type()) {
#define DMOE_SET(SETTER, ADDER, VALUE) \
  f->is_repeated() ? r->ADDER(m, f, VALUE) : r->SETTER(m, f, VALUE);
        case pb::FieldDescriptor::CPPTYPE_INT32: DMOE_SET(SetInt32, AddInt32, static_cast<int32_t>(iv)) break;
        case pb::FieldDescriptor::CPPTYPE_INT64: DMOE_SET(SetInt64, AddInt64, iv) break;
        case pb::FieldDescriptor::CPPTYPE_UINT32: DMOE_SET(SetUInt32, AddUInt32, static_cast<uint32_t>(iv)) break;
        case pb::FieldDescriptor::CPPTYPE_UINT64: DMOE_SET(SetUInt64, AddUInt64, static_cast<uint64_t>(iv)) break;
        case pb::FieldDescriptor::CPPTYPE_FLOAT: DMOE_SET(SetFloat, AddFloat, static_cast<float>(fv)) break;
        case pb::FieldDescriptor::CPPTYPE_DOUBLE: DMOE_SET(SetDouble, AddDouble, fv) break;
        case pb::FieldDescriptor::CPPTYPE_BOOL: DMOE_SET(SetBool, AddBool, rng() % 2 == 0) break;
        case pb::FieldDescriptor::CPPTYPE_ENUM: DMOE_SET(SetEnumValue, AddEnumValue, static_cast<int>(iv)) break;
        case pb::FieldDescriptor::CPPTYPE_STRING:
          DMOE_SET(SetString, AddString,
                   f->type() == pb::FieldDescriptor::TYPE_STRING
                       ? RandomText(rng, RandomLength(rng))
                       : RandomBytes(rng, RandomLength(rng)))
          break;
#undef DMOE_SET
        case pb::FieldDescriptor::CPPTYPE_MESSAGE:
          if (depth < 3) {
            Randomize(f->is_repeated() ? r->AddMessage(m, f) : r->MutableMessage(m, f), rng, depth + 1);
          }
          break;
      }
    }
  }
}

// One request's payload for `method`: unparseable bytes (field number 0 is never valid), random
// bytes, a message of another type, or (public methods) a mutated message of the right type
// with unknown fields appended.
std::string Payload(const Method& method, const std::vector<Method>& all, Rng& rng) {
  const int kind = static_cast<int>(rng() % (method.is_public ? 4 : 3));
  if (kind == 0) return "\x00" + RandomBytes(rng, RandomLength(rng));
  if (kind == 1) return RandomBytes(rng, RandomLength(rng));
  const pb::Descriptor* type = kind == 2 ? all[rng() % all.size()].input : method.input;
  std::unique_ptr<pb::Message> m(
      pb::MessageFactory::generated_factory()->GetPrototype(type)->New());
  Randomize(m.get(), rng, 0);
  std::string bytes = m->SerializeAsString();
  if (kind == 3 && rng() % 2) bytes += "\xf8\x3e\x01";  // unknown field 999, varint 1
  // At most 8 MiB (a truncated message is one more kind of bad input).
  if (bytes.size() > (8u << 20)) bytes.resize(8u << 20);
  return bytes;
}

// Sends random bytes on a raw TCP connection and reads until the server closes it (or 2 s).
std::string RawTcp(const std::string& address, Rng& rng) {
  const size_t colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "tcp:no-socket";
  timeval tv{.tv_sec = 2, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string result = "tcp:refused";
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    // Half the time a valid HTTP/2 preface first, so the garbage reaches the frame parser.
    std::string bytes = rng() % 2 ? std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") : "";
    bytes += RandomBytes(rng, 1 + rng() % 4096);
    (void)!send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    shutdown(fd, SHUT_WR);
    char buffer[4096];
    ssize_t n;
    while ((n = recv(fd, buffer, sizeof buffer, 0)) > 0) {
    }
    result = n == 0 ? "tcp:closed" : (errno == ECONNRESET ? "tcp:reset" : "tcp:held-open");
  }
  close(fd);
  return result;
}

std::string HttpBody(Rng& rng) {
  switch (rng() % 6) {
    case 0: return RandomBytes(rng, RandomLength(rng));
    case 1: return R"({"prompt": 5, "max_tokens": "many", "temperature": [1]})";
    case 2: return absl::StrCat(R"({"prompt": ")", std::string(2 << 20, 'a'), R"("})");
    case 3: return std::string(100000, '[');
    case 4: return R"({"messages": [{"role": 7}], "stream": "yes", "n": -3, "unknown": {}})";
    default: return R"({"prompt": "x", "max_tokens": -1, "top_p": 1e400, "stop": [[]]})";
  }
}

}  // namespace

FloodReport RunRequestFlood(const FloodOptions& o) {
  const std::vector<Method> methods = AllMethods();
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  std::vector<std::vector<size_t>> served(o.grpc_ports.size());  // methods each port serves
  for (size_t p = 0; p < o.grpc_ports.size(); ++p) {
    channels.push_back(grpc::CreateCustomChannel(o.grpc_ports[p].address,
                                                 grpc::InsecureChannelCredentials(), args));
    for (size_t m = 0; m < methods.size(); ++m) {
      for (const std::string& service : o.grpc_ports[p].services) {
        if (methods[m].service == service) served[p].push_back(m);
      }
    }
  }
  FloodReport report;
  std::mutex mu;
  std::atomic<int64_t> next{0};
  auto record = [&](const std::string& kind, bool unclear, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu);
    ++report.sent;
    ++report.replies[kind];
    if (unclear) {
      ++report.unclear;
      if (report.unclear_examples.size() < 10) report.unclear_examples.push_back(what);
    }
  };
  auto sender = [&](int thread) {
    Rng rng(o.seed * 1000003 + static_cast<uint64_t>(thread));
    for (int64_t i = next++; i < o.requests; i = next++) {
      const uint64_t pick = rng() % 10;
      if (pick == 0 && !o.grpc_ports.empty()) {  // raw TCP
        const std::string& port = o.grpc_ports[rng() % o.grpc_ports.size()].address;
        const std::string kind = RawTcp(port, rng);
        record(kind, kind == "tcp:held-open", absl::StrCat(port, " ", kind));
      } else if (pick == 1 && !o.http.empty()) {  // the HTTP API
        httplib::Client http(absl::StrCat("http://", o.http));
        http.set_read_timeout(5);
        const char* path = rng() % 2 ? "/v1/completions" : "/v1/chat/completions";
        auto res = http.Post(path, HttpBody(rng), "application/json");
        const std::string kind = res ? absl::StrCat("http:", res->status) : "http:no-reply";
        record(kind, !res || res->status >= 500, absl::StrCat(path, " ", kind));
      } else if (!channels.empty()) {  // a gRPC method
        const size_t port = rng() % channels.size();
        const Method& method = served[port].empty() || rng() % 10 == 0
                                   ? methods[rng() % methods.size()]
                                   : methods[served[port][rng() % served[port].size()]];
        grpc::GenericStub stub(channels[port]);
        const std::string bytes = Payload(method, methods, rng);
        grpc::Slice slice(bytes);
        grpc::ByteBuffer request(&slice, 1), response;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        std::promise<grpc::Status> done;
        stub.UnaryCall(&context, method.path, grpc::StubOptions(), &request, &response,
                       [&done](grpc::Status s) { done.set_value(std::move(s)); });
        const grpc::Status s = done.get_future().get();
        // UNIMPLEMENTED without a message is also gRPC's own answer (callback API) to a
        // payload that does not parse as the method's request type: clear by its code.
        // A mutated generation request can be valid and long (thousands of new tokens): its
        // deadline is no fault; any other call should be answered within 5 s.
        const bool generation = method.service == "dmoe.v1.Generation" &&
                                method.path.find("/Generate") != std::string::npos;
        const bool unclear = s.error_code() == grpc::StatusCode::UNKNOWN ||
                             (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && !generation) ||
                             (!s.ok() && s.error_code() != grpc::StatusCode::UNIMPLEMENTED &&
                              s.error_message().empty());
        const std::string code =
            absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()));
        record(absl::StrCat("grpc:", code), unclear,
               absl::StrCat(o.grpc_ports[port].address, method.path, " (", bytes.size(), " bytes): ",
                            code, " ", s.error_message().substr(0, 120)));
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) threads.emplace_back(sender, t);
  for (std::thread& t : threads) t.join();
  return report;
}

}  // namespace dmoe::cli
