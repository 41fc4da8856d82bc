// Finds and opens cuBLAS at run time. Order: IDFORGE_CUBLAS (file or folder), the plain sonames
// (LD_LIBRARY_PATH, rpath, ldconfig), CUDA_HOME/CUDA_PATH, /usr/local/cuda*, then pip wheels
// (nvidia/cublas/lib, nvidia/cu13/lib, ...) in the usual site-packages places and, last, the
// site dirs python3 itself reports.
#include "cublas_loader.h"

#include <dlfcn.h>
#include <glob.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace idforge {
namespace cuda {

namespace {

const char* kVersions[] = {"13", "12", "11"};

bool isDir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool isFile(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && !S_ISDIR(st.st_mode);
}

void globInto(const std::string& pattern, std::vector<std::string>* out) {
  glob_t g;
  if (glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; i++) out->push_back(g.gl_pathv[i]);
  }
  globfree(&g);
}

// Folders that may hold libcublas.so.*, cheapest guesses first.
std::vector<std::string> candidateDirs() {
  std::vector<std::string> dirs;
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"}) {
    if (const char* v = std::getenv(var)) {
      dirs.push_back(std::string(v) + "/lib64");
      dirs.push_back(std::string(v) + "/lib");
      dirs.push_back(std::string(v) + "/targets/x86_64-linux/lib");
    }
  }
  dirs.push_back("/usr/local/cuda/lib64");
  globInto("/usr/local/cuda-*/lib64", &dirs);
  globInto("/usr/local/cuda-*/targets/*/lib", &dirs);
  std::vector<std::string> sites;
  for (const char* var : {"VIRTUAL_ENV", "CONDA_PREFIX"}) {
    if (const char* v = std::getenv(var)) {
      globInto(std::string(v) + "/lib/python3*/site-packages", &sites);
      dirs.push_back(std::string(v) + "/lib");
    }
  }
  if (const char* home = std::getenv("HOME")) globInto(std::string(home) + "/.local/lib/python3*/site-packages", &sites);
  globInto("/usr/local/lib/python3*/dist-packages", &sites);
  globInto("/usr/local/lib/python3*/site-packages", &sites);
  globInto("/usr/lib/python3*/dist-packages", &sites);
  globInto("/opt/*/.venv/lib/python3*/site-packages", &sites);
  globInto("/opt/conda/lib/python3*/site-packages", &sites);
  for (const auto& s : sites) {
    for (const char* sub : {"/nvidia/cublas/lib", "/nvidia/cu13/lib", "/nvidia/cu12/lib"}) dirs.push_back(s + sub);
  }
  return dirs;
}

// python3's own idea of its site dirs: one short subprocess, only when everything else failed.
std::vector<std::string> pythonSiteDirs() {
  std::vector<std::string> out;
  FILE* f = popen(
      "python3 -c \"import site,sys; print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))\" "
      "2>/dev/null",
      "r");
  if (!f) return out;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    if (s.empty()) continue;
    for (const char* sub : {"/nvidia/cublas/lib", "/nvidia/cu13/lib", "/nvidia/cu12/lib"}) {
      if (isDir(s + sub)) out.push_back(s + sub);
    }
  }
  pclose(f);
  return out;
}

template <typename F>
bool sym(void* h, const char* name, F* fp) {
  *fp = reinterpret_cast<F>(dlsym(h, name));
  return *fp != nullptr;
}

// Opens one candidate; cuBLASLt from the same folder first so the dependency resolves even when
// the wheel's rpath does not cover it.
bool tryOpen(const std::string& lib, Cublas* api, std::string* err) {
  auto slash = lib.rfind('/');
  if (slash != std::string::npos) {
    std::string dir = lib.substr(0, slash);
    std::string name = lib.substr(slash + 1);
    std::string lt = dir + "/" + std::string("libcublasLt") + name.substr(std::string("libcublas").size());
    if (isFile(lt)) dlopen(lt.c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    if (const char* e = dlerror()) *err = e;
    return false;
  }
  bool ok = sym(h, "cublasCreate_v2", &api->create) && sym(h, "cublasDestroy_v2", &api->destroy) &&
            sym(h, "cublasSetStream_v2", &api->setStream) && sym(h, "cublasSetMathMode", &api->setMathMode) &&
            sym(h, "cublasGemmEx", &api->gemmEx) &&
            sym(h, "cublasGemmStridedBatchedEx", &api->gemmStridedBatchedEx);
  if (!ok) {
    *err = lib + " lacks a cuBLAS entry point (too old?)";
    dlclose(h);
    return false;
  }
  sym(h, "cublasSetWorkspace_v2", &api->setWorkspace);
  api->path = lib;
  return true;
}

bool tryDir(const std::string& dir, Cublas* api, std::string* err) {
  if (!isDir(dir)) return false;
  for (const char* v : kVersions) {
    std::string p = dir + "/libcublas.so." + v;
    if (isFile(p) && tryOpen(p, api, err)) return true;
  }
  std::string p = dir + "/libcublas.so";
  return isFile(p) && tryOpen(p, api, err);
}

}  // namespace

const Cublas* loadCublas(std::string* why) {
  static std::once_flag once;
  static Cublas api;
  static bool ok = false;
  static std::string failure;
  std::call_once(once, [] {
    std::string err;
    std::vector<std::string> tried;
    if (const char* env = std::getenv("IDFORGE_CUBLAS")) {
      std::string p(env);
      tried.push_back(p);
      if (isDir(p) ? tryDir(p, &api, &err) : tryOpen(p, &api, &err)) {
        ok = true;
        return;
      }
    }
    for (const char* v : kVersions) {
      std::string so = std::string("libcublas.so.") + v;
      if (tryOpen(so, &api, &err)) {
        ok = true;
        return;
      }
    }
    tried.push_back("libcublas.so.{13,12,11} via LD_LIBRARY_PATH/ldconfig");
    std::vector<std::string> dirs = candidateDirs();
    for (const auto& d : dirs) {
      if (!isDir(d)) continue;
      tried.push_back(d);
      if (tryDir(d, &api, &err)) {
        ok = true;
        return;
      }
    }
    for (const auto& d : pythonSiteDirs()) {
      tried.push_back(d);
      if (tryDir(d, &api, &err)) {
        ok = true;
        return;
      }
    }
    tried.push_back("CUDA_HOME/CUDA_PATH, /usr/local/cuda*/lib64, pip nvidia-cublas wheels");
    failure = "cuBLAS not found: tried ";
    for (size_t i = 0; i < tried.size(); i++) failure += (i ? ", " : "") + tried[i];
    if (!err.empty()) failure += " (last error: " + err + ")";
    failure += "; set IDFORGE_CUBLAS=/path/to/libcublas.so (or its folder)";
  });
  if (!ok && why) *why = failure;
  return ok ? &api : nullptr;
}

}  // namespace cuda
}  // namespace idforge
