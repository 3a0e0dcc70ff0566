/*
 * cuda_ops_check - op-by-op comparison of the CUDA backend against the CPU
 * backend (built by `make WITH_CUDA=1 cuda-check`, or on a machine without
 * PostgreSQL by `make -f src/cuda/cuda.mk cuda-check`).
 *
 * For every entry of mt_backend and a set of shapes, random inputs go to the
 * CPU backend in host memory and to the CUDA backend in device copies; the
 * outputs must agree to max|a - b| / max(max|b|, 1e-6) <= 1e-4 (fp32, b the
 * CPU result).  Backward entries start from random outputs, so their adding
 * is checked too.  Prints "ok: ..." / "FAIL: ..." per check and last
 * "cuda_ops: N passed, M failed"; exits 1 when M > 0.  Then times a few
 * large convolutions (cudaEvent) and prints GFLOP/s.
 *
 * Without a device it prints "no CUDA device: <reason>" and
 * "cuda_ops: 0 passed, 0 failed (skipped: no device)" and exits 0.
 *
 *   cuda_ops_check [--no-bench]
 */
#include "core/blas.h"
#include "core/ops.h"
#include "cuda/cuda.h"
#include "io/augment.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4
/*
 * bf16 convolutions (the engine's precision at bf16): GEMM operands rounded
 * to 8 bits of mantissa, float32 accumulation, against the float32 CPU
 */
#define TOL_BF16 1e-2

static int	n_pass = 0;
static int	n_fail = 0;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static const mt_backend *CPU = &mt_cpu_backend;
static const mt_backend *GPU = &mt_cuda_backend;

static float
frand(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (float) ((rng_state >> 40) / (double) (1ull << 24)) * 2.0f - 1.0f;
}

static void
die(const char *what, const mt_err *err)
{
	printf("FAIL: %s: %s%s%s\n", what, err->msg, err->detail[0] ? " " : "", err->detail);
	printf("cuda_ops: %d passed, %d failed\n", n_pass, n_fail + 1);
	exit(1);
}

/* host buffer of n random floats in [lo, hi) */
static float *
hrand(size_t n, float lo, float hi)
{
	float	   *p = malloc((n ? n : 1) * sizeof(float));

	if (p == NULL)
	{
		printf("FAIL: host out of memory\n");
		exit(1);
	}
	for (size_t i = 0; i < n; i++)
		p[i] = lo + (frand() * 0.5f + 0.5f) * (hi - lo);
	return p;
}

/* device copy of a host buffer */
static float *
dcopy(const float *h, size_t n)
{
	void	   *d = NULL;
	mt_err		err;

	mt_clearerr(&err);
	if (GPU->mem_alloc(&d, (n ? n : 1) * sizeof(float), &err) != MT_OK)
		die("device allocation", &err);
	if (n > 0 && GPU->upload(d, h, n * sizeof(float), &err) != MT_OK)
		die("upload", &err);
	return d;
}

/*
 * Compare the device result d against the CPU result h within tol; when
 * min_rel > 0 the error must also be at least that (a bf16 result that is
 * bit-for-bit the float32 one did not take the bf16 path).  One ok/FAIL line.
 */
static void
check_tol(const char *what, const float *h, const float *d, size_t n, double tol, double min_rel)
{
	float	   *g = malloc((n ? n : 1) * sizeof(float));
	double		maxdiff = 0.0,
				maxref = 0.0,
				rel;
	size_t		worst = 0;
	mt_err		err;

	mt_clearerr(&err);
	if (GPU->synchronize(&err) != MT_OK)
	{
		printf("FAIL: %s: %s %s\n", what, err.msg, err.detail);
		n_fail++;
		free(g);
		return;
	}
	if (g == NULL || (n > 0 && GPU->download(g, d, n * sizeof(float), &err) != MT_OK))
	{
		printf("FAIL: %s: download: %s %s\n", what, err.msg, err.detail);
		n_fail++;
		free(g);
		return;
	}
	for (size_t i = 0; i < n; i++)
	{
		double		diff = fabs((double) g[i] - h[i]);

		if (!(diff <= maxdiff))	/* NaN counts as worst */
		{
			maxdiff = isnan(diff) ? INFINITY : diff;
			worst = i;
		}
		if (fabs(h[i]) > maxref)
			maxref = fabs(h[i]);
	}
	rel = maxdiff / (maxref > 1e-6 ? maxref : 1e-6);
	if (rel <= tol && rel >= min_rel)
	{
		printf("ok: %s (rel err %.2e, %zu values)\n", what, rel, n);
		n_pass++;
	}
	else if (rel < min_rel)
	{
		printf("FAIL: %s: rel err %.3e < %.0e: the result is the float32 one (%zu values)\n",
			   what, rel, min_rel, n);
		n_fail++;
	}
	else
	{
		printf("FAIL: %s: rel err %.3e > %.0e (at %zu: cuda %.8g cpu %.8g; %zu values)\n",
			   what, rel, tol, worst, n ? g[worst] : 0.0, n ? h[worst] : 0.0, n);
		n_fail++;
	}
	free(g);
}

static void
check(const char *what, const float *h, const float *d, size_t n)
{
	check_tol(what, h, d, n, TOL, 0.0);
}

static const char *
act_name(mt_act a)
{
	return a == MT_ACT_RELU ? "relu" : a == MT_ACT_RELU6 ? "relu6" :
		a == MT_ACT_SILU ? "silu" : a == MT_ACT_SIGMOID ? "sigmoid" : "none";
}

/* ---------------------------------------------------------- convolutions --- */

typedef struct conv_case
{
	const char *name;
	int			n,
				h,
				w,
				cin,
				cout,
				kh,
				kw,
				sh,
				sw,
				dh,
				dw,
				groups,
				pad;			/* symmetric padding, or -1 for TF SAME */
	mt_act		act;
	int			bias;
} conv_case;

/*
 * batching: 0 the default (all images in one im2col + GEMM), 1 one image at
 * a time in the caller's scratch, 3 three images per GEMM (a partial last
 * chunk when n is 4).  bf16: the device runs at the engine's bf16 precision
 * (the CPU reference stays float32); dense convolutions must then differ
 * from float32 and stay within TOL_BF16, depthwise ones (float32 on both
 * precisions) within TOL.
 */
static void
conv_check(const conv_case *cc, int batching, int bf16)
{
	mt_conv_desc d = {.cin = cc->cin, .cout = cc->cout, .kh = cc->kh, .kw = cc->kw,
		.sh = cc->sh, .sw = cc->sw, .dh = cc->dh, .dw = cc->dw, .groups = cc->groups,
	.act = cc->act};
	int			oh,
				ow;
	size_t		nx,
				ny,
				nw,
				ns;
	float	   *x,
			   *wt,
			   *b,
			   *y,
			   *dy,
			   *dx,
			   *dwt,
			   *hs;
	float	   *gx,
			   *gw,
			   *gb,
			   *gy,
			   *gdy,
			   *gdx,
			   *gdw,
			   *gs;
	char		label[256];
	mt_err		err;
	int			rc;
	int			depthwise = cc->groups > 1 && cc->groups == cc->cin && cc->cout == cc->cin;
	double		tol = bf16 && !depthwise ? TOL_BF16 : TOL;
	double		min_rel = bf16 && !depthwise ? 1e-6 : 0.0;

	if (cc->pad < 0)
	{
		mt_same_padding(cc->h, cc->kh, cc->sh, cc->dh, &d.pad_t, &d.pad_b);
		mt_same_padding(cc->w, cc->kw, cc->sw, cc->dw, &d.pad_l, &d.pad_r);
	}
	else
		d.pad_t = d.pad_l = d.pad_b = d.pad_r = cc->pad;
	oh = mt_out_size(cc->h, d.kh, d.sh, d.dh, d.pad_t, d.pad_b);
	ow = mt_out_size(cc->w, d.kw, d.sw, d.dw, d.pad_l, d.pad_r);
	nx = (size_t) cc->n * cc->h * cc->w * cc->cin;
	ny = (size_t) cc->n * oh * ow * cc->cout;
	nw = mt_conv_packed_size(&d);
	ns = mt_conv_scratch_size(&d, cc->h, cc->w);
	snprintf(label, sizeof(label), "%s [n%d %dx%dx%d -> %dx%dx%d k%dx%d s%d d%d g%d pad %d,%d,%d,%d %s%s]%s",
			 cc->name, cc->n, cc->h, cc->w, cc->cin, oh, ow, cc->cout, cc->kh, cc->kw,
			 cc->sh, cc->dh, cc->groups, d.pad_t, d.pad_l, d.pad_b, d.pad_r,
			 act_name(cc->act), cc->bias ? " bias" : "",
			 batching == 1 ? " (per image)" : batching == 3 ? " (3 images per GEMM)" : "");
	if (bf16)
		strncat(label, " bf16", sizeof(label) - strlen(label) - 1);
	if (batching == 0)
		mt_cuda_set_im2col_limit((size_t) 128 << 20);
	else
		mt_cuda_set_im2col_limit((size_t) batching * oh * ow * cc->kh * cc->kw *
								 (cc->cin / cc->groups) * sizeof(float));

	x = hrand(nx, -1, 1);
	wt = hrand(nw, -0.5f, 0.5f);
	b = hrand(cc->cout, -0.5f, 0.5f);
	y = hrand(ny, -1, 1);
	dy = hrand(ny, -1, 1);
	dx = hrand(nx, -1, 1);
	dwt = hrand(nw, -1, 1);
	hs = hrand(ns, 0, 0);
	gx = dcopy(x, nx);
	gw = dcopy(wt, nw);
	gb = dcopy(b, cc->cout);
	gy = dcopy(y, ny);
	gdy = dcopy(dy, ny);
	gdx = dcopy(dx, nx);
	gdw = dcopy(dwt, nw);
	gs = dcopy(hs, ns);

	mt_clearerr(&err);
	if (CPU->conv2d(&d, cc->n, cc->h, cc->w, x, wt, cc->bias ? b : NULL, y, hs, &err) != MT_OK)
		die("cpu conv2d", &err);
	mt_set_precision(bf16 ? MT_PREC_BF16 : MT_PREC_FP32);
	rc = GPU->conv2d(&d, cc->n, cc->h, cc->w, gx, gw, cc->bias ? gb : NULL, gy, gs, &err);
	mt_set_precision(MT_PREC_FP32);
	if (rc != MT_OK)
	{
		printf("FAIL: conv2d %s: %s %s\n", label, err.msg, err.detail);
		n_fail++;
	}
	else
	{
		char		l2[300];

		snprintf(l2, sizeof(l2), "conv2d %s", label);
		check_tol(l2, y, gy, ny, tol, min_rel);
	}

	if (CPU->conv2d_backward_data(&d, cc->n, cc->h, cc->w, dy, wt, dx, hs, &err) != MT_OK)
		die("cpu conv2d_backward_data", &err);
	mt_set_precision(bf16 ? MT_PREC_BF16 : MT_PREC_FP32);
	rc = GPU->conv2d_backward_data(&d, cc->n, cc->h, cc->w, gdy, gw, gdx, gs, &err);
	mt_set_precision(MT_PREC_FP32);
	if (rc != MT_OK)
	{
		printf("FAIL: conv2d_backward_data %s: %s %s\n", label, err.msg, err.detail);
		n_fail++;
	}
	else
	{
		char		l2[300];

		snprintf(l2, sizeof(l2), "conv2d_backward_data %s", label);
		check_tol(l2, dx, gdx, nx, tol, min_rel);
	}

	if (CPU->conv2d_backward_weight(&d, cc->n, cc->h, cc->w, x, dy, dwt, hs, &err) != MT_OK)
		die("cpu conv2d_backward_weight", &err);
	mt_set_precision(bf16 ? MT_PREC_BF16 : MT_PREC_FP32);
	rc = GPU->conv2d_backward_weight(&d, cc->n, cc->h, cc->w, gx, gdy, gdw, gs, &err);
	mt_set_precision(MT_PREC_FP32);
	if (rc != MT_OK)
	{
		printf("FAIL: conv2d_backward_weight %s: %s %s\n", label, err.msg, err.detail);
		n_fail++;
	}
	else
	{
		char		l2[300];

		snprintf(l2, sizeof(l2), "conv2d_backward_weight %s", label);
		check_tol(l2, dwt, gdw, nw, tol, min_rel);
	}

	free(x);
	free(wt);
	free(b);
	free(y);
	free(dy);
	free(dx);
	free(dwt);
	free(hs);
	GPU->mem_free(gx);
	GPU->mem_free(gw);
	GPU->mem_free(gb);
	GPU->mem_free(gy);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
	GPU->mem_free(gdw);
	GPU->mem_free(gs);
	mt_cuda_set_im2col_limit((size_t) 128 << 20);
}

static const conv_case conv_cases[] = {
	/* name        n   h   w  cin cout kh kw sh sw dh dw  g  pad  act  bias */
	{"3x3", 1, 13, 13, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, MT_ACT_RELU, 1},
	{"3x3 s2 odd", 4, 15, 15, 8, 24, 3, 3, 2, 2, 1, 1, 1, 1, MT_ACT_RELU6, 1},
	{"3x3 s2 non-square", 2, 9, 14, 5, 7, 3, 3, 2, 2, 1, 1, 1, 1, MT_ACT_NONE, 0},
	{"7x7 s2 stem", 2, 33, 33, 3, 16, 7, 7, 2, 2, 1, 1, 1, 3, MT_ACT_RELU, 0},
	{"1x1 pointwise", 4, 9, 9, 24, 40, 1, 1, 1, 1, 1, 1, 1, 0, MT_ACT_NONE, 1},
	{"1x1 pointwise relu6", 1, 7, 5, 32, 16, 1, 1, 1, 1, 1, 1, 1, 0, MT_ACT_RELU6, 0},
	{"1x1 s2 downsample", 4, 14, 14, 16, 32, 1, 1, 2, 2, 1, 1, 1, 0, MT_ACT_NONE, 0},
	{"3x3 dilation 2", 2, 17, 17, 8, 8, 3, 3, 1, 1, 2, 2, 1, 2, MT_ACT_RELU, 1},
	{"3x3 groups 4", 4, 11, 11, 16, 32, 3, 3, 1, 1, 1, 1, 4, 1, MT_ACT_RELU, 1},
	{"1x1 groups 2", 2, 6, 6, 8, 12, 1, 1, 1, 1, 1, 1, 2, 0, MT_ACT_NONE, 1},
	{"depthwise 3x3", 4, 14, 14, 32, 32, 3, 3, 1, 1, 1, 1, 32, 1, MT_ACT_RELU6, 1},
	{"depthwise 3x3 s2", 1, 15, 15, 24, 24, 3, 3, 2, 2, 1, 1, 24, 1, MT_ACT_RELU6, 0},
	{"depthwise 3x3 s2 TF SAME", 4, 16, 16, 40, 40, 3, 3, 2, 2, 1, 1, 40, -1, MT_ACT_RELU6, 1},
	{"depthwise 5x5 s2 TF SAME odd", 2, 17, 17, 12, 12, 5, 5, 2, 2, 1, 1, 12, -1, MT_ACT_NONE, 1},
	{"depthwise 3x3 dilation 2", 1, 12, 12, 16, 16, 3, 3, 1, 1, 2, 2, 16, 2, MT_ACT_RELU, 0},
	/* n x oh x ow over 2048: the weight gradient sums several position ranges */
	{"depthwise 3x3 many positions", 8, 40, 40, 16, 16, 3, 3, 1, 1, 1, 1, 16, 1, MT_ACT_RELU6, 1},
	{"3x3 s2 TF SAME", 4, 16, 16, 8, 16, 3, 3, 2, 2, 1, 1, 1, -1, MT_ACT_RELU, 1},
	{"5x5 s1 TF SAME", 1, 11, 11, 6, 10, 5, 5, 1, 1, 1, 1, 1, -1, MT_ACT_NONE, 1},
	{"3x1 pad 1", 2, 10, 9, 4, 6, 3, 1, 1, 1, 1, 1, 1, 1, MT_ACT_NONE, 1},
	{"3x3 big channels", 2, 14, 14, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, MT_ACT_RELU, 1},
	{"1x1 silu (EfficientNet)", 4, 7, 7, 16, 24, 1, 1, 1, 1, 1, 1, 1, 0, MT_ACT_SILU, 1},
	{"depthwise 3x3 silu", 4, 9, 9, 16, 16, 3, 3, 1, 1, 1, 1, 16, 1, MT_ACT_SILU, 1},
	{"3x3 s2 sigmoid", 4, 9, 9, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, MT_ACT_SIGMOID, 1},
};

/* --------------------------------------------------------------- pooling --- */

typedef struct pool_case
{
	const char *name;
	int			n,
				h,
				w,
				c,
				kh,
				kw,
				sh,
				sw,
				pt,
				pl,
				pb,
				pr,
				include_pad;
} pool_case;

static const pool_case pool_cases[] = {
	{"3x3 s2 p1 (resnet)", 4, 16, 16, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1},
	{"3x3 s2 p1 odd", 1, 15, 13, 5, 3, 3, 2, 2, 1, 1, 1, 1, 0},
	{"2x2 s2", 4, 8, 8, 16, 2, 2, 2, 2, 0, 0, 0, 0, 1},
	{"3x3 s1 p1", 2, 9, 9, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1},
	{"3x3 s1 p1 exclude pad", 2, 9, 9, 12, 3, 3, 1, 1, 1, 1, 1, 1, 0},
	{"3x3 s2 TF SAME pad 0,0,1,1", 4, 16, 16, 6, 3, 3, 2, 2, 0, 0, 1, 1, 0},
	{"3x3 s2 TF SAME pad 0,0,1,1 include", 1, 16, 16, 6, 3, 3, 2, 2, 0, 0, 1, 1, 1},
};

static void
pool_check(const pool_case *pc)
{
	mt_pool_desc p = {.kh = pc->kh, .kw = pc->kw, .sh = pc->sh, .sw = pc->sw,
		.pad_t = pc->pt, .pad_l = pc->pl, .pad_b = pc->pb, .pad_r = pc->pr,
	.count_include_pad = pc->include_pad};
	int			oh = mt_out_size(pc->h, pc->kh, pc->sh, 1, pc->pt, pc->pb);
	int			ow = mt_out_size(pc->w, pc->kw, pc->sw, 1, pc->pl, pc->pr);
	size_t		nx = (size_t) pc->n * pc->h * pc->w * pc->c;
	size_t		ny = (size_t) pc->n * oh * ow * pc->c;
	float	   *x = hrand(nx, -1, 1),
			   *y = hrand(ny, -1, 1),
			   *dy = hrand(ny, -1, 1),
			   *dx = hrand(nx, -1, 1);
	float	   *gx = dcopy(x, nx),
			   *gy = dcopy(y, ny),
			   *gdy = dcopy(dy, ny),
			   *gdx = dcopy(dx, nx);
	char		label[300];

	snprintf(label, sizeof(label), "max_pool2d %s [n%d %dx%dx%d -> %dx%d]", pc->name,
			 pc->n, pc->h, pc->w, pc->c, oh, ow);
	CPU->max_pool2d(&p, pc->n, pc->h, pc->w, pc->c, x, y);
	GPU->max_pool2d(&p, pc->n, pc->h, pc->w, pc->c, gx, gy);
	check(label, y, gy, ny);
	snprintf(label, sizeof(label), "max_pool2d_backward %s", pc->name);
	CPU->max_pool2d_backward(&p, pc->n, pc->h, pc->w, pc->c, x, y, dy, dx);
	GPU->max_pool2d_backward(&p, pc->n, pc->h, pc->w, pc->c, gx, gy, gdy, gdx);
	check(label, dx, gdx, nx);

	snprintf(label, sizeof(label), "avg_pool2d %s%s", pc->name,
			 pc->include_pad ? " count_include_pad" : "");
	CPU->avg_pool2d(&p, pc->n, pc->h, pc->w, pc->c, x, y);
	GPU->avg_pool2d(&p, pc->n, pc->h, pc->w, pc->c, gx, gy);
	check(label, y, gy, ny);
	snprintf(label, sizeof(label), "avg_pool2d_backward %s%s", pc->name,
			 pc->include_pad ? " count_include_pad" : "");
	CPU->avg_pool2d_backward(&p, pc->n, pc->h, pc->w, pc->c, dy, dx);
	GPU->avg_pool2d_backward(&p, pc->n, pc->h, pc->w, pc->c, gdy, gdx);
	check(label, dx, gdx, nx);

	free(x);
	free(y);
	free(dy);
	free(dx);
	GPU->mem_free(gx);
	GPU->mem_free(gy);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
}

/* ---------------------------------------------------------------- U-Net --- */

static void
upsample_check(int n, int h, int w, int c, int f)
{
	size_t		nx = (size_t) n * h * w * c,
				ny = nx * f * f;
	float	   *x = hrand(nx, -1, 1),
			   *y = hrand(ny, -1, 1),
			   *dy = hrand(ny, -1, 1),
			   *dx = hrand(nx, -1, 1);
	float	   *gx = dcopy(x, nx),
			   *gy = dcopy(y, ny),
			   *gdy = dcopy(dy, ny),
			   *gdx = dcopy(dx, nx);
	char		label[160];

	snprintf(label, sizeof(label), "upsample_bilinear [n%d %dx%dx%d x%d]", n, h, w, c, f);
	CPU->upsample_bilinear(n, h, w, c, f, x, y);
	GPU->upsample_bilinear(n, h, w, c, f, gx, gy);
	check(label, y, gy, ny);
	/* adds into a random dx */
	snprintf(label, sizeof(label), "upsample_bilinear_backward [n%d %dx%dx%d x%d]", n, h, w, c, f);
	CPU->upsample_bilinear_backward(n, h, w, c, f, dy, dx);
	GPU->upsample_bilinear_backward(n, h, w, c, f, gdy, gdx);
	check(label, dx, gdx, nx);
	free(x);
	free(y);
	free(dy);
	free(dx);
	GPU->mem_free(gx);
	GPU->mem_free(gy);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
}

/*
 * A transposed convolution of cx -> cy channels, kernel k, stride s,
 * padding p (described by the convolution d it transposes: d->cin = cy,
 * d->cout = cx); batching as conv_check.
 */
static void
tconv_check(int n, int h, int w, int cx, int cy, int k, int s, int p, mt_act act,
			int bias, int batching)
{
	mt_conv_desc d = {.cin = cy, .cout = cx, .kh = k, .kw = k, .sh = s, .sw = s, .dh = 1,
	.dw = 1, .groups = 1, .pad_t = p, .pad_l = p, .pad_b = p, .pad_r = p, .act = act};
	int			oh = mt_conv_transpose_out_size(h, k, s, p, p),
				ow = mt_conv_transpose_out_size(w, k, s, p, p);
	size_t		nx = (size_t) n * h * w * cx,
				ny = (size_t) n * oh * ow * cy,
				nw = mt_conv_packed_size(&d),
				ns = mt_conv_scratch_size(&d, oh, ow);
	float	   *x = hrand(nx, -1, 1),
			   *wt = hrand(nw, -0.5f, 0.5f),
			   *b = hrand(cy, -0.5f, 0.5f),
			   *y = hrand(ny, -1, 1),
			   *dy = hrand(ny, -1, 1),
			   *dx = hrand(nx, -1, 1),
			   *dw = hrand(nw, -1, 1),
			   *hs = hrand(ns, 0, 0);
	float	   *gx = dcopy(x, nx),
			   *gw = dcopy(wt, nw),
			   *gb = dcopy(b, cy),
			   *gy = dcopy(y, ny),
			   *gdy = dcopy(dy, ny),
			   *gdx = dcopy(dx, nx),
			   *gdw = dcopy(dw, nw),
			   *gs = dcopy(hs, ns);
	char		label[200],
				l2[260];
	mt_err		err;

	snprintf(label, sizeof(label), "[n%d %dx%dx%d -> %dx%dx%d k%d s%d p%d %s%s]%s", n, h, w, cx,
			 oh, ow, cy, k, s, p, act_name(act), bias ? " bias" : "",
			 batching == 1 ? " (per image)" : batching == 3 ? " (3 images per GEMM)" : "");
	if (batching == 0)
		mt_cuda_set_im2col_limit((size_t) 128 << 20);
	else
		mt_cuda_set_im2col_limit((size_t) batching * h * w * k * k * cy * sizeof(float));
	mt_clearerr(&err);
	if (CPU->conv_transpose2d(&d, n, h, w, x, wt, bias ? b : NULL, y, hs, &err) != MT_OK)
		die("cpu conv_transpose2d", &err);
	snprintf(l2, sizeof(l2), "conv_transpose2d %s", label);
	if (GPU->conv_transpose2d(&d, n, h, w, gx, gw, bias ? gb : NULL, gy, gs, &err) != MT_OK)
		printf("FAIL: %s: %s %s\n", l2, err.msg, err.detail), n_fail++;
	else
		check(l2, y, gy, ny);

	if (CPU->conv_transpose2d_backward_data(&d, n, h, w, dy, wt, dx, hs, &err) != MT_OK)
		die("cpu conv_transpose2d_backward_data", &err);
	snprintf(l2, sizeof(l2), "conv_transpose2d_backward_data %s", label);
	if (GPU->conv_transpose2d_backward_data(&d, n, h, w, gdy, gw, gdx, gs, &err) != MT_OK)
		printf("FAIL: %s: %s %s\n", l2, err.msg, err.detail), n_fail++;
	else
		check(l2, dx, gdx, nx);

	/* the weight gradient: d's backward_weight with dy as its input, x as its output gradient */
	if (CPU->conv2d_backward_weight(&d, n, oh, ow, dy, x, dw, hs, &err) != MT_OK)
		die("cpu conv2d_backward_weight (transposed)", &err);
	snprintf(l2, sizeof(l2), "conv_transpose2d weight gradient %s", label);
	if (GPU->conv2d_backward_weight(&d, n, oh, ow, gdy, gx, gdw, gs, &err) != MT_OK)
		printf("FAIL: %s: %s %s\n", l2, err.msg, err.detail), n_fail++;
	else
		check(l2, dw, gdw, nw);

	free(x);
	free(wt);
	free(b);
	free(y);
	free(dy);
	free(dx);
	free(dw);
	free(hs);
	GPU->mem_free(gx);
	GPU->mem_free(gw);
	GPU->mem_free(gb);
	GPU->mem_free(gy);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
	GPU->mem_free(gdw);
	GPU->mem_free(gs);
	mt_cuda_set_im2col_limit((size_t) 128 << 20);
}

static void
unet_checks(void)
{
	upsample_check(2, 4, 4, 8, 2);
	upsample_check(3, 5, 7, 3, 2);		/* odd sizes */
	upsample_check(1, 3, 5, 5, 3);		/* a factor that is not a power of two */
	upsample_check(2, 7, 7, 16, 4);
	upsample_check(1, 1, 1, 4, 2);		/* one source pixel */
	/* n   h  w  cx cy k  s  p  act          bias batching */
	tconv_check(2, 4, 4, 16, 8, 2, 2, 0, MT_ACT_NONE, 1, 0);	/* the U-Net's k2 s2 */
	tconv_check(4, 5, 7, 8, 6, 2, 2, 0, MT_ACT_RELU, 1, 0);	/* odd sizes */
	tconv_check(4, 5, 7, 8, 6, 2, 2, 0, MT_ACT_RELU, 1, 1);
	tconv_check(4, 5, 7, 8, 6, 2, 2, 0, MT_ACT_RELU, 1, 3);
	tconv_check(3, 6, 5, 12, 10, 3, 2, 1, MT_ACT_NONE, 1, 0);	/* k3 s2 p1 */
	tconv_check(3, 6, 5, 12, 10, 3, 2, 1, MT_ACT_RELU, 0, 1);
	tconv_check(2, 9, 9, 4, 7, 3, 1, 1, MT_ACT_RELU6, 1, 0);	/* k3 s1 p1 */
	tconv_check(2, 6, 6, 8, 5, 1, 1, 0, MT_ACT_NONE, 1, 0);	/* 1x1: one GEMM */
	tconv_check(1, 3, 4, 6, 6, 4, 2, 1, MT_ACT_NONE, 0, 0);	/* k4 s2 p1 */
}

/* ----------------------------------------------------------- the others --- */

static void
global_pool_check(int n, int h, int w, int c)
{
	size_t		nx = (size_t) n * h * w * c,
				ny = (size_t) n * c;
	float	   *x = hrand(nx, -1, 1),
			   *y = hrand(ny, -1, 1),
			   *dy = hrand(ny, -1, 1),
			   *dx = hrand(nx, -1, 1);
	float	   *gx = dcopy(x, nx),
			   *gy = dcopy(y, ny),
			   *gdy = dcopy(dy, ny),
			   *gdx = dcopy(dx, nx);
	char		label[128];

	snprintf(label, sizeof(label), "global_avg_pool [n%d %dx%dx%d]", n, h, w, c);
	CPU->global_avg_pool(n, h, w, c, x, y);
	GPU->global_avg_pool(n, h, w, c, gx, gy);
	check(label, y, gy, ny);
	snprintf(label, sizeof(label), "global_avg_pool_backward [n%d %dx%dx%d]", n, h, w, c);
	CPU->global_avg_pool_backward(n, h, w, c, dy, dx);
	GPU->global_avg_pool_backward(n, h, w, c, gdy, gdx);
	check(label, dx, gdx, nx);
	free(x);
	free(y);
	free(dy);
	free(dx);
	GPU->mem_free(gx);
	GPU->mem_free(gy);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
}

static void
elementwise_checks(size_t rows, int c)
{
	size_t		len = rows * c;
	float	   *x = hrand(len, -8, 8),
			   *x2 = hrand(len, -8, 8),
			   *y = hrand(len, -1, 1),
			   *scale = hrand(c, -2, 2),
			   *shift = hrand(c, -2, 2),
			   *dy = hrand(len, -1, 1),
			   *dx = hrand(len, -1, 1);
	float	   *gx = dcopy(x, len),
			   *gx2 = dcopy(x2, len),
			   *gy = dcopy(y, len),
			   *gscale = dcopy(scale, c),
			   *gshift = dcopy(shift, c),
			   *gdy = dcopy(dy, len),
			   *gdx = dcopy(dx, len);
	char		label[128];

	for (int a = MT_ACT_NONE; a <= MT_ACT_SIGMOID; a++)
	{
		snprintf(label, sizeof(label), "channel_affine %s [%zu x %d]", act_name(a), rows, c);
		CPU->channel_affine(rows, c, x, scale, shift, a, y);
		GPU->channel_affine(rows, c, gx, gscale, gshift, a, gy);
		check(label, y, gy, len);

		snprintf(label, sizeof(label), "act_backward %s [%zu]", act_name(a), len);
		CPU->act_backward(len, y, dy, a, dx);
		GPU->act_backward(len, gy, gdy, a, gdx);
		check(label, dx, gdx, len);

		snprintf(label, sizeof(label), "act_backward_input %s [%zu]", act_name(a), len);
		CPU->act_backward_input(len, x, dy, a, dx);
		GPU->act_backward_input(len, gx, gdy, a, gdx);
		check(label, dx, gdx, len);

		snprintf(label, sizeof(label), "add_act %s [%zu]", act_name(a), len);
		CPU->add_act(len, x, x2, a, y);
		GPU->add_act(len, gx, gx2, a, gy);
		check(label, y, gy, len);

		snprintf(label, sizeof(label), "act %s [%zu]", act_name(a), len);
		CPU->act(len, x2, a, y);
		GPU->act(len, gx2, a, gy);
		check(label, y, gy, len);
	}
	/* in place, dx == dy, as the training code calls it */
	CPU->act_backward(len, x, dy, MT_ACT_RELU, dy);
	GPU->act_backward(len, gx, gdy, MT_ACT_RELU, gdy);
	check("act_backward relu in place", dy, gdy, len);

	snprintf(label, sizeof(label), "accumulate [%zu]", len);
	CPU->accumulate(len, x, dx);
	GPU->accumulate(len, gx, gdx);
	check(label, dx, gdx, len);

	snprintf(label, sizeof(label), "ema_update [%zu]", len);
	CPU->ema_update(len, dx, x, 0.75f, 0.25f);
	GPU->ema_update(len, gdx, gx, 0.75f, 0.25f);
	check(label, dx, gdx, len);

	snprintf(label, sizeof(label), "swap [%zu]", len);
	CPU->swap(len, dx, y);
	GPU->swap(len, gdx, gy);
	check(label, dx, gdx, len);
	check("swap, the other side", y, gy, len);

	free(x);
	free(x2);
	free(y);
	free(scale);
	free(shift);
	free(dy);
	free(dx);
	GPU->mem_free(gx);
	GPU->mem_free(gx2);
	GPU->mem_free(gy);
	GPU->mem_free(gscale);
	GPU->mem_free(gshift);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
}

static void
linear_checks(int n, int in, int out)
{
	float	   *x = hrand((size_t) n * in, -1, 1),
			   *w = hrand((size_t) out * in, -0.5f, 0.5f),
			   *b = hrand(out, -1, 1),
			   *y = hrand((size_t) n * out, -1, 1),
			   *dy = hrand((size_t) n * out, -1, 1),
			   *dx = hrand((size_t) n * in, -1, 1),
			   *dw = hrand((size_t) out * in, -1, 1),
			   *db = hrand(out, -1, 1);
	float	   *gx = dcopy(x, (size_t) n * in),
			   *gw = dcopy(w, (size_t) out * in),
			   *gb = dcopy(b, out),
			   *gy = dcopy(y, (size_t) n * out),
			   *gdy = dcopy(dy, (size_t) n * out),
			   *gdx = dcopy(dx, (size_t) n * in),
			   *gdw = dcopy(dw, (size_t) out * in),
			   *gdb = dcopy(db, out);
	char		label[128];

	snprintf(label, sizeof(label), "linear bias [n%d %d -> %d]", n, in, out);
	CPU->linear(n, in, out, x, w, b, y);
	GPU->linear(n, in, out, gx, gw, gb, gy);
	check(label, y, gy, (size_t) n * out);
	snprintf(label, sizeof(label), "linear no bias [n%d %d -> %d]", n, in, out);
	CPU->linear(n, in, out, x, w, NULL, y);
	GPU->linear(n, in, out, gx, gw, NULL, gy);
	check(label, y, gy, (size_t) n * out);

	snprintf(label, sizeof(label), "softmax [n%d c%d]", n, out);
	CPU->softmax(n, out, y, dy);
	GPU->softmax(n, out, gy, gdy);
	check(label, dy, gdy, (size_t) n * out);

	CPU->linear_backward(n, in, out, x, w, y, dx, dw, db);
	GPU->linear_backward(n, in, out, gx, gw, gy, gdx, gdw, gdb);
	snprintf(label, sizeof(label), "linear_backward dx [n%d %d -> %d]", n, in, out);
	check(label, dx, gdx, (size_t) n * in);
	snprintf(label, sizeof(label), "linear_backward dw [n%d %d -> %d]", n, in, out);
	check(label, dw, gdw, (size_t) out * in);
	snprintf(label, sizeof(label), "linear_backward db [n%d %d -> %d]", n, in, out);
	check(label, db, gdb, out);
	/* dx and db NULL: only dw */
	CPU->linear_backward(n, in, out, x, w, y, NULL, dw, NULL);
	GPU->linear_backward(n, in, out, gx, gw, gy, NULL, gdw, NULL);
	snprintf(label, sizeof(label), "linear_backward dw only [n%d %d -> %d]", n, in, out);
	check(label, dw, gdw, (size_t) out * in);

	free(x);
	free(w);
	free(b);
	free(y);
	free(dy);
	free(dx);
	free(dw);
	free(db);
	GPU->mem_free(gx);
	GPU->mem_free(gw);
	GPU->mem_free(gb);
	GPU->mem_free(gy);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
	GPU->mem_free(gdw);
	GPU->mem_free(gdb);
}

static void
channel_checks(size_t rows, int c)
{
	size_t		len = rows * c;
	float	   *x = hrand(len, -3, 5),
			   *dy = hrand(len, -1, 1),
			   *dx = hrand(len, -1, 1),
			   *mean = hrand(c, 0, 0),
			   *var = hrand(c, 0, 0),
			   *invstd = hrand(c, 0, 0),
			   *gamma = hrand(c, 0.5f, 1.5f),
			   *dg = hrand(c, -1, 1),
			   *dbeta = hrand(c, -1, 1),
			   *db = hrand(c, -1, 1);
	float	   *gx = dcopy(x, len),
			   *gdy = dcopy(dy, len),
			   *gdx = dcopy(dx, len),
			   *gmean = dcopy(mean, c),
			   *gvar = dcopy(var, c),
			   *ginvstd,
			   *ggamma = dcopy(gamma, c),
			   *gdg = dcopy(dg, c),
			   *gdbeta = dcopy(dbeta, c),
			   *gdb = dcopy(db, c);
	char		label[128];

	snprintf(label, sizeof(label), "bias_backward [%zu x %d]", rows, c);
	CPU->bias_backward(rows, c, dy, db);
	GPU->bias_backward(rows, c, gdy, gdb);
	check(label, db, gdb, c);

	CPU->channel_stats(rows, c, x, mean, var);
	GPU->channel_stats(rows, c, gx, gmean, gvar);
	snprintf(label, sizeof(label), "channel_stats mean [%zu x %d]", rows, c);
	check(label, mean, gmean, c);
	snprintf(label, sizeof(label), "channel_stats var [%zu x %d]", rows, c);
	check(label, var, gvar, c);

	/* batch norm backward from the CPU's statistics on both sides */
	for (int j = 0; j < c; j++)
		invstd[j] = 1.0f / sqrtf(var[j] + 1e-5f);
	GPU->upload(gmean, mean, c * sizeof(float), NULL);
	ginvstd = dcopy(invstd, c);
	CPU->batch_norm_backward(rows, c, x, dy, mean, invstd, gamma, dx, dg, dbeta);
	GPU->batch_norm_backward(rows, c, gx, gdy, gmean, ginvstd, ggamma, gdx, gdg, gdbeta);
	snprintf(label, sizeof(label), "batch_norm_backward dx [%zu x %d]", rows, c);
	check(label, dx, gdx, len);
	snprintf(label, sizeof(label), "batch_norm_backward dgamma [%zu x %d]", rows, c);
	check(label, dg, gdg, c);
	snprintf(label, sizeof(label), "batch_norm_backward dbeta [%zu x %d]", rows, c);
	check(label, dbeta, gdbeta, c);
	/* frozen affine: dgamma and dbeta NULL */
	CPU->batch_norm_backward(rows, c, x, dy, mean, invstd, gamma, dx, NULL, NULL);
	GPU->batch_norm_backward(rows, c, gx, gdy, gmean, ginvstd, ggamma, gdx, NULL, NULL);
	snprintf(label, sizeof(label), "batch_norm_backward dx only [%zu x %d]", rows, c);
	check(label, dx, gdx, len);

	free(x);
	free(dy);
	free(dx);
	free(mean);
	free(var);
	free(invstd);
	free(gamma);
	free(dg);
	free(dbeta);
	free(db);
	GPU->mem_free(gx);
	GPU->mem_free(gdy);
	GPU->mem_free(gdx);
	GPU->mem_free(gmean);
	GPU->mem_free(gvar);
	GPU->mem_free(ginvstd);
	GPU->mem_free(ggamma);
	GPU->mem_free(gdg);
	GPU->mem_free(gdbeta);
	GPU->mem_free(gdb);
}

static void
optimizer_checks(size_t len)
{
	float	   *p = hrand(len, -1, 1),
			   *g = hrand(len, -1, 1),
			   *buf = hrand(len, -1, 1),
			   *m2 = hrand(len, 0, 1);
	float	   *gp = dcopy(p, len),
			   *gg = dcopy(g, len),
			   *gbuf = dcopy(buf, len),
			   *gm2 = dcopy(m2, len);
	char		label[160];
	static const struct
	{
		float		momentum,
					wd;
		int			nesterov,
					first;
	}			sgd[] = {
		{0.0f, 0.0f, 0, 1}, {0.9f, 1e-4f, 0, 1}, {0.9f, 1e-4f, 0, 0}, {0.9f, 5e-4f, 1, 0},
	};

	for (size_t i = 0; i < sizeof(sgd) / sizeof(sgd[0]); i++)
	{
		int			mom = sgd[i].momentum != 0.0f;

		CPU->sgd_update(len, p, g, mom ? buf : NULL, 0.1f, sgd[i].momentum, sgd[i].wd,
						sgd[i].nesterov, sgd[i].first);
		GPU->sgd_update(len, gp, gg, mom ? gbuf : NULL, 0.1f, sgd[i].momentum, sgd[i].wd,
						sgd[i].nesterov, sgd[i].first);
		snprintf(label, sizeof(label), "sgd_update p [momentum %g wd %g nesterov %d first %d]",
				 sgd[i].momentum, sgd[i].wd, sgd[i].nesterov, sgd[i].first);
		check(label, p, gp, len);
		if (mom)
		{
			snprintf(label, sizeof(label), "sgd_update buf [momentum %g wd %g nesterov %d first %d]",
					 sgd[i].momentum, sgd[i].wd, sgd[i].nesterov, sgd[i].first);
			check(label, buf, gbuf, len);
		}
	}
	for (int decoupled = 0; decoupled <= 1; decoupled++)
		for (int64_t step = 1; step <= 7; step += 6)
		{
			CPU->adam_update(len, p, g, buf, m2, 1e-3f, 0.9f, 0.999f, 1e-8f,
							 decoupled ? 1e-2f : 1e-4f, decoupled, step);
			GPU->adam_update(len, gp, gg, gbuf, gm2, 1e-3f, 0.9f, 0.999f, 1e-8f,
							 decoupled ? 1e-2f : 1e-4f, decoupled, step);
			snprintf(label, sizeof(label), "adam_update p [decoupled %d step %lld]",
					 decoupled, (long long) step);
			check(label, p, gp, len);
			snprintf(label, sizeof(label), "adam_update m1 [decoupled %d step %lld]",
					 decoupled, (long long) step);
			check(label, buf, gbuf, len);
			snprintf(label, sizeof(label), "adam_update m2 [decoupled %d step %lld]",
					 decoupled, (long long) step);
			check(label, m2, gm2, len);
		}
	free(p);
	free(g);
	free(buf);
	free(m2);
	GPU->mem_free(gp);
	GPU->mem_free(gg);
	GPU->mem_free(gbuf);
	GPU->mem_free(gm2);
}

/* Channel concatenation and scaling (DenseNet, EfficientNet). */
static void
cnn_checks(int n, size_t hw, int ca, int cb)
{
	size_t		rows = (size_t) n * hw;
	int			c = ca + cb;
	size_t		na = rows * ca,
				nb = rows * cb,
				ny = rows * c,
				ns = (size_t) n * c;
	float	   *a = hrand(na, -1, 1),
			   *b = hrand(nb, -1, 1),
			   *y = hrand(ny, -1, 1),
			   *dy = hrand(ny, -1, 1),
			   *da = hrand(na, -1, 1),
			   *db = hrand(nb, -1, 1),
			   *sc = hrand(ns, 0, 1),
			   *dx = hrand(ny, -1, 1),
			   *ds = hrand(ns, -1, 1);
	float	   *ga = dcopy(a, na),
			   *gb = dcopy(b, nb),
			   *gy = dcopy(y, ny),
			   *gdy = dcopy(dy, ny),
			   *gda = dcopy(da, na),
			   *gdb = dcopy(db, nb),
			   *gsc = dcopy(sc, ns),
			   *gdx = dcopy(dx, ny),
			   *gds = dcopy(ds, ns);
	char		label[160];

	snprintf(label, sizeof(label), "concat [%zu x (%d + %d)]", rows, ca, cb);
	CPU->concat(rows, ca, cb, a, b, y);
	GPU->concat(rows, ca, cb, ga, gb, gy);
	check(label, y, gy, ny);
	CPU->concat_backward(rows, ca, cb, dy, da, db);
	GPU->concat_backward(rows, ca, cb, gdy, gda, gdb);
	snprintf(label, sizeof(label), "concat_backward da [%zu x (%d + %d)]", rows, ca, cb);
	check(label, da, gda, na);
	snprintf(label, sizeof(label), "concat_backward db [%zu x (%d + %d)]", rows, ca, cb);
	check(label, db, gdb, nb);
	CPU->concat_backward(rows, ca, cb, dy, NULL, db);
	GPU->concat_backward(rows, ca, cb, gdy, NULL, gdb);
	snprintf(label, sizeof(label), "concat_backward db only [%zu x (%d + %d)]", rows, ca, cb);
	check(label, db, gdb, nb);

	snprintf(label, sizeof(label), "scale_channels [n%d hw%zu c%d]", n, hw, c);
	CPU->scale_channels(n, hw, c, y, sc, dx);
	GPU->scale_channels(n, hw, c, gy, gsc, gdx);
	check(label, dx, gdx, ny);
	CPU->scale_channels_backward(n, hw, c, y, sc, dy, dx, ds);
	GPU->scale_channels_backward(n, hw, c, gy, gsc, gdy, gdx, gds);
	snprintf(label, sizeof(label), "scale_channels_backward dx [n%d hw%zu c%d]", n, hw, c);
	check(label, dx, gdx, ny);
	snprintf(label, sizeof(label), "scale_channels_backward ds [n%d hw%zu c%d]", n, hw, c);
	check(label, ds, gds, ns);

	{
		float	   *h[] = {a, b, y, dy, da, db, sc, dx, ds};
		float	   *g[] = {ga, gb, gy, gdy, gda, gdb, gsc, gdx, gds};

		for (size_t i = 0; i < sizeof(h) / sizeof(h[0]); i++)
		{
			free(h[i]);
			GPU->mem_free(g[i]);
		}
	}
}

/* The transformer (ViT) entries. */
static void
transformer_checks(size_t rows, int c, int n, int t, int d, int heads)
{
	size_t		len = rows * c;
	float	   *x = hrand(len, -3, 3),
			   *gamma = hrand(c, 0.5f, 1.5f),
			   *beta = hrand(c, -1, 1),
			   *y = hrand(len, -1, 1),
			   *dy = hrand(len, -1, 1),
			   *dx = hrand(len, -1, 1),
			   *dg = hrand(c, -1, 1),
			   *db = hrand(c, -1, 1);
	float	   *gx = dcopy(x, len),
			   *ggamma = dcopy(gamma, c),
			   *gbeta = dcopy(beta, c),
			   *gy = dcopy(y, len),
			   *gdy = dcopy(dy, len),
			   *gdx = dcopy(dx, len),
			   *gdg = dcopy(dg, c),
			   *gdb = dcopy(db, c);
	size_t		nq = (size_t) n * t * 3 * d,
				ny = (size_t) n * t * d;
	int			p = t - 1;
	size_t		ntok = (size_t) n * t * d,
				npat = (size_t) n * p * d;
	float	   *qkv = hrand(nq, -2, 2),
			   *ay = hrand(ny, -1, 1),
			   *ady = hrand(ny, -1, 1),
			   *dqkv = hrand(nq, -1, 1),
			   *pat = hrand(npat, -1, 1),
			   *cls = hrand(d, -1, 1),
			   *pos = hrand((size_t) t * d, -1, 1),
			   *tok = hrand(ntok, -1, 1),
			   *dpat = hrand(npat, -1, 1),
			   *dcls = hrand(d, -1, 1),
			   *dpos = hrand((size_t) t * d, -1, 1);
	float	   *gqkv = dcopy(qkv, nq),
			   *gay = dcopy(ay, ny),
			   *gady = dcopy(ady, ny),
			   *gdqkv = dcopy(dqkv, nq),
			   *gpat = dcopy(pat, npat),
			   *gcls = dcopy(cls, d),
			   *gpos = dcopy(pos, (size_t) t * d),
			   *gtok = dcopy(tok, ntok),
			   *gdpat = dcopy(dpat, npat),
			   *gdcls = dcopy(dcls, d),
			   *gdpos = dcopy(dpos, (size_t) t * d);
	char		label[160];
	mt_err		err;

	snprintf(label, sizeof(label), "layer_norm [%zu x %d]", rows, c);
	CPU->layer_norm(rows, c, x, gamma, beta, 1e-6f, y);
	GPU->layer_norm(rows, c, gx, ggamma, gbeta, 1e-6f, gy);
	check(label, y, gy, len);
	CPU->layer_norm_backward(rows, c, x, dy, gamma, 1e-6f, dx, dg, db);
	GPU->layer_norm_backward(rows, c, gx, gdy, ggamma, 1e-6f, gdx, gdg, gdb);
	snprintf(label, sizeof(label), "layer_norm_backward dx [%zu x %d]", rows, c);
	check(label, dx, gdx, len);
	snprintf(label, sizeof(label), "layer_norm_backward dgamma [%zu x %d]", rows, c);
	check(label, dg, gdg, c);
	snprintf(label, sizeof(label), "layer_norm_backward dbeta [%zu x %d]", rows, c);
	check(label, db, gdb, c);
	CPU->layer_norm_backward(rows, c, x, dy, gamma, 1e-6f, NULL, dg, NULL);
	GPU->layer_norm_backward(rows, c, gx, gdy, ggamma, 1e-6f, NULL, gdg, NULL);
	snprintf(label, sizeof(label), "layer_norm_backward dgamma only [%zu x %d]", rows, c);
	check(label, dg, gdg, c);

	snprintf(label, sizeof(label), "gelu [%zu]", len);
	CPU->gelu(len, x, y);
	GPU->gelu(len, gx, gy);
	check(label, y, gy, len);
	snprintf(label, sizeof(label), "gelu_backward [%zu]", len);
	CPU->gelu_backward(len, x, dy, dx);
	GPU->gelu_backward(len, gx, gdy, gdx);
	check(label, dx, gdx, len);

	snprintf(label, sizeof(label), "vit_tokens [n%d p%d d%d]", n, p, d);
	CPU->vit_tokens(n, p, d, pat, cls, pos, tok);
	GPU->vit_tokens(n, p, d, gpat, gcls, gpos, gtok);
	check(label, tok, gtok, ntok);
	CPU->vit_tokens_backward(n, p, d, tok, dpat, dcls, dpos);
	GPU->vit_tokens_backward(n, p, d, gtok, gdpat, gdcls, gdpos);
	snprintf(label, sizeof(label), "vit_tokens_backward dpatches [n%d p%d d%d]", n, p, d);
	check(label, dpat, gdpat, npat);
	snprintf(label, sizeof(label), "vit_tokens_backward dcls [n%d p%d d%d]", n, p, d);
	check(label, dcls, gdcls, d);
	snprintf(label, sizeof(label), "vit_tokens_backward dpos [n%d p%d d%d]", n, p, d);
	check(label, dpos, gdpos, (size_t) t * d);

	/* class token (row 0 of each sequence) and back, on the token buffers */
	snprintf(label, sizeof(label), "class_token [n%d t%d d%d]", n, t, d);
	CPU->class_token(n, t, d, tok, ay);
	GPU->class_token(n, t, d, gtok, gay);
	check(label, ay, gay, (size_t) n * d);
	snprintf(label, sizeof(label), "class_token_backward [n%d t%d d%d]", n, t, d);
	CPU->class_token_backward(n, t, d, ay, tok);
	GPU->class_token_backward(n, t, d, gay, gtok);
	check(label, tok, gtok, ntok);
	/* the generic GEMM, both transposes (the position resize's R pos and R^T dpos) */
	snprintf(label, sizeof(label), "gemm [%d x %d x %d]", t, d, p);
	CPU->gemm(0, 0, t, d, p, 1.0f, tok, p, pat, d, 0.0f, pos, d);
	GPU->gemm(0, 0, t, d, p, 1.0f, gtok, p, gpat, d, 0.0f, gpos, d);
	check(label, pos, gpos, (size_t) t * d);
	snprintf(label, sizeof(label), "gemm transposed, accumulating [%d x %d x %d]", p, d, t);
	CPU->gemm(1, 0, p, d, t, 0.5f, tok, p, pos, d, 1.0f, pat, d);
	GPU->gemm(1, 0, p, d, t, 0.5f, gtok, p, gpos, d, 1.0f, gpat, d);
	check(label, pat, gpat, (size_t) p * d);

	mt_clearerr(&err);
	snprintf(label, sizeof(label), "attention [n%d t%d d%d heads %d]", n, t, d, heads);
	if (CPU->attention(n, t, d, heads, qkv, ay, &err) != MT_OK)
		die("cpu attention", &err);
	if (GPU->attention(n, t, d, heads, gqkv, gay, &err) != MT_OK)
	{
		printf("FAIL: %s: %s %s\n", label, err.msg, err.detail);
		n_fail++;
	}
	else
		check(label, ay, gay, ny);
	snprintf(label, sizeof(label), "attention_backward [n%d t%d d%d heads %d]", n, t, d, heads);
	if (CPU->attention_backward(n, t, d, heads, qkv, ady, dqkv, &err) != MT_OK)
		die("cpu attention_backward", &err);
	if (GPU->attention_backward(n, t, d, heads, gqkv, gady, gdqkv, &err) != MT_OK)
	{
		printf("FAIL: %s: %s %s\n", label, err.msg, err.detail);
		n_fail++;
	}
	else
		check(label, dqkv, gdqkv, nq);
	/* a head count that does not divide d is refused, as on the CPU */
	if (GPU->attention(n, t, d, d + 1, gqkv, gay, &err) == MT_ERR_INVALID)
	{
		printf("ok: attention refuses %d heads for %d channels\n", d + 1, d);
		n_pass++;
	}
	else
	{
		printf("FAIL: attention accepted %d heads for %d channels\n", d + 1, d);
		n_fail++;
	}

	{
		float	   *h[] = {x, gamma, beta, y, dy, dx, dg, db, qkv, ay, ady, dqkv, pat, cls, pos,
		tok, dpat, dcls, dpos};
		float	   *g[] = {gx, ggamma, gbeta, gy, gdy, gdx, gdg, gdb, gqkv, gay, gady, gdqkv, gpat,
		gcls, gpos, gtok, gdpat, gdcls, gdpos};

		for (size_t i = 0; i < sizeof(h) / sizeof(h[0]); i++)
		{
			free(h[i]);
			GPU->mem_free(g[i]);
		}
	}
}

/* The memory API's error mapping: the cap and a device out-of-memory. */
static void
memory_checks(void)
{
	void	   *p = NULL;
	mt_err		err;
	size_t		used = mt_cuda_mem_used();
	int			rc;

	mt_clearerr(&err);
	mt_cuda_set_mem_limit(used + (1u << 20));
	rc = mt_cuda_alloc(&p, 2u << 20, &err);
	if (rc == MT_ERR_LIMIT && p == NULL)
	{
		printf("ok: allocation over medtl's device memory cap -> MT_ERR_LIMIT (%s)\n", err.msg);
		n_pass++;
	}
	else
	{
		printf("FAIL: allocation over the cap returned %d, not MT_ERR_LIMIT\n", rc);
		n_fail++;
		mt_cuda_free(p);
	}
	mt_cuda_set_mem_limit(0);
	mt_clearerr(&err);
	rc = mt_cuda_alloc(&p, (size_t) 1 << 50, &err);
	if (rc == MT_ERR_NOMEM && p == NULL && mt_cuda_mem_used() == used)
	{
		printf("ok: a 1 PiB device allocation -> MT_ERR_NOMEM (%s)\n", err.msg);
		n_pass++;
	}
	else
	{
		printf("FAIL: a 1 PiB device allocation returned %d (%s), not MT_ERR_NOMEM\n", rc, err.msg);
		n_fail++;
		mt_cuda_free(p);
	}
	/* the backend is still usable afterwards */
	mt_clearerr(&err);
	if (mt_cuda_alloc(&p, 1024, &err) == MT_OK && mt_cuda_synchronize(&err) == MT_OK)
	{
		printf("ok: device usable after the failed allocations\n");
		n_pass++;
	}
	else
	{
		printf("FAIL: device unusable after a failed allocation: %s\n", err.msg);
		n_fail++;
	}
	mt_cuda_free(p);
}

/* --------------------------------------------------------------- timing --- */

static void
bench_conv(const char *name, int n, int h, int w, int cin, int cout, int k, int s)
{
	mt_conv_desc d = {.cin = cin, .cout = cout, .kh = k, .kw = k, .sh = s, .sw = s,
	.dh = 1, .dw = 1, .groups = 1, .pad_t = k / 2, .pad_l = k / 2, .pad_b = k / 2, .pad_r = k / 2};
	int			oh = mt_out_size(h, k, s, 1, k / 2, k / 2);
	int			ow = mt_out_size(w, k, s, 1, k / 2, k / 2);
	size_t		nx = (size_t) n * h * w * cin,
				ny = (size_t) n * oh * ow * cout,
				nw = mt_conv_packed_size(&d),
				ns = mt_conv_scratch_size(&d, h, w);
	void	   *x,
			   *wt,
			   *y,
			   *s_;
	cudaEvent_t e0,
				e1;
	float		ms = 0.0f;
	int			reps = 10;
	mt_err		err;
	double		flop = 2.0 * n * oh * ow * (double) cout * k * k * cin;

	mt_clearerr(&err);
	if (mt_cuda_alloc(&x, nx * 4, &err) || mt_cuda_alloc(&wt, nw * 4, &err) ||
		mt_cuda_alloc(&y, ny * 4, &err) || mt_cuda_alloc(&s_, (ns ? ns : 1) * 4, &err))
	{
		printf("bench %s: %s\n", name, err.msg);
		return;
	}
	mt_cuda_zero(x, nx * 4, &err);
	mt_cuda_zero(wt, nw * 4, &err);
	if (GPU->conv2d(&d, n, h, w, x, wt, NULL, y, s_, &err) != MT_OK)	/* warm-up */
	{
		printf("bench %s: %s\n", name, err.msg);
		return;
	}
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	for (int pass = 0; pass < 3; pass++)
	{
		static const char *const what[] = {"forward", "backward data", "backward weight"};

		/* backward data reads y as dy and adds into x: values do not matter */
		cudaEventRecord(e0, 0);
		for (int i = 0; i < reps; i++)
		{
			if (pass == 0)
				GPU->conv2d(&d, n, h, w, x, wt, NULL, y, s_, &err);
			else if (pass == 1)
				GPU->conv2d_backward_data(&d, n, h, w, y, wt, x, s_, &err);
			else
				GPU->conv2d_backward_weight(&d, n, h, w, x, y, wt, s_, &err);
		}
		cudaEventRecord(e1, 0);
		cudaEventSynchronize(e1);
		cudaEventElapsedTime(&ms, e0, e1);
		if (GPU->synchronize(&err) != MT_OK)
		{
			printf("bench %s: %s\n", name, err.msg);
			break;
		}
		printf("bench: conv2d %-15s %-34s %8.3f ms  %8.1f GFLOP/s\n", what[pass], name,
			   ms / reps, flop / (ms / reps * 1e-3) / 1e9);
	}
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	mt_cuda_free(x);
	mt_cuda_free(wt);
	mt_cuda_free(y);
	mt_cuda_free(s_);
}

/*
 * Training batches rendered on the device (augment_images) against the
 * CPU's renderer: m images of size x size bytes under random draws (crop,
 * flip, rotation, brightness, contrast: the mean gray is summed in another
 * order, so within rounding), under the identity draw, and only
 * normalised (params NULL: bit for bit).
 */
static void
augment_checks(int m, int size)
{
	size_t		px = (size_t) size * size,
				bytes = (size_t) m * px * 3;
	uint8_t    *src = malloc(bytes);
	double	   *par = malloc(sizeof(double) * MT_AUG_PARAMS * m);
	float	   *y = hrand((size_t) m * px * 3, -1, 1),
			   *gy = dcopy(y, (size_t) m * px * 3);
	void	   *gsrc = NULL,
			   *gpar = NULL;
	const float mean[3] = {0.485f, 0.456f, 0.406f},
				std[3] = {0.229f, 0.224f, 0.225f};
	mt_augment	a = {1, 30.0f, 0.3f, 0.3f, 0.5f};
	mt_rng		rng;
	mt_err		err;
	char		label[160];

	for (size_t i = 0; i < bytes; i++)
		src[i] = (uint8_t) ((i * 7919u + (i / 3) * 31u) % 256u);
	mt_clearerr(&err);
	if (GPU->mem_alloc(&gsrc, bytes, &err) != MT_OK ||
		GPU->mem_alloc(&gpar, sizeof(double) * MT_AUG_PARAMS * m, &err) != MT_OK ||
		GPU->upload(gsrc, src, bytes, &err) != MT_OK)
		die("augment setup", &err);
	for (int k = 0; k < 3; k++)
	{
		if (k < 2)
		{
			mt_rng_seed(&rng, 11, 1);
			mt_augment_draw_params(k == 0 ? &a : NULL, m, size, &rng, par);
			if (GPU->upload(gpar, par, sizeof(double) * MT_AUG_PARAMS * m, &err) != MT_OK)
				die("augment upload", &err);
		}
		snprintf(label, sizeof(label), "augment_images %s [%d x %dx%d]",
				 k == 0 ? "random draws" : k == 1 ? "identity draw" : "normalise only", m, size, size);
		if (CPU->augment_images(m, size, src, k < 2 ? par : NULL, mean, std, y, &err) != MT_OK)
			die("cpu augment_images", &err);
		if (GPU->augment_images(m, size, gsrc, k < 2 ? gpar : NULL, mean, std, gy, &err) != MT_OK)
		{
			printf("FAIL: %s: %s %s\n", label, err.msg, err.detail);
			n_fail++;
			continue;
		}
		if (k == 2)
			check_tol(label, y, gy, (size_t) m * px * 3, 0.0, 0.0);
		else
			check_tol(label, y, gy, (size_t) m * px * 3, 1e-6, 0.0);
		/* the masks under the same rows (the first third of the bytes as class indices 0..3) */
		{
			uint8_t    *mk = malloc(px * m),
					   *hm = malloc(px * m),
					   *dm = malloc(px * m);
			void	   *gmk = NULL,
					   *gdm = NULL;
			size_t		differ = 0,
						ignored = 0;

			for (size_t i = 0; i < px * m; i++)
				mk[i] = src[i] % 4;
			if (GPU->mem_alloc(&gmk, px * m, &err) != MT_OK || GPU->mem_alloc(&gdm, px * m, &err) != MT_OK ||
				GPU->upload(gmk, mk, px * m, &err) != MT_OK ||
				CPU->augment_masks(m, size, mk, k < 2 ? par : NULL, hm, &err) != MT_OK ||
				GPU->augment_masks(m, size, gmk, k < 2 ? gpar : NULL, gdm, &err) != MT_OK ||
				GPU->synchronize(&err) != MT_OK || GPU->download(dm, gdm, px * m, &err) != MT_OK)
				die("augment_masks", &err);
			for (size_t i = 0; i < px * m; i++)
			{
				differ += hm[i] != dm[i];
				ignored += hm[i] == 255;
			}
			if (differ == 0 && (k != 0 || ignored > 0) && (k == 0 || ignored == 0))
			{
				printf("ok: augment_masks %s [%d x %dx%d] (bit for bit; %zu pixels outside)\n",
					   k == 0 ? "random draws" : k == 1 ? "identity draw" : "copy", m, size, size, ignored);
				n_pass++;
			}
			else
			{
				printf("FAIL: augment_masks %s [%d x %dx%d]: %zu of %zu differ, %zu outside\n",
					   k == 0 ? "random draws" : k == 1 ? "identity draw" : "copy", m, size, size,
					   differ, px * m, ignored);
				n_fail++;
			}
			GPU->mem_free(gmk);
			GPU->mem_free(gdm);
			free(mk);
			free(hm);
			free(dm);
		}
	}
	free(src);
	free(par);
	free(y);
	GPU->mem_free(gy);
	GPU->mem_free(gsrc);
	GPU->mem_free(gpar);
}


/* device copy of host bytes (as floats' worth of space) */
static void *
dcopy_bytes(const void *h, size_t bytes)
{
	void	   *d = NULL;
	mt_err		err;

	mt_clearerr(&err);
	if (GPU->mem_alloc(&d, bytes ? bytes : 1, &err) != MT_OK)
		die("device allocation", &err);
	if (bytes > 0 && GPU->upload(d, h, bytes, &err) != MT_OK)
		die("upload", &err);
	return d;
}

/* doubles from the device against the CPU's, within tol (relative to the largest) */
static void
check_doubles(const char *what, const double *h, const double *d, size_t n, double tol)
{
	double	   *g = malloc((n ? n : 1) * sizeof(double));
	double		maxdiff = 0.0,
				maxref = 0.0;
	mt_err		err;

	mt_clearerr(&err);
	if (g == NULL || GPU->synchronize(&err) != MT_OK ||
		GPU->download(g, d, n * sizeof(double), &err) != MT_OK)
	{
		printf("FAIL: %s: %s %s\n", what, err.msg, err.detail);
		n_fail++;
		free(g);
		return;
	}
	for (size_t i = 0; i < n; i++)
	{
		double		diff = fabs(g[i] - h[i]);

		if (!(diff <= maxdiff))
			maxdiff = isnan(diff) ? INFINITY : diff;
		if (fabs(h[i]) > maxref)
			maxref = fabs(h[i]);
	}
	if (maxdiff / (maxref > 1e-12 ? maxref : 1e-12) <= tol)
	{
		printf("ok: %s (rel err %.2e, %zu values)\n", what, maxdiff / (maxref > 1e-12 ? maxref : 1e-12), n);
		n_pass++;
	}
	else
	{
		printf("FAIL: %s: rel err %.3e > %.0e (%zu values)\n", what,
			   maxdiff / (maxref > 1e-12 ? maxref : 1e-12), tol, n);
		n_fail++;
	}
	free(g);
}

/*
 * The losses' entries: cross_entropy (plain, class weights with label
 * smoothing, focal) over n rows of c logits, and seg_loss_sums /
 * seg_loss_grad over pixels of c classes with ignored (255) pixels, the
 * gradient from the CPU's own coefficients.
 */
static void
loss_checks(int n, int c, size_t pixels, int sc)
{
	float	   *z = hrand((size_t) n * c, -6, 6),
			   *cw = hrand(c > sc ? c : sc, 0.2f, 2.0f),
			   *dz = hrand((size_t) n * c, -1, 1),
			   *sz = hrand(pixels * sc, -5, 5),
			   *sdz = hrand(pixels * sc, -1, 1);
	int		   *y = malloc(sizeof(int) * n);
	uint8_t    *mask = malloc(pixels ? pixels : 1);
	double	   *rl = malloc(sizeof(double) * n),
			   *sums = malloc(sizeof(double) * MT_SEG_SUMS(sc)),
			   *coef = malloc(sizeof(double) * MT_SEG_COEFS(sc));
	float	   *gz,
			   *gcw,
			   *gdz,
			   *gsz,
			   *gsdz;
	int		   *gy;
	uint8_t    *gmask;
	double	   *grl,
			   *gsums,
			   *gcoef;
	char		label[128];
	mt_err		err;
	float		loss;

	mt_clearerr(&err);
	for (int i = 0; i < n; i++)
		y[i] = (int) ((frand() * 0.5f + 0.5f) * c) % c;
	for (size_t i = 0; i < pixels; i++)
		mask[i] = frand() > 0.8f ? 255 : (uint8_t) ((int) ((frand() * 0.5f + 0.5f) * sc) % sc);
	gz = dcopy(z, (size_t) n * c);
	gcw = dcopy(cw, c > sc ? c : sc);
	gdz = dcopy(dz, (size_t) n * c);
	gy = dcopy_bytes(y, sizeof(int) * n);
	grl = dcopy_bytes(rl, sizeof(double) * n);
	for (int v = 0; v < 3; v++)
	{
		const float *w = v == 1 ? cw : NULL;
		float		gamma = v == 2 ? 2.0f : 0.0f,
					eps = v == 1 ? 0.1f : 0.0f;
		double		norm = 0.0;

		for (int i = 0; i < n; i++)
			norm += w ? w[y[i]] : 1.0;
		if (gamma > 0)
			norm = n;
		if (CPU->cross_entropy(n, c, z, y, w, gamma, eps, norm, rl, dz, &err) != MT_OK ||
			GPU->cross_entropy(n, c, gz, gy, w ? gcw : NULL, gamma, eps, norm, grl, gdz, &err) != MT_OK)
			die("cross_entropy", &err);
		snprintf(label, sizeof(label), "cross_entropy %s [%d x %d]: dlogits",
				 v == 0 ? "plain" : v == 1 ? "weighted, smoothed" : "focal", n, c);
		check(label, dz, gdz, (size_t) n * c);
		snprintf(label, sizeof(label), "cross_entropy %s [%d x %d]: rows' loss",
				 v == 0 ? "plain" : v == 1 ? "weighted, smoothed" : "focal", n, c);
		check_doubles(label, rl, grl, n, 1e-10);
	}

	if (pixels > 0)
	{
		gsz = dcopy(sz, pixels * sc);
		gsdz = dcopy(sdz, pixels * sc);
		gmask = dcopy_bytes(mask, pixels);
		gsums = dcopy_bytes(sums, sizeof(double) * MT_SEG_SUMS(sc));
		gcoef = NULL;
		for (int v = 0; v < 2; v++)
		{
			const float *w = v == 1 ? cw : NULL;

			if (CPU->seg_loss_sums(pixels, sc, sz, mask, w, sums, &err) != MT_OK ||
				GPU->seg_loss_sums(pixels, sc, gsz, gmask, w ? gcw : NULL, gsums, &err) != MT_OK)
				die("seg_loss_sums", &err);
			snprintf(label, sizeof(label), "seg_loss_sums%s [%zu pixels x %d]", v ? " weighted" : "",
					 pixels, sc);
			check_doubles(label, sums, gsums, MT_SEG_SUMS(sc), 1e-9);
			if (mt_seg_loss_finish(sums, sc, 1.0f, 0.5f, &loss, coef, &err) != MT_OK)
				die("mt_seg_loss_finish", &err);
			if (gcoef == NULL)
				gcoef = dcopy_bytes(coef, sizeof(double) * MT_SEG_COEFS(sc));
			else if (GPU->upload(gcoef, coef, sizeof(double) * MT_SEG_COEFS(sc), &err) != MT_OK)
				die("upload", &err);
			if (CPU->seg_loss_grad(pixels, sc, sz, mask, w, coef, sdz, &err) != MT_OK ||
				GPU->seg_loss_grad(pixels, sc, gsz, gmask, w ? gcw : NULL, gcoef, gsdz, &err) != MT_OK)
				die("seg_loss_grad", &err);
			snprintf(label, sizeof(label), "seg_loss_grad%s [%zu pixels x %d]", v ? " weighted" : "",
					 pixels, sc);
			check(label, sdz, gsdz, pixels * sc);
		}
		GPU->mem_free(gsz);
		GPU->mem_free(gsdz);
		GPU->mem_free(gmask);
		GPU->mem_free(gsums);
		GPU->mem_free(gcoef);
	}
	GPU->mem_free(gz);
	GPU->mem_free(gcw);
	GPU->mem_free(gdz);
	GPU->mem_free(gy);
	GPU->mem_free(grl);
	free(z);
	free(cw);
	free(dz);
	free(sz);
	free(sdz);
	free(y);
	free(mask);
	free(rl);
	free(sums);
	free(coef);
}

int
main(int argc, char **argv)
{
	mt_err		err;
	int			bench = 1;

	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--no-bench") == 0)
			bench = 0;
		else
		{
			fprintf(stderr, "usage: cuda_ops_check [--no-bench]\n");
			return 2;
		}
	setvbuf(stdout, NULL, _IOLBF, 0);

	mt_clearerr(&err);
	if (mt_cuda_available(&err) != MT_OK)
	{
		if (strcmp(err.msg, "no CUDA device") == 0)
			printf("no CUDA device: %s\n", err.detail[0] ? err.detail : err.msg);
		else
			printf("no CUDA device: %s%s%s\n", err.msg, err.detail[0] ? ": " : "", err.detail);
		/* every entry point must refuse cleanly too */
		{
			void	   *p = (void *) 1;
			mt_err		e2;

			mt_clearerr(&e2);
			if (mt_cuda_alloc(&p, 16, &e2) == MT_OK || p != NULL)
			{
				printf("FAIL: mt_cuda_alloc succeeded without a device\n");
				printf("cuda_ops: 0 passed, 1 failed\n");
				return 1;
			}
		}
		printf("cuda_ops: 0 passed, 0 failed (skipped: no device)\n");
		return 0;
	}
	printf("device: %s\n", mt_cuda_device_name());
	/* entries the CPU backend has and the CUDA backend does not yet */
	{
		struct
		{
			const char *name;
			int			cpu,
						cuda;
		}			e[] = {
#define ENTRY(f) {#f, CPU->f != NULL, GPU->f != NULL}
			ENTRY(layer_norm), ENTRY(layer_norm_backward), ENTRY(gelu), ENTRY(gelu_backward),
			ENTRY(attention), ENTRY(attention_backward), ENTRY(vit_tokens),
			ENTRY(vit_tokens_backward), ENTRY(concat), ENTRY(concat_backward),
			ENTRY(scale_channels), ENTRY(scale_channels_backward), ENTRY(act_backward_input),
			ENTRY(upsample_bilinear), ENTRY(upsample_bilinear_backward),
			ENTRY(conv_transpose2d), ENTRY(conv_transpose2d_backward_data),
#undef ENTRY
		};

		for (size_t i = 0; i < sizeof(e) / sizeof(e[0]); i++)
			if (e[i].cpu && !e[i].cuda)
				printf("not on CUDA yet (not compared): %s\n", e[i].name);
	}
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("note: %s: %s (set MEDTL_OPENBLAS=/path/libopenblas.so.0); "
			   "the CPU reference uses medtl's portable C GEMM (double accumulation)\n",
			   err.msg, err.detail);
	else
		printf("cpu reference: OpenBLAS %s (%s)\n", mt_blas_library(), mt_blas_corename());

	for (size_t i = 0; i < sizeof(conv_cases) / sizeof(conv_cases[0]); i++)
		conv_check(&conv_cases[i], 0, 0);
	/* bf16 GEMM operands (the tensor cores), batched and one image at a time */
	for (size_t i = 0; i < sizeof(conv_cases) / sizeof(conv_cases[0]); i++)
	{
		conv_check(&conv_cases[i], 0, 1);
		if (conv_cases[i].n == 4 && conv_cases[i].kh > 1)
			conv_check(&conv_cases[i], 1, 1);
	}
	/* the im2col paths again one image at a time and in partial chunks */
	for (size_t i = 0; i < sizeof(conv_cases) / sizeof(conv_cases[0]); i++)
	{
		const conv_case *cc = &conv_cases[i];
		int			dense_gemm = cc->kh == 1 && cc->kw == 1 && cc->sh == 1 && cc->sw == 1 &&
			cc->pad == 0 && cc->groups == 1;
		int			depthwise = cc->groups > 1 && cc->groups == cc->cin && cc->cout == cc->cin;

		if (dense_gemm || depthwise || cc->n == 1)
			continue;
		conv_check(cc, 1, 0);
		if (cc->n == 4)
			conv_check(cc, 3, 0);
	}
	for (size_t i = 0; i < sizeof(pool_cases) / sizeof(pool_cases[0]); i++)
		pool_check(&pool_cases[i]);
	global_pool_check(1, 7, 7, 64);
	global_pool_check(4, 5, 3, 33);
	elementwise_checks(37, 19);
	elementwise_checks(4 * 28 * 28, 64);
	linear_checks(1, 64, 10);
	linear_checks(4, 1280, 1000);
	linear_checks(3, 17, 7);
	channel_checks(4 * 15 * 15, 70);
	channel_checks(7, 3);
	channel_checks(8 * 56 * 56, 64);
	optimizer_checks(10007);
	cnn_checks(4, 49, 32, 16);
	cnn_checks(1, 9, 5, 3);
	augment_checks(3, 40);
	augment_checks(2, 224);
	loss_checks(16, 3, 4 * 40 * 40, 2);
	loss_checks(5, 1000, 2 * 17 * 13, 5);
	transformer_checks(37, 96, 2, 17, 48, 4);
	transformer_checks(5, 33, 1, 5, 8, 2);
	transformer_checks(2 * 50, 64, 2, 50, 64, 4);
	unet_checks();
	memory_checks();

	if (bench)
	{
		bench_conv("3x3 64->64 56x56 n32", 32, 56, 56, 64, 64, 3, 1);
		bench_conv("1x1 256->64 56x56 n32 (one GEMM)", 32, 56, 56, 256, 64, 1, 1);
		bench_conv("7x7 s2 3->64 224x224 n16", 16, 224, 224, 3, 64, 7, 2);
		bench_conv("3x3 256->256 14x14 n64", 64, 14, 14, 256, 256, 3, 1);
	}
	mt_cuda_shutdown();
	printf("cuda_ops: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail > 0 ? 1 : 0;
}
