/* CPU emulation of the CUDA runtime subset medtl uses (test/cuda_emu; testing only) */
#ifndef EMU_CUDA_RUNTIME_H
#define EMU_CUDA_RUNTIME_H
#include "cuda_runtime_api.h"
#include <atomic>
#include <barrier>
#include <cfloat>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>
struct float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { float4 v = {x, y, z, w}; return v; }
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
extern thread_local dim3 blockIdx, threadIdx;
extern dim3 blockDim, gridDim;
extern thread_local std::barrier<> *emu_bar;
extern double emu_xchg[1024];
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
static inline void __syncthreads() { emu_bar->arrive_and_wait(); }
template <typename T> static inline T __shfl_xor_sync(unsigned, T v, int o)
{
	unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
	emu_xchg[tid] = (double) v;
	emu_bar->arrive_and_wait();
	T r = (T) emu_xchg[tid ^ o];
	emu_bar->arrive_and_wait();
	return r;
}
static inline float atomicAdd(float *p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
void emu_launch(const char *name, dim3 g, dim3 b, int sync, std::function<void()> f);
#endif
