// The program half of the N-API surface (native/addon.h): compile(desc) → NativeProgram, whose
// run() executes off the JS thread (RunWorker) and resolves with its outputs; NativeCancel, the
// token an AbortSignal flips. A run whose environment is torn down is cancelled (native/addon.cc)
// and completes without touching JS.
#include "addon.h"

#include "program.h"

namespace idforge {
namespace addon {
namespace {

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
    else if (k == "regions") a.regions = flag();
    else if (k == "width") a.width = integer();
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
    for (size_t i = 0; i < out_.size(); i++) outs.Set(static_cast<uint32_t>(i), wrapTensor(env, out_[i]));
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
    for (uint32_t i = 0; i < a.Length(); i++) in.push_back(unwrapTensor(a.Get(i), "program input"));
    bool profile = info.Length() > 1 && info[1].ToBoolean().Value();
    auto cancel = info.Length() > 2 ? CancelWrap::From(info[2]) : nullptr;
    // into: an array with a tensor (or undefined) per output, the buffers those outputs go to.
    std::vector<std::shared_ptr<NTensor>> into;
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      if (!info[3].IsArray()) throw Error("E_ARGUMENT", "program.run's `into` must be an array");
      auto b = info[3].As<Napi::Array>();
      for (uint32_t i = 0; i < b.Length(); i++) {
        Napi::Value v = b.Get(i);
        into.push_back(v.IsUndefined() || v.IsNull() ? nullptr : unwrapTensor(v, "program `into` tensor"));
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
      consts.emplace_back(pair.Get(0u).As<Napi::Number>().Int32Value(), unwrapTensor(pair.Get(1u), "program constant"));
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

}  // namespace

void initPrograms(Napi::Env env, Napi::Object exports) {
  ProgramWrap::Init(env, exports);
  CancelWrap::Init(env, exports);
  exports.Set("compile", Napi::Function::New(env, Compile));
}

}  // namespace addon
}  // namespace idforge
