/*
 * segment.c - scoring with segmentation models: medtl.segment() (a PNG mask
 * at the image's own size), medtl.segment_proba() (the probability map) and
 * medtl._segment_source() (pixel counts per image of a labelled source, for
 * medtl.evaluate).
 *
 * The model sees the image resized to its input size (as in training); its
 * per-pixel class probabilities are resized back to the image's size
 * bilinearly (F.interpolate, align_corners=False) and the mask is their
 * argmax.  The full-size map is never held as floats: each output pixel
 * interpolates the small map on the fly, so a large image costs its mask's
 * bytes, not 4 x classes x its pixels.
 */
#include "medtl_pg.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

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
 * Source coordinate of output index o when n_in values are resized to n_out
 * (PyTorch's bilinear, align_corners=False): the two neighbours and the
 * weight of the second.
 */
static void
source_index(int o, int n_in, int n_out, int *i0, int *i1, float *t)
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

/*
 * The probabilities of pixel (x, y) of a w x h image, interpolated from the
 * s x s x k map: out[k].
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

	source_index(x, s, w, &x0, &x1, &tx);
	source_index(y, s, h, &y0, &y1, &ty);
	a = map + ((size_t) y0 * s + x0) * k;
	b = map + ((size_t) y0 * s + x1) * k;
	c = map + ((size_t) y1 * s + x0) * k;
	d = map + ((size_t) y1 * s + x1) * k;
	for (int j = 0; j < k; j++)
		out[j] = (1 - ty) * ((1 - tx) * a[j] + tx * b[j]) + ty * ((1 - tx) * c[j] + tx * d[j]);
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
 * medtl.segment(model text, image bytea) -> bytea: the predicted mask as an
 * 8-bit gray PNG at the image's own size; a binary model (two labels) marks
 * its second class 255 and the first 0, like the usual 0/255 masks; a model
 * with more classes writes each pixel's class index (0 = the first label).
 */
PG_FUNCTION_INFO_V1(medtl_segment);
Datum
medtl_segment(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	bytea	   *image = PG_GETARG_BYTEA_PP(1);
	int			w,
				h,
				k;
	float	   *map;
	uint8	   *mask;

	require_segmenter(mm);
	k = mm->net->num_classes;
	image_size(image, &w, &h);
	map = class_map(mm, image);
	mask = argmax_mask(map, mm->input_size, k, w, h);
	if (k == 2)
		for (size_t i = 0; i < (size_t) w * h; i++)
			mask[i] = mask[i] ? 255 : 0;
	PG_RETURN_BYTEA_P(png_bytea(mask, w, h));
}

/*
 * medtl.segment_proba(model text, image bytea) -> real[]: the probability
 * map at the image's own size, rows then columns: for a binary model the
 * second class's probability as [height][width]; otherwise
 * [classes][height][width].
 */
PG_FUNCTION_INFO_V1(medtl_segment_proba);
Datum
medtl_segment_proba(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	bytea	   *image = PG_GETARG_BYTEA_PP(1);
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
	map = class_map(mm, image);
	p = palloc(sizeof(float) * k);
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
 * skip_bad_rows) -> setof (row bigint, width int, height int, pixels bigint,
 * correct bigint, tp bigint[], fp bigint[], fn bigint[]): per row of a
 * labelled source, the predicted mask against the truth at the truth's own
 * size, counted per class (arrays in label order).  Bad rows raise (or are
 * skipped, with a NOTICE for the first few).  Used by medtl.evaluate.
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
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "medtl segmentation scoring",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext rowcxt = AllocSetContextCreate(cxt, "medtl segmentation row",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	MedtlModel *mm;
	int			k;
	StringInfoData q;
	SPIPlanPtr	plan;
	Portal		portal;
	int64		row = 0;
	int			n_bad = 0;
	char	   *from;

	InitMaterializedSRF(fcinfo, 0);
	old = MemoryContextSwitchTo(cxt);
	mm = medtl_load_model_private(model, cxt);
	require_segmenter(mm);
	k = mm->net->num_classes;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	from = medtl_source_from_item(source);
	initStringInfo(&q);
	appendStringInfo(&q, "SELECT t.%s, t.%s FROM %s t", quote_identifier(image_col),
					 quote_identifier(mask_col), from);
	plan = SPI_prepare(q.data, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the source query: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
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
				float	   *map = class_map(mm, DatumGetByteaPP(img));
				uint8	   *pred = argmax_mask(map, mm->input_size, k, w, h);
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
