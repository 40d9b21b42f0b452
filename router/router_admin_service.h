// The gRPC adapter of dmoe.v1.RouterAdmin (proto/dmoe/v1/admin.proto) over a TrafficSplit:
// SetSplit / GetSplit, with the weight gauges republished after every change.
#ifndef DMOE_ROUTER_ROUTER_ADMIN_SERVICE_H_
#define DMOE_ROUTER_ROUTER_ADMIN_SERVICE_H_

#include <map>
#include <string>

#include "common/auth/api_keys.h"
#include "proto/dmoe/v1/admin.grpc.pb.h"
#include "router/router_metrics.h"
#include "router/traffic_split.h"

namespace dmoe::router {

// The proto form of a snapshot; `backends` maps version -> scheduler address.
void ToProto(const SplitSnapshot& snapshot, const std::map<std::string, std::string>& backends,
             dmoe::v1::SplitStatus* out);

// Thread-safe. `split`, `metrics` (null: no metrics) and `api_keys` (null: no authentication;
// otherwise every call needs an admin key) must outlive it.
class RouterAdminService final : public dmoe::v1::RouterAdmin::CallbackService {
 public:
  RouterAdminService(TrafficSplit& split, RouterMetrics* metrics,
                     std::map<std::string, std::string> backends,
                     auth::ApiKeys* api_keys = nullptr)
      : split_(split), metrics_(metrics), backends_(std::move(backends)), api_keys_(api_keys) {}

  grpc::ServerUnaryReactor* SetSplit(grpc::CallbackServerContext* context,
                                     const dmoe::v1::SetSplitRequest* request,
                                     dmoe::v1::SetSplitResponse* response) override;
  grpc::ServerUnaryReactor* GetSplit(grpc::CallbackServerContext* context,
                                     const dmoe::v1::GetSplitRequest* request,
                                     dmoe::v1::GetSplitResponse* response) override;

 private:
  TrafficSplit& split_;
  RouterMetrics* metrics_;
  const std::map<std::string, std::string> backends_;
  auth::ApiKeys* const api_keys_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_ROUTER_ADMIN_SERVICE_H_
