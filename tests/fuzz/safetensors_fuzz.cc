// SafetensorsFile::Open on arbitrary file contents: the 8-byte header length, the JSON header
// and the offsets must be checked before any tensor byte is touched. The input is written to a
// memfd and opened through /proc/self/fd, so the real mmap path runs and nothing hits the disk.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("dmoe_fuzz_safetensors", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  size_t done = 0;
  while (done < size) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  auto file = dmoe::model::SafetensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
  if (file.ok()) {
    // Every view Open accepted lies inside the mapping: touch its first and last byte, and
    // check the size against dtype x shape.
    volatile uint8_t sink = 0;
    for (const auto& [name, view] : (*file)->tensors()) {
      if (view.nbytes == 0) continue;
      const auto* bytes = static_cast<const uint8_t*>(view.data);
      sink = sink ^ bytes[0] ^ bytes[view.nbytes - 1];
      if (static_cast<uint64_t>(view.numel()) * dmoe::DTypeSize(view.dtype) != view.nbytes) {
        std::abort();
      }
    }
    (void)sink;
  }
  close(fd);
  return 0;
}
