"""Header stubs the simulator compiles kernel sources against (no system headers).

* ``NUMERIC``: integer typedefs and float <-> bfloat16 / float16 conversion
  (round to nearest even), shared by both dialects.
* ``CUDA_UTILS`` stands in for ``mlx/backend/cuda/device/utils.cuh`` (and
  ``COOPERATIVE_GROUPS`` for ``<cooperative_groups.h>``): the CUDA names the
  rendered kernels use, thread indices read from the simulated thread, warp
  shuffles that meet the other lanes in the runtime.
* ``METAL_STDLIB`` is a small stub of the Metal standard library (types,
  address-space qualifiers, ``metal::`` math, ``simd_*``), and
  ``METAL_UTILS`` stands in for the ``metal::utils()`` prelude MLX puts before
  every custom kernel. The same stub serves the type check and the executor.

Everything is compiled with ``-nostdinc``: a name the stub does not declare
(``expf`` in Metal, ``metal::exp`` in CUDA) is a compile error, as on the GPU.
"""

NUMERIC = r"""
#pragma once
typedef __INT8_TYPE__ int8_t;
typedef __INT16_TYPE__ int16_t;
typedef __INT32_TYPE__ int32_t;
typedef __INT64_TYPE__ int64_t;
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __UINT32_TYPE__ uint32_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __SIZE_TYPE__ size_t;

namespace recurops_sim {
inline uint32_t f2u(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
inline uint16_t f2bf(float f) {
  uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float bf2f(uint16_t b) { return u2f((uint32_t)b << 16); }
// Threadgroups run on several OS threads: float atomics are real (a CAS loop).
inline float atomic_add(float* p, float v) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(p);
  uint32_t old = __atomic_load_n(bits, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(bits, &old, f2u(u2f(old) + v), true,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return u2f(old);
}
inline uint16_t f2h(float f) {
  uint32_t u = f2u(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to inf
  if (a < 0x38800000u) {  // subnormal half (or zero)
    float m = u2f(a) * 16777216.0f;  // scale by 2^24: half subnormal unit is 2^-24
    uint32_t q = (uint32_t)m;
    float r = m - (float)q;
    if (r > 0.5f || (r == 0.5f && (q & 1u))) q += 1;
    return (uint16_t)(sign | q);
  }
  uint32_t e = (a >> 23) - 112;
  uint32_t mant = a & 0x7fffffu;
  uint32_t h = (e << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;
  return (uint16_t)(sign | h);
}
inline float h2f(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0) return u2f(sign) + (sign ? -1.0f : 1.0f) * (float)m * (1.0f / 16777216.0f);
  if (e == 31) return u2f(sign | 0x7f800000u | (m << 13));
  return u2f(sign | ((e + 112) << 23) | (m << 13));
}
template <class T>
inline unsigned long long to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp operations move at most 8 bytes");
  unsigned long long b = 0;
  __builtin_memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
  T v;
  __builtin_memcpy(&v, &b, sizeof(T));
  return v;
}
}  // namespace recurops_sim
"""

# numeric_limits<float>, the same in cuda::std and metal.
FLOAT_LIMITS = r"""
template <class T> struct numeric_limits;
template <> struct numeric_limits<float> {
  static constexpr float infinity() { return __builtin_inff(); }
  static constexpr float quiet_NaN() { return __builtin_nanf(""); }
  static constexpr float max() { return __FLT_MAX__; }
  static constexpr float lowest() { return -__FLT_MAX__; }
  static constexpr float min() { return __FLT_MIN__; }
  static constexpr float epsilon() { return __FLT_EPSILON__; }
};
"""

CUDA_UTILS = r"""
#pragma once
// recurops simulator stand-in for mlx/backend/cuda/device/utils.cuh (CUDA names only).
#include "recurops_sim.h"
#include "recurops_sim_numeric.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __grid_constant__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Shared memory: the threads of a block run as fibers of one OS thread, one
// block after another, so per-OS-thread storage is shared by the block's threads.
// Like shared memory it holds whatever the last block left there.
#define __shared__ static thread_local
#define warpSize 32

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

namespace cuda {
namespace std {
template <class T, unsigned long N>
struct array {
  T elems[N];
  __host__ __device__ T& operator[](unsigned long i) { return elems[i]; }
  __host__ __device__ const T& operator[](unsigned long i) const { return elems[i]; }
  __host__ __device__ constexpr unsigned long size() const { return N; }
  __host__ __device__ T* data() { return elems; }
  __host__ __device__ const T* data() const { return elems; }
};
""" + FLOAT_LIMITS + r"""template <> struct numeric_limits<int> {
  static constexpr int max() { return __INT_MAX__; }
  static constexpr int lowest() { return -__INT_MAX__ - 1; }
  static constexpr int min() { return -__INT_MAX__ - 1; }
};
}  // namespace std
}  // namespace cuda

#define MAX_NDIM 8
namespace mlx { namespace core { namespace cu {
using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;
}}}

namespace recurops_sim_cuda {
inline uint3 thread_idx() {
  const recurops_sim_thread* t = recurops_sim_self();
  return uint3{t->group_pos[0], t->group_pos[1], t->group_pos[2]};
}
inline uint3 block_idx() {
  const recurops_sim_thread* t = recurops_sim_self();
  return uint3{t->group_idx[0], t->group_idx[1], t->group_idx[2]};
}
inline dim3 block_dim() {
  const recurops_sim_thread* t = recurops_sim_self();
  return dim3{t->group_dim[0], t->group_dim[1], t->group_dim[2]};
}
inline dim3 grid_dim() {
  const recurops_sim_thread* t = recurops_sim_self();
  return dim3{t->groups[0], t->groups[1], t->groups[2]};
}
inline mlx::core::cu::Shape shape(const void* p) {
  mlx::core::cu::Shape s;
  __builtin_memcpy(s.elems, p, sizeof s.elems);
  return s;
}
inline mlx::core::cu::Strides strides(const void* p) {
  mlx::core::cu::Strides s;
  __builtin_memcpy(s.elems, p, sizeof s.elems);
  return s;
}
}  // namespace recurops_sim_cuda
#define threadIdx (::recurops_sim_cuda::thread_idx())
#define blockIdx (::recurops_sim_cuda::block_idx())
#define blockDim (::recurops_sim_cuda::block_dim())
#define gridDim (::recurops_sim_cuda::grid_dim())

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __host__ __device__ __nv_bfloat16(float f) : __x(recurops_sim::f2bf(f)) {}
  __host__ __device__ operator float() const { return recurops_sim::bf2f(__x); }
};
struct __half {
  uint16_t __x;
  __half() = default;
  __host__ __device__ __half(float f) : __x(recurops_sim::f2h(f)) {}
  __host__ __device__ operator float() const { return recurops_sim::h2f(__x); }
};
#define RECUROPS_SIM_BINOPS(T)                                                      \
  inline T operator+(const T& a, const T& b) { return T(float(a) + float(b)); }    \
  inline T operator-(const T& a, const T& b) { return T(float(a) - float(b)); }    \
  inline T operator*(const T& a, const T& b) { return T(float(a) * float(b)); }    \
  inline T operator/(const T& a, const T& b) { return T(float(a) / float(b)); }
RECUROPS_SIM_BINOPS(__nv_bfloat16)
RECUROPS_SIM_BINOPS(__half)
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }

inline float expf(float x) { return __builtin_expf(x); }
inline float __expf(float x) { return __builtin_expf(x); }
inline float exp2f(float x) { return __builtin_exp2f(x); }
inline float expm1f(float x) { return __builtin_expm1f(x); }
inline float logf(float x) { return __builtin_logf(x); }
inline float __logf(float x) { return __builtin_logf(x); }
inline float log2f(float x) { return __builtin_log2f(x); }
inline float log1pf(float x) { return __builtin_log1pf(x); }
inline float sqrtf(float x) { return __builtin_sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float fabsf(float x) { return __builtin_fabsf(x); }
inline float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
inline float fminf(float a, float b) { return __builtin_fminf(a, b); }
inline float fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline float tanhf(float x) { return __builtin_tanhf(x); }
inline float sinf(float x) { return __builtin_sinf(x); }
inline float cosf(float x) { return __builtin_cosf(x); }
inline float powf(float a, float b) { return __builtin_powf(a, b); }
inline float floorf(float x) { return __builtin_floorf(x); }
inline float ceilf(float x) { return __builtin_ceilf(x); }
inline float exp(float x) { return __builtin_expf(x); }
inline double exp(double x) { return __builtin_exp(x); }
inline float log(float x) { return __builtin_logf(x); }
inline double log(double x) { return __builtin_log(x); }
inline float sqrt(float x) { return __builtin_sqrtf(x); }
inline double sqrt(double x) { return __builtin_sqrt(x); }
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

template <class T>
__device__ T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return recurops_sim::from_bits<T>(recurops_sim_warp(
      RECUROPS_SIM_SHFL_XOR, recurops_sim::to_bits(var), (lane_mask & 0xff) | (width << 8), mask));
}
template <class T>
__device__ T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return recurops_sim::from_bits<T>(recurops_sim_warp(
      RECUROPS_SIM_SHFL_IDX, recurops_sim::to_bits(var), (src_lane & 0xff) | (width << 8), mask));
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, mask);
}
inline void __syncthreads() { recurops_sim_barrier(); }
inline float atomicAdd(float* address, float v) { return recurops_sim::atomic_add(address, v); }

// The two PTX instructions of the chassis's matrix tiles (recurops_kernels
// TILES), so the fragment layouts around them run as on the GPU.
#define RECUROPS_MMA_PRIMITIVES
// cvt.rna.tf32.f32: round to a 10-bit mantissa, ties away from zero.
inline unsigned recurops_tf32(float x) {
  uint32_t u = recurops_sim::f2u(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return u & 0xffffe000u;
}
inline float __uint_as_float(unsigned u) { return recurops_sim::u2f(u); }
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: each lane posts its
// fragments, the warp meets, each lane sums its four outputs from all of them.
inline void recurops_mma_m16n8k8(float* c, const unsigned* a, const unsigned* b) {
  static thread_local unsigned posted[32][32][6];  // [warp][lane][a0..a3, b0, b1]
  const recurops_sim_thread* self = recurops_sim_self();
  unsigned (*warp)[6] = posted[self->simd_index];
  for (int i = 0; i < 4; ++i) warp[self->lane][i] = a[i];
  warp[self->lane][4] = b[0];
  warp[self->lane][5] = b[1];
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0);
  const int g = (int)self->lane >> 2, q = (int)self->lane & 3;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * q + (e & 1);
    float sum = 0.0f;
    for (int k = 0; k < 8; ++k) {
      const float av = recurops_sim::u2f(warp[(row % 8) * 4 + k % 4][(row >= 8) + 2 * (k >= 4)]);
      const float bv = recurops_sim::u2f(warp[col * 4 + k % 4][4 + (k >= 4)]);
      sum += av * bv;
    }
    out[e] = sum;
  }
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0);  // all have read before any posts again
  for (int e = 0; e < 4; ++e) c[e] += out[e];
}
"""

COOPERATIVE_GROUPS = r"""
#pragma once
// recurops simulator stand-in for <cooperative_groups.h>: the namespace only.
namespace cooperative_groups {}
"""

METAL_STDLIB = r"""
#pragma once
// recurops simulator: a small stub of the Metal standard library, enough to
// type-check and run the recurops kernels. Address-space qualifiers are
// accepted but not type-checked.
#include "recurops_sim.h"
#include "recurops_sim_numeric.h"

#define device
#define constant
#define thread
#ifdef RECUROPS_SIM_EXEC
// Threadgroup memory: a threadgroup's threads run as fibers of one OS thread,
// one threadgroup after another, so per-OS-thread storage is shared by them.
#define threadgroup static thread_local
#else
#define threadgroup
#endif
#define METAL_FUNC inline

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef long ptrdiff_t;
struct ulong2 {
  ulong x, y;
  ulong2() = default;
  ulong2(ulong a, ulong b) : x(a), y(b) {}
};

struct half {
  uint16_t bits;
  half() = default;
  half(float f) : bits(recurops_sim::f2h(f)) {}
  operator float() const { return recurops_sim::h2f(bits); }
};
struct bfloat {
  uint16_t bits;
  bfloat() = default;
  bfloat(float f) : bits(recurops_sim::f2bf(f)) {}
  operator float() const { return recurops_sim::bf2f(bits); }
};

#define RECUROPS_SIM_VEC(T, N2, N3, N4)                                  \
  struct N2 { T x, y; };                                                 \
  struct N3 { T x, y, z; };                                              \
  struct N4 { T x, y, z, w; };
RECUROPS_SIM_VEC(uint, uint2, uint3, uint4)
RECUROPS_SIM_VEC(int, int2, int3, int4)
RECUROPS_SIM_VEC(float, float2, float3, float4)
RECUROPS_SIM_VEC(ushort, ushort2, ushort3, ushort4)

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

#define RECUROPS_SIM_UNARY(name, fn)                                     \
  inline float name(float x) { return fn(x); }                          \
  inline half name(half x) { return half(fn(float(x))); }               \
  inline bfloat name(bfloat x) { return bfloat(fn(float(x))); }         \
  template <class T> T name(T) = delete;

#define RECUROPS_SIM_MATH                                               \
  RECUROPS_SIM_UNARY(exp, __builtin_expf)                               \
  RECUROPS_SIM_UNARY(exp2, __builtin_exp2f)                             \
  RECUROPS_SIM_UNARY(log, __builtin_logf)                               \
  RECUROPS_SIM_UNARY(log2, __builtin_log2f)                             \
  RECUROPS_SIM_UNARY(log1p, __builtin_log1pf)                           \
  RECUROPS_SIM_UNARY(sqrt, __builtin_sqrtf)                             \
  RECUROPS_SIM_UNARY(rsqrt, 1.0f / __builtin_sqrtf)                     \
  RECUROPS_SIM_UNARY(tanh, __builtin_tanhf)                             \
  RECUROPS_SIM_UNARY(sin, __builtin_sinf)                               \
  RECUROPS_SIM_UNARY(cos, __builtin_cosf)                               \
  RECUROPS_SIM_UNARY(floor, __builtin_floorf)                           \
  RECUROPS_SIM_UNARY(ceil, __builtin_ceilf)                             \
  RECUROPS_SIM_UNARY(fabs, __builtin_fabsf)

RECUROPS_SIM_MATH
namespace precise { RECUROPS_SIM_MATH }
namespace fast { RECUROPS_SIM_MATH }

inline float abs(float x) { return __builtin_fabsf(x); }
inline int abs(int x) { return x < 0 ? -x : x; }
inline float pow(float a, float b) { return __builtin_powf(a, b); }
inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }

#define RECUROPS_SIM_MINMAX(T)                                          \
  inline T max(T a, T b) { return a > b ? a : b; }                      \
  inline T min(T a, T b) { return a < b ? a : b; }                      \
  inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
RECUROPS_SIM_MINMAX(float)
RECUROPS_SIM_MINMAX(int)
RECUROPS_SIM_MINMAX(uint)
inline half max(half a, half b) { return float(a) > float(b) ? a : b; }
inline half min(half a, half b) { return float(a) < float(b) ? a : b; }
template <class T, class U> void max(T, U) = delete;  // mixed types: no implicit choice
template <class T, class U> void min(T, U) = delete;
inline float fmax(float a, float b) { return __builtin_fmaxf(a, b); }
inline float fmin(float a, float b) { return __builtin_fminf(a, b); }
template <class T> inline T select(T a, T b, bool c) { return c ? b : a; }

""" + FLOAT_LIMITS + r"""
// simdgroup functions: every lane of the simdgroup meets the others in the runtime.
template <class T> T simd_sum(T) = delete;
inline float simd_sum(float x) {
  return recurops_sim::u2f((uint32_t)recurops_sim_warp(
      RECUROPS_SIM_SUM_F32, recurops_sim::f2u(x), 0, 0));
}
inline half simd_sum(half x) { return half(simd_sum(float(x))); }
inline bfloat simd_sum(bfloat x) { return bfloat(simd_sum(float(x))); }
inline int simd_sum(int x) {
  return (int)recurops_sim_warp(RECUROPS_SIM_SUM_I32, (uint32_t)x, 0, 0);
}
inline uint simd_sum(uint x) { return (uint)recurops_sim_warp(RECUROPS_SIM_SUM_U32, x, 0, 0); }
template <class T> T simd_max(T) = delete;
inline float simd_max(float x) {
  return recurops_sim::u2f((uint32_t)recurops_sim_warp(
      RECUROPS_SIM_MAX_F32, recurops_sim::f2u(x), 0, 0));
}
template <class T> T simd_min(T) = delete;
inline float simd_min(float x) {
  return recurops_sim::u2f((uint32_t)recurops_sim_warp(
      RECUROPS_SIM_MIN_F32, recurops_sim::f2u(x), 0, 0));
}
template <class T> inline T simd_shuffle_xor(T x, ushort mask) {
  return recurops_sim::from_bits<T>(recurops_sim_warp(
      RECUROPS_SIM_SHFL_XOR, recurops_sim::to_bits(x), (mask & 0xff) | (32 << 8), 0));
}
template <class T> inline T simd_shuffle(T x, ushort lane) {
  return recurops_sim::from_bits<T>(recurops_sim_warp(
      RECUROPS_SIM_SHFL_IDX, recurops_sim::to_bits(x), (lane & 0xff) | (32 << 8), 0));
}
template <class T> inline T simd_broadcast(T x, ushort lane) { return simd_shuffle(x, lane); }
inline void simdgroup_barrier(mem_flags) { recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0); }
inline void threadgroup_barrier(mem_flags) { recurops_sim_barrier(); }

// simdgroup matrices: every lane holds the whole matrix and does the whole
// operation; the lanes meet at each one, as they must on the GPU.
template <class T, int Cols, int Rows> struct simdgroup_matrix {
  T v[Rows * Cols];
  // On the GPU a lane's two elements; here each lane holds all of them, so an
  // elementwise operation on "its" elements applies to the whole matrix, and
  // element i of lane l is entry 2 l + i (a layout of the simulator's own: what
  // reads them may assume only that two matrices share it).
  struct elements {
    simdgroup_matrix* m;
    elements& operator*=(T s) {
      for (int i = 0; i < Rows * Cols; ++i) m->v[i] *= s;
      return *this;
    }
    T& operator[](int i) { return m->v[2 * recurops_sim_self()->lane + i]; }
  };
  elements thread_elements() { return elements{this}; }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
template <class T, int Cols, int Rows>
inline simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T x) {
  simdgroup_matrix<T, Cols, Rows> m;
  for (int i = 0; i < Rows * Cols; ++i) m.v[i] = x;
  return m;
}
template <class T, int Cols, int Rows, class P>
inline void simdgroup_load(simdgroup_matrix<T, Cols, Rows>& d, P src, ulong elements_per_row = Cols,
                           ulong2 origin = ulong2(0, 0), bool transpose = false) {
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0);
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Cols; ++c) {
      const ulong row = transpose ? origin.x + c : origin.y + r;
      const ulong col = transpose ? origin.y + r : origin.x + c;
      d.v[r * Cols + c] = src[row * elements_per_row + col];
    }
}
template <class T, int Cols, int Rows, class P>
inline void simdgroup_store(const simdgroup_matrix<T, Cols, Rows>& m, P dst,
                            ulong elements_per_row = Cols, ulong2 origin = ulong2(0, 0),
                            bool transpose = false) {
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0);
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Cols; ++c) {
      const ulong row = transpose ? origin.x + c : origin.y + r;
      const ulong col = transpose ? origin.y + r : origin.x + c;
      dst[row * elements_per_row + col] = m.v[r * Cols + c];
    }
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0);
}
template <class T, int N, int K, int M>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<T, N, M>& d,
                                          const simdgroup_matrix<T, K, M>& a,
                                          const simdgroup_matrix<T, N, K>& b,
                                          const simdgroup_matrix<T, N, M>& c) {
  recurops_sim_warp(RECUROPS_SIM_SYNC, 0, 0, 0);
  simdgroup_matrix<T, N, M> out;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      T sum = c.v[i * N + j];
      for (int k = 0; k < K; ++k) sum += a.v[i * K + k] * b.v[k * N + j];
      out.v[i * N + j] = sum;
    }
  d = out;
}

enum memory_order { memory_order_relaxed };
template <class T> struct atomic { T value; };  // Metal allows int, uint, float
typedef atomic<float> atomic_float;
inline float atomic_fetch_add_explicit(atomic<float>* object, float v, memory_order) {
  return recurops_sim::atomic_add(&object->value, v);
}

}  // namespace metal
"""

METAL_UTILS = r"""
#pragma once
// recurops simulator stand-in for MLX's metal::utils() prelude.
#include <metal_stdlib>
using namespace metal;
typedef half float16_t;
typedef bfloat bfloat16_t;
// Not in Metal (C++14-based, no double, no exceptions, RTTI, goto, new/delete,
// virtual functions or thread_local): using one of these is an error here.
#pragma GCC poison double goto new delete throw try catch virtual typeid dynamic_cast
#pragma GCC poison thread_local
"""

FILES = {
    "recurops_sim_numeric.h": NUMERIC,
    "metal_simdgroup_matrix": '#pragma once\n#include <metal_stdlib>\n',

    "mlx/backend/cuda/device/utils.cuh": CUDA_UTILS,
    "cooperative_groups.h": COOPERATIVE_GROUPS,
    "metal_stdlib": METAL_STDLIB,
    "recurops_mlx_metal_utils.h": METAL_UTILS,
}
