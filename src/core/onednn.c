/*
 * onednn.c - convolutions through oneDNN, loaded with dlopen (onednn.h).
 *
 * Only oneDNN's C API types come from <oneapi/dnnl/dnnl.h> (libdnnl-dev);
 * the functions are looked up in libdnnl.so.2 at first use, so medtl loads
 * and runs without the library (every convolution then goes through
 * im2col + GEMM).
 */
#include "onednn.h"
#include "blas.h"
#include "pool.h"
#include "ops_cpu_internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MT_NO_ONEDNN: build as without the headers (make unittest checks that build) */
#if __has_include(<oneapi/dnnl/dnnl.h>) && !defined(MT_NO_ONEDNN)
#define MT_HAVE_ONEDNN 1
#include <oneapi/dnnl/dnnl.h>
#endif

#ifdef MT_HAVE_ONEDNN

/* the oneDNN functions medtl calls, looked up by name */
#define ONEDNN_FUNCS(X) \
	X(dnnl_version) \
	X(dnnl_engine_create) \
	X(dnnl_stream_create) \
	X(dnnl_memory_desc_init_by_tag) \
	X(dnnl_memory_desc_equal) \
	X(dnnl_memory_desc_get_size) \
	X(dnnl_memory_create) \
	X(dnnl_memory_set_data_handle) \
	X(dnnl_memory_destroy) \
	X(dnnl_dilated_convolution_forward_desc_init) \
	X(dnnl_dilated_convolution_backward_data_desc_init) \
	X(dnnl_dilated_convolution_backward_weights_desc_init) \
	X(dnnl_primitive_attr_create) \
	X(dnnl_primitive_attr_clone) \
	X(dnnl_primitive_attr_destroy) \
	X(dnnl_primitive_attr_set_scratchpad_mode) \
	X(dnnl_primitive_get_primitive_desc) \
	X(dnnl_primitive_attr_set_post_ops) \
	X(dnnl_post_ops_create) \
	X(dnnl_post_ops_destroy) \
	X(dnnl_post_ops_append_eltwise) \
	X(dnnl_primitive_desc_create) \
	X(dnnl_primitive_desc_destroy) \
	X(dnnl_primitive_desc_query) \
	X(dnnl_primitive_desc_query_md) \
	X(dnnl_reorder_primitive_desc_create) \
	X(dnnl_primitive_create) \
	X(dnnl_primitive_destroy) \
	X(dnnl_primitive_execute) \
	X(dnnl_stream_wait)

#define DECLARE_FN(name) static __typeof__(name) *p_##name;
ONEDNN_FUNCS(DECLARE_FN)
#undef DECLARE_FN

typedef void (*omp_set_fn) (int);

static void *lib = NULL;
static int	load_state = 0;		/* 0 not tried, 1 loaded, -1 failed */
static char info[256] = "oneDNN not loaded yet";
static dnnl_engine_t engine;
static dnnl_stream_t stream;
static omp_set_fn omp_set_threads;
static int	want_threads = 0;	/* 0: the library's default */
static int	set_threads = -1;	/* last count given to OpenMP */
static int	mode = -1;			/* -1: not set, MEDTL_CONV_KERNELS decides */
static unsigned long conv_count = 0;
static unsigned long wino_count = 0;

#define CACHE_SHAPES 8

typedef struct conv_entry
{
	int			used;
	int			n,
				h,
				w,
				threads;
	unsigned long stamp;
	dnnl_primitive_t conv;
	dnnl_memory_t src,
				wei,
				bias,
				dst;
	/* bf16 entries: the f32 input converted into the SCR_BF16 scratch */
	dnnl_primitive_t cvt;
	dnnl_memory_t cvt_from,
				cvt_to;
	size_t		cvt_bytes;
	float	   *wbuf;			/* weights in the kernel's layout; NULL: packed as is */
	int			own_wbuf;		/* wbuf is this entry's (else the cache's master) */
	size_t		wbuf_bytes;		/* of an own wbuf */
	/*
	 * Winograd entries: the kernel reads and writes nChw16c, so the
	 * caller's NHWC input is reordered into the SCR_WINO_SRC scratch
	 * (src above) and the output back from SCR_WINO_DST (dst above)
	 */
	int			want_wino;		/* made wanting Winograd (to_blk: and got it) */
	dnnl_primitive_t to_blk,
				from_blk;
	dnnl_memory_t user_src,
				user_dst;
	size_t		blk_src_bytes,
				blk_dst_bytes;
} conv_entry;

/*
 * Weights are reordered once per node: the first layout a kernel wants
 * other than the packed one becomes the cache's master copy, which every
 * shape wanting that layout shares (in practice all of them); a shape
 * wanting yet another layout gets its own copy, reordered from the master.
 * Once the master serves every shape the node's packed weights are not
 * needed while the cache lives (graph.c then frees them).
 */
struct mt_conv_cache
{
	const float *packed;		/* weights the cache was made from */
	int			bf16;			/* kernels and weights in bfloat16 */
	float	   *master;
	size_t		master_bytes;
	dnnl_memory_desc_t master_md;
	unsigned long clock;
	conv_entry	e[CACHE_SHAPES];
};

static int
load(void)
{
	const char *names[] = {"libdnnl.so.2", "libdnnl.so"};
	const dnnl_version_t *v;

	if (load_state != 0)
		return load_state == 1;
	load_state = -1;

	/*
	 * OpenMP's idle workers spin before they sleep: about 3 ms by default,
	 * which on a few cores took the CPU from medtl's own threads and
	 * OpenBLAS between convolutions (ResNet-18 at batch 1 ran 6x slower
	 * here), and none when passive, which makes every convolution wake its
	 * workers through the kernel.  Once oneDNN is loaded medtl's own jobs run
	 * on the same OpenMP threads (mt_pool_use_openmp below), so a short spin
	 * (10,000 rounds, about 0.1 ms) keeps them awake across a layer's ops
	 * without taking a core for long: MobileNetV2's training step went from
	 * 50 to 60 img/s here.  libgomp reads this when it loads, which is now;
	 * OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user win.
	 */
	if (getenv("OMP_WAIT_POLICY") == NULL)
		setenv("GOMP_SPINCOUNT", "10000", 0);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && lib == NULL; i++)
		lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL)
	{
		snprintf(info, sizeof(info), "oneDNN not found (%s); convolutions use im2col + GEMM",
				 dlerror());
		return 0;
	}
#define LOOKUP(name) \
	if ((p_##name = (__typeof__(name) *) dlsym(lib, #name)) == NULL) \
	{ \
		snprintf(info, sizeof(info), "oneDNN lacks %s; convolutions use im2col + GEMM", #name); \
		return 0; \
	}
	ONEDNN_FUNCS(LOOKUP)
#undef LOOKUP
	omp_set_threads = (omp_set_fn) dlsym(lib, "omp_set_num_threads");
	/*
	 * medtl's own parallel jobs (batch norm, activations, pooling, optimizer
	 * steps) go to the OpenMP threads the convolutions run on, as in PyTorch:
	 * two sets of threads took turns on the same cores, each woken through
	 * the kernel for every op.  MEDTL_OWN_POOL=1 keeps medtl's own threads
	 * (for comparison).
	 */
	if (getenv("MEDTL_OWN_POOL") == NULL || strcmp(getenv("MEDTL_OWN_POOL"), "1") != 0)
		mt_pool_use_openmp(dlsym(lib, "GOMP_parallel"), (int (*) (void)) dlsym(lib, "omp_get_thread_num"),
						   (int (*) (void)) dlsym(lib, "omp_get_num_threads"));
	if (p_dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
		p_dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success)
	{
		snprintf(info, sizeof(info), "oneDNN could not create a CPU engine; convolutions use im2col + GEMM");
		return 0;
	}
	v = p_dnnl_version();
	snprintf(info, sizeof(info), "oneDNN %d.%d.%d (%s runtime)", v->major, v->minor, v->patch,
			 v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" :
			 v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential" : "other");
	load_state = 1;
	return 1;
}

void
mt_onednn_set_mode(mt_conv_kernels m)
{
	mode = m;
}

mt_conv_kernels
mt_onednn_mode(void)
{
	if (mode < 0)
	{
		const char *env = getenv("MEDTL_CONV_KERNELS");

		mode = env != NULL && strcmp(env, "gemm") == 0 ? MT_CONV_GEMM :
			env != NULL && strcmp(env, "winograd") == 0 ? MT_CONV_WINOGRAD :
			env != NULL && strcmp(env, "direct") == 0 ? MT_CONV_DIRECT : MT_CONV_AUTO;
	}
	return (mt_conv_kernels) mode;
}

int
mt_onednn_enabled(void)
{
	return mt_onednn_mode() != MT_CONV_GEMM && load();
}

const char *
mt_onednn_info(void)
{
	if (mt_onednn_mode() == MT_CONV_GEMM)
		return "off (medtl.conv_kernels or MEDTL_CONV_KERNELS = gemm): convolutions use im2col + GEMM";
	load();
	return info;
}

void
mt_onednn_set_threads(int n)
{
	want_threads = n;
}

unsigned long
mt_onednn_conv_count(void)
{
	return conv_count;
}

unsigned long
mt_onednn_wino_count(void)
{
	return wino_count;
}

static void
entry_free(conv_entry *e)
{
	if (e->conv)
		p_dnnl_primitive_destroy(e->conv);
	if (e->src)
		p_dnnl_memory_destroy(e->src);
	if (e->wei)
		p_dnnl_memory_destroy(e->wei);
	if (e->bias)
		p_dnnl_memory_destroy(e->bias);
	if (e->dst)
		p_dnnl_memory_destroy(e->dst);
	if (e->cvt)
		p_dnnl_primitive_destroy(e->cvt);
	if (e->cvt_from)
		p_dnnl_memory_destroy(e->cvt_from);
	if (e->cvt_to)
		p_dnnl_memory_destroy(e->cvt_to);
	if (e->to_blk)
		p_dnnl_primitive_destroy(e->to_blk);
	if (e->from_blk)
		p_dnnl_primitive_destroy(e->from_blk);
	if (e->user_src)
		p_dnnl_memory_destroy(e->user_src);
	if (e->user_dst)
		p_dnnl_memory_destroy(e->user_dst);
	if (e->own_wbuf)
		free(e->wbuf);
	memset(e, 0, sizeof(*e));
}

void
mt_conv_cache_free(mt_conv_cache *c)
{
	if (c == NULL)
		return;
	for (int i = 0; i < CACHE_SHAPES; i++)
		entry_free(&c->e[i]);
	free(c->master);
	free(c);
}

size_t
mt_conv_cache_bytes(const mt_conv_cache *c)
{
	size_t		b = 0;

	if (c != NULL)
	{
		b = c->master_bytes;
		for (int i = 0; i < CACHE_SHAPES; i++)
			b += c->e[i].wbuf_bytes;
	}
	return b;
}

int
mt_conv_cache_holds_weights(const mt_conv_cache *c)
{
	int			any = 0;

	if (c == NULL || c->master == NULL)
		return 0;
	for (int i = 0; i < CACHE_SHAPES; i++)
		if (c->e[i].used)
		{
			if (c->e[i].wbuf == NULL)
				return 0;
			any = 1;
		}
	return any;
}

static int
fail(mt_err *err, const char *what, dnnl_status_t st)
{
	return mt_seterr(err, MT_ERR_INTERNAL, "oneDNN failed to %s (status %d)", what, (int) st);
}

/*
 * Give OpenMP the thread count asked for (mt_onednn_set_threads) before a
 * primitive is made as well as before one runs: oneDNN sizes a primitive's
 * work split for the threads it sees when it is made and runs it on that
 * many (its parallel regions name the count), so a primitive made under
 * the library's default of every core ran on two threads on a 2-core
 * machine with medtl.threads = 1 or in a parallel worker with
 * medtl.worker_threads = 1.
 */
static void
apply_threads(void)
{
	if (omp_set_threads != NULL && want_threads != set_threads)
	{
		if (want_threads > 0)
			omp_set_threads(want_threads);
		set_threads = want_threads;
	}
}

/*
 * A primitive descriptor for op d with attr (NULL: none) and a scratchpad
 * that medtl passes in (execute).  In oneDNN's default mode a primitive
 * allocates its scratchpad at every run and frees it after, so the pages
 * of a large one fault in again at every run: Winograd's training kernels,
 * whose scratchpads hold the transformed tiles (tens of MB for a
 * ResNet-18 layer at batch 16), ran no faster than the direct ones that
 * way, and about 2x faster with a kept scratchpad (as PyTorch passes its
 * own).
 */
static dnnl_status_t
pd_create(dnnl_primitive_desc_t *pd, const_dnnl_op_desc_t d, const_dnnl_primitive_attr_t attr,
		  const_dnnl_primitive_desc_t hint)
{
	dnnl_primitive_attr_t own = NULL;
	dnnl_status_t st;

	apply_threads();
	st = attr != NULL ? p_dnnl_primitive_attr_clone(&own, attr) : p_dnnl_primitive_attr_create(&own);
	if (st != dnnl_success)
		return st;
	if ((st = p_dnnl_primitive_attr_set_scratchpad_mode(own, dnnl_scratchpad_mode_user)) == dnnl_success)
		st = p_dnnl_primitive_desc_create(pd, d, own, engine, hint);
	p_dnnl_primitive_attr_destroy(own);
	return st;
}

static dnnl_status_t
rpd_create(dnnl_primitive_desc_t *pd, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst)
{
	apply_threads();
	return p_dnnl_reorder_primitive_desc_create(pd, src, engine, dst, engine, NULL);
}

/* The packed weights (ops.h) as a oneDNN memory descriptor. */
static dnnl_status_t
weights_md(const mt_conv_desc *d, dnnl_memory_desc_t *md)
{
	if (d->groups == 1)
	{
		dnnl_dims_t dims = {d->cout, d->cin, d->kh, d->kw};

		return p_dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, dnnl_hwio);
	}
	else
	{
		dnnl_dims_t dims = {d->groups, d->cout / d->groups, d->cin / d->groups, d->kh, d->kw};

		/* depthwise packs kh x kw x C: hwigo with i = o = 1 */
		return p_dnnl_memory_desc_init_by_tag(md, 5, dims, dnnl_f32,
											  mt_conv_is_depthwise(d) ? dnnl_hwigo : dnnl_ghwio);
	}
}

/*
 * A parameter's own layout (PyTorch's [cout][cin / groups][kh][kw]) as a
 * oneDNN descriptor: training reads and writes it without packing.
 */
static dnnl_status_t
weights_md_oihw(const mt_conv_desc *d, dnnl_memory_desc_t *md)
{
	if (d->groups == 1)
	{
		dnnl_dims_t dims = {d->cout, d->cin, d->kh, d->kw};

		return p_dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, dnnl_oihw);
	}
	else
	{
		dnnl_dims_t dims = {d->groups, d->cout / d->groups, d->cin / d->groups, d->kh, d->kw};

		return p_dnnl_memory_desc_init_by_tag(md, 5, dims, dnnl_f32, dnnl_goihw);
	}
}

static dnnl_status_t
post_ops_attr(mt_act act, dnnl_primitive_attr_t *attr)
{
	dnnl_post_ops_t po;
	dnnl_status_t st;
	dnnl_alg_kind_t alg;
	float		alpha = 0.0f,
				beta = 0.0f;

	if ((st = p_dnnl_primitive_attr_create(attr)) != dnnl_success)
		return st;
	switch (act)
	{
		case MT_ACT_NONE:
			return dnnl_success;
		case MT_ACT_RELU:
			alg = dnnl_eltwise_relu;
			break;
		case MT_ACT_RELU6:
			alg = dnnl_eltwise_clip;
			beta = 6.0f;
			break;
		case MT_ACT_SILU:
			alg = dnnl_eltwise_swish;
			alpha = 1.0f;
			break;
		case MT_ACT_SIGMOID:
			alg = dnnl_eltwise_logistic;
			break;
		default:
			return dnnl_unimplemented;
	}
	if ((st = p_dnnl_post_ops_create(&po)) != dnnl_success)
		return st;
	st = p_dnnl_post_ops_append_eltwise(po, 1.0f, alg, alpha, beta);
	if (st == dnnl_success)
		st = p_dnnl_primitive_attr_set_post_ops(*attr, po);
	p_dnnl_post_ops_destroy(po);
	return st;
}

/* Whether pd's kernel is a reference (unvectorised) one: slower than im2col + GEMM. */
static int
reference_kernel(const_dnnl_primitive_desc_t pd)
{
	const char *impl = NULL;

	return p_dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success ||
		impl == NULL || strncmp(impl, "ref", 3) == 0;
}

/* 64-byte aligned, for oneDNN buffers (free with free) */
static float *
falloc(size_t bytes)
{
	return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

/*
 * Buffers of the module that convolutions go through, one per use within
 * a call: training's input gradient (computed here, then added to the
 * caller's), the weights reordered into the kernel's layout, the weight
 * gradient in the kernel's layout and back in the parameter's, and
 * scoring's input converted to bfloat16 (MT_PREC_BF16), and the
 * primitives' scratchpads (SCR_PAD, see pd_create).  Kept between
 * calls, grown as needed (fresh ones per call page-fault through tens of
 * MB at every convolution).  Released by mt_onednn_release_scratch at the
 * end of a training run (train.c) or when a host frees a model wholesale
 * (mt_model_release_external).
 */
enum
{
	SCR_DSRC,
	SCR_W,
	SCR_DW,
	SCR_DW_PLAIN,
	SCR_BF16,
	SCR_BF16_DY,
	SCR_WINO_SRC,
	SCR_WINO_DST,
	SCR_PAD,					/* primitives' scratchpads (pd_create) */
	N_SCR
};
static float *scratch[N_SCR];
static size_t scratch_bytes[N_SCR];

void
mt_onednn_release_scratch(void)
{
	for (int i = 0; i < N_SCR; i++)
	{
		free(scratch[i]);
		scratch[i] = NULL;
		scratch_bytes[i] = 0;
	}
}

/* Scratch buffer slot of at least bytes (NULL: out of memory). */
static float *
scratch_get(int slot, size_t bytes)
{
	if (bytes > scratch_bytes[slot])
	{
		free(scratch[slot]);
		scratch_bytes[slot] = 0;
		if ((scratch[slot] = falloc(bytes)) == NULL)
			return NULL;
		scratch_bytes[slot] = bytes;
	}
	return scratch[slot];
}

/*
 * Run a primitive with every signal blocked (see onednn.h), with the
 * SCR_PAD scratch as its scratchpad when it wants one (pd_create).
 */
static dnnl_status_t
execute(dnnl_primitive_t p, int nargs, const dnnl_exec_arg_t *args)
{
	sigset_t	all,
				old;
	dnnl_status_t st;
	const_dnnl_primitive_desc_t pd;
	const dnnl_memory_desc_t *pad_md;
	dnnl_memory_t pad = NULL;
	dnnl_exec_arg_t all_args[8];
	size_t		pad_bytes;

	if (nargs < 0 || nargs >= (int) (sizeof(all_args) / sizeof(all_args[0])))
		return dnnl_invalid_arguments;
	memcpy(all_args, args, sizeof(dnnl_exec_arg_t) * nargs);
	if ((st = p_dnnl_primitive_get_primitive_desc(p, &pd)) != dnnl_success)
		return st;
	pad_md = p_dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
	if (pad_md != NULL && (pad_bytes = p_dnnl_memory_desc_get_size(pad_md)) > 0)
	{
		float	   *buf = scratch_get(SCR_PAD, pad_bytes);

		if (buf == NULL)
			return dnnl_out_of_memory;
		if ((st = p_dnnl_memory_create(&pad, pad_md, engine, buf)) != dnnl_success)
			return st;
		all_args[nargs].arg = DNNL_ARG_SCRATCHPAD;
		all_args[nargs].memory = pad;
		nargs++;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	apply_threads();
	st = p_dnnl_primitive_execute(p, stream, nargs, all_args);
	if (st == dnnl_success)
		st = p_dnnl_stream_wait(stream);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pad != NULL)
		p_dnnl_memory_destroy(pad);
	return st;
}

/*
 * Whether d on a batch of n goes to the Winograd kernel (float32 only; the
 * callers check the type): in training under MT_CONV_AUTO or
 * MT_CONV_WINOGRAD, in scoring under MT_CONV_WINOGRAD only (scoring keeps
 * the direct kernels' logits, closest to PyTorch's, and their weights, 4x
 * smaller); a dense 3x3 convolution, stride 1, no dilation, channels in
 * whole blocks of 16, more than one image (at batch 1 the reorders around
 * it cost more than it saves, and a one-row scoring backend keeps the
 * direct kernel's smaller weights).
 */
static int
wino_shape(const mt_conv_desc *d, int n, int training)
{
	mt_conv_kernels m = mt_onednn_mode();

	return (m == MT_CONV_WINOGRAD || (training && m == MT_CONV_AUTO)) && n >= 2 &&
		d->groups == 1 && d->kh == 3 && d->kw == 3 && d->sh == 1 && d->sw == 1 &&
		d->dh == 1 && d->dw == 1 && d->cin % 16 == 0 && d->cout % 16 == 0;
}

/*
 * Reorder a tensor (weights or activations) from (src, src_md) into buf,
 * laid out as dst_md.
 */
static int
reorder_to(const dnnl_memory_desc_t *src_md, const float *src,
		   const dnnl_memory_desc_t *dst_md, float *buf, mt_err *err)
{
	dnnl_primitive_desc_t rpd = NULL;
	dnnl_primitive_t reorder = NULL;
	dnnl_memory_t from = NULL,
				to = NULL;
	dnnl_status_t st;
	int			rc = MT_OK;

	if ((st = rpd_create(&rpd, src_md, dst_md)) != dnnl_success ||
		(st = p_dnnl_primitive_create(&reorder, rpd)) != dnnl_success ||
		(st = p_dnnl_memory_create(&from, src_md, engine, (void *) src)) != dnnl_success ||
		(st = p_dnnl_memory_create(&to, dst_md, engine, buf)) != dnnl_success)
		rc = fail(err, "reorder a tensor between layouts", st);
	else
	{
		dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};

		if ((st = execute(reorder, 2, args)) != dnnl_success)
			rc = fail(err, "reorder a tensor between layouts", st);
	}
	if (to)
		p_dnnl_memory_destroy(to);
	if (from)
		p_dnnl_memory_destroy(from);
	if (reorder)
		p_dnnl_primitive_destroy(reorder);
	if (rpd)
		p_dnnl_primitive_desc_destroy(rpd);
	return rc;
}

/* Reorder weights from (src, src_md) into a new buffer laid out as dst_md. */
static int
reorder_new(const dnnl_memory_desc_t *src_md, const float *src,
			const dnnl_memory_desc_t *dst_md, float **out, size_t *bytes, mt_err *err)
{
	size_t		sz = p_dnnl_memory_desc_get_size(dst_md);
	float	   *buf = falloc(sz);
	int			rc;

	*out = NULL;
	*bytes = 0;
	if (buf == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory for reordered convolution weights");
	if ((rc = reorder_to(src_md, src, dst_md, buf, err)) != MT_OK)
	{
		free(buf);
		return rc;
	}
	*out = buf;
	*bytes = sz;
	return MT_OK;
}

/*
 * Reorder (src, src_md) into scratch slot, laid out as dst_md; *out is the
 * slot.  nomem names the buffer in the out-of-memory error.
 */
static int
reorder_scratch(int slot, const dnnl_memory_desc_t *src_md, const float *src,
				const dnnl_memory_desc_t *dst_md, const void **out, const char *nomem, mt_err *err)
{
	float	   *buf = scratch_get(slot, p_dnnl_memory_desc_get_size(dst_md));
	int			rc;

	if (buf == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory %s", nomem);
	if ((rc = reorder_to(src_md, src, dst_md, buf, err)) != MT_OK)
		return rc;
	*out = buf;
	return MT_OK;
}

/*
 * Describe scoring convolution d on an n x h x w input with algorithm alg
 * (dnnl_convolution_direct or _winograd), its input of type kt and input
 * and output laid out as tag (output float32), and make its primitive
 * descriptor with the activation fused (*pd, the caller destroys it).
 * Fills src_md, dst_md, bias_md and plain_w (the packed weights' layout)
 * for the caller's memories.  MT_ERR_UNSUPPORTED when oneDNN cannot
 * describe or fuse it or has no kernel of that algorithm for it.
 */
static int
scoring_pd(const mt_conv_desc *d, int n, int h, int w, dnnl_alg_kind_t alg, dnnl_data_type_t kt,
		   dnnl_format_tag_t tag, int with_bias, dnnl_memory_desc_t *src_md, dnnl_memory_desc_t *dst_md,
		   dnnl_memory_desc_t *bias_md, dnnl_memory_desc_t *plain_w, dnnl_primitive_desc_t *pd,
		   mt_err *err)
{
	const char *kind = alg == dnnl_convolution_winograd ? " Winograd" : "";
	int			oh = mt_out_size(h, d->kh, d->sh, d->dh, d->pad_t, d->pad_b);
	int			ow = mt_out_size(w, d->kw, d->sw, d->dw, d->pad_l, d->pad_r);
	dnnl_dims_t sd = {n, d->cin, h, w};
	dnnl_dims_t dd = {n, d->cout, oh, ow};
	dnnl_dims_t bd = {d->cout};
	dnnl_dims_t strides = {d->sh, d->sw};
	dnnl_dims_t dil = {d->dh - 1, d->dw - 1};
	dnnl_dims_t pl = {d->pad_t, d->pad_l};
	dnnl_dims_t pr = {d->pad_b, d->pad_r};
	dnnl_memory_desc_t any_w;
	dnnl_convolution_desc_t cd;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_status_t st;

	if ((st = p_dnnl_memory_desc_init_by_tag(src_md, 4, sd, kt, tag)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(dst_md, 4, dd, dnnl_f32, tag)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(bias_md, 1, bd, dnnl_f32, dnnl_x)) != dnnl_success ||
		(st = weights_md(d, plain_w)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&any_w, d->groups == 1 ? 4 : 5, plain_w->dims, kt,
											 dnnl_format_tag_any)) != dnnl_success)
		return fail(err, "describe a convolution", st);
	if (p_dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference, alg, src_md, &any_w,
													 with_bias ? bias_md : NULL, dst_md,
													 strides, dil, pl, pr) != dnnl_success)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN cannot describe this%s convolution", kind);
	if ((st = post_ops_attr(d->act, &attr)) != dnnl_success)
	{
		if (attr)
			p_dnnl_primitive_attr_destroy(attr);
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN cannot fuse this activation");
	}
	st = pd_create(pd, &cd, attr, NULL);
	p_dnnl_primitive_attr_destroy(attr);
	if (st != dnnl_success)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN has no%s kernel for this convolution", kind);
	return MT_OK;
}

/*
 * Build the primitive for d on an n x h x w input into e (memories without
 * data) and find its weights: the packed ones as they are, the cache's
 * master copy, or a new reordered copy (see mt_conv_cache).  packed_w may be
 * NULL once the master serves every shape.  MT_ERR_UNSUPPORTED when oneDNN
 * has no optimised implementation.
 */
static int
entry_make(mt_conv_cache *c, conv_entry *e, const mt_conv_desc *d, int n, int h, int w,
		   const float *packed_w, int with_bias, mt_err *err)
{
	dnnl_data_type_t kt = c->bf16 ? dnnl_bf16 : dnnl_f32;	/* the kernel's input and weights */
	dnnl_memory_desc_t src32_md,
				src_md,
				dst_md,
				bias_md,
				plain_w;
	dnnl_primitive_desc_t pd = NULL;
	const dnnl_memory_desc_t *want_w;
	dnnl_status_t st;
	int			rc;

	memset(e, 0, sizeof(*e));
	if ((rc = scoring_pd(d, n, h, w, dnnl_convolution_direct, kt, dnnl_nhwc, with_bias, &src_md, &dst_md,
						 &bias_md, &plain_w, &pd, err)) != MT_OK)
		return rc;
	if ((st = p_dnnl_memory_desc_init_by_tag(&src32_md, 4, src_md.dims, dnnl_f32, dnnl_nhwc)) != dnnl_success)
	{
		p_dnnl_primitive_desc_destroy(pd);
		return fail(err, "describe a convolution", st);
	}
	if (reference_kernel(pd))
	{
		p_dnnl_primitive_desc_destroy(pd);
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN has only a reference kernel for this convolution");
	}
	want_w = p_dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
	if ((st = p_dnnl_primitive_create(&e->conv, pd)) != dnnl_success)
	{
		p_dnnl_primitive_desc_destroy(pd);
		return fail(err, "create a convolution", st);
	}
	if ((st = p_dnnl_memory_create(&e->src, &src_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->dst, &dst_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->wei, want_w, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(with_bias &&
		 (st = p_dnnl_memory_create(&e->bias, &bias_md, engine, DNNL_MEMORY_NONE)) != dnnl_success))
	{
		rc = fail(err, "create memory", st);
		goto out;
	}
	if (c->bf16)
	{
		dnnl_primitive_desc_t rpd = NULL;

		e->cvt_bytes = p_dnnl_memory_desc_get_size(&src_md);
		if ((st = rpd_create(&rpd, &src32_md, &src_md)) != dnnl_success ||
			(st = p_dnnl_primitive_create(&e->cvt, rpd)) != dnnl_success ||
			(st = p_dnnl_memory_create(&e->cvt_from, &src32_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
			(st = p_dnnl_memory_create(&e->cvt_to, &src_md, engine, DNNL_MEMORY_NONE)) != dnnl_success)
			rc = fail(err, "convert to bfloat16", st);
		if (rpd)
			p_dnnl_primitive_desc_destroy(rpd);
		if (rc != MT_OK)
			goto out;
	}
	e->used = 1;
	e->n = n;
	e->h = h;
	e->w = w;
	if (c->master != NULL && p_dnnl_memory_desc_equal(want_w, &c->master_md))
		e->wbuf = c->master;
	else if (c->master == NULL && !c->bf16 && p_dnnl_memory_desc_equal(want_w, &plain_w) && packed_w != NULL)
		e->wbuf = NULL;			/* the kernel reads the packed weights */
	else if (c->master == NULL)
	{
		if (packed_w == NULL)
			rc = mt_seterr(err, MT_ERR_UNSUPPORTED, "convolution weights were released");
		else if ((rc = reorder_new(&plain_w, packed_w, want_w, &c->master, &c->master_bytes,
								   err)) == MT_OK)
		{
			c->master_md = *want_w;
			e->wbuf = c->master;
		}
	}
	else if ((rc = reorder_new(&c->master_md, c->master, want_w, &e->wbuf, &e->wbuf_bytes,
							   err)) == MT_OK)
		e->own_wbuf = 1;
out:
	p_dnnl_primitive_desc_destroy(pd);
	if (rc != MT_OK)
		entry_free(e);
	return rc;
}

/* Whether scoring runs d on a batch of n through the Winograd kernel. */
static int
wants_wino(const mt_conv_cache *c, const mt_conv_desc *d, int n)
{
	return !c->bf16 && wino_shape(d, n, 0);
}

/*
 * entry_make for the Winograd kernel: nChw16c in and out, with reorders
 * from and to the caller's NHWC, and the weights transformed once into
 * the entry's own buffer (from the packed weights, or from the cache's
 * master copy through the plain layout when they were released).
 * MT_ERR_UNSUPPORTED when oneDNN has no Winograd kernel for it (the
 * caller then makes a direct entry).
 */
static int
entry_make_wino(mt_conv_cache *c, conv_entry *e, const mt_conv_desc *d, int n, int h, int w,
				const float *packed_w, int with_bias, mt_err *err)
{
	dnnl_memory_desc_t src_md,
				dst_md,
				blk_src_md,
				blk_dst_md,
				bias_md,
				plain_w;
	dnnl_primitive_desc_t pd = NULL,
				rpd = NULL;
	const dnnl_memory_desc_t *want_w;
	dnnl_status_t st;
	int			rc;

	memset(e, 0, sizeof(*e));
	if ((rc = scoring_pd(d, n, h, w, dnnl_convolution_winograd, dnnl_f32, dnnl_nChw16c, with_bias,
						 &blk_src_md, &blk_dst_md, &bias_md, &plain_w, &pd, err)) != MT_OK)
		return rc;
	if ((st = p_dnnl_memory_desc_init_by_tag(&src_md, 4, blk_src_md.dims, dnnl_f32, dnnl_nhwc)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&dst_md, 4, blk_dst_md.dims, dnnl_f32, dnnl_nhwc)) != dnnl_success)
	{
		p_dnnl_primitive_desc_destroy(pd);
		return fail(err, "describe a convolution", st);
	}
	want_w = p_dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
	e->blk_src_bytes = p_dnnl_memory_desc_get_size(&blk_src_md);
	e->blk_dst_bytes = p_dnnl_memory_desc_get_size(&blk_dst_md);
	if ((st = p_dnnl_primitive_create(&e->conv, pd)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->src, &blk_src_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->dst, &blk_dst_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->user_src, &src_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->user_dst, &dst_md, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(st = p_dnnl_memory_create(&e->wei, want_w, engine, DNNL_MEMORY_NONE)) != dnnl_success ||
		(with_bias &&
		 (st = p_dnnl_memory_create(&e->bias, &bias_md, engine, DNNL_MEMORY_NONE)) != dnnl_success))
	{
		rc = fail(err, "create a Winograd convolution", st);
		goto out;
	}
	if ((st = rpd_create(&rpd, &src_md, &blk_src_md)) != dnnl_success ||
		(st = p_dnnl_primitive_create(&e->to_blk, rpd)) != dnnl_success)
	{
		rc = fail(err, "reorder a convolution's input", st);
		goto out;
	}
	p_dnnl_primitive_desc_destroy(rpd);
	rpd = NULL;
	if ((st = rpd_create(&rpd, &blk_dst_md, &dst_md)) != dnnl_success ||
		(st = p_dnnl_primitive_create(&e->from_blk, rpd)) != dnnl_success)
	{
		rc = fail(err, "reorder a convolution's output", st);
		goto out;
	}
	e->used = 1;
	e->n = n;
	e->h = h;
	e->w = w;
	e->own_wbuf = 1;
	if (packed_w != NULL)
		rc = reorder_new(&plain_w, packed_w, want_w, &e->wbuf, &e->wbuf_bytes, err);
	else if (c->master != NULL)
	{
		/* released: back to the plain layout from the master, then transformed */
		float	   *tmp = NULL;
		size_t		tmp_bytes = 0;

		if ((rc = reorder_new(&c->master_md, c->master, &plain_w, &tmp, &tmp_bytes, err)) == MT_OK)
			rc = reorder_new(&plain_w, tmp, want_w, &e->wbuf, &e->wbuf_bytes, err);
		free(tmp);
	}
	else
		rc = mt_seterr(err, MT_ERR_UNSUPPORTED, "convolution weights were released");
out:
	if (rpd)
		p_dnnl_primitive_desc_destroy(rpd);
	p_dnnl_primitive_desc_destroy(pd);
	if (rc != MT_OK)
		entry_free(e);
	return rc;
}

static int
entry_run(conv_entry *e, const float *x, const float *packed_w, const float *bias,
		  float *y, mt_err *err)
{
	dnnl_exec_arg_t args[4];
	int			nargs = 0;
	dnnl_status_t st;

	if (e->cvt != NULL)
	{
		/* the input in bfloat16, through the module's scratch */
		void	   *xb = scratch_get(SCR_BF16, e->cvt_bytes);
		dnnl_exec_arg_t cargs[2] = {{DNNL_ARG_FROM, e->cvt_from}, {DNNL_ARG_TO, e->cvt_to}};

		if (xb == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a bfloat16 input");
		if ((st = p_dnnl_memory_set_data_handle(e->cvt_from, (void *) x)) != dnnl_success ||
			(st = p_dnnl_memory_set_data_handle(e->cvt_to, xb)) != dnnl_success)
			return fail(err, "set memory", st);
		if ((st = execute(e->cvt, 2, cargs)) != dnnl_success)
			return fail(err, "convert to bfloat16", st);
		x = xb;
	}
	if (e->to_blk != NULL)
	{
		/* the input in nChw16c, through the module's scratch; y written after */
		float	   *bx = scratch_get(SCR_WINO_SRC, e->blk_src_bytes),
				   *by = scratch_get(SCR_WINO_DST, e->blk_dst_bytes);
		dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, e->user_src}, {DNNL_ARG_TO, e->src}};

		if (bx == NULL || by == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a Winograd convolution's blocks");
		if ((st = p_dnnl_memory_set_data_handle(e->user_src, (void *) x)) != dnnl_success ||
			(st = p_dnnl_memory_set_data_handle(e->src, bx)) != dnnl_success ||
			(st = p_dnnl_memory_set_data_handle(e->user_dst, y)) != dnnl_success)
			return fail(err, "set memory", st);
		if ((st = execute(e->to_blk, 2, rargs)) != dnnl_success)
			return fail(err, "reorder a convolution's input", st);
		x = bx;
		y = by;
	}
	if ((st = p_dnnl_memory_set_data_handle(e->src, (void *) x)) != dnnl_success ||
		(st = p_dnnl_memory_set_data_handle(e->dst, y)) != dnnl_success ||
		(st = p_dnnl_memory_set_data_handle(e->wei, e->wbuf ? (void *) e->wbuf : (void *) packed_w)) != dnnl_success ||
		(e->bias && (st = p_dnnl_memory_set_data_handle(e->bias, (void *) bias)) != dnnl_success))
		return fail(err, "set memory", st);
	args[nargs++] = (dnnl_exec_arg_t) {DNNL_ARG_SRC, e->src};
	args[nargs++] = (dnnl_exec_arg_t) {DNNL_ARG_WEIGHTS, e->wei};
	if (e->bias)
		args[nargs++] = (dnnl_exec_arg_t) {DNNL_ARG_BIAS, e->bias};
	args[nargs++] = (dnnl_exec_arg_t) {DNNL_ARG_DST, e->dst};
	if ((st = execute(e->conv, nargs, args)) != dnnl_success)
		return fail(err, "run a convolution", st);
	if (e->from_blk != NULL)
	{
		dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, e->dst}, {DNNL_ARG_TO, e->user_dst}};

		if ((st = execute(e->from_blk, 2, rargs)) != dnnl_success)
			return fail(err, "reorder a convolution's output", st);
		wino_count++;
	}
	conv_count++;
	return MT_OK;
}

int
mt_onednn_conv2d(const mt_conv_desc *d, int n, int h, int w,
				 const float *x, const float *packed_w, const float *bias,
				 float *y, mt_conv_cache **cache, mt_err *err)
{
	mt_conv_cache *c;
	conv_entry *e = NULL;
	int			rc,
				wino,
				bf16 = mt_get_precision() == MT_PREC_BF16;

	if (!mt_onednn_enabled())
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", info);
	if (cache == NULL)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN runs only convolutions with a cache");
	c = *cache;
	if (c != NULL && ((packed_w != NULL && c->packed != packed_w) || c->bf16 != bf16))
	{
		/*
		 * other weights than the cache was made for, or the other precision:
		 * start again (from the packed weights: a caller that released them
		 * gets MT_ERR_UNSUPPORTED below and packs them again)
		 */
		mt_conv_cache_free(c);
		*cache = c = NULL;
	}
	if (c == NULL)
	{
		if (packed_w == NULL)
			return mt_seterr(err, MT_ERR_UNSUPPORTED, "convolution weights were released");
		c = calloc(1, sizeof(*c));
		if (c == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a convolution cache");
		c->packed = packed_w;
		c->bf16 = bf16;
		*cache = c;
	}
	wino = wants_wino(c, d, n);
	for (int i = 0; i < CACHE_SHAPES && e == NULL; i++)
		if (c->e[i].used && c->e[i].n == n && c->e[i].h == h && c->e[i].w == w &&
			c->e[i].threads == want_threads && (c->e[i].bias != NULL) == (bias != NULL) &&
			c->e[i].want_wino == wino)
			e = &c->e[i];
	if (e == NULL)
	{
		/* a free slot, or the least recently used */
		int			victim = 0;

		for (int i = 0; i < CACHE_SHAPES; i++)
		{
			if (!c->e[i].used)
			{
				victim = i;
				break;
			}
			if (c->e[i].stamp < c->e[victim].stamp)
				victim = i;
		}
		entry_free(&c->e[victim]);
		rc = MT_ERR_UNSUPPORTED;
		if (wino)
		{
			rc = entry_make_wino(c, &c->e[victim], d, n, h, w, packed_w, bias != NULL, err);
			if (rc != MT_OK && rc != MT_ERR_UNSUPPORTED)
				return rc;
		}
		/* no Winograd kernel: the direct one (found again next time: wino stays 0) */
		if (rc != MT_OK &&
			(rc = entry_make(c, &c->e[victim], d, n, h, w, packed_w, bias != NULL, err)) != MT_OK)
			return rc;
		e = &c->e[victim];
		e->threads = want_threads;
		e->want_wino = wino;
	}
	if (e->wbuf == NULL && packed_w == NULL)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "convolution weights were released");
	e->stamp = ++c->clock;
	return entry_run(e, x, packed_w, bias, y, err);
}



/*
 * Backward passes for training (ops.h conv2d_backward_data / _weight):
 * made per call (oneDNN's own primitive cache keeps the kernels between
 * steps), weights reordered per call (they change every step), results
 * added into the caller's gradients.
 */
typedef struct bwd_mds
{
	dnnl_memory_desc_t src,
				dst,
				plain_w,
				any_w,
				src_k,			/* src, dst and "any" weights in the kernel's type: */
				dst_k,			/* bfloat16 for bf16 training, else as above */
				any_dw,			/* the weight gradient: float32, any layout */
				src_b,			/* Winograd: src and dst as its kernels */
				dst_b;			/* read and write them (nChw16c) */
	int			bf16,
				wino;			/* the primitive is Winograd's (src_b, dst_b) */
	dnnl_dims_t strides,
				dil,
				pl,
				pr;
} bwd_mds;

/*
 * The descriptors of d on an n x h x w input: NHWC activations, the weights
 * packed (ops.h) or in the parameter's own layout (oihw), and "any" for the
 * kernel's choice.
 */
static int
train_mds(const mt_conv_desc *d, int n, int h, int w, int oihw, bwd_mds *m, mt_err *err)
{
	/* bfloat16 kernels for training from the parameters' own layout only */
	dnnl_data_type_t kt = oihw && mt_get_precision() == MT_PREC_BF16 ? dnnl_bf16 : dnnl_f32;
	int			oh = mt_out_size(h, d->kh, d->sh, d->dh, d->pad_t, d->pad_b);
	int			ow = mt_out_size(w, d->kw, d->sw, d->dw, d->pad_l, d->pad_r);
	dnnl_dims_t sd = {n, d->cin, h, w};
	dnnl_dims_t dd = {n, d->cout, oh, ow};
	dnnl_status_t st;

	if (oh <= 0 || ow <= 0)
		return mt_seterr(err, MT_ERR_SHAPE,
						 "input of %dx%d is too small for a %dx%d convolution", h, w, d->kh, d->kw);
	m->strides[0] = d->sh;
	m->strides[1] = d->sw;
	m->dil[0] = d->dh - 1;
	m->dil[1] = d->dw - 1;
	m->pl[0] = d->pad_t;
	m->pl[1] = d->pad_l;
	m->pr[0] = d->pad_b;
	m->pr[1] = d->pad_r;
	m->bf16 = kt == dnnl_bf16;
	m->wino = 0;
	if ((st = p_dnnl_memory_desc_init_by_tag(&m->src, 4, sd, dnnl_f32, dnnl_nhwc)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&m->dst, 4, dd, dnnl_f32, dnnl_nhwc)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&m->src_k, 4, sd, kt, dnnl_nhwc)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&m->dst_k, 4, dd, kt, dnnl_nhwc)) != dnnl_success ||
		(st = (oihw ? weights_md_oihw(d, &m->plain_w) : weights_md(d, &m->plain_w))) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&m->any_w, m->plain_w.ndims, m->plain_w.dims, kt,
											 dnnl_format_tag_any)) != dnnl_success ||
		(st = p_dnnl_memory_desc_init_by_tag(&m->any_dw, m->plain_w.ndims, m->plain_w.dims, dnnl_f32,
											 dnnl_format_tag_any)) != dnnl_success)
		return fail(err, "describe a convolution", st);
	return MT_OK;
}

/*
 * Whether training runs d on a batch of n through the Winograd kernel
 * (MT_CONV_AUTO or MT_CONV_WINOGRAD, float32): then m->wino is set and m->src_b and
 * m->dst_b describe its blocked input and output, which the callers
 * reorder from and to NHWC through the SCR_WINO_* scratch.
 */
static int
train_wino(const mt_conv_desc *d, int n, bwd_mds *m)
{
	m->wino = 0;
	if (m->bf16 || !wino_shape(d, n, 1) ||
		p_dnnl_memory_desc_init_by_tag(&m->src_b, 4, m->src.dims, dnnl_f32, dnnl_nChw16c) != dnnl_success ||
		p_dnnl_memory_desc_init_by_tag(&m->dst_b, 4, m->dst.dims, dnnl_f32, dnnl_nChw16c) != dnnl_success)
		return 0;
	m->wino = 1;
	return 1;
}

/* The kernel's input, output (or output gradient) and input gradient descriptors. */
#define K_SRC(m) ((m)->wino ? &(m)->src_b : &(m)->src_k)
#define K_DST(m) ((m)->wino ? &(m)->dst_b : &(m)->dst_k)
#define K_DSRC(m) ((m)->wino ? &(m)->src_b : &(m)->src)
#define K_ALG(m) ((m)->wino ? dnnl_convolution_winograd : dnnl_convolution_direct)

/*
 * An activation for a bfloat16 kernel: x (float32, as md) converted into
 * scratch slot (bf16 training), or x itself.
 */
static int
kernel_input(const bwd_mds *m, const dnnl_memory_desc_t *md, const dnnl_memory_desc_t *md_k,
			 int slot, const float *x, const void **out, mt_err *err)
{
	*out = x;
	if (!m->bf16)
		return MT_OK;
	return reorder_scratch(slot, md, x, md_k, out, "for a bfloat16 activation", err);
}

/*
 * train_mds and the forward primitive descriptor backward passes take as a
 * hint: Winograd's when allow_wino and train_wino agree and oneDNN has
 * that kernel (m->wino says which), else the direct one.
 */
static int
bwd_describe(const mt_conv_desc *d, int n, int h, int w, int oihw, int allow_wino, bwd_mds *m,
			 dnnl_primitive_desc_t *hint, mt_err *err)
{
	dnnl_convolution_desc_t cd;
	int			rc;

	*hint = NULL;
	if ((rc = train_mds(d, n, h, w, oihw, m, err)) != MT_OK)
		return rc;
	if (allow_wino && train_wino(d, n, m))
	{
		if (p_dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training,
														 dnnl_convolution_winograd, &m->src_b,
														 &m->any_w, NULL, &m->dst_b, m->strides,
														 m->dil, m->pl, m->pr) == dnnl_success &&
			pd_create(hint, &cd, NULL, NULL) == dnnl_success)
			return MT_OK;
		*hint = NULL;
		m->wino = 0;
	}
	if (p_dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct,
													 &m->src_k, &m->any_w, NULL, &m->dst_k, m->strides,
													 m->dil, m->pl, m->pr) != dnnl_success ||
		pd_create(hint, &cd, NULL, NULL) != dnnl_success)
	{
		*hint = NULL;
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN has no kernel for this convolution");
	}
	return MT_OK;
}

/*
 * One backward primitive of a convolution, made for a call: its
 * descriptors, the forward hint, the primitive and up to three memories,
 * all released by bwd_end (its buffers are the module's scratch).
 */
typedef struct bwd_call
{
	bwd_mds		m;
	dnnl_primitive_desc_t hint,
				pd;
	dnnl_primitive_t prim;
	dnnl_memory_t mem[3];
} bwd_call;

static void
bwd_end(bwd_call *c)
{
	for (int i = 0; i < 3; i++)
		if (c->mem[i])
			p_dnnl_memory_destroy(c->mem[i]);
	if (c->prim)
		p_dnnl_primitive_destroy(c->prim);
	if (c->pd)
		p_dnnl_primitive_desc_destroy(c->pd);
	if (c->hint)
		p_dnnl_primitive_desc_destroy(c->hint);
}

/* c->prim from c->pd, unless its kernel is a reference one. */
static int
call_primitive(bwd_call *c, mt_err *err)
{
	dnnl_status_t st;

	if (reference_kernel(c->pd))
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN has only a reference kernel for this convolution");
	if ((st = p_dnnl_primitive_create(&c->prim, c->pd)) != dnnl_success)
	{
		c->prim = NULL;
		return fail(err, "create a convolution", st);
	}
	return MT_OK;
}

/*
 * Describe and create the backward-data (weight_grad 0) or backward-weights
 * (1) primitive of d on an n x h x w input.  MT_ERR_UNSUPPORTED when oneDNN
 * has no optimised kernel; call bwd_end in every case.
 */
static int
bwd_begin(bwd_call *c, int weight_grad, const mt_conv_desc *d, int n, int h, int w, int oihw,
		  mt_err *err)
{
	dnnl_convolution_desc_t cd;
	bwd_mds    *m = &c->m;
	dnnl_status_t st;
	int			rc;

	memset(c, 0, sizeof(*c));
	if (!mt_onednn_enabled())
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", info);
	if ((rc = bwd_describe(d, n, h, w, oihw, 1, m, &c->hint, err)) != MT_OK)
		return rc;
	for (;;)
	{
		st = weight_grad ?
			p_dnnl_dilated_convolution_backward_weights_desc_init(&cd, K_ALG(m), K_SRC(m), &m->any_dw,
																  NULL, K_DST(m), m->strides, m->dil,
																  m->pl, m->pr) :
			p_dnnl_dilated_convolution_backward_data_desc_init(&cd, K_ALG(m), K_DSRC(m), &m->any_w,
															   K_DST(m), m->strides, m->dil, m->pl,
															   m->pr);
		if (st == dnnl_success && pd_create(&c->pd, &cd, NULL, c->hint) == dnnl_success)
			break;
		c->pd = NULL;
		if (!m->wino)
			return mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN has no backward kernel for this convolution");
		/* no Winograd kernel for this pass: the direct one */
		p_dnnl_primitive_desc_destroy(c->hint);
		if ((rc = bwd_describe(d, n, h, w, oihw, 0, m, &c->hint, err)) != MT_OK)
			return rc;
	}
	return call_primitive(c, err);
}

/*
 * The weights as c's kernel reads them: w itself, or a copy reordered into
 * the SCR_W scratch (they change every step); *want is the kernel's
 * descriptor.
 */
static int
call_weights(bwd_call *c, const float *w, const dnnl_memory_desc_t **want, const void **kw,
			 mt_err *err)
{
	*want = p_dnnl_primitive_desc_query_md(c->pd, dnnl_query_weights_md, 0);
	*kw = w;
	if (p_dnnl_memory_desc_equal(*want, &c->m.plain_w))
		return MT_OK;
	return reorder_scratch(SCR_W, &c->m.plain_w, w, *want, kw, "for reordered convolution weights", err);
}

static int
backward_data(const mt_conv_desc *d, int n, int h, int w, const float *dy, const float *packed_w,
			  int oihw, float *dx, int set, mt_err *err)
{
	bwd_call	c;
	const dnnl_memory_desc_t *want_w;
	const void *kw,
			   *kdy;
	float	   *dsrc;
	dnnl_status_t st;
	int			rc;

	if ((rc = bwd_begin(&c, 0, d, n, h, w, oihw, err)) != MT_OK ||
		(rc = call_weights(&c, packed_w, &want_w, &kw, err)) != MT_OK ||
		(rc = c.m.wino ?
		 reorder_scratch(SCR_WINO_DST, &c.m.dst, dy, &c.m.dst_b, &kdy, "for a Winograd convolution", err) :
		 kernel_input(&c.m, &c.m.dst, &c.m.dst_k, SCR_BF16_DY, dy, &kdy, err)) != MT_OK)
		goto out;
	/* set, the direct kernel writes dx itself (NHWC, as the caller's) */
	if (set && !c.m.wino)
		dsrc = dx;
	else if ((dsrc = scratch_get(c.m.wino ? SCR_WINO_SRC : SCR_DSRC,
								 p_dnnl_memory_desc_get_size(K_DSRC(&c.m)))) == NULL)
	{
		rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in a convolution's backward pass");
		goto out;
	}
	if ((st = p_dnnl_memory_create(&c.mem[0], K_DST(&c.m), engine, (void *) kdy)) != dnnl_success ||
		(st = p_dnnl_memory_create(&c.mem[1], want_w, engine, (void *) kw)) != dnnl_success ||
		(st = p_dnnl_memory_create(&c.mem[2], K_DSRC(&c.m), engine, dsrc)) != dnnl_success)
	{
		rc = fail(err, "create memory", st);
		goto out;
	}
	{
		dnnl_exec_arg_t args[3] = {{DNNL_ARG_DIFF_DST, c.mem[0]}, {DNNL_ARG_WEIGHTS, c.mem[1]},
		{DNNL_ARG_DIFF_SRC, c.mem[2]}};

		if ((st = execute(c.prim, 3, args)) != dnnl_success)
		{
			rc = fail(err, "run a convolution's backward pass", st);
			goto out;
		}
	}
	if (c.m.wino)
	{
		const void *plain = dx;

		/*
		 * back to NHWC: set, straight into the caller's fresh gradient;
		 * else into scratch, then added to the caller's gradient below
		 */
		if ((rc = set ? reorder_to(&c.m.src_b, dsrc, &c.m.src, dx, err) :
			 reorder_scratch(SCR_DSRC, &c.m.src_b, dsrc, &c.m.src, &plain,
							 "in a convolution's backward pass", err)) != MT_OK)
			goto out;
		dsrc = (float *) plain;
		wino_count++;
	}
	if (!set)
		mt_cpu_accumulate((size_t) n * h * w * d->cin, dsrc, dx);
	else if (dsrc != dx)
		memcpy(dx, dsrc, sizeof(float) * n * h * w * d->cin);
	conv_count++;
out:
	bwd_end(&c);
	return rc;
}

static int
backward_weight(const mt_conv_desc *d, int n, int h, int w, const float *x, const float *dy,
				int oihw, float *packed_dw, mt_err *err)
{
	bwd_call	c;
	const dnnl_memory_desc_t *want_dw;
	const void *kx,
			   *kdy,
			   *pdw;
	float	   *kdw;
	dnnl_status_t st;
	int			rc;

	if ((rc = bwd_begin(&c, 1, d, n, h, w, oihw, err)) != MT_OK)
		goto out;
	if (c.m.wino)
	{
		if ((rc = reorder_scratch(SCR_WINO_SRC, &c.m.src, x, &c.m.src_b, &kx, "for a Winograd convolution",
								  err)) != MT_OK ||
			(rc = reorder_scratch(SCR_WINO_DST, &c.m.dst, dy, &c.m.dst_b, &kdy,
								  "for a Winograd convolution", err)) != MT_OK)
			goto out;
	}
	else if ((rc = kernel_input(&c.m, &c.m.src, &c.m.src_k, SCR_BF16, x, &kx, err)) != MT_OK ||
			 (rc = kernel_input(&c.m, &c.m.dst, &c.m.dst_k, SCR_BF16_DY, dy, &kdy, err)) != MT_OK)
		goto out;
	want_dw = p_dnnl_primitive_desc_query_md(c.pd, dnnl_query_diff_weights_md, 0);
	if ((kdw = scratch_get(SCR_DW, p_dnnl_memory_desc_get_size(want_dw))) == NULL)
	{
		rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in a convolution's backward pass");
		goto out;
	}
	if ((st = p_dnnl_memory_create(&c.mem[0], K_SRC(&c.m), engine, (void *) kx)) != dnnl_success ||
		(st = p_dnnl_memory_create(&c.mem[1], K_DST(&c.m), engine, (void *) kdy)) != dnnl_success ||
		(st = p_dnnl_memory_create(&c.mem[2], want_dw, engine, kdw)) != dnnl_success)
	{
		rc = fail(err, "create memory", st);
		goto out;
	}
	{
		dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, c.mem[0]}, {DNNL_ARG_DIFF_DST, c.mem[1]},
		{DNNL_ARG_DIFF_WEIGHTS, c.mem[2]}};

		if ((st = execute(c.prim, 3, args)) != dnnl_success)
		{
			rc = fail(err, "run a convolution's backward pass", st);
			goto out;
		}
	}
	/* back into the caller's layout (packed or the parameter's own), added to its gradient */
	if (!p_dnnl_memory_desc_equal(want_dw, &c.m.plain_w))
	{
		if ((rc = reorder_scratch(SCR_DW_PLAIN, want_dw, kdw, &c.m.plain_w, &pdw,
								  "in a convolution's backward pass", err)) != MT_OK)
			goto out;
		mt_cpu_accumulate(mt_conv_packed_size(d), pdw, packed_dw);
	}
	else
		mt_cpu_accumulate(mt_conv_packed_size(d), kdw, packed_dw);
	conv_count++;
	if (c.m.wino)
		wino_count++;
out:
	bwd_end(&c);
	return rc;
}

/* Training's forward pass from the parameter's own layout (onednn.h). */
int
mt_onednn_train_forward(const mt_conv_desc *d, int n, int h, int w, const float *x,
						const float *w_oihw, const float *bias, float *y, mt_err *err)
{
	bwd_call	c;
	bwd_mds    *m = &c.m;
	dnnl_convolution_desc_t cd;
	dnnl_memory_desc_t bias_md;
	dnnl_primitive_attr_t attr = NULL;
	const dnnl_memory_desc_t *want_w;
	const void *kw,
			   *kx;
	float	   *ky = y;			/* the kernel's output: y, or Winograd's blocked one */
	dnnl_dims_t bd = {d->cout};
	dnnl_status_t st;
	int			rc;

	memset(&c, 0, sizeof(c));
	if (!mt_onednn_enabled())
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", info);
	if ((rc = train_mds(d, n, h, w, 1, m, err)) != MT_OK)
		goto out;
	if ((st = p_dnnl_memory_desc_init_by_tag(&bias_md, 1, bd, dnnl_f32, dnnl_x)) != dnnl_success)
	{
		rc = fail(err, "describe a convolution", st);
		goto out;
	}
	if (post_ops_attr(d->act, &attr) != dnnl_success)
	{
		rc = mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN cannot fuse this convolution's activation");
		goto out;
	}
	/* Winograd's kernel where it is wanted and oneDNN has one (activation included), else direct */
	train_wino(d, n, m);
	for (;;)
	{
		if (p_dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, K_ALG(m), K_SRC(m),
														 &m->any_w, bias ? &bias_md : NULL,
														 m->wino ? &m->dst_b : &m->dst, m->strides,
														 m->dil, m->pl, m->pr) == dnnl_success &&
			pd_create(&c.pd, &cd, attr, NULL) == dnnl_success)
			break;
		c.pd = NULL;
		if (!m->wino)
		{
			rc = mt_seterr(err, MT_ERR_UNSUPPORTED, "oneDNN has no kernel for this convolution");
			goto out;
		}
		m->wino = 0;
	}
	if ((rc = call_primitive(&c, err)) != MT_OK ||
		(rc = call_weights(&c, w_oihw, &want_w, &kw, err)) != MT_OK ||
		(rc = m->wino ?
		 reorder_scratch(SCR_WINO_SRC, &m->src, x, &m->src_b, &kx, "for a Winograd convolution", err) :
		 kernel_input(m, &m->src, &m->src_k, SCR_BF16, x, &kx, err)) != MT_OK)
		goto out;
	if (m->wino && (ky = scratch_get(SCR_WINO_DST, p_dnnl_memory_desc_get_size(&m->dst_b))) == NULL)
	{
		rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory for a Winograd convolution");
		goto out;
	}
	if ((st = p_dnnl_memory_create(&c.mem[0], K_SRC(m), engine, (void *) kx)) != dnnl_success ||
		(st = p_dnnl_memory_create(&c.mem[1], want_w, engine, (void *) kw)) != dnnl_success ||
		(st = p_dnnl_memory_create(&c.mem[2], m->wino ? &m->dst_b : &m->dst, engine, ky)) != dnnl_success)
	{
		rc = fail(err, "create memory", st);
		goto out;
	}
	{
		dnnl_memory_t bmem = NULL;
		dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, c.mem[0]}, {DNNL_ARG_WEIGHTS, c.mem[1]},
		{DNNL_ARG_DST, c.mem[2]}, {DNNL_ARG_BIAS, NULL}};

		if (bias != NULL &&
			(st = p_dnnl_memory_create(&bmem, &bias_md, engine, (void *) bias)) != dnnl_success)
		{
			rc = fail(err, "create memory", st);
			goto out;
		}
		args[3].memory = bmem;
		st = execute(c.prim, bias != NULL ? 4 : 3, args);
		if (bmem)
			p_dnnl_memory_destroy(bmem);
		if (st != dnnl_success)
		{
			rc = fail(err, "run a convolution", st);
			goto out;
		}
	}
	/* Winograd's blocked output back into the caller's NHWC */
	if (m->wino)
	{
		if ((rc = reorder_to(&m->dst_b, ky, &m->dst, y, err)) != MT_OK)
			goto out;
		wino_count++;
	}
	conv_count++;
out:
	if (attr)
		p_dnnl_primitive_attr_destroy(attr);
	bwd_end(&c);
	return rc;
}

#else							/* built without oneDNN's headers */

static mt_conv_kernels mode = MT_CONV_AUTO;

void
mt_onednn_set_mode(mt_conv_kernels m)
{
	mode = m;
}

mt_conv_kernels
mt_onednn_mode(void)
{
	return mode;
}

int
mt_onednn_enabled(void)
{
	return 0;
}

const char *
mt_onednn_info(void)
{
	return "built without oneDNN (libdnnl-dev): convolutions use im2col + GEMM";
}

void
mt_onednn_set_threads(int n)
{
	(void) n;
}

unsigned long
mt_onednn_conv_count(void)
{
	return 0;
}

unsigned long
mt_onednn_wino_count(void)
{
	return 0;
}

int
mt_onednn_conv2d(const mt_conv_desc *d, int n, int h, int w,
				 const float *x, const float *packed_w, const float *bias,
				 float *y, mt_conv_cache **cache, mt_err *err)
{
	return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", mt_onednn_info());
}

void
mt_conv_cache_free(mt_conv_cache *c)
{
	(void) c;
}

size_t
mt_conv_cache_bytes(const mt_conv_cache *c)
{
	return 0;
}

int
mt_conv_cache_holds_weights(const mt_conv_cache *c)
{
	return 0;
}

int
mt_onednn_train_forward(const mt_conv_desc *d, int n, int h, int w, const float *x,
						const float *w_oihw, const float *bias, float *y, mt_err *err)
{
	return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", mt_onednn_info());
}

void
mt_onednn_release_scratch(void)
{
}

static int
backward_data(const mt_conv_desc *d, int n, int h, int w, const float *dy, const float *packed_w,
			  int oihw, float *dx, int set, mt_err *err)
{
	return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", mt_onednn_info());
}

static int
backward_weight(const mt_conv_desc *d, int n, int h, int w, const float *x, const float *dy,
				int oihw, float *packed_dw, mt_err *err)
{
	return mt_seterr(err, MT_ERR_UNSUPPORTED, "%s", mt_onednn_info());
}
#endif

/* The backward entries, packed (ops.h) or in the parameters' own layout (training). */
int
mt_onednn_conv2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
							   const float *dy, const float *packed_w, float *dx, mt_err *err)
{
	return backward_data(d, n, h, w, dy, packed_w, 0, dx, 0, err);
}

int
mt_onednn_conv2d_backward_weight(const mt_conv_desc *d, int n, int h, int w,
								 const float *x, const float *dy, float *packed_dw, mt_err *err)
{
	return backward_weight(d, n, h, w, x, dy, 0, packed_dw, err);
}

int
mt_onednn_train_backward_data(const mt_conv_desc *d, int n, int h, int w,
							  const float *dy, const float *w_oihw, float *dx, int set,
							  mt_err *err)
{
	return backward_data(d, n, h, w, dy, w_oihw, 1, dx, set, err);
}

int
mt_onednn_train_backward_weight(const mt_conv_desc *d, int n, int h, int w,
								const float *x, const float *dy, float *dw_oihw, mt_err *err)
{
	return backward_weight(d, n, h, w, x, dy, 1, dw_oihw, err);
}
