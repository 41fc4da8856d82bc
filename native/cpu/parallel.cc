#include "parallel.h"

#include "isa/kernels.h"

#include "../backend.h"
#include "../cancel.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define IDFORGE_PAUSE() _mm_pause()
#else
#define IDFORGE_PAUSE() std::this_thread::yield()
#endif

namespace idforge {
namespace cpu {
namespace {

thread_local bool t_inPool = false;

// Runs fn over [b, e) for a run with fine-grained cancellation (cancel.h): in sub-ranges that start at one item and double while
// a call takes under ~2 ms (halving past ~20 ms), checking the token before each. fn's contract
// (disjoint ranges covering the whole) allows any split, so a chunk of a long op (a whole
// attention head at 2048²) stops within a few milliseconds of an abort instead of at its end, and
// fast items still cost only a logarithmic number of extra calls.
void runCancellable(const std::function<void(int64_t, int64_t)>& fn, int64_t b, int64_t e, const CancelFlag* cancel) {
  using clock = std::chrono::steady_clock;
  int64_t step = 1;
  while (b < e) {
    throwIfCancelled(cancel);
    const int64_t end = step < e - b ? b + step : e;
    const auto t0 = clock::now();
    fn(b, end);
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - t0).count();
    if (us < 2000) step *= 2;
    else if (us > 20000 && step > 1) step /= 2;
    b = end;
  }
}

int threadsFromEnv() {
  if (const char* s = std::getenv("IDFORGE_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v > 0) return v > 1024 ? 1024 : int(v);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}

class Pool {
 public:
  explicit Pool(int n) : nthreads_(n) {
    for (int i = 1; i < n; i++) workers_.emplace_back([this] { workerLoop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return nthreads_; }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    // One dispatch at a time: the addon may call ops from several libuv threads.
    std::lock_guard<std::mutex> dispatch(dispatch_);
    cancel_ = currentCancel();  // the dispatching run's token: every thread checks it per chunk
    fine_ = currentCancelFine();
    fn_ = &fn;
    n_ = n;
    grain_ = grain;
    next_.store(0);
    error_ = nullptr;
    pending_.store(int(workers_.size()));
    {
      std::lock_guard<std::mutex> g(m_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work();
    // Workers finish within the same op, so a short spin beats a futex round trip.
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; spins++) {
      if (spins < 20000) IDFORGE_PAUSE();
      else std::this_thread::yield();
    }
    fn_ = nullptr;
    cancel_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    bool was = t_inPool;
    t_inPool = true;
    for (;;) {
      if (isCancelled(cancel_)) {
        // The rest of the op is skipped; the run reports E_ABORTED once this dispatch returns.
        next_.store(n_, std::memory_order_relaxed);
        std::lock_guard<std::mutex> g(errM_);
        if (!error_) error_ = std::make_exception_ptr(Error("E_ABORTED", "the run was aborted"));
        break;
      }
      int64_t b = next_.fetch_add(grain_, std::memory_order_relaxed);
      if (b >= n_) break;
      int64_t e = b + grain_ < n_ ? b + grain_ : n_;
      try {
        if (fine_) runCancellable(*fn_, b, e, cancel_);
        else (*fn_)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> g(errM_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_inPool = was;
  }

  void workerLoop() {
    uint64_t seen = 0;  // the constructor's generation: a job posted before this thread starts is not missed
    for (;;) {
      // Ops arrive back to back during a forward pass: spin briefly before sleeping.
      int spins = 0;
      while (gen_.load(std::memory_order_acquire) == seen && spins < 4000) {
        IDFORGE_PAUSE();
        spins++;
      }
      if (gen_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return gen_.load() != seen; });
      }
      seen = gen_.load(std::memory_order_acquire);
      if (stop_) return;
      work();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex m_, dispatch_, errM_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  std::atomic<int64_t> next_{0};
  bool stop_ = false;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  const CancelFlag* cancel_ = nullptr;
  bool fine_ = false;
  int64_t n_ = 0, grain_ = 1;
  std::exception_ptr error_;
};

Pool& pool() {
  // Leaked on purpose: joining workers from a static destructor at process exit races with
  // other static destructors (and with Node's own teardown).
  static Pool* p = new Pool(threadsFromEnv());
  return *p;
}

}  // namespace

int numThreads() { return pool().size(); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  throwIfCancelled(currentCancel());
  Pool& p = pool();
  int T = p.size();
  if (grain <= 0) grain = (n + T - 1) / T;
  if (T == 1 || t_inPool || grain >= n) {
    if (!t_inPool && currentCancelFine()) runCancellable(fn, 0, n, currentCancel());
    else fn(0, n);
    return;
  }
  p.run(n, grain, fn);
}

void parallelForFn(int64_t n, void (*fn)(void* ctx, int64_t b, int64_t e), void* ctx, int64_t grain) {
  parallel_for(n, [fn, ctx](int64_t b, int64_t e) { fn(ctx, b, e); }, grain);
}

}  // namespace cpu
}  // namespace idforge
