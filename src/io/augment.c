/*
 * augment.c - random resized crop, flip, rotation, brightness and contrast.
 */
#include "augment.h"

#include <math.h>

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

void
mt_augment_image(const uint8_t *src, int size, const mt_augment *a, mt_rng *rng,
				 const float mean[3], const float std[3], float *dst)
{
	/* crop window in source pixels */
	double		cw = size,
				ch = size,
				cx0 = 0,
				cy0 = 0;
	int			flip = 0;
	double		theta = 0,
				bright = 1,
				contrast = 1;
	double		cosr,
				sinr,
				ccx,
				ccy;
	double		gray = 0;
	size_t		npix = (size_t) size * size;

	if (a->crop_min_area < 1.0f)
	{
		double		area = a->crop_min_area + (1.0 - a->crop_min_area) * mt_rng_uniform(rng);
		double		logr = log(3.0 / 4.0) + (log(4.0 / 3.0) - log(3.0 / 4.0)) * mt_rng_uniform(rng);
		double		ratio = exp(logr);

		cw = fmin(size, size * sqrt(area * ratio));
		ch = fmin(size, size * sqrt(area / ratio));
		cx0 = (size - cw) * mt_rng_uniform(rng);
		cy0 = (size - ch) * mt_rng_uniform(rng);
	}
	if (a->hflip)
		flip = mt_rng_uniform(rng) < 0.5;
	if (a->rotate_deg > 0)
		theta = (2 * mt_rng_uniform(rng) - 1) * a->rotate_deg * M_PI / 180.0;
	if (a->brightness > 0)
		bright = 1 + (2 * mt_rng_uniform(rng) - 1) * a->brightness;
	if (a->contrast > 0)
		contrast = 1 + (2 * mt_rng_uniform(rng) - 1) * a->contrast;

	cosr = cos(theta);
	sinr = sin(theta);
	ccx = cx0 + cw / 2;
	ccy = cy0 + ch / 2;
	for (int y = 0; y < size; y++)
		for (int x = 0; x < size; x++)
		{
			double		u = (x + 0.5) / size,
						v = (y + 0.5) / size;
			double		sx,
						sy,
						rx,
						ry;
			float	   *o = dst + ((size_t) y * size + x) * 3;

			if (flip)
				u = 1 - u;
			sx = cx0 + u * cw - ccx;
			sy = cy0 + v * ch - ccy;
			rx = ccx + cosr * sx - sinr * sy;
			ry = ccy + sinr * sx + cosr * sy;
			sample(src, size, (float) (rx - 0.5), (float) (ry - 0.5), o);
			o[0] *= bright;
			o[1] *= bright;
			o[2] *= bright;
			gray += 0.299 * o[0] + 0.587 * o[1] + 0.114 * o[2];
		}
	gray /= npix;
	for (size_t i = 0; i < npix; i++)
		for (int c = 0; c < 3; c++)
		{
			double		v = dst[i * 3 + c];

			if (contrast != 1)
				v = (v - gray) * contrast + gray;
			v = v < 0 ? 0 : (v > 255 ? 255 : v);
			dst[i * 3 + c] = (float) ((v / 255.0 - mean[c]) / std[c]);
		}
}
