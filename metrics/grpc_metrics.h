// dmoe_grpc_server_handled_total{grpc_service, grpc_method, grpc_code} for every RPC a server
// completes, counted by a server interceptor so no handler can forget it (the
// go-grpc-prometheus convention).
#ifndef DMOE_METRICS_GRPC_METRICS_H_
#define DMOE_METRICS_GRPC_METRICS_H_

#include <memory>

#include "grpcpp/server_builder.h"
#include "metrics/endpoint.h"

namespace dmoe::metrics {

// Installs the interceptor on `builder`. No-op when metrics.registry is null.
void AddGrpcServerMetrics(grpc::ServerBuilder& builder, const ProcessMetrics& metrics);

// "OK", "UNAVAILABLE", ... (the grpc_code label value).
const char* GrpcCodeName(int code);

}  // namespace dmoe::metrics

#endif  // DMOE_METRICS_GRPC_METRICS_H_
