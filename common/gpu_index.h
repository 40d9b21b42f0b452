// `--gpu N`: which CUDA device a role uses (issue 16). N indexes the devices this process can
// see, i.e. those CUDA_VISIBLE_DEVICES leaves visible, renumbered from 0 (CUDA's own rule): with
// CUDA_VISIBLE_DEVICES=2,3, `--gpu 1` is physical GPU 3. Under the Kubernetes NVIDIA device
// plugin every pod sees only its own GPU(s), so the default 0 is right there; on a bare host
// with several GPUs, give each pod its own --gpu (or its own CUDA_VISIBLE_DEVICES).
//
// These checks need no GPU and no CUDA headers: they are compiled into every build, so the
// flag is validated the same way with or without CUDA.
#ifndef DMOE_COMMON_GPU_INDEX_H_
#define DMOE_COMMON_GPU_INDEX_H_

#include <string>

#include "absl/status/status.h"

namespace dmoe {

// The --help text of every role's `--gpu` flag.
inline constexpr char kGpuFlagHelp[] =
    "With --device cuda: the CUDA device to use, an index into the devices this process can see "
    "(CUDA_VISIBLE_DEVICES renumbers them from 0)";

// INVALID_ARGUMENT "--gpu: must be >= 0 ..., got -1" for a negative index. Every role calls it
// on its flag before anything else (a typo is caught even with --device cpu).
absl::Status ValidateGpuFlag(int gpu);

// FAILED_PRECONDITION naming `--gpu N` and the number of visible devices when `gpu` >=
// `visible_devices` (the process sees fewer GPUs than the flag assumes: a startup error, not a
// request error). INVALID_ARGUMENT as ValidateGpuFlag for a negative index.
absl::Status CheckGpuIndex(int gpu, int visible_devices);

// " (GPU N of CUDA_VISIBLE_DEVICES=...)" or " (GPU N)" when the variable is unset: the startup
// log line of a role, so an operator sees which physical device a pod was given. Reads the
// environment, so only main() calls it (STYLE.md §4).
std::string DescribeGpuFlag(int gpu);

}  // namespace dmoe

#endif  // DMOE_COMMON_GPU_INDEX_H_
