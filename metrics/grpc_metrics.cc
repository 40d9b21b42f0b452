#include "metrics/grpc_metrics.h"

#include <string>
#include <vector>

#include "grpcpp/support/server_interceptor.h"
#include "metrics/catalog.h"

namespace dmoe::metrics {
namespace {

class CountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  CountingInterceptor(prometheus::Family<prometheus::Counter>& family, std::string service,
                      std::string method)
      : family_(family), service_(std::move(service)), method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      family_
          .Add({{"grpc_service", service_},
                {"grpc_method", method_},
                {"grpc_code", GrpcCodeName(status.error_code())}})
          .Increment();
    }
    methods->Proceed();
  }

 private:
  prometheus::Family<prometheus::Counter>& family_;
  std::string service_;
  std::string method_;
};

class CountingInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CountingInterceptorFactory(const ProcessMetrics& metrics)
      : registry_(metrics.registry),
        family_(CounterFamily(*registry_, "dmoe_grpc_server_handled_total",
                              metrics.model_version)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    // "/dmoe.v1.Generation/Generate" -> service "dmoe.v1.Generation", method "Generate".
    const std::string full = info->method() ? info->method() : "";
    const size_t slash = full.rfind('/');
    std::string service = slash == std::string::npos ? "" : full.substr(1, slash - 1);
    std::string method = slash == std::string::npos ? full : full.substr(slash + 1);
    return new CountingInterceptor(family_, std::move(service), std::move(method));
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;  // keeps family_ alive
  prometheus::Family<prometheus::Counter>& family_;
};

}  // namespace

const char* GrpcCodeName(int code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",         "UNKNOWN",          "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS",   "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",      "DATA_LOSS",
      "UNAUTHENTICATED"};
  return code >= 0 && code < 17 ? kNames[code] : "UNKNOWN";
}

void AddGrpcServerMetrics(grpc::ServerBuilder& builder, const ProcessMetrics& metrics) {
  if (!metrics.registry) return;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(std::make_unique<CountingInterceptorFactory>(metrics));
  builder.experimental().SetInterceptorCreators(std::move(creators));
}

}  // namespace dmoe::metrics
