// Transport security (service): a real gRPC server on 127.0.0.1:0 with the credentials of
// common/auth/tls.h and certificates from common/auth/certificates.h. An internal port (mutual
// TLS) refuses a plaintext client, a TLS client without a certificate and one whose certificate
// another CA signed; a cluster certificate gets in. A public port (TLS, no client certificate)
// serves a client that only trusts the CA and refuses plaintext.
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/auth/certificates.h"
#include "common/auth/tls.h"
#include "common/internal_credentials.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::auth {
namespace {

using dmoe_testing::IsOk;
using dmoe_testing::StatusIs;

class Models final : public dmoe::v1::Generation::CallbackService {
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dmoe::v1::ListModelsRequest*,
                                       dmoe::v1::ListModelsResponse* response) override {
    response->add_models()->set_name("tiny");
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_THAT(MakeCertificateAuthority(dir_.path()), IsOk());
    DMOE_ASSERT_OK_AND_ASSIGN(server_tls_, IssueCertificate(dir_.path(), "server"));
    DMOE_ASSERT_OK_AND_ASSIGN(client_tls_, IssueCertificate(dir_.path(), "client"));
    ASSERT_THAT(MakeCertificateAuthority(rogue_.path()), IsOk());
    DMOE_ASSERT_OK_AND_ASSIGN(rogue_tls_, IssueCertificate(rogue_.path(), "intruder"));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  void Start(ClientCertificates mode) {
    DMOE_ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ServerCredentials> credentials,
                              ServerCredentials(server_tls_, mode));
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(port_, 0);
  }
  grpc::Status Call(std::shared_ptr<grpc::ChannelCredentials> credentials) {
    auto stub = dmoe::v1::Generation::NewStub(
        grpc::CreateChannel(absl::StrCat("localhost:", port_), credentials));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    dmoe::v1::ListModelsResponse response;
    return stub->ListModels(&context, {}, &response);
  }
  // A call that checks the server's certificate as `name` (--tls-server-name; "" the address).
  grpc::Status CallAs(std::shared_ptr<grpc::ChannelCredentials> credentials,
                      const std::string& name) {
    auto stub = dmoe::v1::Generation::NewStub(
        CreateChannelAs(absl::StrCat("localhost:", port_), std::move(credentials), name));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    dmoe::v1::ListModelsResponse response;
    return stub->ListModels(&context, {}, &response);
  }
  std::shared_ptr<grpc::ChannelCredentials> Credentials(const TlsOptions& options) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> c = CallerCredentials(options);
    EXPECT_THAT(c.status(), IsOk());
    return c.ok() ? *c : grpc::InsecureChannelCredentials();
  }

  dmoe_testing::TempDir dir_, rogue_;
  TlsOptions server_tls_, client_tls_, rogue_tls_;
  Models service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, InternalPortRequiresAClusterCertificate) {
  Start(ClientCertificates::kRequired);
  EXPECT_EQ(Call(grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);  // plaintext
  TlsOptions no_cert;
  no_cert.ca_file = client_tls_.ca_file;
  EXPECT_EQ(Call(Credentials(no_cert)).error_code(), grpc::StatusCode::UNAVAILABLE);
  // The intruder trusts our CA but its certificate is signed by another one.
  TlsOptions intruder = rogue_tls_;
  intruder.ca_file = client_tls_.ca_file;
  EXPECT_EQ(Call(Credentials(intruder)).error_code(), grpc::StatusCode::UNAVAILABLE);
  DMOE_ASSERT_OK_AND_ASSIGN(auto cluster, ChannelCredentials(client_tls_));
  EXPECT_TRUE(Call(cluster).ok());
}

TEST_F(TlsTest, PublicPortIsTlsWithoutClientCertificates) {
  Start(ClientCertificates::kNotRequested);
  EXPECT_EQ(Call(grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  TlsOptions ca_only;
  ca_only.ca_file = client_tls_.ca_file;
  EXPECT_TRUE(Call(Credentials(ca_only)).ok());
  // A client that trusts another CA does not accept this server.
  TlsOptions other_ca;
  other_ca.ca_file = rogue_tls_.ca_file;
  EXPECT_EQ(Call(Credentials(other_ca)).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// --tls-server-name: internal calls check the peer's certificate as that name, not as the
// address dialled (Kubernetes: one Secret's certificate for pods whose IPs nobody knows ahead).
TEST_F(TlsTest, ServerNameOverrideChecksTheCertificateAsThatName) {
  DMOE_ASSERT_OK_AND_ASSIGN(server_tls_,
                            IssueCertificate(dir_.path(), "pod", "pods.dmoe.internal"));
  Start(ClientCertificates::kRequired);
  DMOE_ASSERT_OK_AND_ASSIGN(auto cluster, ChannelCredentials(client_tls_));
  auto call_as = [&](const std::string& name) { return CallAs(cluster, name); };
  EXPECT_TRUE(call_as("pods.dmoe.internal").ok());
  // A name the certificate does not hold is refused, though the address would have matched.
  EXPECT_EQ(call_as("elsewhere.example").error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(call_as("").ok());  // no override: the address (localhost) is checked
}

// --tls-reload-seconds: a certificate replaced on disk (a renewed Kubernetes Secret) serves
// new connections without a restart, on the server and on the internal client.
TEST_F(TlsTest, ARotatedCertificateServesWithoutARestart) {
  DMOE_ASSERT_OK_AND_ASSIGN(server_tls_, IssueCertificate(dir_.path(), "pod", "old.dmoe"));
  server_tls_.reload_seconds = 1;
  Start(ClientCertificates::kRequired);
  client_tls_.reload_seconds = 1;
  DMOE_ASSERT_OK_AND_ASSIGN(auto cluster, ChannelCredentials(client_tls_));
  auto call_as = [&](const std::string& name) { return CallAs(cluster, name); };
  EXPECT_TRUE(call_as("old.dmoe").ok());
  EXPECT_EQ(call_as("new.dmoe").error_code(), grpc::StatusCode::UNAVAILABLE);
  // The renewal: a certificate for another name, written over the same files.
  DMOE_ASSERT_OK_AND_ASSIGN(TlsOptions renewed, IssueCertificate(dir_.path(), "pod", "new.dmoe"));
  ASSERT_EQ(renewed.cert_file, server_tls_.cert_file);
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    served = call_as("new.dmoe").ok();
  }
  EXPECT_TRUE(served) << "the renewed certificate was not picked up within 10 s";
  EXPECT_EQ(call_as("old.dmoe").error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, FlagsAreValidated) {
  TlsOptions partial;
  partial.cert_file = server_tls_.cert_file;
  EXPECT_THAT(ServerCredentials(partial, ClientCertificates::kRequired).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  TlsOptions missing = server_tls_;
  missing.ca_file = dir_.Join("absent.pem");
  EXPECT_THAT(ServerCredentials(missing, ClientCertificates::kRequired).status(),
              StatusIs(absl::StatusCode::kNotFound));
  DMOE_ASSERT_OK_AND_ASSIGN(auto plaintext, ServerCredentials({}, ClientCertificates::kRequired));
  EXPECT_NE(plaintext, nullptr);
}

}  // namespace
}  // namespace dmoe::auth
