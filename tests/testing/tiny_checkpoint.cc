#include "tests/testing/tiny_checkpoint.h"

#include "gtest/gtest.h"

namespace dmoe_testing {

dmoe::tools::RandomCheckpointSpec TinySpec() {
  dmoe::tools::RandomCheckpointSpec spec = dmoe::tools::TinyCheckpointSpec();
  spec.seed = 0;
  return spec;
}

dmoe::tools::RandomCheckpointSpec DecodingSpec(uint64_t seed) {
  dmoe::tools::RandomCheckpointSpec spec = TinySpec();
  spec.seed = seed;
  spec.tokenizer_dir = "";
  spec.lm_head_std = 0.6;
  return spec;
}

absl::Status WriteTinyCheckpoint(const std::string& dir,
                                 const dmoe::tools::RandomCheckpointSpec& spec) {
  return dmoe::tools::WriteRandomCheckpoint(spec, dir);
}

TinyCheckpointDir::TinyCheckpointDir(const dmoe::tools::RandomCheckpointSpec& spec)
    : spec_(spec), status_(WriteTinyCheckpoint(tmp_.path(), spec)) {
  if (!status_.ok()) ADD_FAILURE() << "writing a random checkpoint failed: " << status_;
}

}  // namespace dmoe_testing
