// ParseModelConfig (config.json) and ConfigFingerprint on arbitrary bytes. An accepted config's
// derived sizes must not overflow (UBSan stops on signed overflow).
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)dmoe::model::ConfigFingerprint(text);
  auto config = dmoe::model::ParseModelConfig(text, "fuzz/config.json");
  if (config.ok()) {
    volatile int64_t sink = config->qkv_width();
    (void)sink;
  }
  return 0;
}
