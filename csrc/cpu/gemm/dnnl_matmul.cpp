// oneDNN's matmul called directly (dnnl_matmul.h).
#include "dnnl_matmul.h"

#if defined(RELU_EXT_WITH_DNNL)

#include <omp.h>
#include <dnnl.hpp>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

namespace torch_relu_ext::cpu::gemm::dnnl {
namespace {

using ::dnnl::memory;

// One primitive per product layout: the key is everything its descriptor
// depends on.
struct Key {
  int64_t type, m, n, k, a_rs, a_cs, b_rs, b_cs, ldc, bias, relu, accumulate, threads;
  bool operator<(const Key& o) const {
    return std::tie(type, m, n, k, a_rs, a_cs, b_rs, b_cs, ldc, bias, relu, accumulate, threads) <
           std::tie(o.type, o.m, o.n, o.k, o.a_rs, o.a_cs, o.b_rs, o.b_cs, o.ldc, o.bias, o.relu,
                    o.accumulate, o.threads);
  }
};

struct Entry {
  ::dnnl::matmul prim;
  memory::desc a, b, bias, c, scratch;
};

// Never destroyed: the primitives in the cache refer to it until exit.
::dnnl::engine& engine() {
  static auto* e = new ::dnnl::engine(::dnnl::engine::kind::cpu, 0);
  return *e;
}

::dnnl::stream& stream() {
  thread_local const std::unique_ptr<::dnnl::stream> s = std::make_unique<::dnnl::stream>(engine());
  return *s;
}

// The primitives, shared by all threads (executing one primitive from
// several threads at once is safe with a user scratchpad). Bounded: a new
// batch size is a new entry, so a full cache starts again (entries in use
// live on in the threads' Bound objects).
std::shared_ptr<const Entry> lookup(const Key& key) {
  static std::mutex mu;
  static auto* cache = new std::map<Key, std::shared_ptr<const Entry>>();
  constexpr size_t kCapacity = 256;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  const auto dt = key.type == static_cast<int64_t>(Type::kBF16) ? memory::data_type::bf16
                                                                : memory::data_type::f32;
  auto e = std::make_shared<Entry>();
  e->a = memory::desc({key.m, key.k}, dt, {key.a_rs, key.a_cs});
  e->b = memory::desc({key.k, key.n}, dt, {key.b_rs, key.b_cs});
  e->c = memory::desc({key.m, key.n}, dt, {key.ldc, 1});
  ::dnnl::post_ops po;
  if (key.accumulate != 0) po.append_sum(1.0f);
  if (key.relu != 0) po.append_eltwise(::dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  ::dnnl::primitive_attr attr;
  attr.set_post_ops(po);
  attr.set_scratchpad_mode(::dnnl::scratchpad_mode::user);
  ::dnnl::matmul::primitive_desc pd;
  if (key.bias != 0) {
    e->bias = memory::desc({1, key.n}, dt, {key.n, 1});
    pd = ::dnnl::matmul::primitive_desc(engine(), e->a, e->b, e->bias, e->c, attr);
  } else {
    pd = ::dnnl::matmul::primitive_desc(engine(), e->a, e->b, e->c, attr);
  }
  e->scratch = pd.scratchpad_desc();
  e->prim = ::dnnl::matmul(pd);
  std::lock_guard<std::mutex> lock(mu);
  if (cache->size() >= kCapacity) cache->clear();
  return cache->emplace(key, std::move(e)).first->second;
}

// A thread's memory objects for one primitive, made once: a call only points
// them at its data (creating them each call cost more than a tiny product).
struct Bound {
  std::shared_ptr<const Entry> e;
  std::unordered_map<int, memory> args;
};

Bound& bound(const Key& key) {
  constexpr size_t kCapacity = 64;  // each holds a primitive (JIT code) alive
  thread_local std::map<Key, Bound> local;
  const auto it = local.find(key);
  if (it != local.end()) return it->second;
  if (local.size() >= kCapacity) local.clear();
  Bound b{lookup(key), {}};
  b.args.emplace(DNNL_ARG_SRC, memory(b.e->a, engine(), DNNL_MEMORY_NONE));
  b.args.emplace(DNNL_ARG_WEIGHTS, memory(b.e->b, engine(), DNNL_MEMORY_NONE));
  b.args.emplace(DNNL_ARG_DST, memory(b.e->c, engine(), DNNL_MEMORY_NONE));
  if (key.bias != 0) b.args.emplace(DNNL_ARG_BIAS, memory(b.e->bias, engine(), DNNL_MEMORY_NONE));
  if (b.e->scratch.get_size() > 0) {
    b.args.emplace(DNNL_ARG_SCRATCHPAD, memory(b.e->scratch, engine(), DNNL_MEMORY_NONE));
  }
  return local.emplace(key, std::move(b)).first->second;
}

// A thread's scratchpad, kept between calls (64-byte aligned).
void* scratchpad(size_t bytes) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buf;
  thread_local size_t size = 0;
  if (bytes > size) {
    buf.reset(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    size = buf != nullptr ? bytes : 0;
  }
  return buf.get();
}

}  // namespace

namespace {

// Why the loaded library cannot serve, or "".
std::string unusable() {
  const dnnl_version_t* v = dnnl_version();
  if (v->major < 3 || (v->major == 3 && v->minor < 2)) return "older than 3.2";
  if (v->cpu_runtime != DNNL_RUNTIME_OMP) return "not OpenMP-threaded";
  return "";
}

}  // namespace

bool available() {
  static const bool ok = unusable().empty();
  return ok;
}

std::string describe() {
  const dnnl_version_t* v = dnnl_version();
  std::string s = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                  std::to_string(v->patch);
  const std::string why = unusable();
  return why.empty() ? s : s + " (unused: " + why + ")";
}

std::string matmul(Type type, int64_t m, int64_t n, int64_t k, Operand a, Operand b,
                   const void* bias, void* c, int64_t ldc, bool relu, bool accumulate) {
  try {
    const Key key{static_cast<int64_t>(type),
                  m,
                  n,
                  k,
                  a.row_stride,
                  a.col_stride,
                  b.row_stride,
                  b.col_stride,
                  ldc,
                  bias != nullptr ? 1 : 0,
                  relu ? 1 : 0,
                  accumulate ? 1 : 0,
                  omp_get_max_threads()};
    Bound& bd = bound(key);
    const size_t scratch_bytes = bd.e->scratch.get_size();
    if (scratch_bytes > 0) {
      void* scratch = scratchpad(scratch_bytes);
      if (scratch == nullptr) return "out of memory for a scratchpad";
      bd.args.at(DNNL_ARG_SCRATCHPAD).set_data_handle(scratch);
    }
    bd.args.at(DNNL_ARG_SRC).set_data_handle(const_cast<void*>(a.data));
    bd.args.at(DNNL_ARG_WEIGHTS).set_data_handle(const_cast<void*>(b.data));
    bd.args.at(DNNL_ARG_DST).set_data_handle(c);
    if (bias != nullptr) bd.args.at(DNNL_ARG_BIAS).set_data_handle(const_cast<void*>(bias));
    bd.e->prim.execute(stream(), bd.args);
    stream().wait();
    return "";
  } catch (const ::dnnl::error& err) {
    return std::string(err.what()) + " (status " + std::to_string(static_cast<int>(err.status)) +
           ")";
  }
}

}  // namespace torch_relu_ext::cpu::gemm::dnnl

#else  // built without the library

namespace torch_relu_ext::cpu::gemm::dnnl {

bool available() { return false; }

std::string describe() {
  return "not built (onednn-cpu-gomp was not installed at build time, or TORCH_RELU_EXT_DNNL was "
         "off)";
}

std::string matmul(Type, int64_t, int64_t, int64_t, Operand, Operand, const void*, void*, int64_t,
                   bool, bool) {
  return "torch_relu_ext was built without oneDNN's library (the onednn-cpu-gomp package)";
}

}  // namespace torch_relu_ext::cpu::gemm::dnnl

#endif
