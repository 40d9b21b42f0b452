// A fresh temporary directory per test, removed with everything in it on destruction.
#ifndef DMOE_TESTS_TESTING_TEMP_DIR_H_
#define DMOE_TESTS_TESTING_TEMP_DIR_H_

#include <string>
#include <string_view>

namespace dmoe_testing {

// Creates `$TEST_TMPDIR/dmoe-test-XXXXXX` (or under /tmp) and removes it recursively when
// destroyed. Aborts if the directory cannot be created. Thread-compatible.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Join(std::string_view name) const;

 private:
  std::string path_;
};

// Writes `contents` to `path` (binary, truncating); aborts on failure. For test fixtures.
void WriteFileOrDie(const std::string& path, std::string_view contents);
// Reads a whole file; aborts on failure.
std::string ReadFileOrDie(const std::string& path);

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_TEMP_DIR_H_
