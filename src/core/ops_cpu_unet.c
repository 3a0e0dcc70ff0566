/*
 * ops_cpu_unet.c - CPU kernels for the U-Net decoder: bilinear upsampling
 * (align_corners=False) and the transposed convolution, with their backward
 * passes.
 *
 * The transposed convolution is computed through the convolution d it is
 * the transpose of (ops.h): its forward pass is one GEMM per image,
 * col = x W^T (h w rows of kh kw cout_t values), then a col2im that
 * gathers, for every output position, the columns of the input positions
 * whose window covers it.  Gathering (rather than scattering each input's
 * window) lets the output rows be split over the thread pool without two
 * threads ever writing the same value.  Its gradient with respect to the
 * input is d's own forward convolution (im2col + GEMM, added into dx).
 *
 * Bilinear upsampling's backward is gathered the same way: each task owns
 * rows of dx and collects the output rows that read them.
 */
#include "ops.h"
#include "ops_cpu_internal.h"
#include "blas.h"
#include "pool.h"

#include <limits.h>
#include <string.h>

/* Parts of at least this many floats of work per thread (as ops_cpu.c). */
#define MT_PAR_MIN 16384

int
mt_conv_transpose_out_size(int in, int k, int s, int pad_before, int pad_after)
{
	int64_t		out = (int64_t) (in - 1) * s - pad_before - pad_after + k;

	if (in <= 0 || s <= 0 || k <= 0 || out <= 0 || out > INT_MAX)
		return 0;
	return (int) out;
}

/*
 * Source index of output position o for factor f (torch's
 * area_pixel_compute_source_index with scale 1/f, align_corners=False,
 * computed in float as torch's CPU kernel does): the lower source index,
 * the upper one (clamped to in - 1) and the upper one's weight.
 */
static inline void
bilinear_source(int o, int f, int in, int *i0, int *i1, float *l1)
{
	float		scale = (float) (1.0 / f);
	float		src = scale * ((float) o + 0.5f) - 0.5f;
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

typedef struct up_args
{
	int			h,
				w,
				c,
				f;
	const float *x;
	float	   *y;
} up_args;

/* Output rows [b, e) of the batch (row r: image r / oh, row r % oh). */
static void
upsample_task(void *p, size_t b, size_t e)
{
	up_args    *a = p;
	int			oh = a->h * a->f,
				ow = a->w * a->f,
				c = a->c;

	for (size_t r = b; r < e; r++)
	{
		int			img = (int) (r / oh),
					oy = (int) (r % oh),
					y0,
					y1;
		float		ly1,
					ly0;
		const float *row0,
				   *row1;
		float	   *out = a->y + r * ow * c;

		bilinear_source(oy, a->f, a->h, &y0, &y1, &ly1);
		ly0 = 1.0f - ly1;
		row0 = a->x + ((size_t) img * a->h + y0) * a->w * c;
		row1 = a->x + ((size_t) img * a->h + y1) * a->w * c;
		for (int ox = 0; ox < ow; ox++)
		{
			int			x0,
						x1;
			float		lx1,
						lx0;
			const float *p00,
					   *p01,
					   *p10,
					   *p11;
			float	   *o = out + (size_t) ox * c;

			bilinear_source(ox, a->f, a->w, &x0, &x1, &lx1);
			lx0 = 1.0f - lx1;
			p00 = row0 + (size_t) x0 * c;
			p01 = row0 + (size_t) x1 * c;
			p10 = row1 + (size_t) x0 * c;
			p11 = row1 + (size_t) x1 * c;
			for (int j = 0; j < c; j++)
				o[j] = ly0 * (lx0 * p00[j] + lx1 * p01[j]) +
					ly1 * (lx0 * p10[j] + lx1 * p11[j]);
		}
	}
}

/* y (n x hf x wf x c) = bilinear upsampling of x (n x h x w x c). */
void
mt_cpu_upsample_bilinear(int n, int h, int w, int c, int f, const float *x, float *y)
{
	up_args		a = {h, w, c, f, x, y};
	size_t		row = (size_t) w * f * c;

	mt_parallel_for((size_t) n * h * f, MT_PAR_MIN / (row > 0 ? row : 1) + 1,
					upsample_task, &a);
}

/* dx rows [b, e) of the batch: every output row and column that reads them. */
static void
upsample_backward_task(void *p, size_t b, size_t e)
{
	up_args    *a = p;			/* x: dy, y: dx */
	int			oh = a->h * a->f,
				ow = a->w * a->f,
				c = a->c;

	for (size_t r = b; r < e; r++)
	{
		int			img = (int) (r / a->h),
					iy = (int) (r % a->h);
		float	   *dxr = a->y + r * a->w * c;

		/* output rows oy read source rows within one of (oy + 0.5) / f */
		int			lo = (iy - 1) * a->f,
					hi = (iy + 2) * a->f;

		if (lo < 0)
			lo = 0;
		if (hi > oh)
			hi = oh;
		for (int oy = lo; oy < hi; oy++)
		{
			int			y0,
						y1;
			float		ly1,
						wy = 0.0f;
			const float *g = a->x + ((size_t) img * oh + oy) * ow * c;

			bilinear_source(oy, a->f, a->h, &y0, &y1, &ly1);
			if (y0 == iy)
				wy += 1.0f - ly1;
			if (y1 == iy)
				wy += ly1;
			if (y0 != iy && y1 != iy)
				continue;
			for (int ox = 0; ox < ow; ox++)
			{
				int			x0,
							x1;
				float		lx1;
				const float *go = g + (size_t) ox * c;
				float	   *d0,
						   *d1;
				float		w0,
							w1;

				bilinear_source(ox, a->f, a->w, &x0, &x1, &lx1);
				w0 = wy * (1.0f - lx1);
				w1 = wy * lx1;
				d0 = dxr + (size_t) x0 * c;
				d1 = dxr + (size_t) x1 * c;
				for (int j = 0; j < c; j++)
					d0[j] += w0 * go[j];
				for (int j = 0; j < c; j++)
					d1[j] += w1 * go[j];
			}
		}
	}
}

/* dx (n x h x w x c) += adjoint of the upsampling applied to dy. */
void
mt_cpu_upsample_bilinear_backward(int n, int h, int w, int c, int f,
								  const float *dy, float *dx)
{
	up_args		a = {h, w, c, f, dy, dx};
	size_t		row = (size_t) w * f * f * c * 3;

	mt_parallel_for((size_t) n * h, MT_PAR_MIN / (row > 0 ? row : 1) + 1,
					upsample_backward_task, &a);
}

typedef struct tconv_args
{
	const mt_conv_desc *d;
	int			h,
				w,
				oh,
				ow;
	const float *col;			/* h w x K, K = kh kw d->cin, (ky, kx, c) */
	const float *bias;
	float	   *y;				/* one image, oh x ow x d->cin */
} tconv_args;

/* col2im by gathering: output rows [b, e) of one image, bias and activation. */
static void
col2im_task(void *p, size_t b, size_t e)
{
	tconv_args *a = p;
	const mt_conv_desc *d = a->d;
	int			c = d->cin;
	size_t		kcols = (size_t) d->kh * d->kw * c;

	for (int oy = (int) b; oy < (int) e; oy++)
	{
		for (int ox = 0; ox < a->ow; ox++)
		{
			float	   *out = a->y + ((size_t) oy * a->ow + ox) * c;

			if (a->bias != NULL)
				memcpy(out, a->bias, sizeof(float) * c);
			else
				memset(out, 0, sizeof(float) * c);
			for (int ky = 0; ky < d->kh; ky++)
			{
				int			ty = oy + d->pad_t - ky;
				int			iy = ty / d->sh;

				if (ty < 0 || ty % d->sh != 0 || iy >= a->h)
					continue;
				for (int kx = 0; kx < d->kw; kx++)
				{
					int			tx = ox + d->pad_l - kx;
					int			ix = tx / d->sw;
					const float *src;

					if (tx < 0 || tx % d->sw != 0 || ix >= a->w)
						continue;
					src = a->col + ((size_t) iy * a->w + ix) * kcols +
						((size_t) ky * d->kw + kx) * c;
					for (int j = 0; j < c; j++)
						out[j] += src[j];
				}
			}
		}
		if (d->act != MT_ACT_NONE)
			mt_cpu_act_inplace((size_t) a->ow * c, d->act, a->y + (size_t) oy * a->ow * c);
	}
}

/* Transposed convolution (see ops.h). */
int
mt_cpu_conv_transpose2d(const mt_conv_desc *d, int n, int h, int w,
						const float *x, const float *packed_w, const float *bias,
						float *y, float *scratch, mt_err *err)
{
	int			oh = mt_conv_transpose_out_size(h, d->kh, d->sh, d->pad_t, d->pad_b);
	int			ow = mt_conv_transpose_out_size(w, d->kw, d->sw, d->pad_l, d->pad_r);
	int			cx = d->cout,
				cy = d->cin;
	size_t		kcols = (size_t) d->kh * d->kw * cy;

	if (d->groups != 1 || d->dh != 1 || d->dw != 1 || oh <= 0 || ow <= 0)
		return mt_seterr(err, MT_ERR_UNSUPPORTED,
						 "transposed convolution with groups %d, dilation %dx%d on %dx%d",
						 d->groups, d->dh, d->dw, h, w);
	for (int i = 0; i < n; i++)
	{
		const float *xi = x + (size_t) i * h * w * cx;
		float	   *yi = y + (size_t) i * oh * ow * cy;

		if (mt_conv_scratch_size(d, oh, ow) == 0)
		{
			/* 1x1, stride 1, no padding: y = x W^T straight */
			mt_sgemm(0, 1, h * w, cy, cx, 1.0f, xi, cx, packed_w, cx, 0.0f, yi, cy);
			/* col2im of a 1x1 window is the identity: bias and act in place */
			if (bias != NULL)
				for (size_t r = 0; r < (size_t) oh * ow; r++)
					for (int j = 0; j < cy; j++)
						yi[r * cy + j] += bias[j];
			if (d->act != MT_ACT_NONE)
				mt_cpu_act_inplace((size_t) oh * ow * cy, d->act, yi);
			continue;
		}
		/* col (h w x K) = x (h w x cx) . W^T, W packed as K x cx */
		mt_sgemm(0, 1, h * w, (int) kcols, cx, 1.0f, xi, cx, packed_w, cx, 0.0f,
				 scratch, (int) kcols);
		{
			tconv_args	a = {d, h, w, oh, ow, scratch, bias, yi};
			size_t		row = (size_t) ow * d->kh * d->kw * cy / (d->sh * d->sw) + 1;

			mt_parallel_for(oh, MT_PAR_MIN / row + 1, col2im_task, &a);
		}
	}
	return MT_OK;
}

/* dx += the convolution d of dy: im2col of dy, then a GEMM adding into dx. */
int
mt_cpu_conv_transpose2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
									  const float *dy, const float *packed_w,
									  float *dx, float *scratch, mt_err *err)
{
	int			oh = mt_conv_transpose_out_size(h, d->kh, d->sh, d->pad_t, d->pad_b);
	int			ow = mt_conv_transpose_out_size(w, d->kw, d->sw, d->pad_l, d->pad_r);
	int			cx = d->cout,
				cy = d->cin;
	size_t		kcols = (size_t) d->kh * d->kw * cy;

	if (d->groups != 1 || d->dh != 1 || d->dw != 1 || oh <= 0 || ow <= 0)
		return mt_seterr(err, MT_ERR_UNSUPPORTED,
						 "transposed convolution with groups %d, dilation %dx%d on %dx%d",
						 d->groups, d->dh, d->dw, h, w);
	/* d maps oh x ow to h x w exactly (no output padding) */
	if (mt_out_size(oh, d->kh, d->sh, 1, d->pad_t, d->pad_b) != h ||
		mt_out_size(ow, d->kw, d->sw, 1, d->pad_l, d->pad_r) != w)
		return mt_seterr(err, MT_ERR_INTERNAL, "transposed convolution sizes do not invert");
	for (int i = 0; i < n; i++)
	{
		const float *gi = dy + (size_t) i * oh * ow * cy;
		float	   *di = dx + (size_t) i * h * w * cx;
		const float *col = gi;

		if (mt_conv_scratch_size(d, oh, ow) != 0)
		{
			mt_cpu_im2col(d, oh, ow, h, w, 0, gi, scratch);
			col = scratch;
		}
		mt_sgemm(0, 0, h * w, cx, (int) kcols, 1.0f, col, (int) kcols, packed_w, cx,
				 1.0f, di, cx);
	}
	return MT_OK;
}
