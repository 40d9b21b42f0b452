// lm_head with a fused softmax / top-1 / confidence reduction: for each row of the final-normed
// hidden state, logits = x @ lm_head^T (F32, cuBLAS, in chunks of rows into device scratch),
// then one pass over the row gives
//   id[r]         = argmax_v logits[r, v]        (the lowest id among equal maxima)
//   confidence[r] = softmax(logits[r])[id[r]] = 1 / sum_v exp(logits[r, v] - max)
// the greedy (temperature 0) proposal of engine::SampleRows. Full logits leave the GPU only for
// rows that ask for them (row_logits_host: requests that sample, which the host does);
// otherwise only ids and confidences do (8 bytes per row instead of 4 * vocab).
#ifndef DMOE_MODEL_CUDA_LM_HEAD_H_
#define DMOE_MODEL_CUDA_LM_HEAD_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

struct cublasContext;

namespace dmoe::gpu {

struct LmHeadTop1Args {
  cublasContext* cublas = nullptr;
  const float* x = nullptr;  // F32 [m, hidden] (after the final RMSNorm)
  int64_t m = 0;
  int64_t hidden = 0;
  const void* w = nullptr;  // w_dtype [vocab, hidden]
  DType w_dtype = DType::kBF16;
  int64_t vocab = 0;
  float* logits_scratch = nullptr;  // F32 [scratch_rows, vocab]
  int64_t scratch_rows = 0;         // rows per GEMM chunk (>= 1)
  void* x_scratch = nullptr;        // w_dtype [min(m, scratch_rows), hidden] unless w is F32
  int32_t* ids = nullptr;           // I32 [m]
  float* confidence = nullptr;      // F32 [m]
  // Optional host array [m]: a non-null row_logits_host[r] receives row r's F32 logits (vocab
  // floats), copied out of the scratch before the next chunk reuses it. Rows whose
  // destinations follow each other are copied in one transfer. The destinations must stay valid
  // until the stream is synchronised (with pageable memory each copy also waits for the work
  // queued before it).
  float* const* row_logits_host = nullptr;
};

// Enqueues ceil(m / scratch_rows) GEMM + reduction pairs on `stream`. m == 0 is a no-op.
// INVALID_ARGUMENT for null pointers or bad sizes; GEMM errors as LaunchMatMul.
absl::Status LaunchLmHeadTop1(const LmHeadTop1Args& args, cudaStream_t stream);

// The reduction alone, over F32 logits [m, vocab] already on the device (for callers that
// need the logits anyway, and for tests).
absl::Status LaunchSoftmaxTop1(const float* logits, int64_t m, int64_t vocab, int32_t* ids,
                               float* confidence, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_LM_HEAD_H_
