/*
 * weights.c - weight files as data: reading safetensors bytes into rows,
 * checking them against an architecture, and reading server-side files for
 * roles that hold pg_read_server_files.
 */
#include "medtl_pg.h"

#include <sys/stat.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "io/pth.h"
#include "io/safetensors.h"
#include "core/train.h"
#include "nn/zoo.h"

/*
 * A weight file as parsed: safetensors tensors point into the bytea itself;
 * a PyTorch .pth checkpoint is converted into tensors in pth.data.
 */
typedef struct WeightFile
{
	mt_safetensors *st;
	const uint8_t *base;		/* tensor offsets are relative to this */
	bool		is_pth;
	mt_safetensors st_buf;
	mt_pth		pth;
} WeightFile;

/*
 * Parse weight bytes or raise ERROR saying what is wrong: a zip archive
 * ("PK\3\4") is read as a torch.save checkpoint, anything else as
 * safetensors.  Corrupt files give 22P03, valid files medtl does not read
 * (compressed entries, globals outside the allow-list) 0A000.
 */
static void
parse_or_raise(bytea *weights, WeightFile *wf)
{
	const uint8_t *buf = (const uint8_t *) VARDATA_ANY(weights);
	size_t		len = VARSIZE_ANY_EXHDR(weights);
	mt_err		err;

	memset(wf, 0, sizeof(*wf));
	if (mt_pth_is_zip(buf, len) || mt_pth_is_legacy(buf, len))
	{
		if (mt_pth_parse(buf, len, &wf->pth, &err) != MT_OK)
			medtl_raise(&err, NULL);
		wf->is_pth = true;
		wf->st = &wf->pth.st;
		wf->base = wf->pth.data;
		return;
	}
	if (mt_st_parse(buf, len, &wf->st_buf, &err) != MT_OK)
		medtl_raise(&err, "invalid safetensors file");
	wf->st = &wf->st_buf;
	wf->base = buf;
}

static void
weight_file_free(WeightFile *wf)
{
	if (wf->is_pth)
		mt_pth_free(&wf->pth);
	else
		mt_st_free(&wf->st_buf);
}

/*
 * Check every tensor of st against arch: names, shapes, dtypes, finite
 * values, nothing missing.  Returns the number of classes of the head.
 */
static int
check_against_arch(const mt_safetensors *st, const uint8_t *base, const char *arch)
{
	const char *head = mt_zoo_head_weight(arch);
	const mt_st_tensor *h;
	mt_model   *m;
	mt_err		err;
	int			num_classes;

	if (head == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown architecture \"%s\"", arch),
				 errhint("Known architectures: %s.", mt_zoo_list())));
	h = mt_st_find(st, head);
	if (h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("weights have no tensor \"%s\", the classifier head of %s", head, arch),
				 errhint("Check that the file holds a %s state_dict.", arch)));
	/* a U-Net's head is a convolution: [classes, channels, k, k] */
	if (mt_zoo_is_segmentation(arch) ? (h->ndim != 4 || h->shape[0] < 1) :
		(h->ndim != 2 || h->shape[0] < 1))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg(mt_zoo_is_segmentation(arch) ?
						"tensor \"%s\" must be a 4-d [classes, channels, k, k] convolution" :
						"tensor \"%s\" must be a 2-d [classes, features] matrix", head)));
	num_classes = (int) h->shape[0];

	m = mt_zoo_build(arch, num_classes, 0, &err);
	if (m == NULL)
		medtl_raise(&err, NULL);
	{
		StringInfoData unexpected;
		int			n_unexpected = 0;

		initStringInfo(&unexpected);
		for (int i = 0; i < st->n_tensors; i++)
		{
			if (mt_model_find_param(m, st->tensors[i].name) >= 0)
				continue;
			if (n_unexpected < 20)
				appendStringInfo(&unexpected, "%s\"%s\"", n_unexpected ? ", " : "",
								 st->tensors[i].name);
			n_unexpected++;
		}
		if (n_unexpected > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("%d unexpected tensor%s for architecture %s: %s%s", n_unexpected,
							n_unexpected == 1 ? "" : "s", arch, unexpected.data,
							n_unexpected > 20 ? ", ..." : ""),
					 errhint("Check that the file holds a %s state_dict.", arch)));
	}
	for (int i = 0; i < st->n_tensors; i++)
	{
		const mt_st_tensor *t = &st->tensors[i];

		if (t->dtype != MT_F32 && t->dtype != MT_I64)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("tensor \"%s\" has dtype %s; medtl imports F32 weights",
							t->name, mt_dtype_name(t->dtype)),
					 errhint("Save the state_dict as float32, e.g. model.float().")));
		if (mt_model_set_param(m, t->name, t->dtype == MT_I64, t->ndim, t->shape,
							   base + t->offset, t->nbytes, &err) != MT_OK)
			medtl_raise(&err, "weights do not fit the architecture");
	}
	if (mt_model_check_complete(m, &err) != MT_OK)
		medtl_raise(&err, "weights do not fit the architecture");
	mt_model_free(m);
	return num_classes;
}

/*
 * medtl.safetensors_info(weights bytea, arch text DEFAULT NULL) -> jsonb:
 * tensor count, metadata, and (with arch) the validated class count.
 */
PG_FUNCTION_INFO_V1(medtl_safetensors_info);
Datum
medtl_safetensors_info(PG_FUNCTION_ARGS)
{
	bytea	   *weights;
	WeightFile	wf;
	mt_safetensors *st;
	StringInfoData s;
	size_t		total = 0;

	/* not STRICT (arch may be NULL), so a NULL file is NULL out here */
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	weights = PG_GETARG_BYTEA_PP(0);
	parse_or_raise(weights, &wf);
	st = wf.st;
	initStringInfo(&s);
	for (int i = 0; i < st->n_tensors; i++)
		total += st->tensors[i].nbytes;
	appendStringInfo(&s, "{\"format\": \"%s\", \"tensors\": %d, \"data_bytes\": %zu",
					 wf.is_pth ? "pth" : "safetensors", st->n_tensors, total);
	if (wf.is_pth)
	{
		appendStringInfo(&s, ", \"stripped_prefix\": %s",
						 wf.pth.stripped_prefix ? "\"module.\"" : "null");
		if (wf.pth.wrapper[0])
		{
			appendStringInfoString(&s, ", \"checkpoint_key\": ");
			escape_json(&s, wf.pth.wrapper);
		}
	}
	if (!PG_ARGISNULL(1))
	{
		char	   *arch = text_to_cstring(PG_GETARG_TEXT_PP(1));
		int			k = check_against_arch(st, wf.base, arch);

		appendStringInfoString(&s, ", \"arch\": ");
		escape_json(&s, arch);
		appendStringInfo(&s, ", \"num_classes\": %d", k);
	}
	appendStringInfoString(&s, ", \"metadata\": {");
	for (int i = 0; i < st->n_meta; i++)
	{
		if (i > 0)
			appendStringInfoString(&s, ", ");
		escape_json(&s, st->meta_keys[i]);
		appendStringInfoString(&s, ": ");
		escape_json(&s, st->meta_vals[i]);
	}
	appendStringInfoString(&s, "}}");
	weight_file_free(&wf);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(s.data)));
}

/* An int4[] datum of a tensor shape. */
static Datum
shape_datum(const mt_st_tensor *t)
{
	Datum		d[MT_ST_MAX_DIMS];

	for (int i = 0; i < t->ndim; i++)
	{
		if (t->shape[i] > PG_INT32_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("tensor \"%s\" has a dimension over 2^31", t->name)));
		d[i] = Int32GetDatum((int32) t->shape[i]);
	}
	return PointerGetDatum(construct_array(d, t->ndim, INT4OID, 4, true, TYPALIGN_INT));
}

/*
 * medtl._weight_rows(weights bytea, arch text) -> setof (tensor, shape, dtype,
 * data): the tensors of a safetensors file checked against arch, one row each.
 */
PG_FUNCTION_INFO_V1(medtl_weight_rows);
Datum
medtl_weight_rows(PG_FUNCTION_ARGS)
{
	bytea	   *weights = PG_GETARG_BYTEA_PP(0);
	char	   *arch = text_to_cstring(PG_GETARG_TEXT_PP(1));
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WeightFile	wf;

	InitMaterializedSRF(fcinfo, 0);
	parse_or_raise(weights, &wf);
	(void) check_against_arch(wf.st, wf.base, arch);
	for (int i = 0; i < wf.st->n_tensors; i++)
	{
		const mt_st_tensor *t = &wf.st->tensors[i];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		bytea	   *data = palloc(VARHDRSZ + t->nbytes);

		SET_VARSIZE(data, VARHDRSZ + t->nbytes);
		memcpy(VARDATA(data), wf.base + t->offset, t->nbytes);
		values[0] = CStringGetTextDatum(t->name);
		values[1] = shape_datum(t);
		values[2] = CStringGetTextDatum(mt_dtype_name(t->dtype));
		values[3] = PointerGetDatum(data);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		pfree(data);
		CHECK_FOR_INTERRUPTS();
	}
	weight_file_free(&wf);
	return (Datum) 0;
}

/*
 * medtl.read_server_file(path text) -> bytea: a file of the server's file
 * system, for roles that hold pg_read_server_files (or superuser).
 */
PG_FUNCTION_INFO_V1(medtl_read_server_file);
Datum
medtl_read_server_file(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	struct stat sb;
	FILE	   *f;
	bytea	   *out;
	size_t		got;

	if (!has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read server files"),
				 errdetail("Only roles with privileges of the \"pg_read_server_files\" role may read files on the server."),
				 errhint("Pass the file's bytes instead, e.g. from the client.")));
	if (!is_absolute_path(path))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("path must be absolute: \"%s\"", path)));
	f = AllocateFile(path, PG_BINARY_R);
	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\" for reading: %m", path)));
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a regular file", path)));
	if ((uint64) sb.st_size > MaxAllocSize - VARHDRSZ)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("file \"%s\" is too large (%lld bytes)", path, (long long) sb.st_size),
				 errdetail("A bytea value holds at most 1 GB.")));
	out = palloc(VARHDRSZ + sb.st_size);
	got = fread(VARDATA(out), 1, sb.st_size, f);
	if (ferror(f) || got != (size_t) sb.st_size)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", path)));
	FreeFile(f);
	SET_VARSIZE(out, VARHDRSZ + got);
	PG_RETURN_BYTEA_P(out);
}

/*
 * medtl._init_rows(arch text, num_classes int, seed bigint, all_layers bool)
 * -> setof (tensor, shape, dtype, data): freshly initialised tensors, the
 * classifier head only (for a U-Net: every tensor outside its encoder) or
 * every tensor (training from scratch), as
 * torchvision initialises them; the same seed gives the same values.
 */
PG_FUNCTION_INFO_V1(medtl_init_rows);
Datum
medtl_init_rows(PG_FUNCTION_ARGS)
{
	char	   *arch = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			k = PG_GETARG_INT32(1);
	uint64		seed = (uint64) PG_GETARG_INT64(2);
	bool		all = PG_GETARG_BOOL(3);
	bool		seg;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	mt_model   *m;
	mt_err		err;

	InitMaterializedSRF(fcinfo, 0);
	if (!mt_zoo_known(arch))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown architecture \"%s\"", arch),
				 errhint("Known architectures: %s.", mt_zoo_list())));
	m = mt_zoo_build(arch, k, 0, &err);
	if (m == NULL)
		medtl_raise(&err, NULL);
	/* a U-Net's new part is everything but the encoder the backbone gives */
	seg = mt_zoo_is_segmentation(arch);
	if ((all || seg ? mt_model_init_all(m, seed, &err) : mt_model_init_head(m, seed, &err)) != MT_OK)
		medtl_raise(&err, "initialisation");
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		Datum		dims[MT_MAX_DIMS];
		size_t		nbytes = p->is_counter ? 8 : p->numel * sizeof(float);
		bytea	   *data;

		if (!all && seg && strncmp(p->name, MT_ZOO_ENCODER_PREFIX, strlen(MT_ZOO_ENCODER_PREFIX)) == 0)
			continue;
		if (!all && !seg && p->data == NULL)
			continue;
		data = palloc0(VARHDRSZ + nbytes);
		SET_VARSIZE(data, VARHDRSZ + nbytes);
		if (!p->is_counter)
			memcpy(VARDATA(data), p->data, nbytes);
		for (int d = 0; d < p->ndim; d++)
			dims[d] = Int32GetDatum((int32) p->shape[d]);
		values[0] = CStringGetTextDatum(p->name);
		values[1] = PointerGetDatum(construct_array(dims, p->ndim, INT4OID, 4, true, TYPALIGN_INT));
		values[2] = CStringGetTextDatum(p->is_counter ? "I64" : "F32");
		values[3] = PointerGetDatum(data);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	mt_model_free(m);
	return (Datum) 0;
}

/*
 * medtl._check_input_size(arch text, input_size int) -> void: raise if the
 * architecture cannot take input_size x input_size images (vit_b_16 needs a
 * multiple of 16); unknown architectures are left to the caller's checks.
 */
PG_FUNCTION_INFO_V1(medtl_check_input_size);
Datum
medtl_check_input_size(PG_FUNCTION_ARGS)
{
	char	   *arch = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			size = PG_GETARG_INT32(1);
	mt_err		err;

	if (mt_zoo_known(arch) && mt_zoo_check_input(arch, size, size, &err) != MT_OK)
		medtl_raise(&err, "input_size");
	PG_RETURN_VOID();
}

/* A JSON array of strings (or of numbers when floats != NULL). */
static char *
json_array(char **strs, const float *floats, int n)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoChar(&s, '[');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(&s, ", ");
		if (floats != NULL)
			appendStringInfo(&s, "%.9g", floats[i]);
		else
			escape_json(&s, strs[i]);
	}
	appendStringInfoChar(&s, ']');
	return s.data;
}

/*
 * medtl.export_model(model text) -> bytea: the model as a safetensors file
 * in torchvision's state_dict order, with arch, labels, mean/std, input size
 * and padding in __metadata__; it loads with load_state_dict(strict=True)
 * into the torchvision model with this head size, and back with
 * medtl.import_model.
 */
PG_FUNCTION_INFO_V1(medtl_export_model);
Datum
medtl_export_model(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "medtl export",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	MedtlModel *mm = medtl_load_model_private(name, cxt);
	mt_model   *m = mm->net;
	int			n = m->n_params;
	const char **names = palloc(sizeof(char *) * n);
	mt_dtype   *dtypes = palloc(sizeof(mt_dtype) * n);
	int		   *ndims = palloc(sizeof(int) * n);
	int64_t		(*shapes)[MT_ST_MAX_DIMS] = palloc0(sizeof(*shapes) * n);
	const void **datas = palloc(sizeof(void *) * n);
	int64		zero = 0;
	const char *keys[9];
	const char *vals[9];
	char		size_buf[16],
				classes_buf[16];
	uint8_t    *file;
	size_t		len;
	mt_err		err;
	bytea	   *out;

	for (int i = 0; i < n; i++)
	{
		mt_param   *p = &m->params[i];

		names[i] = p->name;
		dtypes[i] = p->is_counter ? MT_I64 : MT_F32;
		ndims[i] = p->ndim;
		for (int d = 0; d < p->ndim; d++)
			shapes[i][d] = p->shape[d];
		datas[i] = p->is_counter ? (const void *) &zero : (const void *) p->data;
	}
	snprintf(size_buf, sizeof(size_buf), "%d", mm->input_size);
	snprintf(classes_buf, sizeof(classes_buf), "%d", m->num_classes);
	keys[0] = "format";
	vals[0] = "pt";
	keys[1] = "arch";
	vals[1] = mm->arch;
	keys[2] = "num_classes";
	vals[2] = classes_buf;
	keys[3] = "input_size";
	vals[3] = size_buf;
	keys[4] = "mean";
	vals[4] = json_array(NULL, mm->mean, 3);
	keys[5] = "std";
	vals[5] = json_array(NULL, mm->std, 3);
	keys[6] = "padding";
	vals[6] = m->padding_same ? "tf_same" : "symmetric";
	keys[7] = "source";
	vals[7] = psprintf("medtl %s export of model \"%s\" (id %lld)", MEDTL_VERSION, name,
					   (long long) mm->model_id);
	keys[8] = "labels";
	vals[8] = mm->labels ? json_array(mm->labels, NULL, mm->n_labels) : "[]";

	if (mt_st_serialize(n, names, dtypes, ndims, (const int64_t (*)[MT_ST_MAX_DIMS]) shapes,
						datas, 9, keys, vals, &file, &len, &err) != MT_OK)
		medtl_raise(&err, "could not export model");
	if (len > MaxAllocSize - VARHDRSZ)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" is too large to export as one bytea (%zu bytes)", name, len)));
	MemoryContextSwitchTo(old);
	out = palloc(VARHDRSZ + len);
	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(VARDATA(out), file, len);
	MemoryContextDelete(cxt);
	PG_RETURN_BYTEA_P(out);
}
