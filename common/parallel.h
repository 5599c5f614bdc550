// One loop split over threads: fn(i) for every i < n, in contiguous blocks,
// on `threads` threads (the calling one among them). The first exception a
// block threw is rethrown here, after every thread was joined. The caller
// decides how many threads the work is worth (none are made for threads <= 1).
#pragma once

#include <cstddef>
#include <functional>

namespace agentshim {

void parallel_for(std::size_t n, std::size_t threads, const std::function<void(std::size_t)>& fn);

}  // namespace agentshim
