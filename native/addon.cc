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
//
// This file: environments (their data and teardown watch), tensors, backends, streams and the
// module's init; programs and runs are native/addon_program.cc.
#include "addon.h"

#include <cstring>

#include "program.h"

namespace idforge {
namespace addon {

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

std::string strArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) throw Error("E_ARGUMENT", std::string(what) + " must be a string");
  return info[i].As<Napi::String>();
}

Backend* backendFor(const std::string& device, DType compute, int stream) {
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

namespace {

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
                                    InstanceMethod<&TensorWrap::CopyFrom>("copyFrom"),
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

  // copyFrom(src) → overwrites this tensor's elements in place (same memory: programs holding it as
  // a constant see the new values) with src's, converted to this tensor's dtype; any devices.
  Napi::Value CopyFrom(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      NTensor& t = live(env);
      std::shared_ptr<NTensor> src = From(info[0], "copyFrom's source");
      if (numel(src->shape) != numel(t.shape))
        throw Error("E_SHAPE", "copyFrom: source " + shapeStr(src->shape) + " into " + shapeStr(t.shape));
      std::vector<uint8_t> host = readAs(*src, t.dtype);
      t.storage->backend->synchronize();
      if (!host.empty()) t.storage->backend->upload(t.storage->data, host.data(), host.size());
      return env.Undefined();
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

// backends() → { cpu: { available, isa, supported }, cuda: {...} }; E_BACKEND when no CPU kernel
// variant could be chosen (a bad IDFORGE_CPU_ISA names what this CPU has).
Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const CpuIsa isa = cpuIsa();
    if (!isa.error.empty()) throw Error("E_BACKEND", isa.error);
    auto r = Napi::Object::New(env);
    auto cpu = Napi::Object::New(env);
    cpu.Set("available", true);
    cpu.Set("isa", isa.isa);
    auto supported = Napi::Array::New(env);
    for (size_t b = 0, i = 0; b < isa.available.size();) {
      size_t e = isa.available.find(", ", b);
      if (e == std::string::npos) e = isa.available.size();
      supported.Set(uint32_t(i++), isa.available.substr(b, e - b));
      b = e + 2;
    }
    cpu.Set("supported", supported);
    r.Set("cpu", cpu);
    CudaInfo c = cudaInfo();
    auto co = Napi::Object::New(env);
    co.Set("compiled", c.compiled);
    co.Set("available", c.available);
    if (!c.device.empty()) co.Set("device", c.device);
    if (!c.reason.empty()) co.Set("reason", c.reason);
    r.Set("cuda", co);
    return r;
  });
}

// cpuPeak(seconds) → { gflops, threads, isa }: the chosen CPU kernels' FMA peak (the bench's yardstick).
Napi::Value CpuPeakFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const double seconds = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0.2;
    if (!(seconds > 0 && seconds <= 10)) throw Error("E_ARGUMENT", "cpuPeak: seconds must be in (0, 10]");
    const CpuPeak p = cpuPeak(seconds);
    auto r = Napi::Object::New(env);
    r.Set("gflops", p.gflops);
    r.Set("threads", p.threads);
    r.Set("isa", cpuIsa().isa);
    return r;
  });
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

}  // namespace

Napi::Object wrapTensor(Napi::Env env, std::shared_ptr<NTensor> t) { return TensorWrap::Wrap(env, std::move(t)); }
std::shared_ptr<NTensor> unwrapTensor(Napi::Value v, const char* what) { return TensorWrap::From(v, what); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* d = new AddonData();
  env.SetInstanceData(d);  // deleted by the environment at its teardown, after the cleanup hook
  startTeardownWatch(env, d);
  // Registered after the thread-safe function, so it runs before that function's own cleanup.
  env.AddCleanupHook([d]() { d->stopWatchdog(); });
  TensorWrap::Init(env, exports);
  initPrograms(env, exports);
  exports.Set("createTensor", Napi::Function::New(env, CreateTensor));
  exports.Set("backends", Napi::Function::New(env, Backends));
  exports.Set("memory", Napi::Function::New(env, Memory));
  exports.Set("cpuPeak", Napi::Function::New(env, CpuPeakFn));
  exports.Set("createStream", Napi::Function::New(env, CreateStream));
  exports.Set("releaseStream", Napi::Function::New(env, ReleaseStream));
  return exports;
}

}  // namespace addon
}  // namespace idforge

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return idforge::addon::Init(env, exports); }

NODE_API_MODULE(idforge, InitAddon)
