#include "common/internal_credentials.h"

#include <utility>

#include "grpcpp/create_channel.h"

#include "absl/synchronization/mutex.h"

namespace dmoe {
namespace {

struct Holder {
  absl::Mutex mu;
  std::shared_ptr<grpc::ChannelCredentials> credentials ABSL_GUARDED_BY(mu);
  std::string server_name ABSL_GUARDED_BY(mu);
};

Holder& TheHolder() {
  static Holder* const holder = new Holder();  // never destroyed: used until exit
  return *holder;
}

}  // namespace

void SetInternalChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials,
                                   std::string server_name) {
  Holder& h = TheHolder();
  absl::MutexLock lock(&h.mu);
  h.credentials = std::move(credentials);
  h.server_name = std::move(server_name);
}

std::shared_ptr<grpc::ChannelCredentials> InternalChannelCredentials() {
  Holder& h = TheHolder();
  absl::MutexLock lock(&h.mu);
  if (!h.credentials) return grpc::InsecureChannelCredentials();
  return h.credentials;
}

std::shared_ptr<grpc::Channel> CreateChannelAs(const std::string& address,
                                               std::shared_ptr<grpc::ChannelCredentials> credentials,
                                               const std::string& server_name,
                                               grpc::ChannelArguments args) {
  if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
  return grpc::CreateCustomChannel(address, std::move(credentials), args);
}

std::shared_ptr<grpc::Channel> CreateInternalChannel(const std::string& address,
                                                     grpc::ChannelArguments args) {
  std::string server_name;
  {
    Holder& h = TheHolder();
    absl::MutexLock lock(&h.mu);
    server_name = h.server_name;
  }
  return CreateChannelAs(address, InternalChannelCredentials(), server_name, std::move(args));
}

}  // namespace dmoe
