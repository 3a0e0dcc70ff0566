/*
 * medtl.c - module initialisation, GUCs, engine glue (allocation, interrupts,
 * errors), and the functions that describe images and the runtime.
 */
#include "medtl_pg.h"

#include "access/parallel.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include <jpeglib.h>
#include <png.h>

#include "core/blas.h"
#include "core/onednn.h"
#include "cuda/cuda.h"
#include "io/image.h"

PG_MODULE_MAGIC;

int			medtl_threads = 0;
int			medtl_worker_threads = 1;
int			medtl_max_image_pixels = 64 * 1024 * 1024;
bool		medtl_jpeg_scaling = false;
static int	medtl_arena_keep_mb = 512;
int			medtl_model_cache_size = 8;
char	   *medtl_blas_core = NULL;
int			medtl_device = MEDTL_DEVICE_CPU;
int			medtl_device_memory_mb = 0;
static int	medtl_conv_kernels = MT_CONV_AUTO;
static int	medtl_precision = MT_PREC_FP32;

static const struct config_enum_entry precision_options[] = {
	{"fp32", MT_PREC_FP32, false},
	{"bf16", MT_PREC_BF16, false},
	{NULL, 0, false}
};

static const struct config_enum_entry conv_kernel_options[] = {
	{"auto", MT_CONV_AUTO, false},
	{"gemm", MT_CONV_GEMM, false},
	{"winograd", MT_CONV_WINOGRAD, false},
	{"direct", MT_CONV_DIRECT, false},
	{NULL, 0, false}
};

static const struct config_enum_entry device_options[] = {
	{"cpu", MEDTL_DEVICE_CPU, false},
	{"cuda", MEDTL_DEVICE_CUDA, false},
	{"auto", MEDTL_DEVICE_AUTO, false},
	{NULL, 0, false}
};

static int	applied_threads = -1;

void		_PG_init(void);

/* Engine allocations go to the current memory context; NULL on failure. */
static void *
pg_engine_malloc(size_t size)
{
	return MemoryContextAllocExtended(CurrentMemoryContext, size,
									  MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
}

static void
pg_engine_free(void *ptr)
{
	pfree(ptr);
}

/* Tell the engine to stop when a cancel or termination is pending. */
static int
pg_engine_interrupted(void)
{
	return InterruptPending && (QueryCancelPending || ProcDiePending);
}

/*
 * Module load: GUCs and engine hooks only.  OpenBLAS and its threads are
 * started lazily in the backend, never here (the postmaster may load us
 * through shared_preload_libraries and then fork).
 */
void
_PG_init(void)
{
	DefineCustomIntVariable("medtl.threads",
							"Threads used by one backend for medtl's math (0 = one per CPU core; scoring then adapts the count to the load).",
							"With 0, scoring times its calls and now and then tries a neighbouring count (cores, cores/2, ..., 1), keeping the faster: backends that score at once no longer slow each other down several times over. Training uses every core. Parallel workers use medtl.worker_threads instead.",
							&medtl_threads, 0, 0, 1024, PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("medtl.worker_threads",
							"Threads used by each parallel worker for medtl's math.",
							"Keep workers x threads at or below the number of cores.",
							&medtl_worker_threads, 1, 1, 1024, PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("medtl.max_image_pixels",
							"Largest image (width x height) medtl decodes.",
							NULL, &medtl_max_image_pixels, 64 * 1024 * 1024,
							1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("medtl.model_cache_size",
							"Models kept decoded in each backend's cache.",
							NULL, &medtl_model_cache_size, 8, 1, 1000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("medtl.train_memory",
							"Memory (MB) a training run may use to keep its decoded images.",
							"Images beyond it go to a temporary file (temp_file_limit applies).",
							&medtl_train_memory_mb, 2048, 1, INT_MAX / 2,
							PGC_USERSET, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomStringVariable("medtl.blas_core",
							   "OpenBLAS kernel set: auto (from CPU features), env (OPENBLAS_CORETYPE), or a core name.",
							   "Read when OpenBLAS is first used in a backend.",
							   &medtl_blas_core, "auto", PGC_SUSET, 0,
							   NULL, NULL, NULL);
	/* read when a model is used (device.c); nothing touches CUDA here */
	DefineCustomEnumVariable("medtl.device",
							 "Where inference and training run: cpu, cuda, or auto (a CUDA device when there is one, else the CPU).",
							 "Applies to predict, predict_proba, logits, embed, predict_topk, predict_batch, evaluate, train and fine_tune. Parallel workers, and training runs with ema, use the CPU.",
							 &medtl_device, MEDTL_DEVICE_CPU, device_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("medtl.device_memory_mb",
							"Device memory (MB) one backend may allocate for inference (0 = no cap but the device's).",
							"Cached models keep their weights and activations on the device until evicted.",
							&medtl_device_memory_mb, 0, 0, INT_MAX / 2,
							PGC_USERSET, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomEnumVariable("medtl.conv_kernels",
							 "CPU convolution kernels: auto (oneDNN when libdnnl.so.2 loads, else im2col + GEMM; scoring on oneDNN's direct kernels, training's passes of dense 3x3 stride-1 convolutions at batch 2 or more on its Winograd kernels where it has them), direct (oneDNN's direct kernels only), gemm (always im2col + OpenBLAS GEMM) or winograd (as auto, and scoring's batches of two or more images also run those convolutions through Winograd: faster for ResNets and DenseNet, with logits a few 1e-4 (relative) from the direct kernels' and 4x those convolutions' weights).",
							 "runtime_info() says which is in use.",
							 &medtl_conv_kernels, MT_CONV_AUTO, conv_kernel_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("medtl.arena_keep_mb",
							"Largest activation arena (MB) a cached model keeps between scoring calls; larger ones are freed after each call.",
							"Scoring a batch re-uses the kept arena instead of faulting its pages in again; a backend holds up to this much per cached model after predict_batch.",
							&medtl_arena_keep_mb, 512, 0, INT_MAX / 2,
							PGC_USERSET, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomBoolVariable("medtl.jpeg_scaling",
							 "Decode JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg-turbo's DCT scaling) when the image is at least that much larger than the model's input.",
							 "Faster for large JPEGs; the pixels then differ from a full decode followed by the same resize (torchvision's), so it is off by default.",
							 &medtl_jpeg_scaling, false,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("medtl.precision",
							 "Precision of convolutions: fp32, or bf16 (oneDNN convolutions on the CPU, and the CUDA backend's dense convolutions under medtl.device, read bfloat16 inputs and weights and accumulate in float32).",
							 "Only those convolutions change; everything else (and training's weights, gradients and optimizer) stays float32. A training run records the precision it used in medtl.runs.",
							 &medtl_precision, MT_PREC_FP32, precision_options,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("medtl");

	mt_set_allocator(pg_engine_malloc, pg_engine_free);
	mt_set_interrupt(pg_engine_interrupted);
}

int
medtl_sqlstate(int code)
{
	switch (code)
	{
		case MT_ERR_NOMEM:
			return ERRCODE_OUT_OF_MEMORY;
		case MT_ERR_INVALID:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case MT_ERR_CORRUPT:
			return ERRCODE_INVALID_BINARY_REPRESENTATION;
		case MT_ERR_SHAPE:
			return ERRCODE_DATA_EXCEPTION;
		case MT_ERR_LIMIT:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case MT_ERR_UNSUPPORTED:
			return ERRCODE_FEATURE_NOT_SUPPORTED;
		case MT_ERR_CANCELLED:
			return ERRCODE_QUERY_CANCELED;
		default:
			return ERRCODE_INTERNAL_ERROR;
	}
}

void
medtl_raise(const mt_err *err, const char *what)
{
	if (err->code == MT_ERR_CANCELLED)
		CHECK_FOR_INTERRUPTS();
	ereport(ERROR,
			(errcode(medtl_sqlstate(err->code)),
			 what ? errmsg("%s: %s", what, err->msg) : errmsg("%s", err->msg),
			 err->detail[0] ? errdetail("%s", err->detail) : 0));
	pg_unreachable();
}

void
medtl_engine_enter(void)
{
	mt_err		err;
	int			want;

	if (mt_blas_init(medtl_blas_core, &err) != MT_OK)
		medtl_raise(&err, NULL);
	mt_onednn_set_mode((mt_conv_kernels) medtl_conv_kernels);
	mt_set_precision((mt_precision) medtl_precision);
	mt_set_arena_keep((size_t) medtl_arena_keep_mb << 20);
	want = IsParallelWorker() ? medtl_worker_threads :
		(medtl_threads > 0 ? medtl_threads : mt_cpu_count());
	medtl_apply_threads(want);
}

void
medtl_apply_threads(int n)
{
	if (n != applied_threads)
	{
		mt_blas_set_threads(n);
		applied_threads = n;
	}
}

bool
medtl_threads_adapt(void)
{
	return medtl_threads == 0 && !IsParallelWorker();
}

static int	scoring_threads = 0;	/* 0: no scoring yet */
static long scoring_probes = 0,
			scoring_moves = 0;

void
medtl_note_scoring_threads(int n, long probes, long moves)
{
	scoring_threads = n > 0 ? n : applied_threads;
	scoring_probes += probes;
	scoring_moves += moves;
}

/*
 * Decode (and resize to out_w x out_h when out_w > 0); with mean/std, also
 * normalise, during decoding when the image is 8-bit and already the size.
 */
static void
decode_image(bytea *image, int out_w, int out_h, const float *mean, const float *std,
			 struct mt_image *out)
{
	mt_err		err;
	mt_image	img,
				resized;
	const uint8_t *buf = (const uint8_t *) VARDATA_ANY(image);
	size_t		len = VARSIZE_ANY_EXHDR(image);
	int			normalized = 0;

	if (mt_image_decode_normalized(buf, len, (size_t) medtl_max_image_pixels,
								   medtl_jpeg_scaling ? out_w : 0, medtl_jpeg_scaling ? out_h : 0,
								   out_w, out_h, mean, std, &img, &normalized, &err) != MT_OK)
	{
		if (err.code == MT_ERR_LIMIT && err.detail[0] == '\0')
			mt_setdetail(&err, "medtl.max_image_pixels is %d.", medtl_max_image_pixels);
		medtl_raise(&err, "invalid image");
	}
	if (!normalized && out_w > 0 && (img.width != out_w || img.height != out_h))
	{
		mt_image_info info;
		bool		eight_bit = mt_image_probe(buf, len, &info, &err) == MT_OK && info.bit_depth <= 8;

		/* 8-bit sources are resized as PIL resizes 8-bit images */
		if ((eight_bit ? mt_image_resize_u8(&img, out_w, out_h, &resized, &err) :
			 mt_image_resize(&img, out_w, out_h, &resized, &err)) != MT_OK)
			medtl_raise(&err, "could not resize image");
		mt_image_free(&img);
		img = resized;
	}
	if (!normalized && mean != NULL)
		mt_image_normalize(&img, mean, std);
	*out = img;
}

void
medtl_decode_image(bytea *image, int out_w, int out_h, const float mean[3], const float std[3],
				   struct mt_image *out)
{
	decode_image(image, out_w, out_h, mean, std, out);
}

float *
medtl_image_tensor(bytea *image, int size, const float mean[3], const float std[3])
{
	mt_image	img;

	decode_image(image, size, size, mean, std, &img);
	return img.data;
}

/* medtl.image_info(image bytea): format, width, height, channels, bit depth. */
PG_FUNCTION_INFO_V1(medtl_image_info);
Datum
medtl_image_info(PG_FUNCTION_ARGS)
{
	bytea	   *image = PG_GETARG_BYTEA_PP(0);
	mt_image_info info;
	mt_err		err;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (mt_image_probe((const uint8_t *) VARDATA_ANY(image),
					   VARSIZE_ANY_EXHDR(image), &info, &err) != MT_OK)
		medtl_raise(&err, "invalid image");
	values[0] = CStringGetTextDatum(info.format);
	values[1] = Int32GetDatum(info.width);
	values[2] = Int32GetDatum(info.height);
	values[3] = Int32GetDatum(info.channels);
	values[4] = Int32GetDatum(info.bit_depth);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* Append "key": "value" (escaped) to a JSON object being built. */
static void
json_kv(StringInfo s, const char *key, const char *value, bool first)
{
	if (!first)
		appendStringInfoString(s, ", ");
	escape_json(s, key);
	appendStringInfoString(s, ": ");
	escape_json(s, value);
}

/* medtl.runtime_info(): CPU features, BLAS library and kernel set, threads, device. */
PG_FUNCTION_INFO_V1(medtl_runtime_info);
Datum
medtl_runtime_info(PG_FUNCTION_ARGS)
{
	StringInfoData s;

	medtl_engine_enter();
	initStringInfo(&s);
	appendStringInfoChar(&s, '{');
	json_kv(&s, "version", MEDTL_VERSION, true);
	json_kv(&s, "cpu_features", mt_cpu_features(), false);
	appendStringInfo(&s, ", \"cpu_cores\": %d", mt_cpu_count());
	json_kv(&s, "blas_library", mt_blas_library(), false);
	json_kv(&s, "blas_core", mt_blas_corename(), false);
	json_kv(&s, "blas_core_choice", mt_blas_core_requested(), false);
	json_kv(&s, "blas_config", mt_blas_config(), false);
	json_kv(&s, "conv_kernels", mt_onednn_info(), false);
	json_kv(&s, "conv_kernels_setting", conv_kernel_options[medtl_conv_kernels].name, false);
	appendStringInfo(&s, ", \"winograd_convolutions\": %lu", mt_onednn_wino_count());
	json_kv(&s, "precision", precision_options[medtl_precision].name, false);
	appendStringInfo(&s, ", \"threads\": %d", mt_blas_threads());
	json_kv(&s, "scoring_threads_mode", medtl_threads_adapt() ? "adaptive" : "fixed", false);
	appendStringInfo(&s, ", \"last_scoring_threads\": %d, \"scoring_thread_probes\": %ld, \"scoring_thread_moves\": %ld",
					 scoring_threads, scoring_probes, scoring_moves);
	appendStringInfo(&s, ", \"parallel_worker\": %s", IsParallelWorker() ? "true" : "false");
	json_kv(&s, "device", medtl_device_in_use(), false);
	json_kv(&s, "device_setting", device_options[medtl_device].name, false);
	appendStringInfo(&s, ", \"cuda_built\": %s", mt_cuda_built() ? "true" : "false");
	{
		mt_err		err;

		mt_clearerr(&err);
		if (mt_cuda_available(&err) == MT_OK)
			json_kv(&s, "cuda_device", mt_cuda_device_name(), false);
		else
			json_kv(&s, "cuda_device", psprintf("none (%s%s%s)", err.msg,
												err.detail[0] ? ": " : "", err.detail), false);
	}
	appendStringInfo(&s, ", \"device_memory_used_mb\": %.1f, \"device_memory_mb\": %d",
					 (double) mt_cuda_mem_used() / (1024.0 * 1024.0), medtl_device_memory_mb);
	appendStringInfo(&s, ", \"jpeg_lib_version\": %d", JPEG_LIB_VERSION);
	json_kv(&s, "libpng", PNG_LIBPNG_VER_STRING, false);
	appendStringInfo(&s, ", \"models_cached\": %d", medtl_cached_models());
	appendStringInfoChar(&s, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(s.data)));
}
