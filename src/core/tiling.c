/*
 * tiling.c - sliding-window segmentation (see tiling.h).
 *
 * Tiles are placed as MONAI places them (dense_patch_slices): origins
 * every stride pixels and the last one flush with the far edge, so no tile
 * hangs over the image and none is partial; an image smaller than a tile
 * sits centred in one padded tile.  A band is the row of tiles sharing a
 * row origin.  Its accumulators cover the tile's rows at the image's full
 * width: classes weighted sums plus one summed weight per pixel.  After a
 * band, rows above the next band's origin are touched by no later tile, so
 * they are divided out and delivered; the rest move up to the next origin.
 * That keeps (classes + 1) x width x tile floats however tall the image is.
 */
#include "tiling.h"

#include <math.h>
#include <string.h>

#include "graph.h"
#include "ops.h"

int
mt_tile_stride(int tile, double overlap)
{
	long		s = lround((double) tile * (1.0 - overlap));

	return s < 1 ? 1 : (int) s;
}

int
mt_tile_starts(int len, int tile, int stride, int *starts)
{
	int			n;

	if (len <= tile)
	{
		if (starts)
			starts[0] = -((tile - len) / 2);
		return 1;
	}
	/* ceil((len - tile) / stride) steps after the first */
	n = (len - tile + stride - 1) / stride + 1;
	if (starts)
	{
		for (int i = 0; i < n - 1; i++)
			starts[i] = i * stride;
		starts[n - 1] = len - tile;
	}
	return n;
}

void
mt_tile_weights(mt_blend blend, int tile, float *map)
{
	double		sigma = tile * 0.125;
	double		c = (tile - 1) / 2.0;
	double		d = tile % 2 == 0 ? 0.5 : 0.0;
	double		peak;

	if (blend != MT_BLEND_GAUSSIAN)
	{
		for (size_t i = 0; i < (size_t) tile * tile; i++)
			map[i] = 1.0f;
		return;
	}
	/* separable; the largest value is nearest the centre (both middles when even) */
	peak = exp(-d * d / (2 * sigma * sigma));
	for (int y = 0; y < tile; y++)
	{
		double		gy = exp(-(y - c) * (y - c) / (2 * sigma * sigma)) / peak;

		for (int x = 0; x < tile; x++)
		{
			double		gx = exp(-(x - c) * (x - c) / (2 * sigma * sigma)) / peak;
			double		v = gx * gy;

			/*
			 * never 0 (as MONAI replaces zeros by the smallest positive
			 * value): a pixel covered only by tile corners must still get a
			 * weight.  At d = tile / 2, v is about e^-8 per axis anyway.
			 */
			map[(size_t) y * tile + x] = (float) (v > 1e-30 ? v : 1e-30);
		}
	}
}

void
mt_tile_source_index(int o, int n_in, int n_out, int *i0, int *i1, float *t)
{
	float		x = ((float) o + 0.5f) * (float) n_in / (float) n_out - 0.5f;

	if (x < 0)
		x = 0;
	*i0 = (int) x;
	if (*i0 > n_in - 1)
		*i0 = n_in - 1;
	*i1 = *i0 < n_in - 1 ? *i0 + 1 : *i0;
	*t = x - (float) *i0;
}

int
mt_tile_model_forward(void *model, const float *x, int n, int size, float *logits, mt_err *err)
{
	return mt_model_forward((mt_model *) model, x, n, size, size, logits, NULL, err);
}

/*
 * Resampling final rows of the w x h map to out_w x out_h: output row y
 * interpolates source rows i0 and i1 = i0 + 1 (or i0 at the edge), so each
 * output row can be made as soon as its i1 is final; the last final row is
 * kept (carry) for an output row whose i0 was in the previous delivery.
 */
typedef struct resampler
{
	int			w,
				h,
				out_w,
				out_h,
				k;
	int			next_y;			/* next output row to make */
	int			carry_row;		/* source row held in carry, or -1 */
	float	   *carry;			/* w x k */
	float	   *row;			/* out_w x k */
	int		   *x0,
			   *x1;
	float	   *tx;
	mt_tile_rows_fn sink;
	void	   *sink_ctx;
} resampler;

/* Hand final source rows r0 .. r0 + n - 1 (src, n x w x k) on. */
static int
resample_rows(resampler *rs, int r0, int n, const float *src, mt_err *err)
{
	size_t		stride = (size_t) rs->w * rs->k;
	int			k = rs->k;

	while (rs->next_y < rs->out_h)
	{
		int			i0,
					i1;
		float		ty;
		const float *ra,
				   *rb;
		int			rc;

		mt_tile_source_index(rs->next_y, rs->h, rs->out_h, &i0, &i1, &ty);
		if (i1 >= r0 + n)
			break;
		ra = i0 >= r0 ? src + (size_t) (i0 - r0) * stride : rs->carry;
		rb = i1 >= r0 ? src + (size_t) (i1 - r0) * stride : rs->carry;
		if ((i0 < r0 && i0 != rs->carry_row) || (i1 < r0 && i1 != rs->carry_row))
			return mt_seterr(err, MT_ERR_INTERNAL, "tiling: source row %d of output row %d is gone",
							 i0, rs->next_y);
		for (int x = 0; x < rs->out_w; x++)
		{
			const float *a = ra + (size_t) rs->x0[x] * k;
			const float *b = ra + (size_t) rs->x1[x] * k;
			const float *c = rb + (size_t) rs->x0[x] * k;
			const float *d = rb + (size_t) rs->x1[x] * k;
			float		tx = rs->tx[x];
			float	   *o = rs->row + (size_t) x * k;

			for (int j = 0; j < k; j++)
				o[j] = mt_tile_bilerp(a[j], b[j], c[j], d[j], tx, ty);
		}
		if ((rc = rs->sink(rs->sink_ctx, rs->next_y, 1, rs->row, err)) != MT_OK)
			return rc;
		rs->next_y++;
	}
	if (n > 0)
	{
		memcpy(rs->carry, src + (size_t) (n - 1) * stride, sizeof(float) * stride);
		rs->carry_row = r0 + n - 1;
	}
	return MT_OK;
}

/* Sizes of the buffers mt_tile_segment allocates, in floats (0 on overflow). */
typedef struct tile_sizes
{
	size_t		acc,			/* tile x w x k */
				wsum,			/* tile x w */
				x,				/* tiles_per_pass x tile x tile x 3 */
				logits,			/* tiles_per_pass x tile x tile x k */
				map,			/* tile x tile */
				resample;		/* w x k + out_w x k + 3 out_w (as floats) */
} tile_sizes;

static int
tile_sizes_of(int w, const mt_tile_opts *o, tile_sizes *z)
{
	size_t		s = (size_t) o->tile,
				k = (size_t) o->classes,
				b = (size_t) o->tiles_per_pass,
				ow = (size_t) (o->out_w > 0 ? o->out_w : w),
				ss,
				t;

	memset(z, 0, sizeof(*z));
	return mt_mul_size(s, s, &ss) &&
		mt_mul_size(s, (size_t) w, &z->wsum) &&
		mt_mul_size(z->wsum, k, &z->acc) &&
		mt_mul_size(ss, b, &t) &&
		mt_mul_size(t, 3, &z->x) &&
		mt_mul_size(t, k, &z->logits) &&
		(z->map = ss, 1) &&
		mt_mul_size((size_t) w + ow, k, &t) &&
		mt_add_size(t, 3 * ow, &z->resample);
}

size_t
mt_tile_memory(int w, const mt_tile_opts *o)
{
	tile_sizes	z;
	size_t		n = 0;

	if (w < 1 || o->tile < 1 || o->classes < 1 || o->tiles_per_pass < 1 ||
		!tile_sizes_of(w, o, &z) ||
		!mt_add_size(z.acc, z.wsum, &n) || !mt_add_size(n, z.x, &n) ||
		!mt_add_size(n, z.logits, &n) || !mt_add_size(n, z.map, &n) ||
		!mt_add_size(n, z.resample, &n) || !mt_mul_size(n, sizeof(float), &n))
		return 0;
	return n;
}

/* Copy the tile at (x0, y0) of img into dst (tile x tile x 3), zero outside. */
static void
cut_tile(const float *img, int w, int h, int x0, int y0, int tile, float *dst)
{
	int			c0 = x0 < 0 ? -x0 : 0;
	int			c1 = x0 + tile > w ? w - x0 : tile;

	for (int r = 0; r < tile; r++)
	{
		float	   *d = dst + (size_t) r * tile * 3;
		int			y = y0 + r;

		if (y < 0 || y >= h)
		{
			memset(d, 0, sizeof(float) * tile * 3);
			continue;
		}
		if (c0 > 0)
			memset(d, 0, sizeof(float) * c0 * 3);
		memcpy(d + (size_t) c0 * 3, img + ((size_t) y * w + x0 + c0) * 3,
			   sizeof(float) * (c1 - c0) * 3);
		if (c1 < tile)
			memset(d + (size_t) c1 * 3, 0, sizeof(float) * (tile - c1) * 3);
	}
}

typedef struct tiler
{
	float	   *acc,
			   *wsum,
			   *x,
			   *logits,
			   *map;
	int		   *xs,
			   *ys;
	resampler	rs;
} tiler;

static void
tiler_free(tiler *t)
{
	mt_free(t->acc);
	mt_free(t->wsum);
	mt_free(t->x);
	mt_free(t->logits);
	mt_free(t->map);
	mt_free(t->xs);
	mt_free(t->ys);
	mt_free(t->rs.carry);
	mt_free(t->rs.row);
	mt_free(t->rs.x0);
	mt_free(t->rs.x1);
	mt_free(t->rs.tx);
}

/*
 * Divide accumulator rows r0 .. r1 - 1 (image rows y0 + r) by their weight
 * in place and deliver them.
 */
static int
finish_rows(tiler *t, int w, int k, int r0, int r1, int y0, int resample,
			mt_tile_rows_fn sink, void *sink_ctx, mt_err *err)
{
	if (r1 <= r0)
		return MT_OK;
	/*
	 * a division, not a product with the reciprocal: one tile of weight 1
	 * (constant blending without overlap) then gives its probabilities
	 * exactly
	 */
	for (size_t p = (size_t) r0 * w; p < (size_t) r1 * w; p++)
	{
		float	   *a = t->acc + p * k;

		for (int j = 0; j < k; j++)
			a[j] = a[j] / t->wsum[p];
	}
	if (resample)
		return resample_rows(&t->rs, y0 + r0, r1 - r0, t->acc + (size_t) r0 * w * k, err);
	return sink(sink_ctx, y0 + r0, r1 - r0, t->acc + (size_t) r0 * w * k, err);
}

int
mt_tile_segment(const float *img, int w, int h, const mt_tile_opts *o,
				mt_tile_forward_fn fwd, void *fwd_ctx,
				mt_tile_rows_fn sink, void *sink_ctx, mt_err *err)
{
	tiler		t;
	tile_sizes	z;
	int			s = o->tile,
				k = o->classes,
				out_w = o->out_w > 0 ? o->out_w : w,
				out_h = o->out_h > 0 ? o->out_h : h;
	int			resample;
	int			stride,
				nx,
				ny,
				passes;
	size_t		row_floats;
	int			rc = MT_OK;

	memset(&t, 0, sizeof(t));
	if (img == NULL || w < 1 || h < 1 || s < 1 || k < 1 || o->tiles_per_pass < 1 ||
		fwd == NULL || sink == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "tiling: bad arguments");
	if (!(o->overlap >= 0 && o->overlap <= MT_TILE_MAX_OVERLAP))
		return mt_seterr(err, MT_ERR_INVALID, "overlap must be between 0 and %g, not %g",
						 MT_TILE_MAX_OVERLAP, o->overlap);
	if ((o->out_w > 0) != (o->out_h > 0) || o->out_w < 0 || o->out_h < 0)
		return mt_seterr(err, MT_ERR_INVALID, "tiling: bad output size %dx%d", o->out_w, o->out_h);
	if (!tile_sizes_of(w, o, &z))
		return mt_seterr(err, MT_ERR_LIMIT, "tiling: a band of a %d pixel wide image is too large", w);
	resample = out_w != w || out_h != h;
	stride = mt_tile_stride(s, o->overlap);
	nx = mt_tile_starts(w, s, stride, NULL);
	ny = mt_tile_starts(h, s, stride, NULL);
	row_floats = (size_t) w * k;

	t.acc = mt_calloc(z.acc, sizeof(float));
	t.wsum = mt_calloc(z.wsum, sizeof(float));
	t.x = mt_calloc(z.x, sizeof(float));
	t.logits = mt_calloc(z.logits, sizeof(float));
	t.map = mt_calloc(z.map, sizeof(float));
	t.xs = mt_calloc(nx, sizeof(int));
	t.ys = mt_calloc(ny, sizeof(int));
	if (resample)
	{
		t.rs.carry = mt_calloc(row_floats, sizeof(float));
		t.rs.row = mt_calloc((size_t) out_w * k, sizeof(float));
		t.rs.x0 = mt_calloc(out_w, sizeof(int));
		t.rs.x1 = mt_calloc(out_w, sizeof(int));
		t.rs.tx = mt_calloc(out_w, sizeof(float));
	}
	if (!t.acc || !t.wsum || !t.x || !t.logits || !t.map || !t.xs || !t.ys ||
		(resample && (!t.rs.carry || !t.rs.row || !t.rs.x0 || !t.rs.x1 || !t.rs.tx)))
	{
		tiler_free(&t);
		return mt_seterr(err, MT_ERR_NOMEM, "tiling: out of memory for a band of %d x %d x %d floats",
						 k, w, s);
	}
	mt_tile_starts(w, s, stride, t.xs);
	mt_tile_starts(h, s, stride, t.ys);
	mt_tile_weights(o->blend, s, t.map);
	if (resample)
	{
		t.rs.w = w;
		t.rs.h = h;
		t.rs.out_w = out_w;
		t.rs.out_h = out_h;
		t.rs.k = k;
		t.rs.carry_row = -1;
		t.rs.sink = sink;
		t.rs.sink_ctx = sink_ctx;
		for (int x = 0; x < out_w; x++)
			mt_tile_source_index(x, w, out_w, &t.rs.x0[x], &t.rs.x1[x], &t.rs.tx[x]);
	}

	/*
	 * The band's tiles split evenly into the fewest passes of at most
	 * tiles_per_pass: a model plans its activations per batch size, so
	 * equal passes (the same in every band) plan once instead of re-planning
	 * for a short last pass.
	 */
	passes = (nx + o->tiles_per_pass - 1) / o->tiles_per_pass;

	for (int j = 0; j < ny && rc == MT_OK; j++)
	{
		int			y0 = t.ys[j];
		int			nb = 0;

		/* keep the rows this band shares with the last; the rest start empty */
		if (j > 0)
		{
			int			shift = y0 - t.ys[j - 1];
			int			keep = s - shift;

			if (keep > 0)
			{
				memmove(t.acc, t.acc + (size_t) shift * row_floats, sizeof(float) * keep * row_floats);
				memmove(t.wsum, t.wsum + (size_t) shift * w, sizeof(float) * keep * w);
			}
			else
				keep = 0;
			memset(t.acc + (size_t) keep * row_floats, 0, sizeof(float) * (s - keep) * row_floats);
			memset(t.wsum + (size_t) keep * w, 0, sizeof(float) * (s - keep) * w);
		}

		for (int i0 = 0, pass = 0; i0 < nx && rc == MT_OK; i0 += nb, pass++)
		{

			nb = nx / passes + (pass < nx % passes);
			if (mt_interrupted())
			{
				rc = mt_seterr(err, MT_ERR_CANCELLED, "cancelled");
				break;
			}
			for (int b = 0; b < nb; b++)
				cut_tile(img, w, h, t.xs[i0 + b], y0, s, t.x + (size_t) b * s * s * 3);
			if ((rc = fwd(fwd_ctx, t.x, nb, s, t.logits, err)) != MT_OK)
				break;
			for (int b = 0; b < nb; b++)
			{
				float	   *p = t.logits + (size_t) b * s * s * k;
				int			x0 = t.xs[i0 + b];
				int			c0 = x0 < 0 ? -x0 : 0;
				int			c1 = x0 + s > w ? w - x0 : s;

				mt_cpu_backend.softmax(s * s, k, p, p);
				for (int r = 0; r < s; r++)
				{
					int			y = y0 + r;

					if (y < 0 || y >= h)
						continue;	/* padding: never part of the output */
					for (int c = c0; c < c1; c++)
					{
						float		wt = t.map[(size_t) r * s + c];
						const float *src = p + ((size_t) r * s + c) * k;
						size_t		at = (size_t) r * w + (x0 + c);
						float	   *a = t.acc + at * k;

						for (int q = 0; q < k; q++)
							a[q] += wt * src[q];
						t.wsum[at] += wt;
					}
				}
			}
		}
		if (rc != MT_OK)
			break;

		/*
		 * Rows above the next band's origin are final; the last band
		 * finishes everything it holds inside the image.
		 */
		{
			int			r0 = y0 < 0 ? -y0 : 0;
			int			r1 = j + 1 < ny ? t.ys[j + 1] - y0 : (y0 + s > h ? h - y0 : s);

			if (r1 > s)
				r1 = s;
			rc = finish_rows(&t, w, k, r0, r1, y0, resample, sink, sink_ctx, err);
		}
	}
	tiler_free(&t);
	return rc;
}
