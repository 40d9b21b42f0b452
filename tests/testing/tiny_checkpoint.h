// Random-weight checkpoints for tests (tools/checkpoint_gen), written into temp directories.
#ifndef DMOE_TESTS_TESTING_TINY_CHECKPOINT_H_
#define DMOE_TESTS_TESTING_TINY_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "tests/testing/temp_dir.h"
#include "tools/checkpoint_gen/random_checkpoint.h"

namespace dmoe_testing {

// The `tiny` preset with seed 0 (tokenizer files copied from tools/data/tiny_tokenizer when
// that directory exists). Adjust fields before passing it on.
dmoe::tools::RandomCheckpointSpec TinySpec();

// TinySpec for decoding tests: no tokenizer files (ids only; mask 4000 and stop 4001 are
// plain vocabulary ids) and lm_head std 0.6, a logit std of ~5, so confidences spread over
// (0, 1) and every threshold commits differently.
dmoe::tools::RandomCheckpointSpec DecodingSpec(uint64_t seed = 0);

// Writes the checkpoint for `spec` into `dir` (see dmoe::tools::WriteRandomCheckpoint).
absl::Status WriteTinyCheckpoint(const std::string& dir,
                                 const dmoe::tools::RandomCheckpointSpec& spec = TinySpec());

// A temporary directory holding a random checkpoint, deleted on destruction:
//   dmoe_testing::TinyCheckpointDir tiny;            // or TinyCheckpointDir tiny(spec);
//   ASSERT_TRUE(tiny.ok()) << tiny.status();
//   auto ckpt = dmoe::model::Checkpoint::Open(tiny.dir());
// A failed write also records a GoogleTest failure (ADD_FAILURE). Thread-compatible.
class TinyCheckpointDir {
 public:
  explicit TinyCheckpointDir(const dmoe::tools::RandomCheckpointSpec& spec = TinySpec());

  const std::string& dir() const { return tmp_.path(); }
  const dmoe::tools::RandomCheckpointSpec& spec() const { return spec_; }
  const absl::Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }

 private:
  TempDir tmp_;
  dmoe::tools::RandomCheckpointSpec spec_;
  absl::Status status_;
};

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_TINY_CHECKPOINT_H_
