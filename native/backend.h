// The backend interface: what the CPU backend (native/cpu/) and the CUDA backend (kernels/)
// implement. A backend knows ops on contiguous row-major tensors and nothing about models; the
// graph lives in TypeScript (lib/graph) and reaches native code as an op list (native/program.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace idforge {

// Error codes mirror lib/errors.ts. Native code throws Error; the N-API layer turns it into a
// rejected promise / thrown JS error carrying `code`, never a process crash.
class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& msg) : std::runtime_error(msg), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, I64 = 4, U8 = 5 };

size_t dtypeSize(DType t);
const char* dtypeName(DType t);
DType dtypeFromName(const std::string& name);  // throws E_ARGUMENT

enum class Device : int { CPU = 0, CUDA = 1 };
const char* deviceName(Device d);

using Shape = std::vector<int64_t>;
int64_t numel(const Shape& s);
std::string shapeStr(const Shape& s);

// A non-owning view of backend memory.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;
  int64_t numel() const { return idforge::numel(shape); }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

// Every op a backend implements. Semantics (all float tensors are in the backend's compute dtype,
// contiguous, row-major; "[..]" means any leading dims):
//   LINEAR       in: x[.., K], w[N, K], b[N]?, r[.., N]?   attrs residual   out: [.., N]   y = x·wᵀ + b + r
//                attrs transX: x is [B, K, R] (channels first, an NCHW image as [B, C, H·W]), out
//                [B, R, N]; transY: out is [B, N, R] (x [B, R, K]): the token ↔ image layout
//                change of a transformer block's proj_in / proj_out happens inside the GEMM
//                instead of by a PERMUTE pass (r, when given, has the out shape either way)
//   MATMUL       in: a[B, M, K], b[B, K, N] (or b[B, N, K] with transB)   out: [B, M, N]
//   CONV2D       in: x[B, C, H, W], w[O, C/groups... (groups=1 only), kh, kw], b[O] or b[B, O]?,
//                r[B, O, Ho, Wo]?   attrs stride, pad (symmetric zero padding), residual
//                out: [B, O, Ho, Wo] = conv + b (per channel, or per image and channel) + r
//                LINEAR / CONV2D's r is a fused residual (a skip connection added in the op's
//                epilogue instead of by an ADD pass), exactly the output's shape. Operands are
//                explicit: x, w, b when given, then r, the last input, iff attrs.residual
//                (native/fused.h states the order; a b view without data is absent).
//   GROUP_NORM   in: x[B, C, ..], w[C], b[C]   attrs groups, eps, silu (apply SiLU after affine)
//   LAYER_NORM   in: x[.., C], w[C], b[C]      attrs eps
//   ATTENTION    in: q[B, Nq, H·d], k[B, Nk, H·d], v[B, Nk, H·dv]   attrs heads, scale, causal,
//                capture.   out: o[B, Nq, H·dv]; when capture, also p[B·H, Nq, Nk] = the softmax
//                probabilities (index b·H + h). causal masks keys j > i (CLIP's text mask).
//                regions (attrs regions, width): a 4th input, the table of native/regions.h, hides a
//                region's keys from queries outside its box (p = 0; a query seeing no key: o = p = 0)
//   GEGLU        in: x[.., 2F]   out: [.., F] = x[.., :F] * gelu(x[.., F:])   (exact erf GELU)
//   GELU, QUICK_GELU (x·σ(1.702x)), SILU, RELU (max(x, 0)), TANH   elementwise, out shape = in shape
//   ADD, MUL     in: a, b with numpy broadcasting (right aligned)   out: broadcast shape
//   SCALE        in: x   attrs scale, shift   out: x·scale + shift
//   UPSAMPLE2X   in: x[B, C, H, W]   out: [B, C, 2H, 2W] nearest
//   CONCAT       in: n tensors   attrs axis   out: concatenation along axis
//   PERMUTE      in: x   attrs perm   out: x transposed (out dim i = in dim perm[i])
//   RESHAPE      in: x   out: the same elements, another shape (a copy; Program turns most
//                RESHAPEs into aliases and never calls the backend for them)
//   SLICE        in: x   attrs axis, start, end   out: x[.., start:end, ..]
//   TIMESTEP_EMB in: t[B] (float)   attrs dim, flip, shift, maxPeriod
//                out: [B, dim]: f_i = exp(-ln(maxPeriod)·i/(half − shift)), [sin(t·f), cos(t·f)]
//                (flip → [cos, sin]); odd dim pads a zero column
//   EMBEDDING    in: ids[B, N] (I32), table[V, D]   out: [B, N, D]; ids out of range → E_ARGUMENT
//   INJECT       in: x[B, N, D], slots[B, N] (I32: row of vectors, or −1 to keep x), vectors[M, D]
//                out: x with the selected rows replaced
//   CFG          in: eps[2B, ..] (first B rows unconditional)   attrs scale
//                out: [B, ..] = u + scale·(c − u)
//   SAMPLER_STEP in: x, m (the guided model output), state (the previous step's x0), c[9] (I32:
//                the bits of 9 float32 coefficients, SamplerCoefs below; float16 programs would
//                round them too coarsely), noise? (x, m, state, noise: one shape)
//                out: x' = px·x + p0·x0 + pe·m + pp·state + pn·noise, state' = x0, in' = next_in·x'
//                with x0 = cx·x + ce·m, clamped to ±clip when clip > 0: one step of any sampler
//                (lib/sched/sampler.ts computes the coefficients), in' the next UNet input
//   ADAM_STEP    in: p, g, m, v (float32, one shape), c[8] (I32: the bits of 8 float32
//                coefficients, AdamCoefs below), gsq?[1] (Σ g² over every parameter of the step)
//                out: p', m', v': one Adam step (lib/optim/adam.ts) with g scaled by
//                s = min(1, clip/√gsq) when clip > 0 and gsq is given (global-norm clipping), else 1:
//                m' = β1·m + (1−β1)·s·g, v' = β2·v + (1−β2)·(s·g)², p' = p − lr·(m'/c1)/(√(v'/c2) + ε).
//                A non-finite gsq leaves p, m, v as they were (the caller reports the step). Each
//                element is read before it is written: the outputs may be p, m, v themselves
//                (Program.run's `into`: the update in place, on the device)
// Backward ops (vector-Jacobian products for lib/graph/autodiff.ts, w.r.t. activations; weight
// gradients are built from the forward ops; softmax / norm statistics are recomputed from the
// forward inputs):
//   GELU_BACKWARD, QUICK_GELU_BACKWARD, SILU_BACKWARD   in: x, dy (same shape)   out: dx = dy·f'(x)
//   GEGLU_BACKWARD  in: x[.., 2F], dy[.., F]   out: dx[.., 2F]
//   UPSAMPLE2X_BACKWARD  in: dy[B, C, 2H, 2W]   out: [B, C, H, W], each 2x2 block summed
//   REDUCE_SUM   in: x   out: any shape x broadcasts from (right aligned, extents 1 or equal):
//                x summed over the dims where out has extent 1 (or no dim)
//   GROUP_NORM_BACKWARD  in: dy, x, w, b   attrs groups, eps, silu (as the forward op)   out: dx
//   LAYER_NORM_BACKWARD  in: dy, x, w      attrs eps   out: dx
//   CONV2D_BACKWARD_INPUT  in: dy[B, O, Ho, Wo], w[O, C, kh, kw]   attrs stride, pad
//                out: dx[B, C, H, W] (its shape, given by the out tensor, fixes H and W)
//   ATTENTION_BACKWARD  in: q, k, v, do[B, Nq, H·dv], dp?[B·H, Nq, Nk] (a gradient on the
//                probabilities, optional), then the region table when attrs regions (as ATTENTION)
//                attrs heads, scale, causal, regions, width   out: dq, dk, dv
//   INJECT_BACKWARD  in: dy[B, N, D], slots[B, N] (I32)   out: dvectors[M, D] = Σ of the dy rows
//                whose slot is m (rows with slot −1 contribute nothing)
#define IDFORGE_OPS(X) \
  X(LINEAR)            \
  X(MATMUL)            \
  X(CONV2D)            \
  X(GROUP_NORM)        \
  X(LAYER_NORM)        \
  X(ATTENTION)         \
  X(GEGLU)             \
  X(GELU)              \
  X(QUICK_GELU)        \
  X(SILU)              \
  X(RELU)              \
  X(TANH)              \
  X(ADD)               \
  X(MUL)               \
  X(SCALE)             \
  X(UPSAMPLE2X)        \
  X(CONCAT)            \
  X(PERMUTE)           \
  X(RESHAPE)           \
  X(SLICE)             \
  X(TIMESTEP_EMB)      \
  X(EMBEDDING)         \
  X(INJECT)            \
  X(CFG)               \
  X(SAMPLER_STEP)      \
  X(ADAM_STEP)         \
  X(GELU_BACKWARD)     \
  X(QUICK_GELU_BACKWARD) \
  X(SILU_BACKWARD)     \
  X(GEGLU_BACKWARD)    \
  X(UPSAMPLE2X_BACKWARD) \
  X(REDUCE_SUM)        \
  X(GROUP_NORM_BACKWARD) \
  X(LAYER_NORM_BACKWARD) \
  X(CONV2D_BACKWARD_INPUT) \
  X(ATTENTION_BACKWARD) \
  X(INJECT_BACKWARD)

enum class OpCode : int {
#define IDFORGE_OP_ENUM(name) name,
  IDFORGE_OPS(IDFORGE_OP_ENUM)
#undef IDFORGE_OP_ENUM
};
const char* opName(OpCode op);
OpCode opFromName(const std::string& name);  // lower-case names: "linear", "group_norm", "upsample2x"

struct OpAttrs {
  int64_t stride = 1, pad = 0, groups = 1, heads = 1, axis = 0, start = 0, end = 0, dim = 0;
  double eps = 1e-5, scale = 1.0, shift = 0.0, maxPeriod = 10000.0;
  bool silu = false, causal = false, flip = false, capture = false, transB = false, transX = false, transY = false;
  bool residual = false;  // LINEAR / CONV2D: the last input is a residual (native/fused.h)
  bool regions = false;   // ATTENTION(_BACKWARD): the last input is a region table (native/regions.h)
  int64_t width = 0;      // ... and the query grid's width
  std::vector<int64_t> perm;
};

// SLICE / CONCAT geometry, shared by both backends: the normalised axis, the output shape, and
// the copy as `outer` rows of `inner` elements per unit of the axis (the elements after it).
// Throws Error("E_SHAPE") for an axis out of range or CONCAT inputs that disagree off the axis.
struct AxisCopy {
  int64_t axis = 0, outer = 1, inner = 1;
  int64_t start = 0, end = 0;  // SLICE: the range on the axis, clamped like Python's slices
  Shape out;
};
AxisCopy sliceGeometry(const OpAttrs& a, const Shape& x);
AxisCopy concatGeometry(const OpAttrs& a, const std::vector<TensorView>& in);

// SAMPLER_STEP's coefficient input, in order (the layout of lib/sched/sampler.ts packCoefficients).
struct SamplerCoefs {
  float next_in, cx, ce, clip, px, p0, pe, pp, pn;
};
constexpr int64_t kSamplerCoefs = sizeof(SamplerCoefs) / sizeof(float);
static_assert(kSamplerCoefs == 9, "SamplerCoefs is 9 packed floats");

// ADAM_STEP's coefficient input, in order (the layout of lib/optim/adam.ts adamCoefficients):
// c1 = 1 − β1^t and c2 = 1 − β2^t are the bias corrections of step t; clip ≤ 0 turns clipping off.
struct AdamCoefs {
  float lr, beta1, beta2, eps, c1, c2, clip, reserved;
};
constexpr int64_t kAdamCoefs = sizeof(AdamCoefs) / sizeof(float);
static_assert(kAdamCoefs == 8, "AdamCoefs is 8 packed floats");

// Ops whose every output element depends only on the same element of their inputs and is
// written after those are read (ADAM_STEP): Program.run may hand them an input as an output
// buffer (an update in place).
inline bool updatesInPlace(OpCode op) { return op == OpCode::ADAM_STEP; }

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  // The dtype float ops compute in (F32 on the CPU; F16 or F32 on CUDA).
  virtual DType computeType() const = 0;
  virtual void* alloc(size_t bytes) = 0;  // throws Error("E_OOM", ...)
  virtual void release(void* p, size_t bytes) = 0;
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;
  virtual void download(void* host, const void* src, size_t bytes) = 0;
  // How many elements of t are NaN or ±Inf (0 for integer dtypes), computed where t lives; waits
  // for t's pending work. Used on weight upload and on the latents of every step (no silent NaN).
  virtual int64_t countNonFinite(const TensorView& t) = 0;
  // Validates shapes it depends on (throws Error("E_SHAPE", ...)), then computes out from in.
  virtual void run(OpCode op, const OpAttrs& a, const std::vector<TensorView>& in,
                   const std::vector<TensorView>& out) = 0;
  // Whether op reads input `slot` as stored when it is a float16 weight of a float32 program
  // (the CPU's LINEAR / CONV2D w and EMBEDDING table); elsewhere Program hands it a float32 copy.
  virtual bool readsHalfWeight(OpCode /*op*/, size_t /*slot*/) const { return false; }
  virtual void synchronize() {}
  // The queue this backend's work runs on (the CUDA stream context), nullptr for the CPU, where
  // every call completes before it returns. Two CUDA backends with different queues run
  // concurrently: a tensor made on one and read on the other needs drain() first.
  virtual const void* queue() const { return nullptr; }
  // Waits for the queued work without reporting deferred kernel errors (those belong to the
  // queue's owner and surface in its own next synchronize()).
  virtual void drain() {}
  // After a failed run (its error already thrown): waits for what it queued and forgets deferred
  // kernel errors it may still raise, so the next call on this queue does not report them.
  virtual void discardPending() {}
  // Program pins its backend for its lifetime (in-flight runs included): a CUDA stream whose
  // engine was disposed is handed to another engine only once nothing pins it.
  virtual void pin() {}
  virtual void unpin() {}
  // Device-side op timing for the profiler: beginTimings(n) prepares up to n marks and returns
  // false where the backend keeps no device clock (the CPU: Program then times each op on the host);
  // mark() records a mark on the queue without waiting; endTimings() waits and returns the
  // milliseconds between consecutive marks.
  virtual bool beginTimings(size_t /*marks*/) { return false; }
  virtual void mark() {}
  virtual std::vector<double> endTimings() { return {}; }

  // Graph capture (CUDA graphs; the CPU backend has none and keeps these defaults). Program uses
  // them once its buffers are fixed: beginCapture() makes this thread's following run() calls be
  // recorded on the backend's stream instead of executed; endCapture() returns an opaque replayable
  // graph, or nullptr with *why (the capture is then discarded). abortCapture() ends a capture
  // after an exception. launchGraph() enqueues a replay (asynchronous, like run()).
  virtual bool graphsSupported() const { return false; }
  virtual void beginCapture() { throw Error("E_BACKEND", "this backend cannot capture graphs"); }
  virtual void* endCapture(std::string* why) {
    if (why) *why = "this backend cannot capture graphs";
    return nullptr;
  }
  virtual void abortCapture() {}
  virtual void launchGraph(void* /*graph*/) {}
  virtual void destroyGraph(void* /*graph*/) {}
};

// The CPU backend. Throws Error("E_BACKEND", ...) when no kernel variant could be chosen (a bad
// IDFORGE_CPU_ISA, an architecture without kernels): cpuIsa().error.
Backend* cpuBackend();

// The CPU kernels chosen for this process (native/cpu/isa/): "avx512" | "avx2" | "sse2" | "neon",
// what this CPU supports ("avx512, avx2, sse2"), and why none could be chosen (empty when fine).
struct CpuIsa {
  std::string isa, available, error;
};
CpuIsa cpuIsa();
// The FMA peak of the chosen kernels (a micro-benchmark of ~`seconds` on every backend thread):
// GFLOP/s and the threads that ran it. The bench's yardstick for per-op GFLOP/s.
struct CpuPeak {
  double gflops;
  int threads;
};
CpuPeak cpuPeak(double seconds);

struct CudaInfo {
  bool compiled = false;
  bool available = false;
  std::string device;  // e.g. "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"
  std::string reason;  // why not available
};
CudaInfo cudaInfo();
// The CUDA backend for a compute dtype (F16 or F32) on a stream: 0 is the default stream, others
// come from cudaCreateStream() (one per engine). Throws Error("E_BACKEND", reason) when CUDA was
// not compiled in, or no driver/GPU/cuBLAS can be found; E_ARGUMENT for an unknown stream.
Backend* cudaBackend(DType compute, int stream = 0);
// A new stream context (stream, cuBLAS handle, error flag) for one engine; its id for
// cudaBackend(). cudaReleaseStream waits for its work and hands it to the next caller of
// cudaCreateStream (contexts are recycled, never destroyed, so no tensor outlives its stream).
int cudaCreateStream();
void cudaReleaseStream(int stream);

// Live bytes per device, updated by Storage (native/tensor.h).
int64_t liveBytes(Device d);
void addLiveBytes(Device d, int64_t delta);

}  // namespace idforge
