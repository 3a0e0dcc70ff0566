/*
 * segment.c - scoring with segmentation models: medtl.segment() (a PNG mask
 * at the image's own size), medtl.segment_proba() (the probability map) and
 * medtl._segment_source() (pixel counts per image of a labelled source, for
 * medtl.evaluate).
 *
 * Two modes.  resize (the default): the model sees the image resized to its
 * input size (as in training); its per-pixel class probabilities are
 * resized back to the image's size bilinearly (F.interpolate,
 * align_corners=False) and the mask is their argmax.  The full-size map is
 * never held as floats: each output pixel interpolates the small map on the
 * fly, so a large image costs its mask's bytes, not 4 x classes x its
 * pixels.
 *
 * sliding: the image (optionally scaled first) is cut into tiles of the
 * input size with overlap and their probabilities blended
 * (src/core/tiling.c, as MONAI's sliding_window_inference); the engine
 * hands over finished rows one band of tiles at a time, which become mask
 * bytes or array elements at once, so the floats held are those of one
 * band, not of the whole map.
 */
#include "medtl_pg.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "core/tiling.h"
#include "io/image.h"
#include "io/mask.h"
#include "nn/zoo.h"

static void
require_segmenter(MedtlModel *mm)
{
	if (strcmp(mm->task, "segmentation") != 0 || mm->net == NULL ||
		!mt_zoo_is_segmentation(mm->arch))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("model \"%s\" is a %s model, not a segmentation model", mm->name,
						mm->net == NULL ? "ensemble" : mm->task),
				 errhint("Score classifiers with medtl.predict or medtl.predict_proba.")));
}

/* Width and height of an image from its header. */
static void
image_size(bytea *image, int *w, int *h)
{
	mt_image_info info;
	mt_err		err;

	if (mt_image_probe((const uint8_t *) VARDATA_ANY(image), VARSIZE_ANY_EXHDR(image),
					   &info, &err) != MT_OK)
		medtl_raise(&err, "invalid image");
	*w = info.width;
	*h = info.height;
}

/*
 * Class probabilities of one image at the model's input size: size x size x
 * k floats (palloc'd).
 */
static float *
class_map(MedtlModel *mm, bytea *image)
{
	int			s = mm->input_size;
	int			k = mm->net->num_classes;
	float	   *x;
	float	   *p;

	medtl_engine_enter();
	x = medtl_image_tensor(image, s, mm->mean, mm->std);
	p = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(float) * (size_t) s * s * k);
	medtl_forward(mm, x, 1, p, NULL);
	pfree(x);
	mt_cpu_backend.softmax(s * s, k, p, p);
	return p;
}

/*
 * The probabilities of pixel (x, y) of a w x h image, interpolated from the
 * s x s x k map (PyTorch's bilinear, align_corners=False): out[k].
 */
static void
prob_at(const float *map, int s, int k, int w, int h, int x, int y, float *out)
{
	int			x0,
				x1,
				y0,
				y1;
	float		tx,
				ty;
	const float *a,
			   *b,
			   *c,
			   *d;

	mt_tile_source_index(x, s, w, &x0, &x1, &tx);
	mt_tile_source_index(y, s, h, &y0, &y1, &ty);
	a = map + ((size_t) y0 * s + x0) * k;
	b = map + ((size_t) y0 * s + x1) * k;
	c = map + ((size_t) y1 * s + x0) * k;
	d = map + ((size_t) y1 * s + x1) * k;
	for (int j = 0; j < k; j++)
		out[j] = mt_tile_bilerp(a[j], b[j], c[j], d[j], tx, ty);
}

/*
 * The predicted mask at w x h: class indexes (palloc'd w * h bytes), from
 * the s x s x k probability map.
 */
static uint8 *
argmax_mask(const float *map, int s, int k, int w, int h)
{
	uint8	   *mask = MemoryContextAllocHuge(CurrentMemoryContext, (size_t) w * h);
	float	   *p = palloc(sizeof(float) * k);

	for (int y = 0; y < h; y++)
	{
		for (int x = 0; x < w; x++)
		{
			int			best = 0;

			prob_at(map, s, k, w, h, x, y, p);
			for (int j = 1; j < k; j++)
				if (p[j] > p[best])
					best = j;
			mask[(size_t) y * w + x] = (uint8) best;
		}
		if ((y & 63) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	pfree(p);
	return mask;
}

/* How an image is scored: the SQL arguments mode, overlap, scale, blend. */
typedef struct SegOptions
{
	bool		sliding;
	double		overlap;		/* fraction of a tile shared with the next */
	double		scale;			/* resample the image by this before tiling */
	mt_blend	blend;
} SegOptions;

/*
 * The options from text/float8 arguments; raises invalid_parameter_value
 * (22023) for values that are not ones.
 */
static void
parse_options(const char *mode, double overlap, double scale, const char *blend, SegOptions *so)
{
	if (strcmp(mode, "resize") == 0)
		so->sliding = false;
	else if (strcmp(mode, "sliding") == 0)
		so->sliding = true;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mode must be resize or sliding, not \"%s\"", mode)));
	if (!(overlap >= 0 && overlap <= MT_TILE_MAX_OVERLAP))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("overlap must be between 0 and %g, not %g", MT_TILE_MAX_OVERLAP, overlap),
				 errdetail("It is the fraction of a tile that the next tile covers again.")));
	if (!(scale > 0 && isfinite(scale)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("scale must be a positive number, not %g", scale)));
	if (!so->sliding && scale != 1.0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("scale applies only to mode => 'sliding'"),
				 errdetail("The resize mode always resizes the image to the model's input size."),
				 errhint("Pass mode => 'sliding' to tile the image scaled by %g.", scale)));
	if (strcmp(blend, "constant") == 0)
		so->blend = MT_BLEND_CONSTANT;
	else if (strcmp(blend, "gaussian") == 0)
		so->blend = MT_BLEND_GAUSSIAN;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("blend must be constant or gaussian, not \"%s\"", blend)));
	so->overlap = overlap;
	so->scale = scale;
}

/* The options from arguments first .. first + 3 of fcinfo, defaults where absent. */
static void
options_from_args(FunctionCallInfo fcinfo, int first, SegOptions *so)
{
	const char *mode = PG_NARGS() > first ? text_to_cstring(PG_GETARG_TEXT_PP(first)) : "resize";
	double		overlap = PG_NARGS() > first + 1 ? PG_GETARG_FLOAT8(first + 1) : 0.25;
	double		scale = PG_NARGS() > first + 2 ? PG_GETARG_FLOAT8(first + 2) : 1.0;
	const char *blend = PG_NARGS() > first + 3 ? text_to_cstring(PG_GETARG_TEXT_PP(first + 3)) : "constant";

	parse_options(mode, overlap, scale, blend, so);
}

/*
 * Tiles per forward pass: up to 16, fewer for large tiles (2^19 pixels a
 * pass, e.g. 8 tiles of 256 x 256, 2 of 512 x 512) so one pass's
 * activations stay within a few hundred MB.
 */
static int
tiles_per_pass(int size)
{
	double		n = 524288.0 / ((double) size * size);

	return n >= 16 ? 16 : (n < 1 ? 1 : (int) n);
}

/*
 * The engine's forward callback.  The engine is never unwound by a
 * longjmp: an ERROR in medtl_forward (a cancel, a device error) is caught,
 * kept, and turned into a return code; sliding_window rethrows it once the
 * engine has returned.
 */
typedef struct TileForward
{
	MedtlModel *mm;
	ErrorData  *edata;
} TileForward;

static int
pg_tile_forward(void *ctx, const float *x, int n, int size, float *logits, mt_err *err)
{
	TileForward *tf = ctx;
	MemoryContext old = CurrentMemoryContext;
	volatile int rc = MT_OK;

	PG_TRY();
	{
		medtl_forward(tf->mm, x, n, logits, NULL);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		tf->edata = CopyErrorData();
		FlushErrorState();
		rc = mt_seterr(err, MT_ERR_INTERNAL, "%s",
					   tf->edata->message ? tf->edata->message : "the forward pass failed");
	}
	PG_END_TRY();
	return rc;
}

/*
 * Class probabilities of image (w x h, from its header) by sliding window,
 * handed to sink row by row at w x h.  The decoded image (under
 * medtl.max_image_pixels, and so is the scaled one) is held whole; the
 * probabilities one band of tiles at a time.
 */
static void
sliding_window(MedtlModel *mm, bytea *image, int w, int h, const SegOptions *so,
			   mt_tile_rows_fn sink, void *sink_ctx)
{
	mt_image	img;
	mt_tile_opts o;
	TileForward tf = {mm, NULL};
	mt_err		err;
	int			sw = w,
				sh = h;
	int			rc;

	if (so->scale != 1.0)
	{
		double		dw = Max(1.0, rint(w * so->scale)),
					dh = Max(1.0, rint(h * so->scale));

		if (dw * dh > (double) medtl_max_image_pixels)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the %dx%d image scaled by %g is %.0fx%.0f pixels, more than medtl.max_image_pixels (%d)",
							w, h, so->scale, dw, dh, medtl_max_image_pixels)));
		sw = (int) dw;
		sh = (int) dh;
	}
	medtl_engine_enter();
	medtl_decode_image(image, sw == w && sh == h ? 0 : sw, sh, mm->mean, mm->std, &img);
	if (img.width != sw || img.height != sh)
	{
		mt_image_free(&img);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the image decodes to %dx%d but its header says %dx%d",
						img.width, img.height, w, h)));
	}

	memset(&o, 0, sizeof(o));
	o.tile = mm->input_size;
	o.classes = mm->net->num_classes;
	o.overlap = so->overlap;
	o.blend = so->blend;
	o.tiles_per_pass = tiles_per_pass(mm->input_size);
	o.out_w = w;
	o.out_h = h;
	rc = mt_tile_segment(img.data, sw, sh, &o, pg_tile_forward, &tf, sink, sink_ctx, &err);
	mt_image_free(&img);
	if (tf.edata != NULL)
		ReThrowError(tf.edata);
	if (rc != MT_OK)
		medtl_raise(&err, "sliding-window segmentation failed");
}

/* A sink writing each pixel's argmax class into a w x h mask. */
typedef struct MaskSink
{
	uint8	   *mask;
	int			w;
	int			k;
} MaskSink;

static int
mask_rows(void *ctx, int y, int n_rows, const float *prob, mt_err *err)
{
	MaskSink   *ms = ctx;
	size_t		n = (size_t) n_rows * ms->w;
	uint8	   *out = ms->mask + (size_t) y * ms->w;

	for (size_t i = 0; i < n; i++)
	{
		const float *p = prob + i * ms->k;
		int			best = 0;

		/* the first of equal maxima, as argmax_mask */
		for (int j = 1; j < ms->k; j++)
			if (p[j] > p[best])
				best = j;
		out[i] = (uint8) best;
	}
	return MT_OK;
}

/*
 * The predicted mask at w x h (the image's size from its header): class
 * indexes, palloc'd w * h bytes.
 */
static uint8 *
predict_mask(MedtlModel *mm, bytea *image, int w, int h, const SegOptions *so)
{
	int			k = mm->net->num_classes;
	uint8	   *mask;

	if (!so->sliding)
	{
		float	   *map = class_map(mm, image);

		mask = argmax_mask(map, mm->input_size, k, w, h);
		pfree(map);
		return mask;
	}
	mask = MemoryContextAllocHuge(CurrentMemoryContext, (size_t) w * h);
	{
		MaskSink	ms = {mask, w, k};

		sliding_window(mm, image, w, h, so, mask_rows, &ms);
	}
	return mask;
}

/* A PNG of w x h bytes as a bytea. */
static bytea *
png_bytea(const uint8 *pix, int w, int h)
{
	uint8_t    *buf = NULL;
	size_t		len = 0;
	mt_err		err;
	bytea	   *out;

	if (mt_mask_encode_png(pix, w, h, &buf, &len, &err) != MT_OK)
		medtl_raise(&err, "could not encode the mask");
	out = palloc(VARHDRSZ + len);
	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(VARDATA(out), buf, len);
	mt_free(buf);
	return out;
}

/*
 * medtl.segment(model text, image bytea, mode text, overlap float8, scale
 * float8, blend text) -> bytea: the predicted mask as an 8-bit gray PNG at
 * the image's own size; a binary model (two labels) marks its second class
 * 255 and the first 0, like the usual 0/255 masks; a model with more
 * classes writes each pixel's class index (0 = the first label).
 */
PG_FUNCTION_INFO_V1(medtl_segment);
Datum
medtl_segment(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	bytea	   *image = PG_GETARG_BYTEA_PP(1);
	SegOptions	so;
	int			w,
				h,
				k;
	uint8	   *mask;

	options_from_args(fcinfo, 2, &so);
	require_segmenter(mm);
	k = mm->net->num_classes;
	image_size(image, &w, &h);
	mask = predict_mask(mm, image, w, h, &so);
	if (k == 2)
		for (size_t i = 0; i < (size_t) w * h; i++)
			mask[i] = mask[i] ? 255 : 0;
	PG_RETURN_BYTEA_P(png_bytea(mask, w, h));
}

/* A sink writing probabilities into segment_proba's planes. */
typedef struct ProbaSink
{
	float4	   *out;
	int			w,
				h,
				k,
				first;			/* the first class written (1 for a binary model) */
} ProbaSink;

static int
proba_rows(void *ctx, int y, int n_rows, const float *prob, mt_err *err)
{
	ProbaSink  *ps = ctx;

	for (int r = 0; r < n_rows; r++)
		for (int x = 0; x < ps->w; x++)
		{
			const float *p = prob + ((size_t) r * ps->w + x) * ps->k;

			for (int c = ps->first; c < ps->k; c++)
				ps->out[((size_t) (c - ps->first) * ps->h + y + r) * ps->w + x] = p[c];
		}
	return MT_OK;
}

/*
 * medtl.segment_proba(model text, image bytea, mode text, overlap float8,
 * scale float8, blend text) -> real[]: the probability map at the image's
 * own size, rows then columns: for a binary model the second class's
 * probability as [height][width]; otherwise [classes][height][width].
 */
PG_FUNCTION_INFO_V1(medtl_segment_proba);
Datum
medtl_segment_proba(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	bytea	   *image = PG_GETARG_BYTEA_PP(1);
	SegOptions	so;
	int			w,
				h,
				k,
				s;
	int			first;
	int			planes;
	float	   *map;
	float	   *p;
	size_t		n;
	size_t		bytes;
	ArrayType  *arr;
	float4	   *out;
	int			dims[3],
				lbs[3] = {1, 1, 1};

	options_from_args(fcinfo, 2, &so);
	require_segmenter(mm);
	k = mm->net->num_classes;
	s = mm->input_size;
	image_size(image, &w, &h);
	first = k == 2 ? 1 : 0;
	planes = k - first;
	n = (size_t) w * h * planes;
	bytes = ARR_OVERHEAD_NONULLS(3) + n * sizeof(float4);
	if (!AllocSizeIsValid(bytes) || n > (size_t) MaxArraySize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the probability map of a %dx%d image with %d classes is too large for an array", w, h, planes),
				 errhint("Use medtl.segment for the mask, or score a smaller image.")));
	if (planes == 1)
	{
		dims[0] = h;
		dims[1] = w;
	}
	else
	{
		dims[0] = planes;
		dims[1] = h;
		dims[2] = w;
	}
	arr = (ArrayType *) palloc0(bytes);
	SET_VARSIZE(arr, bytes);
	arr->ndim = planes == 1 ? 2 : 3;
	arr->dataoffset = 0;
	arr->elemtype = FLOAT4OID;
	memcpy(ARR_DIMS(arr), dims, sizeof(int) * arr->ndim);
	memcpy(ARR_LBOUND(arr), lbs, sizeof(int) * arr->ndim);
	out = (float4 *) ARR_DATA_PTR(arr);
	if (so.sliding)
	{
		ProbaSink	ps = {out, w, h, k, first};

		sliding_window(mm, image, w, h, &so, proba_rows, &ps);
		PG_RETURN_ARRAYTYPE_P(arr);
	}
	map = class_map(mm, image);
	p = palloc(sizeof(float) * k);
	for (int y = 0; y < h; y++)
	{
		for (int x = 0; x < w; x++)
		{
			prob_at(map, s, k, w, h, x, y, p);
			for (int c = first; c < k; c++)
				out[((size_t) (c - first) * h + y) * w + x] = p[c];
		}
		if ((y & 63) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	PG_RETURN_ARRAYTYPE_P(arr);
}

static ArrayType *
int8_array(const int64 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/*
 * medtl._segment_source(model, source, image_column, mask_column,
 * skip_bad_rows, mode, overlap, scale, blend) -> setof (row bigint, width
 * int, height int, pixels bigint, correct bigint, tp bigint[], fp bigint[],
 * fn bigint[]): per row of a
 * labelled source, the predicted mask against the truth at the truth's own
 * size, counted per class (arrays in label order).  Bad rows raise (or are
 * skipped, with a NOTICE for the first few).  Images are scored as
 * medtl.segment scores them with the same mode and options.  Used by
 * medtl.evaluate.
 */
PG_FUNCTION_INFO_V1(medtl_segment_source);
Datum
medtl_segment_source(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *source = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *image_col = text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *mask_col = text_to_cstring(PG_GETARG_TEXT_PP(3));
	bool		skip = PG_GETARG_BOOL(4);
	SegOptions	so;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "medtl segmentation scoring",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext rowcxt = AllocSetContextCreate(cxt, "medtl segmentation row",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	MedtlModel *mm;
	int			k;
	StringInfoData q;
	Portal		portal;
	int64		row = 0;
	int			n_bad = 0;

	options_from_args(fcinfo, 5, &so);
	InitMaterializedSRF(fcinfo, 0);
	old = MemoryContextSwitchTo(cxt);
	mm = medtl_load_model_private(model, cxt);
	require_segmenter(mm);
	k = mm->net->num_classes;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	initStringInfo(&q);
	appendStringInfo(&q, "t.%s, t.%s", quote_identifier(image_col), quote_identifier(mask_col));
	portal = medtl_source_cursor(source, q.data);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 16);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		img_null,
						mask_null;
			Datum		img = SPI_getbinval(t, d, 1, &img_null);
			Datum		msk = SPI_getbinval(t, d, 2, &mask_null);
			const char *problem = NULL;
			int			sqlstate = ERRCODE_DATA_EXCEPTION;
			mt_err		err;
			mt_mask		truth = {0};
			int			w = 0,
						h = 0;

			row++;
			if (i == 0 && (SPI_gettypeid(d, 1) != BYTEAOID || SPI_gettypeid(d, 2) != BYTEAOID))
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("image column \"%s\" and mask column \"%s\" must be of type bytea",
								image_col, mask_col)));
			MemoryContextSwitchTo(rowcxt);
			if (img_null || mask_null)
			{
				problem = img_null ? "NULL image" : "NULL mask";
				sqlstate = ERRCODE_NULL_VALUE_NOT_ALLOWED;
			}
			else
			{
				bytea	   *mb = DatumGetByteaPP(msk);
				mt_image_info info;
				bytea	   *ib = DatumGetByteaPP(img);

				if (mt_image_probe((const uint8_t *) VARDATA_ANY(ib), VARSIZE_ANY_EXHDR(ib), &info, &err) != MT_OK)
				{
					problem = psprintf("invalid image: %s", err.msg);
					sqlstate = medtl_sqlstate(err.code);
				}
				else if (mt_mask_decode((const uint8_t *) VARDATA_ANY(mb), VARSIZE_ANY_EXHDR(mb),
										(size_t) medtl_max_image_pixels, &truth, &err) != MT_OK ||
						 mt_mask_to_classes_auto(&truth, k, &err) != MT_OK)
				{
					problem = psprintf("%s mask: %s", err.code == MT_ERR_CORRUPT ? "invalid" : "unusable", err.msg);
					sqlstate = medtl_sqlstate(err.code);
				}
				else if (truth.w != info.width || truth.h != info.height)
				{
					problem = psprintf("the mask is %dx%d but its image is %dx%d",
									   truth.w, truth.h, info.width, info.height);
					sqlstate = ERRCODE_DATA_EXCEPTION;
				}
				w = info.width;
				h = info.height;
			}
			if (problem != NULL)
			{
				mt_mask_free(&truth);
				if (!skip)
					ereport(ERROR,
							(errcode(sqlstate),
							 errmsg("row %lld of the source: %s", (long long) row, problem),
							 errhint("Fix or filter the row, or pass skip_bad_rows => true to skip such rows.")));
				if (++n_bad <= 5)
					ereport(NOTICE, (errmsg("skipping row %lld of the source: %s", (long long) row, problem)));
				MemoryContextSwitchTo(cxt);
				MemoryContextReset(rowcxt);
				continue;
			}
			{
				uint8	   *pred = predict_mask(mm, DatumGetByteaPP(img), w, h, &so);
				int64	   *tp = palloc0(sizeof(int64) * k);
				int64	   *fp = palloc0(sizeof(int64) * k);
				int64	   *fn = palloc0(sizeof(int64) * k);
				int64		correct = 0;
				Datum		values[8];
				bool		nulls[8] = {0};

				for (size_t p = 0; p < (size_t) w * h; p++)
				{
					int			a = pred[p],
								b = truth.data[p];

					if (a == b)
					{
						tp[a]++;
						correct++;
					}
					else
					{
						fp[a]++;
						fn[b]++;
					}
				}
				mt_mask_free(&truth);
				values[0] = Int64GetDatum(row);
				values[1] = Int32GetDatum(w);
				values[2] = Int32GetDatum(h);
				values[3] = Int64GetDatum((int64) w * h);
				values[4] = Int64GetDatum(correct);
				MemoryContextSwitchTo(old);
				values[5] = PointerGetDatum(int8_array(tp, k));
				values[6] = PointerGetDatum(int8_array(fp, k));
				values[7] = PointerGetDatum(int8_array(fn, k));
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
			MemoryContextSwitchTo(cxt);
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_finish();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return (Datum) 0;
}
