/*
 * model.c - the per-backend model cache and scoring: predict, predict_proba,
 * logits, embed, predict_topk.
 *
 * A model is read from medtl.models / medtl.weights through SPI with the
 * caller's privileges (so row-level security decides who may score with it),
 * decoded once, and kept in a backend-local cache keyed by name.  The first
 * call of each query re-checks the row (model_id, generation, xmin); any
 * change to the model or its weights bumps generation, so a changed model is
 * reloaded.  Least recently used entries are evicted beyond
 * medtl.model_cache_size.
 *
 * An ensemble (arch "ensemble") is cached as its member list; each member is
 * then fetched through the same cache (and checked once per query) and the
 * members' probabilities are averaged with their weights.
 */
#include "medtl_pg.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "core/blas.h"
#include "core/metrics.h"
#include "io/image.h"
#include "nn/zoo.h"

#ifdef __GLIBC__
#include <malloc.h>				/* malloc_trim */
#endif

#define MODEL_NAME_MAX 256

typedef struct CacheEntry
{
	char		key[MODEL_NAME_MAX];	/* hash key: model name */
	int64		generation;
	TransactionId xmin;
	uint64		last_used;
	MemoryContext cxt;
	MedtlModel *model;
} CacheEntry;

/* What a query remembers between rows about one model. */
typedef struct CallCache
{
	char		name[MODEL_NAME_MAX];
	int64		model_id;
	int64		generation;
	TransactionId xmin;
} CallCache;

/* fn_extra: the model named in the call, and an ensemble's members. */
typedef struct FnCache
{
	CallCache	self;
	int			n_members;
	CallCache  *members;
} FnCache;

static HTAB *model_cache = NULL;
static uint64 use_clock = 0;

/* Identity of a model row as read now. */
typedef struct ModelRow
{
	int64		model_id;
	int64		generation;
	TransactionId xmin;
} ModelRow;

static void
init_cache(void)
{
	HASHCTL		ctl;

	if (model_cache != NULL)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = MODEL_NAME_MAX;
	ctl.entrysize = sizeof(CacheEntry);
	ctl.hcxt = TopMemoryContext;
	model_cache = hash_create("medtl model cache", 16, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

int
medtl_cached_models(void)
{
	return model_cache ? (int) hash_get_num_entries(model_cache) : 0;
}

static void
evict(CacheEntry *e)
{
	bool		found;

	if (e->cxt != NULL)
		MemoryContextDelete(e->cxt);
	hash_search(model_cache, e->key, HASH_REMOVE, &found);
}

/* Evict least recently used entries until there is room for one more. */
static void
make_room(void)
{
	while (hash_get_num_entries(model_cache) >= medtl_model_cache_size)
	{
		HASH_SEQ_STATUS seq;
		CacheEntry *e,
				   *oldest = NULL;

		hash_seq_init(&seq, model_cache);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (oldest == NULL || e->last_used < oldest->last_used)
				oldest = e;
		if (oldest == NULL)
			break;
		evict(oldest);
	}
}

static void
unknown_model(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("model \"%s\" does not exist", name),
			 errhint("Models are listed in medtl.models (only those you own or were granted are visible); register one with medtl.import_model().")));
}

/* Read float4[3] from an array datum into out. */
static void
read_float3(Datum d, float out[3], const char *what, const char *name)
{
	ArrayType  *a = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(a, FLOAT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &n);
	if (n != 3)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\" has %d %s values, expected 3", name, n, what)));
	for (int i = 0; i < 3; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("model \"%s\" has a NULL %s value", name, what)));
		out[i] = DatumGetFloat4(elems[i]);
	}
}

/* SELECT the identity of the named model's row; false if not visible. */
static bool
read_model_row(const char *name, ModelRow *row)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(name)};
	bool		isnull;
	bool		found = false;
	int			rc;

	rc = SPI_execute_with_args("SELECT model_id, generation, xmin::text::bigint "
							   "FROM medtl.models WHERE name OPERATOR(pg_catalog.=) $1",
							   1, argtypes, args, NULL, true, 2);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;

		row->model_id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		row->generation = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		row->xmin = (TransactionId) DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
		found = true;
	}
	return found;
}

/* An ensemble's members in order, with weights normalised to sum 1. */
static void
load_members(MedtlModel *mm, const char *name, MemoryContext cxt)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(mm->model_id)};
	bool		isnull;
	int64		listed;
	double		sum = 0;
	int			rc;
	MemoryContext old;

	rc = SPI_execute_with_args("SELECT count(*) FROM medtl.ensemble_members "
							   "WHERE model_id OPERATOR(pg_catalog.=) $1",
							   1, argtypes, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the members of ensemble \"%s\"", name);
	listed = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	/* models the caller may not see drop out of the join: refuse rather than score fewer */
	rc = SPI_execute_with_args("SELECT m.name, e.weight FROM medtl.ensemble_members e "
							   "JOIN medtl.models m ON m.model_id OPERATOR(pg_catalog.=) e.member_id "
							   "WHERE e.model_id OPERATOR(pg_catalog.=) $1 ORDER BY e.position",
							   1, argtypes, args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read the members of ensemble \"%s\"", name);
	if (listed == 0 || (int64) SPI_processed != listed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("ensemble \"%s\" has %lld members, of which you may read %llu",
						name, (long long) listed, (unsigned long long) SPI_processed),
				 errhint("The owners of its members can share them with medtl.share_model().")));
	old = MemoryContextSwitchTo(cxt);
	mm->n_members = (int) SPI_processed;
	mm->member_names = palloc(sizeof(char *) * mm->n_members);
	mm->member_weights = palloc(sizeof(float) * mm->n_members);
	for (int i = 0; i < mm->n_members; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];

		mm->member_names[i] = TextDatumGetCString(SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &isnull));
		mm->member_weights[i] = DatumGetFloat4(SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &isnull));
		sum += mm->member_weights[i];
	}
	for (int i = 0; i < mm->n_members; i++)
		mm->member_weights[i] = (float) (mm->member_weights[i] / sum);
	MemoryContextSwitchTo(old);
}

/*
 * Free the model's device memory when its memory context goes (eviction,
 * invalidation, the end of a private copy's statement, an ERROR): device
 * memory is not palloc'd.
 */
static void
release_device_cb(void *arg)
{
	mt_model_release_external((mt_model *) arg);
}

/*
 * Stream the model's weight rows through a cursor, a few tensors at a time,
 * into mm->net (SPI connected); only_missing: only the tensors the model
 * does not hold (the raw weights a cached model released: mt_model.release_raw).
 */
static void
load_weights(MedtlModel *mm, const char *name, bool only_missing)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(mm->model_id)};
	MemoryContext old;
	bool		isnull;
	Portal		portal;
	SPIPlanPtr	plan;
	mt_err		err;
	int			rc;

	plan = SPI_prepare("SELECT tensor, dtype, shape, data FROM medtl.weights "
					   "WHERE model_id OPERATOR(pg_catalog.=) $1", 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, args, NULL, true);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 16);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	wt = SPI_tuptable->vals[i];
			TupleDesc	wd = SPI_tuptable->tupdesc;
			char	   *tensor = TextDatumGetCString(SPI_getbinval(wt, wd, 1, &isnull));
			char	   *dtype;
			Datum		shape_d,
						data_d;
			ArrayType  *shape;
			bytea	   *data;
			Datum	   *dims;
			bool	   *dnulls;
			int			ndim;
			int64_t		shp[MT_MAX_DIMS];

			if (only_missing)
			{
				int			pi = mt_model_find_param(mm->net, tensor);

				if (pi >= 0 && mm->net->params[pi].loaded)
				{
					pfree(tensor);	/* still held */
					continue;
				}
			}
			dtype = TextDatumGetCString(SPI_getbinval(wt, wd, 2, &isnull));
			shape_d = SPI_getbinval(wt, wd, 3, &isnull);
			data_d = SPI_getbinval(wt, wd, 4, &isnull);
			shape = DatumGetArrayTypeP(shape_d);
			data = DatumGetByteaPP(data_d);
			deconstruct_array(shape, INT4OID, 4, true, TYPALIGN_INT, &dims, &dnulls, &ndim);
			if (ndim > MT_MAX_DIMS)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("tensor \"%s\" of model \"%s\" has %d dimensions", tensor, name, ndim)));
			for (int k = 0; k < ndim; k++)
				shp[k] = DatumGetInt32(dims[k]);
			old = MemoryContextSwitchTo(mm->cxt);
			rc = mt_model_set_param(mm->net, tensor, strcmp(dtype, "I64") == 0, ndim, shp,
									VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), &err);
			MemoryContextSwitchTo(old);
			if (rc != MT_OK)
				medtl_raise(&err, "stored weights are invalid");
			/*
			 * The detoasted copy lives in SPI's context until SPI_finish: free
			 * it now, or loading holds every tensor twice (ResNet-50: 100 MB)
			 */
			if ((Pointer) data != DatumGetPointer(data_d))
				pfree(data);
			pfree(tensor);
			pfree(dtype);
			if ((Pointer) shape != DatumGetPointer(shape_d))
				pfree(shape);
			pfree(dims);
			pfree(dnulls);
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_freeplan(plan);
}

/* Load the model's description and weights into cxt (SPI connected). */
static MedtlModel *
load_model(const char *name, const ModelRow *row, MemoryContext cxt, bool cached)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(row->model_id)};
	MedtlModel *mm;
	MemoryContext old;
	HeapTuple	t;
	TupleDesc	d;
	bool		isnull;
	char	   *padding;
	int			num_classes;
	mt_err		err;
	int			rc;

	rc = SPI_execute_with_args("SELECT arch, task, labels, input_size, mean, std, padding, "
							   "num_classes FROM medtl.models "
							   "WHERE model_id OPERATOR(pg_catalog.=) $1",
							   1, argtypes, args, NULL, true, 2);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		unknown_model(name);
	t = SPI_tuptable->vals[0];
	d = SPI_tuptable->tupdesc;

	old = MemoryContextSwitchTo(cxt);
	mm = palloc0(sizeof(MedtlModel));
	mm->cxt = cxt;
	mm->model_id = row->model_id;
	mm->name = pstrdup(name);
	mm->arch = TextDatumGetCString(SPI_getbinval(t, d, 1, &isnull));
	mm->task = TextDatumGetCString(SPI_getbinval(t, d, 2, &isnull));
	{
		Datum		labels = SPI_getbinval(t, d, 3, &isnull);

		if (!isnull)
		{
			Datum	   *elems;
			bool	   *nulls;

			deconstruct_array(DatumGetArrayTypeP(labels), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, &nulls, &mm->n_labels);
			mm->labels = palloc0(sizeof(char *) * Max(mm->n_labels, 1));
			for (int i = 0; i < mm->n_labels; i++)
				mm->labels[i] = nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);
		}
	}
	mm->input_size = DatumGetInt32(SPI_getbinval(t, d, 4, &isnull));
	read_float3(SPI_getbinval(t, d, 5, &isnull), mm->mean, "mean", name);
	read_float3(SPI_getbinval(t, d, 6, &isnull), mm->std, "std", name);
	padding = TextDatumGetCString(SPI_getbinval(t, d, 7, &isnull));
	num_classes = DatumGetInt32(SPI_getbinval(t, d, 8, &isnull));

	if (strcmp(mm->arch, "ensemble") == 0)
	{
		MemoryContextSwitchTo(old);
		load_members(mm, name, cxt);
		return mm;
	}
	mm->net = mt_zoo_build(mm->arch, num_classes, strcmp(padding, "tf_same") == 0, &err);
	if (mm->net == NULL)
		medtl_raise(&err, NULL);
	{
		MemoryContextCallback *cb = palloc0(sizeof(MemoryContextCallback));

		cb->func = release_device_cb;
		cb->arg = mm->net;
		MemoryContextRegisterResetCallback(cxt, cb);
	}
	MemoryContextSwitchTo(old);

	load_weights(mm, name, false);

	/*
	 * A model of the backend cache only scores: its convolutions keep one
	 * copy of their weights, packed or in the kernels' layout, and the raw
	 * copy goes once packed (ResNet-50: 100 MB); they are read again from
	 * medtl.weights if the model must be prepared anew (medtl_forward).
	 */
	mm->net->release_raw = cached;
	old = MemoryContextSwitchTo(cxt);
	rc = mt_model_prepare(mm->net, &err);
	MemoryContextSwitchTo(old);
	if (rc != MT_OK)
		medtl_raise(&err, "could not prepare model");
#ifdef __GLIBC__
	if (mm->net->raw_released)
		malloc_trim(0);			/* the freed weights sat amid the heap */
#endif
	return mm;
}

MedtlModel *
medtl_load_model_private(const char *name, MemoryContext cxt)
{
	ModelRow	row;
	MedtlModel *mm;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!read_model_row(name, &row))
		unknown_model(name);
	mm = load_model(name, &row, cxt, false);
	SPI_finish();
	if (mm->net == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("model \"%s\" is an ensemble", name),
				 errhint("Train, export or derive from its member models; score it with predict, predict_proba, predict_topk or evaluate.")));
	return mm;
}

/*
 * The named model through the backend cache; cc remembers, for the rest of
 * the query, what was checked (cc->name empty: nothing yet).
 */
static MedtlModel *
get_model(const char *name, CallCache *cc)
{
	CacheEntry *e;
	ModelRow	row;
	bool		found;

	if (strlen(name) >= MODEL_NAME_MAX)
		unknown_model(name);
	init_cache();
	e = hash_search(model_cache, name, HASH_FIND, &found);

	/* within one query, trust what its first row checked */
	if (e != NULL && strcmp(cc->name, name) == 0 &&
		cc->generation == e->generation && cc->xmin == e->xmin &&
		cc->model_id == e->model->model_id)
	{
		e->last_used = ++use_clock;
		return e->model;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!read_model_row(name, &row))
		unknown_model(name);
	if (e == NULL || e->model->model_id != row.model_id ||
		e->generation != row.generation || e->xmin != row.xmin)
	{
		MemoryContext cxt;
		MedtlModel *mm;

		if (e != NULL)
			evict(e);
		cxt = AllocSetContextCreate(TopMemoryContext, "medtl model",
									ALLOCSET_DEFAULT_SIZES);
		PG_TRY();
		{
			mm = load_model(name, &row, cxt, true);
		}
		PG_CATCH();
		{
			MemoryContextDelete(cxt);
			PG_RE_THROW();
		}
		PG_END_TRY();
		make_room();
		e = hash_search(model_cache, name, HASH_ENTER, &found);
		e->generation = row.generation;
		e->xmin = row.xmin;
		e->cxt = cxt;
		e->model = mm;
	}
	SPI_finish();

	strlcpy(cc->name, name, sizeof(cc->name));
	cc->model_id = row.model_id;
	cc->generation = row.generation;
	cc->xmin = row.xmin;
	e->last_used = ++use_clock;
	return e->model;
}

static FnCache *
fn_cache(FunctionCallInfo fcinfo)
{
	if (fcinfo->flinfo->fn_extra == NULL)
		fcinfo->flinfo->fn_extra = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(FnCache));
	return (FnCache *) fcinfo->flinfo->fn_extra;
}

MedtlModel *
medtl_get_model(FunctionCallInfo fcinfo, text *name_text)
{
	return get_model(text_to_cstring(name_text), &fn_cache(fcinfo)->self);
}

/* Run the model on one image: logits and/or features (palloc'd). */
static void
score_image(MedtlModel *mm, bytea *image, float **logits, float **features)
{
	float	   *x;

	medtl_engine_enter();
	x = medtl_image_tensor(image, mm->input_size, mm->mean, mm->std);
	if (logits)
		*logits = palloc(sizeof(float) * mm->net->num_classes);
	if (features)
		*features = palloc(sizeof(float) * mm->net->feature_dim);
	medtl_forward(mm, x, 1, logits ? *logits : NULL, features ? *features : NULL);
	pfree(x);
}

/* Give a cached model the raw weights it released (release_raw), from its rows. */
static void
reload_weights(MedtlModel *mm)
{
	mt_err		err;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	load_weights(mm, mm->name, true);
	SPI_finish();
	if (mt_model_raw_reloaded(mm->net, &err) != MT_OK)
		medtl_raise(&err, "stored weights are incomplete");
}

/*
 * mt_model_forward on the device medtl.device chooses (the CPU for models
 * marked cpu_only, in parallel workers, and under auto for a model the
 * device cannot run yet).  The device copy of the weights
 * stays with the model, so a cached model uploads them once; choosing the
 * CPU again frees it.  Device errors: out of memory 53200, over
 * medtl.device_memory_mb 54000.
 */
void
medtl_forward(MedtlModel *mm, const float *x, int n, float *logits, float *features)
{
	const mt_backend *dev = mm->cpu_only ? NULL : medtl_inference_device();
	MemoryContext old;
	mt_err		err;
	int			rc = MT_OK;
	mt_adapt   *ad = NULL;
	int			threads = 0;
	long		probes = 0,
				moves = 0;
	instr_time	t0,
				t1;

	bool		cpu_scoring = dev == NULL && !mm->cpu_only;

	/* scoring on the CPU under medtl.threads = 0: the count that is faster now */
	if (cpu_scoring && medtl_threads_adapt())
	{
		int			cores = mt_cpu_count();

		if (mm->adapt_cores != cores)
		{
			mm->adapt_cores = cores;
			mt_adapt_init(&mm->adapt[0], cores);
			mt_adapt_init(&mm->adapt[1], cores);
		}
		ad = &mm->adapt[n > 1];
		probes = ad->probes;
		moves = ad->moves;
		INSTR_TIME_SET_CURRENT(t0);
		threads = mt_adapt_begin(ad, INSTR_TIME_GET_DOUBLE(t0));
		medtl_apply_threads(threads);
	}

	for (int attempt = 0;; attempt++)
	{
		/* the device copy's host bookkeeping belongs with the model */
		old = MemoryContextSwitchTo(mm->cxt);
		rc = MT_OK;
		if (mt_model_device(mm->net) != dev)
		{
			rc = mt_model_to_device(mm->net, dev, &err);
			/* a model the device cannot run (its backend lacks a layer): auto means the CPU then */
			if (rc == MT_ERR_UNSUPPORTED && medtl_device == MEDTL_DEVICE_AUTO)
			{
				dev = NULL;
				rc = MT_OK;
			}
		}
		if (rc == MT_OK)
			rc = mt_model_forward(mm->net, x, n, mm->input_size, mm->input_size, logits, features, &err);
		MemoryContextSwitchTo(old);
#ifdef __GLIBC__
		/*
		 * The first pass moved the convolutions' weights into the kernels'
		 * layout and freed the packed copies amid the heap: hand those
		 * pages back once (ResNet-50: 160 -> 130 MB of private memory)
		 */
		if (rc == MT_OK && !mm->trimmed && mm->net->packed_released)
		{
			malloc_trim(0);
			mm->trimmed = true;
		}
#endif
		if (rc != MT_ERR_RELOAD || attempt > 0)
			break;
		reload_weights(mm);
		ad = NULL;				/* a reload is not the count's cost */
	}
	if (ad != NULL && rc == MT_OK)
	{
		INSTR_TIME_SET_CURRENT(t1);
		mt_adapt_end(ad, INSTR_TIME_GET_DOUBLE(t1) - INSTR_TIME_GET_DOUBLE(t0), n,
					 INSTR_TIME_GET_DOUBLE(t1));
		medtl_note_scoring_threads(threads, ad->probes - probes, ad->moves - moves);
	}
	else if (cpu_scoring && rc == MT_OK)
		medtl_note_scoring_threads(0, 0, 0);
	if (rc != MT_OK && dev != NULL && (rc == MT_ERR_NOMEM || rc == MT_ERR_LIMIT))
		ereport(ERROR,
				(errcode(rc == MT_ERR_NOMEM ? ERRCODE_OUT_OF_MEMORY : ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("inference failed: %s", err.msg),
				 err.detail[0] ? errdetail("%s", err.detail) : 0,
				 errhint("medtl.device_memory_mb caps this backend's device memory (now %d MB, 0 = no cap); cached models keep theirs until evicted (medtl.model_cache_size). SET medtl.device = cpu scores on the CPU.",
						 medtl_device_memory_mb)));
	if (rc != MT_OK)
		medtl_raise(&err, "inference failed");
}

static void
softmax_inplace(float *v, int n)
{
	mt_cpu_backend.softmax(1, n, v, v);
}

static ArrayType *
float_array(const float *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Float4GetDatum(v[i]);
	return construct_array(d, n, FLOAT4OID, 4, true, TYPALIGN_INT);
}

/* Class probabilities of one image, with the labels they belong to. */
typedef struct Scored
{
	int			n;				/* classes */
	float	   *p;
	int			n_labels;
	char	  **labels;
} Scored;

/* The label of class k (its index as text when the model has no labels). */
static text *
label_text(const Scored *s, int k)
{
	if (s->labels != NULL && k < s->n_labels)
		return cstring_to_text(s->labels[k]);
	return cstring_to_text(psprintf("%d", k));
}

static void
require_classifier(MedtlModel *mm)
{
	if (strcmp(mm->task, "classification") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("model \"%s\" is a %s model, not a classifier", mm->name, mm->task)));
}

static void
require_single(MedtlModel *mm, const char *what)
{
	if (mm->net == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("model \"%s\" is an ensemble, which has no %s", mm->name, what),
				 errhint("Ask one of its members (medtl.ensemble_members), or use predict_proba.")));
}

static bool
same_labels(MedtlModel *a, int n_labels, char **labels)
{
	if ((a->labels == NULL) != (labels == NULL) || a->n_labels != n_labels)
		return false;
	for (int i = 0; i < n_labels; i++)
		if (strcmp(a->labels[i], labels[i]) != 0)
			return false;
	return true;
}

/*
 * Softmax probabilities of an image under mm; for an ensemble the weighted
 * mean of its members' probabilities.  A single model's labels are the
 * cached model's own; an ensemble's are copied into the caller's context,
 * since fetching a member may evict the ensemble's cache entry.
 */
static Scored
class_probs(FunctionCallInfo fcinfo, MedtlModel *mm, bytea *image)
{
	Scored		s = {0};
	FnCache    *fc;
	int			n_members;
	char	  **names;
	float	   *weights;
	char	   *ens_name;

	require_classifier(mm);
	s.n_labels = mm->n_labels;
	s.labels = mm->labels;
	if (mm->net != NULL)
	{
		/* nothing else is loaded before the caller uses the labels */
		score_image(mm, image, &s.p, NULL);
		s.n = mm->net->num_classes;
		softmax_inplace(s.p, s.n);
		return s;
	}

	/* an ensemble: loading its members may evict its entry, so copy */
	if (mm->labels != NULL)
	{
		s.labels = palloc(sizeof(char *) * Max(mm->n_labels, 1));
		for (int i = 0; i < mm->n_labels; i++)
			s.labels[i] = pstrdup(mm->labels[i]);
	}

	n_members = mm->n_members;
	ens_name = pstrdup(mm->name);
	names = palloc(sizeof(char *) * n_members);
	weights = palloc(sizeof(float) * n_members);
	for (int i = 0; i < n_members; i++)
	{
		names[i] = pstrdup(mm->member_names[i]);
		weights[i] = mm->member_weights[i];
	}
	fc = fn_cache(fcinfo);
	if (fc->n_members < n_members)
	{
		fc->members = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(CallCache) * n_members);
		fc->n_members = n_members;
	}
	for (int i = 0; i < n_members; i++)
	{
		MedtlModel *m = get_model(names[i], &fc->members[i]);
		float	   *p;

		if (m->net == NULL || strcmp(m->task, "classification") != 0 ||
			(s.n > 0 && m->net->num_classes != s.n) ||
			!same_labels(m, s.n_labels, s.labels))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("member \"%s\" of ensemble \"%s\" is no longer a classifier with the ensemble's labels",
							names[i], ens_name),
					 errhint("Recreate the ensemble with medtl.create_ensemble(..., replace => true).")));
		score_image(m, image, &p, NULL);
		if (s.n == 0)
		{
			s.n = m->net->num_classes;
			s.p = palloc0(sizeof(float) * s.n);
		}
		softmax_inplace(p, s.n);
		for (int c = 0; c < s.n; c++)
			s.p[c] += weights[i] * p[c];
		pfree(p);
	}
	return s;
}

/* medtl.predict(model text, image bytea) -> text: the most probable label. */
PG_FUNCTION_INFO_V1(medtl_predict);
Datum
medtl_predict(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	Scored		s = class_probs(fcinfo, mm, PG_GETARG_BYTEA_PP(1));

	PG_RETURN_TEXT_P(label_text(&s, mt_argmax(s.p, s.n)));
}

/* medtl.predict_proba(model text, image bytea) -> real[]: softmax probabilities. */
PG_FUNCTION_INFO_V1(medtl_predict_proba);
Datum
medtl_predict_proba(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	Scored		s = class_probs(fcinfo, mm, PG_GETARG_BYTEA_PP(1));

	PG_RETURN_ARRAYTYPE_P(float_array(s.p, s.n));
}

/* medtl.logits(model text, image bytea) -> real[]: raw class scores. */
PG_FUNCTION_INFO_V1(medtl_logits);
Datum
medtl_logits(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	float	   *logits;

	require_classifier(mm);
	require_single(mm, "logits");
	score_image(mm, PG_GETARG_BYTEA_PP(1), &logits, NULL);
	PG_RETURN_ARRAYTYPE_P(float_array(logits, mm->net->num_classes));
}

/* medtl.embed(model text, image bytea) -> real[]: pooled backbone features. */
PG_FUNCTION_INFO_V1(medtl_embed);
Datum
medtl_embed(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	float	   *features;

	require_single(mm, "embedding");
	score_image(mm, PG_GETARG_BYTEA_PP(1), NULL, &features);
	PG_RETURN_ARRAYTYPE_P(float_array(features, mm->net->feature_dim));
}

/*
 * medtl.predict_topk(model text, image bytea, k int DEFAULT 5) -> setof
 * (rank, class_index, label, probability).
 */
PG_FUNCTION_INFO_V1(medtl_predict_topk);
Datum
medtl_predict_topk(PG_FUNCTION_ARGS)
{
	MedtlModel *mm = medtl_get_model(fcinfo, PG_GETARG_TEXT_PP(0));
	int			k = PG_GETARG_INT32(2);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Scored		s;
	bool	   *taken;

	if (k < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("k must be at least 1")));
	s = class_probs(fcinfo, mm, PG_GETARG_BYTEA_PP(1));
	InitMaterializedSRF(fcinfo, 0);
	taken = palloc0(sizeof(bool) * s.n);
	for (int r = 0; r < k && r < s.n; r++)
	{
		int			best = -1;
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		for (int i = 0; i < s.n; i++)
			if (!taken[i] && (best < 0 || s.p[i] > s.p[best]))
				best = i;
		taken[best] = true;
		values[0] = Int32GetDatum(r + 1);
		values[1] = Int32GetDatum(best);
		values[2] = PointerGetDatum(label_text(&s, best));
		values[3] = Float4GetDatum(s.p[best]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * medtl.predict_batch(model text, images bytea[], batch_size int DEFAULT 16)
 * -> setof (ord, label, probabilities): every image of the array scored in
 * forward passes of batch_size images (an ensemble: image by image).  ord is
 * the 1-based array position; a NULL element gives a row of NULLs.
 */
static void
batch_error_context(void *arg)
{
	if (*(int *) arg > 0)
		errcontext("image %d of the array", *(int *) arg);
}

PG_FUNCTION_INFO_V1(medtl_predict_batch);
Datum
medtl_predict_batch(PG_FUNCTION_ARGS)
{
	text	   *name = PG_GETARG_TEXT_PP(0);
	MedtlModel *mm = medtl_get_model(fcinfo, name);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	int			batch = PG_GETARG_INT32(2);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	ErrorContextCallback errcb;
	int			current = 0;

	require_classifier(mm);
	if (batch < 1 || batch > 1024)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and 1024")));
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("images must be a one-dimensional array")));
	deconstruct_array(arr, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	InitMaterializedSRF(fcinfo, 0);
	errcb.callback = batch_error_context;
	errcb.arg = &current;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	for (int start = 0; start < n; start += batch)
	{
		int			m = Min(batch, n - start);
		Scored	   *scored = palloc0(sizeof(Scored) * m);

		if (mm->net == NULL)
		{
			/* an ensemble: its members one image at a time */
			for (int i = 0; i < m; i++)
				if (!enulls[start + i])
				{
					current = start + i + 1;
					/* fetching members may evict the ensemble's entry: look it up again */
					mm = medtl_get_model(fcinfo, name);
					scored[i] = class_probs(fcinfo, mm, DatumGetByteaPP(elems[start + i]));
				}
		}
		else
		{
			size_t		per = (size_t) mm->input_size * mm->input_size * 3;
			int			k = mm->net->num_classes;
			int			used = 0;
			int		   *slot = palloc(sizeof(int) * m);
			float	   *x = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(float) * per * m);
			float	   *logits;

			medtl_engine_enter();
			for (int i = 0; i < m; i++)
			{
				float	   *t;

				slot[i] = -1;
				if (enulls[start + i])
					continue;
				current = start + i + 1;
				t = medtl_image_tensor(DatumGetByteaPP(elems[start + i]), mm->input_size,
									   mm->mean, mm->std);
				memcpy(x + per * used, t, sizeof(float) * per);
				pfree(t);
				slot[i] = used++;
				CHECK_FOR_INTERRUPTS();
			}
			current = 0;
			logits = palloc(sizeof(float) * k * Max(used, 1));
			if (used > 0)
				medtl_forward(mm, x, used, logits, NULL);
			mt_cpu_backend.softmax(used, k, logits, logits);
			for (int i = 0; i < m; i++)
				if (slot[i] >= 0)
				{
					scored[i].n = k;
					scored[i].p = logits + (size_t) slot[i] * k;
					scored[i].n_labels = mm->n_labels;
					scored[i].labels = mm->labels;
				}
			pfree(x);
		}
		for (int i = 0; i < m; i++)
		{
			Datum		values[3];
			bool		nulls[3] = {false, true, true};

			values[0] = Int32GetDatum(start + i + 1);
			if (scored[i].p != NULL)
			{
				values[1] = PointerGetDatum(label_text(&scored[i], mt_argmax(scored[i].p, scored[i].n)));
				values[2] = PointerGetDatum(float_array(scored[i].p, scored[i].n));
				nulls[1] = nulls[2] = false;
			}
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		CHECK_FOR_INTERRUPTS();
	}
	error_context_stack = errcb.previous;
	return (Datum) 0;
}
