#include "tests/testing/resident_memory.h"

#include <unistd.h>

#include <cstdio>

namespace dmoe_testing {

int64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  long long size_pages = 0, resident_pages = 0;
  const int fields = std::fscanf(f, "%lld %lld", &size_pages, &resident_pages);
  std::fclose(f);
  if (fields != 2) return -1;
  return static_cast<int64_t>(resident_pages) * ::sysconf(_SC_PAGESIZE);
}

}  // namespace dmoe_testing
