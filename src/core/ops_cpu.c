/*
 * ops_cpu.c - the CPU backend: im2col + OpenBLAS GEMM for convolutions,
 * direct kernels for depthwise convolution, pooling and elementwise ops.
 */
#include "ops.h"
#include "ops_cpu_internal.h"
#include "blas.h"
#include "onednn.h"
#include "pool.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Hot loops get AVX-512 and AVX2 clones picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MT_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MT_HOT
#endif

int
mt_out_size(int in, int k, int s, int d, int pad_before, int pad_after)
{
	int			span = d * (k - 1) + 1;
	int			padded = in + pad_before + pad_after;

	if (s <= 0 || padded < span)
		return 0;
	return (padded - span) / s + 1;
}

void
mt_same_padding(int in, int k, int s, int d, int *before, int *after)
{
	int			out = (in + s - 1) / s;
	int			total = (out - 1) * s + d * (k - 1) + 1 - in;

	if (total < 0)
		total = 0;
	*before = total / 2;
	*after = total - total / 2;
}

int
mt_conv_is_depthwise(const mt_conv_desc *d)
{
	return d->groups > 1 && d->groups == d->cin && d->cout == d->cin;
}

size_t
mt_conv_packed_size(const mt_conv_desc *d)
{
	return (size_t) d->cout * (d->cin / d->groups) * d->kh * d->kw;
}

/*
 * Packing is a transpose of each group's [cout_g][cin_g kh kw] weights into
 * [kh kw cin_g][cout_g]: done in blocks of PACK_BLOCK output channels (one
 * contiguous run per row of the packed matrix), blocks spread over the pool
 * (training packs every convolution's weights every step).
 */
#define PACK_BLOCK 16
#define PACK_MIN_BLOCKS(d) ((size_t) (32768 / ((size_t) (d)->kh * (d)->kw * ((d)->cin / (d)->groups) * PACK_BLOCK) + 1))

typedef struct pack_args
{
	const mt_conv_desc *d;
	float	   *oihw;
	float	   *packed;
	int			unpack_add;		/* oihw += packed instead of packed = oihw */
} pack_args;

static void
pack_task(void *p, size_t b, size_t e)
{
	pack_args  *a = p;
	const mt_conv_desc *d = a->d;
	int			cin_g = d->cin / d->groups;
	int			cout_g = d->cout / d->groups;
	size_t		khw = (size_t) d->kh * d->kw;
	size_t		k = khw * cin_g;
	size_t		blocks = (cout_g + PACK_BLOCK - 1) / PACK_BLOCK;

	for (size_t j = b; j < e; j++)
	{
		int			g = (int) (j / blocks);
		int			o0 = (int) (j % blocks) * PACK_BLOCK;
		int			o1 = o0 + PACK_BLOCK < cout_g ? o0 + PACK_BLOCK : cout_g;
		float	   *pk = a->packed + (size_t) g * k * cout_g;
		float	   *src = a->oihw + (size_t) g * cout_g * k;

		for (int ci = 0; ci < cin_g; ci++)
			for (size_t t = 0; t < khw; t++)
			{
				size_t		row = t * cin_g + ci;
				size_t		col = (size_t) ci * khw + t;	/* (ci, ky, kx) in an OIHW row */

				if (a->unpack_add)
					for (int o = o0; o < o1; o++)
						src[(size_t) o * k + col] += pk[row * cout_g + o];
				else
					for (int o = o0; o < o1; o++)
						pk[row * cout_g + o] = src[(size_t) o * k + col];
			}
	}
}

void
mt_conv_pack_oihw(const mt_conv_desc *d, const float *oihw, float *packed)
{
	pack_args	a = {d, (float *) oihw, packed, 0};

	if (mt_conv_is_depthwise(d))
	{
		for (int c = 0; c < d->cout; c++)
			for (int ky = 0; ky < d->kh; ky++)
				for (int kx = 0; kx < d->kw; kx++)
					packed[((size_t) ky * d->kw + kx) * d->cout + c] =
						oihw[((size_t) c * d->kh + ky) * d->kw + kx];
		return;
	}
	mt_parallel_for((size_t) d->groups * ((d->cout / d->groups + PACK_BLOCK - 1) / PACK_BLOCK),
					PACK_MIN_BLOCKS(d), pack_task, &a);
}

/* Add packed-layout weights into OIHW: the inverse of mt_conv_pack_oihw, adding. */
void
mt_conv_unpack_add_oihw(const mt_conv_desc *d, const float *packed, float *oihw)
{
	pack_args	a = {d, oihw, (float *) packed, 1};

	if (mt_conv_is_depthwise(d))
	{
		for (int c = 0; c < d->cout; c++)
			for (int ky = 0; ky < d->kh; ky++)
				for (int kx = 0; kx < d->kw; kx++)
					oihw[((size_t) c * d->kh + ky) * d->kw + kx] +=
						packed[((size_t) ky * d->kw + kx) * d->cout + c];
		return;
	}
	mt_parallel_for((size_t) d->groups * ((d->cout / d->groups + PACK_BLOCK - 1) / PACK_BLOCK),
					PACK_MIN_BLOCKS(d), pack_task, &a);
}

/* Whether the convolution is a plain GEMM on the input (1x1, stride 1, no pad). */
int
mt_cpu_conv_is_pointwise(const mt_conv_desc *d)
{
	return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 &&
		d->pad_t == 0 && d->pad_l == 0 && d->pad_b == 0 && d->pad_r == 0;
}

size_t
mt_conv_scratch_size(const mt_conv_desc *d, int h, int w)
{
	int			oh = mt_out_size(h, d->kh, d->sh, d->dh, d->pad_t, d->pad_b);
	int			ow = mt_out_size(w, d->kw, d->sw, d->dw, d->pad_l, d->pad_r);

	if (mt_conv_is_depthwise(d) || (mt_cpu_conv_is_pointwise(d) && d->groups == 1))
		return 0;
	return (size_t) oh * ow * d->kh * d->kw * (d->cin / d->groups);
}

/* Clamp to [lo, hi] with plain comparisons (fminf/fmaxf would not vectorise). */
static inline size_t
Min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

static inline float
clampf(float v, float lo, float hi)
{
	v = v < lo ? lo : v;
	return v > hi ? hi : v;
}

static void cpu_act(size_t len, const float *x, mt_act act, float *y);

/* Apply act to len values in place. */
void
mt_cpu_act_inplace(size_t len, mt_act act, float *y)
{
	cpu_act(len, y, act, y);
}

/* Apply bias and activation to rows x c values in place, in one pass. */
MT_HOT static void
bias_act_rows(size_t rows, int c, const float *bias, mt_act act, float *y)
{
	float		hi = act == MT_ACT_RELU6 ? 6.0f : 3.4e38f;

	if (bias == NULL && act == MT_ACT_NONE)
		return;
	if (act != MT_ACT_NONE && act != MT_ACT_RELU && act != MT_ACT_RELU6)
	{
		/* smooth activations (SiLU, sigmoid): bias, then the activation */
		if (bias != NULL)
			bias_act_rows(rows, c, bias, MT_ACT_NONE, y);
		mt_cpu_act_inplace(rows * c, act, y);
		return;
	}
	for (size_t r = 0; r < rows; r++)
	{
		float	   *row = y + r * c;

		if (bias != NULL && act == MT_ACT_NONE)
			for (int j = 0; j < c; j++)
				row[j] += bias[j];
		else if (bias != NULL)
			for (int j = 0; j < c; j++)
				row[j] = clampf(row[j] + bias[j], 0.0f, hi);
		else
			for (int j = 0; j < c; j++)
				row[j] = clampf(row[j], 0.0f, hi);
	}
}

/* im2col rows [oy0, oy1) of one image and one group. */
static void
im2col_rows(const mt_conv_desc *d, int h, int w, int ow, int g,
			const float *x, float *col, int oy0, int oy1)
{
	int			cin_g = d->cin / d->groups;
	size_t		kcols = (size_t) d->kh * d->kw * cin_g;

	for (int oy = oy0; oy < oy1; oy++)
		for (int ox = 0; ox < ow; ox++)
		{
			float	   *dst = col + ((size_t) oy * ow + ox) * kcols;

			for (int ky = 0; ky < d->kh; ky++)
			{
				int			iy = oy * d->sh - d->pad_t + ky * d->dh;

				for (int kx = 0; kx < d->kw; kx++)
				{
					int			ix = ox * d->sw - d->pad_l + kx * d->dw;

					if (iy < 0 || iy >= h || ix < 0 || ix >= w)
						memset(dst, 0, sizeof(float) * cin_g);
					else
						memcpy(dst, x + ((size_t) iy * w + ix) * d->cin + (size_t) g * cin_g,
							   sizeof(float) * cin_g);
					dst += cin_g;
				}
			}
		}
}

/*
 * Parallel wrappers: each splits its loop over the engine's thread pool
 * (pool.h); parts are at least MT_PAR_MIN floats of work.
 */
#define MT_PAR_MIN 16384

typedef struct par_args
{
	const mt_conv_desc *d;
	int			h,
				w,
				oh,
				ow,
				g,
				c;
	mt_act		act;
	const float *x,
			   *x2,
			   *wt,
			   *bias;
	float	   *y;
	size_t		in_img,
				out_img;
} par_args;

static void
bias_act_task(void *p, size_t b, size_t e)
{
	par_args   *a = p;

	bias_act_rows(e - b, a->c, a->bias, a->act, a->y + b * a->c);
}

/* bias_act_rows over the pool */
static void
par_bias_act(size_t rows, int c, const float *bias, mt_act act, float *y)
{
	par_args	a = {.c = c, .bias = bias, .act = act, .y = y};

	if (bias == NULL && act == MT_ACT_NONE)
		return;
	mt_parallel_for(rows, MT_PAR_MIN / (c > 0 ? c : 1) + 1, bias_act_task, &a);
}

static void
im2col_task(void *p, size_t b, size_t e)
{
	par_args   *a = p;

	im2col_rows(a->d, a->h, a->w, a->ow, a->g, a->x, a->y, (int) b, (int) e);
}

/* im2col for one image and one group, NHWC: rows (oy, ox), columns (ky, kx, ci). */
void
mt_cpu_im2col(const mt_conv_desc *d, int h, int w, int oh, int ow, int g,
			  const float *x, float *col)
{
	par_args	a = {.d = d, .h = h, .w = w, .ow = ow, .g = g, .x = x, .y = col};
	size_t		row = (size_t) ow * d->kh * d->kw * (d->cin / d->groups);

	mt_parallel_for(oh, MT_PAR_MIN / (row > 0 ? row : 1) + 1, im2col_task, &a);
}

/* Output rows [oy0, oy1) of a depthwise convolution of one image, vectorised over channels. */
MT_HOT static void
depthwise_image(const mt_conv_desc *d, int h, int w, int oh, int ow,
				const float *x, const float *wt, const float *bias, float *y,
				int oy0, int oy1)
{
	int			c = d->cin;

	for (int oy = oy0; oy < oy1; oy++)
		for (int ox = 0; ox < ow; ox++)
		{
			float	   *out = y + ((size_t) oy * ow + ox) * c;

			if (bias != NULL)
				memcpy(out, bias, sizeof(float) * c);
			else
				memset(out, 0, sizeof(float) * c);
			for (int ky = 0; ky < d->kh; ky++)
			{
				int			iy = oy * d->sh - d->pad_t + ky * d->dh;

				if (iy < 0 || iy >= h)
					continue;
				for (int kx = 0; kx < d->kw; kx++)
				{
					int			ix = ox * d->sw - d->pad_l + kx * d->dw;
					const float *in;
					const float *k;

					if (ix < 0 || ix >= w)
						continue;
					in = x + ((size_t) iy * w + ix) * c;
					k = wt + ((size_t) ky * d->kw + kx) * c;
					for (int j = 0; j < c; j++)
						out[j] += in[j] * k[j];
				}
			}
			if (d->act != MT_ACT_NONE && d->act != MT_ACT_RELU && d->act != MT_ACT_RELU6)
				mt_cpu_act_inplace(c, d->act, out);
			else if (d->act != MT_ACT_NONE)
			{
				float		hi = d->act == MT_ACT_RELU6 ? 6.0f : 3.4e38f;

				for (int j = 0; j < c; j++)
					out[j] = clampf(out[j], 0.0f, hi);
			}
		}
}

/* rows [b, e) of n x oh output rows */
static void
depthwise_task(void *p, size_t b, size_t e)
{
	par_args   *a = p;

	while (b < e)
	{
		size_t		img = b / a->oh;
		int			oy0 = (int) (b % a->oh);
		int			oy1 = (int) Min_size(e - img * a->oh, (size_t) a->oh);

		depthwise_image(a->d, a->h, a->w, a->oh, a->ow, a->x + img * a->in_img, a->wt,
						a->bias, a->y + img * a->out_img, oy0, oy1);
		b = img * a->oh + oy1;
	}
}

static int
cpu_conv2d_cached(const mt_conv_desc *d, int n, int h, int w, const float *x,
				  const float *packed_w, const float *bias, float *y, float *scratch,
				  mt_conv_cache **cache, mt_err *err)
{
	int			oh = mt_out_size(h, d->kh, d->sh, d->dh, d->pad_t, d->pad_b);
	int			ow = mt_out_size(w, d->kw, d->sw, d->dw, d->pad_l, d->pad_r);
	int			cin_g = d->cin / d->groups;
	int			cout_g = d->cout / d->groups;
	int			k = d->kh * d->kw * cin_g;
	size_t		in_img = (size_t) h * w * d->cin;
	size_t		out_img = (size_t) oh * ow * d->cout;

	if (oh <= 0 || ow <= 0)
		return mt_seterr(err, MT_ERR_SHAPE,
						 "input of %dx%d is too small for a %dx%d convolution", h, w, d->kh, d->kw);

	/*
	 * oneDNN for the convolutions of a prepared model (inference, and the
	 * frozen prefix of training).  Training's own convolutions stay on
	 * im2col + GEMM, like their backward passes: oneDNN sums in another
	 * order, and in parity_unet's step with every batch norm on running
	 * statistics those last-bit differences moved encoder gradients by 1e-3
	 * (its outputs matched GEMM's within 1e-5 of their scale).
	 */
	if (cache != NULL && mt_onednn_enabled())
	{
		int			rc = mt_onednn_conv2d(d, n, h, w, x, packed_w, bias, y, cache, err);

		if (rc != MT_ERR_UNSUPPORTED)
			return rc;
		if (packed_w == NULL)
			return rc;			/* the weights live in the cache only: the caller re-packs */
		mt_clearerr(err);		/* a shape oneDNN does not take: our own kernel */
	}
	if (packed_w == NULL)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "convolution weights were released");

	if (mt_conv_is_depthwise(d))
	{
		par_args	a = {.d = d, .h = h, .w = w, .oh = oh, .ow = ow, .x = x, .wt = packed_w,
		.bias = bias, .y = y, .in_img = in_img, .out_img = out_img};

		mt_parallel_for((size_t) n * oh, MT_PAR_MIN / ((size_t) ow * d->cout * d->kh * d->kw / 4 + 1) + 1,
						depthwise_task, &a);
		return MT_OK;
	}

	if (mt_cpu_conv_is_pointwise(d) && d->groups == 1)
	{
		/* the whole batch is one GEMM: [n*h*w x cin] * [cin x cout] */
		mt_sgemm(0, 0, n * h * w, d->cout, d->cin, 1.0f, x, d->cin,
				 packed_w, d->cout, 0.0f, y, d->cout);
	}
	else
	{
		for (int i = 0; i < n; i++)
			for (int g = 0; g < d->groups; g++)
			{
				mt_cpu_im2col(d, h, w, oh, ow, g, x + i * in_img, scratch);
				mt_sgemm(0, 0, oh * ow, cout_g, k, 1.0f, scratch, k,
						 packed_w + (size_t) g * k * cout_g, cout_g, 0.0f,
						 y + i * out_img + (size_t) g * cout_g, d->cout);
			}
	}
	par_bias_act((size_t) n * oh * ow, d->cout, bias, d->act, y);
	return MT_OK;
}

static int
cpu_conv2d(const mt_conv_desc *d, int n, int h, int w, const float *x,
		   const float *packed_w, const float *bias, float *y, float *scratch,
		   mt_err *err)
{
	return cpu_conv2d_cached(d, n, h, w, x, packed_w, bias, y, scratch, NULL, err);
}

/* Max pooling; padded positions never win (as -inf). */
static void
cpu_max_pool2d(const mt_pool_desc *p, int n, int h, int w, int c,
			   const float *x, float *y)
{
	int			oh = mt_out_size(h, p->kh, p->sh, 1, p->pad_t, p->pad_b);
	int			ow = mt_out_size(w, p->kw, p->sw, 1, p->pad_l, p->pad_r);

	for (int i = 0; i < n; i++)
		for (int oy = 0; oy < oh; oy++)
			for (int ox = 0; ox < ow; ox++)
			{
				float	   *out = y + (((size_t) i * oh + oy) * ow + ox) * c;

				for (int j = 0; j < c; j++)
					out[j] = -FLT_MAX;
				for (int ky = 0; ky < p->kh; ky++)
				{
					int			iy = oy * p->sh - p->pad_t + ky;

					if (iy < 0 || iy >= h)
						continue;
					for (int kx = 0; kx < p->kw; kx++)
					{
						int			ix = ox * p->sw - p->pad_l + kx;
						const float *in;

						if (ix < 0 || ix >= w)
							continue;
						in = x + (((size_t) i * h + iy) * w + ix) * c;
						for (int j = 0; j < c; j++)
							out[j] = in[j] > out[j] ? in[j] : out[j];
					}
				}
			}
}

/* Average pooling, counting padded positions or not. */
static void
cpu_avg_pool2d(const mt_pool_desc *p, int n, int h, int w, int c,
			   const float *x, float *y)
{
	int			oh = mt_out_size(h, p->kh, p->sh, 1, p->pad_t, p->pad_b);
	int			ow = mt_out_size(w, p->kw, p->sw, 1, p->pad_l, p->pad_r);

	for (int i = 0; i < n; i++)
		for (int oy = 0; oy < oh; oy++)
			for (int ox = 0; ox < ow; ox++)
			{
				float	   *out = y + (((size_t) i * oh + oy) * ow + ox) * c;
				int			count = 0;

				memset(out, 0, sizeof(float) * c);
				for (int ky = 0; ky < p->kh; ky++)
				{
					int			iy = oy * p->sh - p->pad_t + ky;

					if (iy < 0 || iy >= h)
						continue;
					for (int kx = 0; kx < p->kw; kx++)
					{
						int			ix = ox * p->sw - p->pad_l + kx;
						const float *in;

						if (ix < 0 || ix >= w)
							continue;
						in = x + (((size_t) i * h + iy) * w + ix) * c;
						for (int j = 0; j < c; j++)
							out[j] += in[j];
						count++;
					}
				}
				if (p->count_include_pad)
				{
					/* the window clipped to the padded input, as torch does */
					int			y0 = oy * p->sh - p->pad_t,
								x0 = ox * p->sw - p->pad_l;
					int			y1 = y0 + p->kh,
								x1 = x0 + p->kw;

					if (y1 > h + p->pad_b)
						y1 = h + p->pad_b;
					if (x1 > w + p->pad_r)
						x1 = w + p->pad_r;
					count = (y1 - y0) * (x1 - x0);
				}
				for (int j = 0; j < c && count > 0; j++)
					out[j] /= (float) count;
			}
}

MT_HOT static void
cpu_global_avg_pool(int n, int h, int w, int c, const float *x, float *y)
{
	size_t		hw = (size_t) h * w;

	for (int i = 0; i < n; i++)
	{
		float	   *out = y + (size_t) i * c;

		memset(out, 0, sizeof(float) * c);
		for (size_t p = 0; p < hw; p++)
		{
			const float *in = x + ((size_t) i * hw + p) * c;

			for (int j = 0; j < c; j++)
				out[j] += in[j];
		}
		for (int j = 0; j < c; j++)
			out[j] /= (float) hw;
	}
}

/* y = x * scale + shift, then the activation, a row at a time (one pass) */
MT_HOT static void
cpu_channel_affine(size_t rows, int c, const float *x, const float *scale,
				   const float *shift, mt_act act, float *y)
{
	int			clamp = act == MT_ACT_RELU || act == MT_ACT_RELU6;
	float		hi = act == MT_ACT_RELU6 ? 6.0f : 3.4e38f;

	for (size_t r = 0; r < rows; r++)
	{
		const float *xr = x + r * c;
		float	   *yr = y + r * c;

		if (clamp)
			for (int j = 0; j < c; j++)
				yr[j] = clampf(xr[j] * scale[j] + shift[j], 0.0f, hi);
		else
		{
			for (int j = 0; j < c; j++)
				yr[j] = xr[j] * scale[j] + shift[j];
			bias_act_rows(1, c, NULL, act, yr);
		}
	}
}

MT_HOT static void
cpu_act(size_t len, const float *x, mt_act act, float *y)
{
	for (size_t i = 0; i < len; i++)
	{
		float		v = x[i];

		if (act == MT_ACT_RELU)
			v = v > 0.0f ? v : 0.0f;
		else if (act == MT_ACT_RELU6)
			v = clampf(v, 0.0f, 6.0f);
		else if (act == MT_ACT_SILU)
			v = mt_cpu_silu(v);
		else if (act == MT_ACT_SIGMOID)
			v = mt_cpu_sigmoid(v);
		y[i] = v;
	}
}

MT_HOT static void
cpu_add_act(size_t len, const float *a, const float *b, mt_act act, float *y)
{
	for (size_t i = 0; i < len; i++)
		y[i] = a[i] + b[i];
	if (act != MT_ACT_NONE)
		cpu_act(len, y, act, y);
}

/* The elementwise ops above over the thread pool. */
static void
affine_task(void *p, size_t b, size_t e)
{
	par_args   *a = p;

	cpu_channel_affine(e - b, a->c, a->x + b * a->c, a->wt, a->bias, a->act, a->y + b * a->c);
}

static void
par_channel_affine(size_t rows, int c, const float *x, const float *scale,
				   const float *shift, mt_act act, float *y)
{
	par_args	a = {.c = c, .x = x, .wt = scale, .bias = shift, .act = act, .y = y};

	mt_parallel_for(rows, MT_PAR_MIN / (c > 0 ? c : 1) + 1, affine_task, &a);
}

static void
act_task(void *p, size_t b, size_t e)
{
	par_args   *a = p;

	if (a->x2 != NULL)
		cpu_add_act(e - b, a->x + b, a->x2 + b, a->act, a->y + b);
	else
		cpu_act(e - b, a->x + b, a->act, a->y + b);
}

static void
par_act(size_t len, const float *x, mt_act act, float *y)
{
	par_args	a = {.x = x, .act = act, .y = y};

	mt_parallel_for(len, MT_PAR_MIN, act_task, &a);
}

static void
par_add_act(size_t len, const float *a_, const float *b, mt_act act, float *y)
{
	par_args	a = {.x = a_, .x2 = b, .act = act, .y = y};

	mt_parallel_for(len, MT_PAR_MIN, act_task, &a);
}

static void
cpu_linear(int n, int in, int out, const float *x, const float *w,
		   const float *b, float *y)
{
	if (n == 1)
		mt_sgemv_rows(out, in, w, x, y);
	else
		mt_sgemm(0, 1, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
	if (b != NULL)
		bias_act_rows((size_t) n, out, b, MT_ACT_NONE, y);
}

/* Numerically stable softmax over each row. */
static void
cpu_softmax(int n, int c, const float *x, float *y)
{
	for (int i = 0; i < n; i++)
	{
		const float *in = x + (size_t) i * c;
		float	   *out = y + (size_t) i * c;
		float		mx = -FLT_MAX;
		double		sum = 0.0;

		for (int j = 0; j < c; j++)
			mx = in[j] > mx ? in[j] : mx;
		for (int j = 0; j < c; j++)
		{
			out[j] = expf(in[j] - mx);
			sum += out[j];
		}
		for (int j = 0; j < c; j++)
			out[j] = (float) (out[j] / sum);
	}
}

const mt_backend mt_cpu_backend = {
	.name = "cpu",
	.conv2d = cpu_conv2d,
	.conv2d_cached = cpu_conv2d_cached,
	.max_pool2d = cpu_max_pool2d,
	.avg_pool2d = cpu_avg_pool2d,
	.global_avg_pool = cpu_global_avg_pool,
	.channel_affine = par_channel_affine,
	.add_act = par_add_act,
	.act = par_act,
	.linear = cpu_linear,
	.softmax = cpu_softmax,
	.concat = mt_cpu_concat,
	.scale_channels = mt_cpu_scale_channels,
	.conv2d_backward_data = mt_cpu_conv2d_backward_data,
	.conv2d_backward_weight = mt_cpu_conv2d_backward_weight,
	.bias_backward = mt_cpu_bias_backward,
	.act_backward = mt_cpu_act_backward,
	.act_backward_input = mt_cpu_act_backward_input,
	.concat_backward = mt_cpu_concat_backward,
	.scale_channels_backward = mt_cpu_scale_channels_backward,
	.channel_stats = mt_cpu_channel_stats,
	.batch_norm_backward = mt_cpu_batch_norm_backward,
	.batch_norm_act_backward = mt_cpu_batch_norm_act_backward,
	.bn_train_coeffs = mt_cpu_bn_train_coeffs,
	.max_pool2d_backward = mt_cpu_max_pool2d_backward,
	.avg_pool2d_backward = mt_cpu_avg_pool2d_backward,
	.global_avg_pool_backward = mt_cpu_global_avg_pool_backward,
	.linear_backward = mt_cpu_linear_backward,
	.accumulate = mt_cpu_accumulate,
	.ema_update = mt_cpu_ema_update,
	.swap = mt_cpu_swap,
	.sgd_update = mt_cpu_sgd_update,
	.adam_update = mt_cpu_adam_update,
	.layer_norm = mt_cpu_layer_norm,
	.layer_norm_backward = mt_cpu_layer_norm_backward,
	.gelu = mt_cpu_gelu,
	.gelu_backward = mt_cpu_gelu_backward,
	.attention = mt_cpu_attention,
	.attention_backward = mt_cpu_attention_backward,
	.vit_tokens = mt_cpu_vit_tokens,
	.vit_tokens_backward = mt_cpu_vit_tokens_backward,
	.class_token = mt_cpu_class_token,
	.augment_images = mt_cpu_augment_images,
	.augment_masks = mt_cpu_augment_masks,
	.cross_entropy = mt_cpu_cross_entropy,
	.seg_loss_sums = mt_cpu_seg_loss_sums,
	.seg_loss_grad = mt_cpu_seg_loss_grad,
	.class_token_backward = mt_cpu_class_token_backward,
	.gemm = mt_sgemm,
	.upsample_bilinear = mt_cpu_upsample_bilinear,
	.upsample_bilinear_backward = mt_cpu_upsample_bilinear_backward,
	.conv_transpose2d = mt_cpu_conv_transpose2d,
	.conv_transpose2d_backward_data = mt_cpu_conv_transpose2d_backward_data,
	/* host memory: no memory entries */
	.mem_alloc = NULL,
	.mem_free = NULL,
	.mem_zero = NULL,
	.upload = NULL,
	.download = NULL,
	.synchronize = NULL,
};
