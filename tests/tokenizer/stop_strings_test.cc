// Stop strings on streamed text (StopStringMatcher) and on streamed ids with the real tiny
// tokenizer (StopStringDetokenizer): the output ends right before the first match, text that
// may still become a match is held back, and the id that completes a match is known.
#include "model/stop_strings.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/tokenizer/tokenizer_test_util.h"

namespace dmoe::model {
namespace {

TEST(StopStringMatcherTest, TruncatesBeforeTheMatchAcrossPushes) {
  StopStringMatcher m({"END", "\n\n"});
  std::string shown = m.Push("Hello E");
  shown += m.Push("N");  // "EN" could still become "END": held back
  EXPECT_EQ(shown, "Hello ");
  shown += m.Push("Dmore");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "END");
  EXPECT_EQ(shown + m.Flush(), "Hello ");
  EXPECT_EQ(m.Push("after"), "");

  StopStringMatcher none({"xyz"});
  std::string all = none.Push("ab");  // one call per statement: + does not order them
  all += none.Push("cx");
  all += none.Push("y");
  all += none.Flush();
  EXPECT_FALSE(none.stopped());
  EXPECT_EQ(all, "abcxy");

  StopStringMatcher utf8({"\u00e9t\u00e9"});  // "été"
  std::string text = utf8.Push("caf\u00e9 ");
  text += utf8.Push("\u00e9");
  text += utf8.Push("t\u00e9 ici");
  EXPECT_TRUE(utf8.stopped());
  EXPECT_EQ(text, "caf\u00e9 ");
}

TEST(StopStringMatcherTest, EarliestMatchWins) {
  StopStringMatcher m({"world", "lo w"});
  EXPECT_EQ(m.Push("hello world"), "hel");
  EXPECT_EQ(m.matched(), "lo w");
}

TEST(StopStringMatcherTest, ValidateNamesTheField) {
  EXPECT_TRUE(ValidateStopStrings({"a", "bc"}, "stop").ok());
  EXPECT_EQ(ValidateStopStrings({"a", ""}, "params.stop").message(), "params.stop[1] is empty");
  EXPECT_FALSE(ValidateStopStrings(std::vector<std::string>(17, "x"), "stop").ok());
  EXPECT_FALSE(ValidateStopStrings({std::string(257, 'x')}, "stop").ok());
}

TEST(StopStringDetokenizerTest, CutsTheIdsAtTheTokenThatCompletesTheMatch) {
  auto tokenizer = testing::LoadVariantOrDie("tiny");
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = "the cat sat on the mat. the dog ran.";
  const std::vector<int32_t> ids = tokenizer->Encode(text);
  ASSERT_GT(ids.size(), 6u);

  // Without stop strings: the plain streaming text, never cut.
  StopStringDetokenizer plain(*tokenizer, true, {});
  StopStringDetokenizer::Chunk all = plain.Push(ids);
  EXPECT_EQ(all.text + plain.Flush(), text);
  EXPECT_FALSE(all.stop_after.has_value());

  // "mat" completes inside some token k: ids are kept through k, text ends before "mat".
  StopStringDetokenizer stop(*tokenizer, true, {"mat"});
  std::vector<int32_t> first(ids.begin(), ids.begin() + 3), rest(ids.begin() + 3, ids.end());
  std::string shown = stop.Push(first).text;
  StopStringDetokenizer::Chunk second = stop.Push(rest);
  shown += second.text + stop.Flush();
  EXPECT_EQ(shown, "the cat sat on the ");
  ASSERT_TRUE(second.stop_after.has_value());
  const size_t kept = 3 + *second.stop_after;
  const std::string kept_text = tokenizer->Decode(
      std::vector<int32_t>(ids.begin(), ids.begin() + kept), true);
  const std::string one_less = tokenizer->Decode(
      std::vector<int32_t>(ids.begin(), ids.begin() + kept - 1), true);
  EXPECT_NE(kept_text.find("mat"), std::string::npos) << kept_text;
  EXPECT_EQ(one_less.find("mat"), std::string::npos) << one_less;
  EXPECT_TRUE(stop.stopped());
  EXPECT_EQ(stop.Push(ids).stop_after, 0u);  // after the end, nothing more is kept
}

}  // namespace
}  // namespace dmoe::model
