/*
 * bench_engine.c - medtl's engine directly, without SQL: images/s of a
 * forward pass for an architecture with random weights (or the shared
 * MobileNetV2), at a batch size and thread count.
 *
 *   make tools && test/bin/bench_engine [arch] [batch] [threads] [seconds]
 *   e.g. test/bin/bench_engine mobilenet_v2 1 2 5
 *
 * MEDTL_CONV_KERNELS=gemm in the environment turns oneDNN off (onednn.h);
 * MEDTL_PADDING_SAME=1 builds the network with TF "SAME" padding, as the
 * shared MobileNetV2 is imported (stride-2 convolutions padded 0 before, 1
 * after).
 * Also prints the convolutions' arithmetic rate (2 x multiply-adds of every
 * convolution per image x images/s).
 *
 *   test/bin/bench_engine sgemm [threads] [seconds]
 *
 * times OpenBLAS sgemm 1024^3 as a reference for the machine's fp32 peak.
 *
 *   test/bin/bench_engine augment [threads] [seconds]
 *
 * times training's batch rendering (mt_augment_batch: 32 images at 224,
 * every augmentation on, as fine_tune's all-layers phase draws them) on one
 * thread and on [threads] (default: every core), and the ratio.
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/onednn.h"
#include "core/pool.h"
#include "core/rng.h"
#include "io/augment.h"
#include "nn/zoo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Multiply-adds x 2 of every convolution of m for one h x w image. */
static double
conv_flops(const mt_model *m, int h, int w)
{
	mt_shape3  *shp = calloc(m->n_nodes, sizeof(mt_shape3));
	size_t		scratch;
	mt_err		err;
	double		f = 0;

	if (shp == NULL || mt_model_shapes(m, h, w, shp, &scratch, &err) != MT_OK)
	{
		free(shp);
		return 0;
	}
	for (int i = 0; i < m->n_nodes; i++)
	{
		const mt_node *nd = &m->nodes[i];

		if (nd->kind == MT_NODE_CONV)
			f += 2.0 * shp[i].h * shp[i].w * nd->cout * nd->kh * nd->kw * (nd->cin / nd->groups);
	}
	free(shp);
	return f;
}

static int
bench_sgemm(int threads, double seconds)
{
	int			n = 1024;
	float	   *a = malloc(sizeof(float) * n * n),
			   *b = malloc(sizeof(float) * n * n),
			   *c = malloc(sizeof(float) * n * n);
	double		t0,
				best = 1e30;
	mt_err		err;

	if (mt_blas_init("auto", &err) != MT_OK)
	{
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	if (threads > 0)
		mt_blas_set_threads(threads);
	for (size_t i = 0; i < (size_t) n * n; i++)
		a[i] = b[i] = (float) (i % 7) * 0.1f;
	t0 = now();
	do
	{
		double		s = now();

		mt_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
		if (now() - s < best)
			best = now() - s;
	} while (now() - t0 < seconds);
	printf("sgemm %d^3 threads %d core %s: %.1f GFLOP/s (best)\n", n, mt_blas_threads(),
		   mt_blas_corename(), 2.0 * n * n * n / best / 1e9);
	free(a);
	free(b);
	free(c);
	return 0;
}

/* Best time of one batch of mt_augment_batch over seconds, on threads threads. */
static double
time_augment(int threads, double seconds, const uint8_t *const *srcs, int n, int size, float *out)
{
	static const float mean[3] = {0.485f, 0.456f, 0.406f};
	static const float stdv[3] = {0.229f, 0.224f, 0.225f};
	mt_augment	aug = {1, 10.0f, 0.2f, 0.2f, 0.8f};	/* fine_tune's phase 2 */
	mt_rng		r;
	double		t0,
				best = 1e30;

	mt_pool_set_threads(threads);
	mt_rng_seed(&r, 1, 1);
	mt_augment_batch(srcs, NULL, n, size, &aug, &r, mean, stdv, out, NULL);
	t0 = now();
	do
	{
		double		s = now();

		mt_augment_batch(srcs, NULL, n, size, &aug, &r, mean, stdv, out, NULL);
		if (now() - s < best)
			best = now() - s;
	} while (now() - t0 < seconds);
	return best;
}

static int
bench_augment(int threads, double seconds)
{
	enum
	{
		N = 32, S = 224
	};
	uint8_t    *img = malloc((size_t) N * S * S * 3);
	float	   *out = malloc(sizeof(float) * N * S * S * 3);
	const uint8_t *srcs[N];
	double		t1,
				tn;

	if (threads <= 0)
		threads = mt_cpu_count();
	for (size_t i = 0; i < (size_t) N * S * S * 3; i++)
		img[i] = (uint8_t) ((i * 2654435761u) >> 13);
	for (int i = 0; i < N; i++)
		srcs[i] = img + (size_t) i * S * S * 3;
	t1 = time_augment(1, seconds, srcs, N, S, out);
	tn = time_augment(threads, seconds, srcs, N, S, out);
	printf("augment %d images %dx%d: 1 thread %.1f ms (%.3f ms an image), %d threads %.1f ms: %.2fx\n",
		   N, S, S, t1 * 1e3, t1 * 1e3 / N, threads, tn * 1e3, t1 / tn);
	free(img);
	free(out);
	return 0;
}

int
main(int argc, char **argv)
{
	const char *arch = argc > 1 ? argv[1] : "mobilenet_v2";
	int			batch = argc > 2 ? atoi(argv[2]) : 1;
	int			threads = argc > 3 ? atoi(argv[3]) : 0;
	double		seconds = argc > 4 ? atof(argv[4]) : 5.0;
	mt_err		err;
	mt_model   *m;
	mt_rng		rng;
	float	   *x,
			   *logits;
	size_t		xs = (size_t) batch * 224 * 224 * 3;
	int			iters = 0;
	double		t0,
				t1,
				best = 1e30;

	if (strcmp(arch, "sgemm") == 0)
		return bench_sgemm(argc > 2 ? atoi(argv[2]) : 0, argc > 3 ? atof(argv[3]) : 3.0);
	if (strcmp(arch, "augment") == 0)
		return bench_augment(argc > 2 ? atoi(argv[2]) : 0, argc > 3 ? atof(argv[3]) : 2.0);
	if (mt_blas_init("auto", &err) != MT_OK)
	{
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	if (threads > 0)
		mt_blas_set_threads(threads);
	fprintf(stderr, "convolutions: %s\n", mt_onednn_info());
	/* A/B switch for the engine's own thread pool (default: as many as OpenBLAS) */
	if (getenv("MEDTL_POOL_THREADS") != NULL)
		mt_pool_set_threads(atoi(getenv("MEDTL_POOL_THREADS")));
	m = mt_zoo_build(arch, 1000, getenv("MEDTL_PADDING_SAME") != NULL, &err);
	if (m == NULL)
	{
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	/* A/B switch: allocate activations on every pass instead of keeping the arena */
	m->no_arena_keep = getenv("MEDTL_NO_ARENA_KEEP") != NULL;
	/* images per inference pass (0: the engine's default) */
	if (getenv("MEDTL_MICRO_BATCH") != NULL)
		m->micro_batch = atoi(getenv("MEDTL_MICRO_BATCH"));
	mt_rng_seed(&rng, 1, 0);
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		float	   *d;
		int			is_var = strstr(p->name, "running_var") != NULL;

		if (p->is_counter)
		{
			int64_t		zero = 0;

			mt_model_set_param(m, p->name, 1, p->ndim, p->shape, &zero, 8, &err);
			continue;
		}
		d = malloc(p->numel * sizeof(float));
		for (size_t j = 0; j < p->numel; j++)
			d[j] = is_var ? 1.0f : (float) (mt_rng_normal(&rng) * 0.05);
		mt_model_set_param(m, p->name, 0, p->ndim, p->shape, d, p->numel * sizeof(float), &err);
		free(d);
	}
	x = malloc(xs * sizeof(float));
	logits = malloc((size_t) batch * 1000 * sizeof(float));
	for (size_t i = 0; i < xs; i++)
		x[i] = (float) mt_rng_normal(&rng);
	if (mt_model_forward(m, x, batch, 224, 224, logits, NULL, &err) != MT_OK)
	{
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	t0 = now();
	do
	{
		double		s = now(),
					e;

		mt_model_forward(m, x, batch, 224, 224, logits, NULL, &err);
		e = now() - s;
		if (e < best)
			best = e;
		iters++;
		t1 = now();
	} while (t1 - t0 < seconds);
	printf("engine %s batch %d threads %d (pool %d) core %s: %.1f images/s (mean), %.1f images/s (best batch), "
		   "convolutions %.2f GFLOP per image, %.1f GFLOP/s (mean)\n",
		   arch, batch, mt_blas_threads(), mt_pool_threads(), mt_blas_corename(),
		   iters * batch / (t1 - t0), batch / best, conv_flops(m, 224, 224) / 1e9,
		   conv_flops(m, 224, 224) * iters * batch / (t1 - t0) / 1e9);
	mt_model_free(m);
	free(x);
	free(logits);
	return 0;
}
