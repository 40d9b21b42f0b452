#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace dmoe::engine {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from (seed, stream, row).
double Uniform(uint64_t seed, uint64_t stream, uint64_t row) {
  uint64_t h = SplitMix64(SplitMix64(SplitMix64(seed) ^ stream) ^ row);
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Keeps the top_k logits (ties at the k-th value are kept, as torch's `logits < kth` test does).
void FilterTopK(std::vector<float>& l, int32_t k) {
  if (k <= 0 || k >= static_cast<int32_t>(l.size())) return;
  std::vector<float> sorted(l);
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
  const float kth = sorted[k - 1];
  for (float& v : l)
    if (v < kth) v = kNegInf;
}

// Nucleus filter as the reference top_p_logits: sort descending, cumulative softmax, remove
// token i when the cumulative probability before it already exceeds top_p.
void FilterTopP(std::vector<float>& l, float top_p) {
  if (top_p >= 1.0f) return;
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  const float max = l[order[0]];
  double total = 0;
  for (float v : l) total += std::exp(static_cast<double>(v - max));
  double cumulative = 0;
  bool remove = false;
  for (int32_t i : order) {
    if (remove) {
      l[i] = kNegInf;
      continue;
    }
    cumulative += std::exp(static_cast<double>(l[i] - max)) / total;
    if (cumulative > top_p) remove = true;  // tokens after this one are removed
  }
}

}  // namespace

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

Proposal SampleRows(const float* logits, int64_t rows, int64_t vocab, const SamplingParams& p,
                    uint64_t stream) {
  Proposal out;
  out.tokens.resize(rows);
  out.confidence.resize(rows);
  const bool filtered = p.top_k > 0 || p.top_p < 1.0f;
  std::vector<float> l;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    const float* src = row;
    if (p.temperature > 0 || filtered) {
      l.assign(row, row + vocab);
      if (p.temperature > 0)
        for (float& v : l) v /= p.temperature;
      FilterTopK(l, p.top_k);
      FilterTopP(l, p.top_p);
      src = l.data();
    }
    // softmax in F32: p_i = exp(l_i - max) / sum_j exp(l_j - max)
    int32_t argmax = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (src[i] > src[argmax]) argmax = static_cast<int32_t>(i);
    const float max = src[argmax];
    float sum = 0.0f;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(src[i] - max);
    int32_t token = argmax;
    if (p.temperature > 0) {
      // Inverse-CDF draw from the filtered distribution.
      const double u = Uniform(p.seed, stream, static_cast<uint64_t>(r)) * sum;
      double cumulative = 0;
      token = -1;
      int32_t last_valid = argmax;
      for (int64_t i = 0; i < vocab; ++i) {
        if (src[i] == kNegInf) continue;
        last_valid = static_cast<int32_t>(i);
        cumulative += std::exp(src[i] - max);
        if (u < cumulative) {
          token = static_cast<int32_t>(i);
          break;
        }
      }
      if (token < 0) token = last_valid;
    }
    out.tokens[r] = token;
    out.confidence[r] = std::exp(src[token] - max) / sum;
  }
  return out;
}

}  // namespace dmoe::engine
