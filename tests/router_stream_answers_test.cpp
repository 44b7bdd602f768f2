// What fence queries found per stream (router/stream_answers.h): an event found complete answers for
// the older events of its stream only, and only while its stream stays in the walks.
#include "router/stream_answers.h"

#include <gtest/gtest.h>

namespace gpushim {
namespace {

TEST(StreamAnswers, ACompleteEventAnswersForTheOlderEventsOfItsStreamOnly) {
  StreamAnswers answers;
  answers.begin_walk();
  answers.visit(7);
  answers.visit(9);
  answers.forget_unvisited();
  EXPECT_FALSE(answers.known_complete(7, 1)) << "nothing was found yet";
  answers.found_complete(7, 5);
  EXPECT_TRUE(answers.known_complete(7, 1));
  EXPECT_TRUE(answers.known_complete(7, 5));
  EXPECT_FALSE(answers.known_complete(7, 6)) << "a newer event of the stream may still run";
  EXPECT_FALSE(answers.known_complete(9, 2)) << "another stream's event";
  answers.found_complete(7, 3);  // an older answer found later takes nothing back
  EXPECT_TRUE(answers.known_complete(7, 5));
}

TEST(StreamAnswers, AnEventOfUnknownPlaceIsNeverKnown) {
  StreamAnswers answers;
  answers.visit(3);
  answers.found_complete(3, 10);
  EXPECT_FALSE(answers.known_complete(3, 0)) << "sequence 0: an event recorded outside the walk";
  EXPECT_FALSE(answers.known_complete(0, 1)) << "serial 0: no stream known";
  answers.found_complete(0, 99);
  EXPECT_FALSE(answers.known_complete(0, 1));
}

// A stream that a walk did not visit (idle, or destroyed and its serial never reused) is forgotten:
// its events are asked again, and an answer for a stream not kept is not taken.
TEST(StreamAnswers, StreamsNotVisitedByAWalkAreForgotten) {
  StreamAnswers answers;
  answers.begin_walk();
  answers.visit(1);
  answers.visit(2);
  answers.forget_unvisited();
  answers.found_complete(1, 4);
  answers.found_complete(2, 4);
  answers.begin_walk();
  answers.visit(2);
  answers.forget_unvisited();
  EXPECT_EQ(answers.streams(), 1u);
  EXPECT_FALSE(answers.known_complete(1, 4)) << "forgotten with its stream";
  EXPECT_TRUE(answers.known_complete(2, 4)) << "kept: visited again";
  answers.found_complete(5, 8);  // never visited: nothing to keep it in
  EXPECT_FALSE(answers.known_complete(5, 8));
  answers.begin_walk();
  answers.forget_unvisited();
  EXPECT_EQ(answers.streams(), 0u) << "no stream active: nothing kept";
}

}  // namespace
}  // namespace gpushim
