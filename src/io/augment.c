/*
 * augment.c - random resized crop, flip, rotation, brightness and contrast,
 * of an image alone or of an image and its mask under the same draw.
 */
#include "augment.h"
#include "../core/ops_cpu_internal.h"
#include "../core/pool.h"
#include "mask.h"

#include <math.h>
#include <string.h>

int
mt_augment_enabled(const mt_augment *a)
{
	return a != NULL && (a->hflip || a->rotate_deg > 0 || a->brightness > 0 ||
						 a->contrast > 0 || a->crop_min_area < 1.0f);
}

void
mt_normalize_u8(const uint8_t *src, size_t n, const float mean[3],
				const float std[3], float *dst)
{
	float		scale[3],
				shift[3];

	for (int c = 0; c < 3; c++)
	{
		scale[c] = 1.0f / (255.0f * std[c]);
		shift[c] = -mean[c] / std[c];
	}
	for (size_t i = 0; i < n; i++)
		for (int c = 0; c < 3; c++)
			dst[i * 3 + c] = src[i * 3 + c] * scale[c] + shift[c];
}

/* Bilinear sample of channel-interleaved bytes at (x, y) pixel-centre coordinates; 0 outside. */
static inline void
sample(const uint8_t *src, int size, float x, float y, float out[3])
{
	int			x0 = (int) floorf(x),
				y0 = (int) floorf(y);
	float		fx = x - x0,
				fy = y - y0;

	out[0] = out[1] = out[2] = 0.0f;
	for (int dy = 0; dy < 2; dy++)
		for (int dx = 0; dx < 2; dx++)
		{
			int			xi = x0 + dx,
						yi = y0 + dy;
			float		w = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy);
			const uint8_t *p;

			if (xi < 0 || yi < 0 || xi >= size || yi >= size || w == 0.0f)
				continue;
			p = src + ((size_t) yi * size + xi) * 3;
			out[0] += w * p[0];
			out[1] += w * p[1];
			out[2] += w * p[2];
		}
}

/*
 * One random draw of the augmentations.  The geometric part is an affine map
 * from output pixel centres to source coordinates: crop window, then flip,
 * then rotation about the window's centre.
 */
typedef struct aug_draw
{
	double		cw,				/* crop window in source pixels */
				ch,
				cx0,
				cy0;
	int			flip;
	double		cosr,
				sinr,
				ccx,			/* centre of the crop window */
				ccy;
	double		bright,
				contrast;
} aug_draw;

/*
 * Draw every random choice, in a fixed order (crop, flip, rotation,
 * brightness, contrast) so a seed gives the same augmentation whether or
 * not a mask comes along.
 */
static void
draw_augmentation(const mt_augment *a, int size, mt_rng *rng, aug_draw *d)
{
	double		theta = 0;

	d->cw = size;
	d->ch = size;
	d->cx0 = 0;
	d->cy0 = 0;
	d->flip = 0;
	d->bright = 1;
	d->contrast = 1;
	if (a->crop_min_area < 1.0f)
	{
		double		area = a->crop_min_area + (1.0 - a->crop_min_area) * mt_rng_uniform(rng);
		double		logr = log(3.0 / 4.0) + (log(4.0 / 3.0) - log(3.0 / 4.0)) * mt_rng_uniform(rng);
		double		ratio = exp(logr);

		d->cw = fmin(size, size * sqrt(area * ratio));
		d->ch = fmin(size, size * sqrt(area / ratio));
		d->cx0 = (size - d->cw) * mt_rng_uniform(rng);
		d->cy0 = (size - d->ch) * mt_rng_uniform(rng);
	}
	if (a->hflip)
		d->flip = mt_rng_uniform(rng) < 0.5;
	if (a->rotate_deg > 0)
		theta = (2 * mt_rng_uniform(rng) - 1) * a->rotate_deg * M_PI / 180.0;
	if (a->brightness > 0)
		d->bright = 1 + (2 * mt_rng_uniform(rng) - 1) * a->brightness;
	if (a->contrast > 0)
		d->contrast = 1 + (2 * mt_rng_uniform(rng) - 1) * a->contrast;
	d->cosr = cos(theta);
	d->sinr = sin(theta);
	d->ccx = d->cx0 + d->cw / 2;
	d->ccy = d->cy0 + d->ch / 2;
}

/* Source coordinates (pixel units, centres at +0.5) of output pixel (x, y). */
static inline void
map_pixel(const aug_draw *d, int size, int x, int y, double *rx, double *ry)
{
	double		u = (x + 0.5) / size,
				v = (y + 0.5) / size;
	double		sx,
				sy;

	if (d->flip)
		u = 1 - u;
	sx = d->cx0 + u * d->cw - d->ccx;
	sy = d->cy0 + v * d->ch - d->ccy;
	*rx = d->ccx + d->cosr * sx - d->sinr * sy;
	*ry = d->ccy + d->sinr * sx + d->cosr * sy;
}

/* The image under a draw: bilinear, black outside, then brightness, contrast, normalisation. */
static void
render_image(const aug_draw *d, const uint8_t *src, int size, const float mean[3],
			 const float std[3], float *dst)
{
	double		gray = 0;
	size_t		npix = (size_t) size * size;

	for (int y = 0; y < size; y++)
		for (int x = 0; x < size; x++)
		{
			double		rx,
						ry;
			float	   *o = dst + ((size_t) y * size + x) * 3;

			map_pixel(d, size, x, y, &rx, &ry);
			sample(src, size, (float) (rx - 0.5), (float) (ry - 0.5), o);
			o[0] *= d->bright;
			o[1] *= d->bright;
			o[2] *= d->bright;
			gray += 0.299 * o[0] + 0.587 * o[1] + 0.114 * o[2];
		}
	gray /= npix;
	for (size_t i = 0; i < npix; i++)
		for (int c = 0; c < 3; c++)
		{
			double		v = dst[i * 3 + c];

			if (d->contrast != 1)
				v = (v - gray) * d->contrast + gray;
			v = v < 0 ? 0 : (v > 255 ? 255 : v);
			dst[i * 3 + c] = (float) ((v / 255.0 - mean[c]) / std[c]);
		}
}

/*
 * The mask under the same draw: nearest neighbour (the source pixel that
 * contains the mapped centre, so class indices are never blended), and
 * MT_MASK_IGNORE where that falls outside the source.
 */
static void
render_mask(const aug_draw *d, const uint8_t *src, int size, uint8_t *dst)
{
	for (int y = 0; y < size; y++)
		for (int x = 0; x < size; x++)
		{
			double		rx,
						ry;
			double		fx,
						fy;

			map_pixel(d, size, x, y, &rx, &ry);
			fx = floor(rx);
			fy = floor(ry);
			dst[(size_t) y * size + x] =
				(fx < 0 || fy < 0 || fx >= size || fy >= size) ? MT_MASK_IGNORE :
				src[(size_t) fy * size + (size_t) fx];
		}
}

/* A draw as a row of numbers (augment.h) and back. */
static void
draw_to_params(const aug_draw *d, double *p)
{
	p[0] = d->cx0;
	p[1] = d->cy0;
	p[2] = d->cw;
	p[3] = d->ch;
	p[4] = d->flip;
	p[5] = d->cosr;
	p[6] = d->sinr;
	p[7] = d->ccx;
	p[8] = d->ccy;
	p[9] = d->bright;
	p[10] = d->contrast;
}

static void
params_to_draw(const double *p, aug_draw *d)
{
	d->cx0 = p[0];
	d->cy0 = p[1];
	d->cw = p[2];
	d->ch = p[3];
	d->flip = p[4] != 0;
	d->cosr = p[5];
	d->sinr = p[6];
	d->ccx = p[7];
	d->ccy = p[8];
	d->bright = p[9];
	d->contrast = p[10];
}

void
mt_augment_draw_params(const mt_augment *a, int m, int size, mt_rng *rng, double *params)
{
	static const mt_augment none = {0, 0, 0, 0, 1.0f};
	int			on = a != NULL && mt_augment_enabled(a);

	for (int i = 0; i < m; i++)
	{
		aug_draw	d;

		/* switched off: the identity, drawing nothing */
		draw_augmentation(on ? a : &none, size, rng, &d);
		draw_to_params(&d, params + (size_t) i * MT_AUG_PARAMS);
	}
}

void
mt_augment_render(const uint8_t *src, int size, const double *params, const float mean[3],
				  const float std[3], float *dst)
{
	aug_draw	d;

	params_to_draw(params, &d);
	render_image(&d, src, size, mean, std, dst);
}

void
mt_augment_render_mask(const uint8_t *src, int size, const double *params, uint8_t *dst)
{
	aug_draw	d;

	if (params == NULL)
	{
		memcpy(dst, src, (size_t) size * size);
		return;
	}
	params_to_draw(params, &d);
	render_mask(&d, src, size, dst);
}

/* The CPU backend's augment_masks entry (ops.h): mask by mask. */
int
mt_cpu_augment_masks(int m, int size, const uint8_t *src, const double *params, uint8_t *dst,
					 mt_err *err)
{
	size_t		px = (size_t) size * size;

	(void) err;
	for (int i = 0; i < m; i++)
		mt_augment_render_mask(src + px * i, size, params ? params + (size_t) MT_AUG_PARAMS * i : NULL,
							   dst + px * i);
	return MT_OK;
}

/* The CPU backend's augment_images entry (ops.h): image by image, on the calling thread. */
int
mt_cpu_augment_images(int m, int size, const uint8_t *src, const double *params,
					  const float mean[3], const float std[3], float *dst, mt_err *err)
{
	size_t		px = (size_t) size * size;

	(void) err;
	for (int i = 0; i < m; i++)
		if (params != NULL)
			mt_augment_render(src + px * 3 * i, size, params + (size_t) MT_AUG_PARAMS * i, mean, std,
							  dst + px * 3 * i);
		else
			mt_normalize_u8(src + px * 3 * i, px, mean, std, dst + px * 3 * i);
	return MT_OK;
}

void
mt_augment_image(const uint8_t *src, int size, const mt_augment *a, mt_rng *rng,
				 const float mean[3], const float std[3], float *dst)
{
	aug_draw	d;

	draw_augmentation(a, size, rng, &d);
	render_image(&d, src, size, mean, std, dst);
}

void
mt_augment_pair(const uint8_t *src, const uint8_t *mask_src, int size,
				const mt_augment *a, mt_rng *rng, const float mean[3],
				const float std[3], float *dst, uint8_t *mask_dst)
{
	aug_draw	d;

	draw_augmentation(a, size, rng, &d);
	render_image(&d, src, size, mean, std, dst);
	render_mask(&d, mask_src, size, mask_dst);
}

/*
 * A batch: every draw first, in image order from the one rng (so the
 * stream, and each image, is the same as m calls of mt_augment_image or
 * mt_augment_pair), then the rendering, which consumes no randomness, on the
 * engine's threads.  Chunks of AUG_CHUNK images keep the draws on the stack.
 */
#define AUG_CHUNK 64

typedef struct aug_batch_job
{
	const aug_draw *draws;		/* one per image of the chunk; NULL: normalise only */
	const uint8_t *const *srcs;
	const uint8_t *const *mask_srcs;
	int			size;
	const float *mean;
	const float *std;
	float	   *dst;			/* the chunk's first image */
	uint8_t    *mask_dst;
} aug_batch_job;

static void
aug_batch_range(void *arg, size_t begin, size_t end)
{
	const aug_batch_job *j = arg;
	size_t		hw = (size_t) j->size * j->size;

	for (size_t i = begin; i < end; i++)
	{
		if (j->draws == NULL)
			mt_normalize_u8(j->srcs[i], hw, j->mean, j->std, j->dst + hw * 3 * i);
		else
			render_image(&j->draws[i], j->srcs[i], j->size, j->mean, j->std, j->dst + hw * 3 * i);
		if (j->mask_srcs != NULL && j->draws != NULL)
			render_mask(&j->draws[i], j->mask_srcs[i], j->size, j->mask_dst + hw * i);
	}
}

void
mt_augment_batch(const uint8_t *const *srcs, const uint8_t *const *mask_srcs, int m, int size,
				 const mt_augment *a, mt_rng *rng, const float mean[3], const float std[3],
				 float *dst, uint8_t *mask_dst)
{
	aug_draw	draws[AUG_CHUNK];
	size_t		hw = (size_t) size * size;
	int			on = a != NULL && mt_augment_enabled(a);

	for (int s = 0; s < m; s += AUG_CHUNK)
	{
		int			n = m - s < AUG_CHUNK ? m - s : AUG_CHUNK;
		aug_batch_job j;

		if (on)
			for (int i = 0; i < n; i++)
				draw_augmentation(a, size, rng, &draws[i]);
		j.draws = on ? draws : NULL;
		j.srcs = srcs + s;
		j.mask_srcs = on && mask_srcs != NULL && mask_dst != NULL ? mask_srcs + s : NULL;
		j.size = size;
		j.mean = mean;
		j.std = std;
		j.dst = dst + hw * 3 * s;
		j.mask_dst = mask_dst != NULL ? mask_dst + hw * s : NULL;
		mt_parallel_for((size_t) n, 1, aug_batch_range, &j);
		/* without augmentation the masks are copied as they are */
		if (!on && mask_srcs != NULL && mask_dst != NULL)
			for (int i = 0; i < n; i++)
				memcpy(mask_dst + hw * (s + i), mask_srcs[s + i], hw);
	}
}
