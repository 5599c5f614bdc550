#include "common/parallel.h"

#include <algorithm>
#include <exception>
#include <thread>
#include <vector>

namespace agentshim {

void parallel_for(std::size_t n, std::size_t threads, const std::function<void(std::size_t)>& fn) {
  threads = std::clamp<std::size_t>(threads, 1, std::max<std::size_t>(1, n));
  std::vector<std::exception_ptr> errs(threads);
  auto block = [&](std::size_t t) {
    try {
      for (std::size_t i = n * t / threads; i < n * (t + 1) / threads; ++i) fn(i);
    } catch (...) {
      errs[t] = std::current_exception();
    }
  };
  std::vector<std::thread> others;
  try {
    for (std::size_t t = 1; t < threads; ++t) others.emplace_back(block, t);
  } catch (const std::system_error&) {
    // Fewer threads to be had: this one does the blocks none took.
    for (std::size_t t = others.size() + 1; t < threads; ++t) block(t);
  }
  block(0);
  for (auto& t : others) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}

}  // namespace agentshim
