/*
 * emu.cpp - a CPU emulation of the small part of the CUDA runtime and cuBLAS
 * that src/cuda uses, so the backend's kernels can be checked against the
 * CPU backend on a machine without a GPU (test/cuda_emu/run.sh).  Testing
 * only; it proves the kernels' index arithmetic and the host code's logic,
 * not their behaviour on real hardware (test/gpu_check.sh does that).
 *
 * Kernels run block after block.  Blocks of kernels that synchronise
 * (__syncthreads, warp shuffles: the list in launches.py) run one
 * std::thread per CUDA thread with a std::barrier; the others run their
 * threads one after another.  cudaMalloc poisons new memory; cublasSgemm is
 * a column-major reference with cuBLAS's argument checks.
 */
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
thread_local dim3 blockIdx, threadIdx;
dim3 blockDim, gridDim;
thread_local std::barrier<> *emu_bar;
double emu_xchg[1024];
static cudaError_t last = cudaSuccess;
long emu_launches = 0;

void emu_launch(const char *name, dim3 g, dim3 b, int sync, std::function<void()> f)
{
	unsigned nt = b.x * b.y * b.z;
	emu_launches++;
	if (g.x == 0 || g.y == 0 || g.z == 0 || nt == 0 || nt > 1024 || g.y > 65535 || g.z > 65535) { last = cudaErrorInvalidValue; fprintf(stderr, "emu: bad launch of %s\n", name); return; }
	gridDim = g; blockDim = b;
	for (unsigned bz = 0; bz < g.z; bz++) for (unsigned by = 0; by < g.y; by++) for (unsigned bx = 0; bx < g.x; bx++)
	{
		if (!sync)
		{
			blockIdx = dim3(bx, by, bz);
			for (unsigned tz = 0; tz < b.z; tz++) for (unsigned ty = 0; ty < b.y; ty++) for (unsigned tx = 0; tx < b.x; tx++)
			{ threadIdx = dim3(tx, ty, tz); f(); }
			continue;
		}
		std::barrier<> bar(nt);
		std::vector<std::thread> ts;
		for (unsigned tz = 0; tz < b.z; tz++) for (unsigned ty = 0; ty < b.y; ty++) for (unsigned tx = 0; tx < b.x; tx++)
			ts.emplace_back([&, tx, ty, tz, bx, by, bz] { blockIdx = dim3(bx, by, bz); threadIdx = dim3(tx, ty, tz); emu_bar = &bar; f(); bar.arrive_and_drop(); });
		for (auto &t : ts) t.join();
	}
}
struct emu_blas { int x; };
static inline float emu_elem(const float *p, size_t i) { return p[i]; }
static inline float emu_elem(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
/* column-major reference with the cuBLAS argument checks */
template <typename TA, typename TB>
static cublasStatus_t emu_gemm(const char *what, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
	float alpha, const TA *A, int lda, const TB *B, int ldb, float beta, float *C, int ldc)
{
	int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
	if (m < 0 || n < 0 || k < 0 || lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
	{ fprintf(stderr, "emu: %s invalid m%d n%d k%d lda%d ldb%d ldc%d\n", what, m, n, k, lda, ldb, ldc); return CUBLAS_STATUS_INVALID_VALUE; }
	for (int j = 0; j < n; j++) for (int i = 0; i < m; i++)
	{
		double s = 0;
		for (int p = 0; p < k; p++)
		{
			float a = ta == CUBLAS_OP_N ? emu_elem(A, i + (size_t) p * lda) : emu_elem(A, p + (size_t) i * lda);
			float b = tb == CUBLAS_OP_N ? emu_elem(B, p + (size_t) j * ldb) : emu_elem(B, j + (size_t) p * ldb);
			s += (double) a * b;
		}
		float *c = C + i + (size_t) j * ldc;
		*c = (float) (alpha * s + (beta == 0.0f ? 0.0 : (double) beta * *c));
	}
	return CUBLAS_STATUS_SUCCESS;
}
extern "C" {
const char *cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }
const char *cudaGetErrorName(cudaError_t e) { return e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation" : "cudaErrorX"; }
cudaError_t cudaGetDeviceCount(int *n) { if (getenv("EMU_NODEV")) { *n = 0; return cudaErrorNoDevice; } *n = 1; return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) { strcpy(p->name, "CPU emulation"); p->major = 9; p->minor = 0; p->totalGlobalMem = 1ull << 34; return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n) { if (n > (1ull << 40)) { *p = NULL; return cudaErrorMemoryAllocation; } *p = malloc(n); memset(*p, 0x7f, n); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) { memcpy(d, s, n); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) { memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { memset(d, v, n); return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { cudaError_t e = last; last = cudaSuccess; return e; }
struct emu_event { std::chrono::steady_clock::time_point t; };
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = new emu_event; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { e->t = std::chrono::steady_clock::now(); return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) { *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count(); return cudaSuccess; }

cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new emu_blas; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
	const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta, float *C, int ldc)
{
	return emu_gemm("cublasSgemm", ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb,
	int m, int n, int k, const float *alpha, const float *A, int lda, long long sa, const float *B, int ldb,
	long long sb, const float *beta, float *C, int ldc, long long sc, int batch)
{
	if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
	for (int i = 0; i < batch; i++)
	{
		cublasStatus_t st = emu_gemm("cublasSgemmStridedBatched", ta, tb, m, n, k, *alpha, A + i * sa, lda,
									 B + i * sb, ldb, *beta, C + i * sc, ldc);
		if (st != CUBLAS_STATUS_SUCCESS) return st;
	}
	return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
	const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb,
	const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t comp, cublasGemmAlgo_t)
{
	float al = *(const float *) alpha, be = *(const float *) beta;
	if (at != CUDA_R_16BF || bt != CUDA_R_16BF || ct != CUDA_R_32F || comp != CUBLAS_COMPUTE_32F)
	{ fprintf(stderr, "emu: cublasGemmEx types not emulated\n"); return CUBLAS_STATUS_NOT_SUPPORTED; }
	return emu_gemm("cublasGemmEx", ta, tb, m, n, k, al, (const __nv_bfloat16 *) A, lda,
					(const __nv_bfloat16 *) B, ldb, be, (float *) C, ldc);
}
}
