/*
 * seg_metrics.c - segmentation masks in SQL: Dice and IoU of two masks, the
 * same as aggregates (mean of per-pair values, and pooled over all pixels),
 * and helpers to build, read and describe masks.
 *
 * Foreground is a nonzero pixel (so 0/255 and 0/1 masks both work; for a
 * JPEG mask a value above 127, as compression blurs its edges), or a pixel
 * equal to class when one is given.  When both masks are empty Dice and IoU
 * are 0/0: the caller's empty_value (default 1) is returned, or NULL; when
 * only one is empty they are 0.
 */
#include "medtl_pg.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "io/image.h"
#include "io/mask.h"

/* Decode a mask or raise (what names it in the message, e.g. "predicted mask"). */
void
medtl_decode_mask(bytea *mask, const char *what, mt_mask *out)
{
	mt_err		err;
	char		prefix[64];

	if (mt_mask_decode((const uint8_t *) VARDATA_ANY(mask), VARSIZE_ANY_EXHDR(mask),
					   (size_t) medtl_max_image_pixels, out, &err) != MT_OK)
	{
		if (err.code == MT_ERR_LIMIT && err.detail[0] == '\0')
			mt_setdetail(&err, "medtl.max_image_pixels is %d.", medtl_max_image_pixels);
		snprintf(prefix, sizeof(prefix), "invalid %s", what);
		medtl_raise(&err, prefix);
	}
}

void
medtl_mask_counts(bytea *pred, bytea *truth, int cls, int64 *inter, int64 *psum,
				  int64 *tsum)
{
	mt_mask		p,
				t;
	mt_err		err;
	int64_t		i,
				ps,
				ts;

	if (cls > 255)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("class must be between 0 and 255"),
				 errdetail("Masks hold one byte per pixel.")));
	medtl_decode_mask(pred, "predicted mask", &p);
	medtl_decode_mask(truth, "true mask", &t);
	if (mt_mask_counts(&p, &t, cls < 0 ? -1 : cls, &i, &ps, &ts, &err) != MT_OK)
		medtl_raise(&err, NULL);
	mt_mask_free(&p);
	mt_mask_free(&t);
	*inter = i;
	*psum = ps;
	*tsum = ts;
}

/* The class argument at position argno: -1 when NULL or absent; raises when negative. */
static int
class_arg(FunctionCallInfo fcinfo, int argno)
{
	int			cls;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return -1;
	cls = PG_GETARG_INT32(argno);
	if (cls < 0 || cls > 255)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("class must be between 0 and 255"),
				 errdetail("Masks hold one byte per pixel; class %d cannot occur.", cls)));
	return cls;
}

/* Dice (iou = false) or IoU of one pair of masks; *isnull for both empty with a NULL empty_value. */
static double
pair_metric(FunctionCallInfo fcinfo, bool iou, bool *isnull)
{
	int64		inter,
				psum,
				tsum,
				denom;

	medtl_mask_counts(PG_GETARG_BYTEA_PP(0), PG_GETARG_BYTEA_PP(1),
					  class_arg(fcinfo, 3), &inter, &psum, &tsum);
	denom = iou ? psum + tsum - inter : psum + tsum;
	*isnull = false;
	if (denom == 0)
	{
		/* both empty: the caller's choice */
		if (PG_ARGISNULL(2))
		{
			*isnull = true;
			return 0;
		}
		return PG_GETARG_FLOAT8(2);
	}
	return iou ? (double) inter / (double) denom : 2.0 * (double) inter / (double) denom;
}

/* medtl.dice(predicted, truth, empty_value, class) -> float8: 2|P∩T| / (|P| + |T|). */
PG_FUNCTION_INFO_V1(medtl_dice);
Datum
medtl_dice(PG_FUNCTION_ARGS)
{
	bool		isnull;
	double		v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	v = pair_metric(fcinfo, false, &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(v);
}

/* medtl.iou(predicted, truth, empty_value, class) -> float8: |P∩T| / |P∪T|. */
PG_FUNCTION_INFO_V1(medtl_iou);
Datum
medtl_iou(PG_FUNCTION_ARGS)
{
	bool		isnull;
	double		v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	v = pair_metric(fcinfo, true, &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(v);
}

/* ---------------------------------------------------------- aggregates -- */

/*
 * One state serves all four aggregates (mean_dice, pooled_dice, mean_iou,
 * pooled_iou): per-pair sums for the means, pixel counts for the pooled
 * values.  Fixed size, so serialising it is a copy.
 */
typedef struct SegState
{
	int64		pairs;			/* rows with both masks */
	int64		n_dice;			/* pairs with a per-pair Dice (not NULL) */
	double		sum_dice;
	int64		n_iou;
	double		sum_iou;
	int64		inter;			/* pooled over all pairs */
	int64		psum;
	int64		tsum;
	double		empty_value;	/* the last one given */
	bool		empty_null;
} SegState;

/* The aggregate's state, created in its memory context on first use. */
static SegState *
seg_state(FunctionCallInfo fcinfo, int argno)
{
	MemoryContext aggcxt;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "medtl segmentation aggregate called in non-aggregate context");
	if (!PG_ARGISNULL(argno))
		return (SegState *) PG_GETARG_POINTER(argno);
	return (SegState *) MemoryContextAllocZero(aggcxt, sizeof(SegState));
}

/* Transition: (state, predicted, truth [, empty_value [, class]]); NULL masks skipped. */
PG_FUNCTION_INFO_V1(medtl_seg_accum);
Datum
medtl_seg_accum(PG_FUNCTION_ARGS)
{
	SegState   *st = seg_state(fcinfo, 0);
	bool		empty_null = false;
	double		empty_value = 1.0;
	int64		inter,
				psum,
				tsum;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_POINTER(st);
	if (PG_NARGS() > 3)
	{
		empty_null = PG_ARGISNULL(3);
		if (!empty_null)
			empty_value = PG_GETARG_FLOAT8(3);
	}
	medtl_mask_counts(PG_GETARG_BYTEA_PP(1), PG_GETARG_BYTEA_PP(2),
					  class_arg(fcinfo, 4), &inter, &psum, &tsum);
	st->pairs++;
	st->inter += inter;
	st->psum += psum;
	st->tsum += tsum;
	st->empty_value = empty_value;
	st->empty_null = empty_null;
	if (psum + tsum == 0)
	{
		/* both empty: Dice and IoU are the empty value, or the pair is skipped */
		if (!empty_null)
		{
			st->n_dice++;
			st->sum_dice += empty_value;
			st->n_iou++;
			st->sum_iou += empty_value;
		}
	}
	else
	{
		st->n_dice++;
		st->sum_dice += 2.0 * (double) inter / (double) (psum + tsum);
		st->n_iou++;
		st->sum_iou += (double) inter / (double) (psum + tsum - inter);
	}
	PG_RETURN_POINTER(st);
}

/* Combine two partial states (parallel aggregation). */
PG_FUNCTION_INFO_V1(medtl_seg_combine);
Datum
medtl_seg_combine(PG_FUNCTION_ARGS)
{
	SegState   *a = seg_state(fcinfo, 0);
	SegState   *b = PG_ARGISNULL(1) ? NULL : (SegState *) PG_GETARG_POINTER(1);

	if (b == NULL || b->pairs == 0)
		PG_RETURN_POINTER(a);
	if (a->pairs == 0)
	{
		a->empty_value = b->empty_value;
		a->empty_null = b->empty_null;
	}
	a->pairs += b->pairs;
	a->n_dice += b->n_dice;
	a->sum_dice += b->sum_dice;
	a->n_iou += b->n_iou;
	a->sum_iou += b->sum_iou;
	a->inter += b->inter;
	a->psum += b->psum;
	a->tsum += b->tsum;
	PG_RETURN_POINTER(a);
}

/* The state as bytes (a parallel worker hands it to the leader). */
PG_FUNCTION_INFO_V1(medtl_seg_serialize);
Datum
medtl_seg_serialize(PG_FUNCTION_ARGS)
{
	SegState   *st = (SegState *) PG_GETARG_POINTER(0);
	bytea	   *out = palloc(VARHDRSZ + sizeof(SegState));

	SET_VARSIZE(out, VARHDRSZ + sizeof(SegState));
	memcpy(VARDATA(out), st, sizeof(SegState));
	PG_RETURN_BYTEA_P(out);
}

/* The state back from bytes. */
PG_FUNCTION_INFO_V1(medtl_seg_deserialize);
Datum
medtl_seg_deserialize(PG_FUNCTION_ARGS)
{
	bytea	   *in = PG_GETARG_BYTEA_PP(0);
	SegState   *st;

	if (!AggCheckCallContext(fcinfo, NULL))
		elog(ERROR, "medtl_seg_deserialize called in non-aggregate context");
	if (VARSIZE_ANY_EXHDR(in) != sizeof(SegState))
		elog(ERROR, "medtl_seg_deserialize: state of %zu bytes, expected %zu",
			 (size_t) VARSIZE_ANY_EXHDR(in), sizeof(SegState));
	st = palloc(sizeof(SegState));
	memcpy(st, VARDATA_ANY(in), sizeof(SegState));
	PG_RETURN_POINTER(st);
}

/* Mean of per-pair values: NULL when no pair has one. */
static Datum
mean_final(FunctionCallInfo fcinfo, bool iou)
{
	SegState   *st = PG_ARGISNULL(0) ? NULL : (SegState *) PG_GETARG_POINTER(0);
	int64		n;

	if (st == NULL)
		PG_RETURN_NULL();
	n = iou ? st->n_iou : st->n_dice;
	if (n == 0)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8((iou ? st->sum_iou : st->sum_dice) / (double) n);
}

/* Pooled value from the summed counts: the empty value when every mask was empty. */
static Datum
pooled_final(FunctionCallInfo fcinfo, bool iou)
{
	SegState   *st = PG_ARGISNULL(0) ? NULL : (SegState *) PG_GETARG_POINTER(0);
	int64		denom;

	if (st == NULL || st->pairs == 0)
		PG_RETURN_NULL();
	denom = iou ? st->psum + st->tsum - st->inter : st->psum + st->tsum;
	if (denom == 0)
	{
		if (st->empty_null)
			PG_RETURN_NULL();
		PG_RETURN_FLOAT8(st->empty_value);
	}
	PG_RETURN_FLOAT8((iou ? 1.0 : 2.0) * (double) st->inter / (double) denom);
}

PG_FUNCTION_INFO_V1(medtl_mean_dice_final);
Datum
medtl_mean_dice_final(PG_FUNCTION_ARGS)
{
	return mean_final(fcinfo, false);
}

PG_FUNCTION_INFO_V1(medtl_mean_iou_final);
Datum
medtl_mean_iou_final(PG_FUNCTION_ARGS)
{
	return mean_final(fcinfo, true);
}

PG_FUNCTION_INFO_V1(medtl_pooled_dice_final);
Datum
medtl_pooled_dice_final(PG_FUNCTION_ARGS)
{
	return pooled_final(fcinfo, false);
}

PG_FUNCTION_INFO_V1(medtl_pooled_iou_final);
Datum
medtl_pooled_iou_final(PG_FUNCTION_ARGS)
{
	return pooled_final(fcinfo, true);
}

/* ------------------------------------------------------------- helpers -- */

/*
 * medtl.mask_png(pixels int[]) -> bytea: an 8-bit gray PNG of a 2-D array
 * (rows of pixels; a 1-D array is one row), values 0 to 255.
 */
PG_FUNCTION_INFO_V1(medtl_mask_png);
Datum
medtl_mask_png(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	int			ndim = ARR_NDIM(arr);
	int		   *dims = ARR_DIMS(arr);
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				w,
				h;
	uint8	   *pix;
	uint8_t    *png;
	size_t		png_len;
	mt_err		err;
	bytea	   *out;

	if (ndim < 1 || ndim > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a mask needs a 1- or 2-dimensional array, not %d-dimensional", ndim),
				 errhint("Give rows of pixels: ARRAY[[0, 255], [255, 0]].")));
	h = ndim == 2 ? dims[0] : 1;
	w = ndim == 2 ? dims[1] : dims[0];
	if (w > MT_IMAGE_MAX_SIDE || h > MT_IMAGE_MAX_SIDE)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("mask of %d x %d pixels is too large", w, h),
				 errdetail("Each side may be at most %d.", MT_IMAGE_MAX_SIDE)));
	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &n);
	pix = palloc(n);
	for (int i = 0; i < n; i++)
	{
		int32		v;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("mask pixel (%d, %d) is NULL", i % w, i / w)));
		v = DatumGetInt32(elems[i]);
		if (v < 0 || v > 255)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("mask pixel (%d, %d) is %d", i % w, i / w, v),
					 errdetail("Mask values are 0 to 255.")));
		pix[i] = (uint8) v;
	}
	if (mt_mask_encode_png(pix, w, h, &png, &png_len, &err) != MT_OK)
		medtl_raise(&err, "could not encode mask");
	out = palloc(VARHDRSZ + png_len);
	SET_VARSIZE(out, VARHDRSZ + png_len);
	memcpy(VARDATA(out), png, png_len);
	mt_free(png);
	pfree(pix);
	PG_RETURN_BYTEA_P(out);
}

/* medtl.mask_pixels(mask bytea) -> int[][]: the decoded values, rows of pixels. */
PG_FUNCTION_INFO_V1(medtl_mask_pixels);
Datum
medtl_mask_pixels(PG_FUNCTION_ARGS)
{
	mt_mask		m;
	Datum	   *elems;
	size_t		n;
	int			dims[2],
				lbs[2] = {1, 1};

	medtl_decode_mask(PG_GETARG_BYTEA_PP(0), "mask", &m);
	n = (size_t) m.w * m.h;
	if (n > MaxAllocSize / sizeof(Datum) / 2)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("mask of %d x %d pixels is too large for an array", m.w, m.h)));
	elems = palloc(n * sizeof(Datum));
	for (size_t i = 0; i < n; i++)
		elems[i] = Int32GetDatum(m.data[i]);
	dims[0] = m.h;
	dims[1] = m.w;
	mt_mask_free(&m);
	PG_RETURN_ARRAYTYPE_P(construct_md_array(elems, NULL, 2, dims, lbs, INT4OID, 4,
											 true, TYPALIGN_INT));
}

/*
 * medtl.mask_info(mask bytea) -> (format, width, height, foreground,
 * distinct_values): what a mask holds, to see why a metric or a training
 * run reads it as it does.
 */
PG_FUNCTION_INFO_V1(medtl_mask_info);
Datum
medtl_mask_info(PG_FUNCTION_ARGS)
{
	bytea	   *mask = PG_GETARG_BYTEA_PP(0);
	mt_mask		m;
	int64		hist[256] = {0};
	int64		fg = 0;
	Datum		vals[256];
	int			nvals = 0;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	size_t		n;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	medtl_decode_mask(mask, "mask", &m);
	n = (size_t) m.w * m.h;
	for (size_t i = 0; i < n; i++)
		hist[m.data[i]]++;
	for (int v = 0; v < 256; v++)
		if (hist[v] > 0)
		{
			vals[nvals++] = Int32GetDatum(v);
			/* the metrics' foreground rule (class NULL) */
			if (m.lossy ? v > 127 : v != 0)
				fg += hist[v];
		}
	values[0] = CStringGetTextDatum(m.lossy ? "jpeg" : "png");
	values[1] = Int32GetDatum(m.w);
	values[2] = Int32GetDatum(m.h);
	values[3] = Int64GetDatum(fg);
	values[4] = PointerGetDatum(construct_array(vals, nvals, INT4OID, 4, true, TYPALIGN_INT));
	mt_mask_free(&m);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
