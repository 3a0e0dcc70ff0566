/*
 * dataset.c - labelled image rows read through an SPI cursor, decoded and
 * resized once (with their masks, for segmentation), kept as bytes for the epochs of a training run: in memory up
 * to medtl.train_memory, beyond it in a temporary file (PostgreSQL's BufFile,
 * as sorts and hashes spill past work_mem: subject to temp_file_limit and
 * temp_tablespaces, removed when the transaction ends, even on error).
 */
#include "medtl_pg.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/buffile.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "io/image.h"
#include "io/mask.h"

int			medtl_train_memory_mb = 2048;

/* The FROM item of a source (a query or a table name), via medtl._source_from. */
char *
medtl_source_from_item(const char *source)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(source)};
	bool		isnull;
	int			rc;

	rc = SPI_execute_with_args("SELECT medtl._source_from($1)", 1, argtypes, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not resolve source");
	return TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static int
label_index(char **labels, int n_labels, const char *label)
{
	for (int i = 0; i < n_labels; i++)
		if (strcmp(labels[i], label) == 0)
			return i;
	return -1;
}

/*
 * Decode and resize one image into size x size x 3 bytes; false (with err)
 * if bad.  *w and *h (if not NULL) get the image's own size (its decoded
 * size when scaled: a JPEG through DCT scaling, medtl.jpeg_scaling).
 */
static bool
image_to_bytes(bytea *image, int size, bool scaled, uint8 *out, int *w, int *h, mt_err *err)
{
	mt_image	img,
				resized;
	size_t		n = (size_t) size * size * 3;

	if (mt_image_decode_scaled((const uint8_t *) VARDATA_ANY(image), VARSIZE_ANY_EXHDR(image),
							   (size_t) medtl_max_image_pixels, scaled ? size : 0,
							   scaled ? size : 0, &img, err) != MT_OK)
		return false;
	if (w)
		*w = img.width;
	if (h)
		*h = img.height;
	if (img.width != size || img.height != size)
	{
		int			rc = mt_image_resize_u8(&img, size, size, &resized, err);

		mt_image_free(&img);
		if (rc != MT_OK)
			return false;
		img = resized;
	}
	for (size_t i = 0; i < n; i++)
	{
		float		v = img.data[i] * 255.0f + 0.5f;

		out[i] = (uint8) (v < 0 ? 0 : (v > 255 ? 255 : v));
	}
	mt_image_free(&img);
	return true;
}

static void
bad_row(int64 row, bool skip, int *n_bad, int sqlstate, const char *fmt, const char *what,
		const char *detail)
{
	if (skip)
	{
		(*n_bad)++;
		if (*n_bad <= 5)
			ereport(NOTICE,
					(errmsg("skipping row %lld of the source: %s", (long long) row, what)));
		return;
	}
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg(fmt, (long long) row, what),
			 detail && detail[0] ? errdetail("%s", detail) : 0,
			 errhint("Fix or filter the row, or pass skip_bad_rows => true to skip such rows.")));
}

/*
 * One mask into size x size class indexes (out), checked against its image's
 * size (w x h) and the model's classes; false (with err) if bad.
 */
static bool
mask_to_bytes(bytea *mask, int n_classes, int size, int w, int h, uint8 *out, mt_err *err)
{
	mt_mask		m,
				r;

	if (mt_mask_decode((const uint8_t *) VARDATA_ANY(mask), VARSIZE_ANY_EXHDR(mask),
					   (size_t) medtl_max_image_pixels, &m, err) != MT_OK)
		return false;
	if (m.w != w || m.h != h)
	{
		mt_seterr(err, MT_ERR_SHAPE, "the mask is %dx%d but its image is %dx%d", m.w, m.h, w, h);
		mt_mask_free(&m);
		return false;
	}
	if (mt_mask_to_classes_auto(&m, n_classes, err) != MT_OK)
	{
		mt_mask_free(&m);
		return false;
	}
	if (m.w != size || m.h != size)
	{
		int			rc = mt_mask_resize_nearest(&m, size, size, &r, err);

		mt_mask_free(&m);
		if (rc != MT_OK)
			return false;
		m = r;
	}
	memcpy(out, m.data, (size_t) size * size);
	mt_mask_free(&m);
	return true;
}

Portal
medtl_source_cursor(const char *source, const char *columns)
{
	StringInfoData q;
	SPIPlanPtr	plan;

	initStringInfo(&q);
	appendStringInfo(&q, "SELECT %s FROM %s t", columns, medtl_source_from_item(source));
	plan = SPI_prepare(q.data, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the source query: %s", SPI_result_code_string(SPI_result));
	return SPI_cursor_open(NULL, plan, NULL, NULL, true);
}

MedtlDataset *
medtl_read_dataset(const char *source, const char *image_col, const char *label_col,
				   const char *group_col, char **labels, int n_labels, int size,
				   bool skip_bad_rows, bool masks)
{
	MedtlDataset *ds = palloc0(sizeof(MedtlDataset));
	size_t		per_image = (size_t) size * size * 3;
	size_t		per = per_image + (masks ? (size_t) size * size : 0);
	size_t		budget = (size_t) medtl_train_memory_mb * 1024 * 1024;
	int			cap = 256;
	size_t		max_mem = budget / per;	/* images that fit the budget */
	int			mem_cap = (int) Min((size_t) cap, max_mem);
	StringInfoData q;
	Portal		portal;
	int64		row = 0;
	uint8	   *tmp = palloc(per);
	MemoryContext outer = CurrentMemoryContext;

	ds->size = size;
	ds->has_masks = masks;
	ds->pixels = MemoryContextAllocHuge(outer, Max(per * mem_cap, 1));
	ds->labels = palloc(sizeof(int) * cap);
	ds->rows = palloc(sizeof(int64) * cap);
	if (group_col)
		ds->groups = palloc(sizeof(char *) * cap);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	initStringInfo(&q);
	appendStringInfo(&q, "t.%s, t.%s%s", quote_identifier(image_col), quote_identifier(label_col),
					 masks ? "" : "::text");
	if (group_col)
		appendStringInfo(&q, ", t.%s::text", quote_identifier(group_col));
	portal = medtl_source_cursor(source, q.data);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 64);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		img_null,
						lab_null,
						grp_null = false;
			Datum		img = SPI_getbinval(t, d, 1, &img_null);
			Datum		lab = SPI_getbinval(t, d, 2, &lab_null);
			char	   *label = NULL;
			int			k = 0;
			int			img_w,
						img_h;
			mt_err		err;

			row++;
			if (i == 0 && SPI_gettypeid(d, 1) != BYTEAOID)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("image column \"%s\" must be of type bytea, not %s",
								image_col, format_type_be(SPI_gettypeid(d, 1)))));
			if (i == 0 && masks && SPI_gettypeid(d, 2) != BYTEAOID)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("mask column \"%s\" must be of type bytea (a PNG or JPEG mask), not %s",
								label_col, format_type_be(SPI_gettypeid(d, 2)))));
			if (img_null || lab_null)
			{
				bad_row(row, skip_bad_rows, &ds->n_bad, ERRCODE_NULL_VALUE_NOT_ALLOWED,
						"row %lld of the source has a %s",
						img_null ? "NULL image" : masks ? "NULL mask" : "NULL label", NULL);
				continue;
			}
			if (!masks)
			{
				label = TextDatumGetCString(lab);
				k = label_index(labels, n_labels, label);
			}
			if (k < 0)
			{
				char	   *detail = n_labels <= 20 ?
					psprintf("The model's labels are: %s.", medtl_join_labels(labels, n_labels)) :
					psprintf("The model has %d labels (medtl.models.labels).", n_labels);

				bad_row(row, skip_bad_rows, &ds->n_bad, ERRCODE_INVALID_PARAMETER_VALUE,
						"row %lld of the source has label \"%s\", which the model does not have",
						label, detail);
				continue;
			}
			/* medtl.jpeg_scaling; not with masks, which must match the image's own size */
			if (!image_to_bytes(DatumGetByteaPP(img), size, medtl_jpeg_scaling && !masks, tmp,
								&img_w, &img_h, &err))
			{
				char	   *what = psprintf("invalid image: %s", err.msg);

				bad_row(row, skip_bad_rows, &ds->n_bad,
						err.code == MT_ERR_LIMIT ? ERRCODE_PROGRAM_LIMIT_EXCEEDED :
						ERRCODE_INVALID_BINARY_REPRESENTATION,
						"row %lld of the source: %s", what, err.detail);
				continue;
			}
			if (masks && !mask_to_bytes(DatumGetByteaPP(lab), n_labels, size, img_w, img_h,
										tmp + per_image, &err))
			{
				char	   *what = psprintf("%s mask: %s",
											err.code == MT_ERR_CORRUPT ? "invalid" : "unusable", err.msg);

				bad_row(row, skip_bad_rows, &ds->n_bad, medtl_sqlstate(err.code),
						"row %lld of the source: %s", what, err.detail);
				continue;
			}
			if (ds->n == cap)
			{
				cap *= 2;
				ds->labels = repalloc(ds->labels, sizeof(int) * cap);
				ds->rows = repalloc(ds->rows, sizeof(int64) * cap);
				if (group_col)
					ds->groups = repalloc(ds->groups, sizeof(char *) * cap);
			}
			if (ds->spill == NULL && ds->n_mem == mem_cap)
			{
				int			want = Min((size_t) mem_cap * 2, max_mem);

				if (want > mem_cap)
				{
					ds->pixels = repalloc_huge(ds->pixels, per * want);
					mem_cap = want;
				}
				else
				{
					MemoryContext old = MemoryContextSwitchTo(outer);

					ds->spill = BufFileCreateTemp(false);
					ds->buf = palloc(per);
					MemoryContextSwitchTo(old);
					ereport(NOTICE,
							(errmsg("training images exceed medtl.train_memory (%d MB): %d stay in memory, the rest go to a temporary file",
									medtl_train_memory_mb, ds->n_mem)));
				}
			}
			if (ds->spill)
				BufFileWrite(ds->spill, tmp, per);
			else
				memcpy(ds->pixels + per * ds->n_mem++, tmp, per);
			ds->labels[ds->n] = k;
			ds->rows[ds->n] = row;
			if (group_col)
			{
				Datum		g = SPI_getbinval(t, d, 3, &grp_null);
				MemoryContext old = MemoryContextSwitchTo(outer);

				ds->groups[ds->n] = grp_null ? pstrdup("") : TextDatumGetCString(g);
				MemoryContextSwitchTo(old);
			}
			ds->n++;
			if (label)
				pfree(label);
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_finish();
	if (ds->n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("the source has no usable rows"),
				 errdetail("Source: %s (%lld rows read, %d skipped).", source, (long long) row, ds->n_bad)));
	return ds;
}

size_t
medtl_dataset_image_bytes(const MedtlDataset *ds)
{
	return (size_t) ds->size * ds->size * (ds->has_masks ? 4 : 3);
}

const uint8 *
medtl_dataset_image(const MedtlDataset *ds, int i)
{
	size_t		per = medtl_dataset_image_bytes(ds);
	size_t		off;

	if (i < ds->n_mem)
		return ds->pixels + per * i;
	/* BufFileSeekBlock crosses the 1 GB segment files; then the remainder */
	off = per * (size_t) (i - ds->n_mem);
	if (BufFileSeekBlock(ds->spill, (long) (off / BLCKSZ)) != 0 ||
		BufFileSeek(ds->spill, 0, (off_t) (off % BLCKSZ), SEEK_CUR) != 0 ||
		BufFileRead(ds->spill, ds->buf, per) != per)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read image %d back from medtl's temporary file", i + 1)));
	return ds->buf;
}

void
medtl_dataset_free(MedtlDataset *ds)
{
	if (ds->spill)
		BufFileClose(ds->spill);
	ds->spill = NULL;
}

char *
medtl_join_labels(char **labels, int n)
{
	StringInfoData s;

	initStringInfo(&s);
	for (int i = 0; i < n; i++)
		appendStringInfo(&s, "%s\"%s\"", i ? ", " : "", labels[i]);
	return s.data;
}
