// The CPU emulator's execution engine: fibers for the threads of a block, the block barrier,
// warp-local shuffles, launch checks, dynamic shared memory and the launch log. See
// include/emu_runtime.h for the model.
#include "emu_runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace emu {

thread_local uint3 block_idx_{0, 0, 0};
thread_local dim3 block_dim_{1, 1, 1};
thread_local dim3 grid_dim_{1, 1, 1};

namespace {

// Fiber stacks: the kernels keep small arrays and lambdas on the stack; 64 KiB was found to be
// the least that works, so twice that.
constexpr size_t kStack = 128 * 1024;
constexpr int kWarp = 32;

enum class State { Runnable, AtBarrier, AtWarpSync, Done };

struct Fiber {
  ucontext_t ctx;
  State state = State::Runnable;
  uint3 tid{0, 0, 0};
  int linear = 0;
  uint64_t shfl_count = 0;  // shuffles done by this thread (lanes of a warp must agree)
};

struct Warp {
  int lanes = 0;    // threads of the block in this warp
  int live = 0;     // of them, not yet returned
  int arrived = 0;  // lanes waiting at the current shuffle
  uint64_t slot[2][kWarp] = {};
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int current = -1;
  int at_barrier = 0;
  int done = 0;
  bool failed = false;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  ucontext_t sched;
};

thread_local Block* g_block = nullptr;
thread_local std::vector<char> g_stacks;
thread_local unsigned char* g_smem = nullptr;

std::string g_error;  // first error of the session's launches, until emu_error() clears it
cudaError_t g_last = cudaSuccess;
std::map<const void*, int> g_smem_limit;  // per kernel, set by cudaFuncSetAttribute
int g_max_smem_optin = 232448;            // sm_90: 227 KiB
std::vector<std::string> g_log;           // "name smem_bytes" of the launches, in order
uint64_t g_seed = 1;
bool g_dry_run = false;                   // check and log launches, run no blocks
// Tests only: kernel name -> the most blocks along x its launches run with (the kernel's
// grid-stride loops then step several times, which the launchers' grids never need on these
// small sizes), and how many launches were shrunk that way.
std::map<std::string, unsigned> g_grid_cap;
uint64_t g_capped_launches = 0;

void record(cudaError_t e, const std::string& what) {
  if (g_last == cudaSuccess) g_last = e;
  if (g_error.empty()) g_error = what;
}

Fiber& self() { return g_block->fibers[g_block->current]; }

void yield() {
  Block* b = g_block;
  swapcontext(&b->fibers[b->current].ctx, &b->sched);
}

void fiber_main() {
  Block* b = g_block;
  b->body(b->ctx);
  Fiber& f = self();
  f.state = State::Done;
  b->done++;
  Warp& w = b->warps[f.linear / kWarp];
  w.live--;
  if (w.arrived > 0 && w.arrived == w.live) fail("a lane returned while its warp waits at a shuffle");
  swapcontext(&f.ctx, &b->sched);
  std::abort();  // never resumed
}

// Dynamic shared memory of `bytes`, ending at an unmapped page.
struct SmemArena {
  unsigned char* base = nullptr;
  size_t len = 0;
  unsigned char* get(size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t need = ((bytes + page - 1) / page + 1) * page;
    if (need > len) {
      if (base) munmap(base, len);
      void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) std::abort();
      base = static_cast<unsigned char*>(p);
      len = need;
      mprotect(base + len - page, page, PROT_NONE);
    }
    // 16-byte aligned start; the guard page follows the last 16-byte group.
    const size_t rounded = (bytes + 15) / 16 * 16;
    return base + len - page - rounded;
  }
};
thread_local SmemArena g_arena;

// Runs one block to completion; returns false on a barrier error or a deadlock.
bool run_block(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  bool forward = true;
  while (b.done < n && !b.failed) {
    bool ran = false;
    for (int i = 0; i < n && !b.failed; ++i) {
      const int t = forward ? i : n - 1 - i;
      Fiber& f = b.fibers[t];
      if (f.state != State::Runnable) continue;
      b.current = t;
      ran = true;
      swapcontext(&b.sched, &f.ctx);
    }
    if (b.failed) break;
    if (ran) continue;
    // Nobody can run: either every live thread is at the barrier, or the block is stuck.
    if (b.at_barrier > 0 && b.at_barrier == n - b.done) {
      if (b.done > 0) {
        fail("__syncthreads reached by only some threads of a block (others returned)");
        break;
      }
      for (Fiber& f : b.fibers)
        if (f.state == State::AtBarrier) f.state = State::Runnable;
      b.at_barrier = 0;
      forward = !forward;
      continue;
    }
    if (b.done < n) {
      fail(b.at_barrier > 0 ? "deadlock: some threads wait at __syncthreads, others at a warp shuffle"
                            : "deadlock: threads wait at a warp shuffle forever");
      break;
    }
  }
  return !b.failed;
}

}  // namespace

const uint3& thread_idx() { return self().tid; }
unsigned char* dynamic_smem() { return g_smem; }
int lane_id() { return self().linear % kWarp; }

void fail(const char* what) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s (block %u,%u,%u thread %u)", what, block_idx_.x, block_idx_.y,
                block_idx_.z, g_block ? self().tid.x : 0u);
  record(cudaErrorLaunchFailure, buf);
  if (g_block) g_block->failed = true;
}

void syncthreads() {
  Block& b = *g_block;
  Fiber& f = self();
  f.state = State::AtBarrier;
  b.at_barrier++;
  yield();
}

uint64_t warp_exchange(uint64_t v, unsigned mask, int src_lane) {
  Block& b = *g_block;
  Fiber& f = self();
  Warp& w = b.warps[f.linear / kWarp];
  if (mask != 0xffffffffu) fail("warp shuffle with a partial mask (the emulator supports full warps)");
  if (w.lanes != kWarp) fail("warp shuffle in a partial warp (blockDim not a multiple of 32)");
  if (w.live != w.lanes) fail("warp shuffle after some lanes of the warp returned");
  const int lane = f.linear % kWarp;
  const int buf = static_cast<int>(f.shfl_count & 1);
  const uint64_t my_count = f.shfl_count++;
  w.slot[buf][lane] = v;
  // Warp-local barrier: the last lane to arrive releases the others.
  if (++w.arrived == w.live) {
    const int first = (f.linear / kWarp) * kWarp;
    for (int l = 0; l < w.lanes; ++l) {
      Fiber& o = b.fibers[first + l];
      if (o.shfl_count != my_count + 1) fail("lanes of a warp at different shuffles");
      if (o.state == State::AtWarpSync) o.state = State::Runnable;
    }
    w.arrived = 0;
  } else {
    f.state = State::AtWarpSync;
    yield();
  }
  return w.slot[buf][src_lane];
}

cudaError_t set_max_dynamic_smem(const void* fn, int bytes) {
  if (bytes < 0 || bytes > g_max_smem_optin) return cudaErrorInvalidValue;
  g_smem_limit[fn] = bytes;
  return cudaSuccess;
}

cudaError_t take_last_error() {
  const cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}

bool run_launch(const char* name, const void* fn, const Config& cfg, void (*body)(void*),
                void* ctx) {
  const dim3 g0 = cfg.grid, bd = cfg.block;  // the grid as requested (checked as such)
  char buf[512];
  const uint64_t threads = static_cast<uint64_t>(bd.x) * bd.y * bd.z;
  const char* bad = nullptr;
  if (g0.x == 0 || g0.y == 0 || g0.z == 0 || threads == 0) bad = "empty grid or block";
  else if (g0.x > 0x7fffffffu || g0.y > 65535 || g0.z > 65535) bad = "grid dimension over its limit";
  else if (bd.x > 1024 || bd.y > 1024 || bd.z > 64 || threads > 1024) bad = "block over 1024 threads";
  if (bad) {
    std::snprintf(buf, sizeof buf, "%s: %s (grid %u,%u,%u block %u,%u,%u)", name, bad, g0.x, g0.y, g0.z,
                  bd.x, bd.y, bd.z);
    record(cudaErrorInvalidConfiguration, buf);
    return false;
  }
  auto lim = g_smem_limit.find(fn);
  const size_t limit = lim == g_smem_limit.end() ? 48 * 1024 : static_cast<size_t>(lim->second);
  if (cfg.smem > limit) {
    std::snprintf(buf, sizeof buf, "%s: %zu bytes of dynamic shared memory, the kernel's limit is %zu",
                  name, cfg.smem, limit);
    record(cudaErrorInvalidValue, buf);
    return false;
  }
  g_log.emplace_back(std::string(name) + " " + std::to_string(cfg.smem));
  if (g_dry_run) return true;
  // The launch was checked as requested; a capped kernel then runs on fewer blocks (gridDim.x
  // says so, as if the launcher had asked for that many).
  dim3 g = cfg.grid;
  auto cap = g_grid_cap.find(name);
  if (cap != g_grid_cap.end() && g.x > cap->second) {
    g.x = cap->second;
    ++g_capped_launches;
  }
  grid_dim_ = g;
  block_dim_ = bd;
  // Blocks in a shuffled order.
  const uint64_t nblocks = static_cast<uint64_t>(g.x) * g.y * g.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  std::mt19937_64 rng(g_seed++);
  std::shuffle(order.begin(), order.end(), rng);
  const int n = static_cast<int>(threads);
  if (g_stacks.size() < static_cast<size_t>(n) * kStack) g_stacks.assign(static_cast<size_t>(n) * kStack, 0);
  unsigned char* smem = g_arena.get(cfg.smem);
  for (uint64_t bi : order) {
    block_idx_ = uint3{static_cast<unsigned>(bi % g.x), static_cast<unsigned>((bi / g.x) % g.y),
                       static_cast<unsigned>(bi / (static_cast<uint64_t>(g.x) * g.y))};
    std::memset(smem, 0xff, cfg.smem);  // NaN in float and double
    g_smem = smem;
    Block b;
    b.body = body;
    b.ctx = ctx;
    b.fibers.resize(n);
    b.warps.resize((n + kWarp - 1) / kWarp);
    for (int t = 0; t < n; ++t) {
      Fiber& f = b.fibers[t];
      f.linear = t;
      f.tid = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
      b.warps[t / kWarp].lanes++;
      b.warps[t / kWarp].live++;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = g_stacks.data() + static_cast<size_t>(t) * kStack;
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_main, 0);
    }
    g_block = &b;
    const bool ok = run_block(b);
    g_block = nullptr;
    if (!ok) {
      std::snprintf(buf, sizeof buf, "%s: %s", name, g_error.c_str());
      g_error = buf;
      return false;
    }
  }
  return true;
}

}  // namespace emu

// ---- C interface for the Python side (tests/cuda_emu/emu.py) ---------------------------------
extern "C" {
// The first error since the last call ("" if none), then cleared.
const char* emu_error() {
  static std::string last;
  last = emu::g_error;
  emu::g_error.clear();
  emu::g_last = cudaSuccess;
  return last.c_str();
}
// The launches since the last call, one per line ("kernel_name dynamic_smem_bytes"), then
// cleared.
const char* emu_take_log() {
  static std::string out;
  out.clear();
  for (const auto& s : emu::g_log) out += s + "\n";
  emu::g_log.clear();
  return out.c_str();
}
void emu_set_max_smem_optin(int bytes) { emu::g_max_smem_optin = bytes; }
// Dry run: launches are checked against the limits and logged, but no block runs (the launchers
// can then be called with sizes far beyond this machine's memory and null pointers).
void emu_set_dry_run(int on) { emu::g_dry_run = on != 0; }
// Tests only: launches of the kernel `name` run with at most `blocks` blocks along x (0: no
// cap). Only for kernels whose grid-stride loops cover the data with any grid.
void emu_set_grid_cap(const char* name, unsigned blocks) {
  if (blocks == 0) emu::g_grid_cap.erase(name);
  else emu::g_grid_cap[name] = blocks;
}
// Launches shrunk by a grid cap since the last call, then reset.
uint64_t emu_take_capped_launches() {
  const uint64_t n = emu::g_capped_launches;
  emu::g_capped_launches = 0;
  return n;
}
}
