// The credentials every internal gRPC client of this process presents: scheduler -> attention,
// attention -> expert, pods -> scheduler (membership, communicator ids), attention -> expert
// pairing. A process has one identity (its --tls-cert/--tls-key, trusting --tls-ca), so a
// role's main() sets them once after parsing its flags (auth::ChannelCredentials builds them);
// until then they are insecure, which keeps in-process clusters and tests on plaintext.
#ifndef DMOE_COMMON_INTERNAL_CREDENTIALS_H_
#define DMOE_COMMON_INTERNAL_CREDENTIALS_H_

#include <memory>

#include "grpcpp/security/credentials.h"

namespace dmoe {

// Thread-safe; call before the process starts its internal clients.
void SetInternalChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials);
// Never null: grpc::InsecureChannelCredentials() until set.
std::shared_ptr<grpc::ChannelCredentials> InternalChannelCredentials();

}  // namespace dmoe

#endif  // DMOE_COMMON_INTERNAL_CREDENTIALS_H_
