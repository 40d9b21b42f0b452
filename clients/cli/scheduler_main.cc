// dmoe-scheduler: the cluster's scheduler role. It is `dmoe serve --cluster`: the Generation
// API, the continuous-batching scheduler and the Cluster service that attention replicas and
// expert shards register with; forwards run on those pods.
//
//   dmoe-scheduler --model DIR --listen 127.0.0.1:0 [every `dmoe serve` flag]
#include <string>
#include <vector>

#include "clients/cli/commands.h"

int main(int argc, char** argv) {
  std::string serve = "serve", cluster = "--cluster";
  std::vector<char*> args = {argv[0], serve.data(), cluster.data()};
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  return dmoe::cli::RunCli(static_cast<int>(args.size()), args.data());
}
