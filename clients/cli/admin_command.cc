// `dmoe admin`: the router's operations API (proto/dmoe/v1/admin.proto, docs/canary.md).
//
//   dmoe admin split --router ADDR v1=90 v2=10 [--stable v1]   replace the traffic split
//   dmoe admin status --router ADDR [--json]                    split, windows, rollbacks
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/auth/tls.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "proto/dmoe/v1/admin.grpc.pb.h"

namespace dmoe::cli {
namespace {

struct AdminFlags {
  std::string router;
  std::string api_key;  // --api-key or DMOE_API_KEY: RouterAdmin needs an admin key
  std::string tls_ca;
  double timeout_seconds = 10;
  std::vector<std::string> weights;  // "v1=90" each, or "v1=90,v2=10"
  std::string stable;
  bool json = false;
};

std::unique_ptr<dmoe::v1::RouterAdmin::Stub> Connect(const AdminFlags& f) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!f.tls_ca.empty()) {
    auth::TlsOptions options;
    options.ca_file = f.tls_ca;
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls =
        auth::CallerCredentials(options);
    // An unreadable CA: a channel that fails every call with the reason in its log.
    credentials = tls.ok() ? *tls : nullptr;
    if (!tls.ok()) std::cerr << "error: " << tls.status().message() << "\n";
  }
  if (credentials == nullptr) credentials = grpc::InsecureChannelCredentials();
  return dmoe::v1::RouterAdmin::NewStub(grpc::CreateChannel(f.router, credentials));
}

void SetDeadline(const AdminFlags& f, grpc::ClientContext& context) {
  if (!f.api_key.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", f.api_key));
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(f.timeout_seconds * 1000)));
}

std::string Percent(double ratio) { return absl::StrCat(std::lround(ratio * 1000) / 10.0, "%"); }

void Print(const AdminFlags& f, const dmoe::v1::SplitStatus& s) {
  if (f.json) {
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.always_print_primitive_fields = true;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(s, &json, options);
    std::cout << json;
    return;
  }
  std::printf("router %s: stable %s, rolled back: %s, automatic rollbacks: %lld\n",
              f.router.c_str(), s.stable().c_str(), s.rolled_back() ? "yes" : "no",
              static_cast<long long>(s.rollbacks()));
  std::printf("%-10s %-22s %7s %6s %9s %7s %8s %9s\n", "VERSION", "BACKEND", "WEIGHT", "STABLE",
              "REQUESTS", "ERRORS", "ERR%", "P95(s)");
  for (const dmoe::v1::VersionStatus& v : s.versions()) {
    std::printf("%-10s %-22s %6d%% %6s %9lld %7lld %8s %9.3f\n", v.version().c_str(),
                v.backend().c_str(), v.percent(), v.stable() ? "*" : "",
                static_cast<long long>(v.window_requests()),
                static_cast<long long>(v.window_errors()),
                Percent(v.window_error_ratio()).c_str(), v.window_p95_latency_seconds());
  }
  const dmoe::v1::RollbackPolicy& p = s.policy();
  std::printf("rollback policy: window %g s, min %lld calls, error ratio > %g, p95 > %s\n",
              p.window_seconds(), static_cast<long long>(p.min_requests()), p.max_error_ratio(),
              p.max_latency_p95_seconds() > 0 ? absl::StrCat(p.max_latency_p95_seconds(), " s").c_str()
                                              : "off");
  if (s.has_last_rollback()) {
    const dmoe::v1::RollbackEvent& r = s.last_rollback();
    std::printf("last rollback: %s at %s, %s %g > %g over %lld calls\n", r.version().c_str(),
                absl::FormatTime("%Y-%m-%d %H:%M:%S",
                                 absl::FromUnixMillis(static_cast<int64_t>(r.unix_seconds() * 1000)),
                                 absl::LocalTimeZone())
                    .c_str(),
                r.bound().c_str(), r.measured(), r.limit(),
                static_cast<long long>(r.window_requests()));
  }
}

absl::Status RunSplit(const AdminFlags& f) {
  dmoe::v1::SetSplitRequest request;
  for (const std::string& arg : f.weights) {
    for (absl::string_view part : absl::StrSplit(arg, ',', absl::SkipWhitespace())) {
      std::vector<absl::string_view> kv = absl::StrSplit(part, '=');
      int percent = 0;
      if (kv.size() != 2 || kv[0].empty() || !absl::SimpleAtoi(kv[1], &percent)) {
        return absl::InvalidArgumentError(
            absl::StrCat("expected VERSION=PERCENT (e.g. v1=90 v2=10), got '", part, "'"));
      }
      dmoe::v1::VersionWeight* w = request.add_weights();
      w->set_version(std::string(kv[0]));
      w->set_percent(percent);
    }
  }
  request.set_stable(f.stable);
  grpc::ClientContext context;
  SetDeadline(f, context);
  dmoe::v1::SetSplitResponse response;
  DMOE_RETURN_IF_ERROR(FromGrpcStatus(Connect(f)->SetSplit(&context, request, &response)));
  Print(f, response.status());
  return absl::OkStatus();
}

absl::Status RunStatus(const AdminFlags& f) {
  grpc::ClientContext context;
  SetDeadline(f, context);
  dmoe::v1::GetSplitResponse response;
  DMOE_RETURN_IF_ERROR(FromGrpcStatus(Connect(f)->GetSplit(&context, {}, &response)));
  Print(f, response.status());
  return absl::OkStatus();
}

}  // namespace

void RegisterAdminCommand(CLI::App& app, int* exit_code) {
  CLI::App* admin = app.add_subcommand("admin", "Operate a dmoe-router: canary traffic split");
  admin->require_subcommand(1);
  auto f = std::make_shared<AdminFlags>();
  auto add_common = [f](CLI::App* cmd) {
    cmd->add_option("--router", f->router, "The router's address, host:port")->required();
    cmd->add_option("--api-key", f->api_key, "An admin API key (docs/security.md)")
        ->envname("DMOE_API_KEY");
    cmd->add_option("--tls-ca", f->tls_ca, "PEM CA of the router's certificate: use TLS");
    cmd->add_option("--timeout", f->timeout_seconds, "Call deadline in seconds")
        ->capture_default_str();
    cmd->add_flag("--json", f->json, "Print the SplitStatus message as JSON");
  };
  CLI::App* split = admin->add_subcommand(
      "split", "Set the traffic split, e.g. `dmoe admin split --router ADDR v1=90 v2=10`");
  add_common(split);
  split->add_option("weights", f->weights, "VERSION=PERCENT ... (summing to 100)")->required();
  split->add_option("--stable", f->stable, "Also make this the stable (rollback) version");
  split->callback([f, exit_code] {
    absl::Status status = RunSplit(*f);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
  CLI::App* status = admin->add_subcommand(
      "status", "Show the split, each version's window (calls, errors, p95) and rollbacks");
  add_common(status);
  status->callback([f, exit_code] {
    absl::Status s = RunStatus(*f);
    *exit_code = s.ok() ? 0 : ReportError(s);
  });
}

}  // namespace dmoe::cli
