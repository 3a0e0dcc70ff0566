/*
 * ops_cpu_train.c - the CPU backend's training kernels: backward passes of
 * the layers (GEMM through mt_sgemm, direct loops elsewhere) and the
 * optimizer updates.  Every backward kernel adds into its outputs.
 *
 * Per-channel sums (bias, batch-norm statistics) accumulate in double, in
 * chunks of CHUNK channels on the stack so the kernels never allocate.
 */
#include "ops_cpu_internal.h"
#include "onednn.h"
#include "blas.h"
#include "pool.h"

#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MT_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MT_HOT
#endif

#define CHUNK 64

/* Scatter-add one image's column matrix back onto dx (the adjoint of im2col). */
static void
col2im_add(const mt_conv_desc *d, int h, int w, int oh, int ow, int g,
		   const float *col, float *dx)
{
	int			cin_g = d->cin / d->groups;
	size_t		kcols = (size_t) d->kh * d->kw * cin_g;

	for (int oy = 0; oy < oh; oy++)
		for (int ox = 0; ox < ow; ox++)
		{
			const float *src = col + ((size_t) oy * ow + ox) * kcols;

			for (int ky = 0; ky < d->kh; ky++)
			{
				int			iy = oy * d->sh - d->pad_t + ky * d->dh;

				for (int kx = 0; kx < d->kw; kx++)
				{
					int			ix = ox * d->sw - d->pad_l + kx * d->dw;

					if (iy >= 0 && iy < h && ix >= 0 && ix < w)
					{
						float	   *dst = dx + ((size_t) iy * w + ix) * d->cin + (size_t) g * cin_g;

						for (int ci = 0; ci < cin_g; ci++)
							dst[ci] += src[ci];
					}
					src += cin_g;
				}
			}
		}
}

/* Depthwise convolution, input gradient of one image. */
MT_HOT static void
depthwise_backward_data(const mt_conv_desc *d, int h, int w, int oh, int ow,
						const float *dy, const float *wt, float *dx)
{
	int			c = d->cin;

	for (int oy = 0; oy < oh; oy++)
		for (int ox = 0; ox < ow; ox++)
		{
			const float *g = dy + ((size_t) oy * ow + ox) * c;

			for (int ky = 0; ky < d->kh; ky++)
			{
				int			iy = oy * d->sh - d->pad_t + ky * d->dh;

				if (iy < 0 || iy >= h)
					continue;
				for (int kx = 0; kx < d->kw; kx++)
				{
					int			ix = ox * d->sw - d->pad_l + kx * d->dw;
					float	   *out;
					const float *k;

					if (ix < 0 || ix >= w)
						continue;
					out = dx + ((size_t) iy * w + ix) * c;
					k = wt + ((size_t) ky * d->kw + kx) * c;
					for (int j = 0; j < c; j++)
						out[j] += g[j] * k[j];
				}
			}
		}
}

/*
 * A backward pass split over the pool by image, each image adding into its
 * own slice of dx (depthwise input gradient, max pooling).
 */
typedef struct image_bw_args
{
	const mt_conv_desc *d;		/* depthwise */
	const mt_pool_desc *p;		/* max pooling */
	int			h,
				w,
				oh,
				ow,
				c;
	const float *x;
	const float *y;				/* max pooling: the forward's output, or NULL */
	const float *dy;
	const float *wt;
	float	   *dx;
} image_bw_args;

static void
dw_data_task(void *p, size_t b, size_t e)
{
	image_bw_args *a = p;
	size_t		in_img = (size_t) a->h * a->w * a->d->cin;
	size_t		out_img = (size_t) a->oh * a->ow * a->d->cout;

	for (size_t i = b; i < e; i++)
		depthwise_backward_data(a->d, a->h, a->w, a->oh, a->ow, a->dy + i * out_img, a->wt,
								a->dx + i * in_img);
}

/* Depthwise convolution, weight gradient of one image (packed kh x kw x C). */
MT_HOT static void
depthwise_backward_weight(const mt_conv_desc *d, int h, int w, int oh, int ow,
						  const float *x, const float *dy, float *dw)
{
	int			c = d->cin;

	for (int oy = 0; oy < oh; oy++)
		for (int ox = 0; ox < ow; ox++)
		{
			const float *g = dy + ((size_t) oy * ow + ox) * c;

			for (int ky = 0; ky < d->kh; ky++)
			{
				int			iy = oy * d->sh - d->pad_t + ky * d->dh;

				if (iy < 0 || iy >= h)
					continue;
				for (int kx = 0; kx < d->kw; kx++)
				{
					int			ix = ox * d->sw - d->pad_l + kx * d->dw;
					const float *in;
					float	   *k;

					if (ix < 0 || ix >= w)
						continue;
					in = x + ((size_t) iy * w + ix) * c;
					k = dw + ((size_t) ky * d->kw + kx) * c;
					for (int j = 0; j < c; j++)
						k[j] += g[j] * in[j];
				}
			}
		}
}

/* dx += gradient of the convolution with respect to its input. */
int
mt_cpu_conv2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
							const float *dy, const float *packed_w, float *dx,
							float *scratch, mt_err *err)
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
	/* oneDNN when it takes the shape, as for the weight gradient below */
	if (mt_onednn_enabled())
	{
		int			rc = mt_onednn_conv2d_backward_data(d, n, h, w, dy, packed_w, dx, err);

		if (rc != MT_ERR_UNSUPPORTED)
			return rc;
		mt_clearerr(err);
	}
	if (mt_conv_is_depthwise(d))
	{
		image_bw_args a = {.d = d, .h = h, .w = w, .oh = oh, .ow = ow, .dy = dy, .wt = packed_w,
		.dx = dx};

		/* each image adds into its own slice of dx */
		mt_parallel_for((size_t) n, 1, dw_data_task, &a);
		return MT_OK;
	}
	if (mt_cpu_conv_is_pointwise(d) && d->groups == 1)
	{
		/* dX [n*h*w x cin] += dY [n*h*w x cout] * W^T, W packed [cin x cout] */
		mt_sgemm(0, 1, n * h * w, d->cin, d->cout, 1.0f, dy, d->cout,
				 packed_w, d->cout, 1.0f, dx, d->cin);
		return MT_OK;
	}
	for (int i = 0; i < n; i++)
		for (int g = 0; g < d->groups; g++)
		{
			/* dcol [oh*ow x k] = dY_g [oh*ow x cout_g] * W_g^T */
			mt_sgemm(0, 1, oh * ow, k, cout_g, 1.0f,
					 dy + i * out_img + (size_t) g * cout_g, d->cout,
					 packed_w + (size_t) g * k * cout_g, cout_g, 0.0f, scratch, k);
			col2im_add(d, h, w, oh, ow, g, scratch, dx + i * in_img);
		}
	return MT_OK;
}

/* packed_dw += gradient of the convolution with respect to its weights. */
int
mt_cpu_conv2d_backward_weight(const mt_conv_desc *d, int n, int h, int w,
							  const float *x, const float *dy, float *packed_dw,
							  float *scratch, mt_err *err)
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
	 * oneDNN for the weight gradient: its JIT kernels read x and dy once
	 * instead of an im2col copy per image
	 */
	if (mt_onednn_enabled())
	{
		int			rc = mt_onednn_conv2d_backward_weight(d, n, h, w, x, dy, packed_dw, err);

		if (rc != MT_ERR_UNSUPPORTED)
			return rc;
		mt_clearerr(err);		/* a shape oneDNN does not take: our own kernel */
	}
	if (mt_conv_is_depthwise(d))
	{
		for (int i = 0; i < n; i++)
			depthwise_backward_weight(d, h, w, oh, ow, x + i * in_img, dy + i * out_img, packed_dw);
		return MT_OK;
	}
	if (mt_cpu_conv_is_pointwise(d) && d->groups == 1)
	{
		/* dW [cin x cout] += X^T [cin x n*h*w] * dY [n*h*w x cout] */
		mt_sgemm(1, 0, d->cin, d->cout, n * h * w, 1.0f, x, d->cin,
				 dy, d->cout, 1.0f, packed_dw, d->cout);
		return MT_OK;
	}
	for (int i = 0; i < n; i++)
		for (int g = 0; g < d->groups; g++)
		{
			/* dW_g [k x cout_g] += col^T [k x oh*ow] * dY_g [oh*ow x cout_g] */
			mt_cpu_im2col(d, h, w, oh, ow, g, x + i * in_img, scratch);
			mt_sgemm(1, 0, k, cout_g, oh * ow, 1.0f, scratch, k,
					 dy + i * out_img + (size_t) g * cout_g, d->cout, 1.0f,
					 packed_dw + (size_t) g * k * cout_g, cout_g);
		}
	return MT_OK;
}

/*
 * Per-channel sums over rows run over the thread pool in blocks of rows
 * whose bounds depend on the row count alone; each block sums its rows in
 * order into its own slot and the slots are added in block order, so the
 * result is the same bits whatever the number of threads.  Channels go
 * CHUNK at a time, the slots on the stack (no allocation).
 */
#define RBLOCKS 64				/* most blocks per channel chunk */
#define RBLOCK_MIN 64			/* fewest rows per block */

typedef enum red_kind
{
	RED_SUM,					/* s0 = sum x */
	RED_STATS,					/* s0 = sum (x - K), s1 = sum (x - K)^2, K = x[0] */
	RED_BN_BACKWARD				/* s0 = sum dy, s1 = sum dy * xhat */
} red_kind;

typedef struct red_args
{
	red_kind	kind;
	size_t		rows;
	size_t		per;			/* rows per block */
	int			c;
	int			c0;
	int			cn;
	const float *x;
	const float *dy;
	const float *mean;			/* RED_BN_BACKWARD */
	const float *invstd;
	const float *y;				/* set: dy * act'(y) is summed instead of dy */
	mt_act		act;			/* (x for RED_SUM), act' from the output y */
	double		(*s0)[CHUNK];
	double		(*s1)[CHUNK];
} red_args;

/*
 * dy * act'(x) from the activation's output y, the values of
 * act_backward_serial; the callers below are inlined with act a constant
 * (BY_ACT), so that each loop vectorises.  The gate clears dy's bits
 * (+0, as the select there gives): GCC does not vectorise a select on a
 * float comparison that feeds a sum (it may not speculate a comparison
 * that can trap).
 */
#define MT_INLINE static inline __attribute__((always_inline))

MT_INLINE float
gate(float v, int keep)
{
	union
	{
		float		f;
		uint32_t	u;
	}			b = {v};

	b.u &= (uint32_t) -keep;
	return b.f;
}

/* ReLU, ReLU6 or none (a product here, as sigmoid's, would fuse into FMAs) */
MT_INLINE float
act_grad(mt_act act, float y, float dy)
{
	if (act == MT_ACT_RELU)
		return gate(dy, y > 0.0f);
	if (act == MT_ACT_RELU6)
		return gate(dy, (y > 0.0f) & (y < 6.0f));
	return dy;
}

/* f(..., act) with act a constant in each branch */
#define BY_ACT(act, f, ...) \
	do { \
		switch (act) \
		{ \
			case MT_ACT_RELU: f(__VA_ARGS__, MT_ACT_RELU); break; \
			case MT_ACT_RELU6: f(__VA_ARGS__, MT_ACT_RELU6); break; \
			default: f(__VA_ARGS__, MT_ACT_NONE); break; \
		} \
	} while (0)

/* RED_SUM of dy * act'(y) over rows [r0, r1) */
MT_INLINE void
red_sum_act(const red_args *a, size_t r0, size_t r1, double *s0, mt_act act)
{
	for (size_t r = r0; r < r1; r++)
	{
		const float *row = a->x + r * a->c + a->c0;
		const float *yr = a->y + r * a->c + a->c0;

		for (int j = 0; j < a->cn; j++)
			s0[j] += act_grad(act, yr[j], row[j]);
	}
}

/* RED_BN_BACKWARD of g = dy * act'(y) over rows [r0, r1) */
MT_INLINE void
red_bn_act(const red_args *a, size_t r0, size_t r1, const float *mu, const float *is,
		   double *s0, double *s1, mt_act act)
{
	for (size_t r = r0; r < r1; r++)
	{
		const float *xr = a->x + r * a->c + a->c0;
		const float *gr = a->dy + r * a->c + a->c0;
		const float *yr = a->y + r * a->c + a->c0;

		for (int j = 0; j < a->cn; j++)
		{
			float		g = act_grad(act, yr[j], gr[j]);

			s0[j] += g;
			s1[j] += (double) g * ((xr[j] - mu[j]) * is[j]);
		}
	}
}

MT_HOT static void
red_task(void *p, size_t b, size_t e)
{
	red_args   *a = p;
	int			c = a->c,
				c0 = a->c0,
				cn = a->cn;

	for (size_t blk = b; blk < e; blk++)
	{
		size_t		r0 = blk * a->per,
					r1 = r0 + a->per < a->rows ? r0 + a->per : a->rows;
		double		s0[CHUNK],
					s1[CHUNK];

		memset(s0, 0, sizeof(s0));
		memset(s1, 0, sizeof(s1));
		if (a->kind == RED_SUM && a->y != NULL)
			BY_ACT(a->act, red_sum_act, a, r0, r1, s0);
		else if (a->kind == RED_SUM)
		{
			for (size_t r = r0; r < r1; r++)
			{
				const float *row = a->x + r * c + c0;

				for (int j = 0; j < cn; j++)
					s0[j] += row[j];
			}
		}
		else if (a->kind == RED_STATS)
		{
			const float *k = a->x + c0;

			for (size_t r = r0; r < r1; r++)
			{
				const float *row = a->x + r * c + c0;

				for (int j = 0; j < cn; j++)
				{
					double		v = (double) row[j] - (double) k[j];

					s0[j] += v;
					s1[j] += v * v;
				}
			}
		}
		else
		{
			float		mu[CHUNK],
						is[CHUNK];

			for (int j = 0; j < cn; j++)
			{
				mu[j] = a->mean[c0 + j];
				is[j] = a->invstd[c0 + j];
			}
			if (a->y != NULL)
				BY_ACT(a->act, red_bn_act, a, r0, r1, mu, is, s0, s1);
			else
			for (size_t r = r0; r < r1; r++)
			{
				const float *xr = a->x + r * c + c0;
				const float *gr = a->dy + r * c + c0;

				for (int j = 0; j < cn; j++)
				{
					s0[j] += gr[j];
					s1[j] += (double) gr[j] * ((xr[j] - mu[j]) * is[j]);
				}
			}
		}
		memcpy(a->s0[blk], s0, sizeof(s0));
		memcpy(a->s1[blk], s1, sizeof(s1));
	}
}

/* Sums over all rows of channels [c0, c0 + cn) into s0, s1 (see red_kind). */
static void
chan_reduce(red_args *a, int c0, int cn, double *s0, double *s1)
{
	double		p0[RBLOCKS][CHUNK],
				p1[RBLOCKS][CHUNK];
	size_t		nb = (a->rows + RBLOCK_MIN - 1) / RBLOCK_MIN;

	if (nb > RBLOCKS)
		nb = RBLOCKS;
	if (nb < 1)
		nb = 1;
	a->per = (a->rows + nb - 1) / nb;
	nb = a->per > 0 ? (a->rows + a->per - 1) / a->per : 0;
	a->c0 = c0;
	a->cn = cn;
	a->s0 = p0;
	a->s1 = p1;
	mt_parallel_for(nb, 1, red_task, a);
	for (int j = 0; j < cn; j++)
		s0[j] = s1[j] = 0.0;
	for (size_t blk = 0; blk < nb; blk++)
		for (int j = 0; j < cn; j++)
		{
			s0[j] += p0[blk][j];
			s1[j] += p1[blk][j];
		}
}

/* db[j] += column sums of dy, accumulated in double. */
void
mt_cpu_bias_backward(size_t rows, int c, const float *dy, float *db)
{
	red_args	a = {.kind = RED_SUM, .rows = rows, .c = c, .x = dy};

	for (int c0 = 0; c0 < c; c0 += CHUNK)
	{
		int			cn = c - c0 < CHUNK ? c - c0 : CHUNK;
		double		s[CHUNK],
					unused[CHUNK];

		chan_reduce(&a, c0, cn, s, unused);
		for (int j = 0; j < cn; j++)
			db[c0 + j] += (float) s[j];
	}
}

/* dx = dy where the activation passed its input, from its output y. */
MT_HOT static void
act_backward_serial(size_t len, const float *y, const float *dy, mt_act act,
					float *dx)
{
	if (act == MT_ACT_RELU)
		for (size_t i = 0; i < len; i++)
			dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
	else if (act == MT_ACT_RELU6)
		for (size_t i = 0; i < len; i++)
			dx[i] = (y[i] > 0.0f && y[i] < 6.0f) ? dy[i] : 0.0f;
	else if (act == MT_ACT_SIGMOID)
		for (size_t i = 0; i < len; i++)
			dx[i] = dy[i] * (y[i] * (1.0f - y[i]));
	else if (dx != dy)
		memcpy(dx, dy, len * sizeof(float));
}

typedef struct ew_args
{
	const float *x;
	const float *dy;
	float	   *dx;
	mt_act		act;
	int			c;				/* channels of a row to do */
	int			stride;			/* channels in a row */
	const float *mean;
	const float *invstd;
	const float *k;
	const float *a;
	const float *b;
	const float *y;				/* bn_dx_act_task: the activation's output */
} ew_args;

static void
act_backward_task(void *p, size_t b, size_t e)
{
	ew_args    *a = p;

	act_backward_serial(e - b, a->x + b, a->dy + b, a->act, a->dx + b);
}

static void
act_backward_input_task(void *p, size_t b, size_t e)
{
	ew_args    *a = p;

	mt_cpu_act_backward_input_serial(e - b, a->x + b, a->dy + b, a->act, a->dx + b);
}

/* dx = dy where the activation passed its input, over the pool. */
void
mt_cpu_act_backward(size_t len, const float *y, const float *dy, mt_act act,
					float *dx)
{
	ew_args		a = {.x = y, .dy = dy, .dx = dx, .act = act};

	if (act == MT_ACT_NONE && dx == dy)
		return;
	mt_parallel_for(len, 1 << 15, act_backward_task, &a);
}

/* dx = dy * act'(x) from the activation's input x, over the pool. */
void
mt_cpu_act_backward_input(size_t len, const float *x, const float *dy,
						  mt_act act, float *dx)
{
	ew_args		a = {.x = x, .dy = dy, .dx = dx, .act = act};

	mt_parallel_for(len, 1 << 14, act_backward_input_task, &a);
}

/*
 * Mean and biased variance per channel: one pass of sums about the first
 * row's values (double), which keeps the variance exact to float however
 * far the mean is from zero.
 */
void
mt_cpu_channel_stats(size_t rows, int c, const float *x, float *mean, float *var)
{
	red_args	a = {.kind = RED_STATS, .rows = rows, .c = c, .x = x};

	for (int c0 = 0; c0 < c; c0 += CHUNK)
	{
		int			cn = c - c0 < CHUNK ? c - c0 : CHUNK;
		double		s0[CHUNK],
					s1[CHUNK];

		if (rows == 0)
		{
			for (int j = 0; j < cn; j++)
				mean[c0 + j] = var[c0 + j] = 0.0f;
			continue;
		}
		chan_reduce(&a, c0, cn, s0, s1);
		for (int j = 0; j < cn; j++)
		{
			double		d = s0[j] / (double) rows,
						v = s1[j] / (double) rows - d * d;

			mean[c0 + j] = (float) ((double) x[c0 + j] + d);
			var[c0 + j] = (float) (v > 0.0 ? v : 0.0);
		}
	}
}

MT_HOT static void
bn_dx_task(void *p, size_t b, size_t e)
{
	ew_args    *a = p;
	int			c = a->c;
	size_t		st = (size_t) a->stride;
	/* locals: stores through out must not make the compiler reload a's fields */
	const float *restrict mu = a->mean,
			   *restrict is = a->invstd,
			   *restrict k = a->k,
			   *restrict sa = a->a,
			   *restrict sb = a->b;

	for (size_t r = b; r < e; r++)
	{
		const float *restrict xr = a->x + r * st;
		const float *restrict gr = a->dy + r * st;
		float	   *restrict out = a->dx + r * st;

		for (int j = 0; j < c; j++)
		{
			float		xhat = (xr[j] - mu[j]) * is[j];

			out[j] += k[j] * (gr[j] - sa[j] - xhat * sb[j]);
		}
	}
}

/*
 * Rows [r0, r1) of batch_norm_act_backward's dx: g = dy * act'(y), then
 * dx = k * (g - a - xhat * b) with batch statistics (mean set) or g * k
 * (running ones); written, not added (+ 0: a zero is +0, as when added to
 * a zeroed buffer), so dx may be dy.
 */
MT_INLINE void
bn_dx_act_rows(const ew_args *a, size_t r0, size_t r1, mt_act act)
{
	int			c = a->c;
	size_t		st = (size_t) a->stride;
	const float *restrict mu = a->mean,
			   *restrict is = a->invstd,
			   *restrict k = a->k,
			   *restrict sa = a->a,
			   *restrict sb = a->b;

	for (size_t r = r0; r < r1; r++)
	{
		const float *xr = a->x + r * st;
		const float *gr = a->dy + r * st;
		const float *yr = a->y + r * st;
		float	   *out = a->dx + r * st;

		if (mu == NULL)
			for (int j = 0; j < c; j++)
				out[j] = act_grad(act, yr[j], gr[j]) * k[j] + 0.0f;
		else
			for (int j = 0; j < c; j++)
			{
				float		g = act_grad(act, yr[j], gr[j]);
				float		xhat = (xr[j] - mu[j]) * is[j];

				out[j] = k[j] * (g - sa[j] - xhat * sb[j]) + 0.0f;
			}
	}
}

MT_HOT static void
bn_dx_act_task(void *p, size_t b, size_t e)
{
	ew_args    *a = p;

	BY_ACT(a->act, bn_dx_act_rows, a, b, e);
}

/*
 * Batch norm backward with batch statistics (M = rows):
 *   dbeta = sum dy, dgamma = sum dy * xhat,
 *   dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M).
 * The sums go CHUNK channels at a time (chan_reduce), dx over whole rows of
 * up to BN_DX_CHANNELS channels in one pass (a pass per chunk of 64, as
 * before, read each row in pieces and took about twice as long).
 */
#define BN_DX_CHANNELS 2048

static void
bn_backward(size_t rows, int c, const float *x, const float *y, mt_act act,
			const float *dy, const float *mean, const float *invstd,
			const float *gamma, float *dx, float *dgamma, float *dbeta)
{
	red_args	r = {.kind = mean != NULL ? RED_BN_BACKWARD : RED_SUM, .rows = rows, .c = c,
		.x = mean != NULL ? x : dy, .dy = dy, .mean = mean, .invstd = invstd, .y = y, .act = act};

	for (int g0 = 0; g0 < c; g0 += BN_DX_CHANNELS)
	{
		int			gn = c - g0 < BN_DX_CHANNELS ? c - g0 : BN_DX_CHANNELS;
		float		k[BN_DX_CHANNELS],
					a[BN_DX_CHANNELS],
					b[BN_DX_CHANNELS];

		for (int c0 = g0; c0 < g0 + gn; c0 += CHUNK)
		{
			int			cn = g0 + gn - c0 < CHUNK ? g0 + gn - c0 : CHUNK;
			double		sdy[CHUNK],
						sdyx[CHUNK];

			if (mean == NULL)
			{
				/* running statistics: dx = g * scale (invstd holds it), dbeta */
				for (int j = 0; j < cn; j++)
					k[c0 - g0 + j] = invstd[c0 + j];
				if (dbeta == NULL)
					continue;
				chan_reduce(&r, c0, cn, sdy, sdyx);
				for (int j = 0; j < cn; j++)
					dbeta[c0 + j] += (float) sdy[j];
				continue;
			}
			chan_reduce(&r, c0, cn, sdy, sdyx);
			for (int j = 0; j < cn; j++)
			{
				if (dbeta != NULL)
					dbeta[c0 + j] += (float) sdy[j];
				if (dgamma != NULL)
					dgamma[c0 + j] += (float) sdyx[j];
				/* dx = k * (dy - a - xhat * b) */
				k[c0 - g0 + j] = gamma[c0 + j] * invstd[c0 + j];
				a[c0 - g0 + j] = rows > 0 ? (float) (sdy[j] / (double) rows) : 0.0f;
				b[c0 - g0 + j] = rows > 0 ? (float) (sdyx[j] / (double) rows) : 0.0f;
			}
		}
		if (dx != NULL)
		{
			ew_args		e = {.x = x + g0, .dy = dy + g0, .dx = dx + g0, .c = gn, .stride = c,
				.mean = mean != NULL ? mean + g0 : NULL, .invstd = invstd + g0, .k = k, .a = a,
			.b = b, .y = y != NULL ? y + g0 : NULL, .act = act};

			mt_parallel_for(rows, (1 << 14) / (size_t) gn + 1,
							y != NULL ? bn_dx_act_task : bn_dx_task, &e);
		}
	}
}

void
mt_cpu_batch_norm_backward(size_t rows, int c, const float *x, const float *dy,
						   const float *mean, const float *invstd,
						   const float *gamma, float *dx, float *dgamma,
						   float *dbeta)
{
	bn_backward(rows, c, x, NULL, MT_ACT_NONE, dy, mean, invstd, gamma, dx, dgamma, dbeta);
}

/*
 * Batch norm backward through the activation after it, in the same passes
 * (see ops.h): with batch statistics as mt_cpu_batch_norm_backward but
 * from dy * act'(y) and dx written; with running ones (mean NULL, invstd
 * the channels' scale) dx = dy * act'(y) * scale, dbeta += its sums.
 */
void
mt_cpu_batch_norm_act_backward(size_t rows, int c, const float *x, const float *y,
							   mt_act act, const float *dy, const float *mean,
							   const float *invstd, const float *gamma, float *dx,
							   float *dgamma, float *dbeta)
{
	bn_backward(rows, c, x, y, act, dy, mean, invstd, gamma, dx, dgamma, dbeta);
}

/*
 * Images [b, e) of max pooling backward from the forward's output y: each
 * window's gradient goes to its first position equal to y (the first in
 * scan order is taken as it is when NaN, and when nothing equals y -- a
 * window of -inf and NaN, whose y stayed -FLT_MAX -- as the scan from x
 * would).  One vectorisable pass, no search for the maximum.
 */
MT_HOT static void
max_pool_backward_y_task(void *arg, size_t b, size_t e)
{
	image_bw_args *a = arg;
	const mt_pool_desc *p = a->p;
	int			h = a->h,
				w = a->w,
				c = a->c;
	int			oh = mt_out_size(h, p->kh, p->sh, 1, p->pad_t, p->pad_b);
	int			ow = mt_out_size(w, p->kw, p->sw, 1, p->pad_l, p->pad_r);

	for (size_t i = b; i < e; i++)
		for (int oy = 0; oy < oh; oy++)
			for (int ox = 0; ox < ow; ox++)
			{
				size_t		o = (((size_t) i * oh + oy) * ow + ox) * c;

				for (int c0 = 0; c0 < c; c0 += CHUNK)
				{
					int			cn = c - c0 < CHUNK ? c - c0 : CHUNK;
					const float *g = a->dy + o + c0,
							   *m = a->y + o + c0;
					float	   *first = NULL;
					int			left[CHUNK];

					for (int j = 0; j < cn; j++)
						left[j] = 1;
					for (int ky = 0; ky < p->kh; ky++)
					{
						int			iy = oy * p->sh - p->pad_t + ky;

						if (iy < 0 || iy >= h)
							continue;
						for (int kx = 0; kx < p->kw; kx++)
						{
							int			ix = ox * p->sw - p->pad_l + kx;
							size_t		base;
							const float *xb;
							float	   *db;

							if (ix < 0 || ix >= w)
								continue;
							base = (((size_t) i * h + iy) * w + ix) * c + c0;
							xb = a->x + base;
							db = a->dx + base;
							if (first == NULL)
							{
								first = db;
								for (int j = 0; j < cn; j++)
								{
									int			hit = xb[j] == m[j] || xb[j] != xb[j];

									db[j] += hit ? g[j] : 0.0f;
									left[j] = !hit;
								}
								continue;
							}
							for (int j = 0; j < cn; j++)
							{
								int			hit = left[j] & (xb[j] == m[j]);

								db[j] += hit ? g[j] : 0.0f;
								left[j] &= !hit;
							}
						}
					}
					if (first != NULL)
						for (int j = 0; j < cn; j++)
							first[j] += left[j] ? g[j] : 0.0f;
				}
			}
}

/* Images [b, e) of max pooling backward, searching each window of x. */
static void
max_pool_backward_task(void *arg, size_t b, size_t e)
{
	image_bw_args *a = arg;
	const mt_pool_desc *p = a->p;
	int			h = a->h,
				w = a->w,
				c = a->c;
	const float *x = a->x,
			   *dy = a->dy;
	float	   *dx = a->dx;
	int			oh = mt_out_size(h, p->kh, p->sh, 1, p->pad_t, p->pad_b);
	int			ow = mt_out_size(w, p->kw, p->sw, 1, p->pad_l, p->pad_r);

	for (size_t i = b; i < e; i++)
		for (int oy = 0; oy < oh; oy++)
			for (int ox = 0; ox < ow; ox++)
			{
				const float *g = dy + (((size_t) i * oh + oy) * ow + ox) * c;

				for (int c0 = 0; c0 < c; c0 += CHUNK)
				{
					int			cn = c - c0 < CHUNK ? c - c0 : CHUNK;
					float		best[CHUNK];
					size_t		arg[CHUNK];

					for (int j = 0; j < cn; j++)
					{
						best[j] = -FLT_MAX;
						arg[j] = (size_t) -1;
					}
					for (int ky = 0; ky < p->kh; ky++)
					{
						int			iy = oy * p->sh - p->pad_t + ky;

						if (iy < 0 || iy >= h)
							continue;
						for (int kx = 0; kx < p->kw; kx++)
						{
							int			ix = ox * p->sw - p->pad_l + kx;
							size_t		base;

							if (ix < 0 || ix >= w)
								continue;
							base = (((size_t) i * h + iy) * w + ix) * c + c0;
							for (int j = 0; j < cn; j++)
								if (x[base + j] > best[j] || arg[j] == (size_t) -1)
								{
									best[j] = x[base + j];
									arg[j] = base + j;
								}
						}
					}
					for (int j = 0; j < cn; j++)
						if (arg[j] != (size_t) -1)
							dx[arg[j]] += g[c0 + j];
				}
			}
}

/*
 * Max pooling backward: each output's gradient goes to its window's first
 * maximum; from y (the forward's output) when given, else found in x.
 */
void
mt_cpu_max_pool2d_backward(const mt_pool_desc *p, int n, int h, int w, int c,
						   const float *x, const float *y, const float *dy, float *dx)
{
	image_bw_args a = {.p = p, .h = h, .w = w, .c = c, .x = x, .y = y, .dy = dy, .dx = dx};

	mt_parallel_for((size_t) n, 1, y != NULL ? max_pool_backward_y_task : max_pool_backward_task, &a);
}

/* Average pooling backward, with the divisor the forward pass used. */
void
mt_cpu_avg_pool2d_backward(const mt_pool_desc *p, int n, int h, int w, int c,
						   const float *dy, float *dx)
{
	int			oh = mt_out_size(h, p->kh, p->sh, 1, p->pad_t, p->pad_b);
	int			ow = mt_out_size(w, p->kw, p->sw, 1, p->pad_l, p->pad_r);

	for (int i = 0; i < n; i++)
		for (int oy = 0; oy < oh; oy++)
			for (int ox = 0; ox < ow; ox++)
			{
				const float *g = dy + (((size_t) i * oh + oy) * ow + ox) * c;
				int			y0 = oy * p->sh - p->pad_t,
							x0 = ox * p->sw - p->pad_l;
				int			count = 0;
				float		inv;

				if (p->count_include_pad)
				{
					int			y1 = y0 + p->kh,
								x1 = x0 + p->kw;

					if (y1 > h + p->pad_b)
						y1 = h + p->pad_b;
					if (x1 > w + p->pad_r)
						x1 = w + p->pad_r;
					count = (y1 - y0) * (x1 - x0);
				}
				else
					for (int ky = 0; ky < p->kh; ky++)
						for (int kx = 0; kx < p->kw; kx++)
							count += (y0 + ky >= 0 && y0 + ky < h && x0 + kx >= 0 && x0 + kx < w);
				if (count <= 0)
					continue;
				inv = 1.0f / (float) count;
				for (int ky = 0; ky < p->kh; ky++)
				{
					int			iy = y0 + ky;

					if (iy < 0 || iy >= h)
						continue;
					for (int kx = 0; kx < p->kw; kx++)
					{
						int			ix = x0 + kx;
						float	   *out;

						if (ix < 0 || ix >= w)
							continue;
						out = dx + (((size_t) i * h + iy) * w + ix) * c;
						for (int j = 0; j < c; j++)
							out[j] += g[j] * inv;
					}
				}
			}
}

/* Global average pooling backward: dy / (h * w) to every position. */
MT_HOT void
mt_cpu_global_avg_pool_backward(int n, int h, int w, int c, const float *dy,
								float *dx)
{
	size_t		hw = (size_t) h * w;
	float		inv = 1.0f / (float) hw;

	for (int i = 0; i < n; i++)
	{
		const float *g = dy + (size_t) i * c;

		for (size_t p = 0; p < hw; p++)
		{
			float	   *out = dx + ((size_t) i * hw + p) * c;

			for (int j = 0; j < c; j++)
				out[j] += g[j] * inv;
		}
	}
}

/* Linear layer backward: dx += dy W, dw += dy^T x, db += column sums of dy. */
void
mt_cpu_linear_backward(int n, int in, int out, const float *x, const float *w,
					   const float *dy, float *dx, float *dw, float *db)
{
	if (dx != NULL)
		mt_sgemm(0, 0, n, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
	if (dw != NULL)
		mt_sgemm(1, 0, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
	if (db != NULL)
		mt_cpu_bias_backward((size_t) n, out, dy, db);
}

typedef struct accumulate_args
{
	const float *src;
	float	   *dst;
} accumulate_args;

MT_HOT static void
accumulate_task(void *p, size_t b, size_t e)
{
	accumulate_args *a = p;
	const float *restrict src = a->src;
	float	   *restrict dst = a->dst;

	for (size_t i = b; i < e; i++)
		dst[i] += src[i];
}

/* dst += src, elementwise over the pool (the same sums however it splits) */
void
mt_cpu_accumulate(size_t len, const float *src, float *dst)
{
	accumulate_args a = {src, dst};

	mt_parallel_for(len, 1 << 15, accumulate_task, &a);
}

/* avg = d * avg + e * p, elementwise (the moving average of train.h's mt_ema) */
void
mt_cpu_ema_update(size_t len, float *avg, const float *p, float d, float e)
{
	float	   *restrict a = avg;
	const float *restrict w = p;

	for (size_t i = 0; i < len; i++)
		a[i] = d * a[i] + e * w[i];
}

/* Exchange a and b, elementwise. */
void
mt_cpu_swap(size_t len, float *a, float *b)
{
	for (size_t i = 0; i < len; i++)
	{
		float		t = a[i];

		a[i] = b[i];
		b[i] = t;
	}
}

/* torch.optim.SGD's update (dampening 0), in float as torch does. */
MT_HOT static void
sgd_update_serial(size_t len, float *p, const float *g, float *buf, float lr,
				  float momentum, float weight_decay, int nesterov, int first)
{
	for (size_t i = 0; i < len; i++)
	{
		float		d = g[i];

		if (weight_decay != 0.0f)
			d = d + weight_decay * p[i];
		if (buf != NULL)
		{
			buf[i] = first ? d : momentum * buf[i] + d;
			d = nesterov ? d + momentum * buf[i] : buf[i];
		}
		p[i] = p[i] + (-lr) * d;
	}
}

/* torch.optim.Adam / AdamW's update (no amsgrad), in float as torch does. */
MT_HOT static void
adam_update_serial(size_t len, float *p, const float *g, float *m1, float *m2,
				   float beta1, float beta2, float eps, int decoupled, float weight_decay,
				   float step_size, float bc2_sqrt, float shrink)
{
	for (size_t i = 0; i < len; i++)
	{
		float		gi = g[i];
		float		denom;

		if (decoupled)
			p[i] = p[i] * shrink;
		else if (weight_decay != 0.0f)
			gi = gi + weight_decay * p[i];
		m1[i] = m1[i] * beta1 + gi * (1.0f - beta1);
		m2[i] = m2[i] * beta2 + gi * gi * (1.0f - beta2);
		denom = sqrtf(m2[i]) / bc2_sqrt + eps;
		p[i] = p[i] + (-step_size) * (m1[i] / denom);
	}
}

/* The optimizer updates over the pool (elementwise: the same bits however split). */
typedef struct optim_args
{
	float	   *p;
	const float *g;
	float	   *s1,
			   *s2;
	float		lr,
				momentum,
				weight_decay,
				beta1,
				beta2,
				eps,
				step_size,
				bc2_sqrt,
				shrink;
	int			nesterov,
				first,
				decoupled;
} optim_args;

static void
sgd_task(void *arg, size_t b, size_t e)
{
	optim_args *a = arg;

	sgd_update_serial(e - b, a->p + b, a->g + b, a->s1 ? a->s1 + b : NULL, a->lr, a->momentum,
					  a->weight_decay, a->nesterov, a->first);
}

void
mt_cpu_sgd_update(size_t len, float *p, const float *g, float *buf, float lr,
				  float momentum, float weight_decay, int nesterov, int first)
{
	optim_args	a = {.p = p, .g = g, .s1 = buf, .lr = lr, .momentum = momentum,
	.weight_decay = weight_decay, .nesterov = nesterov, .first = first};

	mt_parallel_for(len, 1 << 15, sgd_task, &a);
}

static void
adam_task(void *arg, size_t b, size_t e)
{
	optim_args *a = arg;

	adam_update_serial(e - b, a->p + b, a->g + b, a->s1 + b, a->s2 + b, a->beta1, a->beta2,
					   a->eps, a->decoupled, a->weight_decay, a->step_size, a->bc2_sqrt,
					   a->shrink);
}

void
mt_cpu_adam_update(size_t len, float *p, const float *g, float *m1, float *m2,
				   float lr, float beta1, float beta2, float eps,
				   float weight_decay, int decoupled, int64_t step)
{
	double		bc1 = 1.0 - pow((double) beta1, (double) step);
	double		bc2 = 1.0 - pow((double) beta2, (double) step);
	optim_args	a = {.p = p, .g = g, .s1 = m1, .s2 = m2, .beta1 = beta1, .beta2 = beta2,
		.eps = eps, .weight_decay = weight_decay, .decoupled = decoupled,
		.step_size = (float) ((double) lr / bc1), .bc2_sqrt = (float) sqrt(bc2),
	.shrink = (float) (1.0 - (double) lr * weight_decay)};

	mt_parallel_for(len, 1 << 15, adam_task, &a);
}

/* Batch-norm coefficients in training (ops.h): train.c's loops, moved here. */
void
mt_cpu_bn_train_coeffs(int c, const float *g, const float *beta, float *rm, float *rv,
					   float eps, float mom, double unbias, float *mean, float *var,
					   float *scale, float *shift)
{
	if (mean != NULL)
	{
		for (int j = 0; j < c; j++)
		{
			double		is = 1.0 / sqrt((double) var[j] + eps);

			scale[j] = (float) (g[j] * is);
			shift[j] = (float) (beta[j] - (double) mean[j] * g[j] * is);
			rm[j] = (1.0f - mom) * rm[j] + mom * mean[j];
			rv[j] = (1.0f - mom) * rv[j] + mom * (float) (var[j] * unbias);
			var[j] = (float) is;
		}
		return;
	}
	for (int j = 0; j < c; j++)
	{
		double		s = (double) g[j] / sqrt((double) rv[j] + eps);

		scale[j] = (float) s;
		if (shift != NULL)
			shift[j] = (float) ((double) beta[j] - (double) rm[j] * s);
	}
}

/*
 * One row of the cross-entropy (train.c's mt_loss_cross_entropy): adds its terms to *total (one by one, in
 * class order) and writes its gradient to d (may be NULL); p holds 2c
 * doubles of scratch.
 */
void
mt_cpu_ce_row(const float *z, int c, int label, const float *class_weights, double gamma,
	   double eps, double norm, double *p, double *total, float *d)
{
	double	   *g = p + c;
	double		mx = z[0],
				sum = 0.0,
				lse,
				sg = 0.0;

	for (int j = 1; j < c; j++)
		mx = z[j] > mx ? z[j] : mx;
	for (int j = 0; j < c; j++)
		sum += exp((double) z[j] - mx);
	lse = mx + log(sum);
	for (int j = 0; j < c; j++)
	{
		double		logp = (double) z[j] - lse;
		double		q = (1.0 - eps) * (j == label) + eps / c;
		double		s = q * (class_weights ? class_weights[j] : 1.0) / norm;
		double		l,
					dl;

		p[j] = exp(logp);
		if (gamma == 0.0)
		{
			l = -logp;
			dl = -1.0;
		}
		else
		{
			/* L = -(1-p)^g log p; dL/dz_k = (d_jk - p_k) * dl */
			double		om = -expm1(logp);
			double		omg = pow(om, gamma);

			l = -omg * logp;
			dl = om > 0.0 ? gamma * p[j] * pow(om, gamma - 1.0) * logp - omg : 0.0;
		}
		*total += s * l;
		g[j] = s * dl;			/* s_j * dl_j */
		sg += g[j];
	}
	if (d != NULL)
		for (int j = 0; j < c; j++)
			d[j] = (float) (g[j] - p[j] * sg);
}

/* The CPU backend's cross_entropy entry (ops.h): the rows' shares apart. */
int
mt_cpu_cross_entropy(int n, int c, const float *logits, const int *labels,
					 const float *cw, float gamma, float eps, double norm,
					 double *row_loss, float *dlogits, mt_err *err)
{
	double	   *p = mt_malloc(sizeof(double) * 2 * (size_t) c);

	if (p == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in loss");
	for (int i = 0; i < n; i++)
	{
		row_loss[i] = 0.0;
		mt_cpu_ce_row(logits + (size_t) i * c, c, labels[i], cw, gamma, eps, norm, p,
			   &row_loss[i], dlogits + (size_t) i * c);
	}
	mt_free(p);
	return MT_OK;
}

/* Softmax of one pixel's c logits into p (double); returns log sum exp z. */
static double
softmax_pixel(const float *z, int c, double *p)
{
	double		mx = z[0],
				sum = 0.0;

	for (int j = 1; j < c; j++)
		mx = z[j] > mx ? z[j] : mx;
	for (int j = 0; j < c; j++)
	{
		p[j] = exp((double) z[j] - mx);
		sum += p[j];
	}
	for (int j = 0; j < c; j++)
		p[j] /= sum;
	return mx + log(sum);
}

/* The CPU backend's seg_loss_sums entry (ops.h): pixel by pixel, in double. */
int
mt_cpu_seg_loss_sums(size_t pixels, int c, const float *logits, const uint8_t *masks,
					 const float *cw, double *sums, mt_err *err)
{
	double	   *p = mt_malloc(sizeof(double) * c);

	if (p == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in the segmentation loss");
	memset(sums, 0, sizeof(double) * MT_SEG_SUMS(c));
	for (size_t i = 0; i < pixels; i++)
	{
		const float *z = logits + i * c;
		int			g = masks[i],
					best = 0;
		double		wg;

		if (g == 255)
			continue;
		wg = cw ? cw[g] : 1.0;
		/* -log p_g = lse(z) - z_g, from the logits, not the rounded probability */
		sums[0] += wg * (softmax_pixel(z, c, p) - (double) z[g]);
		sums[1] += wg;
		sums[2] += 1.0;
		for (int k = 1; k < c; k++)
			if (z[k] > z[best])
				best = k;
		sums[3] += best == g;
		for (int k = 1; k < c; k++)
		{
			double	   *s = sums + 4 + 3 * (size_t) (k - 1);

			s[1] += p[k];
			if (k == g)
			{
				s[0] += p[k];
				s[2] += 1.0;
			}
		}
	}
	mt_free(p);
	return MT_OK;
}

/* The CPU backend's seg_loss_grad entry (ops.h). */
int
mt_cpu_seg_loss_grad(size_t pixels, int c, const float *logits, const uint8_t *masks,
					 const float *cw, const double *coef, float *dlogits, mt_err *err)
{
	double	   *p = mt_malloc(sizeof(double) * 2 * c),
			   *dp;

	if (p == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in the segmentation loss");
	dp = p + c;
	for (size_t i = 0; i < pixels; i++)
	{
		int			g = masks[i];
		double		wg,
					sdp = 0.0;
		float	   *d = dlogits + i * c;

		if (g == 255)
		{
			memset(d, 0, sizeof(float) * c);
			continue;
		}
		(void) softmax_pixel(logits + i * c, c, p);
		wg = cw ? cw[g] : 1.0;
		/*
		 * Dice: dD_k/dp_ik = (2 g_ik den_k - num_k) / den_k^2, and the loss
		 * is -dice_weight / (c - 1) sum_k D_k; then through the softmax
		 */
		dp[0] = 0.0;
		for (int k = 1; k < c; k++)
		{
			double		den = coef[2 + 2 * (size_t) (k - 1)];
			double		num = coef[3 + 2 * (size_t) (k - 1)];

			dp[k] = coef[1] * (2.0 * (k == g) * den - num) / (den * den);
			sdp += p[k] * dp[k];
		}
		for (int j = 0; j < c; j++)
			d[j] = (float) (coef[0] * wg * (p[j] - (j == g)) + p[j] * (dp[j] - sdp));
	}
	mt_free(p);
	return MT_OK;
}

/* The segmentation loss and its gradient's coefficients from the sums (see ops.h). */
int
mt_seg_loss_finish(const double *sums, int c, float ce_weight, float dice_weight,
				   float *loss_out, double *coef, mt_err *err)
{
	double		norm = sums[1],
				ce,
				dice = 0.0;
	int			valid = sums[2] > 0.0;

	if (ce_weight > 0.0f && valid && norm <= 0.0)
		return mt_seterr(err, MT_ERR_INVALID,
						 "the class weights of the batch's labelled pixels sum to zero");
	/* no labelled pixel: nothing to learn from, loss 0 (torch would give NaN) */
	ce = valid ? sums[0] / norm : 0.0;
	coef[0] = valid ? (double) ce_weight / norm : 0.0;
	coef[1] = -(double) dice_weight / (c - 1);
	for (int k = 1; k < c; k++)
	{
		const double *s = sums + 4 + 3 * (size_t) (k - 1);
		double		den = s[1] + s[2] + 1.0;
		double		num = 2.0 * s[0] + 1.0;

		dice += num / den;
		coef[2 + 2 * (size_t) (k - 1)] = den;
		coef[3 + 2 * (size_t) (k - 1)] = num;
	}
	dice = valid ? 1.0 - dice / (c - 1) : 0.0;
	if (loss_out != NULL)
		*loss_out = (float) ((double) ce_weight * ce + (double) dice_weight * dice);
	return MT_OK;
}
