// What the two halves of the N-API surface share (native/addon.cc: environments, tensors,
// backends; native/addon_program.cc: programs, runs, cancellation): the per-environment data,
// argument helpers, the error bridge and the tensor handle crossing between them.
#pragma once

#include <napi.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

#include "cancel.h"
#include "tensor.h"

namespace idforge {
namespace addon {

// Everything of one JS environment. Owned by the environment (freed at its teardown).
struct AddonData {
  Napi::FunctionReference tensorCtor, programCtor, cancelCtor;
  // Tokens of this environment's in-flight runs: cancelled when the environment is torn down.
  std::mutex mu;
  std::unordered_set<std::shared_ptr<CancelFlag>> inflight;
  bool tearingDown = false;
  void cancelAll() {
    std::lock_guard<std::mutex> lock(mu);
    cancelAllLocked();
  }
  void cancelAllLocked() {
    tearingDown = true;
    for (auto& f : inflight) f->store(true);
  }

  // Teardown watch. Node tears an environment down (worker.terminate(), process.exit() inside a
  // worker) by first waiting for its in-flight thread-pool work, and only then running cleanup
  // hooks: a run in flight would finish its whole step (a minute at 2048² on a CPU) before the
  // worker could go. While runs are in flight, a watchdog thread pings the environment through a
  // thread-safe function every 100 ms; the ping runs on the environment's own loop, which keeps
  // turning during that wait, and once the environment can no longer run JS it cancels the runs,
  // which stop at their next check.
  napi_threadsafe_function tsfn = nullptr;
  std::thread watchdog;
  std::condition_variable cv;
  bool watching = false, stopped = false;

  void ensureWatchdog() {  // with mu held, on the JS thread
    if (watching || stopped || !tsfn) return;
    if (watchdog.joinable()) watchdog.join();  // the previous one has left its loop
    watching = true;
    watchdog = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu);
      while (!stopped && !inflight.empty()) {
        cv.wait_for(lock, std::chrono::milliseconds(100));
        if (stopped || inflight.empty()) break;
        lock.unlock();
        napi_status st = napi_call_threadsafe_function(tsfn, nullptr, napi_tsfn_nonblocking);
        lock.lock();
        if (st == napi_closing) cancelAllLocked();
      }
      watching = false;
    });
  }
  void stopWatchdog() {  // environment cleanup, on the JS thread
    {
      std::lock_guard<std::mutex> lock(mu);
      stopped = true;
      cancelAllLocked();
    }
    cv.notify_all();
    if (watchdog.joinable()) watchdog.join();
    if (tsfn) napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
    tsfn = nullptr;
  }
};

AddonData& data(Napi::Env env);
Napi::Error jsError(Napi::Env env, const std::string& code, const std::string& msg);

// Runs f, turning native errors (Error's code, bad_alloc, anything else) into JS errors with a code.
template <typename F>
auto guarded(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    throw jsError(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw jsError(env, "E_OOM", "out of host memory");
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw jsError(env, "E_INTERNAL", e.what());
  }
}

std::string strArg(const Napi::CallbackInfo& info, size_t i, const char* what);
// device "cpu" | "cuda"; stream: a CUDA stream id from createStream() (0, the default, for
// tensors made outside an engine). The CPU ignores it.
Backend* backendFor(const std::string& device, DType compute, int stream = 0);
int streamArg(const Napi::Value& v);
Shape shapeFrom(const Napi::Value& v, const char* what);
Napi::Array shapeToJs(Napi::Env env, const Shape& s);

// A native tensor as a JS NativeTensor object, and back (E_ARGUMENT / E_DISPOSED otherwise).
Napi::Object wrapTensor(Napi::Env env, std::shared_ptr<NTensor> t);
std::shared_ptr<NTensor> unwrapTensor(Napi::Value v, const char* what);

// Registers NativeProgram, NativeCancel and compile() (native/addon_program.cc).
void initPrograms(Napi::Env env, Napi::Object exports);

}  // namespace addon
}  // namespace idforge
