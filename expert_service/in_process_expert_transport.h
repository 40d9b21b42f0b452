// ExpertTransport that calls an ExpertEngine in this process: no serialization, the engine
// reads the caller's rows and writes the caller's output buffer directly.
#ifndef DMOE_EXPERT_SERVICE_IN_PROCESS_EXPERT_TRANSPORT_H_
#define DMOE_EXPERT_SERVICE_IN_PROCESS_EXPERT_TRANSPORT_H_

#include <string>

#include "expert_service/expert_engine.h"
#include "transport/expert_transport.h"

namespace dmoe::expert {

// Thread-safe (ExpertEngine is). Computes on the calling thread.
class InProcessExpertTransport final : public transport::ExpertTransport {
 public:
  // `engine` must outlive the transport. `name` is reported by address() ("inproc:<name>").
  InProcessExpertTransport(ExpertEngine& engine, const std::string& name)
      : engine_(engine), address_("inproc:" + name) {}

  const std::string& address() const override { return address_; }
  absl::Status RunExperts(const transport::ExpertRows& rows, absl::Time deadline, float* out) override;
  absl::StatusOr<transport::ShardInfo> GetShardInfo(absl::Time deadline) override;

 private:
  ExpertEngine& engine_;
  std::string address_;
};

}  // namespace dmoe::expert

#endif  // DMOE_EXPERT_SERVICE_IN_PROCESS_EXPERT_TRANSPORT_H_
