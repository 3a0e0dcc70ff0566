/*
 * test_tiling.c - sliding-window segmentation (src/core/tiling.c) against
 * oracles written here in double precision:
 *  - tile placement: every pixel covered, first tile at 0, last flush with
 *    the far edge, images smaller than a tile, non-square, overlap 0 and
 *    0.9, the number of tiles forwarded and the size of each pass;
 *  - the importance maps against the Gaussian formula;
 *  - a model whose logits at a pixel depend only on that pixel's values (a
 *    1x1 convolution): every tile agrees at every pixel, so any blend must
 *    return exactly softmax(f(pixel)), whatever the weights;
 *  - a model whose logits also depend on the position inside the tile, so
 *    tiles disagree: the banded result against an unbanded full-size
 *    weighted mean computed here (placement and weights recomputed from
 *    their definitions, not from the engine's helpers);
 *  - resampling the result to another size against a direct bilinear
 *    resize of the full-size reference;
 *  - a U-Net with random weights: an image of exactly one tile gives the
 *    model's own softmax bit for bit, and a non-square image the per-tile
 *    reference;
 *  - cancellation between passes and errors of the callbacks.
 *
 *   make unittest && test/bin/test_tiling
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/ops.h"
#include "core/tiling.h"
#include "core/train.h"
#include "nn/zoo.h"
#include "mt_test.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double
urand(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (double) (rng_state >> 11) / 9007199254740992.0;
}

static float *
rimage(int w, int h)
{
	float	   *p = malloc(sizeof(float) * (size_t) w * h * 3);

	for (size_t i = 0; i < (size_t) w * h * 3; i++)
		p[i] = (float) (4 * urand() - 2);
	return p;
}

/* ---- oracles -------------------------------------------------------------- */

/*
 * Tile origins along an axis, from the definition: a tile at every multiple
 * of the stride that leaves room for a whole tile before the far edge, then
 * one flush with it; a short axis is centred in one tile.
 */
static int
oracle_starts(int len, int tile, double overlap, int *out)
{
	int			stride = (int) floor(tile * (1 - overlap) + 0.5);
	int			n = 0;

	if (stride < 1)
		stride = 1;
	if (len <= tile)
	{
		out[0] = -((tile - len) / 2);
		return 1;
	}
	for (int p = 0; p < len - tile; p += stride)
		out[n++] = p;
	out[n++] = len - tile;
	return n;
}

static double
oracle_weight(int blend, int tile, int r, int c)
{
	double		sigma = tile / 8.0,
				mid = (tile - 1) / 2.0,
				best = 0;

	if (blend == MT_BLEND_CONSTANT)
		return 1;
	/* the maximum over the tile's pixels, by search */
	for (int y = 0; y < tile; y++)
		for (int x = 0; x < tile; x++)
			best = fmax(best, exp(-((y - mid) * (y - mid) + (x - mid) * (x - mid)) / (2 * sigma * sigma)));
	return exp(-((r - mid) * (r - mid) + (c - mid) * (c - mid)) / (2 * sigma * sigma)) / best;
}

/* ---- fake models ---------------------------------------------------------- */

#define K 3

typedef struct fake
{
	int			positional;		/* logits also depend on the place in the tile */
	int			calls;
	int			tiles;
	int			max_n;
	int			fail_at;		/* return an error on this call (1-based), 0 never */
} fake;

/* Logits of pixel values v at tile position (r, c). */
static void
fake_logits(const fake *f, const float *v, int r, int c, int size, double *z)
{
	z[0] = v[0] - 0.5 * v[1];
	z[1] = 0.7 * v[1] + 0.3 * v[2] * v[0];
	z[2] = -v[2] + 0.25;
	if (f->positional)
	{
		z[0] += 2.0 * r / size;
		z[2] += 1.5 * c / size - 0.2 * r / size;
	}
}

static int
fake_forward(void *ctx, const float *x, int n, int size, float *logits, mt_err *err)
{
	fake	   *f = ctx;

	f->calls++;
	f->tiles += n;
	if (n > f->max_n)
		f->max_n = n;
	if (f->fail_at && f->calls == f->fail_at)
		return mt_seterr(err, MT_ERR_SHAPE, "fake failure");
	for (int b = 0; b < n; b++)
		for (int r = 0; r < size; r++)
			for (int c = 0; c < size; c++)
			{
				size_t		p = ((size_t) b * size + r) * size + c;
				double		z[K];

				fake_logits(f, x + p * 3, r, c, size, z);
				for (int q = 0; q < K; q++)
					logits[p * K + q] = (float) z[q];
			}
	return MT_OK;
}

static void
softmax_d(const double *z, int k, double *p)
{
	double		m = z[0],
				s = 0;

	for (int q = 1; q < k; q++)
		m = fmax(m, z[q]);
	for (int q = 0; q < k; q++)
		s += (p[q] = exp(z[q] - m));
	for (int q = 0; q < k; q++)
		p[q] /= s;
}

/*
 * The unbanded reference: a w x h x k map of the weighted mean over every
 * tile covering each pixel, in double, tiles placed by oracle_starts.
 */
static double *
oracle_map(const fake *f, const float *img, int w, int h, int tile, double overlap, int blend)
{
	int		   *xs = malloc(sizeof(int) * (w + 2)),
			   *ys = malloc(sizeof(int) * (h + 2));
	int			nx = oracle_starts(w, tile, overlap, xs),
				ny = oracle_starts(h, tile, overlap, ys);
	double	   *num = calloc((size_t) w * h * K, sizeof(double));
	double	   *den = calloc((size_t) w * h, sizeof(double));
	double	   *wt = malloc(sizeof(double) * tile * tile);
	static const float zero[3] = {0, 0, 0};

	for (int r = 0; r < tile; r++)
		for (int c = 0; c < tile; c++)
			wt[r * tile + c] = oracle_weight(blend, tile, r, c);
	for (int j = 0; j < ny; j++)
		for (int i = 0; i < nx; i++)
			for (int r = 0; r < tile; r++)
				for (int c = 0; c < tile; c++)
				{
					int			y = ys[j] + r,
								x = xs[i] + c;
					double		z[K],
								p[K];

					if (y < 0 || y >= h || x < 0 || x >= w)
						continue;
					fake_logits(f, img ? img + ((size_t) y * w + x) * 3 : zero, r, c, tile, z);
					softmax_d(z, K, p);
					for (int q = 0; q < K; q++)
						num[((size_t) y * w + x) * K + q] += wt[r * tile + c] * p[q];
					den[(size_t) y * w + x] += wt[r * tile + c];
				}
	for (size_t p = 0; p < (size_t) w * h; p++)
		for (int q = 0; q < K; q++)
			num[p * K + q] /= den[p];
	free(xs);
	free(ys);
	free(den);
	free(wt);
	return num;
}

/* ---- a sink that collects rows --------------------------------------------- */

typedef struct collect
{
	int			w,
				h,
				k;
	float	   *map;			/* w x h x k */
	int			next_row;		/* rows must arrive in order, once */
	int			calls;
	int			bad_order;
	int			fail_at;
} collect;

static int
collect_rows(void *ctx, int y, int n, const float *prob, mt_err *err)
{
	collect    *c = ctx;

	c->calls++;
	if (c->fail_at && c->calls == c->fail_at)
		return mt_seterr(err, MT_ERR_LIMIT, "sink full");
	if (y != c->next_row || n < 1 || y + n > c->h)
	{
		c->bad_order++;
		return MT_OK;
	}
	memcpy(c->map + (size_t) y * c->w * c->k, prob, sizeof(float) * (size_t) n * c->w * c->k);
	c->next_row = y + n;
	return MT_OK;
}

static void
collect_init(collect *c, int w, int h, int k)
{
	memset(c, 0, sizeof(*c));
	c->w = w;
	c->h = h;
	c->k = k;
	c->map = malloc(sizeof(float) * (size_t) w * h * k);
	for (size_t i = 0; i < (size_t) w * h * k; i++)
		c->map[i] = NAN;		/* an undelivered pixel fails every comparison */
}

static double
max_diff(const float *a, const double *b, size_t n)
{
	double		d = 0;

	for (size_t i = 0; i < n; i++)
	{
		if (isnan(a[i]))
			return INFINITY;
		d = fmax(d, fabs(a[i] - b[i]));
	}
	return d;
}

/* ---- tests ---------------------------------------------------------------- */

static void
test_placement(void)
{
	static const int lens[] = {1, 5, 31, 32, 33, 63, 64, 65, 100, 127, 256, 1000};
	static const double overlaps[] = {0, 0.1, 0.25, 0.5, 0.75, 0.9};
	static const int tiles[] = {32, 64};
	int			cases = 0,
				bad = 0;

	for (int t = 0; t < 2; t++)
		for (int o = 0; o < 6; o++)
			for (int l = 0; l < (int) (sizeof(lens) / sizeof(lens[0])); l++)
			{
				int			tile = tiles[t],
							len = lens[l];
				int			stride = mt_tile_stride(tile, overlaps[o]);
				int			n = mt_tile_starts(len, tile, stride, NULL);
				int		   *s = malloc(sizeof(int) * (n + 1));
				int		   *ref = malloc(sizeof(int) * (len + 2));
				int			nref = oracle_starts(len, tile, overlaps[o], ref);
				int		   *cover = calloc(len, sizeof(int));
				int			ok;

				mt_tile_starts(len, tile, stride, s);
				ok = n == nref && memcmp(s, ref, sizeof(int) * n) == 0;
				for (int i = 0; i < n; i++)
				{
					for (int p = s[i]; p < s[i] + tile; p++)
						if (p >= 0 && p < len)
							cover[p]++;
					if (i > 0 && (s[i] <= s[i - 1] || s[i] - s[i - 1] > stride))
						ok = 0;
				}
				for (int p = 0; p < len; p++)
					if (cover[p] == 0)
						ok = 0;
				if (len >= tile)
					ok = ok && s[0] == 0 && s[n - 1] == len - tile;
				else
					ok = ok && n == 1 && s[0] <= 0 && s[0] + tile >= len &&
						-s[0] == (tile - len) / 2;
				if (!ok)
				{
					bad++;
					fprintf(stderr, "  placement len %d tile %d overlap %g: %d origins\n",
							len, tile, overlaps[o], n);
				}
				cases++;
				free(s);
				free(ref);
				free(cover);
			}
	CHECK(bad == 0, "%d of %d placements wrong", bad, cases);
	CHECK(mt_tile_stride(64, 0) == 64 && mt_tile_stride(64, 0.25) == 48 &&
		  mt_tile_stride(64, 0.9) == 6 && mt_tile_stride(64, 0.5) == 32 && mt_tile_stride(1, 0.9) == 1,
		  "strides");
	/* 256 with 64 and overlap 0.25: 0 48 96 144 192 */
	{
		int			s[8];

		CHECK(mt_tile_starts(256, 64, 48, s) == 5 && s[0] == 0 && s[3] == 144 && s[4] == 192,
			  "256/64/48");
		CHECK(mt_tile_starts(40, 64, 48, s) == 1 && s[0] == -12, "40 in 64: centred, %d", s[0]);
		CHECK(mt_tile_starts(100, 64, 64, s) == 2 && s[0] == 0 && s[1] == 36, "100/64 no overlap");
	}
	printf("  placement: %d cases against the oracle\n", cases);
}

static void
test_weights(void)
{
	for (int tile = 31; tile <= 64; tile += 33)
	{
		float	   *m = malloc(sizeof(float) * tile * tile);
		double		worst = 0,
					peak = 0;

		mt_tile_weights(MT_BLEND_GAUSSIAN, tile, m);
		for (int r = 0; r < tile; r++)
			for (int c = 0; c < tile; c++)
			{
				double		o = oracle_weight(MT_BLEND_GAUSSIAN, tile, r, c);

				worst = fmax(worst, fabs(m[r * tile + c] - o) / o);
				peak = fmax(peak, m[r * tile + c]);
			}
		CHECK(worst < 1e-6 && fabs(peak - 1) < 1e-6, "gaussian %d: rel %g peak %g", tile, worst, peak);
		mt_tile_weights(MT_BLEND_CONSTANT, tile, m);
		CHECK(m[0] == 1 && m[tile * tile - 1] == 1 && m[(tile / 2) * tile] == 1, "constant %d", tile);
		free(m);
	}
}

/*
 * One run of mt_tile_segment with the fake model against the oracle;
 * returns the largest difference (INFINITY when rows went missing).
 */
static double
run_fake(int positional, int w, int h, int tile, double overlap, int blend, int per_pass,
		 int *tiles_out, int *max_n_out)
{
	fake		f = {positional, 0, 0, 0, 0};
	collect		c;
	mt_tile_opts o = {tile, K, overlap, blend, per_pass, 0, 0};
	float	   *img = rimage(w, h);
	double	   *ref = oracle_map(&f, img, w, h, tile, overlap, blend);
	mt_err		err;
	int			rc;
	double		d;

	collect_init(&c, w, h, K);
	rc = mt_tile_segment(img, w, h, &o, fake_forward, &f, collect_rows, &c, &err);
	CHECK(rc == MT_OK, "segment %dx%d: %s", w, h, err.msg);
	CHECK(c.bad_order == 0 && c.next_row == h, "%dx%d: rows in order (%d bad, %d of %d)",
		  w, h, c.bad_order, c.next_row, h);
	d = rc == MT_OK ? max_diff(c.map, ref, (size_t) w * h * K) : INFINITY;
	if (tiles_out)
		*tiles_out = f.tiles;
	if (max_n_out)
		*max_n_out = f.max_n;
	free(img);
	free(ref);
	free(c.map);
	return d;
}

static void
test_fake_models(void)
{
	static const struct
	{
		int			w,
					h,
					tile;
		double		overlap;
		int			per_pass;
	}			cases[] = {
		{32, 32, 32, 0.25, 4},		/* one tile */
		{100, 70, 32, 0.25, 3},		/* non-square, last tiles flush */
		{70, 100, 32, 0.5, 16},
		{20, 13, 32, 0.25, 2},		/* smaller than a tile both ways: padded */
		{90, 20, 32, 0.25, 2},		/* short in one direction */
		{96, 96, 32, 0, 5},			/* no overlap, exact fit */
		{97, 61, 32, 0.9, 7},		/* heavy overlap: rows touched by many bands */
		{129, 40, 16, 0.75, 1},
	};
	double		worst_const = 0,
				worst_pos = 0;

	for (int i = 0; i < (int) (sizeof(cases) / sizeof(cases[0])); i++)
		for (int blend = 0; blend < 2; blend++)
		{
			int			tiles,
						max_n;
			int			xs[512],
						ys[512];
			int			n_expect = oracle_starts(cases[i].w, cases[i].tile, cases[i].overlap, xs) *
				oracle_starts(cases[i].h, cases[i].tile, cases[i].overlap, ys);
			double		d1 = run_fake(0, cases[i].w, cases[i].h, cases[i].tile, cases[i].overlap,
									  blend, cases[i].per_pass, &tiles, &max_n);
			double		d2 = run_fake(1, cases[i].w, cases[i].h, cases[i].tile, cases[i].overlap,
									  blend, cases[i].per_pass, NULL, NULL);

			/*
			 * 1x1 model: every tile says the same at a pixel, whatever the
			 * weights, up to float sums: at overlap 0.9 a pixel is in up
			 * to 121 tiles
			 */
			double		tol = cases[i].overlap >= 0.9 ? 3e-6 : 1e-6;

			CHECK(d1 <= tol, "%dx%d tile %d overlap %g blend %d: pixel-wise model off by %g",
				  cases[i].w, cases[i].h, cases[i].tile, cases[i].overlap, blend, d1);
			/* positional model: the banded blend is the unbanded weighted mean */
			CHECK(d2 <= tol, "%dx%d tile %d overlap %g blend %d: positional model off by %g",
				  cases[i].w, cases[i].h, cases[i].tile, cases[i].overlap, blend, d2);
			CHECK(tiles == n_expect && max_n <= cases[i].per_pass,
				  "%dx%d: %d tiles forwarded (expected %d), passes of up to %d (limit %d)",
				  cases[i].w, cases[i].h, tiles, n_expect, max_n, cases[i].per_pass);
			worst_const = fmax(worst_const, d1);
			worst_pos = fmax(worst_pos, d2);
		}
	printf("  fake models: pixel-wise max diff %.1e, positional max diff %.1e\n", worst_const, worst_pos);
}

/* The full-size reference resized in double (align_corners=False). */
static double *
oracle_resize(const double *m, int w, int h, int ow, int oh)
{
	double	   *out = malloc(sizeof(double) * (size_t) ow * oh * K);

	for (int y = 0; y < oh; y++)
		for (int x = 0; x < ow; x++)
		{
			double		sy = fmax((y + 0.5) * h / oh - 0.5, 0),
						sx = fmax((x + 0.5) * w / ow - 0.5, 0);
			int			y0 = (int) sy < h - 1 ? (int) sy : h - 1,
						x0 = (int) sx < w - 1 ? (int) sx : w - 1;
			int			y1 = y0 + (y0 < h - 1),
						x1 = x0 + (x0 < w - 1);
			double		ty = sy - y0,
						tx = sx - x0;

			for (int q = 0; q < K; q++)
				out[((size_t) y * ow + x) * K + q] =
					(1 - ty) * ((1 - tx) * m[((size_t) y0 * w + x0) * K + q] + tx * m[((size_t) y0 * w + x1) * K + q]) +
					ty * ((1 - tx) * m[((size_t) y1 * w + x0) * K + q] + tx * m[((size_t) y1 * w + x1) * K + q]);
		}
	return out;
}

static void
test_resample(void)
{
	static const int sizes[][4] = {
		{50, 40, 200, 160},		/* scaled by 1/4 before tiling */
		{100, 70, 50, 35},		/* by 2 */
		{64, 48, 97, 31},		/* uneven */
		{33, 90, 33, 91},
	};
	double		worst = 0;

	for (int i = 0; i < 4; i++)
	{
		int			w = sizes[i][0],
					h = sizes[i][1],
					ow = sizes[i][2],
					oh = sizes[i][3];
		fake		f = {1, 0, 0, 0, 0};
		collect		c;
		mt_tile_opts o = {32, K, 0.5, MT_BLEND_GAUSSIAN, 4, ow, oh};
		float	   *img = rimage(w, h);
		double	   *ref = oracle_map(&f, img, w, h, 32, 0.5, MT_BLEND_GAUSSIAN);
		double	   *rref = oracle_resize(ref, w, h, ow, oh);
		mt_err		err;
		double		d;

		collect_init(&c, ow, oh, K);
		CHECK(mt_tile_segment(img, w, h, &o, fake_forward, &f, collect_rows, &c, &err) == MT_OK,
			  "resample: %s", err.msg);
		d = max_diff(c.map, rref, (size_t) ow * oh * K);
		CHECK(c.bad_order == 0 && c.next_row == oh && d < 1e-5,
			  "%dx%d -> %dx%d: rows %d/%d, diff %g", w, h, ow, oh, c.next_row, oh, d);
		worst = fmax(worst, d);
		free(img);
		free(ref);
		free(rref);
		free(c.map);
	}
	printf("  resampled output: max diff %.1e\n", worst);
}

static int	interrupt_after;
static int	interrupt_polls;

static int
interrupt_hook(void)
{
	return ++interrupt_polls > interrupt_after;
}

static void
test_errors(void)
{
	float	   *img = rimage(100, 100);
	fake		f = {0, 0, 0, 0, 0};
	collect		c;
	mt_tile_opts o = {32, K, 0.25, MT_BLEND_CONSTANT, 2, 0, 0};
	mt_err		err;
	int			rc;

	collect_init(&c, 100, 100, K);
	o.overlap = 0.95;
	CHECK(mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err) == MT_ERR_INVALID,
		  "overlap 0.95");
	o.overlap = -0.1;
	CHECK(mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err) == MT_ERR_INVALID,
		  "overlap -0.1");
	o.overlap = NAN;
	CHECK(mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err) == MT_ERR_INVALID,
		  "overlap NaN");
	o.overlap = 0.25;
	o.tiles_per_pass = 0;
	CHECK(mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err) == MT_ERR_INVALID,
		  "no tiles per pass");
	o.tiles_per_pass = 2;

	/* a failing model and a failing sink: their errors come back */
	f.fail_at = 3;
	rc = mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err);
	CHECK(rc == MT_ERR_SHAPE && strcmp(err.msg, "fake failure") == 0 && f.calls == 3, "model error: %d", rc);
	f.fail_at = 0;
	c.fail_at = 2;
	rc = mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err);
	CHECK(rc == MT_ERR_LIMIT && strcmp(err.msg, "sink full") == 0, "sink error: %d", rc);

	/* cancel: polled before each forward call, nothing more is forwarded */
	f.calls = 0;
	c.fail_at = 0;
	interrupt_after = 3;
	interrupt_polls = 0;
	mt_set_interrupt(interrupt_hook);
	rc = mt_tile_segment(img, 100, 100, &o, fake_forward, &f, collect_rows, &c, &err);
	mt_set_interrupt(NULL);
	CHECK(rc == MT_ERR_CANCELLED && f.calls == 3 && interrupt_polls == 4,
		  "cancel: rc %d after %d passes, %d polls", rc, f.calls, interrupt_polls);

	/* memory: a band of a 4000-wide image with 2 classes and 256-pixel tiles */
	{
		mt_tile_opts m = {256, 2, 0.25, MT_BLEND_CONSTANT, 16, 0, 0};
		size_t		b = mt_tile_memory(4000, &m);
		size_t		band = (size_t) 3 * 4000 * 256 * sizeof(float);

		CHECK(b > band && b < band + (size_t) 16 * 256 * 256 * 5 * sizeof(float) + 500000,
			  "memory %zu", b);
		printf("  band memory, 4000 wide, 2 classes, tile 256, 16 per pass: %.1f MB\n", b / 1048576.0);
	}
	free(img);
	free(c.map);
}

/* ---- a U-Net with random weights ------------------------------------------ */

static void
randomise(mt_model *m, uint64_t seed)
{
	mt_err		err;

	CHECK(mt_model_init_all(m, seed, &err) == MT_OK, "init_all: %s", err.msg);
	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_node    *nd = &m->nodes[i];

		if (nd->kind != MT_NODE_BN)
			continue;
		for (int j = 0; j < m->params[nd->p_bn_weight].shape[0]; j++)
		{
			m->params[nd->p_bn_weight].data[j] = (float) (0.5 + urand());
			m->params[nd->p_bn_bias].data[j] = (float) (0.4 * urand() - 0.2);
			m->params[nd->p_bn_mean].data[j] = (float) (0.4 * urand() - 0.2);
			m->params[nd->p_bn_var].data[j] = (float) (0.5 + 1.5 * urand());
		}
	}
}

static void
test_unet(void)
{
	const int	s = 32,
				k = 3;
	mt_err		err;
	mt_model   *m = mt_zoo_build("unet_resnet18", k, 0, &err);

	CHECK(m != NULL, "build: %s", err.msg);
	if (m == NULL)
		return;
	randomise(m, 7);

	/* an image of exactly one tile: the model's own softmax */
	for (int blend = 0; blend < 2; blend++)
	{
		float	   *img = rimage(s, s);
		float	   *direct = malloc(sizeof(float) * s * s * k);
		mt_tile_opts o = {s, k, 0.25, blend, 4, 0, 0};
		collect		c;
		double		d = 0;
		int			same = 1;

		CHECK(mt_model_forward(m, img, 1, s, s, direct, NULL, &err) == MT_OK, "forward: %s", err.msg);
		mt_cpu_backend.softmax(s * s, k, direct, direct);
		collect_init(&c, s, s, k);
		CHECK(mt_tile_segment(img, s, s, &o, mt_tile_model_forward, m, collect_rows, &c, &err) == MT_OK,
			  "one tile: %s", err.msg);
		for (int i = 0; i < s * s * k; i++)
		{
			d = fmax(d, isnan(c.map[i]) ? INFINITY : fabs(c.map[i] - direct[i]));
			same = same && c.map[i] == direct[i];
		}
		if (blend == MT_BLEND_CONSTANT)
			CHECK(same, "one tile, constant: not bit-identical (max diff %g)", d);
		CHECK(d <= 1e-6, "one tile, blend %d: diff %g", blend, d);
		printf("  U-Net, one %dx%d tile, %s: max diff %.1e%s\n", s, s,
			   blend ? "gaussian" : "constant", d, same ? " (bit-identical)" : "");
		free(img);
		free(direct);
		free(c.map);
	}

	/*
	 * Non-square images against the per-tile reference: each tile cut here
	 * (zeros outside the image: an image narrower than a tile sits centred
	 * in it) and forwarded alone, blended in double into a full-size map.
	 */
	for (int t = 0; t < 6; t++)
	{
		static const int sizes[3][2] = {{75, 50}, {20, 13}, {40, 20}};
		const int	w = sizes[t / 2][0],
					h = sizes[t / 2][1],
					blend = t % 2;
		const double overlap = 0.4;
		float	   *img = rimage(w, h);
		int			xs[64],
					ys[64];
		int			nx = oracle_starts(w, s, overlap, xs),
					ny = oracle_starts(h, s, overlap, ys);
		double	   *num = calloc((size_t) w * h * k, sizeof(double));
		double	   *den = calloc((size_t) w * h, sizeof(double));
		float	   *tile = malloc(sizeof(float) * s * s * 3);
		float	   *out = malloc(sizeof(float) * s * s * k);
		mt_tile_opts o = {s, k, overlap, blend, 3, 0, 0};
		collect		c;
		double		d;

		for (int j = 0; j < ny; j++)
			for (int i = 0; i < nx; i++)
			{
				for (int r = 0; r < s; r++)
					for (int q = 0; q < s; q++)
					{
						int			y = ys[j] + r,
									x = xs[i] + q;

						for (int l = 0; l < 3; l++)
							tile[((size_t) r * s + q) * 3 + l] =
								y >= 0 && y < h && x >= 0 && x < w ? img[((size_t) y * w + x) * 3 + l] : 0;
					}
				CHECK(mt_model_forward(m, tile, 1, s, s, out, NULL, &err) == MT_OK, "%s", err.msg);
				for (int r = 0; r < s; r++)
					for (int q = 0; q < s; q++)
					{
						size_t		at = (size_t) (ys[j] + r) * w + xs[i] + q;
						double		z[3],
									p[3],
									wt = oracle_weight(blend, s, r, q);

						if (ys[j] + r < 0 || ys[j] + r >= h || xs[i] + q < 0 || xs[i] + q >= w)
							continue;
						for (int l = 0; l < k; l++)
							z[l] = out[((size_t) r * s + q) * k + l];
						softmax_d(z, k, p);
						for (int l = 0; l < k; l++)
							num[at * k + l] += wt * p[l];
						den[at] += wt;
					}
			}
		for (size_t p = 0; p < (size_t) w * h; p++)
			for (int l = 0; l < k; l++)
				num[p * k + l] /= den[p];
		collect_init(&c, w, h, k);
		CHECK(mt_tile_segment(img, w, h, &o, mt_tile_model_forward, m, collect_rows, &c, &err) == MT_OK,
			  "%dx%d: %s", w, h, err.msg);
		d = max_diff(c.map, num, (size_t) w * h * k);
		/* batches of 3 tiles vs one at a time: GEMM blocking differs slightly */
		CHECK(d <= 1e-5, "U-Net %dx%d blend %d: diff %g", w, h, blend, d);
		printf("  U-Net, %dx%d in %dx%d tiles, %s: max diff %.1e against the per-tile reference\n",
			   w, h, nx, ny, blend ? "gaussian" : "constant", d);
		free(img);
		free(num);
		free(den);
		free(tile);
		free(out);
		free(c.map);
	}
	mt_model_free(m);
}

int
main(int argc, char **argv)
{
	mt_err		err;

	(void) argc;
	(void) argv;
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("  (no OpenBLAS: %s; reference GEMM)\n", err.msg);
	test_placement();
	test_weights();
	test_fake_models();
	test_resample();
	test_errors();
	test_unet();
	return TEST_SUMMARY("tiling");
}
