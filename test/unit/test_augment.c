/*
 * test_augment.c - augmentation: identity when off, flips mirror exactly,
 * brightness scales, rotation by 0 and a full crop change nothing, the same
 * seed repeats, and outputs stay in the normalised range.  The image+mask
 * version: its image is mt_augment_image's for the same rng state, and the
 * mask moves with the image under flips, rotations and crops.  The batch
 * version: bit for bit a loop of the single-image calls from the same rng,
 * on several threads and across its chunks, and leaves the rng where the
 * loop does.
 *
 *   make unittest && test/bin/test_augment
 */
#include "io/augment.h"
#include "io/mask.h"
#include "core/ops.h"
#include "core/pool.h"
#include "mt_test.h"

#include <stdlib.h>
#include <string.h>

#define S 17
#define P 48

/*
 * The pair version against the image alone, on an image of two flat regions
 * (a disc of 200 on 20) whose mask is the disc thresholded: where the image
 * is exactly one region's value its four bilinear taps all lie in that
 * region, so the nearest pixel does too and the mask must agree.
 */
static void
test_pair(void)
{
	static const float mean[3] = {0.5f, 0.5f, 0.5f};
	static const float stdv[3] = {0.25f, 0.25f, 0.25f};
	static uint8_t img[P * P * 3],
				mask[P * P],
				mout[P * P];
	static float out[P * P * 3],
				out2[P * P * 3];
	mt_augment	cfgs[4] = {
		{1, 0, 0, 0, 1.0f},		/* flips only */
		{0, 30.0f, 0, 0, 1.0f},	/* rotation only */
		{1, 20.0f, 0.2f, 0.2f, 0.6f},	/* everything */
		{0, 0, 0, 0, 1.0f}		/* nothing */
	};
	int			identical = 1,
				same_state = 1,
				consistent = 1,
				checked = 0,
				ignore_seen = 0,
				flipped_exact = 1,
				fg_kept = 1;

	for (int y = 0; y < P; y++)
		for (int x = 0; x < P; x++)
		{
			int			in = (x - 20) * (x - 20) + (y - 26) * (y - 26) < 120;

			for (int c = 0; c < 3; c++)
				img[(y * P + x) * 3 + c] = in ? 200 : 20;
			mask[y * P + x] = img[(y * P + x) * 3] > 127;
		}
	for (int c = 0; c < 4; c++)
		for (int t = 0; t < 25; t++)
		{
			mt_rng		r1,
						r2;

			mt_rng_seed(&r1, (uint64_t) t, (uint64_t) c);
			r2 = r1;
			mt_augment_image(img, P, &cfgs[c], &r1, mean, stdv, out);
			mt_augment_pair(img, mask, P, &cfgs[c], &r2, mean, stdv, out2, mout);
			identical &= memcmp(out, out2, sizeof(out)) == 0;
			same_state &= memcmp(&r1, &r2, sizeof(r1)) == 0;
			for (int i = 0; i < P * P; i++)
			{
				/* back to the 0..255 scale before brightness/contrast (none in cfgs 0, 1, 3) */
				double		raw = (out2[i * 3] * stdv[0] + mean[0]) * 255.0;

				if (mout[i] == MT_MASK_IGNORE)
				{
					ignore_seen++;
					continue;
				}
				if (c == 2)
					continue;
				if (fabs(raw - 200) < 1e-3)
					consistent &= mout[i] == 1, checked++;
				else if (fabs(raw - 20) < 1e-3)
					consistent &= mout[i] == 0, checked++;
			}
			if (c == 0 || c == 3)
			{
				/* flips: the mask is the source or its exact mirror, nothing ignored */
				int			same = 1,
							mirror = 1;

				for (int y = 0; y < P; y++)
					for (int x = 0; x < P; x++)
					{
						same &= mout[y * P + x] == mask[y * P + x];
						mirror &= mout[y * P + x] == mask[y * P + P - 1 - x];
					}
				flipped_exact &= same || mirror;
			}
			if (c == 1)
			{
				/* a rotation about the centre keeps the centre's class */
				fg_kept &= mout[(P / 2) * P + P / 2] == mask[(P / 2) * P + P / 2];
			}
		}
	CHECK(identical, "pair image equals mt_augment_image for the same rng state");
	CHECK(same_state, "both advance the rng alike");
	CHECK(consistent && checked > 75 * P * P / 2, "mask agrees (%d pixels checked)", checked);
	CHECK(consistent, "mask agrees with the image wherever the image is one region's value");
	CHECK(flipped_exact, "flipped masks are exact mirrors");
	CHECK(fg_kept, "rotation keeps the centre pixel");
	CHECK(ignore_seen > 0, "pixels rotated in from outside are marked ignore");

	/* nothing on: the mask is copied as is, nothing ignored */
	{
		mt_rng		r;

		mt_rng_seed(&r, 9, 9);
		mt_augment_pair(img, mask, P, &cfgs[3], &r, mean, stdv, out2, mout);
		CHECK(memcmp(mout, mask, sizeof(mask)) == 0, "no augmentation copies the mask");
	}
}

/* mt_augment_batch against the loop it replaces */
static void
test_batch(void)
{
	enum
	{
		M = 150						/* more than two of its chunks of 64 */
	};
	static const float mean[3] = {0.485f, 0.456f, 0.406f};
	static const float stdv[3] = {0.229f, 0.224f, 0.225f};
	mt_augment	all = {1, 15.0f, 0.2f, 0.2f, 0.7f};
	uint8_t    *imgs = malloc((size_t) M * P * P * 4);
	const uint8_t *srcs[M],
			   *msrcs[M];
	float	   *a = malloc(sizeof(float) * M * P * P * 3),
			   *b = malloc(sizeof(float) * M * P * P * 3);
	uint8_t    *ma = malloc((size_t) M * P * P),
			   *mb = malloc((size_t) M * P * P);
	mt_rng		r1,
				r2;
	int			old = mt_pool_threads();

	for (size_t i = 0; i < (size_t) M * P * P * 4; i++)
		imgs[i] = (uint8_t) ((i * 2654435761u) >> 13);
	for (int i = 0; i < M; i++)
	{
		srcs[i] = imgs + (size_t) i * P * P * 4;
		msrcs[i] = srcs[i] + P * P * 3;
	}
	mt_pool_set_threads(3);
	for (int pass = 0; pass < 3; pass++)
	{
		/* 0: images; 1: images and masks; 2: no augmentation (normalise, copy masks) */
		const mt_augment *cfg = pass == 2 ? NULL : &all;

		mt_rng_seed(&r1, 7, 1);
		mt_rng_seed(&r2, 7, 1);
		memset(ma, 0, (size_t) M * P * P);
		memset(mb, 1, (size_t) M * P * P);
		for (int i = 0; i < M; i++)
		{
			float	   *o = a + (size_t) i * P * P * 3;

			if (pass == 0)
				mt_augment_image(srcs[i], P, cfg, &r1, mean, stdv, o);
			else if (pass == 1)
				mt_augment_pair(srcs[i], msrcs[i], P, cfg, &r1, mean, stdv, o, ma + (size_t) i * P * P);
			else
			{
				mt_normalize_u8(srcs[i], P * P, mean, stdv, o);
				memcpy(ma + (size_t) i * P * P, msrcs[i], P * P);
			}
		}
		mt_augment_batch(srcs, pass == 0 ? NULL : msrcs, M, P, cfg, &r2, mean, stdv, b,
						 pass == 0 ? NULL : mb);
		CHECK(memcmp(a, b, sizeof(float) * M * P * P * 3) == 0,
			  "batch of %d %s equals the loop, bit for bit, on 3 threads", M,
			  pass == 0 ? "augmented images" : pass == 1 ? "images and masks" : "normalised images");
		if (pass > 0)
			CHECK(memcmp(ma, mb, (size_t) M * P * P) == 0, "its masks equal the loop's");
		CHECK(mt_rng_uniform(&r1) == mt_rng_uniform(&r2), "the rng is left where the loop leaves it");
		{
			/* the draws as numbers, rendered one by one: the batch again (a device's path) */
			double	   *par = malloc(sizeof(double) * MT_AUG_PARAMS * M);
			mt_err		err;

			mt_rng_seed(&r1, 7, 1);
			mt_rng_seed(&r2, 7, 1);
			mt_augment_batch(srcs, pass == 1 ? msrcs : NULL, M, P, cfg, &r1, mean, stdv, a, ma);
			mt_augment_draw_params(cfg, M, P, &r2, par);
			if (pass > 0)
			{
				/* the masks from the rows: the CPU backend's augment_masks entry */
				const uint8_t **ms = msrcs;
				uint8_t    *mcat = malloc((size_t) M * P * P);

				for (int i = 0; i < M; i++)
					memcpy(mcat + (size_t) i * P * P, ms[i], (size_t) P * P);
				if (pass == 2)
					memcpy(ma, mcat, (size_t) M * P * P);
				memset(mb, 7, (size_t) M * P * P);
				CHECK(mt_cpu_backend.augment_masks(M, P, mcat, cfg != NULL ? par : NULL, mb, &err) == MT_OK,
					  "augment_masks");
				CHECK(memcmp(ma, mb, (size_t) M * P * P) == 0,
					  "mt_augment_draw_params + augment_masks (%s) equal the batch's masks bit for bit",
					  cfg != NULL ? "augmented" : "copied");
				free(mcat);
			}
			for (int i = 0; i < M; i++)
				if (cfg != NULL)
					mt_augment_render(srcs[i], P, par + (size_t) MT_AUG_PARAMS * i, mean, stdv,
									  b + (size_t) i * P * P * 3);
				else
					CHECK(mt_cpu_backend.augment_images(1, P, srcs[i], NULL, mean, stdv,
														b + (size_t) i * P * P * 3, &err) == MT_OK, "normalise");
			CHECK(memcmp(a, b, sizeof(float) * M * P * P * 3) == 0,
				  "mt_augment_draw_params + mt_augment_render (%s) equal the batch bit for bit",
				  cfg != NULL ? "augmented" : "normalised");
			CHECK(mt_rng_uniform(&r1) == mt_rng_uniform(&r2), "and draw the same numbers");
			free(par);
		}
	}
	mt_pool_set_threads(old);
	free(imgs);
	free(a);
	free(b);
	free(ma);
	free(mb);
}

int
main(int argc, char **argv)
{
	static const float mean[3] = {0.485f, 0.456f, 0.406f};
	static const float stdv[3] = {0.229f, 0.224f, 0.225f};
	uint8_t		img[S * S * 3];
	float		plain[S * S * 3],
				out[S * S * 3],
				out2[S * S * 3];
	mt_augment	off = {0, 0, 0, 0, 1.0f};
	mt_rng		r,
				r2;
	int			flips = 0,
				keeps = 0;

	for (int i = 0; i < S * S * 3; i++)
		img[i] = (uint8_t) ((i * 37 + 11) % 256);
	mt_normalize_u8(img, S * S, mean, stdv, plain);
	CHECK(fabsf(plain[0] - ((img[0] / 255.0f - mean[0]) / stdv[0])) < 1e-6, "normalise formula");

	mt_rng_seed(&r, 1, 0);
	CHECK(!mt_augment_enabled(&off), "all off is off");
	mt_augment_image(img, S, &off, &r, mean, stdv, out);
	{
		double		d = 0;

		for (int i = 0; i < S * S * 3; i++)
			d = fmax(d, fabs(out[i] - plain[i]));
		CHECK(d < 1e-5, "no augmentation = normalisation (diff %g)", d);
	}

	/* flips: each draw is the image or its exact mirror */
	{
		mt_augment	fl = {1, 0, 0, 0, 1.0f};

		for (int t = 0; t < 40; t++)
		{
			int			same = 1,
						mirror = 1;

			mt_augment_image(img, S, &fl, &r, mean, stdv, out);
			for (int y = 0; y < S; y++)
				for (int x = 0; x < S; x++)
					for (int c = 0; c < 3; c++)
					{
						float		v = out[(y * S + x) * 3 + c];

						same &= fabsf(v - plain[(y * S + x) * 3 + c]) < 1e-5;
						mirror &= fabsf(v - plain[(y * S + (S - 1 - x)) * 3 + c]) < 1e-5;
					}
			flips += mirror && !same;
			keeps += same && !mirror;
		}
		CHECK(flips + keeps == 40 && flips > 5 && keeps > 5, "flips %d, kept %d of 40", flips, keeps);
	}

	/* brightness only: every raw value scales by one factor in [0.8, 1.2] */
	{
		mt_augment	br = {0, 0, 0.2f, 0, 1.0f};
		double		lo = 1e9,
					hi = -1e9;

		mt_augment_image(img, S, &br, &r, mean, stdv, out);
		for (int i = 0; i < S * S * 3; i++)
		{
			int			c = i % 3;
			double		raw = (out[i] * stdv[c] + mean[c]) * 255.0;

			if (img[i] > 20 && raw < 254.5)
			{
				lo = fmin(lo, raw / img[i]);
				hi = fmax(hi, raw / img[i]);
			}
		}
		CHECK(hi - lo < 1e-3 && lo >= 0.8 - 1e-4 && hi <= 1.2 + 1e-4, "one brightness factor: %g..%g", lo, hi);
	}

	/* everything on: same seed, same output; values within the clamp range */
	{
		mt_augment	all = {1, 10.0f, 0.2f, 0.2f, 0.7f};
		int			in_range = 1;

		mt_rng_seed(&r, 42, 3);
		mt_rng_seed(&r2, 42, 3);
		mt_augment_image(img, S, &all, &r, mean, stdv, out);
		mt_augment_image(img, S, &all, &r2, mean, stdv, out2);
		CHECK(memcmp(out, out2, sizeof(out)) == 0, "same seed, same augmentation");
		for (int i = 0; i < S * S * 3; i++)
		{
			int			c = i % 3;

			in_range &= out[i] >= (0 - mean[c]) / stdv[c] - 1e-4 && out[i] <= (1 - mean[c]) / stdv[c] + 1e-4;
		}
		CHECK(in_range, "outputs within the normalised [0, 255] range");
		mt_augment_image(img, S, &all, &r, mean, stdv, out2);
		CHECK(memcmp(out, out2, sizeof(out)) != 0, "the next draw differs");
	}
	test_pair();
	test_batch();
	(void) argc;
	(void) argv;
	return TEST_SUMMARY("augment");
}
