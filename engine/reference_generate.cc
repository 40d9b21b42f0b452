#include "engine/reference_generate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/status_macros.h"

namespace dmoe::engine {
namespace {

double LogSoftmaxAt(const float* row, int64_t vocab, int32_t token) {
  const double max = *std::max_element(row, row + vocab);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
  return static_cast<double>(row[token]) - max - std::log(sum);
}

}  // namespace

absl::StatusOr<ReferenceResult> ReferenceGenerate(const model::Model& model,
                                                  model::Kernels& kernels,
                                                  model::ExpertExecutor& experts,
                                                  const std::vector<int32_t>& prompt,
                                                  const GenerationParams& params) {
  if (params.mode != DecodeMode::kDiffusion) {
    return absl::InvalidArgumentError("ReferenceGenerate implements diffusion decoding only");
  }
  const int64_t vocab = model.config().vocab_size;
  DMOE_RETURN_IF_ERROR(params.Validate(vocab));
  const int64_t B = params.block_length, gen_length = params.max_new_tokens;
  const int64_t steps = std::min(params.steps, gen_length);  // minimal_topk = 1
  const int64_t P = static_cast<int64_t>(prompt.size());
  const int64_t nb = (P + gen_length + B - 1) / B, N = nb * B;
  std::vector<int32_t> x(prompt);
  x.resize(N, params.mask_id);
  std::vector<float> logprob(N, 0.0f);
  std::vector<int64_t> sched(steps, B / steps);
  for (int64_t i = 0; i < B % steps; ++i) sched[i] += 1;
  auto is_stop = [&](int32_t t) {
    return std::find(params.stop_ids.begin(), params.stop_ids.end(), t) != params.stop_ids.end();
  };

  ReferenceResult result;
  for (int64_t b = P / B; b < nb; ++b) {
    const int64_t end = (b + 1) * B;
    for (int64_t step = 0; step < steps; ++step) {
      std::vector<bool> active(B);
      int64_t n_active = 0;
      for (int64_t i = 0; i < B; ++i) n_active += (active[i] = x[end - B + i] == params.mask_id);
      if (n_active == 0) break;
      std::vector<model::ForwardSegment> segment(1);
      segment[0] = {.kv = nullptr,
                    .start = 0,
                    .tokens = std::vector<int32_t>(x.begin(), x.begin() + end),
                    .persist = 0,
                    .attention_block = B,
                    .logits_from = end - B};
      DMOE_ASSIGN_OR_RETURN(auto logits, model.Forward(segment, kernels, experts));
      ++result.forwards;
      Proposal p = SampleRows(logits[0].data(), B, vocab, params.sampling,
                              static_cast<uint64_t>(result.forwards - 1));
      std::vector<float> conf(B, -std::numeric_limits<float>::infinity());
      int64_t n_hi = 0;
      for (int64_t i = 0; i < B; ++i) {
        if (active[i]) conf[i] = p.confidence[i];
        n_hi += conf[i] > params.threshold;
      }
      std::vector<bool> commit(B, false);
      if (n_hi >= sched[step]) {
        for (int64_t i = 0; i < B; ++i) commit[i] = conf[i] > params.threshold;
      } else {
        std::vector<int64_t> order(B);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t c) { return conf[a] > conf[c]; });
        for (int64_t r = 0; r < std::min(sched[step], n_active); ++r) commit[order[r]] = true;
      }
      for (int64_t i = 0; i < B; ++i) {
        if (!commit[i]) continue;
        x[end - B + i] = p.tokens[i];
        logprob[end - B + i] =
            static_cast<float>(LogSoftmaxAt(logits[0].data() + i * vocab, vocab, p.tokens[i]));
      }
    }
    bool stop = false;
    for (int64_t i = P; i < end; ++i) stop = stop || is_stop(x[i]);
    if (stop) break;
  }
  for (int64_t i = P; i < std::min(P + gen_length, N); ++i) {
    result.ids.push_back(x[i]);
    result.logprobs.push_back(logprob[i]);
    if (is_stop(x[i])) break;
  }
  return result;
}

}  // namespace dmoe::engine
