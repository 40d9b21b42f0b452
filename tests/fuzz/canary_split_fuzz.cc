// The canary split (`dmoe-router --split`, RouterAdmin.SetSplit): ParseSplit on arbitrary text,
// then, as the router does with accepted weights, a TrafficSplit over the versions it names:
// Create, SetSplit with the same weights, every bucket's version and a Pick by key.
// Checked: FormatSplit of a parsed split parses back to the same weights.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "router/traffic_split.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto weights = dmoe::router::ParseSplit(text, "split");
  if (!weights.ok()) return 0;
  auto again = dmoe::router::ParseSplit(dmoe::router::FormatSplit(*weights), "split");
  if (!again.ok() || again->size() != weights->size()) std::abort();
  for (size_t i = 0; i < weights->size(); ++i) {
    if ((*again)[i].version != (*weights)[i].version || (*again)[i].percent != (*weights)[i].percent) {
      std::abort();
    }
  }
  dmoe::router::TrafficSplitOptions options;
  for (const auto& w : *weights) options.versions.push_back(w.version);
  options.weights = *weights;
  if (!options.Validate().ok()) return 0;
  auto split = dmoe::router::TrafficSplit::Create(options);
  if (!split.ok()) return 0;
  (void)(*split)->SetSplit(*weights, options.versions.front());
  for (int b = 0; b < dmoe::router::kNumBuckets; ++b) (void)(*split)->VersionOfBucket(b);
  auto picked = (*split)->Pick(text, "");
  if (!picked.ok()) std::abort();
  return 0;
}
