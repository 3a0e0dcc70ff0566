/*
 * test_threads.c - the engine's thread count (mt_blas_set_threads, which
 * medtl.threads and medtl.worker_threads set) holds for oneDNN's
 * convolutions from the first one made.
 *
 * oneDNN sizes a primitive's work for the OpenMP thread count it sees when
 * the primitive is made and then runs it on that many threads.  The count
 * used to reach OpenMP only when a primitive ran, so the first primitives
 * of a process asked for one thread were made, and ran, on every core:
 * a parallel worker with medtl.worker_threads = 1 used two.  Here, in a
 * fresh process: with one thread, scoring starts no thread (the process's
 * task count, /proc/self/task, is the same before and after); then with two
 * (on a machine with two cores or more) OpenMP's second thread appears,
 * so the count is seen to move.
 *
 * Scoring adapts its thread count to the load (core/adapt.c, under
 * medtl.threads = 0), which is only sound if the count never changes a
 * result: every architecture scores the same bits with 1 and 2 threads,
 * at batch 1 and at an odd batch (random weights; U-Nets per pixel).
 *
 *   make unittest && test/bin/test_threads
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/onednn.h"
#include "core/train.h"
#include "nn/zoo.h"
#include "mt_test.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

/* Threads of this process. */
static int
count_tasks(void)
{
	DIR		   *d = opendir("/proc/self/task");
	struct dirent *e;
	int			n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static int
score(mt_model *m, int s, int n)
{
	float	   *x = malloc(sizeof(float) * n * s * s * 3);
	float	   *y = malloc(sizeof(float) * n * m->num_classes);
	mt_err		err;
	int			rc;

	for (int i = 0; i < n * s * s * 3; i++)
		x[i] = (float) ((i * 7919) % 255) / 255.0f;
	rc = mt_model_forward(m, x, n, s, s, y, NULL, &err);
	CHECK(rc == MT_OK, "forward: %s", err.msg);
	free(x);
	free(y);
	return rc;
}

/* Logits of arch on n images of s x s at 1 and at 2 threads: the same bits. */
static void
same_bits(const char *arch, int s, int n)
{
	mt_err		err;
	mt_model   *m = mt_zoo_build(arch, 3, 0, &err);
	size_t		per,
				nx = (size_t) n * s * s * 3;
	float	   *x,
			   *y[2];
	int			rc[2] = {MT_ERR_INTERNAL, MT_ERR_INTERNAL};
	size_t		differ = 0;

	CHECK(m != NULL, "build %s: %s", arch, err.msg);
	if (m == NULL)
		return;
	CHECK(mt_model_init_all(m, 7, &err) == MT_OK, "init %s: %s", arch, err.msg);
	per = mt_zoo_is_segmentation(arch) ? (size_t) m->num_classes * s * s : (size_t) m->num_classes;
	x = malloc(sizeof(float) * nx);
	y[0] = malloc(sizeof(float) * per * n);
	y[1] = malloc(sizeof(float) * per * n);
	for (size_t i = 0; i < nx; i++)
		x[i] = (float) ((i * 7919) % 251) / 125.0f - 1.0f;
	for (int t = 0; t < 2; t++)
	{
		mt_blas_set_threads(t + 1);
		rc[t] = mt_model_forward(m, x, n, s, s, y[t], NULL, &err);
		CHECK(rc[t] == MT_OK, "%s forward at %d thread(s): %s", arch, t + 1, err.msg);
	}
	if (rc[0] == MT_OK && rc[1] == MT_OK)
	{
		for (size_t i = 0; i < per * n; i++)
			differ += memcmp(&y[0][i], &y[1][i], sizeof(float)) != 0;
		CHECK(differ == 0, "%s at %d x %d, batch %d: %zu of %zu outputs differ between 1 and 2 threads",
			  arch, s, s, n, differ, per * n);
		printf("  %s %dx%d batch %d: %zu outputs, the same bits with 1 and 2 threads\n",
			   arch, s, s, n, per * n);
	}
	free(x);
	free(y[0]);
	free(y[1]);
	mt_model_free(m);
}

/* Every architecture: the same bits with 1 and 2 threads (after the task counts). */
static void
same_bits_all(void)
{
	static const char *const cnn[] = {"mobilenet_v2", "resnet18", "resnet50", "densenet121",
	"efficientnet_b0"};

	if (mt_cpu_count() < 2)
	{
		printf("  one core: the same-bits check needs two\n");
		return;
	}
	for (int i = 0; i < 5; i++)
	{
		same_bits(cnn[i], 224, 1);
		same_bits(cnn[i], 224, 3);
	}
	same_bits("vit_b_16", 224, 1);
	same_bits("vit_b_16", 224, 2);
	same_bits("unet_resnet18", 128, 1);
	same_bits("unet_mobilenet_v2_tconv", 128, 3);
}

int
main(int argc, char **argv)
{
	mt_err		err;
	mt_model   *m;
	int			before,
				after,
				two;

	(void) argc;
	(void) argv;
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("  (no OpenBLAS: %s; reference GEMM)\n", err.msg);
	if (!mt_onednn_enabled() || count_tasks() < 1)
	{
		printf("  task counts skipped: %s\n", count_tasks() < 1 ? "no /proc/self/task" : mt_onednn_info());
		same_bits_all();
		return TEST_SUMMARY("threads");
	}
	mt_blas_set_threads(1);
	m = mt_zoo_build("resnet18", 3, 0, &err);
	CHECK(m != NULL, "build: %s", err.msg);
	if (m == NULL)
		return TEST_SUMMARY("threads");
	CHECK(mt_model_init_all(m, 5, &err) == MT_OK, "init_all: %s", err.msg);

	before = count_tasks();
	score(m, 64, 2);
	score(m, 64, 2);
	after = count_tasks();
	CHECK(after == before, "scoring with 1 thread started %d thread(s) (%d before, %d after)",
		  after - before, before, after);
	printf("  1 thread: %d task(s) before scoring, %d after\n", before, after);

	if (mt_cpu_count() >= 2)
	{
		mt_blas_set_threads(2);
		score(m, 64, 2);
		two = count_tasks();
		CHECK(two > after, "with 2 threads no thread started (%d tasks)", two);
		printf("  2 threads: %d task(s)\n", two);
		/* and back: the primitives made for one thread are used again */
		mt_blas_set_threads(1);
		score(m, 64, 2);
	}
	else
		printf("  one core: the 2-thread half is not run\n");
	mt_model_free(m);
	same_bits_all();
	return TEST_SUMMARY("threads");
}
