// dmoe-gpu-bench: time per block forward of a LLaDA2.0-mini-shaped model on one GPU, against
// the HBM roofline (issue 6).
//
// The model: 20 layers (layer 0 dense, 19 MoE), hidden 2048, 16 heads / 4 KV heads of 128,
// 256 experts of width 512 (top-8, 8 groups / top-4), one shared expert, vocab 157184, BF16,
// random weights generated on the device (no checkpoint file). Each sequence first gets a
// cached prefix (--prefix tokens, persisted into the paged KV cache), then a block forward is
// 32 fresh tokens per sequence over that prefix: what one denoising step of block diffusion
// costs. For batch 1, 4 and 16 sequences it reports the device time per block forward (CUDA
// events, median of --iters), the split attention / routed experts / rest, the experts touched
// per layer, and the achieved bandwidth against the roofline of the issue: every weight the
// forward touches read once = all non-expert weights (attention, norms, routers, shared
// experts, dense FFN, lm_head; embedding rows are gathered) + every expert that at least one
// token of the batch was routed to. KV-cache bytes are shown separately.
//
// Usage: dmoe-gpu-bench [--batches 1,4,16] [--prefix 512] [--iters 5] [--layers 20]
//                       [--out results.md]
// Without a GPU it prints "no GPU: <reason>" and exits 0.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "model/config.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_worker.h"

namespace dmoe::gpu {
namespace {

struct Flags {
  std::vector<int64_t> batches = {1, 4, 16};
  int64_t prefix = 512;
  int64_t iters = 5;
  int64_t layers = 20;
  std::string out;
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--batches") {
      f->batches.clear();
      for (absl::string_view s : absl::StrSplit(value(), ',')) {
        int64_t b = 0;
        if (!absl::SimpleAtoi(s, &b) || b <= 0) return false;
        f->batches.push_back(b);
      }
    } else if (arg == "--prefix") {
      if (!absl::SimpleAtoi(value(), &f->prefix) || f->prefix < 0) return false;
    } else if (arg == "--iters") {
      if (!absl::SimpleAtoi(value(), &f->iters) || f->iters <= 0) return false;
    } else if (arg == "--layers") {
      if (!absl::SimpleAtoi(value(), &f->layers) || f->layers < 2) return false;
    } else if (arg == "--out") {
      f->out = value();
    } else {
      return false;
    }
  }
  return !f->batches.empty();
}

model::ModelConfig MiniConfig(int64_t layers) {
  model::ModelConfig c;
  c.model_type = "llada2_moe";
  c.vocab_size = 157184;
  c.hidden_size = 2048;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 4;
  c.head_dim = 128;
  c.intermediate_size = 5120;
  c.moe_intermediate_size = 512;
  c.num_experts = 256;
  c.num_experts_per_tok = 8;
  c.num_shared_experts = 1;
  c.n_group = 8;
  c.topk_group = 4;
  c.first_k_dense_replace = 1;
  c.routed_scaling_factor = 2.5;
  c.rotary_dim = 64;
  c.rope_theta = 600000.0;
  c.max_position_embeddings = 32768;
  return c;
}

struct Row {
  int64_t batch = 0;
  CudaForwardTimings median;
  double touched_per_layer = 0;
  double weight_bytes = 0;
  double kv_bytes = 0;
};

int Run(const Flags& flags) {
  auto count = CudaDeviceCount();
  if (!count.ok()) {
    std::cout << "no GPU: " << count.status().message() << "\n";
    return 0;
  }
  auto info = QueryDeviceInfo(0);
  if (!info.ok()) {
    std::cerr << info.status() << "\n";
    return 1;
  }
  auto worker = DeviceWorker::Create({});
  if (!worker.ok()) {
    std::cerr << worker.status() << "\n";
    return 1;
  }
  const model::ModelConfig c = MiniConfig(flags.layers);
  const int64_t block = 32;
  const int64_t max_batch = *std::max_element(flags.batches.begin(), flags.batches.end());
  std::vector<Row> rows;
  std::string model_line;

  absl::Status status = (*worker)->Run([&](DeviceContext& ctx) -> absl::Status {
    auto weights = CudaWeights::Random(c, DType::kBF16, 1, ctx.stream);
    if (!weights.ok()) return weights.status();
    model_line = absl::StrFormat(
        "model: LLaDA2.0-mini shape, %d layers, BF16 random weights on the device: %.2f GB "
        "allocated, %.2f GB non-expert (read every forward), %.1f MB per routed expert",
        c.num_hidden_layers, (*weights)->AllocatedBytes() / 1e9, (*weights)->NonExpertBytes() / 1e9,
        (*weights)->ExpertBytes(1) / 1e6);
    std::cout << model_line << "\n" << std::flush;
    const int64_t page_tokens = 32;
    const int64_t pages_per_seq = (flags.prefix + block + page_tokens - 1) / page_tokens + 1;
    auto pool = CudaKvPool::Create(
        {.num_layers = c.num_hidden_layers, .kv_width = c.kv_width(), .page_tokens = page_tokens},
        max_batch * pages_per_seq + 1);
    if (!pool.ok()) return pool.status();
    CudaModelOptions options;
    options.max_rows = std::max<int64_t>(max_batch * block, 512);
    options.max_segments = max_batch;
    options.max_pages_per_segment = pages_per_seq;
    options.time_phases = true;
    auto model = CudaModel::Create(**weights, pool->get(), options, ctx);
    if (!model.ok()) return model.status();

    // Prefixes: each sequence persists `prefix` tokens (forwards of at most 512 rows).
    std::vector<std::unique_ptr<CudaKvSequence>> seqs;
    for (int64_t s = 0; s < max_batch; ++s) {
      seqs.push_back(std::make_unique<CudaKvSequence>(pool->get()));
      for (int64_t done = 0; done < flags.prefix;) {
        const int64_t n = std::min<int64_t>(512, flags.prefix - done);
        std::vector<CudaForwardSegment> seg(1);
        seg[0].kv = seqs.back().get();
        seg[0].start = done;
        for (int64_t i = 0; i < n; ++i) {
          seg[0].tokens.push_back(static_cast<int32_t>((s * 7919 + (done + i) * 31) % 150000));
        }
        seg[0].persist = n;
        seg[0].logits_from = n;  // no logits needed
        auto r = (*model)->Forward(seg);
        if (!r.ok()) return r.status();
        done += n;
      }
    }

    for (int64_t batch : flags.batches) {
      std::vector<CudaForwardTimings> samples;
      for (int64_t it = 0; it < flags.iters + 2; ++it) {  // 2 warm-up forwards
        std::vector<CudaForwardSegment> segs(batch);
        for (int64_t s = 0; s < batch; ++s) {
          segs[s].kv = seqs[s].get();
          segs[s].start = flags.prefix;
          segs[s].attention_block = block;
          for (int64_t i = 0; i < block; ++i) {
            // A partly denoised block: some committed ids, the rest a mask-like id.
            segs[s].tokens.push_back(
                i % 3 == 0 ? static_cast<int32_t>((s * 131 + i * 17 + it) % 150000) : 156895);
          }
        }
        CudaForwardTimings t;
        auto r = (*model)->Forward(segs, &t);
        if (!r.ok()) return r.status();
        if (it >= 2) samples.push_back(std::move(t));
      }
      std::sort(samples.begin(), samples.end(),
                [](const CudaForwardTimings& a, const CudaForwardTimings& b) {
                  return a.total_ms < b.total_ms;
                });
      Row row;
      row.batch = batch;
      row.median = samples[samples.size() / 2];
      double touched = 0, expert_bytes = 0;
      for (size_t l = 0; l < row.median.touched_experts.size(); ++l) {
        touched += row.median.touched_experts[l];
        expert_bytes += row.median.touched_experts[l] *
                        static_cast<double>((*weights)->ExpertBytes(c.first_k_dense_replace + l));
      }
      row.touched_per_layer = touched / std::max<size_t>(row.median.touched_experts.size(), 1);
      row.weight_bytes = (*weights)->NonExpertBytes() + expert_bytes;
      row.kv_bytes = static_cast<double>(batch) * flags.prefix * c.num_hidden_layers * 2 *
                     c.kv_width() * sizeof(float);
      rows.push_back(row);
    }
    seqs.clear();
    model->reset();
    pool->reset();
    weights->reset();
    return absl::OkStatus();
  });
  if (!status.ok()) {
    std::cerr << "dmoe-gpu-bench: " << status << "\n";
    return 1;
  }

  std::ostringstream md;
  md << absl::StrFormat("device: %s (sm_%d%d, %d SMs, %.0f GB), peak DRAM bandwidth %.2f TB/s\n\n",
                        info->name, info->compute_major, info->compute_minor, info->multiprocessors,
                        info->total_memory_bytes / 1e9, info->peak_memory_bytes_per_second / 1e12);
  md << model_line << "; cached prefix " << flags.prefix << " tokens per sequence, block " << block
     << " tokens, median of " << flags.iters << " forwards\n\n";
  md << "| sequences | tokens | block forward (ms) | attention (ms) | routed experts (ms) | "
        "other MoE (ms) | head (ms) | experts touched / layer | weight bytes (GB) | "
        "achieved (TB/s) | % of peak | x roofline | KV read (GB) |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    const double seconds = r.median.total_ms / 1e3;
    const double achieved = r.weight_bytes / seconds;
    const double roofline_s = r.weight_bytes / info->peak_memory_bytes_per_second;
    md << absl::StrFormat(
        "| %d | %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f | %.2f | %.2f | %.0f%% | %.2f | "
        "%.2f |\n",
        r.batch, r.batch * block, r.median.total_ms, r.median.attention_ms, r.median.experts_ms,
        r.median.other_moe_ms, r.median.head_ms, r.touched_per_layer, r.weight_bytes / 1e9,
        achieved / 1e12, 100.0 * achieved / info->peak_memory_bytes_per_second,
        seconds / roofline_s, r.kv_bytes / 1e9);
  }
  md << "\nx roofline = block forward time / (weight bytes / peak bandwidth); the issue's goal "
        "is <= 1.5 at 1 sequence.\n";
  std::cout << md.str();
  if (!flags.out.empty()) {
    std::ofstream f(flags.out);
    f << md.str();
    if (!f) {
      std::cerr << "cannot write " << flags.out << "\n";
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace dmoe::gpu

int main(int argc, char** argv) {
  dmoe::gpu::Flags flags;
  if (!dmoe::gpu::ParseFlags(argc, argv, &flags)) {
    std::cerr << "usage: dmoe-gpu-bench [--batches 1,4,16] [--prefix 512] [--iters 5] "
                 "[--layers 20] [--out FILE]\n";
    return 2;
  }
  return dmoe::gpu::Run(flags);
}
