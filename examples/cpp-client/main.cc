// Generates one completion through any dmoe Generation API server with the installed C++ SDK.
//   dmoe-cpp-client HOST:PORT "prompt text"
#include <iostream>

#include "clients/cpp/generation_client.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " HOST:PORT PROMPT\n";
    return 2;
  }
  auto client = dmoe::client::GenerationClient::Connect({.target = argv[1]});
  if (!client.ok()) {
    std::cerr << "error: " << client.status() << "\n";
    return 1;
  }
  dmoe::v1::GenerateRequest request;
  request.set_text(argv[2]);
  request.mutable_params()->set_max_new_tokens(32);
  auto response = (*client)->Generate(request);
  if (!response.ok()) {
    std::cerr << "error: " << response.status() << "\n";
    return 1;
  }
  std::cout << response->text() << "\n"
            << "forwards " << response->stats().forwards() << ", tokens "
            << response->ids_size() << "\n";
  return 0;
}
