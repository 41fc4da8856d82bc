// A persistent worker pool shared by every CPU op. Ops are short (often well under a millisecond
// on SD-sized tensors), so creating threads per op would cost more than the work itself.
#pragma once

#include <cstdint>
#include <algorithm>
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

// Elementwise work: fn(begin, end) over [0, n) in parallel chunks of at least kElementGrain
// elements (smaller chunks cost more in hand-off than they save).
constexpr int64_t kElementGrain = 1 << 14;

template <typename F>
void forChunks(int64_t n, F&& fn) {
  if (n <= kElementGrain) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
  int64_t chunks = (n + kElementGrain - 1) / kElementGrain;
  parallel_for(chunks, [&](int64_t b, int64_t e) { fn(b * kElementGrain, std::min(n, e * kElementGrain)); });
}

}  // namespace cpu
}  // namespace idforge
