// The router role (dmoe-router): the public dmoe.v1.Generation API in front of a model
// version's scheduler. It forwards every call, propagating the caller's deadline and
// cancellation, so clients see one stable address while schedulers come and go. (Weighted
// model-version routing and canary rollback build on this: issue 5.)
#ifndef DMOE_ROUTER_GENERATION_PROXY_H_
#define DMOE_ROUTER_GENERATION_PROXY_H_

#include <memory>
#include <string>

#include "proto/dmoe/v1/generation.grpc.pb.h"

namespace dmoe::router {

// Thread-safe.
class GenerationProxy final : public dmoe::v1::Generation::CallbackService {
 public:
  // `backend`: the scheduler's address (host:port).
  explicit GenerationProxy(const std::string& backend);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const dmoe::v1::GenerateRequest* request,
                                     dmoe::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const dmoe::v1::TokenizeRequest* request,
                                     dmoe::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dmoe::v1::ListModelsRequest* request,
                                       dmoe::v1::ListModelsResponse* response) override;

 private:
  std::string backend_;
  std::unique_ptr<dmoe::v1::Generation::Stub> stub_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_GENERATION_PROXY_H_
