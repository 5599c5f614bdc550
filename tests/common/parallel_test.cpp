#include "common/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

using agentshim::parallel_for;

TEST(ParallelFor, EveryIndexOnceWhateverTheThreadCount) {
  for (std::size_t n : {0u, 1u, 7u, 1000u})
    for (std::size_t threads : {0u, 1u, 2u, 3u, 64u}) {
      std::vector<std::atomic<int>> seen(n);
      parallel_for(n, threads, [&](std::size_t i) { seen[i]++; });
      for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(seen[i], 1) << n << " " << threads << " " << i;
    }
}

TEST(ParallelFor, AnExceptionIsRethrownAfterEveryThreadJoined) {
  std::atomic<int> done{0};
  EXPECT_THROW(parallel_for(100, 4,
                            [&](std::size_t i) {
                              if (i == 60) throw std::runtime_error("block 2");
                              done++;
                            }),
               std::runtime_error);
  // The other blocks ran to their end (the throwing one stopped at 60).
  EXPECT_EQ(done, 85);
}
