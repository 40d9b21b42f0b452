// The process's resident memory, to test that mapped checkpoints are not read eagerly.
#ifndef DMOE_TESTS_TESTING_RESIDENT_MEMORY_H_
#define DMOE_TESTS_TESTING_RESIDENT_MEMORY_H_

#include <cstdint>

namespace dmoe_testing {

// Resident set size in bytes (Linux: /proc/self/statm), -1 when unavailable.
int64_t ResidentBytes();

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_RESIDENT_MEMORY_H_
