/*
 * cuda_model_check - whole-model inference on the CUDA backend against the
 * CPU backend (built by `make -f src/cuda/cuda.mk cuda-model-check`, or
 * `make WITH_CUDA=1 cuda-check`; under the CPU emulation by
 * test/cuda_emu/run.sh).
 *
 * For each architecture: random weights as torchvision initialises them,
 * then random batch-norm statistics and affine parameters (so folding
 * matters), a random batch; the CPU forward pass (mt_model_forward on the
 * host) and the device one (after mt_model_to_device) must agree on logits
 * and pooled features to max|a - b| / max(max|b|, 1e-6) <= 1e-4, b the CPU
 * result.  The device pass runs at the benchmark batch (its first images
 * are the CPU's batch), so large-batch code paths are compared too.
 * The first architecture also goes through the life cycle: a second pass
 * on the kept arena, another batch size, micro-batches, changed weights
 * (re-upload), back to the host, the memory cap (MT_ERR_LIMIT, nothing
 * left allocated, usable afterwards).  At the end all device memory must
 * be freed.  vit_b_16 runs as the CNNs do (its constant initial values
 * made random); at a size other than 224 its position embedding is resized
 * on the device.
 *
 * Then (unless --no-bench) images/s: the device at the benchmark batch
 * (best of a few timed passes, input upload and logits download included)
 * and the CPU at its smaller batch (one timed pass after the compared one).
 *
 * Prints "ok: ..." / "FAIL: ..." per check, a table of relative errors and
 * images/s, last "cuda_model: N passed, M failed"; exits 1 when M > 0.
 * Without a device: checks the refusal (MT_ERR_UNSUPPORTED), prints
 * "no CUDA device: <reason>" and "cuda_model: N passed, 0 failed (skipped:
 * no device)", exits 0.
 *
 *   cuda_model_check [--size S] [--batch B] [--cpu-batch B] [--archs a,b,..]
 *                    [--no-bench] [--seconds T]
 *   defaults: 224, 64, 4, resnet18,resnet34,resnet50,mobilenet_v2,
 *             densenet121,efficientnet_b0, unet_resnet18,
 *             unet_mobilenet_v2,unet_mobilenet_v2_tconv (U-Nets: logits
 *             n x size x size x 3, size a multiple of 32), vit_b_16
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/rng.h"
#include "core/train.h"
#include "cuda/cuda.h"
#include "nn/zoo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOL 1e-4
/* bf16 GEMM operands on the device against the float32 CPU (whole models) */
#define TOL_BF16 5e-2
#define CLASSES 1000

#define SEG_CLASSES 3			/* a U-Net's classes (its logits are n x h x w x 3) */

#define CHECK_TOOL "cuda_model"
#include "cuda_check_common.h"

static void
check(int ok, const char *arch, const char *what)
{
	printf("%s: %s %s\n", ok ? "ok" : "FAIL", arch, what);
	if (ok)
		n_pass++;
	else
		n_fail++;
}

/* One forward pass; prints the error and returns 0 on failure. */
static int
forward(mt_model *m, const float *x, int n, int size, float *logits, float *features,
		const char *what)
{
	mt_err		err;

	mt_clearerr(&err);
	if (mt_model_forward(m, x, n, size, size, logits, features, &err) != MT_OK)
	{
		printf("FAIL: %s %s: %s%s%s\n", m->arch, what, err.msg, err.detail[0] ? " " : "", err.detail);
		n_fail++;
		return 0;
	}
	return 1;
}

typedef struct result
{
	const char *arch;
	double		err_logits,
				err_features,
				err_bf16;
	double		gpu_ips,
				cpu_ips,
				gpu_ips_bf16;
	int			ok;
} result;

/* images/s on the device: best of timed passes (the caller warmed up); NAN on failure */
static double
time_forward(mt_model *m, const float *x, int batch, int size, float *logits, double seconds,
			 const char *what)
{
	double		best = INFINITY;
	double		start = now();

	for (int it = 0; it < 20 && (it < 3 || now() - start < seconds); it++)
	{
		double		s = now();

		if (!forward(m, x, batch, size, logits, NULL, what))
			return NAN;
		if (now() - s < best)
			best = now() - s;
	}
	return batch / best;
}

/* The life cycle of a model on the device (first architecture only). */
static void
lifecycle(mt_model *m, const float *x, int size, int batch, const float *ref_logits,
		  int cpu_batch)
{
	size_t		nl = (size_t) cpu_batch * CLASSES;
	float	   *l1 = xmalloc(sizeof(float) * (size_t) batch * CLASSES);
	float	   *l2 = xmalloc(sizeof(float) * (size_t) batch * CLASSES);
	mt_err		err;
	size_t		used;
	char		what[400];
	int			small = cpu_batch > 1 ? cpu_batch - 1 : 1;

	/* the kept arena: a second pass gives the same numbers */
	if (forward(m, x, cpu_batch, size, l1, NULL, "pass 1") &&
		forward(m, x, cpu_batch, size, l2, NULL, "pass 2"))
		check(memcmp(l1, l2, sizeof(float) * nl) == 0, m->arch,
			  "second pass on the kept device arena is identical");

	/* another batch size re-plans; micro-batches */
	if (forward(m, x, small, size, l1, NULL, "smaller batch"))
	{
		snprintf(what, sizeof(what), "batch %d after batch %d (re-planned arena): rel err %.2e",
				 small, cpu_batch, rel_err(l1, ref_logits, (size_t) small * CLASSES));
		check(rel_err(l1, ref_logits, (size_t) small * CLASSES) <= TOL, m->arch, what);
	}
	m->micro_batch = 1;
	if (forward(m, x, cpu_batch, size, l1, NULL, "micro-batches"))
	{
		snprintf(what, sizeof(what), "micro-batches of 1 on the device: rel err %.2e",
				 rel_err(l1, ref_logits, nl));
		check(rel_err(l1, ref_logits, nl) <= TOL, m->arch, what);
	}
	m->micro_batch = 0;
	check(mt_model_device_bytes(m) > 0 && mt_model_plan_bytes(m) == 0, m->arch,
		  "weights and arena on the device, no host arena");

	/* changed weights: the next pass uploads them again */
	{
		int			hi = mt_model_find_param(m, mt_zoo_head_weight(m->arch));
		mt_param   *p = &m->params[hi];
		float	   *w = xmalloc(sizeof(float) * p->numel);
		float	   *cpu = xmalloc(sizeof(float) * nl);

		for (size_t j = 0; j < p->numel; j++)
			w[j] = p->data[j] * -0.5f;
		mt_clearerr(&err);
		if (mt_model_set_param(m, p->name, 0, p->ndim, p->shape, w, sizeof(float) * p->numel, &err) != MT_OK)
			printf("FAIL: set_param: %s\n", err.msg), n_fail++;
		else if (forward(m, x, cpu_batch, size, l1, NULL, "after changed weights") &&
				 mt_model_to_device(m, NULL, &err) == MT_OK &&
				 forward(m, x, cpu_batch, size, cpu, NULL, "host after changed weights"))
		{
			snprintf(what, sizeof(what), "changed head weights re-uploaded: rel err %.2e",
					 rel_err(l1, cpu, nl));
			check(rel_err(l1, cpu, nl) <= TOL && rel_err(l1, ref_logits, nl) > 1e-2, m->arch, what);
		}
		check(mt_model_device(m) == NULL && mt_model_device_bytes(m) == 0, m->arch,
			  "mt_model_to_device(NULL) releases the device copy");
		/* restore */
		for (size_t j = 0; j < p->numel; j++)
			w[j] *= -2.0f;
		mt_model_set_param(m, p->name, 0, p->ndim, p->shape, w, sizeof(float) * p->numel, &err);
		free(w);
		free(cpu);
	}

	/* the memory cap: refused with MT_ERR_LIMIT, nothing left, usable after */
	used = mt_cuda_mem_used();
	mt_cuda_set_mem_limit(used + 4096);
	mt_clearerr(&err);
	{
		int			rc = mt_model_to_device(m, &mt_cuda_backend, &err);

		snprintf(what, sizeof(what), "to_device over the memory cap: MT_ERR_LIMIT (\"%s\")", err.msg);
		check(rc == MT_ERR_LIMIT && mt_model_device(m) == NULL && mt_cuda_mem_used() == used,
			  m->arch, what);
	}
	/* weights fit, activations do not */
	mt_cuda_set_mem_limit(0);
	mt_clearerr(&err);
	if (mt_model_to_device(m, &mt_cuda_backend, &err) != MT_OK)
		printf("FAIL: %s to_device: %s\n", m->arch, err.msg), n_fail++;
	else
	{
		size_t		with_weights = mt_cuda_mem_used();
		int			rc;

		mt_cuda_set_mem_limit(with_weights + 4096);
		mt_clearerr(&err);
		rc = mt_model_forward(m, x, cpu_batch, size, size, l1, NULL, &err);
		snprintf(what, sizeof(what), "forward over the memory cap: MT_ERR_LIMIT (\"%s\")", err.msg);
		check(rc == MT_ERR_LIMIT && mt_cuda_mem_used() == with_weights, m->arch, what);
		mt_cuda_set_mem_limit(0);
		if (forward(m, x, cpu_batch, size, l1, NULL, "after the cap was lifted"))
		{
			snprintf(what, sizeof(what), "usable after the refusal: rel err %.2e",
					 rel_err(l1, ref_logits, nl));
			check(rel_err(l1, ref_logits, nl) <= TOL, m->arch, what);
		}
	}
	free(l1);
	free(l2);
}

static result
check_arch(const char *arch, int size, int batch, int cpu_batch, int bench, double seconds,
		   int first)
{
	result		r = {arch, NAN, NAN, NAN, NAN, NAN, NAN, 0};
	mt_err		err;
	mt_model   *m;
	mt_rng		rng;
	size_t		xs = (size_t) batch * size * size * 3;
	size_t		per;			/* logits per image */
	float	   *x,
			   *cl,
			   *cf,
			   *gl,
			   *gf;
	int			fails = n_fail;
	int			fd;
	double		t0;
	char		what[400];

	mt_clearerr(&err);
	if ((m = random_model(arch, 42, &err)) == NULL)
	{
		printf("FAIL: %s build: %s\n", arch, err.msg);
		n_fail++;
		return r;
	}
	fd = m->feature_dim;
	per = is_unet(arch) ? (size_t) size * size * SEG_CLASSES : CLASSES;
	x = xmalloc(sizeof(float) * xs);
	cl = xmalloc(sizeof(float) * (size_t) cpu_batch * per);
	cf = xmalloc(sizeof(float) * (size_t) cpu_batch * fd);
	gl = xmalloc(sizeof(float) * (size_t) batch * per);
	gf = xmalloc(sizeof(float) * (size_t) batch * fd);
	mt_rng_seed(&rng, 3, 0);
	for (size_t i = 0; i < xs; i++)
		x[i] = (float) mt_rng_normal(&rng);

	/* the CPU reference on the first cpu_batch images, then one timed pass */
	if (!forward(m, x, cpu_batch, size, cl, cf, "CPU forward"))
		goto out;
	if (bench)
	{
		t0 = now();
		if (!forward(m, x, cpu_batch, size, gl, NULL, "CPU timed forward"))
			goto out;
		r.cpu_ips = cpu_batch / (now() - t0);
	}

	mt_clearerr(&err);
	if (mt_model_to_device(m, &mt_cuda_backend, &err) != MT_OK)
	{
		printf("FAIL: %s to_device: %s%s%s\n", arch, err.msg, err.detail[0] ? " " : "", err.detail);
		n_fail++;
		goto out;
	}
	if (!forward(m, x, batch, size, gl, gf, "device forward"))
		goto out;
	r.err_logits = rel_err(gl, cl, (size_t) cpu_batch * per);
	r.err_features = rel_err(gf, cf, (size_t) cpu_batch * fd);
	snprintf(what, sizeof(what), "logits %dx%d batch %d on the device vs CPU: rel err %.2e",
			 size, size, batch, r.err_logits);
	check(r.err_logits <= TOL, arch, what);
	snprintf(what, sizeof(what), "features (%d) vs CPU: rel err %.2e", fd, r.err_features);
	check(r.err_features <= TOL, arch, what);

	/* the first pass above was the warm-up (arena, cuBLAS heuristics) */
	if (bench && isnan(r.gpu_ips = time_forward(m, x, batch, size, gl, seconds, "device timed forward")))
		goto out;

	/*
	 * bf16 GEMM operands (the engine's precision): the same batch against
	 * the float32 CPU; a result equal to float32's did not take that path
	 */
	mt_set_precision(MT_PREC_BF16);
	if (forward(m, x, batch, size, gl, NULL, "device bf16 forward"))
	{
		r.err_bf16 = rel_err(gl, cl, (size_t) cpu_batch * per);
		snprintf(what, sizeof(what), "bf16 logits on the device vs the float32 CPU: rel err %.2e (<= %.0e, > 1e-6)",
				 r.err_bf16, TOL_BF16);
		check(r.err_bf16 <= TOL_BF16 && r.err_bf16 > 1e-6, arch, what);
		if (bench)
			r.gpu_ips_bf16 = time_forward(m, x, batch, size, gl, seconds, "device timed bf16 forward");
	}
	mt_set_precision(MT_PREC_FP32);
	/* the life cycle assumes classification logits */
	if (first && !is_unet(arch))
		lifecycle(m, x, size, batch, cl, cpu_batch);

out:
	mt_model_free(m);
	free(x);
	free(cl);
	free(cf);
	free(gl);
	free(gf);
	r.ok = n_fail == fails;
	return r;
}

int
main(int argc, char **argv)
{
	const char *archs = "resnet18,resnet34,resnet50,mobilenet_v2,densenet121,efficientnet_b0,"
		"unet_resnet18,unet_mobilenet_v2,unet_mobilenet_v2_tconv,vit_b_16";
	int			size = 224,
				batch = 64,
				cpu_batch = 4,
				bench = 1;
	double		seconds = 3.0;
	mt_err		err;
	char		list[512];
	result		res[16];
	int			nres = 0;

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--no-bench") == 0)
			bench = 0;
		else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
			size = atoi(argv[++i]);
		else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
			batch = atoi(argv[++i]);
		else if (strcmp(argv[i], "--cpu-batch") == 0 && i + 1 < argc)
			cpu_batch = atoi(argv[++i]);
		else if (strcmp(argv[i], "--archs") == 0 && i + 1 < argc)
			archs = argv[++i];
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = atof(argv[++i]);
		else
		{
			fprintf(stderr, "usage: cuda_model_check [--size S] [--batch B] [--cpu-batch B] "
					"[--archs a,b,..] [--no-bench] [--seconds T]\n");
			return 2;
		}
	}
	if (size < 32 || batch < 1 || cpu_batch < 1 || cpu_batch > batch)
	{
		fprintf(stderr, "cuda_model_check: need size >= 32 and 1 <= cpu batch <= batch\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("note: %s (the CPU reference uses the C GEMM)\n", err.msg);

	mt_clearerr(&err);
	if (mt_cuda_available(&err) != MT_OK)
	{
		mt_model   *m = random_model("resnet18", 1, &err);
		mt_err		e2;
		int			rc;

		if (strcmp(err.msg, "no CUDA device") == 0)
			printf("no CUDA device: %s\n", err.detail[0] ? err.detail : err.msg);
		else
			printf("no CUDA device: %s%s%s\n", err.msg, err.detail[0] ? ": " : "", err.detail);
		mt_clearerr(&e2);
		rc = m != NULL ? mt_model_to_device(m, &mt_cuda_backend, &e2) : -1;
		check(rc == MT_ERR_UNSUPPORTED && mt_model_device(m) == NULL, "resnet18",
			  "to_device without a device: MT_ERR_UNSUPPORTED, stays on the host");
		mt_model_free(m);
		printf("cuda_model: %d passed, %d failed (skipped: no device)\n", n_pass, n_fail);
		return n_fail > 0;
	}
	printf("device: %s\n", mt_cuda_device_name());
	printf("CPU reference: %s, %d threads\n", mt_blas_library(), mt_blas_threads());

	snprintf(list, sizeof(list), "%s", archs);
	for (char *save = NULL, *a = strtok_r(list, ",", &save); a != NULL && nres < 16;
		 a = strtok_r(NULL, ",", &save))
	{
		res[nres] = check_arch(a, size, batch, cpu_batch, bench, seconds, nres == 0);
		nres++;
	}

	mt_cuda_shutdown();
	check(mt_cuda_mem_used() == 0, "all models",
		  "freed: no device memory left after mt_model_free and mt_cuda_shutdown");

	printf("\n%-24s %10s %10s %10s %16s %16s %16s\n", "model", "rel err", "rel err", "rel err",
		   "device images/s", "device images/s", "CPU images/s");
	printf("%-24s %10s %10s %10s %16s %16s %16s\n", "", "logits", "features", "bf16", "fp32", "bf16", "fp32");
	for (int i = 0; i < nres; i++)
	{
		char		g[40] = "-",
					gb[40] = "-",
					c[40] = "-";

		if (!isnan(res[i].gpu_ips))
			snprintf(g, sizeof(g), "%.1f (b%d)", res[i].gpu_ips, batch);
		if (!isnan(res[i].gpu_ips_bf16))
			snprintf(gb, sizeof(gb), "%.1f (b%d)", res[i].gpu_ips_bf16, batch);
		if (!isnan(res[i].cpu_ips))
			snprintf(c, sizeof(c), "%.1f (b%d)", res[i].cpu_ips, cpu_batch);
		printf("%-24s %10.2e %10.2e %10.2e %16s %16s %16s%s\n", res[i].arch, res[i].err_logits,
			   res[i].err_features, res[i].err_bf16, g, gb, c, res[i].ok ? "" : "  FAILED");
	}
	if (bench)
		printf("(%dx%d; device: best of timed passes incl. upload/download; bf16: the GEMM operands; "
			   "CPU: one timed pass, %d threads)\n", size, size, mt_blas_threads());
	printf("cuda_model: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail > 0;
}
