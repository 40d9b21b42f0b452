// StepExecutor over an in-process AttentionEngine (dmoe serve, tests).
#ifndef DMOE_SERVE_LOCAL_STEP_EXECUTOR_H_
#define DMOE_SERVE_LOCAL_STEP_EXECUTOR_H_

#include "attention_service/attention_engine.h"
#include "scheduler/step_executor.h"

namespace dmoe::serve {

// Thread-safe (AttentionEngine is).
class LocalStepExecutor : public scheduler::StepExecutor {
 public:
  explicit LocalStepExecutor(attention::AttentionEngine& engine) : engine_(engine) {}
  absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<scheduler::SequenceStep>& steps) override;
  void Release(const std::vector<std::string>& sequence_ids) override;
  int64_t KvPagesCapacity() override;

 private:
  attention::AttentionEngine& engine_;
};

}  // namespace dmoe::serve

#endif  // DMOE_SERVE_LOCAL_STEP_EXECUTOR_H_
