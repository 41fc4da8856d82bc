// A persistent worker pool shared by every CPU op. Ops are short (often well under a millisecond
// on SD-sized tensors), so creating threads per op would cost more than the work itself.
#pragma once

#include <cstdint>
#include <functional>

namespace idforge {
namespace cpu {

// Threads the pool runs on (the calling thread included): IDFORGE_THREADS if set to a positive
// integer, otherwise std::thread::hardware_concurrency().
int numThreads();

// Calls fn(begin, end) on disjoint ranges covering [0, n), concurrently. grain == 0 splits the
// range into one contiguous chunk per thread; grain > 0 hands out chunks of `grain` items
// dynamically (for uneven work such as causal attention). Returns when every chunk is done and
// rethrows the first exception a chunk threw. A call made from inside a chunk runs inline, so
// nested parallel code cannot deadlock the pool.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 0);

}  // namespace cpu
}  // namespace idforge
