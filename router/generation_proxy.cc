#include "router/generation_proxy.h"

#include <condition_variable>
#include <mutex>
#include <thread>

#include "grpcpp/grpcpp.h"

namespace dmoe::router {
namespace {

// Forwards one unary call; the client context lives until the backend answers.
template <typename Request, typename Response, typename AsyncCall>
grpc::ServerUnaryReactor* ForwardUnary(grpc::CallbackServerContext* context,
                                       const Request* request, Response* response,
                                       AsyncCall&& call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto client = std::make_shared<grpc::ClientContext>();
  client->set_deadline(context->deadline());
  call(client.get(), request, response, [reactor, client](grpc::Status status) {
    reactor->Finish(status);
  });
  return reactor;
}

// Relays the backend's stream: a thread reads it (blocking reads stay off gRPC's threads)
// and hands each event to this reactor, one write in flight at a time.
class StreamRelay final : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
 public:
  StreamRelay(dmoe::v1::Generation::Stub* stub, grpc::CallbackServerContext* context,
              const dmoe::v1::GenerateRequest* request) {
    client_.set_deadline(context->deadline());
    thread_ = std::thread([this, stub, request] { Run(stub, *request); });
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) client_.TryCancel();  // the caller is gone
    cv_.notify_all();
  }
  void OnCancel() override { client_.TryCancel(); }
  void OnDone() override {
    thread_.join();
    delete this;
  }

 private:
  void Run(dmoe::v1::Generation::Stub* stub, dmoe::v1::GenerateRequest request) {
    auto reader = stub->GenerateStream(&client_, request);
    dmoe::v1::GenerateStreamResponse event;
    while (reader->Read(&event)) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !writing_; });
      current_ = event;
      writing_ = true;
      StartWrite(&current_);
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !writing_; });
    }
    Finish(reader->Finish());
  }

  grpc::ClientContext client_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool writing_ = false;
  dmoe::v1::GenerateStreamResponse current_;
  std::thread thread_;
};

}  // namespace

GenerationProxy::GenerationProxy(const std::string& backend)
    : backend_(backend),
      stub_(dmoe::v1::Generation::NewStub(
          grpc::CreateChannel(backend, grpc::InsecureChannelCredentials()))) {}

grpc::ServerUnaryReactor* GenerationProxy::Generate(grpc::CallbackServerContext* context,
                                                    const dmoe::v1::GenerateRequest* request,
                                                    dmoe::v1::GenerateResponse* response) {
  return ForwardUnary(context, request, response, [this](auto... args) {
    stub_->async()->Generate(args...);
  });
}

grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerationProxy::GenerateStream(
    grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) {
  return new StreamRelay(stub_.get(), context, request);
}

grpc::ServerUnaryReactor* GenerationProxy::Tokenize(grpc::CallbackServerContext* context,
                                                    const dmoe::v1::TokenizeRequest* request,
                                                    dmoe::v1::TokenizeResponse* response) {
  return ForwardUnary(context, request, response, [this](auto... args) {
    stub_->async()->Tokenize(args...);
  });
}

grpc::ServerUnaryReactor* GenerationProxy::ListModels(grpc::CallbackServerContext* context,
                                                      const dmoe::v1::ListModelsRequest* request,
                                                      dmoe::v1::ListModelsResponse* response) {
  return ForwardUnary(context, request, response, [this](auto... args) {
    stub_->async()->ListModels(args...);
  });
}

}  // namespace dmoe::router
