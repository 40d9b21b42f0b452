#include "common/internal_credentials.h"

#include <utility>

#include "absl/synchronization/mutex.h"

namespace dmoe {
namespace {

struct Holder {
  absl::Mutex mu;
  std::shared_ptr<grpc::ChannelCredentials> credentials ABSL_GUARDED_BY(mu);
};

Holder& TheHolder() {
  static Holder* const holder = new Holder();  // never destroyed: used until exit
  return *holder;
}

}  // namespace

void SetInternalChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  Holder& h = TheHolder();
  absl::MutexLock lock(&h.mu);
  h.credentials = std::move(credentials);
}

std::shared_ptr<grpc::ChannelCredentials> InternalChannelCredentials() {
  Holder& h = TheHolder();
  absl::MutexLock lock(&h.mu);
  if (!h.credentials) return grpc::InsecureChannelCredentials();
  return h.credentials;
}

}  // namespace dmoe
