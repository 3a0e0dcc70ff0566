/*
 * test_augment.c - augmentation: identity when off, flips mirror exactly,
 * brightness scales, rotation by 0 and a full crop change nothing, the same
 * seed repeats, and outputs stay in the normalised range.
 *
 *   make unittest && test/bin/test_augment
 */
#include "io/augment.h"
#include "mt_test.h"

#include <stdlib.h>
#include <string.h>

#define S 17

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
	(void) argc;
	(void) argv;
	return TEST_SUMMARY("augment");
}
