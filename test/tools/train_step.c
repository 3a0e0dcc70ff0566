/*
 * train_step.c - one training step of a zoo model, for the PyTorch parity
 * test (test/parity_train.py).
 *
 *   train_step ARCH CLASSES WEIGHTS BATCH OUT OPTIM LR FREEZE
 *              [--momentum M] [--wd WD] [--beta1 B1] [--beta2 B2] [--eps E]
 *              [--nesterov] [--bn-train-frozen] [--bn-weights-frozen]
 *              [--ce W] [--dice W] [--dropout P]
 *
 * WEIGHTS is a torchvision state_dict as safetensors; BATCH holds "x"
 * (F32, n x h x w x 3, NHWC) and "labels" (I64, n).  OPTIM is sgd, adam or
 * adamw; FREEZE is what mt_model_freeze takes ("none", "backbone", a stage).
 * Runs forward_train, cross-entropy, backward and one optimizer step, and
 * writes OUT (safetensors): "loss" [1], "logits" [n, classes],
 * "grad.NAME" for every tensor that got a gradient and "NAME" for every
 * tensor (weights and running statistics) after the step.  --dropout P
 * drops the head's input with probability P (mt_model_forward_train's head
 * dropout, masks seeded with 1) and adds "dropout_mask" [n, features], the
 * mask the step used (0 or 1 / (1 - P)), for the oracle to apply.
 *
 * For a segmentation arch (unet_*, test/parity_unet.py) BATCH holds "masks"
 * (I64, n x h x w, 255 = ignore) instead of labels, the loss is
 * mt_loss_segmentation with weights --ce (default 1) and --dice (default
 * 1), "logits" is [n, h, w, classes], and OUT also holds "infer_logits",
 * the inference pass (mt_model_forward, BN folded) before the step.
 * --bn-weights-frozen: after FREEZE, no BN weight trains (so every BN runs
 * on its running statistics; the BN biases still train).
 *
 * MEDTL_DEVICE=cuda in the environment runs the step on the CUDA device
 * (a build with -DMEDTL_CUDA and src/cuda's objects: `make -f
 * src/cuda/cuda.mk test/bin/cuda_train_step`): the model goes to the
 * device after FREEZE, gradients and the updated tensors are brought back
 * to the host before they are written (test/gpu_check.sh runs
 * test/parity_train.py with it).
 *
 *   train_step bench ARCH [H W BATCH THREADS [FREEZE]]
 *
 * times, on random weights, one inference pass of one H x W image (default
 * 256 x 256; weights already folded, best of 3) and training steps (CE + Dice for a U-Net, else CE; SGD) of
 * BATCH (default 8) images on THREADS threads (default 2), with FREEZE
 * (default none; "backbone": the head alone trains, the backbone runs as
 * inference every step), and prints one line: the mean step of the 4
 * after the first (the "(N img/s)" figure, comparable to PyTorch's timed
 * loops), the best one and its split into forward + loss, backward and
 * update.  MT_BENCH_STEPS=N runs N steps instead of 5 (for perf record).
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/pool.h"
#include "core/train.h"
#include "cuda/cuda.h"
#include "io/safetensors.h"
#include "nn/zoo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mt_test.h"

/* Print an error and exit (a test tool, not engine code). */
static void
die(const char *what, const mt_err *err)
{
	fprintf(stderr, "train_step: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
	if (err && err->detail[0])
		fprintf(stderr, "  %s\n", err->detail);
	exit(1);
}

/* Load every tensor of a state_dict file into the model. */
static void
load_weights(mt_model *m, const char *path)
{
	size_t		len;
	uint8_t    *buf = mt_test_read_file(path, &len);
	mt_safetensors st;
	mt_err		err;

	if (buf == NULL)
		die("cannot read weights", NULL);
	if (mt_st_parse(buf, len, &st, &err) != MT_OK)
		die("weights", &err);
	for (int i = 0; i < st.n_tensors; i++)
	{
		const mt_st_tensor *t = &st.tensors[i];

		if (mt_model_set_param(m, t->name, t->dtype == MT_I64, t->ndim, t->shape,
							   buf + t->offset, t->nbytes, &err) != MT_OK)
			die("weights", &err);
	}
	if (mt_model_check_complete(m, &err) != MT_OK)
		die("weights", &err);
	mt_st_free(&st);
	free(buf);
}

/* Seconds of a monotonic clock. */
static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* train_step bench ARCH [H W BATCH THREADS]: see the top of the file. */
static int
bench(int argc, char **argv)
{
	const char *arch = argv[2];
	int			h = argc > 4 ? atoi(argv[3]) : 256,
				w = argc > 4 ? atoi(argv[4]) : 256,
				n = argc > 5 ? atoi(argv[5]) : 8,
				threads = argc > 6 ? atoi(argv[6]) : 2,
				ok,
				seg = mt_zoo_is_segmentation(arch),
				k = 2;
	size_t		hw = (size_t) h * w,
				per = seg ? hw * k : (size_t) k;
	float	   *x,
			   *logits,
			   *dlogits,
				loss;
	uint8_t    *masks;
	int		   *labels;
	double		t_inf = 1e30,
				t_step = 1e30,
				t_fwd = 0,
				t_bwd = 0,
				t_upd = 0,
				t_sum = 0;
	int			n_sum = 0;
	mt_model   *m;
	mt_optim   *o;
	mt_err		err;

	if (mt_blas_init("auto", &err) != MT_OK)
		fprintf(stderr, "train_step: no OpenBLAS (%s), reference GEMM\n", err.msg);
	mt_blas_set_threads(threads);
	const char *freeze = argc > 7 ? argv[7] : "none";
	const char *env_steps = getenv("MT_BENCH_STEPS");
	int			steps = env_steps != NULL && atoi(env_steps) > 0 ? atoi(env_steps) : 5;

	if ((m = mt_zoo_build(arch, k, 0, &err)) == NULL || mt_model_init_all(m, 1, &err) != MT_OK)
		die("build", &err);
	ok = mt_model_freeze(m, freeze, &err) == MT_OK;
	if (!ok)
		die("freeze", &err);
	x = malloc(sizeof(float) * n * hw * 3);
	logits = malloc(sizeof(float) * n * per);
	dlogits = malloc(sizeof(float) * n * per);
	masks = malloc((size_t) n * hw);
	labels = calloc(n, sizeof(int));
	for (size_t i = 0; i < (size_t) n * hw * 3; i++)
		x[i] = (float) ((i * 2654435761u) % 1000) / 500.0f - 1.0f;
	for (size_t i = 0; i < (size_t) n * hw; i++)
		masks[i] = (uint8_t) (((i % w) > (size_t) w / 3) && ((i / w) % h > (size_t) h / 4));
	if ((o = mt_optim_create(m, MT_OPTIM_SGD, 0.9f, 0, 0, 0, 1e-4f, 0, &err)) == NULL)
		die("optimizer", &err);
	/* inference first: an optimizer step makes the next pass re-fold the weights */
	for (int r = 0; r < 4; r++)
	{
		double		t0 = now();

		if (mt_model_forward(m, x, 1, h, w, logits, NULL, &err) != MT_OK)
			die("forward", &err);
		if (r > 0)
			t_inf = fmin(t_inf, now() - t0);
	}
	for (int r = 0; r < steps; r++)
	{
		double		t0 = now(),
					t1,
					t2,
					t3;

		mt_model_zero_grad(m);
		if (mt_model_forward_train(m, x, n, h, w, logits, NULL, &err) != MT_OK)
			die("forward_train", &err);
		if ((seg ? mt_loss_segmentation(logits, masks, n, (int) hw, k, NULL, 1, 1, &loss, dlogits, &err) :
			 mt_loss_cross_entropy(logits, labels, n, k, NULL, 0, 0, &loss, dlogits, &err)) != MT_OK)
			die("loss", &err);
		t1 = now();
		if (mt_model_backward(m, dlogits, &err) != MT_OK)
			die("backward", &err);
		t2 = now();
		if (mt_optim_step(o, m, 0.01f, &err) != MT_OK)
			die("optimizer step", &err);
		t3 = now();
		if (r > 0 || steps == 1)
		{
			/* the mean leaves out the first step (kernels made, buffers faulted in) unless it is the only one */
			t_sum += t3 - t0;
			n_sum++;
		}
		if (t3 - t0 < t_step)
		{
			/* the split of the fastest step: forward + loss, backward, update */
			t_step = t3 - t0;
			t_fwd = t1 - t0;
			t_bwd = t2 - t1;
			t_upd = t3 - t2;
		}
	}
	printf("bench %s: %d threads (pool %d), forward 1x%dx%dx3 %.3f s, train step %dx%dx%dx3 mean %.3f s "
		   "(%.1f img/s) of %d steps (the first left out), best %.3f s (%.1f img/s best), freeze %s; "
		   "the best step's split: forward+loss %.3f s, backward %.3f s, update %.3f s\n",
		   arch, threads, mt_pool_threads(), h, w, t_inf, n, h, w, t_sum / n_sum, n * n_sum / t_sum, n_sum,
		   t_step, n / t_step, freeze, t_fwd, t_bwd, t_upd);
	mt_optim_free(o);
	mt_model_free(m);
	free(x);
	free(logits);
	free(dlogits);
	free(masks);
	free(labels);
	return 0;
}

/* Parse arguments, run one step, write the results. */
int
main(int argc, char **argv)
{
	const char *arch,
			   *optim,
			   *freeze;
	int			classes;
	float		lr,
				momentum = 0,
				wd = 0,
				beta1 = 0.9f,
				beta2 = 0.999f,
				eps = 1e-8f;
	int			nesterov = 0,
				bn_train_frozen = 0,
				bn_weights_frozen = 0,
				seg;
	float		ce_weight = 1.0f,
				dice_weight = 1.0f,
				dropout = 0.0f;
	float	   *drop_mask = NULL;
	mt_rng		drop_rng;
	uint8_t    *masks = NULL;
	float	   *infer = NULL;
	size_t		per = 0;
	mt_model   *m;
	mt_optim   *o;
	mt_optim_kind kind;
	mt_err		err;
	uint8_t    *bbuf;
	size_t		blen;
	mt_safetensors bst;
	const mt_st_tensor *tx,
			   *tl;
	int			n,
				h,
				w;
	float	   *x,
			   *logits,
			   *dlogits,
				loss;
	int		   *labels;
	int			n_out = 0;
	const char **names;
	mt_dtype   *dtypes;
	int		   *ndims;
	int64_t		(*shapes)[MT_ST_MAX_DIMS];
	const void **datas;
	char	  **owned;
	uint8_t    *out;
	size_t		out_len;
	FILE	   *f;
	int			on_device = 0;

	if (argc >= 3 && strcmp(argv[1], "bench") == 0)
		return bench(argc, argv);
	if (argc < 9)
	{
		fprintf(stderr, "usage: train_step ARCH CLASSES WEIGHTS BATCH OUT OPTIM LR FREEZE [options]\n");
		return 2;
	}
	arch = argv[1];
	classes = atoi(argv[2]);
	optim = argv[6];
	lr = strtof(argv[7], NULL);
	freeze = argv[8];
	for (int i = 9; i < argc; i++)
	{
		if (strcmp(argv[i], "--nesterov") == 0)
			nesterov = 1;
		else if (strcmp(argv[i], "--bn-train-frozen") == 0)
			bn_train_frozen = 1;
		else if (strcmp(argv[i], "--bn-weights-frozen") == 0)
			bn_weights_frozen = 1;
		else if (i + 1 < argc && strcmp(argv[i], "--momentum") == 0)
			momentum = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--wd") == 0)
			wd = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--beta1") == 0)
			beta1 = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--beta2") == 0)
			beta2 = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--eps") == 0)
			eps = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--ce") == 0)
			ce_weight = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--dice") == 0)
			dice_weight = strtof(argv[++i], NULL);
		else if (i + 1 < argc && strcmp(argv[i], "--dropout") == 0)
			dropout = strtof(argv[++i], NULL);
		else
		{
			fprintf(stderr, "train_step: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (strcmp(optim, "sgd") == 0)
		kind = MT_OPTIM_SGD;
	else if (strcmp(optim, "adam") == 0)
		kind = MT_OPTIM_ADAM;
	else if (strcmp(optim, "adamw") == 0)
		kind = MT_OPTIM_ADAMW;
	else
		die("optimizer must be sgd, adam or adamw", NULL);

	if (mt_blas_init("auto", &err) != MT_OK)
		fprintf(stderr, "train_step: no OpenBLAS (%s), reference GEMM\n", err.msg);
	if ((m = mt_zoo_build(arch, classes, 0, &err)) == NULL)
		die("build", &err);
	load_weights(m, argv[3]);
	m->bn_train_frozen = bn_train_frozen;
	if (mt_model_freeze(m, freeze, &err) != MT_OK)
		die("freeze", &err);
	if (bn_weights_frozen)
		for (int i = 0; i < m->n_nodes; i++)
			if (m->nodes[i].kind == MT_NODE_BN)
				m->params[m->nodes[i].p_bn_weight].trainable = 0;
	if (getenv("MEDTL_DEVICE") != NULL && strcmp(getenv("MEDTL_DEVICE"), "cuda") == 0)
	{
#ifdef MEDTL_CUDA
		if (mt_model_to_device(m, &mt_cuda_backend, &err) != MT_OK)
			die("to_device", &err);
		on_device = 1;
		fprintf(stderr, "train_step: on %s\n", mt_cuda_device_name());
#else
		die("MEDTL_DEVICE=cuda: this train_step was built without CUDA", NULL);
#endif
	}

	/* the batch */
	if ((bbuf = mt_test_read_file(argv[4], &blen)) == NULL)
		die("cannot read batch", NULL);
	if (mt_st_parse(bbuf, blen, &bst, &err) != MT_OK)
		die("batch", &err);
	seg = mt_zoo_is_segmentation(arch);
	tx = mt_st_find(&bst, "x");
	tl = mt_st_find(&bst, seg ? "masks" : "labels");
	if (tx == NULL || tl == NULL || tx->dtype != MT_F32 || tx->ndim != 4 ||
		tx->shape[3] != 3 || tl->dtype != MT_I64 || tl->shape[0] != tx->shape[0] ||
		tl->ndim != (seg ? 3 : 1) ||
		(seg && (tl->shape[1] != tx->shape[1] || tl->shape[2] != tx->shape[2])))
		die(seg ? "batch needs x (F32 n x h x w x 3) and masks (I64 n x h x w)" :
			"batch needs x (F32 n x h x w x 3) and labels (I64 n)", NULL);
	n = (int) tx->shape[0];
	h = (int) tx->shape[1];
	w = (int) tx->shape[2];
	x = malloc(tx->nbytes);
	memcpy(x, bbuf + tx->offset, tx->nbytes);
	labels = malloc(sizeof(int) * n);
	per = seg ? (size_t) h * w * classes : (size_t) classes;
	if (seg)
	{
		masks = malloc((size_t) n * h * w);
		for (size_t i = 0; i < (size_t) n * h * w; i++)
		{
			int64_t		v;

			memcpy(&v, bbuf + tl->offset + 8 * i, 8);
			masks[i] = (uint8_t) v;
		}
		/* inference first (running statistics), the step's forward after */
		infer = malloc(sizeof(float) * n * per);
		if (mt_model_forward(m, x, n, h, w, infer, NULL, &err) != MT_OK)
			die("forward", &err);
	}
	else
		for (int i = 0; i < n; i++)
		{
			int64_t		v;

			memcpy(&v, bbuf + tl->offset + 8 * i, 8);
			labels[i] = (int) v;
		}
	logits = malloc(sizeof(float) * n * per);
	dlogits = malloc(sizeof(float) * n * per);

	/* one step */
	if ((o = mt_optim_create(m, kind, momentum, beta1, beta2, eps, wd, nesterov, &err)) == NULL)
		die("optimizer", &err);
	mt_model_zero_grad(m);
	m->head_dropout = dropout;
	mt_rng_seed(&m->dropout_rng, 1, 2);
	drop_rng = m->dropout_rng;
	if (mt_model_forward_train(m, x, n, h, w, logits, NULL, &err) != MT_OK)
		die("forward_train", &err);
	if (dropout > 0)
	{
		/* the mask that pass drew, drawn again from the same state */
		mt_rng		after = m->dropout_rng;

		drop_mask = malloc(sizeof(float) * n * m->feature_dim);
		m->dropout_rng = drop_rng;
		mt_dropout_mask(m, n, m->feature_dim, drop_mask);
		m->dropout_rng = after;
	}
	fprintf(stderr, "train_step: %s kept %zu bytes for backward\n", arch, mt_model_train_memory(m));
	if ((seg ? mt_loss_segmentation(logits, masks, n, h * w, classes, NULL, ce_weight, dice_weight,
									&loss, dlogits, &err) :
		 mt_loss_cross_entropy(logits, labels, n, classes, NULL, 0, 0, &loss, dlogits, &err)) != MT_OK)
		die("loss", &err);
	if (mt_model_backward(m, dlogits, &err) != MT_OK)
		die("backward", &err);
	if (on_device && mt_model_sync_to_host(m, &err) != MT_OK)
		die("sync_to_host", &err);

	/* gradients are written before the step changes anything */
	names = calloc(2 * m->n_params + 4, sizeof(char *));
	dtypes = calloc(2 * m->n_params + 4, sizeof(mt_dtype));
	ndims = calloc(2 * m->n_params + 4, sizeof(int));
	shapes = calloc(2 * m->n_params + 4, sizeof(*shapes));
	datas = calloc(2 * m->n_params + 4, sizeof(void *));
	owned = calloc(2 * m->n_params + 4, sizeof(char *));
	names[n_out] = "loss";
	dtypes[n_out] = MT_F32;
	ndims[n_out] = 1;
	shapes[n_out][0] = 1;
	datas[n_out++] = &loss;
	if (drop_mask != NULL)
	{
		names[n_out] = "dropout_mask";
		dtypes[n_out] = MT_F32;
		ndims[n_out] = 2;
		shapes[n_out][0] = n;
		shapes[n_out][1] = m->feature_dim;
		datas[n_out++] = drop_mask;
	}
	for (int k = 0; k < (seg ? 2 : 1); k++)
	{
		names[n_out] = k == 0 ? "logits" : "infer_logits";
		dtypes[n_out] = MT_F32;
		ndims[n_out] = seg ? 4 : 2;
		shapes[n_out][0] = n;
		shapes[n_out][1] = seg ? h : classes;
		shapes[n_out][2] = w;
		shapes[n_out][3] = classes;
		datas[n_out++] = k == 0 ? logits : infer;
	}
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		float	   *copy;

		if (p->grad == NULL)
			continue;
		owned[n_out] = malloc(strlen(p->name) + 6);
		sprintf(owned[n_out], "grad.%s", p->name);
		copy = malloc(p->numel * sizeof(float));
		memcpy(copy, p->grad, p->numel * sizeof(float));
		names[n_out] = owned[n_out];
		dtypes[n_out] = MT_F32;
		ndims[n_out] = p->ndim;
		for (int d = 0; d < p->ndim; d++)
			shapes[n_out][d] = p->shape[d];
		datas[n_out++] = copy;
	}
	if (mt_optim_step(o, m, lr, &err) != MT_OK)
		die("step", &err);
	if (on_device && mt_model_sync_to_host(m, &err) != MT_OK)
		die("sync_to_host", &err);
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];

		if (p->is_counter || p->data == NULL)
			continue;
		names[n_out] = p->name;
		dtypes[n_out] = MT_F32;
		ndims[n_out] = p->ndim;
		for (int d = 0; d < p->ndim; d++)
			shapes[n_out][d] = p->shape[d];
		datas[n_out++] = p->data;
	}
	if (mt_st_serialize(n_out, names, dtypes, ndims, (const int64_t (*)[MT_ST_MAX_DIMS]) shapes,
						datas, 0, NULL, NULL, &out, &out_len, &err) != MT_OK)
		die("serialize", &err);
	if ((f = fopen(argv[5], "wb")) == NULL || fwrite(out, 1, out_len, f) != out_len || fclose(f) != 0)
		die("cannot write output", NULL);

	for (int i = 0; i < n_out; i++)
		if (owned[i] != NULL)
		{
			free(owned[i]);
			free((void *) datas[i]);
		}
	mt_free(out);
	free(owned);
	free(names);
	free(dtypes);
	free(ndims);
	free(shapes);
	free(datas);
	mt_optim_free(o);
	mt_model_free(m);
	mt_st_free(&bst);
	free(bbuf);
	free(x);
	free(labels);
	free(logits);
	free(dlogits);
	free(masks);
	free(infer);
	free(drop_mask);
	return 0;
}
