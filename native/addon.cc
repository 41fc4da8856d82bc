// N-API surface of the addon. lib/native.ts is the only JS file that loads it and types this surface.
//   backends(), memory(), createTensor(...), compile(desc) → Program, Tensor/Program classes.
// Native errors become JS errors with a `code`; lib/errors.ts turns them into IdforgeError.
//
// Many environments in one process (worker threads, Electron's main and utility processes): every
// JS handle the addon keeps (class constructors, in-flight runs) lives in per-environment instance
// data (AddonData), never in statics, and is only touched from its own environment. Process-wide
// state (the CPU pool, CUDA contexts, live-byte counters) is native and shared under its own locks.
// A run whose environment is torn down (a worker terminated mid-run) is cancelled and completes
// without touching JS; its outputs are freed.
#include <napi.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

#include "program.h"
#include "tensor.h"

namespace idforge {
namespace {

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

// True while `env` can still run JS (a plain property set goes through N-API's JS-call preamble).
bool canRunJs(napi_env env) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  napi_value o;
  bool ok = napi_create_object(env, &o) == napi_ok && napi_set_named_property(env, o, "alive", o) == napi_ok;
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
  }
  napi_close_handle_scope(env, scope);
  return ok;
}

void startTeardownWatch(Napi::Env env, AddonData* d) {
  napi_value name;
  if (napi_create_string_utf8(env, "idforge teardown watch", NAPI_AUTO_LENGTH, &name) != napi_ok) return;
  auto ping = [](napi_env env, napi_value, void* ctx, void*) {
    if (env && !canRunJs(env)) static_cast<AddonData*>(ctx)->cancelAll();
  };
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 1, 1, nullptr, nullptr, d, ping, &d->tsfn) != napi_ok) {
    d->tsfn = nullptr;
    return;
  }
  napi_unref_threadsafe_function(env, d->tsfn);  // never keeps the loop alive
}

AddonData& data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) throw Error("E_INTERNAL", "idforge addon used in an environment it was not initialised in");
  return *d;
}

Napi::Error jsError(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

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

std::string strArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) throw Error("E_ARGUMENT", std::string(what) + " must be a string");
  return info[i].As<Napi::String>();
}

// device "cpu" | "cuda"; stream: a CUDA stream id from createStream() (0, the default, for
// tensors made outside an engine). The CPU ignores it.
Backend* backendFor(const std::string& device, DType compute, int stream = 0) {
  if (device == "cpu") return cpuBackend();
  if (device == "cuda") return cudaBackend(compute == DType::F32 ? DType::F32 : DType::F16, stream);
  throw Error("E_ARGUMENT", "unknown device '" + device + "' (expected 'cpu' or 'cuda')");
}

int streamArg(const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return 0;
  if (!v.IsNumber()) throw Error("E_ARGUMENT", "stream must be a stream id (a number from createStream())");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 1e6 || d != static_cast<double>(static_cast<int>(d)))
    throw Error("E_ARGUMENT", "stream must be a non-negative integer stream id");
  return static_cast<int>(d);
}

Shape shapeFrom(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw Error("E_ARGUMENT", std::string(what) + " must be an array of sizes");
  auto a = v.As<Napi::Array>();
  Shape s;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value d = a.Get(i);
    if (!d.IsNumber()) throw Error("E_ARGUMENT", std::string(what) + " must hold numbers");
    double x = d.As<Napi::Number>().DoubleValue();
    if (!(x >= 0) || x != static_cast<double>(static_cast<int64_t>(x)) || x > 9.0e15)
      throw Error("E_SHAPE", std::string(what) + " holds an invalid size");
    s.push_back(static_cast<int64_t>(x));
  }
  return s;
}

Napi::Array shapeToJs(Napi::Env env, const Shape& s) {
  auto a = Napi::Array::New(env, s.size());
  for (size_t i = 0; i < s.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(s[i])));
  return a;
}

// ---------------------------------------------------------------------------------------------
class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "NativeTensor",
                                   {InstanceAccessor<&TensorWrap::Shape_>("shape"),
                                    InstanceAccessor<&TensorWrap::DType_>("dtype"),
                                    InstanceAccessor<&TensorWrap::Device_>("device"),
                                    InstanceAccessor<&TensorWrap::Bytes_>("nbytes"),
                                    InstanceAccessor<&TensorWrap::Disposed_>("disposed"),
                                    InstanceMethod<&TensorWrap::Read>("read"),
                                    InstanceMethod<&TensorWrap::CountNonFinite>("countNonFinite"),
                                    InstanceMethod<&TensorWrap::To>("to"),
                                    InstanceMethod<&TensorWrap::Dispose>("dispose")});
    data(env).tensorCtor = Napi::Persistent(f);
    exports.Set("NativeTensor", f);
  }

  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<NTensor> t) {
    Napi::Object o = data(env).tensorCtor.New({});
    TensorWrap* w = Unwrap(o);
    w->t_ = std::move(t);
    w->reported_ = static_cast<int64_t>(w->t_->bytes());
    Napi::MemoryManagement::AdjustExternalMemory(env, w->reported_);
    return o;
  }

  static std::shared_ptr<NTensor> From(Napi::Value v, const char* what) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data(v.Env()).tensorCtor.Value()))
      throw Error("E_ARGUMENT", std::string(what) + " is not a native tensor");
    TensorWrap* w = Unwrap(v.As<Napi::Object>());
    if (!w->t_) throw Error("E_DISPOSED", std::string(what) + " was disposed");
    return w->t_;
  }

  TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {}
  ~TensorWrap() override { release(Env()); }

 private:
  std::shared_ptr<NTensor> t_;
  int64_t reported_ = 0;

  // Also runs from the finalizer during an environment's teardown: nothing here may throw.
  void release(Napi::Env env) {
    t_.reset();
    if (reported_) {
      int64_t ignored;
      napi_adjust_external_memory(env, -reported_, &ignored);
      reported_ = 0;
    }
  }
  NTensor& live(Napi::Env env) {
    if (!t_) throw jsError(env, "E_DISPOSED", "tensor used after dispose()");
    return *t_;
  }
  Napi::Value Shape_(const Napi::CallbackInfo& i) { return shapeToJs(i.Env(), live(i.Env()).shape); }
  Napi::Value DType_(const Napi::CallbackInfo& i) { return Napi::String::New(i.Env(), dtypeName(live(i.Env()).dtype)); }
  Napi::Value Device_(const Napi::CallbackInfo& i) { return Napi::String::New(i.Env(), deviceName(live(i.Env()).device())); }
  Napi::Value Bytes_(const Napi::CallbackInfo& i) { return Napi::Number::New(i.Env(), static_cast<double>(live(i.Env()).bytes())); }
  Napi::Value Disposed_(const Napi::CallbackInfo& i) { return Napi::Boolean::New(i.Env(), !t_); }

  // read(dtype?) → ArrayBuffer holding a host copy (always a copy: Electron refuses external buffers).
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      NTensor& t = live(env);
      DType dt = info.Length() > 0 && info[0].IsString() ? dtypeFromName(info[0].As<Napi::String>()) : t.dtype;
      std::vector<uint8_t> bytes = readAs(t, dt);
      auto ab = Napi::ArrayBuffer::New(env, bytes.size());
      if (!bytes.empty()) std::memcpy(ab.Data(), bytes.data(), bytes.size());
      return ab;
    });
  }

  // countNonFinite() → how many elements are NaN or ±Inf, counted on the tensor's device.
  Napi::Value CountNonFinite(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      NTensor& t = live(env);
      return Napi::Number::New(env, double(t.storage->backend->countNonFinite(t.view())));
    });
  }

  // to(dtype, device, stream?) → a new tensor (a copy, even when nothing changes).
  Napi::Value To(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      NTensor& t = live(env);
      DType dt = dtypeFromName(strArg(info, 0, "dtype"));
      std::string dev = info.Length() > 1 && info[1].IsString() ? std::string(info[1].As<Napi::String>())
                                                                  : std::string(deviceName(t.device()));
      Backend* be = backendFor(dev, dt, info.Length() > 2 ? streamArg(info[2]) : 0);
      std::vector<uint8_t> host = readAs(t, dt);
      return Wrap(env, makeTensor(be, dt, t.shape, host.data(), dt));
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release(info.Env());
    return info.Env().Undefined();
  }
};

// createTensor(dtype, shape, device, data?: ArrayBufferView, srcDtype?, stream?)
Napi::Value CreateTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    DType dt = dtypeFromName(strArg(info, 0, "dtype"));
    Shape shape = shapeFrom(info[1], "shape");
    std::string dev = strArg(info, 2, "device");
    Backend* be = backendFor(dev, dt, info.Length() > 5 ? streamArg(info[5]) : 0);
    const void* src = nullptr;
    DType st = dt;
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      if (!info[3].IsTypedArray() && !info[3].IsDataView())
        throw Error("E_ARGUMENT", "tensor data must be a typed array");
      st = info.Length() > 4 && info[4].IsString() ? dtypeFromName(info[4].As<Napi::String>()) : dt;
      size_t bytes;
      if (info[3].IsTypedArray()) {
        auto ta = info[3].As<Napi::TypedArray>();
        src = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
        bytes = ta.ByteLength();
      } else {
        auto dv = info[3].As<Napi::DataView>();
        src = static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
        bytes = dv.ByteLength();
      }
      size_t need = static_cast<size_t>(numel(shape)) * dtypeSize(st);
      if (bytes != need)
        throw Error("E_SHAPE", "tensor data holds " + std::to_string(bytes) + " bytes, shape " + shapeStr(shape) +
                                   " of " + dtypeName(st) + " needs " + std::to_string(need));
    }
    return TensorWrap::Wrap(env, makeTensor(be, dt, shape, src, st));
  });
}

// ---------------------------------------------------------------------------------------------
OpAttrs attrsFrom(const Napi::Value& v) {
  OpAttrs a;
  if (v.IsUndefined() || v.IsNull()) return a;
  auto o = v.As<Napi::Object>();
  auto props = o.GetPropertyNames();
  for (uint32_t i = 0; i < props.Length(); i++) {
    std::string k = props.Get(i).As<Napi::String>();
    Napi::Value x = o.Get(k);
    auto num = [&]() { return x.As<Napi::Number>().DoubleValue(); };
    auto integer = [&]() { return static_cast<int64_t>(x.As<Napi::Number>().Int64Value()); };
    auto flag = [&]() { return x.ToBoolean().Value(); };
    if (k == "stride") a.stride = integer();
    else if (k == "pad") a.pad = integer();
    else if (k == "groups") a.groups = integer();
    else if (k == "heads") a.heads = integer();
    else if (k == "axis") a.axis = integer();
    else if (k == "start") a.start = integer();
    else if (k == "end") a.end = integer();
    else if (k == "dim") a.dim = integer();
    else if (k == "eps") a.eps = num();
    else if (k == "scale") a.scale = num();
    else if (k == "shift") a.shift = num();
    else if (k == "maxPeriod") a.maxPeriod = num();
    else if (k == "silu") a.silu = flag();
    else if (k == "causal") a.causal = flag();
    else if (k == "flip") a.flip = flag();
    else if (k == "capture") a.capture = flag();
    else if (k == "transB") a.transB = flag();
    else if (k == "transX") a.transX = flag();
    else if (k == "transY") a.transY = flag();
    else if (k == "residual") a.residual = flag();
    else if (k == "perm") a.perm = shapeFrom(x, "perm");
    else throw Error("E_INTERNAL", "unknown op attribute '" + k + "'");
  }
  return a;
}

std::vector<int> idsFrom(const Napi::Value& v) {
  std::vector<int> r;
  if (!v.IsArray()) return r;
  auto a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) r.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  return r;
}

class ProgramWrap : public Napi::ObjectWrap<ProgramWrap> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "NativeProgram",
                                   {InstanceMethod<&ProgramWrap::Run>("run"),
                                    InstanceMethod<&ProgramWrap::Dispose>("dispose"),
                                    InstanceAccessor<&ProgramWrap::ConstBytes>("constBytes"),
                                    InstanceAccessor<&ProgramWrap::ArenaBytes>("arenaBytes"),
                                    InstanceAccessor<&ProgramWrap::Progress>("progress"),
                                    InstanceAccessor<&ProgramWrap::IntermediateBytes>("intermediateBytes")});
    data(env).programCtor = Napi::Persistent(f);
    exports.Set("NativeProgram", f);
  }
  ProgramWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ProgramWrap>(info) {}
  std::shared_ptr<Program> prog;

 private:
  Napi::Value ConstBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), prog ? static_cast<double>(prog->constBytes()) : 0);
  }
  // The static buffer plan (program.h): arena bytes, and what one buffer per intermediate would take.
  Napi::Value ArenaBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), prog ? static_cast<double>(prog->arenaBytes()) : 0);
  }
  Napi::Value IntermediateBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), prog ? static_cast<double>(prog->intermediateBytes()) : 0);
  }
  // Fraction of the running (or last) run's ops done: progress reports inside long steps.
  Napi::Value Progress(const Napi::CallbackInfo& info) {
    double total = prog ? double(prog->opsTotal()) : 0;
    return Napi::Number::New(info.Env(), total > 0 ? double(prog->opsDone()) / total : 0);
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    prog.reset();
    return info.Env().Undefined();
  }
  Napi::Value Run(const Napi::CallbackInfo& info);
};

// A cancellation token for one or more runs: new NativeCancel(); cancel() (an AbortSignal listener
// calls it) makes the runs holding it stop at their next check (native/cancel.h).
class CancelWrap : public Napi::ObjectWrap<CancelWrap> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "NativeCancel",
                                   {InstanceMethod<&CancelWrap::Cancel>("cancel"),
                                    InstanceAccessor<&CancelWrap::Cancelled>("cancelled")});
    data(env).cancelCtor = Napi::Persistent(f);
    exports.Set("NativeCancel", f);
  }
  CancelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CancelWrap>(info), flag(std::make_shared<CancelFlag>(false)) {}
  static std::shared_ptr<CancelFlag> From(Napi::Value v) {
    if (v.IsUndefined() || v.IsNull()) return nullptr;
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data(v.Env()).cancelCtor.Value()))
      throw Error("E_ARGUMENT", "a run's cancel token must be a NativeCancel");
    return Unwrap(v.As<Napi::Object>())->flag;
  }
  std::shared_ptr<CancelFlag> flag;

 private:
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    flag->store(true);
    return info.Env().Undefined();
  }
  Napi::Value Cancelled(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), flag->load()); }
};

class RunWorker : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, std::shared_ptr<Program> p, std::vector<std::shared_ptr<NTensor>> in, bool profile,
            std::shared_ptr<CancelFlag> cancel, std::vector<std::shared_ptr<NTensor>> into)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), prog_(std::move(p)),
        in_(std::move(in)), into_(std::move(into)), profile_(profile), fine_(cancel != nullptr),
        cancel_(cancel ? std::move(cancel) : std::make_shared<CancelFlag>(false)) {
    AddonData& d = data(env);
    std::lock_guard<std::mutex> lock(d.mu);
    if (d.tearingDown) cancel_->store(true);
    d.inflight.insert(cancel_);
    d.ensureWatchdog();
  }
  ~RunWorker() override {
    // The environment's data outlives its runs: teardown waits for in-flight work before freeing it.
    if (AddonData* d = Env().GetInstanceData<AddonData>()) {
      std::lock_guard<std::mutex> lock(d->mu);
      d->inflight.erase(cancel_);
    }
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      // Every run is cancelled at its environment's teardown; only a caller's token asks for
      // fine-grained checks inside CPU ops (cancel.h).
      out_ = prog_->run(in_, profile_ ? &timings_ : nullptr, cancel_.get(), fine_, into_.empty() ? nullptr : &into_);
    } catch (const Error& e) {
      fail(e.code(), e.what());
    } catch (const std::bad_alloc&) {
      fail("E_OOM", "out of host memory while running a program");
    } catch (const std::exception& e) {
      fail("E_INTERNAL", e.what());
    }
    in_.clear();
    into_.clear();
  }
  void OnOK() override {
    Napi::Env env = Env();
    auto outs = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); i++) outs.Set(static_cast<uint32_t>(i), TensorWrap::Wrap(env, out_[i]));
    out_.clear();
    auto r = Napi::Object::New(env);
    r.Set("outputs", outs);
    if (profile_) {
      auto ts = Napi::Array::New(env, timings_.size());
      for (size_t i = 0; i < timings_.size(); i++) {
        auto o = Napi::Object::New(env);
        o.Set("op", Napi::String::New(env, opName(timings_[i].op)));
        o.Set("index", Napi::Number::New(env, timings_[i].index));
        o.Set("ms", Napi::Number::New(env, timings_[i].ms));
        ts.Set(static_cast<uint32_t>(i), o);
      }
      r.Set("timings", ts);
    }
    deferred_.Resolve(r);
  }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = jsError(Env(), code_.empty() ? "E_INTERNAL" : code_, e.Message());
    deferred_.Reject(err.Value());
  }
  // Replaces node-addon-api's version, whose HandleScope and callback wrapper throw a C++
  // exception when the environment can no longer run JS (a terminated worker), which aborts the
  // process. Here every failure is contained: the promise is rejected when that is still
  // possible, else the results are just freed.
  void OnWorkComplete(Napi::Env env, napi_status status) override {
    if (status != napi_cancelled) {
      napi_handle_scope scope = nullptr;
      if (napi_open_handle_scope(env, &scope) == napi_ok) {
        try {
          if (code_.empty() && errorMessage_.empty()) OnOK();
          else OnError(Napi::Error::New(env, errorMessage_));
        } catch (const Napi::Error& e) {
          try {
            deferred_.Reject(e.Value());
          } catch (...) {
          }
        } catch (...) {
        }
        napi_close_handle_scope(env, scope);
      }
    }
    out_.clear();
    Destroy();
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Program> prog_;
  std::vector<std::shared_ptr<NTensor>> in_, into_, out_;
  std::vector<OpTiming> timings_;
  bool profile_, fine_;
  std::shared_ptr<CancelFlag> cancel_;
  std::string code_, errorMessage_;
  void fail(const std::string& code, const std::string& msg) {
    code_ = code;
    errorMessage_ = msg.empty() ? "native run failed" : msg;
  }
};

Napi::Value ProgramWrap::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!prog) throw Error("E_DISPOSED", "program used after dispose()");
    std::vector<std::shared_ptr<NTensor>> in;
    if (!info[0].IsArray()) throw Error("E_ARGUMENT", "program.run expects an array of tensors");
    auto a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) in.push_back(TensorWrap::From(a.Get(i), "program input"));
    bool profile = info.Length() > 1 && info[1].ToBoolean().Value();
    auto cancel = info.Length() > 2 ? CancelWrap::From(info[2]) : nullptr;
    // into: an array with a tensor (or undefined) per output, the buffers those outputs go to.
    std::vector<std::shared_ptr<NTensor>> into;
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      if (!info[3].IsArray()) throw Error("E_ARGUMENT", "program.run's `into` must be an array");
      auto b = info[3].As<Napi::Array>();
      for (uint32_t i = 0; i < b.Length(); i++) {
        Napi::Value v = b.Get(i);
        into.push_back(v.IsUndefined() || v.IsNull() ? nullptr : TensorWrap::From(v, "program `into` tensor"));
      }
    }
    auto* w = new RunWorker(env, prog, std::move(in), profile, std::move(cancel), std::move(into));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// compile({ device, dtype, stream?, values: [{dtype, shape}], consts: [[id, tensor]], inputs, outputs, ops })
Napi::Value Compile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto d = info[0].As<Napi::Object>();
    std::string dev = d.Get("device").As<Napi::String>();
    DType compute = dtypeFromName(d.Get("dtype").As<Napi::String>());
    Backend* be = backendFor(dev, compute, streamArg(d.Get("stream")));
    std::vector<ValueDesc> values;
    auto va = d.Get("values").As<Napi::Array>();
    for (uint32_t i = 0; i < va.Length(); i++) {
      auto v = va.Get(i).As<Napi::Object>();
      std::string dt = v.Get("dtype").As<Napi::String>();
      values.push_back({dt == "float" ? be->computeType() : dtypeFromName(dt), shapeFrom(v.Get("shape"), "value shape")});
    }
    std::vector<std::pair<int, std::shared_ptr<NTensor>>> consts;
    auto ca = d.Get("consts").As<Napi::Array>();
    for (uint32_t i = 0; i < ca.Length(); i++) {
      auto pair = ca.Get(i).As<Napi::Array>();
      consts.emplace_back(pair.Get(0u).As<Napi::Number>().Int32Value(), TensorWrap::From(pair.Get(1u), "program constant"));
    }
    std::vector<OpDesc> ops;
    auto oa = d.Get("ops").As<Napi::Array>();
    for (uint32_t i = 0; i < oa.Length(); i++) {
      auto o = oa.Get(i).As<Napi::Object>();
      ops.push_back({opFromName(o.Get("op").As<Napi::String>()), attrsFrom(o.Get("attrs")), idsFrom(o.Get("in")), idsFrom(o.Get("out"))});
    }
    auto prog = std::make_shared<Program>(be, std::move(values), std::move(consts), idsFrom(d.Get("inputs")),
                                          idsFrom(d.Get("outputs")), std::move(ops),
                                          d.Get("cudaGraph").IsBoolean() ? int(d.Get("cudaGraph").ToBoolean().Value()) : -1);
    Napi::Object w = data(env).programCtor.New({});
    ProgramWrap::Unwrap(w)->prog = prog;
    return w;
  });
}

Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto r = Napi::Object::New(env);
  r.Set("cpu", true);
  CudaInfo c = cudaInfo();
  auto co = Napi::Object::New(env);
  co.Set("compiled", c.compiled);
  co.Set("available", c.available);
  if (!c.device.empty()) co.Set("device", c.device);
  if (!c.reason.empty()) co.Set("reason", c.reason);
  r.Set("cuda", co);
  return r;
}

// createStream() → a new CUDA stream id (its own stream, cuBLAS handle and error flag) for one
// engine; releaseStream(id) waits for its work and recycles it. E_BACKEND without CUDA.
Napi::Value CreateStream(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value { return Napi::Number::New(env, cudaCreateStream()); });
}

Napi::Value ReleaseStream(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 1) throw Error("E_ARGUMENT", "releaseStream needs a stream id");
    cudaReleaseStream(streamArg(info[0]));
    return env.Undefined();
  });
}

Napi::Value Memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto r = Napi::Object::New(env);
  r.Set("cpu", static_cast<double>(liveBytes(Device::CPU)));
  r.Set("cuda", static_cast<double>(liveBytes(Device::CUDA)));
  return r;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* d = new AddonData();
  env.SetInstanceData(d);  // deleted by the environment at its teardown, after the cleanup hook
  startTeardownWatch(env, d);
  // Registered after the thread-safe function, so it runs before that function's own cleanup.
  env.AddCleanupHook([d]() { d->stopWatchdog(); });
  TensorWrap::Init(env, exports);
  ProgramWrap::Init(env, exports);
  CancelWrap::Init(env, exports);
  exports.Set("createTensor", Napi::Function::New(env, CreateTensor));
  exports.Set("compile", Napi::Function::New(env, Compile));
  exports.Set("backends", Napi::Function::New(env, Backends));
  exports.Set("memory", Napi::Function::New(env, Memory));
  exports.Set("createStream", Napi::Function::New(env, CreateStream));
  exports.Set("releaseStream", Napi::Function::New(env, ReleaseStream));
  return exports;
}

}  // namespace
}  // namespace idforge

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return idforge::Init(env, exports); }

NODE_API_MODULE(idforge, InitAddon)
