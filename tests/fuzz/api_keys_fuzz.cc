// The API keys file (`--api-keys FILE`, re-read when it changes): ParseKeysFile on arbitrary
// text. Checked: every accepted entry names a tenant.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "common/auth/api_keys.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto entries = dmoe::auth::ParseKeysFile(text, "fuzz/keys");
  if (!entries.ok()) return 0;
  for (const auto& e : *entries) {
    if (e.tenant.empty()) std::abort();
  }
  return 0;
}
