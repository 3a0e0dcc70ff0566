/*
 * ops_cuda.cu - the CUDA backend: the mt_backend table of src/core/ops.h with
 * every tensor argument in device memory, fp32 throughout.
 *
 * Convolutions are im2col + cublasSgemm over as many images at a time as
 * fit in mt_cuda_set_im2col_limit's bytes of the backend's workspace (else
 * one image at a time in the caller's scratch; a 1x1 stride-1 unpadded
 * dense convolution is one GEMM over the batch without im2col), depthwise convolutions and the
 * other layers are direct kernels.  The semantics follow the CPU backend
 * (src/core/ops_cpu.c, ops_cpu_train.c) entry by entry: NHWC activations,
 * weights packed by mt_conv_pack_oihw, backward entries adding into their
 * outputs, per-channel sums accumulated in double.
 *
 * cuBLAS is column-major; a row-major C = op(A) op(B) is the column-major
 * C^T = op(B)^T op(A)^T, which is what gemm_rm() asks cuBLAS for.
 *
 * With the engine's precision at bf16 (mt_set_precision, the GUC
 * medtl.precision) the dense convolutions' GEMMs read bfloat16 operands
 * (columns, weights, output gradients converted in the workspace) and
 * accumulate and write float32 through cublasGemmEx on the tensor cores;
 * weights, gradients, activations and everything else stay float32.
 *
 * Entries returning void queue their work on the default stream and record
 * the first failure for mt_cuda_synchronize(); after a failure the later
 * entries do nothing until it has been reported.
 */
#include "cuda/cuda_internal.h"

#include <cuda_bf16.h>
#include <float.h>
#include <math.h>
#include <string.h>
#include <time.h>

#define THREADS 256

/* Blocks for a grid-stride loop over n items. */
static unsigned int
blocks_for(size_t n)
{
	size_t		b = (n + THREADS - 1) / THREADS;

	return (unsigned int) (b > 65535u * 16u ? 65535u * 16u : (b == 0 ? 1 : b));
}

#define GRID_LOOP(i, n) \
	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
		 i += (size_t) gridDim.x * blockDim.x)

/* Record a failed launch. */
static void
launched(const char *what)
{
	mt_cuda_note(cudaGetLastError(), what);
}

__device__ __forceinline__ float
apply_act(float v, mt_act act)
{
	if (act == MT_ACT_RELU)
		return v > 0.0f ? v : 0.0f;
	if (act == MT_ACT_RELU6)
		return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
	if (act == MT_ACT_SILU)
		return v / (1.0f + expf(-v));
	if (act == MT_ACT_SIGMOID)
		return 1.0f / (1.0f + expf(-v));
	return v;
}

/* Row-major C[m x n] = alpha op(A) op(B) + beta C through column-major cuBLAS. */
static int
gemm_rm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
		const float *b, int ldb, float beta, float *c, int ldc, mt_err *err)
{
	cublasHandle_t h;

	if (m <= 0 || n <= 0 || (k <= 0 && beta == 1.0f))
		return MT_OK;
	if ((h = mt_cuda_blas(err)) == NULL)
		return err != NULL ? err->code : MT_ERR_INTERNAL;
	if (k < 0)
		k = 0;					/* C = beta C, as BLAS defines it */
	return mt_cublas_status(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
										ta ? CUBLAS_OP_T : CUBLAS_OP_N,
										n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc),
							"cublasSgemm", err);
}

/*
 * batch row-major GEMMs at once, the i-th on a + i sa, b + i sb, c + i sc
 * (one cublasSgemmStridedBatched)
 */
static int
gemm_rm_batched(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
				long long sa, const float *b, int ldb, long long sb, float beta, float *c,
				int ldc, long long sc, int batch, mt_err *err)
{
	cublasHandle_t h;

	if (m <= 0 || n <= 0 || batch <= 0 || (k <= 0 && beta == 1.0f))
		return MT_OK;
	if ((h = mt_cuda_blas(err)) == NULL)
		return err != NULL ? err->code : MT_ERR_INTERNAL;
	if (k < 0)
		k = 0;
	return mt_cublas_status(cublasSgemmStridedBatched(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
													  ta ? CUBLAS_OP_T : CUBLAS_OP_N,
													  n, m, k, &alpha, b, ldb, sb, a, lda, sa,
													  &beta, c, ldc, sc, batch),
							"cublasSgemmStridedBatched", err);
}

/* gemm_rm for the void entries: failures are kept for synchronize */
static void
gemm_rm_async(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
			  const float *b, int ldb, float beta, float *c, int ldc)
{
	mt_err		err;

	mt_clearerr(&err);
	if (gemm_rm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, &err) != MT_OK)
		mt_cuda_note_err(&err);
}

/*
 * gemm_rm with bfloat16 A and B, float32 C, accumulation in float32 (the
 * tensor cores); the same row-major convention.
 */
static int
gemm_rm_bf16(int ta, int tb, int m, int n, int k, float alpha, const __nv_bfloat16 *a, int lda,
			 const __nv_bfloat16 *b, int ldb, float beta, float *c, int ldc, mt_err *err)
{
	cublasHandle_t h;

	if (m <= 0 || n <= 0 || (k <= 0 && beta == 1.0f))
		return MT_OK;
	if ((h = mt_cuda_blas(err)) == NULL)
		return err != NULL ? err->code : MT_ERR_INTERNAL;
	if (k < 0)
		k = 0;
	return mt_cublas_status(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
										 ta ? CUBLAS_OP_T : CUBLAS_OP_N,
										 n, m, k, &alpha, b, CUDA_R_16BF, ldb, a, CUDA_R_16BF, lda,
										 &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
										 CUBLAS_GEMM_DEFAULT),
							"cublasGemmEx (bf16)", err);
}

/* A kernel-launch failure as the return value of an int entry. */
static int
launch_status(const char *what, mt_err *err)
{
	return mt_cuda_status(cudaGetLastError(), what, err);
}

/* An earlier asynchronous failure, reported by the int entries. */
static int
pending_status(mt_err *err)
{
	if (mt_cuda_failed())
		return mt_cuda_synchronize(err);
	return MT_OK;
}

/* ---------------------------------------------------------------- conv --- */

/* Geometry of a convolution on one input size, passed by value to kernels. */
typedef struct conv_geo
{
	int			h,
				w,
				oh,
				ow,
				cin,
				cin_g,
				cout,
				kh,
				kw,
				sh,
				sw,
				dh,
				dw,
				pt,
				pl;
} conv_geo;

static conv_geo
make_geo(const mt_conv_desc *d, int h, int w, int oh, int ow)
{
	conv_geo	g;

	g.h = h;
	g.w = w;
	g.oh = oh;
	g.ow = ow;
	g.cin = d->cin;
	g.cin_g = d->cin / d->groups;
	g.cout = d->cout;
	g.kh = d->kh;
	g.kw = d->kw;
	g.sh = d->sh;
	g.sw = d->sw;
	g.dh = d->dh;
	g.dw = d->dw;
	g.pt = d->pad_t;
	g.pl = d->pad_l;
	return g;
}

__device__ __forceinline__ float
to_elem(float v, float *)
{
	return v;
}

__device__ __forceinline__ __nv_bfloat16
to_elem(float v, __nv_bfloat16 *)
{
	return __float2bfloat16_rn(v);
}

/*
 * im2col of nimg images and one group: col[((img*oh + oy)*ow + ox) * ldc +
 * (ky*kw + kx)*cin_g + ci] = x[img][iy][ix][g*cin_g + ci], or 0 in padding
 * (and in the row's columns past kh*kw*cin_g up to ldc); T is float or
 * __nv_bfloat16.
 */
template <typename T>
__global__ void
k_im2col(conv_geo g, int nimg, int grp, int ldc, const float *__restrict__ x, T *__restrict__ col)
{
	size_t		total = (size_t) nimg * g.oh * g.ow * ldc;
	int			k = g.kh * g.kw * g.cin_g;

	GRID_LOOP(i, total)
	{
		size_t		t = i / ldc;
		int			kk = (int) (i % ldc);
		int			ci = kk % g.cin_g;
		int			kx,
					ky,
					ox,
					oy,
					iy,
					ix;

		if (kk >= k)
		{
			col[i] = to_elem(0.0f, col);
			continue;
		}
		kk /= g.cin_g;
		kx = kk % g.kw;
		ky = kk / g.kw;
		ox = (int) (t % g.ow);
		t /= g.ow;
		oy = (int) (t % g.oh);
		t /= g.oh;				/* the image */
		iy = oy * g.sh - g.pt + ky * g.dh;
		ix = ox * g.sw - g.pl + kx * g.dw;
		col[i] = to_elem((iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) ? 0.0f :
						 x[((t * g.h + iy) * g.w + ix) * g.cin + (size_t) grp * g.cin_g + ci], col);
	}
}

/*
 * Packed weights (groups x [k x cout_g], float32) as bfloat16 with each
 * group's rows padded with zeros to kp.
 */
__global__ void
k_pack_bf16(int groups, int k, int kp, int cout_g, const float *__restrict__ w,
			__nv_bfloat16 *__restrict__ wb)
{
	size_t		total = (size_t) groups * kp * cout_g;

	GRID_LOOP(i, total)
	{
		int			c = (int) (i % cout_g);
		size_t		r = i / cout_g;
		int			row = (int) (r % kp);
		size_t		gr = r / kp;

		wb[i] = __float2bfloat16_rn(row < k ? w[(gr * k + row) * cout_g + c] : 0.0f);
	}
}

/*
 * dx[iy][ix][g*cin_g + ci] += sum of the column entries im2col copied it to
 * (a gather, so no atomics and a fixed order).
 */
__global__ void
k_col2im_add(conv_geo g, int nimg, int grp, const float *__restrict__ col, float *__restrict__ dx)
{
	size_t		total = (size_t) nimg * g.h * g.w * g.cin_g;
	size_t		kcols = (size_t) g.kh * g.kw * g.cin_g;

	GRID_LOOP(i, total)
	{
		int			ci = (int) (i % g.cin_g);
		size_t		p = i / g.cin_g;
		int			ix = (int) (p % g.w);
		int			iy = (int) ((p / g.w) % g.h);
		size_t		img = p / ((size_t) g.w * g.h);
		const float *c = col + img * g.oh * g.ow * kcols;
		float		s = 0.0f;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			ty = iy + g.pt - ky * g.dh;
			int			oy;

			if (ty < 0 || ty % g.sh != 0 || (oy = ty / g.sh) >= g.oh)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			tx = ix + g.pl - kx * g.dw;
				int			ox;

				if (tx < 0 || tx % g.sw != 0 || (ox = tx / g.sw) >= g.ow)
					continue;
				s += c[((size_t) oy * g.ow + ox) * kcols + ((size_t) ky * g.kw + kx) * g.cin_g + ci];
			}
		}
		dx[((img * g.h + iy) * g.w + ix) * g.cin + (size_t) grp * g.cin_g + ci] += s;
	}
}

__device__ __forceinline__ void
store4(float *p, float4 v)
{
	*(float4 *) p = v;
}

__device__ __forceinline__ void
store4(__nv_bfloat16 *p, float4 v)
{
	__nv_bfloat162 *q = (__nv_bfloat162 *) p;

	q[0] = __floats2bfloat162_rn(v.x, v.y);
	q[1] = __floats2bfloat162_rn(v.z, v.w);
}

/*
 * k_im2col four channels a thread (cin_g, cin and ldc multiples of 4, x
 * 16-byte aligned, fewer than 2^31 quads): a quarter of the index
 * arithmetic, in 32 bits, and 16-byte loads.
 */
template <typename T>
__global__ void
k_im2col4(conv_geo g, int nimg, int grp, int ldc, const float *__restrict__ x, T *__restrict__ col)
{
	unsigned int q = (unsigned int) ldc / 4;
	unsigned int k4 = (unsigned int) (g.kh * g.kw * g.cin_g) / 4;
	unsigned int c4 = (unsigned int) g.cin_g / 4;
	unsigned int total = (unsigned int) nimg * g.oh * g.ow * q;

	for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
	{
		unsigned int row = i / q,
					kq = i % q;
		float4		v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

		if (kq < k4)
		{
			unsigned int t = kq / c4,
						r2 = row / g.ow;
			int			ci = (int) (kq % c4) * 4,
						kx = (int) (t % g.kw),
						ky = (int) (t / g.kw),
						ox = (int) (row % g.ow),
						oy = (int) (r2 % g.oh),
						iy = oy * g.sh - g.pt + ky * g.dh,
						ix = ox * g.sw - g.pl + kx * g.dw;
			size_t		img = r2 / g.oh;

			if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
				v = *(const float4 *) (x + ((img * g.h + iy) * g.w + ix) * g.cin +
									   (size_t) grp * g.cin_g + ci);
		}
		store4(col + (size_t) i * 4, v);
	}
}

/*
 * k_col2im_add four channels a thread (the same conditions on cin_g, cin
 * and dx, and on the columns' k)
 */
__global__ void
k_col2im_add4(conv_geo g, int nimg, int grp, const float *__restrict__ col, float *__restrict__ dx)
{
	unsigned int c4 = (unsigned int) g.cin_g / 4;
	unsigned int total = (unsigned int) nimg * g.h * g.w * c4;
	size_t		kcols = (size_t) g.kh * g.kw * g.cin_g;

	for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
	{
		int			ci = (int) (i % c4) * 4;
		unsigned int p = i / c4;
		int			ix = (int) (p % g.w);
		int			iy = (int) ((p / g.w) % g.h);
		size_t		img = p / ((unsigned int) g.w * g.h);
		const float *c = col + img * g.oh * g.ow * kcols;
		float4		s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		float4	   *d;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			ty = iy + g.pt - ky * g.dh;
			int			oy;

			if (ty < 0 || ty % g.sh != 0 || (oy = ty / g.sh) >= g.oh)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			tx = ix + g.pl - kx * g.dw;
				int			ox;
				float4		v;

				if (tx < 0 || tx % g.sw != 0 || (ox = tx / g.sw) >= g.ow)
					continue;
				v = *(const float4 *) (c + ((size_t) oy * g.ow + ox) * kcols +
									   ((size_t) ky * g.kw + kx) * g.cin_g + ci);
				s.x += v.x;
				s.y += v.y;
				s.z += v.z;
				s.w += v.w;
			}
		}
		d = (float4 *) (dx + ((img * g.h + iy) * g.w + ix) * g.cin + (size_t) grp * g.cin_g + ci);
		d->x += s.x;
		d->y += s.y;
		d->z += s.z;
		d->w += s.w;
	}
}

/* whether the four-channel kernels apply: channel counts and the tensor's alignment */
static int
by_quads(const conv_geo *g, const float *t, size_t quads)
{
	return g->cin_g % 4 == 0 && g->cin % 4 == 0 && ((uintptr_t) t & 15) == 0 &&
		quads < ((size_t) 1 << 31);
}

/* im2col of ni images of group gr into col (rows ldc long) */
template <typename T>
static int
im2col(const conv_geo *g, int ni, int gr, int ldc, const float *x, T *col, mt_err *err)
{
	size_t		total = (size_t) ni * g->oh * g->ow * ldc;

	if (ldc % 4 == 0 && by_quads(g, x, total / 4))
		k_im2col4<T><<<blocks_for(total / 4), THREADS>>>(*g, ni, gr, ldc, x, col);
	else
		k_im2col<T><<<blocks_for(total), THREADS>>>(*g, ni, gr, ldc, x, col);
	return launch_status("the im2col kernel", err);
}

/* dx += col2im of ni images of group gr (columns kh*kw*cin_g long) */
static int
col2im_add(const conv_geo *g, int ni, int gr, const float *col, float *dx, mt_err *err)
{
	size_t		total = (size_t) ni * g->h * g->w * g->cin_g;

	if (by_quads(g, dx, total / 4))
		k_col2im_add4<<<blocks_for(total / 4), THREADS>>>(*g, ni, gr, col, dx);
	else
		k_col2im_add<<<blocks_for(total), THREADS>>>(*g, ni, gr, col, dx);
	return launch_status("the col2im kernel", err);
}

/* y[i] = bf16(x[i]) */
__global__ void
k_to_bf16(size_t len, const float *__restrict__ x, __nv_bfloat16 *__restrict__ y)
{
	GRID_LOOP(i, len)
		y[i] = __float2bfloat16_rn(x[i]);
}

/* the same four at a time (x 16-byte, y 8-byte aligned) */
__global__ void
k_to_bf16_4(size_t quads, const float *__restrict__ x, __nv_bfloat16 *__restrict__ y)
{
	GRID_LOOP(i, quads)
		store4(y + i * 4, ((const float4 *) x)[i]);
}

/* y = bf16(x) over len values */
static int
to_bf16(size_t len, const float *x, __nv_bfloat16 *y, mt_err *err)
{
	size_t		done = 0;

	if (((uintptr_t) x & 15) == 0 && ((uintptr_t) y & 7) == 0 && len >= 4)
	{
		done = len / 4 * 4;
		k_to_bf16_4<<<blocks_for(len / 4), THREADS>>>(len / 4, x, y);
	}
	if (done < len)
		k_to_bf16<<<blocks_for(len - done), THREADS>>>(len - done, x + done, y + done);
	return launch_status("the bf16 conversion kernel", err);
}

/* y = act(y + bias) over rows x c (bias may be NULL) */
__global__ void
k_bias_act(size_t rows, int c, const float *__restrict__ bias, mt_act act, float *__restrict__ y)
{
	GRID_LOOP(i, rows * (size_t) c)
	{
		float		v = y[i];

		if (bias != NULL)
			v += bias[i % c];
		y[i] = apply_act(v, act);
	}
}

/* depthwise forward: one thread per output value */
__global__ void
k_depthwise(conv_geo g, int n, const float *__restrict__ x, const float *__restrict__ wt,
			const float *__restrict__ bias, mt_act act, float *__restrict__ y)
{
	int			c = g.cin;
	size_t		total = (size_t) n * g.oh * g.ow * c;

	GRID_LOOP(i, total)
	{
		int			j = (int) (i % c);
		size_t		p = i / c;
		int			ox = (int) (p % g.ow);
		int			oy = (int) ((p / g.ow) % g.oh);
		size_t		img = p / ((size_t) g.ow * g.oh);
		const float *xi = x + img * g.h * g.w * c;
		float		s = bias != NULL ? bias[j] : 0.0f;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			iy = oy * g.sh - g.pt + ky * g.dh;

			if (iy < 0 || iy >= g.h)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			ix = ox * g.sw - g.pl + kx * g.dw;

				if (ix < 0 || ix >= g.w)
					continue;
				s += xi[((size_t) iy * g.w + ix) * c + j] * wt[((size_t) ky * g.kw + kx) * c + j];
			}
		}
		y[i] = apply_act(s, act);
	}
}

/* depthwise input gradient: a gather per input value */
__global__ void
k_depthwise_bwd_data(conv_geo g, int n, const float *__restrict__ dy,
					 const float *__restrict__ wt, float *__restrict__ dx)
{
	int			c = g.cin;
	size_t		total = (size_t) n * g.h * g.w * c;

	GRID_LOOP(i, total)
	{
		int			j = (int) (i % c);
		size_t		p = i / c;
		int			ix = (int) (p % g.w);
		int			iy = (int) ((p / g.w) % g.h);
		size_t		img = p / ((size_t) g.w * g.h);
		const float *gi = dy + img * g.oh * g.ow * c;
		float		s = 0.0f;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			ty = iy + g.pt - ky * g.dh;
			int			oy;

			if (ty < 0 || ty % g.sh != 0 || (oy = ty / g.sh) >= g.oh)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			tx = ix + g.pl - kx * g.dw;
				int			ox;

				if (tx < 0 || tx % g.sw != 0 || (ox = tx / g.sw) >= g.ow)
					continue;
				s += gi[((size_t) oy * g.ow + ox) * c + j] * wt[((size_t) ky * g.kw + kx) * c + j];
			}
		}
		dx[i] += s;
	}
}

/*
 * depthwise weight gradient: block (32 channels x 8 lanes) per tap, channel
 * chunk and range of output positions (blockIdx.z of gridDim.z), each lane
 * striding over its positions; sums in double reduced through shared
 * memory.  With one range the block adds its sum to dw; with several it
 * writes it to part[z][tap][channel] and k_depthwise_bwd_weight_sum adds
 * the ranges in order: no atomics, so a run repeats bit for bit (float
 * atomics land in whatever order the blocks finish).
 */
__global__ void
k_depthwise_bwd_weight(conv_geo g, int n, const float *__restrict__ x,
					   const float *__restrict__ dy, float *__restrict__ dw,
					   double *__restrict__ part_out)
{
	__shared__ double part[8][32];
	int			c = g.cin;
	int			tap = blockIdx.x;
	int			ky = tap / g.kw,
				kx = tap % g.kw;
	int			j = blockIdx.y * 32 + threadIdx.x;
	size_t		npos = (size_t) n * g.oh * g.ow;
	size_t		per = (npos + gridDim.z - 1) / gridDim.z;
	size_t		p0 = (size_t) blockIdx.z * per;
	size_t		p1 = p0 + per < npos ? p0 + per : npos;
	double		s = 0.0;

	if (j < c)
		for (size_t p = p0 + threadIdx.y; p < p1; p += blockDim.y)
		{
			int			ox = (int) (p % g.ow);
			int			oy = (int) ((p / g.ow) % g.oh);
			size_t		img = p / ((size_t) g.ow * g.oh);
			int			iy = oy * g.sh - g.pt + ky * g.dh;
			int			ix = ox * g.sw - g.pl + kx * g.dw;

			if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w)
				continue;
			s += (double) dy[p * c + j] *
				x[((img * g.h + iy) * g.w + ix) * c + j];
		}
	part[threadIdx.y][threadIdx.x] = s;
	__syncthreads();
	if (threadIdx.y == 0 && j < c)
	{
		for (int l = 1; l < 8; l++)
			s += part[l][threadIdx.x];
		if (part_out == NULL)
			dw[(size_t) tap * c + j] += (float) s;
		else
			part_out[((size_t) blockIdx.z * gridDim.x + tap) * c + j] = s;
	}
}

/* dw[t] += the sum over the z ranges of part[z][t], in range order */
__global__ void
k_depthwise_bwd_weight_sum(size_t taps_c, int zs, const double *__restrict__ part,
						   float *__restrict__ dw)
{
	GRID_LOOP(t, taps_c)
	{
		double		s = 0.0;

		for (int z = 0; z < zs; z++)
			s += part[(size_t) z * taps_c + t];
		dw[t] += (float) s;
	}
}

static int
conv_out(const mt_conv_desc *d, int h, int w, int *oh, int *ow, mt_err *err)
{
	*oh = mt_out_size(h, d->kh, d->sh, d->dh, d->pad_t, d->pad_b);
	*ow = mt_out_size(w, d->kw, d->sw, d->dw, d->pad_l, d->pad_r);
	if (*oh <= 0 || *ow <= 0)
		return mt_seterr(err, MT_ERR_SHAPE,
						 "input of %dx%d is too small for a %dx%d convolution", h, w, d->kh, d->kw);
	return MT_OK;
}

/* dense GEMM over the whole batch: 1x1, stride 1, no padding, one group */
static int
conv_is_pointwise(const mt_conv_desc *d)
{
	return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 &&
		d->pad_t == 0 && d->pad_l == 0 && d->pad_b == 0 && d->pad_r == 0 &&
		d->groups == 1;
}

/* most bytes of batched im2col columns (the backend's workspace) */
static size_t im2col_limit = (size_t) 128 << 20;

extern "C" void
mt_cuda_set_im2col_limit(size_t bytes)
{
	im2col_limit = bytes;
}

/* of n images, how many have per_img bytes of columns within im2col_limit (may be 0) */
static int
images_fitting(int n, size_t per_img)
{
	size_t		fit = per_img > 0 ? im2col_limit / per_img : (size_t) n;

	return fit < (size_t) n ? (int) fit : n;
}

/*
 * Images per im2col + GEMM and the buffer for their columns: as many as fit
 * in im2col_limit in the backend's workspace, else one at a time in the
 * caller's scratch (mt_conv_scratch_size floats).
 */
static int
conv_chunk(int n, size_t colsz, float *scratch, float **col)
{
	size_t		per = colsz * sizeof(float);
	int			chunk = images_fitting(n, per);
	void	   *ws;
	mt_err		err;

	*col = scratch;
	if (chunk <= 1)
		return 1;
	mt_clearerr(&err);
	ws = mt_cuda_workspace((size_t) chunk * per, &err);
	if (ws == NULL)
		return 1;				/* over the memory cap or out of memory: per image */
	*col = (float *) ws;
	return chunk;
}

/* ------------------------------------------------------ bf16 convolutions --- */

static int
conv_bf16(void)
{
	return mt_get_precision() == MT_PREC_BF16;
}

static size_t
round_up(size_t v, size_t a)
{
	return (v + a - 1) / a * a;
}

/*
 * The workspace of a bf16 convolution: bfloat16 operands of na and nb
 * elements (*a, *b) and columns for *chunk images of per_img bytes each (as
 * many as fit in im2col_limit, at least one), returned; NULL when the
 * workspace cannot grow that far (over the cap, out of memory): the caller
 * then runs in float32.
 */
static void *
bf16_workspace(size_t na, size_t nb, size_t per_img, int n, int *chunk,
			   __nv_bfloat16 **a, __nv_bfloat16 **b)
{
	size_t		sa = round_up(na * sizeof(__nv_bfloat16), 256);
	size_t		sb = round_up(nb * sizeof(__nv_bfloat16), 256);
	int			c = images_fitting(n, per_img);
	char	   *ws;
	mt_err		err;

	if (c < 1)
		c = 1;
	mt_clearerr(&err);
	ws = (char *) mt_cuda_workspace(sa + sb + (size_t) c * per_img, &err);
	if (ws == NULL)
		return NULL;
	*a = (__nv_bfloat16 *) ws;
	*b = (__nv_bfloat16 *) (ws + sa);
	*chunk = c;
	return ws + sa + sb;
}

/* the GEMM dimension of the columns: kh*kw*cin_g rounded up to 8 (16-byte rows) */
static int
bf16_kp(const mt_conv_desc *d)
{
	return (int) round_up((size_t) d->kh * d->kw * (d->cin / d->groups), 8);
}

/* the sizes the three bf16 convolution entries share */
typedef struct bf16_dims
{
	int			cout_g,
				k,				/* kh * kw * cin_g */
				kp,				/* k rounded up to 8 */
				pw;				/* one GEMM over the batch (conv_is_pointwise) */
	size_t		in_img,
				out_img,
				colsz;			/* bf16 column entries per image: oh * ow * kp */
} bf16_dims;

static bf16_dims
bf16_dims_of(const mt_conv_desc *d, const conv_geo *g)
{
	bf16_dims	z;

	z.cout_g = d->cout / d->groups;
	z.k = g->kh * g->kw * g->cin_g;
	z.kp = bf16_kp(d);
	z.pw = conv_is_pointwise(d);
	z.in_img = (size_t) g->h * g->w * d->cin;
	z.out_img = (size_t) g->oh * g->ow * d->cout;
	z.colsz = (size_t) g->oh * g->ow * z.kp;
	return z;
}

/* wb = the packed weights in bfloat16, each group's rows padded to kp */
static int
pack_bf16(const mt_conv_desc *d, const bf16_dims *z, const float *packed_w, __nv_bfloat16 *wb,
		  mt_err *err)
{
	k_pack_bf16<<<blocks_for((size_t) d->groups * z->kp * z->cout_g), THREADS>>>(d->groups, z->k, z->kp,
																			   z->cout_g, packed_w, wb);
	return launch_status("the bf16 weight kernel", err);
}

/*
 * The dense convolution's forward GEMMs on bfloat16 operands.  *done = 0
 * (nothing queued) when the workspace is not available.
 */
static int
conv2d_bf16(const mt_conv_desc *d, int n, const conv_geo *g, const float *x,
			const float *packed_w, float *y, int *done, mt_err *err)
{
	bf16_dims	z = bf16_dims_of(d, g);
	int			chunk,
				rc;
	__nv_bfloat16 *wb,
			   *xb;
	__nv_bfloat16 *col = (__nv_bfloat16 *)
		bf16_workspace((size_t) d->groups * z.kp * z.cout_g, z.pw ? n * z.in_img : 0,
					   z.pw ? 0 : z.colsz * sizeof(__nv_bfloat16), n, &chunk, &wb, &xb);

	*done = 0;
	if (col == NULL)
		return MT_OK;
	*done = 1;
	if ((rc = pack_bf16(d, &z, packed_w, wb, err)) != MT_OK)
		return rc;
	if (z.pw)
	{
		if ((rc = to_bf16(n * z.in_img, x, xb, err)) != MT_OK)
			return rc;
		return gemm_rm_bf16(0, 0, n * g->h * g->w, d->cout, d->cin, 1.0f, xb, d->cin,
							wb, d->cout, 0.0f, y, d->cout, err);
	}
	for (int i = 0; i < n; i += chunk)
	{
		int			ni = n - i < chunk ? n - i : chunk;

		for (int gr = 0; gr < d->groups; gr++)
		{
			if ((rc = im2col(g, ni, gr, z.kp, x + i * z.in_img, col, err)) != MT_OK)
				return rc;
			if ((rc = gemm_rm_bf16(0, 0, ni * g->oh * g->ow, z.cout_g, z.kp, 1.0f, col, z.kp,
								   wb + (size_t) gr * z.kp * z.cout_g, z.cout_g, 0.0f,
								   y + i * z.out_img + (size_t) gr * z.cout_g, d->cout, err)) != MT_OK)
				return rc;
		}
	}
	return MT_OK;
}

/* dx += the input gradient of a dense convolution, GEMMs on bfloat16 operands */
static int
conv2d_backward_data_bf16(const mt_conv_desc *d, int n, const conv_geo *g, const float *dy,
						  const float *packed_w, float *dx, int *done, mt_err *err)
{
	bf16_dims	z = bf16_dims_of(d, g);
	int			chunk,
				rc;
	__nv_bfloat16 *wb,
			   *dyb;
	float	   *col = (float *)
		bf16_workspace((size_t) d->groups * z.kp * z.cout_g, n * z.out_img,
					   z.pw ? 0 : (size_t) g->oh * g->ow * z.k * sizeof(float), n, &chunk, &wb, &dyb);

	*done = 0;
	if (col == NULL)
		return MT_OK;
	*done = 1;
	if ((rc = pack_bf16(d, &z, packed_w, wb, err)) != MT_OK)
		return rc;
	if ((rc = to_bf16(n * z.out_img, dy, dyb, err)) != MT_OK)
		return rc;
	if (z.pw)
		return gemm_rm_bf16(0, 1, n * g->h * g->w, d->cin, d->cout, 1.0f, dyb, d->cout,
							wb, d->cout, 1.0f, dx, d->cin, err);
	for (int i = 0; i < n; i += chunk)
	{
		int			ni = n - i < chunk ? n - i : chunk;

		for (int gr = 0; gr < d->groups; gr++)
		{
			/* dcol [ni*oh*ow x k] = dY_g * W_g^T (the first k of W_g's kp rows) */
			if ((rc = gemm_rm_bf16(0, 1, ni * g->oh * g->ow, z.k, z.cout_g, 1.0f,
								   dyb + i * z.out_img + (size_t) gr * z.cout_g, d->cout,
								   wb + (size_t) gr * z.kp * z.cout_g, z.cout_g, 0.0f,
								   col, z.k, err)) != MT_OK)
				return rc;
			if ((rc = col2im_add(g, ni, gr, col, dx + i * z.in_img, err)) != MT_OK)
				return rc;
		}
	}
	return MT_OK;
}

/* packed_dw += the weight gradient of a dense convolution, GEMMs on bfloat16 operands */
static int
conv2d_backward_weight_bf16(const mt_conv_desc *d, int n, const conv_geo *g, const float *x,
							const float *dy, float *packed_dw, int *done, mt_err *err)
{
	bf16_dims	z = bf16_dims_of(d, g);
	int			chunk,
				rc;
	__nv_bfloat16 *xb,
			   *dyb;
	__nv_bfloat16 *col = (__nv_bfloat16 *)
		bf16_workspace(z.pw ? n * z.in_img : 0, n * z.out_img,
					   z.pw ? 0 : z.colsz * sizeof(__nv_bfloat16), n, &chunk, &xb, &dyb);

	*done = 0;
	if (col == NULL)
		return MT_OK;
	*done = 1;
	if ((rc = to_bf16(n * z.out_img, dy, dyb, err)) != MT_OK)
		return rc;
	if (z.pw)
	{
		if ((rc = to_bf16(n * z.in_img, x, xb, err)) != MT_OK)
			return rc;
		return gemm_rm_bf16(1, 0, d->cin, d->cout, n * g->h * g->w, 1.0f, xb, d->cin,
							dyb, d->cout, 1.0f, packed_dw, d->cout, err);
	}
	for (int i = 0; i < n; i += chunk)
	{
		int			ni = n - i < chunk ? n - i : chunk;

		for (int gr = 0; gr < d->groups; gr++)
		{
			/* dW_g [k x cout_g] += col^T [k x ni*oh*ow] * dY_g (col's rows are kp long) */
			if ((rc = im2col(g, ni, gr, z.kp, x + i * z.in_img, col, err)) != MT_OK)
				return rc;
			if ((rc = gemm_rm_bf16(1, 0, z.k, z.cout_g, ni * g->oh * g->ow, 1.0f, col, z.kp,
								   dyb + i * z.out_img + (size_t) gr * z.cout_g, d->cout, 1.0f,
								   packed_dw + (size_t) gr * z.k * z.cout_g, z.cout_g, err)) != MT_OK)
				return rc;
		}
	}
	return MT_OK;
}

static int
cuda_conv2d_impl(const mt_conv_desc *d, int n, int h, int w, const float *x,
			const float *packed_w, const float *bias, float *y, float *scratch,
			mt_err *err)
{
	int			oh,
				ow,
				done,
				rc;
	int			cin_g = d->cin / d->groups;
	int			cout_g = d->cout / d->groups;
	int			k = d->kh * d->kw * cin_g;
	size_t		in_img,
				out_img;
	conv_geo	g;

	if ((rc = conv_out(d, h, w, &oh, &ow, err)) != MT_OK || (rc = pending_status(err)) != MT_OK)
		return rc;
	in_img = (size_t) h * w * d->cin;
	out_img = (size_t) oh * ow * d->cout;
	g = make_geo(d, h, w, oh, ow);
	if (n <= 0)
		return MT_OK;
	if (mt_conv_is_depthwise(d))
	{
		size_t		total = (size_t) n * out_img;

		k_depthwise<<<blocks_for(total), THREADS>>>(g, n, x, packed_w, bias, d->act, y);
		return launch_status("the depthwise convolution kernel", err);
	}
	if (conv_bf16() &&
		((rc = conv2d_bf16(d, n, &g, x, packed_w, y, &done, err)) != MT_OK || done))
	{
		if (rc != MT_OK)
			return rc;
	}
	else if (conv_is_pointwise(d))
	{
		if ((rc = gemm_rm(0, 0, n * h * w, d->cout, d->cin, 1.0f, x, d->cin,
						  packed_w, d->cout, 0.0f, y, d->cout, err)) != MT_OK)
			return rc;
	}
	else
	{
		size_t		colsz = (size_t) oh * ow * k;
		float	   *col;
		int			chunk = conv_chunk(n, colsz, scratch, &col);

		for (int i = 0; i < n; i += chunk)
		{
			int			ni = n - i < chunk ? n - i : chunk;

			for (int gr = 0; gr < d->groups; gr++)
			{
				if ((rc = im2col(&g, ni, gr, k, x + i * in_img, col, err)) != MT_OK)
					return rc;
				if ((rc = gemm_rm(0, 0, ni * oh * ow, cout_g, k, 1.0f, col, k,
								  packed_w + (size_t) gr * k * cout_g, cout_g, 0.0f,
								  y + i * out_img + (size_t) gr * cout_g, d->cout, err)) != MT_OK)
					return rc;
			}
		}
	}
	if (bias != NULL || d->act != MT_ACT_NONE)
	{
		size_t		rows = (size_t) n * oh * ow;

		k_bias_act<<<blocks_for(rows * d->cout), THREADS>>>(rows, d->cout, bias, d->act, y);
		return launch_status("the bias/activation kernel", err);
	}
	return MT_OK;
}

static int
cuda_conv2d_backward_data_impl(const mt_conv_desc *d, int n, int h, int w,
						  const float *dy, const float *packed_w, float *dx,
						  float *scratch, mt_err *err)
{
	int			oh,
				ow,
				done,
				rc;
	int			cin_g = d->cin / d->groups;
	int			cout_g = d->cout / d->groups;
	int			k = d->kh * d->kw * cin_g;
	size_t		in_img,
				out_img;
	conv_geo	g;

	if ((rc = conv_out(d, h, w, &oh, &ow, err)) != MT_OK || (rc = pending_status(err)) != MT_OK)
		return rc;
	in_img = (size_t) h * w * d->cin;
	out_img = (size_t) oh * ow * d->cout;
	g = make_geo(d, h, w, oh, ow);
	if (n <= 0)
		return MT_OK;
	if (mt_conv_is_depthwise(d))
	{
		size_t		total = (size_t) n * in_img;

		k_depthwise_bwd_data<<<blocks_for(total), THREADS>>>(g, n, dy, packed_w, dx);
		return launch_status("the depthwise backward-data kernel", err);
	}
	if (conv_bf16() &&
		((rc = conv2d_backward_data_bf16(d, n, &g, dy, packed_w, dx, &done, err)) != MT_OK || done))
		return rc;
	if (conv_is_pointwise(d))
		return gemm_rm(0, 1, n * h * w, d->cin, d->cout, 1.0f, dy, d->cout,
					   packed_w, d->cout, 1.0f, dx, d->cin, err);
	{
		float	   *col;
		int			chunk = conv_chunk(n, (size_t) oh * ow * k, scratch, &col);

		for (int i = 0; i < n; i += chunk)
		{
			int			ni = n - i < chunk ? n - i : chunk;

			for (int gr = 0; gr < d->groups; gr++)
			{
				/* dcol [ni*oh*ow x k] = dY_g [ni*oh*ow x cout_g] * W_g^T */
				if ((rc = gemm_rm(0, 1, ni * oh * ow, k, cout_g, 1.0f,
								  dy + i * out_img + (size_t) gr * cout_g, d->cout,
								  packed_w + (size_t) gr * k * cout_g, cout_g, 0.0f,
								  col, k, err)) != MT_OK)
					return rc;
				if ((rc = col2im_add(&g, ni, gr, col, dx + i * in_img, err)) != MT_OK)
					return rc;
			}
		}
	}
	return MT_OK;
}

static int
cuda_conv2d_backward_weight_impl(const mt_conv_desc *d, int n, int h, int w,
							const float *x, const float *dy, float *packed_dw,
							float *scratch, mt_err *err)
{
	int			oh,
				ow,
				done,
				rc;
	int			cin_g = d->cin / d->groups;
	int			cout_g = d->cout / d->groups;
	int			k = d->kh * d->kw * cin_g;
	size_t		in_img,
				out_img;
	conv_geo	g;

	if ((rc = conv_out(d, h, w, &oh, &ow, err)) != MT_OK || (rc = pending_status(err)) != MT_OK)
		return rc;
	in_img = (size_t) h * w * d->cin;
	out_img = (size_t) oh * ow * d->cout;
	g = make_geo(d, h, w, oh, ow);
	if (n <= 0)
		return MT_OK;
	if (mt_conv_is_depthwise(d))
	{
		size_t		npos = (size_t) n * oh * ow;
		size_t		zs = (npos + 2047) / 2048;
		size_t		taps_c = (size_t) d->kh * d->kw * d->cin;
		double	   *part = NULL;
		dim3		block(32, 8);

		zs = zs > 64 ? 64 : zs;
		if (zs > 1)
		{
			mt_err		werr;

			mt_clearerr(&werr);
			part = (double *) mt_cuda_workspace(zs * taps_c * sizeof(double), &werr);
			if (part == NULL)
				zs = 1;			/* over the memory cap: one range, slower, same sums */
		}
		{
			dim3		grid(d->kh * d->kw, (d->cin + 31) / 32, (unsigned int) zs);

			k_depthwise_bwd_weight<<<grid, block>>>(g, n, x, dy, packed_dw, part);
		}
		if ((rc = launch_status("the depthwise backward-weight kernel", err)) != MT_OK || part == NULL)
			return rc;
		k_depthwise_bwd_weight_sum<<<blocks_for(taps_c), THREADS>>>(taps_c, (int) zs, part, packed_dw);
		return launch_status("the depthwise backward-weight sum", err);
	}
	if (conv_bf16() &&
		((rc = conv2d_backward_weight_bf16(d, n, &g, x, dy, packed_dw, &done, err)) != MT_OK || done))
		return rc;
	if (conv_is_pointwise(d))
		return gemm_rm(1, 0, d->cin, d->cout, n * h * w, 1.0f, x, d->cin,
					   dy, d->cout, 1.0f, packed_dw, d->cout, err);
	{
		size_t		colsz = (size_t) oh * ow * k;
		float	   *col;
		int			chunk = conv_chunk(n, colsz, scratch, &col);

		for (int i = 0; i < n; i += chunk)
		{
			int			ni = n - i < chunk ? n - i : chunk;

			for (int gr = 0; gr < d->groups; gr++)
			{
				/* dW_g [k x cout_g] += col^T [k x ni*oh*ow] * dY_g [ni*oh*ow x cout_g] */
				if ((rc = im2col(&g, ni, gr, k, x + i * in_img, col, err)) != MT_OK)
					return rc;
				if ((rc = gemm_rm(1, 0, k, cout_g, ni * oh * ow, 1.0f, col, k,
								  dy + i * out_img + (size_t) gr * cout_g, d->cout, 1.0f,
								  packed_dw + (size_t) gr * k * cout_g, cout_g, err)) != MT_OK)
					return rc;
			}
		}
	}
	return MT_OK;
}

/*
 * Profiling (mt_cuda_profile): the convolution entries' wall time, the
 * device synchronised before and after each, for the check tools'
 * breakdown of a step.  Off: no synchronisation, no cost.
 */
static int	profiling = 0;
static double prof_ms[3];

static double
prof_now(void)
{
	struct timespec ts;

	mt_cuda_note(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* return call, timed into prof_ms[slot] when profiling */
#define PROFILED(slot, call) \
	do { \
		double		t_; \
		int			rc_; \
		if (!profiling) \
			return call; \
		t_ = prof_now(); \
		rc_ = call; \
		prof_ms[slot] += prof_now() - t_; \
		return rc_; \
	} while (0)

extern "C" void
mt_cuda_profile(int on, double *conv_ms)
{
	if (conv_ms != NULL)
		memcpy(conv_ms, prof_ms, sizeof(prof_ms));
	memset(prof_ms, 0, sizeof(prof_ms));
	profiling = on;
}

static int
cuda_conv2d(const mt_conv_desc *d, int n, int h, int w, const float *x,
			const float *packed_w, const float *bias, float *y, float *scratch,
			mt_err *err)
{
	PROFILED(0, cuda_conv2d_impl(d, n, h, w, x, packed_w, bias, y, scratch, err));
}

static int
cuda_conv2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
						  const float *dy, const float *packed_w, float *dx,
						  float *scratch, mt_err *err)
{
	PROFILED(1, cuda_conv2d_backward_data_impl(d, n, h, w, dy, packed_w, dx, scratch, err));
}

static int
cuda_conv2d_backward_weight(const mt_conv_desc *d, int n, int h, int w,
							const float *x, const float *dy, float *packed_dw,
							float *scratch, mt_err *err)
{
	PROFILED(2, cuda_conv2d_backward_weight_impl(d, n, h, w, x, dy, packed_dw, scratch, err));
}

/* ------------------------------------------------------------- pooling --- */

typedef struct pool_geo
{
	int			h,
				w,
				c,
				oh,
				ow,
				kh,
				kw,
				sh,
				sw,
				pt,
				pl,
				pb,
				pr,
				include_pad;
} pool_geo;

static pool_geo
make_pool_geo(const mt_pool_desc *p, int h, int w, int c)
{
	pool_geo	g;

	g.h = h;
	g.w = w;
	g.c = c;
	g.oh = mt_out_size(h, p->kh, p->sh, 1, p->pad_t, p->pad_b);
	g.ow = mt_out_size(w, p->kw, p->sw, 1, p->pad_l, p->pad_r);
	g.kh = p->kh;
	g.kw = p->kw;
	g.sh = p->sh;
	g.sw = p->sw;
	g.pt = p->pad_t;
	g.pl = p->pad_l;
	g.pb = p->pad_b;
	g.pr = p->pad_r;
	g.include_pad = p->count_include_pad;
	return g;
}

/*
 * The window of output (oy, ox) and its divisor for average pooling
 * (0: nothing to average).
 */
__device__ __forceinline__ int
pool_count(const pool_geo &g, int oy, int ox)
{
	int			y0 = oy * g.sh - g.pt,
				x0 = ox * g.sw - g.pl;
	int			count = 0;

	if (g.include_pad)
	{
		int			y1 = y0 + g.kh,
					x1 = x0 + g.kw;

		if (y1 > g.h + g.pb)
			y1 = g.h + g.pb;
		if (x1 > g.w + g.pr)
			x1 = g.w + g.pr;
		return (y1 - y0) * (x1 - x0);
	}
	for (int ky = 0; ky < g.kh; ky++)
		for (int kx = 0; kx < g.kw; kx++)
			count += (y0 + ky >= 0 && y0 + ky < g.h && x0 + kx >= 0 && x0 + kx < g.w);
	return count;
}

__global__ void
k_max_pool(pool_geo g, int n, const float *__restrict__ x, float *__restrict__ y)
{
	size_t		total = (size_t) n * g.oh * g.ow * g.c;

	GRID_LOOP(i, total)
	{
		int			j = (int) (i % g.c);
		size_t		p = i / g.c;
		int			ox = (int) (p % g.ow);
		int			oy = (int) ((p / g.ow) % g.oh);
		size_t		img = p / ((size_t) g.ow * g.oh);
		float		best = -FLT_MAX;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			iy = oy * g.sh - g.pt + ky;

			if (iy < 0 || iy >= g.h)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			ix = ox * g.sw - g.pl + kx;
				float		v;

				if (ix < 0 || ix >= g.w)
					continue;
				v = x[((img * g.h + iy) * g.w + ix) * g.c + j];
				best = v > best ? v : best;
			}
		}
		y[i] = best;
	}
}

/*
 * The outputs whose windows hold input row iy (column ix): oy in [*lo, *hi]
 * (empty when *lo > *hi).
 */
__device__ static inline void
pool_outputs_of(int i, int pad, int k, int stride, int nout, int *lo, int *hi)
{
	int			top = i + pad - k + 1;	/* oy * stride >= top */

	*lo = top <= 0 ? 0 : (top + stride - 1) / stride;
	*hi = (i + pad) / stride;
	if (*hi > nout - 1)
		*hi = nout - 1;
}

/* Input element i (NHWC) of a pooling backward pass and the windows that hold it. */
typedef struct pool_elem
{
	int			j,				/* channel */
				oy0,
				oy1,
				ox0,
				ox1;			/* outputs [oy0, oy1] x [ox0, ox1] */
	size_t		img;
} pool_elem;

__device__ static inline pool_elem
pool_elem_of(const pool_geo &g, size_t i)
{
	pool_elem	e;
	size_t		q = i / g.c;
	int			ix = (int) (q % g.w);
	int			iy = (int) ((q / g.w) % g.h);

	e.j = (int) (i % g.c);
	e.img = q / ((size_t) g.w * g.h);
	pool_outputs_of(iy, g.pt, g.kh, g.sh, g.oh, &e.oy0, &e.oy1);
	pool_outputs_of(ix, g.pl, g.kw, g.sw, g.ow, &e.ox0, &e.ox1);
	return e;
}

/*
 * Index in x of the first maximum (in scan order) of output (oy, ox)'s
 * window in channel j of image img, as the CPU's backward routes it;
 * (size_t) -1 when the window holds no input.
 */
__device__ static inline size_t
pool_window_argmax(const pool_geo &g, const float *__restrict__ x, size_t img, int oy, int ox, int j)
{
	float		best = -FLT_MAX;
	size_t		arg = (size_t) -1;

	for (int ky = 0; ky < g.kh; ky++)
	{
		int			iy = oy * g.sh - g.pt + ky;

		if (iy < 0 || iy >= g.h)
			continue;
		for (int kx = 0; kx < g.kw; kx++)
		{
			int			ix = ox * g.sw - g.pl + kx;
			size_t		at;

			if (ix < 0 || ix >= g.w)
				continue;
			at = ((img * g.h + iy) * g.w + ix) * g.c + j;
			if (x[at] > best || arg == (size_t) -1)
			{
				best = x[at];
				arg = at;
			}
		}
	}
	return arg;
}

/*
 * dx += dy routed to each window's first maximum, gathered: one thread per
 * input element sums, in output order, the gradients of the windows whose
 * maximum it is (the windows' argmax found again as the forward pass finds
 * it).  No atomics, so overlapping windows (ResNet's 3x3 stride 2) add up in
 * the same order every run.
 */
__global__ void
k_max_pool_bwd(pool_geo g, int n, const float *__restrict__ x, const float *__restrict__ dy,
			   float *__restrict__ dx)
{
	size_t		total = (size_t) n * g.h * g.w * g.c;

	GRID_LOOP(i, total)
	{
		pool_elem	e = pool_elem_of(g, i);
		float		s = 0.0f;

		for (int oy = e.oy0; oy <= e.oy1; oy++)
			for (int ox = e.ox0; ox <= e.ox1; ox++)
				if (pool_window_argmax(g, x, e.img, oy, ox, e.j) == i)
					s += dy[((e.img * g.oh + oy) * g.ow + ox) * g.c + e.j];
		dx[i] += s;
	}
}

__global__ void
k_avg_pool(pool_geo g, int n, const float *__restrict__ x, float *__restrict__ y)
{
	size_t		total = (size_t) n * g.oh * g.ow * g.c;

	GRID_LOOP(i, total)
	{
		int			j = (int) (i % g.c);
		size_t		p = i / g.c;
		int			ox = (int) (p % g.ow);
		int			oy = (int) ((p / g.ow) % g.oh);
		size_t		img = p / ((size_t) g.ow * g.oh);
		float		s = 0.0f;
		int			count;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			iy = oy * g.sh - g.pt + ky;

			if (iy < 0 || iy >= g.h)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			ix = ox * g.sw - g.pl + kx;

				if (ix < 0 || ix >= g.w)
					continue;
				s += x[((img * g.h + iy) * g.w + ix) * g.c + j];
			}
		}
		count = pool_count(g, oy, ox);
		y[i] = count > 0 ? s / (float) count : s;
	}
}

/*
 * dx += dy / divisor of each window holding the element, gathered per input
 * element in output order (no atomics: the same sum every run).
 */
__global__ void
k_avg_pool_bwd(pool_geo g, int n, const float *__restrict__ dy, float *__restrict__ dx)
{
	size_t		total = (size_t) n * g.h * g.w * g.c;

	GRID_LOOP(i, total)
	{
		pool_elem	e = pool_elem_of(g, i);
		float		s = 0.0f;

		for (int oy = e.oy0; oy <= e.oy1; oy++)
			for (int ox = e.ox0; ox <= e.ox1; ox++)
			{
				int			count = pool_count(g, oy, ox);

				if (count > 0)
					s += dy[((e.img * g.oh + oy) * g.ow + ox) * g.c + e.j] * (1.0f / (float) count);
			}
		dx[i] += s;
	}
}

static void
cuda_max_pool2d(const mt_pool_desc *p, int n, int h, int w, int c, const float *x, float *y)
{
	pool_geo	g = make_pool_geo(p, h, w, c);
	size_t		total = (size_t) n * g.oh * g.ow * c;

	if (total == 0 || mt_cuda_failed())
		return;
	k_max_pool<<<blocks_for(total), THREADS>>>(g, n, x, y);
	launched("the max-pool kernel");
}

static void
cuda_avg_pool2d(const mt_pool_desc *p, int n, int h, int w, int c, const float *x, float *y)
{
	pool_geo	g = make_pool_geo(p, h, w, c);
	size_t		total = (size_t) n * g.oh * g.ow * c;

	if (total == 0 || mt_cuda_failed())
		return;
	k_avg_pool<<<blocks_for(total), THREADS>>>(g, n, x, y);
	launched("the average-pool kernel");
}

static void
cuda_max_pool2d_backward(const mt_pool_desc *p, int n, int h, int w, int c,
						 const float *x, const float *y, const float *dy, float *dx)
{
	(void) y;					/* a thread per input element searches its windows */
	pool_geo	g = make_pool_geo(p, h, w, c);
	size_t		total = (size_t) n * h * w * c;	/* a thread per input element */

	if (total == 0 || g.oh <= 0 || g.ow <= 0 || mt_cuda_failed())
		return;
	k_max_pool_bwd<<<blocks_for(total), THREADS>>>(g, n, x, dy, dx);
	launched("the max-pool backward kernel");
}

static void
cuda_avg_pool2d_backward(const mt_pool_desc *p, int n, int h, int w, int c,
						 const float *dy, float *dx)
{
	pool_geo	g = make_pool_geo(p, h, w, c);
	size_t		total = (size_t) n * h * w * c;	/* a thread per input element */

	if (total == 0 || g.oh <= 0 || g.ow <= 0 || mt_cuda_failed())
		return;
	k_avg_pool_bwd<<<blocks_for(total), THREADS>>>(g, n, dy, dx);
	launched("the average-pool backward kernel");
}

/* one thread per (image, channel), coalesced over channels */
__global__ void
k_global_avg_pool(int n, size_t hw, int c, const float *__restrict__ x, float *__restrict__ y)
{
	GRID_LOOP(i, (size_t) n * c)
	{
		size_t		img = i / c;
		int			j = (int) (i % c);
		const float *xi = x + img * hw * c + j;
		float		s = 0.0f;

		for (size_t p = 0; p < hw; p++)
			s += xi[p * c];
		y[i] = s / (float) hw;
	}
}

__global__ void
k_global_avg_pool_bwd(int n, size_t hw, int c, const float *__restrict__ dy,
					  float *__restrict__ dx)
{
	float		inv = 1.0f / (float) hw;

	GRID_LOOP(i, (size_t) n * hw * c)
	{
		size_t		img = i / (hw * c);
		int			j = (int) (i % c);

		dx[i] += dy[img * c + j] * inv;
	}
}

static void
cuda_global_avg_pool(int n, int h, int w, int c, const float *x, float *y)
{
	size_t		total = (size_t) n * c;

	if (total == 0 || mt_cuda_failed())
		return;
	k_global_avg_pool<<<blocks_for(total), THREADS>>>(n, (size_t) h * w, c, x, y);
	launched("the global average-pool kernel");
}

static void
cuda_global_avg_pool_backward(int n, int h, int w, int c, const float *dy, float *dx)
{
	size_t		total = (size_t) n * h * w * c;

	if (total == 0 || mt_cuda_failed())
		return;
	k_global_avg_pool_bwd<<<blocks_for(total), THREADS>>>(n, (size_t) h * w, c, dy, dx);
	launched("the global average-pool backward kernel");
}

/* ---------------------------------------------------------- elementwise --- */

__global__ void
k_channel_affine(size_t rows, int c, const float *__restrict__ x, const float *__restrict__ scale,
				 const float *__restrict__ shift, mt_act act, float *__restrict__ y)
{
	GRID_LOOP(i, rows * (size_t) c)
	{
		int			j = (int) (i % c);

		y[i] = apply_act(x[i] * scale[j] + shift[j], act);
	}
}

__global__ void
k_add_act(size_t len, const float *a, const float *b, mt_act act, float *y)
{
	GRID_LOOP(i, len)
		y[i] = apply_act(a[i] + b[i], act);
}

__global__ void
k_act(size_t len, const float *x, mt_act act, float *y)
{
	GRID_LOOP(i, len)
		y[i] = apply_act(x[i], act);
}

__global__ void
k_act_bwd(size_t len, const float *y, const float *dy, mt_act act, float *dx)
{
	GRID_LOOP(i, len)
	{
		float		v = y[i];
		int			pass = act == MT_ACT_RELU ? v > 0.0f :
			act == MT_ACT_RELU6 ? (v > 0.0f && v < 6.0f) : 1;

		/* SiLU is differentiated from its input (act_backward_input) */
		if (act == MT_ACT_SIGMOID)
			dx[i] = dy[i] * (v * (1.0f - v));
		else
			dx[i] = pass ? dy[i] : 0.0f;
	}
}

/* dx = dy * act'(x) from the activation's input */
__global__ void
k_act_bwd_input(size_t len, const float *x, const float *dy, mt_act act, float *dx)
{
	GRID_LOOP(i, len)
	{
		float		v = x[i],
					d,
					s;

		switch (act)
		{
			case MT_ACT_RELU:
				d = v > 0.0f ? 1.0f : 0.0f;
				break;
			case MT_ACT_RELU6:
				d = (v > 0.0f && v < 6.0f) ? 1.0f : 0.0f;
				break;
			case MT_ACT_SILU:
				s = 1.0f / (1.0f + expf(-v));
				d = s * (1.0f + v * (1.0f - s));
				break;
			case MT_ACT_SIGMOID:
				s = 1.0f / (1.0f + expf(-v));
				d = s * (1.0f - s);
				break;
			default:
				d = 1.0f;
				break;
		}
		dx[i] = dy[i] * d;
	}
}

/* y[r] = a[r] (ca values) then b[r] (cb values) */
__global__ void
k_concat(size_t rows, int ca, int cb, const float *__restrict__ a, const float *__restrict__ b,
		 float *__restrict__ y)
{
	size_t		c = (size_t) ca + cb;

	GRID_LOOP(i, rows * c)
	{
		size_t		r = i / c,
					j = i % c;

		y[i] = j < (size_t) ca ? a[r * ca + j] : b[r * cb + (j - ca)];
	}
}

__global__ void
k_concat_bwd(size_t rows, int ca, int cb, const float *__restrict__ dy, float *__restrict__ da,
			 float *__restrict__ db)
{
	size_t		c = (size_t) ca + cb;

	GRID_LOOP(i, rows * c)
	{
		size_t		r = i / c,
					j = i % c;

		if (j < (size_t) ca)
		{
			if (da != NULL)
				da[r * ca + j] += dy[i];
		}
		else if (db != NULL)
			db[r * cb + (j - ca)] += dy[i];
	}
}

/* y[i, p, c] = x[i, p, c] * s[i, c] */
__global__ void
k_scale_channels(int n, size_t hw, int c, const float *__restrict__ x, const float *__restrict__ s,
				 float *__restrict__ y)
{
	GRID_LOOP(i, (size_t) n * hw * c)
		y[i] = x[i] * s[(i / (hw * c)) * c + i % c];
}

__global__ void
k_scale_channels_bwd_x(int n, size_t hw, int c, const float *__restrict__ s,
					   const float *__restrict__ dy, float *__restrict__ dx)
{
	GRID_LOOP(i, (size_t) n * hw * c)
		dx[i] += dy[i] * s[(i / (hw * c)) * c + i % c];
}

/* ds[i, c] += sum over positions of dy * x, in double; one thread per (i, c) */
__global__ void
k_scale_channels_bwd_s(int n, size_t hw, int c, const float *__restrict__ x,
					   const float *__restrict__ dy, float *__restrict__ ds)
{
	GRID_LOOP(k, (size_t) n * c)
	{
		size_t		img = k / c;
		int			j = (int) (k % c);
		double		acc = 0.0;

		for (size_t p = 0; p < hw; p++)
		{
			size_t		o = (img * hw + p) * c + j;

			acc += (double) dy[o] * x[o];
		}
		ds[k] += (float) acc;
	}
}

__global__ void
k_accumulate(size_t len, const float *src, float *dst)
{
	GRID_LOOP(i, len)
		dst[i] += src[i];
}

__global__ void
k_ema_update(size_t len, float *avg, const float *__restrict__ p, float d, float e)
{
	GRID_LOOP(i, len)
		avg[i] = __fadd_rn(__fmul_rn(d, avg[i]), __fmul_rn(e, p[i]));
}

__global__ void
k_swap(size_t len, float *a, float *b)
{
	GRID_LOOP(i, len)
	{
		float		t = a[i];

		a[i] = b[i];
		b[i] = t;
	}
}

static void
cuda_channel_affine(size_t rows, int c, const float *x, const float *scale,
					const float *shift, mt_act act, float *y)
{
	if (rows * (size_t) c == 0 || mt_cuda_failed())
		return;
	k_channel_affine<<<blocks_for(rows * c), THREADS>>>(rows, c, x, scale, shift, act, y);
	launched("the channel affine kernel");
}

static void
cuda_add_act(size_t len, const float *a, const float *b, mt_act act, float *y)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_add_act<<<blocks_for(len), THREADS>>>(len, a, b, act, y);
	launched("the add kernel");
}

static void
cuda_act(size_t len, const float *x, mt_act act, float *y)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_act<<<blocks_for(len), THREADS>>>(len, x, act, y);
	launched("the activation kernel");
}

static void
cuda_act_backward(size_t len, const float *y, const float *dy, mt_act act, float *dx)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_act_bwd<<<blocks_for(len), THREADS>>>(len, y, dy, act, dx);
	launched("the activation backward kernel");
}

static void
cuda_act_backward_input(size_t len, const float *x, const float *dy, mt_act act, float *dx)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_act_bwd_input<<<blocks_for(len), THREADS>>>(len, x, dy, act, dx);
	launched("the activation backward kernel");
}

static void
cuda_concat(size_t rows, int ca, int cb, const float *a, const float *b, float *y)
{
	size_t		len = rows * ((size_t) ca + cb);

	if (len == 0 || mt_cuda_failed())
		return;
	k_concat<<<blocks_for(len), THREADS>>>(rows, ca, cb, a, b, y);
	launched("the concat kernel");
}

static void
cuda_concat_backward(size_t rows, int ca, int cb, const float *dy, float *da, float *db)
{
	size_t		len = rows * ((size_t) ca + cb);

	if (len == 0 || (da == NULL && db == NULL) || mt_cuda_failed())
		return;
	k_concat_bwd<<<blocks_for(len), THREADS>>>(rows, ca, cb, dy, da, db);
	launched("the concat backward kernel");
}

static void
cuda_scale_channels(int n, size_t hw, int c, const float *x, const float *s, float *y)
{
	size_t		len = (size_t) n * hw * c;

	if (len == 0 || mt_cuda_failed())
		return;
	k_scale_channels<<<blocks_for(len), THREADS>>>(n, hw, c, x, s, y);
	launched("the channel scaling kernel");
}

static void
cuda_scale_channels_backward(int n, size_t hw, int c, const float *x, const float *s,
							 const float *dy, float *dx, float *ds)
{
	size_t		len = (size_t) n * hw * c;

	if (len == 0 || mt_cuda_failed())
		return;
	if (dx != NULL)
	{
		k_scale_channels_bwd_x<<<blocks_for(len), THREADS>>>(n, hw, c, s, dy, dx);
		launched("the channel scaling backward kernel");
	}
	if (ds != NULL)
	{
		k_scale_channels_bwd_s<<<blocks_for((size_t) n * c), THREADS>>>(n, hw, c, x, dy, ds);
		launched("the channel scaling backward kernel");
	}
}

static void
cuda_accumulate(size_t len, const float *src, float *dst)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_accumulate<<<blocks_for(len), THREADS>>>(len, src, dst);
	launched("the accumulate kernel");
}

/* avg = d * avg + e * p, rounded as the host's loop (no fused multiply-add) */
static void
cuda_ema_update(size_t len, float *avg, const float *p, float d, float e)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_ema_update<<<blocks_for(len), THREADS>>>(len, avg, p, d, e);
	launched("the moving-average kernel");
}

static void
cuda_swap(size_t len, float *a, float *b)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_swap<<<blocks_for(len), THREADS>>>(len, a, b);
	launched("the swap kernel");
}

/* ------------------------------------------------------ linear, softmax --- */

static void
cuda_linear(int n, int in, int out, const float *x, const float *w, const float *b, float *y)
{
	if (n <= 0 || out <= 0 || mt_cuda_failed())
		return;
	gemm_rm_async(0, 1, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
	if (b != NULL && !mt_cuda_failed())
	{
		k_bias_act<<<blocks_for((size_t) n * out), THREADS>>>((size_t) n, out, b, MT_ACT_NONE, y);
		launched("the bias kernel");
	}
}

/* one warp per row: max, sum of exponentials (double), normalise; x may be y */
__global__ void
k_softmax(int n, int c, const float *x, float *y)
{
	int			row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int			lane = threadIdx.x % 32;
	const float *in;
	float	   *out;
	float		mx = -FLT_MAX;
	double		sum = 0.0;

	if (row >= n)
		return;
	in = x + (size_t) row * c;
	out = y + (size_t) row * c;
	for (int j = lane; j < c; j += 32)
		mx = in[j] > mx ? in[j] : mx;
	for (int o = 16; o > 0; o /= 2)
	{
		float		v = __shfl_xor_sync(0xffffffffu, mx, o);

		mx = v > mx ? v : mx;
	}
	for (int j = lane; j < c; j += 32)
	{
		float		e = expf(in[j] - mx);

		out[j] = e;
		sum += e;
	}
	for (int o = 16; o > 0; o /= 2)
		sum += __shfl_xor_sync(0xffffffffu, sum, o);
	for (int j = lane; j < c; j += 32)
		out[j] = (float) (out[j] / sum);
}

static void
cuda_softmax(int n, int c, const float *x, float *y)
{
	if (n <= 0 || c <= 0 || mt_cuda_failed())
		return;
	k_softmax<<<(n + 7) / 8, 256>>>(n, c, x, y);
	launched("the softmax kernel");
}

/* ------------------------------------------------- per-channel reductions --- */

/*
 * Column sums over a rows x c matrix in double: grid (ceil(c/32), chunks),
 * block 32 x 8; block (bx, by) sums rows of chunk by for channels
 * bx*32 .. bx*32+31 into part0/part1[by * c + j].  Modes:
 *   0: part0 = sum a
 *   1: part0 = sum (a - mean)^2
 *   2: part0 = sum a, part1 = sum a * (b - mean) * invstd   (a = dy, b = x)
 */
#define RED_CHUNKS_MAX 128

__global__ void
k_colsum(size_t rows, int c, int mode, const float *__restrict__ a, const float *__restrict__ b,
		 const float *__restrict__ mean, const float *__restrict__ invstd,
		 double *__restrict__ part0, double *__restrict__ part1)
{
	__shared__ double s0[8][32];
	__shared__ double s1[8][32];
	int			j = blockIdx.x * 32 + threadIdx.x;
	size_t		per = (rows + gridDim.y - 1) / gridDim.y;
	size_t		r0 = (size_t) blockIdx.y * per;
	size_t		r1 = r0 + per < rows ? r0 + per : rows;
	double		acc0 = 0.0,
				acc1 = 0.0;

	if (j < c)
	{
		float		mu = mode >= 1 ? mean[j] : 0.0f;
		float		is = mode == 2 ? invstd[j] : 0.0f;

		for (size_t r = r0 + threadIdx.y; r < r1; r += 8)
		{
			float		v = a[r * c + j];

			if (mode == 0)
				acc0 += v;
			else if (mode == 1)
			{
				double		dv = (double) v - mu;

				acc0 += dv * dv;
			}
			else
			{
				acc0 += v;
				acc1 += (double) v * ((b[r * c + j] - mu) * is);
			}
		}
	}
	s0[threadIdx.y][threadIdx.x] = acc0;
	s1[threadIdx.y][threadIdx.x] = acc1;
	__syncthreads();
	if (threadIdx.y == 0 && j < c)
	{
		for (int l = 1; l < 8; l++)
		{
			acc0 += s0[l][threadIdx.x];
			acc1 += s1[l][threadIdx.x];
		}
		part0[(size_t) blockIdx.y * c + j] = acc0;
		if (mode == 2)
			part1[(size_t) blockIdx.y * c + j] = acc1;
	}
}

/* Finish column sums: total of the chunks, in a fixed order. */
__device__ __forceinline__ double
chunk_total(const double *part, int chunks, int c, int j)
{
	double		s = 0.0;

	for (int k = 0; k < chunks; k++)
		s += part[(size_t) k * c + j];
	return s;
}

__global__ void
k_bias_finish(int c, int chunks, const double *part, float *db)
{
	GRID_LOOP(j, (size_t) c)
		db[j] += (float) chunk_total(part, chunks, c, (int) j);
}

__global__ void
k_mean_finish(size_t rows, int c, int chunks, const double *part, float *mean)
{
	GRID_LOOP(j, (size_t) c)
		mean[j] = rows > 0 ? (float) (chunk_total(part, chunks, c, (int) j) / (double) rows) : 0.0f;
}

/* coef[0..c) = a, coef[c..2c) = b of dx = k (dy - a - xhat b); dbeta/dgamma added */
__global__ void
k_bn_finish(size_t rows, int c, int chunks, const double *part0, const double *part1,
			float *dgamma, float *dbeta, float *coef)
{
	GRID_LOOP(j, (size_t) c)
	{
		double		sdy = chunk_total(part0, chunks, c, (int) j);
		double		sdyx = chunk_total(part1, chunks, c, (int) j);

		if (dbeta != NULL)
			dbeta[j] += (float) sdy;
		if (dgamma != NULL)
			dgamma[j] += (float) sdyx;
		coef[j] = rows > 0 ? (float) (sdy / (double) rows) : 0.0f;
		coef[c + j] = rows > 0 ? (float) (sdyx / (double) rows) : 0.0f;
	}
}

__global__ void
k_bn_dx(size_t rows, int c, const float *__restrict__ x, const float *__restrict__ dy,
		const float *__restrict__ mean, const float *__restrict__ invstd,
		const float *__restrict__ gamma, const float *__restrict__ coef, float *__restrict__ dx)
{
	GRID_LOOP(i, rows * (size_t) c)
	{
		int			j = (int) (i % c);
		float		xhat = (x[i] - mean[j]) * invstd[j];

		dx[i] += gamma[j] * invstd[j] * (dy[i] - coef[j] - xhat * coef[c + j]);
	}
}

/* chunks of rows for a reduction: enough blocks to fill the device */
static int
red_chunks(size_t rows, int c)
{
	size_t		colblocks = ((size_t) c + 31) / 32;
	size_t		want = (264 * 4 + colblocks - 1) / colblocks;	/* ~4 blocks per SM */
	size_t		byrows = (rows + 255) / 256;	/* at least 256 rows a chunk */

	if (want > byrows)
		want = byrows;
	if (want > RED_CHUNKS_MAX)
		want = RED_CHUNKS_MAX;
	return want < 1 ? 1 : (int) want;
}

/* workspace: 2 * chunks * c doubles for the partial sums, then 2 * c floats */
static double *
red_workspace(int chunks, int c)
{
	mt_err		err;
	void	   *ws;

	mt_clearerr(&err);
	ws = mt_cuda_workspace(((size_t) 2 * chunks * c) * sizeof(double) + (size_t) 2 * c * sizeof(float), &err);
	if (ws == NULL)
		mt_cuda_note_err(&err);
	return (double *) ws;
}

static void
cuda_bias_backward(size_t rows, int c, const float *dy, float *db)
{
	int			chunks;
	double	   *part;

	if (c <= 0 || mt_cuda_failed())
		return;
	chunks = red_chunks(rows, c);
	if ((part = red_workspace(chunks, c)) == NULL)
		return;
	k_colsum<<<dim3((c + 31) / 32, chunks), dim3(32, 8)>>>(rows, c, 0, dy, NULL, NULL, NULL, part, NULL);
	launched("the column-sum kernel");
	k_bias_finish<<<blocks_for(c), THREADS>>>(c, chunks, part, db);
	launched("the bias-gradient kernel");
}

static void
cuda_channel_stats(size_t rows, int c, const float *x, float *mean, float *var)
{
	int			chunks;
	double	   *part;

	if (c <= 0 || mt_cuda_failed())
		return;
	chunks = red_chunks(rows, c);
	if ((part = red_workspace(chunks, c)) == NULL)
		return;
	k_colsum<<<dim3((c + 31) / 32, chunks), dim3(32, 8)>>>(rows, c, 0, x, NULL, NULL, NULL, part, NULL);
	launched("the column-sum kernel");
	k_mean_finish<<<blocks_for(c), THREADS>>>(rows, c, chunks, part, mean);
	launched("the mean kernel");
	k_colsum<<<dim3((c + 31) / 32, chunks), dim3(32, 8)>>>(rows, c, 1, x, NULL, mean, NULL, part, NULL);
	launched("the column-sum kernel");
	k_mean_finish<<<blocks_for(c), THREADS>>>(rows, c, chunks, part, var);
	launched("the variance kernel");
}

static void
cuda_batch_norm_backward(size_t rows, int c, const float *x, const float *dy,
						 const float *mean, const float *invstd, const float *gamma,
						 float *dx, float *dgamma, float *dbeta)
{
	int			chunks;
	double	   *part;
	float	   *coef;

	if (c <= 0 || mt_cuda_failed())
		return;
	chunks = red_chunks(rows, c);
	if ((part = red_workspace(chunks, c)) == NULL)
		return;
	coef = (float *) (part + (size_t) 2 * chunks * c);
	k_colsum<<<dim3((c + 31) / 32, chunks), dim3(32, 8)>>>(rows, c, 2, dy, x, mean, invstd,
														   part, part + (size_t) chunks * c);
	launched("the batch-norm reduction kernel");
	k_bn_finish<<<blocks_for(c), THREADS>>>(rows, c, chunks, part, part + (size_t) chunks * c,
											dgamma, dbeta, coef);
	launched("the batch-norm reduction kernel");
	if (dx != NULL && rows > 0)
	{
		k_bn_dx<<<blocks_for(rows * c), THREADS>>>(rows, c, x, dy, mean, invstd, gamma, coef, dx);
		launched("the batch-norm backward kernel");
	}
}

/* one thread per channel: the CPU's double arithmetic (ops_cpu_train.c) */
__global__ void
k_bn_train_coeffs(int c, const float *g, const float *beta, float *rm, float *rv, float eps,
				  float mom, double unbias, float *mean, float *var, float *scale, float *shift)
{
	GRID_LOOP(j, (size_t) c)
	{
		if (mean != NULL)
		{
			double		is = 1.0 / sqrt((double) var[j] + eps);

			scale[j] = (float) (g[j] * is);
			shift[j] = (float) (beta[j] - (double) mean[j] * g[j] * is);
			rm[j] = __fadd_rn(__fmul_rn(1.0f - mom, rm[j]), __fmul_rn(mom, mean[j]));
			rv[j] = __fadd_rn(__fmul_rn(1.0f - mom, rv[j]), __fmul_rn(mom, (float) (var[j] * unbias)));
			var[j] = (float) is;
		}
		else
		{
			double		s = (double) g[j] / sqrt((double) rv[j] + eps);

			scale[j] = (float) s;
			if (shift != NULL)
				shift[j] = (float) ((double) beta[j] - (double) rm[j] * s);
		}
	}
}

static void
cuda_bn_train_coeffs(int c, const float *g, const float *beta, float *rm, float *rv, float eps,
					 float mom, double unbias, float *mean, float *var, float *scale, float *shift)
{
	if (c <= 0 || mt_cuda_failed())
		return;
	k_bn_train_coeffs<<<blocks_for(c), THREADS>>>(c, g, beta, rm, rv, eps, mom, unbias, mean, var,
												 scale, shift);
	launched("the batch-norm coefficient kernel");
}

static void
cuda_linear_backward(int n, int in, int out, const float *x, const float *w,
					 const float *dy, float *dx, float *dw, float *db)
{
	if (mt_cuda_failed())
		return;
	if (dx != NULL)
		gemm_rm_async(0, 0, n, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
	if (dw != NULL)
		gemm_rm_async(1, 0, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
	if (db != NULL)
		cuda_bias_backward((size_t) n, out, dy, db);
}

/* ----------------------------------------------------------- optimizers --- */

__global__ void
k_sgd(size_t len, float *p, const float *g, float *buf, float lr, float momentum,
	  float weight_decay, int nesterov, int first)
{
	GRID_LOOP(i, len)
	{
		float		d = g[i];

		if (weight_decay != 0.0f)
			d = __fadd_rn(d, __fmul_rn(weight_decay, p[i]));
		if (buf != NULL)
		{
			buf[i] = first ? d : __fadd_rn(__fmul_rn(momentum, buf[i]), d);
			d = nesterov ? __fadd_rn(d, __fmul_rn(momentum, buf[i])) : buf[i];
		}
		p[i] = __fadd_rn(p[i], __fmul_rn(-lr, d));
	}
}

__global__ void
k_adam(size_t len, float *p, const float *g, float *m1, float *m2, float beta1,
	   float beta2, float eps, float weight_decay, int decoupled, float step_size,
	   float bc2_sqrt, float shrink)
{
	GRID_LOOP(i, len)
	{
		float		gi = g[i];
		float		denom;

		if (decoupled)
			p[i] = __fmul_rn(p[i], shrink);
		else if (weight_decay != 0.0f)
			gi = __fadd_rn(gi, __fmul_rn(weight_decay, p[i]));
		m1[i] = __fadd_rn(__fmul_rn(m1[i], beta1), __fmul_rn(gi, 1.0f - beta1));
		m2[i] = __fadd_rn(__fmul_rn(m2[i], beta2), __fmul_rn(__fmul_rn(gi, gi), 1.0f - beta2));
		denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(m2[i]), bc2_sqrt), eps);
		p[i] = __fadd_rn(p[i], __fmul_rn(-step_size, __fdiv_rn(m1[i], denom)));
	}
}

static void
cuda_sgd_update(size_t len, float *p, const float *g, float *buf, float lr,
				float momentum, float weight_decay, int nesterov, int first)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_sgd<<<blocks_for(len), THREADS>>>(len, p, g, buf, lr, momentum, weight_decay, nesterov, first);
	launched("the SGD kernel");
}

static void
cuda_adam_update(size_t len, float *p, const float *g, float *m1, float *m2,
				 float lr, float beta1, float beta2, float eps, float weight_decay,
				 int decoupled, int64_t step)
{
	/* the step-dependent scalars exactly as the CPU backend computes them */
	double		bc1 = 1.0 - pow((double) beta1, (double) step);
	double		bc2 = 1.0 - pow((double) beta2, (double) step);
	float		step_size = (float) ((double) lr / bc1);
	float		bc2_sqrt = (float) sqrt(bc2);
	float		shrink = (float) (1.0 - (double) lr * weight_decay);

	if (len == 0 || mt_cuda_failed())
		return;
	k_adam<<<blocks_for(len), THREADS>>>(len, p, g, m1, m2, beta1, beta2, eps, weight_decay,
										 decoupled, step_size, bc2_sqrt, shrink);
	launched("the Adam kernel");
}

/* ---------------------------------------------------------- transformer --- */

/* warp sum of a double */
__device__ __forceinline__ double
warp_sum(double v)
{
	for (int o = 16; o > 0; o /= 2)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* one warp per row: mean and 1/sqrt(var + eps) of x's row, in double */
__device__ __forceinline__ void
row_stats(const float *xr, int c, float eps, int lane, double *mean, double *rstd)
{
	double		s = 0.0,
				v = 0.0,
				mu;

	for (int j = lane; j < c; j += 32)
		s += xr[j];
	mu = warp_sum(s) / c;
	for (int j = lane; j < c; j += 32)
		v += ((double) xr[j] - mu) * ((double) xr[j] - mu);
	*mean = mu;
	*rstd = 1.0 / sqrt(warp_sum(v) / c + eps);
}

__global__ void
k_layer_norm(size_t rows, int c, const float *__restrict__ x, const float *__restrict__ gamma,
			 const float *__restrict__ beta, float eps, float *__restrict__ y)
{
	size_t		row = (size_t) blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int			lane = threadIdx.x % 32;
	double		mean,
				rstd;
	float		rs;

	if (row >= rows)
		return;
	row_stats(x + row * c, c, eps, lane, &mean, &rstd);
	rs = (float) rstd;
	for (int j = lane; j < c; j += 32)
		y[row * c + j] = ((float) (x[row * c + j] - mean)) * rs * gamma[j] + beta[j];
}

/*
 * layer norm backward, one warp per row: dx (may be NULL) and the row's mean
 * and rstd for the column sums of dgamma
 */
__global__ void
k_layer_norm_bwd_rows(size_t rows, int c, const float *__restrict__ x, const float *__restrict__ dy,
					  const float *__restrict__ gamma, float eps, float *__restrict__ dx,
					  double *__restrict__ stats)
{
	size_t		row = (size_t) blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int			lane = threadIdx.x % 32;
	const float *xr,
			   *dyr;
	double		mean,
				rstd,
				sg = 0.0,
				sgx = 0.0;

	if (row >= rows)
		return;
	xr = x + row * c;
	dyr = dy + row * c;
	row_stats(xr, c, eps, lane, &mean, &rstd);
	if (lane == 0)
	{
		stats[2 * row] = mean;
		stats[2 * row + 1] = rstd;
	}
	if (dx == NULL)
		return;
	for (int j = lane; j < c; j += 32)
	{
		double		xh = ((double) xr[j] - mean) * rstd;
		double		g = (double) dyr[j] * gamma[j];

		sg += g;
		sgx += g * xh;
	}
	sg = warp_sum(sg) / c;
	sgx = warp_sum(sgx) / c;
	for (int j = lane; j < c; j += 32)
	{
		double		xh = ((double) xr[j] - mean) * rstd;
		double		g = (double) dyr[j] * gamma[j];

		dx[row * c + j] += (float) (rstd * (g - sg - xh * sgx));
	}
}

/* column sums of dy and dy * xhat with per-row statistics (as k_colsum) */
__global__ void
k_ln_colsum(size_t rows, int c, const float *__restrict__ x, const float *__restrict__ dy,
			const double *__restrict__ stats, double *__restrict__ part0, double *__restrict__ part1)
{
	__shared__ double s0[8][32];
	__shared__ double s1[8][32];
	int			j = blockIdx.x * 32 + threadIdx.x;
	size_t		per = (rows + gridDim.y - 1) / gridDim.y;
	size_t		r0 = (size_t) blockIdx.y * per;
	size_t		r1 = r0 + per < rows ? r0 + per : rows;
	double		acc0 = 0.0,
				acc1 = 0.0;

	if (j < c)
		for (size_t r = r0 + threadIdx.y; r < r1; r += 8)
		{
			double		g = dy[r * c + j];

			acc0 += g;
			acc1 += g * (((double) x[r * c + j] - stats[2 * r]) * stats[2 * r + 1]);
		}
	s0[threadIdx.y][threadIdx.x] = acc0;
	s1[threadIdx.y][threadIdx.x] = acc1;
	__syncthreads();
	if (threadIdx.y == 0 && j < c)
	{
		for (int l = 1; l < 8; l++)
		{
			acc0 += s0[l][threadIdx.x];
			acc1 += s1[l][threadIdx.x];
		}
		part0[(size_t) blockIdx.y * c + j] = acc0;
		part1[(size_t) blockIdx.y * c + j] = acc1;
	}
}

static void
cuda_layer_norm(size_t rows, int c, const float *x, const float *gamma, const float *beta,
				float eps, float *y)
{
	if (rows == 0 || c <= 0 || mt_cuda_failed())
		return;
	k_layer_norm<<<(unsigned int) ((rows + 7) / 8), 256>>>(rows, c, x, gamma, beta, eps, y);
	launched("the layer-norm kernel");
}

static void
cuda_layer_norm_backward(size_t rows, int c, const float *x, const float *dy,
						 const float *gamma, float eps, float *dx, float *dgamma, float *dbeta)
{
	int			chunks;
	double	   *part,
			   *stats;
	mt_err		err;

	if (rows == 0 || c <= 0 || mt_cuda_failed())
		return;
	chunks = red_chunks(rows, c);
	mt_clearerr(&err);
	part = (double *) mt_cuda_workspace(((size_t) 2 * chunks * c + 2 * rows) * sizeof(double), &err);
	if (part == NULL)
	{
		mt_cuda_note_err(&err);
		return;
	}
	stats = part + (size_t) 2 * chunks * c;
	k_layer_norm_bwd_rows<<<(unsigned int) ((rows + 7) / 8), 256>>>(rows, c, x, dy, gamma, eps, dx, stats);
	launched("the layer-norm backward kernel");
	if (dgamma == NULL && dbeta == NULL)
		return;
	k_ln_colsum<<<dim3((c + 31) / 32, chunks), dim3(32, 8)>>>(rows, c, x, dy, stats, part,
															  part + (size_t) chunks * c);
	launched("the layer-norm reduction kernel");
	if (dbeta != NULL)
	{
		k_bias_finish<<<blocks_for(c), THREADS>>>(c, chunks, part, dbeta);
		launched("the layer-norm reduction kernel");
	}
	if (dgamma != NULL)
	{
		k_bias_finish<<<blocks_for(c), THREADS>>>(c, chunks, part + (size_t) chunks * c, dgamma);
		launched("the layer-norm reduction kernel");
	}
}

__global__ void
k_gelu(size_t len, const float *x, float *y)
{
	GRID_LOOP(i, len)
		y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float) M_SQRT1_2));
}

__global__ void
k_gelu_bwd(size_t len, const float *x, const float *dy, float *dx)
{
	GRID_LOOP(i, len)
	{
		double		v = x[i];
		double		d = 0.5 * (1.0 + erf(v * M_SQRT1_2)) +
			v * exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);

		dx[i] += (float) (dy[i] * d);
	}
}

static void
cuda_gelu(size_t len, const float *x, float *y)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_gelu<<<blocks_for(len), THREADS>>>(len, x, y);
	launched("the GELU kernel");
}

static void
cuda_gelu_backward(size_t len, const float *x, const float *dy, float *dx)
{
	if (len == 0 || mt_cuda_failed())
		return;
	k_gelu_bwd<<<blocks_for(len), THREADS>>>(len, x, dy, dx);
	launched("the GELU backward kernel");
}

__global__ void
k_vit_tokens(int n, int p, int d, const float *__restrict__ patches, const float *__restrict__ cls,
			 const float *__restrict__ pos, float *__restrict__ y)
{
	size_t		per = (size_t) (p + 1) * d;

	GRID_LOOP(i, (size_t) n * per)
	{
		size_t		s = i / per,
					k = i % per;

		y[i] = (k < (size_t) d ? cls[k] : patches[s * p * d + (k - d)]) + pos[k];
	}
}

/* dpatches += dy rows 1..p; dcls / dpos += sums over the sequences */
__global__ void
k_vit_tokens_bwd(int n, int p, int d, const float *__restrict__ dy, float *__restrict__ dpatches,
				 float *__restrict__ dcls, float *__restrict__ dpos)
{
	size_t		per = (size_t) (p + 1) * d;

	GRID_LOOP(k, per)
	{
		float		s = 0.0f;

		for (int q = 0; q < n; q++)
		{
			float		g = dy[q * per + k];

			s += g;
			if (dpatches != NULL && k >= (size_t) d)
				dpatches[(size_t) q * p * d + (k - d)] += g;
		}
		if (dpos != NULL)
			dpos[k] += s;
		if (dcls != NULL && k < (size_t) d)
			dcls[k] += s;
	}
}

static void
cuda_vit_tokens(int n, int p, int d, const float *patches, const float *cls, const float *pos,
				float *y)
{
	size_t		len = (size_t) n * (p + 1) * d;

	if (len == 0 || mt_cuda_failed())
		return;
	k_vit_tokens<<<blocks_for(len), THREADS>>>(n, p, d, patches, cls, pos, y);
	launched("the ViT token kernel");
}

static void
cuda_vit_tokens_backward(int n, int p, int d, const float *dy, float *dpatches, float *dcls,
						 float *dpos)
{
	size_t		per = (size_t) (p + 1) * d;

	if (per == 0 || n <= 0 || mt_cuda_failed())
		return;
	k_vit_tokens_bwd<<<blocks_for(per), THREADS>>>(n, p, d, dy, dpatches, dcls, dpos);
	launched("the ViT token backward kernel");
}

/* ------------------------------------------------ training batches --- */

/* mean and std by value (kernel arguments) */
typedef struct aug_norm
{
	float		mean[3],
				std[3];
} aug_norm;

/*
 * io/augment.c's map_pixel: the source coordinates of output pixel (x, y)
 * under a row of params, in the host's order of operations, each rounded
 * (__dmul_rn / __dadd_rn: no contraction into FMAs), so the host's bits.
 */
__device__ static inline void
aug_map(const double *p, int size, int x, int y, double *rx, double *ry)
{
	double		u = (x + 0.5) / size,
				v = (y + 0.5) / size,
				sx,
				sy;

	if (p[4] != 0.0)
		u = 1 - u;
	sx = __dadd_rn(__dadd_rn(p[0], __dmul_rn(u, p[2])), -p[7]);
	sy = __dadd_rn(__dadd_rn(p[1], __dmul_rn(v, p[3])), -p[8]);
	*rx = __dadd_rn(__dadd_rn(p[7], __dmul_rn(p[5], sx)), -__dmul_rn(p[6], sy));
	*ry = __dadd_rn(__dadd_rn(p[8], __dmul_rn(p[6], sx)), __dmul_rn(p[5], sy));
}

/*
 * io/augment.c's render_image on the device, pass 1: every output pixel of
 * every image mapped through its draw (params row: crop x0, y0, w, h, flip,
 * cos, sin, centre x, y, brightness, contrast), sampled bilinearly from the
 * bytes (black outside) and scaled by the brightness, unnormalised.  The
 * same arithmetic as the host's, step by step (__fmul_rn / __fadd_rn: no
 * contraction into FMAs), so each value is the host's bit for bit.
 */
__global__ void
k_aug_render(int m, int size, const uint8_t *__restrict__ src, const double *__restrict__ params,
			 float *__restrict__ dst)
{
	size_t		npix = (size_t) size * size;

	GRID_LOOP(k, (size_t) m * npix)
	{
		size_t		img = k / npix,
					pix = k % npix;
		int			x = (int) (pix % size),
					y = (int) (pix / size);
		const double *p = params + img * 11;
		const uint8_t *s = src + img * npix * 3;
		double		rx,
					ry;
		float		fxs,
					fys,
					fx,
					fy,
					o[3] = {0.0f, 0.0f, 0.0f};
		int			x0,
					y0;
		float	   *out = dst + k * 3;

		aug_map(p, size, x, y, &rx, &ry);
		fxs = (float) (rx - 0.5);
		fys = (float) (ry - 0.5);
		x0 = (int) floorf(fxs);
		y0 = (int) floorf(fys);
		fx = fxs - x0;
		fy = fys - y0;
		for (int dy = 0; dy < 2; dy++)
			for (int dx = 0; dx < 2; dx++)
			{
				int			xi = x0 + dx,
							yi = y0 + dy;
				float		w = __fmul_rn(dx ? fx : 1 - fx, dy ? fy : 1 - fy);
				const uint8_t *q;

				if (xi < 0 || yi < 0 || xi >= size || yi >= size || w == 0.0f)
					continue;
				q = s + ((size_t) yi * size + xi) * 3;
				for (int c = 0; c < 3; c++)
					o[c] = __fadd_rn(o[c], __fmul_rn(w, (float) q[c]));
			}
		for (int c = 0; c < 3; c++)
			out[c] = (float) ((double) o[c] * p[9]);
	}
}

/*
 * Pass 2: the mean gray (0.299 R + 0.587 G + 0.114 B) of each image, one
 * block per image, summed in double in a fixed order (thread strides, then
 * the block's partial sums in thread order).
 */
__global__ void
k_aug_gray(size_t npix, const float *__restrict__ dst, double *__restrict__ gray)
{
	__shared__ double part[256];
	const float *img = dst + (size_t) blockIdx.x * npix * 3;
	double		s = 0.0;

	for (size_t i = threadIdx.x; i < npix; i += blockDim.x)
		s = __dadd_rn(s, __dadd_rn(__dadd_rn(__dmul_rn(0.299, img[i * 3]), __dmul_rn(0.587, img[i * 3 + 1])),
								   __dmul_rn(0.114, img[i * 3 + 2])));
	part[threadIdx.x] = s;
	__syncthreads();
	if (threadIdx.x == 0)
	{
		double		t = 0.0;

		for (unsigned int k = 0; k < blockDim.x; k++)
			t += part[k];
		gray[blockIdx.x] = t / (double) npix;
	}
}

/* Pass 3: contrast about the mean gray, clamp to 0..255, normalise. */
__global__ void
k_aug_finish(int m, size_t npix, const double *__restrict__ params,
			 const double *__restrict__ gray, aug_norm nm, float *__restrict__ dst)
{
	GRID_LOOP(k, (size_t) m * npix * 3)
	{
		size_t		img = k / (npix * 3);
		int			c = (int) (k % 3);
		double		con = params[img * 11 + 10],
					g = gray[img],
					v = dst[k];

		if (con != 1)
			v = __dadd_rn(__dmul_rn(__dadd_rn(v, -g), con), g);
		v = v < 0 ? 0 : (v > 255 ? 255 : v);
		dst[k] = (float) ((v / 255.0 - nm.mean[c]) / nm.std[c]);
	}
}

/* mt_normalize_u8: (bytes / 255 - mean) / std as scale and shift in float */
__global__ void
k_normalize_u8(size_t len, const uint8_t *__restrict__ src, aug_norm nm, float *__restrict__ dst)
{
	GRID_LOOP(k, len)
	{
		int			c = (int) (k % 3);
		float		scale = 1.0f / (255.0f * nm.std[c]),
					shift = -nm.mean[c] / nm.std[c];

		dst[k] = __fadd_rn(__fmul_rn((float) src[k], scale), shift);
	}
}

static int
cuda_augment_images(int m, int size, const uint8_t *src, const double *params,
					const float mean[3], const float std[3], float *dst, mt_err *err)
{
	size_t		npix = (size_t) size * size;
	aug_norm	nm;
	double	   *gray;
	int			rc;

	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	if (m <= 0 || npix == 0)
		return MT_OK;
	for (int c = 0; c < 3; c++)
	{
		nm.mean[c] = mean[c];
		nm.std[c] = std[c];
	}
	if (params == NULL)
	{
		k_normalize_u8<<<blocks_for((size_t) m * npix * 3), THREADS>>>((size_t) m * npix * 3, src, nm, dst);
		return launch_status("the normalisation kernel", err);
	}
	if ((gray = (double *) mt_cuda_workspace(sizeof(double) * m, err)) == NULL)
		return err != NULL ? err->code : MT_ERR_NOMEM;
	k_aug_render<<<blocks_for((size_t) m * npix), THREADS>>>(m, size, src, params, dst);
	if ((rc = launch_status("the augmentation kernel", err)) != MT_OK)
		return rc;
	k_aug_gray<<<m, 256>>>(npix, dst, gray);
	if ((rc = launch_status("the mean-gray kernel", err)) != MT_OK)
		return rc;
	k_aug_finish<<<blocks_for((size_t) m * npix * 3), THREADS>>>(m, npix, params, gray, nm, dst);
	return launch_status("the contrast and normalisation kernel", err);
}

/* io/augment.c's render_mask: nearest neighbour under the same map, 255 outside */
__global__ void
k_aug_mask(int m, int size, const uint8_t *__restrict__ src, const double *__restrict__ params,
		   uint8_t *__restrict__ dst)
{
	size_t		npix = (size_t) size * size;

	GRID_LOOP(k, (size_t) m * npix)
	{
		size_t		img = k / npix,
					pix = k % npix;
		double		rx,
					ry,
					fx,
					fy;

		aug_map(params + img * 11, size, (int) (pix % size), (int) (pix / size), &rx, &ry);
		fx = floor(rx);
		fy = floor(ry);
		dst[k] = (fx < 0 || fy < 0 || fx >= size || fy >= size) ? 255 :
			src[img * npix + (size_t) fy * size + (size_t) fx];
	}
}

__global__ void
k_copy_bytes(size_t len, const uint8_t *__restrict__ src, uint8_t *__restrict__ dst)
{
	GRID_LOOP(k, len)
		dst[k] = src[k];
}

static int
cuda_augment_masks(int m, int size, const uint8_t *src, const double *params, uint8_t *dst,
				   mt_err *err)
{
	size_t		len = (size_t) m * size * size;
	int			rc;

	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	if (m <= 0 || size <= 0)
		return MT_OK;
	if (params == NULL)
		k_copy_bytes<<<blocks_for(len), THREADS>>>(len, src, dst);
	else
		k_aug_mask<<<blocks_for(len), THREADS>>>(m, size, src, params, dst);
	return launch_status("the mask augmentation kernel", err);
}

/*
 * The training losses (ops.h cross_entropy, seg_loss_sums, seg_loss_grad):
 * train.c's arithmetic, in double, per row or per pixel.
 */

/* Term j of a cross-entropy row: its loss l, d l / d logp as dl, and p_j. */
__device__ static inline void
ce_term(const float *zi, int c, int j, int y, const float *cw, double gamma, double eps,
		double norm, double lse, double *sl, double *sdl, double *p)
{
	double		logp = (double) zi[j] - lse;
	double		q = (1.0 - eps) * (j == y) + eps / c;
	double		s = q * (cw != NULL ? (double) cw[j] : 1.0) / norm;
	double		l,
				dl;

	*p = exp(logp);
	if (gamma == 0.0)
	{
		l = -logp;
		dl = -1.0;
	}
	else
	{
		double		om = -expm1(logp);
		double		omg = pow(om, gamma);

		l = -omg * logp;
		dl = om > 0.0 ? gamma * *p * pow(om, gamma - 1.0) * logp - omg : 0.0;
	}
	*sl = s * l;
	*sdl = s * dl;
}

/* One thread a row: its share of the loss and its gradient. */
__global__ void
k_cross_entropy(int n, int c, const float *__restrict__ z, const int *__restrict__ labels,
				const float *__restrict__ cw, double gamma, double eps, double norm,
				double *__restrict__ row_loss, float *__restrict__ dz)
{
	GRID_LOOP(i, (size_t) n)
	{
		const float *zi = z + i * c;
		int			y = labels[i];
		double		mx = zi[0],
					sum = 0.0,
					lse,
					sg = 0.0,
					total = 0.0,
					sl,
					sdl,
					p;

		for (int j = 1; j < c; j++)
			mx = zi[j] > mx ? zi[j] : mx;
		for (int j = 0; j < c; j++)
			sum += exp((double) zi[j] - mx);
		lse = mx + log(sum);
		for (int j = 0; j < c; j++)
		{
			ce_term(zi, c, j, y, cw, gamma, eps, norm, lse, &sl, &sdl, &p);
			total += sl;
			sg += sdl;
		}
		for (int j = 0; j < c; j++)
		{
			ce_term(zi, c, j, y, cw, gamma, eps, norm, lse, &sl, &sdl, &p);
			dz[i * c + j] = (float) (sdl - p * sg);
		}
		row_loss[i] = total;
	}
}

static int
cuda_cross_entropy(int n, int c, const float *logits, const int *labels, const float *cw,
				   float gamma, float eps, double norm, double *row_loss, float *dlogits,
				   mt_err *err)
{
	int			rc;

	if (n <= 0 || c <= 0)
		return MT_OK;
	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	k_cross_entropy<<<blocks_for((size_t) n), THREADS>>>(n, c, logits, labels, cw, gamma, eps, norm,
														  row_loss, dlogits);
	return launch_status("the cross-entropy kernel", err);
}

/* Each labelled pixel's largest logit and sum of exp(z - max) (2 doubles a pixel). */
__global__ void
k_seg_softmax(size_t pixels, int c, const float *__restrict__ z, const uint8_t *__restrict__ masks,
			  double *__restrict__ st)
{
	GRID_LOOP(i, pixels)
	{
		const float *zi = z + i * c;
		double		mx = zi[0],
					sum = 0.0;

		if (masks[i] == 255)
			continue;
		for (int j = 1; j < c; j++)
			mx = zi[j] > mx ? zi[j] : mx;
		for (int j = 0; j < c; j++)
			sum += exp((double) zi[j] - mx);
		st[2 * i] = mx;
		st[2 * i + 1] = sum;
	}
}

/* Pixel i's value of the sum qi (ops.h MT_SEG_SUMS); 0 for an ignored pixel. */
__device__ static inline double
seg_value(size_t i, int qi, int c, const float *z, const uint8_t *masks, const float *cw,
		  const double *st)
{
	const float *zi = z + i * c;
	int			g = masks[i];
	double		wg;

	if (g == 255)
		return 0.0;
	wg = cw != NULL ? (double) cw[g] : 1.0;
	switch (qi)
	{
		case 0:
			return wg * (st[2 * i] + log(st[2 * i + 1]) - (double) zi[g]);
		case 1:
			return wg;
		case 2:
			return 1.0;
		case 3:
			{
				int			best = 0;

				for (int k = 1; k < c; k++)
					if (zi[k] > zi[best])
						best = k;
				return best == g ? 1.0 : 0.0;
			}
		default:
			{
				int			k = 1 + (qi - 4) / 3,
							r = (qi - 4) % 3;
				double		p = exp((double) zi[k] - st[2 * i]) / st[2 * i + 1];

				return r == 0 ? (g == k ? p : 0.0) : r == 1 ? p : (g == k ? 1.0 : 0.0);
			}
	}
}

/*
 * Block (b, qi) sums the values of sum qi over the pixels b * 256 + t +
 * j * B * 256 (thread strides, then the block's partial sums in thread
 * order): a fixed order, so every run gives the same bits.
 */
__global__ void
k_seg_partial(size_t pixels, int c, const float *__restrict__ z, const uint8_t *__restrict__ masks,
			  const float *__restrict__ cw, const double *__restrict__ st,
			  double *__restrict__ partial)
{
	__shared__ double part[256];
	int			qi = blockIdx.y;
	double		s = 0.0;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < pixels;
		 i += (size_t) gridDim.x * blockDim.x)
		s += seg_value(i, qi, c, z, masks, cw, st);
	part[threadIdx.x] = s;
	__syncthreads();
	if (threadIdx.x == 0)
	{
		double		t = 0.0;

		for (unsigned int k = 0; k < blockDim.x; k++)
			t += part[k];
		partial[(size_t) qi * gridDim.x + blockIdx.x] = t;
	}
}

/* sums[qi] = the blocks' partial sums of qi, in block order */
__global__ void
k_seg_final(int q, int blocks, const double *__restrict__ partial, double *__restrict__ sums)
{
	GRID_LOOP(qi, (size_t) q)
	{
		double		t = 0.0;

		for (int b = 0; b < blocks; b++)
			t += partial[qi * blocks + b];
		sums[qi] = t;
	}
}

static int
cuda_seg_loss_sums(size_t pixels, int c, const float *logits, const uint8_t *masks,
				   const float *cw, double *sums, mt_err *err)
{
	size_t		q = MT_SEG_SUMS(c),
				b = (pixels + 255) / 256;
	double	   *ws;
	int			rc;

	if (b > 128)
		b = 128;
	if (b < 1)
		b = 1;
	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	if ((ws = (double *) mt_cuda_workspace(sizeof(double) * (2 * pixels + q * b), err)) == NULL)
		return err != NULL ? err->code : MT_ERR_NOMEM;
	if (pixels > 0)
	{
		k_seg_softmax<<<blocks_for(pixels), THREADS>>>(pixels, c, logits, masks, ws);
		if ((rc = launch_status("the segmentation softmax kernel", err)) != MT_OK)
			return rc;
	}
	k_seg_partial<<<dim3((unsigned int) b, (unsigned int) q), 256>>>(pixels, c, logits, masks, cw, ws,
																	 ws + 2 * pixels);
	if ((rc = launch_status("the segmentation sums kernel", err)) != MT_OK)
		return rc;
	k_seg_final<<<blocks_for(q), THREADS>>>((int) q, (int) b, ws + 2 * pixels, sums);
	return launch_status("the segmentation sums' final kernel", err);
}

/* The gradient of mt_loss_segmentation at each pixel, from the coefficients. */
__global__ void
k_seg_grad(size_t pixels, int c, const float *__restrict__ z, const uint8_t *__restrict__ masks,
		   const float *__restrict__ cw, const double *__restrict__ coef, float *__restrict__ dz)
{
	GRID_LOOP(i, pixels)
	{
		const float *zi = z + i * c;
		float	   *di = dz + i * c;
		int			g = masks[i];
		double		mx = zi[0],
					sum = 0.0,
					wg,
					sdp = 0.0;

		if (g == 255)
		{
			for (int j = 0; j < c; j++)
				di[j] = 0.0f;
			continue;
		}
		for (int j = 1; j < c; j++)
			mx = zi[j] > mx ? zi[j] : mx;
		for (int j = 0; j < c; j++)
			sum += exp((double) zi[j] - mx);
		wg = cw != NULL ? (double) cw[g] : 1.0;
		for (int k = 1; k < c; k++)
		{
			double		den = coef[2 + 2 * (k - 1)],
						num = coef[3 + 2 * (k - 1)],
						p = exp((double) zi[k] - mx) / sum;

			sdp += p * (coef[1] * (2.0 * (k == g) * den - num) / (den * den));
		}
		for (int j = 0; j < c; j++)
		{
			double		p = exp((double) zi[j] - mx) / sum,
						dp = 0.0;

			if (j > 0)
			{
				double		den = coef[2 + 2 * (j - 1)],
							num = coef[3 + 2 * (j - 1)];

				dp = coef[1] * (2.0 * (j == g) * den - num) / (den * den);
			}
			di[j] = (float) (coef[0] * wg * (p - (j == g)) + p * (dp - sdp));
		}
	}
}

static int
cuda_seg_loss_grad(size_t pixels, int c, const float *logits, const uint8_t *masks,
				   const float *cw, const double *coef, float *dlogits, mt_err *err)
{
	int			rc;

	if (pixels == 0)
		return MT_OK;
	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	k_seg_grad<<<blocks_for(pixels), THREADS>>>(pixels, c, logits, masks, cw, coef, dlogits);
	return launch_status("the segmentation gradient kernel", err);
}

/* y (n x d) = row 0 of each sequence of x (n x t x d) */
__global__ void
k_class_token(int n, int t, int d, const float *__restrict__ x, float *__restrict__ y)
{
	GRID_LOOP(i, (size_t) n * d)
		y[i] = x[(i / d) * t * d + i % d];
}

__global__ void
k_class_token_bwd(int n, int t, int d, const float *__restrict__ dy, float *__restrict__ dx)
{
	GRID_LOOP(i, (size_t) n * d)
		dx[(i / d) * t * d + i % d] += dy[i];
}

static void
cuda_class_token(int n, int t, int d, const float *x, float *y)
{
	if ((size_t) n * d == 0 || mt_cuda_failed())
		return;
	k_class_token<<<blocks_for((size_t) n * d), THREADS>>>(n, t, d, x, y);
	launched("the class-token kernel");
}

static void
cuda_class_token_backward(int n, int t, int d, const float *dy, float *dx)
{
	if ((size_t) n * d == 0 || mt_cuda_failed())
		return;
	k_class_token_bwd<<<blocks_for((size_t) n * d), THREADS>>>(n, t, d, dy, dx);
	launched("the class-token backward kernel");
}

/* rows of s (rows x t): s = p * (s - rowsum(s * p)), one warp per row */
__global__ void
k_softmax_bwd_rows(int rows, int t, const float *__restrict__ p, float *__restrict__ s)
{
	int			row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int			lane = threadIdx.x % 32;
	const float *pr;
	float	   *sr;
	double		dot = 0.0;

	if (row >= rows)
		return;
	pr = p + (size_t) row * t;
	sr = s + (size_t) row * t;
	for (int k = lane; k < t; k += 32)
		dot += (double) pr[k] * sr[k];
	dot = warp_sum(dot);
	for (int k = lane; k < t; k += 32)
		sr[k] = pr[k] * (float) (sr[k] - dot);
}

/*
 * P_j = softmax(scale Q_j K_j^T) of one sequence for every head j at once
 * into p (heads x t x t): one strided-batched GEMM over the heads (head j's
 * columns start j hd into each token's row of 3d), then the softmax over
 * the heads' t rows each.
 */
static int
attention_probs(int t, int d, int heads, int hd, const float *q, float *p, mt_err *err)
{
	float		scale = (float) (1.0 / sqrt((double) hd));
	int			rc;

	if ((rc = gemm_rm_batched(0, 1, t, t, hd, scale, q, 3 * d, hd, q + d, 3 * d, hd,
							  0.0f, p, t, (long long) t * t, heads, err)) != MT_OK)
		return rc;
	k_softmax<<<(unsigned int) (((size_t) heads * t + 7) / 8), 256>>>(heads * t, t, p, p);
	return launch_status("the softmax kernel", err);
}

static float *
attention_workspace(size_t floats, mt_err *err)
{
	return (float *) mt_cuda_workspace(floats * sizeof(float), err);
}

/*
 * Self-attention of n sequences: per sequence three calls for every head
 * (the scores' batched GEMM, the softmax, the batched GEMM with V), not
 * three per head.
 */
static int
cuda_attention(int n, int t, int d, int heads, const float *qkv, float *y, mt_err *err)
{
	int			hd,
				rc;
	float	   *p;

	if (heads <= 0 || d % heads != 0)
		return mt_seterr(err, MT_ERR_INVALID, "%d channels do not split into %d heads", d, heads);
	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	if (n <= 0 || t <= 0)
		return MT_OK;
	hd = d / heads;
	if ((p = attention_workspace((size_t) heads * t * t, err)) == NULL)
		return err != NULL ? err->code : MT_ERR_NOMEM;
	for (int s = 0; s < n; s++)
	{
		const float *q = qkv + (size_t) s * t * 3 * d;
		float	   *ys = y + (size_t) s * t * d;

		/* Y_j = P_j V_j, head j into columns j hd of y */
		if ((rc = attention_probs(t, d, heads, hd, q, p, err)) != MT_OK ||
			(rc = gemm_rm_batched(0, 0, t, hd, t, 1.0f, p, t, (long long) t * t, q + 2 * d, 3 * d, hd,
								  0.0f, ys, d, hd, heads, err)) != MT_OK)
			return rc;
	}
	return MT_OK;
}

static int
cuda_attention_backward(int n, int t, int d, int heads, const float *qkv, const float *dy,
						float *dqkv, mt_err *err)
{
	int			hd,
				rc;
	float		scale;
	float	   *p,
			   *dp;
	long long	tt = (long long) t * t;

	if (heads <= 0 || d % heads != 0)
		return mt_seterr(err, MT_ERR_INVALID, "%d channels do not split into %d heads", d, heads);
	if ((rc = pending_status(err)) != MT_OK)
		return rc;
	if (n <= 0 || t <= 0)
		return MT_OK;
	hd = d / heads;
	scale = (float) (1.0 / sqrt((double) hd));
	if ((p = attention_workspace((size_t) 2 * heads * t * t, err)) == NULL)
		return err != NULL ? err->code : MT_ERR_NOMEM;
	dp = p + (size_t) heads * t * t;
	for (int s = 0; s < n; s++)
	{
		const float *q = qkv + (size_t) s * t * 3 * d;
		const float *dys = dy + (size_t) s * t * d;
		float	   *dq = dqkv + (size_t) s * t * 3 * d;

		if ((rc = attention_probs(t, d, heads, hd, q, p, err)) != MT_OK)
			return rc;
		/* dV_j += P_j^T dY_j; dP_j = dY_j V_j^T (every head at once) */
		if ((rc = gemm_rm_batched(1, 0, t, hd, t, 1.0f, p, t, tt, dys, d, hd, 1.0f,
								  dq + 2 * d, 3 * d, hd, heads, err)) != MT_OK ||
			(rc = gemm_rm_batched(0, 1, t, t, hd, 1.0f, dys, d, hd, q + 2 * d, 3 * d, hd, 0.0f,
								  dp, t, tt, heads, err)) != MT_OK)
			return rc;
		/* dS = P * (dP - rowsum(dP * P)) */
		k_softmax_bwd_rows<<<(unsigned int) (((size_t) heads * t + 7) / 8), 256>>>(heads * t, t, p, dp);
		if ((rc = launch_status("the softmax backward kernel", err)) != MT_OK)
			return rc;
		/* dQ_j += s dS_j K_j, dK_j += s dS_j^T Q_j */
		if ((rc = gemm_rm_batched(0, 0, t, hd, t, scale, dp, t, tt, q + d, 3 * d, hd, 1.0f, dq,
								  3 * d, hd, heads, err)) != MT_OK ||
			(rc = gemm_rm_batched(1, 0, t, hd, t, scale, dp, t, tt, q, 3 * d, hd, 1.0f,
								  dq + d, 3 * d, hd, heads, err)) != MT_OK)
			return rc;
	}
	return MT_OK;
}

/* ---------------------------------------------------------------- U-Net --- */

/*
 * Source index of output position o for the integer factor f, as
 * ops_cpu_unet.c's bilinear_source (torch, align_corners=False, in float):
 * the lower index, the upper one (clamped to in - 1), the upper one's
 * weight.  __fmul_rn / __fadd_rn keep nvcc from contracting the two steps
 * into an FMA, so the indices and weights are the CPU's bit for bit.
 */
__device__ __forceinline__ void
bilinear_src(int o, int f, int in, int *i0, int *i1, float *l1)
{
	float		scale = (float) (1.0 / f);
	float		src = __fadd_rn(__fmul_rn(scale, __fadd_rn((float) o, 0.5f)), -0.5f);
	int			lo;

	if (src < 0.0f)
		src = 0.0f;
	lo = (int) src;
	if (lo > in - 1)
		lo = in - 1;
	*i0 = lo;
	*i1 = lo + (lo < in - 1 ? 1 : 0);
	*l1 = src - (float) lo;
}

/* one thread per output value: the CPU's expression, term for term */
__global__ void
k_upsample(int n, int h, int w, int c, int f, const float *__restrict__ x, float *__restrict__ y)
{
	int			oh = h * f,
				ow = w * f;
	size_t		total = (size_t) n * oh * ow * c;

	GRID_LOOP(i, total)
	{
		int			j = (int) (i % c);
		size_t		p = i / c;
		int			ox = (int) (p % ow);
		int			oy = (int) ((p / ow) % oh);
		size_t		img = p / ((size_t) ow * oh);
		int			y0,
					y1,
					x0,
					x1;
		float		ly1,
					lx1;
		const float *xi = x + img * h * w * c;

		bilinear_src(oy, f, h, &y0, &y1, &ly1);
		bilinear_src(ox, f, w, &x0, &x1, &lx1);
		{
			float		ly0 = 1.0f - ly1,
						lx0 = 1.0f - lx1;
			float		p00 = xi[((size_t) y0 * w + x0) * c + j],
						p01 = xi[((size_t) y0 * w + x1) * c + j],
						p10 = xi[((size_t) y1 * w + x0) * c + j],
						p11 = xi[((size_t) y1 * w + x1) * c + j];

			y[i] = __fadd_rn(__fmul_rn(ly0, __fadd_rn(__fmul_rn(lx0, p00), __fmul_rn(lx1, p01))),
							 __fmul_rn(ly1, __fadd_rn(__fmul_rn(lx0, p10), __fmul_rn(lx1, p11))));
		}
	}
}

/*
 * The adjoint, gathered: one thread per dx value collects the output rows
 * and columns that read it (within one source step: oy in [(iy - 1) f,
 * (iy + 2) f), as the CPU kernel bounds them), so no atomics.
 */
__global__ void
k_upsample_bwd(int n, int h, int w, int c, int f, const float *__restrict__ dy, float *__restrict__ dx)
{
	int			oh = h * f,
				ow = w * f;
	size_t		total = (size_t) n * h * w * c;

	GRID_LOOP(i, total)
	{
		int			j = (int) (i % c);
		size_t		p = i / c;
		int			ix = (int) (p % w);
		int			iy = (int) ((p / w) % h);
		size_t		img = p / ((size_t) w * h);
		const float *g = dy + img * oh * ow * c;
		int			ylo = (iy - 1) * f,
					yhi = (iy + 2) * f,
					xlo = (ix - 1) * f,
					xhi = (ix + 2) * f;
		float		s = 0.0f;

		ylo = ylo < 0 ? 0 : ylo;
		yhi = yhi > oh ? oh : yhi;
		xlo = xlo < 0 ? 0 : xlo;
		xhi = xhi > ow ? ow : xhi;
		for (int oy = ylo; oy < yhi; oy++)
		{
			int			y0,
						y1;
			float		ly1,
						wy = 0.0f;

			bilinear_src(oy, f, h, &y0, &y1, &ly1);
			if (y0 == iy)
				wy += 1.0f - ly1;
			if (y1 == iy)
				wy += ly1;
			if (y0 != iy && y1 != iy)
				continue;
			for (int ox = xlo; ox < xhi; ox++)
			{
				int			x0,
							x1;
				float		lx1,
							wx = 0.0f;

				bilinear_src(ox, f, w, &x0, &x1, &lx1);
				if (x0 == ix)
					wx += wy * (1.0f - lx1);
				if (x1 == ix)
					wx += wy * lx1;
				if (x0 != ix && x1 != ix)
					continue;
				s += wx * g[((size_t) oy * ow + ox) * c + j];
			}
		}
		dx[i] += s;
	}
}

static void
cuda_upsample_bilinear(int n, int h, int w, int c, int f, const float *x, float *y)
{
	size_t		total = (size_t) n * h * f * w * f * c;

	if (total == 0 || f <= 0 || mt_cuda_failed())
		return;
	k_upsample<<<blocks_for(total), THREADS>>>(n, h, w, c, f, x, y);
	launched("the bilinear upsampling kernel");
}

static void
cuda_upsample_bilinear_backward(int n, int h, int w, int c, int f, const float *dy, float *dx)
{
	size_t		total = (size_t) n * h * w * c;

	if (total == 0 || f <= 0 || mt_cuda_failed())
		return;
	k_upsample_bwd<<<blocks_for(total), THREADS>>>(n, h, w, c, f, dy, dx);
	launched("the bilinear upsampling backward kernel");
}

/*
 * col2im of a transposed convolution's forward pass: y (nimg images of the
 * convolution's input size g.h x g.w, g.cin channels) = bias + the column
 * entries of every input position whose window covers it, then the
 * activation.  A gather, as k_col2im_add, but setting y.
 */
__global__ void
k_tconv_col2im(conv_geo g, int nimg, const float *__restrict__ col,
			   const float *__restrict__ bias, mt_act act, float *__restrict__ y)
{
	size_t		total = (size_t) nimg * g.h * g.w * g.cin;
	size_t		kcols = (size_t) g.kh * g.kw * g.cin;

	GRID_LOOP(i, total)
	{
		int			ci = (int) (i % g.cin);
		size_t		p = i / g.cin;
		int			ix = (int) (p % g.w);
		int			iy = (int) ((p / g.w) % g.h);
		size_t		img = p / ((size_t) g.w * g.h);
		const float *c = col + img * g.oh * g.ow * kcols;
		float		s = bias != NULL ? bias[ci] : 0.0f;

		for (int ky = 0; ky < g.kh; ky++)
		{
			int			ty = iy + g.pt - ky;
			int			oy;

			if (ty < 0 || ty % g.sh != 0 || (oy = ty / g.sh) >= g.oh)
				continue;
			for (int kx = 0; kx < g.kw; kx++)
			{
				int			tx = ix + g.pl - kx;
				int			ox;

				if (tx < 0 || tx % g.sw != 0 || (ox = tx / g.sw) >= g.ow)
					continue;
				s += c[((size_t) oy * g.ow + ox) * kcols + ((size_t) ky * g.kw + kx) * g.cin + ci];
			}
		}
		y[i] = apply_act(s, act);
	}
}

/* Sizes of a transposed convolution (ops.h): its output oh x ow, checked. */
static int
tconv_sizes(const mt_conv_desc *d, int h, int w, int *oh, int *ow, mt_err *err)
{
	*oh = mt_conv_transpose_out_size(h, d->kh, d->sh, d->pad_t, d->pad_b);
	*ow = mt_conv_transpose_out_size(w, d->kw, d->sw, d->pad_l, d->pad_r);
	if (d->groups != 1 || d->dh != 1 || d->dw != 1 || *oh <= 0 || *ow <= 0)
		return mt_seterr(err, MT_ERR_UNSUPPORTED,
						 "transposed convolution with groups %d, dilation %dx%d on %dx%d",
						 d->groups, d->dh, d->dw, h, w);
	if (mt_out_size(*oh, d->kh, d->sh, 1, d->pad_t, d->pad_b) != h ||
		mt_out_size(*ow, d->kw, d->sw, 1, d->pad_l, d->pad_r) != w)
		return mt_seterr(err, MT_ERR_INTERNAL, "transposed convolution sizes do not invert");
	return MT_OK;
}

/*
 * Transposed convolution (ops.h): per chunk of images col = x W^T (one
 * GEMM, h w rows of K = kh kw d->cin values per image), then the gathering
 * col2im with bias and activation.  A 1x1 stride-1 unpadded one is a GEMM
 * straight into y.
 */
static int
cuda_conv_transpose2d(const mt_conv_desc *d, int n, int h, int w, const float *x,
					  const float *packed_w, const float *bias, float *y, float *scratch,
					  mt_err *err)
{
	int			oh,
				ow,
				rc;
	int			cx = d->cout,
				cy = d->cin;
	int			k = d->kh * d->kw * cy;
	size_t		in_img,
				out_img;
	conv_geo	g;

	if ((rc = tconv_sizes(d, h, w, &oh, &ow, err)) != MT_OK || (rc = pending_status(err)) != MT_OK)
		return rc;
	if (n <= 0)
		return MT_OK;
	in_img = (size_t) h * w * cx;
	out_img = (size_t) oh * ow * cy;
	if (conv_is_pointwise(d))
	{
		size_t		rows = (size_t) n * oh * ow;

		if ((rc = gemm_rm(0, 1, n * h * w, cy, cx, 1.0f, x, cx, packed_w, cx, 0.0f,
						  y, cy, err)) != MT_OK)
			return rc;
		if (bias == NULL && d->act == MT_ACT_NONE)
			return MT_OK;
		k_bias_act<<<blocks_for(rows * cy), THREADS>>>(rows, cy, bias, d->act, y);
		return launch_status("the bias/activation kernel", err);
	}
	g = make_geo(d, oh, ow, h, w);
	{
		float	   *col;
		int			chunk = conv_chunk(n, (size_t) h * w * k, scratch, &col);

		for (int i = 0; i < n; i += chunk)
		{
			int			ni = n - i < chunk ? n - i : chunk;
			size_t		total = (size_t) ni * out_img;

			if ((rc = gemm_rm(0, 1, ni * h * w, k, cx, 1.0f, x + i * in_img, cx,
							  packed_w, cx, 0.0f, col, k, err)) != MT_OK)
				return rc;
			k_tconv_col2im<<<blocks_for(total), THREADS>>>(g, ni, col, bias, d->act,
														   y + i * out_img);
			if ((rc = launch_status("the transposed-convolution col2im kernel", err)) != MT_OK)
				return rc;
		}
	}
	return MT_OK;
}

/* dx += the convolution d applied to dy: im2col of dy, a GEMM adding into dx */
static int
cuda_conv_transpose2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
									const float *dy, const float *packed_w, float *dx,
									float *scratch, mt_err *err)
{
	int			oh,
				ow,
				rc;
	int			cx = d->cout,
				cy = d->cin;
	int			k = d->kh * d->kw * cy;
	size_t		in_img,
				out_img,
				colsz;
	conv_geo	g;

	if ((rc = tconv_sizes(d, h, w, &oh, &ow, err)) != MT_OK || (rc = pending_status(err)) != MT_OK)
		return rc;
	if (n <= 0)
		return MT_OK;
	in_img = (size_t) h * w * cx;
	out_img = (size_t) oh * ow * cy;
	if (conv_is_pointwise(d))
		return gemm_rm(0, 0, n * h * w, cx, cy, 1.0f, dy, cy, packed_w, cx, 1.0f, dx, cx, err);
	g = make_geo(d, oh, ow, h, w);
	colsz = (size_t) h * w * k;
	{
		float	   *col;
		int			chunk = conv_chunk(n, colsz, scratch, &col);

		for (int i = 0; i < n; i += chunk)
		{
			int			ni = n - i < chunk ? n - i : chunk;

			if ((rc = im2col(&g, ni, 0, k, dy + i * out_img, col, err)) != MT_OK)
				return rc;
			if ((rc = gemm_rm(0, 0, ni * h * w, cx, k, 1.0f, col, k, packed_w, cx, 1.0f,
							  dx + i * in_img, cx, err)) != MT_OK)
				return rc;
		}
	}
	return MT_OK;
}

/* --------------------------------------------------------------- memory --- */

static int
cuda_mem_alloc(void **ptr, size_t bytes, mt_err *err)
{
	return mt_cuda_alloc(ptr, bytes, err);
}

extern "C"
{

const mt_backend mt_cuda_backend = {
	.name = "cuda",
	.conv2d = cuda_conv2d,
	.max_pool2d = cuda_max_pool2d,
	.avg_pool2d = cuda_avg_pool2d,
	.global_avg_pool = cuda_global_avg_pool,
	.channel_affine = cuda_channel_affine,
	.add_act = cuda_add_act,
	.act = cuda_act,
	.linear = cuda_linear,
	.softmax = cuda_softmax,
	.concat = cuda_concat,
	.scale_channels = cuda_scale_channels,
	.conv2d_backward_data = cuda_conv2d_backward_data,
	.conv2d_backward_weight = cuda_conv2d_backward_weight,
	.bias_backward = cuda_bias_backward,
	.act_backward = cuda_act_backward,
	.act_backward_input = cuda_act_backward_input,
	.concat_backward = cuda_concat_backward,
	.scale_channels_backward = cuda_scale_channels_backward,
	.channel_stats = cuda_channel_stats,
	.batch_norm_backward = cuda_batch_norm_backward,
	.bn_train_coeffs = cuda_bn_train_coeffs,
	.max_pool2d_backward = cuda_max_pool2d_backward,
	.avg_pool2d_backward = cuda_avg_pool2d_backward,
	.global_avg_pool_backward = cuda_global_avg_pool_backward,
	.linear_backward = cuda_linear_backward,
	.accumulate = cuda_accumulate,
	.ema_update = cuda_ema_update,
	.swap = cuda_swap,
	.sgd_update = cuda_sgd_update,
	.adam_update = cuda_adam_update,
	.layer_norm = cuda_layer_norm,
	.layer_norm_backward = cuda_layer_norm_backward,
	.gelu = cuda_gelu,
	.gelu_backward = cuda_gelu_backward,
	.attention = cuda_attention,
	.attention_backward = cuda_attention_backward,
	.vit_tokens = cuda_vit_tokens,
	.vit_tokens_backward = cuda_vit_tokens_backward,
	.class_token = cuda_class_token,
	.class_token_backward = cuda_class_token_backward,
	.augment_images = cuda_augment_images,
	.augment_masks = cuda_augment_masks,
	.cross_entropy = cuda_cross_entropy,
	.seg_loss_sums = cuda_seg_loss_sums,
	.seg_loss_grad = cuda_seg_loss_grad,
	.gemm = gemm_rm_async,
	.upsample_bilinear = cuda_upsample_bilinear,
	.upsample_bilinear_backward = cuda_upsample_bilinear_backward,
	.conv_transpose2d = cuda_conv_transpose2d,
	.conv_transpose2d_backward_data = cuda_conv_transpose2d_backward_data,
	.mem_alloc = cuda_mem_alloc,
	.mem_free = mt_cuda_free,
	.mem_zero = mt_cuda_zero,
	.upload = mt_cuda_upload,
	.download = mt_cuda_download,
	.synchronize = mt_cuda_synchronize,
};

}								/* extern "C" */
