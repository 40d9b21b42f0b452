// The credentials every internal gRPC client of this process presents: scheduler -> attention,
// attention -> expert, pods -> scheduler (membership, communicator ids), attention -> expert
// pairing. A process has one identity (its --tls-cert/--tls-key, trusting --tls-ca), so a
// role's main() sets them once after parsing its flags (auth::ChannelCredentials builds them);
// until then they are insecure, which keeps in-process clusters and tests on plaintext.
#ifndef DMOE_COMMON_INTERNAL_CREDENTIALS_H_
#define DMOE_COMMON_INTERNAL_CREDENTIALS_H_

#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace dmoe {

// Thread-safe; call before the process starts its internal clients. `server_name` (--tls-server-name):
// verify every internal peer's certificate as this name instead of the address dialled, so
// one certificate serves pods whose IPs are not known when it is issued (Kubernetes); empty:
// the address's host.
void SetInternalChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials,
                                   std::string server_name = "");
// Never null: grpc::InsecureChannelCredentials() until set.
std::shared_ptr<grpc::ChannelCredentials> InternalChannelCredentials();

// A channel to an internal peer with the process's credentials and server name; `args` may
// carry the caller's own settings (message sizes).
std::shared_ptr<grpc::Channel> CreateInternalChannel(const std::string& address,
                                                     grpc::ChannelArguments args = {});
// A channel with `credentials` that checks certificates as `server_name` (when not empty).
std::shared_ptr<grpc::Channel> CreateChannelAs(const std::string& address,
                                               std::shared_ptr<grpc::ChannelCredentials> credentials,
                                               const std::string& server_name,
                                               grpc::ChannelArguments args = {});

}  // namespace dmoe

#endif  // DMOE_COMMON_INTERNAL_CREDENTIALS_H_
