// StepExecutor over an in-process AttentionEngine (dmoe serve, tests).
#ifndef DMOE_SCHEDULER_LOCAL_STEP_EXECUTOR_H_
#define DMOE_SCHEDULER_LOCAL_STEP_EXECUTOR_H_

#include "attention_service/attention_engine.h"
#include "scheduler/step_executor.h"

namespace dmoe::scheduler {

// Thread-safe (AttentionEngine is).
class LocalStepExecutor : public StepExecutor {
 public:
  explicit LocalStepExecutor(attention::AttentionEngine& engine) : engine_(engine) {}
  absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<SequenceStep>& steps) override;
  void Release(const std::vector<std::string>& sequence_ids) override;
  int64_t KvPagesCapacity() override;

 private:
  attention::AttentionEngine& engine_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_LOCAL_STEP_EXECUTOR_H_
