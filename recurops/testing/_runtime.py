"""C++ sources of the simulator: the fiber scheduler and the shared thread API.

Kept as strings (written into the build cache at compile time) so the package
needs no data files. ``API`` is included by both dialect preludes; ``RUNTIME``
is compiled once into an object file linked into every kernel library.
"""

API = r"""
#pragma once
// recurops kernel simulator: what a simulated GPU thread can ask of the runtime.
extern "C" {
struct recurops_sim_thread {
  unsigned grid_pos[3];    // thread_position_in_grid / blockIdx * blockDim + threadIdx
  unsigned group_pos[3];   // thread_position_in_threadgroup / threadIdx
  unsigned group_idx[3];   // threadgroup_position_in_grid / blockIdx
  unsigned group_dim[3];   // threads_per_threadgroup / blockDim
  unsigned grid_dim[3];    // threads_per_grid
  unsigned groups[3];      // threadgroups_per_grid / gridDim
  unsigned index_in_group; // thread_index_in_threadgroup (x fastest)
  unsigned lane;           // thread_index_in_simdgroup / lane id
  unsigned simd_index;     // simdgroup_index_in_threadgroup
  unsigned simd_width;     // 32
  unsigned simds_per_group;
};
const recurops_sim_thread* recurops_sim_self(void);
// One lane's part in a warp-wide operation. Every present lane of the warp must
// make the same call (same op, same arg, same mask); the runtime resumes them
// together. ``bits`` is the lane's value (raw bits); the result is raw bits.
unsigned long long recurops_sim_warp(int op, unsigned long long bits, int arg, unsigned mask);
// Threadgroup-wide barrier (__syncthreads / threadgroup_barrier).
void recurops_sim_barrier(void);
}
enum {
  RECUROPS_SIM_SUM_F32 = 1,
  RECUROPS_SIM_SUM_I32 = 2,
  RECUROPS_SIM_SUM_U32 = 3,
  RECUROPS_SIM_MAX_F32 = 4,
  RECUROPS_SIM_MIN_F32 = 5,
  RECUROPS_SIM_SHFL_XOR = 6,  // arg: lane mask | (width << 8)
  RECUROPS_SIM_SHFL_IDX = 7,  // arg: source lane | (width << 8)
  RECUROPS_SIM_SYNC = 8,      // __syncwarp / simdgroup_barrier
};
namespace recurops_sim {
// The first out-of-bounds access of a launch: hit (0 or 1), the buffer's
// position among the kernel's inputs and outputs, the index, the buffer's
// element count and the accessing thread's position in the grid.
struct access_report { long long hit, buffer, index, size, thread[3]; };
// A buffer argument as the executor passes it (wrap(checked=True)): every
// index is checked against the buffer's element count. An access outside it
// is reported and goes to a scratch element, so the launch can finish.
template <class T> struct checked {
  T* data;
  long long size;
  long long buffer;
  access_report* report;
  template <class I> T& operator[](I i) const {
    const long long k = static_cast<long long>(i);
    return (k >= 0 && k < size) ? data[k] : outside(k);
  }
  T& operator*() const { return (*this)[0]; }
  operator T*() const { return data; }  // for helpers taking raw pointers (unchecked)
  T& outside(long long k) const {
    if (__atomic_exchange_n(&report->hit, 1LL, __ATOMIC_RELAXED) == 0) {
      const recurops_sim_thread* t = recurops_sim_self();
      report->buffer = buffer;
      report->index = k;
      report->size = size;
      for (int d = 0; d < 3; ++d) report->thread[d] = t->grid_pos[d];
    }
    alignas(16) static thread_local unsigned char scratch[16];
    return *reinterpret_cast<T*>(scratch);
  }
};
}  // namespace recurops_sim
"""

RUNTIME = r"""
#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "recurops_sim.h"

namespace {

enum State { READY, WAIT_WARP, WAIT_BAR, DONE };

const char* op_name(int op) {
  switch (op) {
    case RECUROPS_SIM_SUM_F32: return "sum(float)";
    case RECUROPS_SIM_SUM_I32: return "sum(int)";
    case RECUROPS_SIM_SUM_U32: return "sum(uint)";
    case RECUROPS_SIM_MAX_F32: return "max(float)";
    case RECUROPS_SIM_MIN_F32: return "min(float)";
    case RECUROPS_SIM_SHFL_XOR: return "shuffle_xor";
    case RECUROPS_SIM_SHFL_IDX: return "shuffle";
    case RECUROPS_SIM_SYNC: return "warp barrier";
  }
  return "?";
}

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;  // mmap'd, lowest page is a guard page
  State state = DONE;
  recurops_sim_thread t;
  int op = 0;
  int arg = 0;
  unsigned mask = 0;
  unsigned long long bits = 0;
  unsigned long long result = 0;
  long long nops = 0;  // warp operations completed so far
};

typedef void (*Entry)(void* const*, const void* const*);

struct Sched {
  ucontext_t main;
  std::vector<Fiber> fibers;
  Fiber* cur = nullptr;
  Entry entry = nullptr;
  void* const* bufs = nullptr;
  const void* const* shapes = nullptr;
  size_t stack_size = 0;
  size_t page = 4096;
};

thread_local Sched* g_sched = nullptr;

void fiber_main() {
  Sched* s = g_sched;
  s->entry(s->bufs, s->shapes);
  s->cur->state = DONE;
  // returning resumes uc_link (the scheduler)
}

float as_f(unsigned long long b) { unsigned u = (unsigned)b; float f; memcpy(&f, &u, 4); return f; }
unsigned long long of_f(float f) { unsigned u; memcpy(&u, &f, 4); return u; }

std::string lane_list(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(v[i]);
  }
  return out;
}

std::string where(const Fiber& f) {
  char buf[160];
  snprintf(buf, sizeof buf, "threadgroup (%u,%u,%u), simdgroup/warp %u",
           f.t.group_idx[0], f.t.group_idx[1], f.t.group_idx[2], f.t.simd_index);
  return buf;
}

// Resolves one warp whose lanes [lo, hi) are all waiting in a warp operation.
bool resolve_warp(Sched* s, int lo, int hi, std::string& err) {
  Fiber& first = s->fibers[lo];
  for (int i = lo; i < hi; ++i) {
    Fiber& f = s->fibers[i];
    if (f.op != first.op || f.nops != first.nops || f.arg != first.arg || f.mask != first.mask) {
      err = where(first) + ": lanes disagree on a warp operation (lane " +
            std::to_string(first.t.lane) + ": " + op_name(first.op) + " #" +
            std::to_string(first.nops) + ", lane " + std::to_string(f.t.lane) + ": " +
            op_name(f.op) + " #" + std::to_string(f.nops) + ")";
      return false;
    }
  }
  const int n = hi - lo;
  const int op = first.op;
  if (op == RECUROPS_SIM_SHFL_XOR || op == RECUROPS_SIM_SHFL_IDX || op == RECUROPS_SIM_SYNC) {
    unsigned want = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
    if (first.mask != 0 && (first.mask & want) != want) {
      err = where(first) + ": " + op_name(op) + " with a partial lane mask is not simulated";
      return false;
    }
    if (first.mask != 0 && (first.mask & ~want) != 0) {
      err = where(first) + ": " + op_name(op) + " names lanes the warp does not have (only " +
            std::to_string(n) + " lanes)";
      return false;
    }
  }
  if (op == RECUROPS_SIM_SUM_F32 || op == RECUROPS_SIM_MAX_F32 || op == RECUROPS_SIM_MIN_F32) {
    // butterfly order, as a shuffle-xor reduction does it
    float v[32];
    for (int i = 0; i < 32; ++i) v[i] = i < n ? as_f(s->fibers[lo + i].bits) : 0.0f;
    int width = 1;
    while (width < n) width <<= 1;
    for (int off = width / 2; off > 0; off >>= 1) {
      float w[32];
      for (int i = 0; i < width; ++i) {
        int j = i ^ off;
        if (j >= n) { w[i] = v[i]; continue; }
        if (i >= n) { w[i] = v[j]; continue; }
        if (op == RECUROPS_SIM_SUM_F32) w[i] = v[i] + v[j];
        else if (op == RECUROPS_SIM_MAX_F32) w[i] = v[i] > v[j] ? v[i] : v[j];
        else w[i] = v[i] < v[j] ? v[i] : v[j];
      }
      for (int i = 0; i < width; ++i) v[i] = w[i];
    }
    for (int i = lo; i < hi; ++i) s->fibers[i].result = of_f(v[0]);
  } else if (op == RECUROPS_SIM_SUM_I32 || op == RECUROPS_SIM_SUM_U32) {
    unsigned acc = 0;
    for (int i = lo; i < hi; ++i) acc += (unsigned)s->fibers[i].bits;
    for (int i = lo; i < hi; ++i) s->fibers[i].result = acc;
  } else if (op == RECUROPS_SIM_SHFL_XOR || op == RECUROPS_SIM_SHFL_IDX) {
    int width = (first.arg >> 8) & 0xff;
    if (width <= 0 || width > 32 || (width & (width - 1))) {
      err = where(first) + ": " + op_name(op) + " width must be a power of two <= 32";
      return false;
    }
    for (int i = 0; i < n; ++i) {
      Fiber& f = s->fibers[lo + i];
      int src;
      if (op == RECUROPS_SIM_SHFL_XOR) {
        src = i ^ (f.arg & 0xff);
        if (src / width != i / width) src = i;
      } else {
        src = (i / width) * width + (f.arg & 0xff) % width;
      }
      if (src >= n) {
        err = where(first) + ": lane " + std::to_string(i) + " reads lane " +
              std::to_string(src) + ", which does not exist";
        return false;
      }
      f.result = s->fibers[lo + src].bits;
    }
  }
  for (int i = lo; i < hi; ++i) {
    s->fibers[i].state = READY;
    s->fibers[i].nops += 1;
  }
  return true;
}

// Runs the threads of one threadgroup to completion. Returns false with err set
// if lanes of a warp diverge around a warp operation or a barrier.
bool run_group(Sched* s, int nthreads, int simd, std::string& err) {
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = s->fibers[i];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = s->stack_size;
    f.ctx.uc_link = &s->main;
    makecontext(&f.ctx, fiber_main, 0);
    f.state = READY;
    f.nops = 0;
  }
  for (;;) {
    for (int i = 0; i < nthreads; ++i) {
      Fiber& f = s->fibers[i];
      if (f.state != READY) continue;
      s->cur = &f;
      swapcontext(&s->main, &f.ctx);
    }
    bool all_done = true;
    for (int i = 0; i < nthreads; ++i) all_done = all_done && s->fibers[i].state == DONE;
    if (all_done) return true;
    bool progressed = false;
    for (int lo = 0; lo < nthreads; lo += simd) {
      int hi = lo + simd < nthreads ? lo + simd : nthreads;
      std::vector<int> waiting, done, barrier;
      for (int i = lo; i < hi; ++i) {
        State st = s->fibers[i].state;
        if (st == WAIT_WARP) waiting.push_back(i - lo);
        else if (st == DONE) done.push_back(i - lo);
        else if (st == WAIT_BAR) barrier.push_back(i - lo);
      }
      if (waiting.empty()) continue;
      const Fiber& w = s->fibers[lo + waiting[0]];
      if (!done.empty()) {
        err = where(w) + ": lane(s) " + lane_list(done) +
              " returned while lane(s) " + lane_list(waiting) + " wait in warp operation #" +
              std::to_string(w.nops) + " (" + op_name(w.op) +
              "); a warp must return as a whole or reach every warp reduction";
        return false;
      }
      if (!barrier.empty()) {
        err = where(w) + ": lane(s) " + lane_list(barrier) +
              " wait at a threadgroup barrier while lane(s) " + lane_list(waiting) +
              " wait in warp operation " + op_name(w.op);
        return false;
      }
      if (!resolve_warp(s, lo, hi, err)) return false;
      progressed = true;
    }
    if (progressed) continue;
    std::vector<int> done, barrier;
    for (int i = 0; i < nthreads; ++i) {
      if (s->fibers[i].state == DONE) done.push_back(i);
      else if (s->fibers[i].state == WAIT_BAR) barrier.push_back(i);
    }
    if (!barrier.empty()) {
      if (!done.empty()) {
        err = where(s->fibers[barrier[0]]) + ": thread(s) " + lane_list(done) +
              " of the threadgroup returned while thread(s) " + lane_list(barrier) +
              " wait at a threadgroup barrier";
        return false;
      }
      for (int i : barrier) s->fibers[i].state = READY;
      continue;
    }
    err = "simulator deadlock (internal error)";
    return false;
  }
}

}  // namespace

extern "C" {

const recurops_sim_thread* recurops_sim_self(void) { return &g_sched->cur->t; }

unsigned long long recurops_sim_warp(int op, unsigned long long bits, int arg, unsigned mask) {
  Sched* s = g_sched;
  Fiber* f = s->cur;
  f->op = op;
  f->bits = bits;
  f->arg = arg;
  f->mask = mask;
  f->state = WAIT_WARP;
  swapcontext(&f->ctx, &s->main);
  return f->result;
}

void recurops_sim_barrier(void) {
  Sched* s = g_sched;
  Fiber* f = s->cur;
  f->state = WAIT_BAR;
  swapcontext(&f->ctx, &s->main);
}

// Runs threadgroups [first, last) (linear, x fastest) of a launch.
// group: threadgroup size; ngroups: threadgroups per grid; grid: threads per grid.
// clip != 0 (Metal dispatchThreads): a threadgroup at the edge holds only the
// threads inside the grid. clip == 0 (CUDA): every block is full.
int recurops_sim_launch(Entry entry, void* const* bufs, const void* const* shapes,
                        const unsigned* group, const unsigned* ngroups, const unsigned* grid,
                        int clip, int simd, long first, long last, long stack_kb,
                        char* err, int errlen) {
  Sched s;
  s.entry = entry;
  s.bufs = bufs;
  s.shapes = shapes;
  s.page = (size_t)sysconf(_SC_PAGESIZE);
  s.stack_size = ((size_t)stack_kb * 1024 + s.page - 1) / s.page * s.page;
  const unsigned maxthreads = group[0] * group[1] * group[2];
  s.fibers.resize(maxthreads);
  int rc = 0;
  for (auto& f : s.fibers) {
    void* m = mmap(nullptr, s.stack_size + s.page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { snprintf(err, errlen, "mmap of a fiber stack failed"); rc = 2; break; }
    mprotect(m, s.page, PROT_NONE);  // guard page: a stack overflow faults
    f.stack = (char*)m + s.page;
  }
  Sched* saved = g_sched;
  g_sched = &s;
  std::string msg;
  for (long g = first; rc == 0 && g < last; ++g) {
    unsigned gi[3] = {(unsigned)(g % ngroups[0]), (unsigned)((g / ngroups[0]) % ngroups[1]),
                      (unsigned)(g / ((long)ngroups[0] * ngroups[1]))};
    unsigned dim[3];
    for (int d = 0; d < 3; ++d) {
      dim[d] = group[d];
      if (clip && (gi[d] + 1) * group[d] > grid[d]) dim[d] = grid[d] - gi[d] * group[d];
    }
    const int n = (int)(dim[0] * dim[1] * dim[2]);
    for (int i = 0; i < n; ++i) {
      recurops_sim_thread& t = s.fibers[i].t;
      unsigned p[3] = {i % dim[0], (i / dim[0]) % dim[1], i / (dim[0] * dim[1])};
      for (int d = 0; d < 3; ++d) {
        t.group_pos[d] = p[d];
        t.group_idx[d] = gi[d];
        t.group_dim[d] = clip ? dim[d] : group[d];
        t.grid_pos[d] = gi[d] * group[d] + p[d];
        t.grid_dim[d] = clip ? grid[d] : ngroups[d] * group[d];
        t.groups[d] = ngroups[d];
      }
      t.index_in_group = i;
      t.lane = i % simd;
      t.simd_index = i / simd;
      t.simd_width = simd;
      t.simds_per_group = (n + simd - 1) / simd;
    }
    if (!run_group(&s, n, simd, msg)) {
      snprintf(err, errlen, "%s", msg.c_str());
      rc = 1;
    }
  }
  g_sched = saved;
  for (auto& f : s.fibers) {
    if (f.stack) munmap(f.stack - s.page, s.stack_size + s.page);
  }
  return rc;
}

}  // extern "C"
"""
