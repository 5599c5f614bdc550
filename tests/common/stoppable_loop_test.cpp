// The one stoppable thread: stop() wakes the loop through its eventfd, joins
// it, is effective once; the thread runs with every signal blocked.
#include "common/stoppable_loop.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>

using namespace agentshim;

TEST(StoppableLoop, StopWakesAndJoins) {
  std::atomic<int> woke{0};
  std::atomic<bool> blocked{false};
  {
    StoppableLoop l("test");
    l.start([&] {
      sigset_t cur;
      pthread_sigmask(SIG_SETMASK, nullptr, &cur);
      blocked = sigismember(&cur, SIGTERM) == 1 && sigismember(&cur, SIGPIPE) == 1;
      pollfd p{l.stop_fd(), POLLIN, 0};
      while (::poll(&p, 1, -1) != 1) {
      }
      ++woke;
    });
    l.start([&] { woke += 100; });  // a second start does nothing
    EXPECT_TRUE(l.stop());
    EXPECT_EQ(woke.load(), 1);  // joined: the loop has returned
    EXPECT_FALSE(l.stop());
    EXPECT_TRUE(l.stopping());
    // Readable for good: workers polling it later see it too.
    pollfd p{l.stop_fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 0), 1);
  }
  EXPECT_TRUE(blocked.load());
}

TEST(StoppableLoop, StopBeforeStartNeverRuns) {
  std::atomic<bool> ran{false};
  StoppableLoop l("test");
  EXPECT_TRUE(l.stop());
  l.start([&] { ran = true; });
  EXPECT_FALSE(ran.load());
}
