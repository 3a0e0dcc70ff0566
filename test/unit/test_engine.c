/*
 * test_engine.c - the engine against independent references: BLAS GEMM vs
 * plain loops, every convolution/pooling variant vs a direct NCHW-indexed
 * loop nest, and the pretrained MobileNetV2 vs the logits shipped with it.
 *
 *   make unittest && test/bin/test_engine ../shared
 */
#include "core/blas.h"
#include "core/pool.h"
#include "core/graph.h"
#include "core/onednn.h"
#include "core/train.h"
#include "core/ops.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "nn/zoo.h"
#include "mt_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned rng_state = 12345;

static float
frand(void)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return ((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *
rand_buf(size_t n)
{
	float	   *p = malloc(n * sizeof(float));

	for (size_t i = 0; i < n; i++)
		p[i] = frand();
	return p;
}

static double
max_abs_diff(const float *a, const float *b, size_t n)
{
	double		m = 0;

	for (size_t i = 0; i < n; i++)
	{
		double		d = fabs((double) a[i] - b[i]);

		if (d > m)
			m = d;
	}
	return m;
}

static void
test_gemm(void)
{
	static const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {64, 96, 128}, {300, 17, 211}};

	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
		for (int ta = 0; ta < 2; ta++)
			for (int tb = 0; tb < 2; tb++)
			{
				int			m = shapes[s][0],
							n = shapes[s][1],
							k = shapes[s][2];
				float	   *a = rand_buf((size_t) m * k),
						   *b = rand_buf((size_t) k * n);
				float	   *c1 = rand_buf((size_t) m * n),
						   *c2 = malloc(sizeof(float) * m * n);

				memcpy(c2, c1, sizeof(float) * m * n);
				mt_sgemm(ta, tb, m, n, k, 0.5f, a, ta ? m : k, b, tb ? k : n, 0.25f, c1, n);
				mt_sgemm_ref(ta, tb, m, n, k, 0.5f, a, ta ? m : k, b, tb ? k : n, 0.25f, c2, n);
				CHECK(max_abs_diff(c1, c2, (size_t) m * n) < 1e-4 * (1 + k),
					  "sgemm %dx%dx%d ta=%d tb=%d: diff %g", m, n, k, ta, tb,
					  max_abs_diff(c1, c2, (size_t) m * n));
				free(a);
				free(b);
				free(c1);
				free(c2);
			}
}

/* Direct convolution, reading OIHW weights, writing NHWC, double accumulation. */
static void
conv_ref(const mt_conv_desc *d, int n, int h, int w, const float *x,
		 const float *oihw, const float *bias, float *y)
{
	int			oh = mt_out_size(h, d->kh, d->sh, d->dh, d->pad_t, d->pad_b);
	int			ow = mt_out_size(w, d->kw, d->sw, d->dw, d->pad_l, d->pad_r);
	int			cin_g = d->cin / d->groups,
				cout_g = d->cout / d->groups;

	for (int b = 0; b < n; b++)
		for (int oy = 0; oy < oh; oy++)
			for (int ox = 0; ox < ow; ox++)
				for (int o = 0; o < d->cout; o++)
				{
					int			g = o / cout_g;
					double		s = bias ? bias[o] : 0.0;

					for (int ci = 0; ci < cin_g; ci++)
						for (int ky = 0; ky < d->kh; ky++)
							for (int kx = 0; kx < d->kw; kx++)
							{
								int			iy = oy * d->sh - d->pad_t + ky * d->dh;
								int			ix = ox * d->sw - d->pad_l + kx * d->dw;

								if (iy < 0 || iy >= h || ix < 0 || ix >= w)
									continue;
								s += (double) x[(((size_t) b * h + iy) * w + ix) * d->cin + g * cin_g + ci] *
									oihw[(((size_t) o * cin_g + ci) * d->kh + ky) * d->kw + kx];
							}
					if (d->act == MT_ACT_RELU && s < 0)
						s = 0;
					if (d->act == MT_ACT_RELU6)
						s = s < 0 ? 0 : (s > 6 ? 6 : s);
					if (d->act == MT_ACT_SILU)
						s = s / (1.0 + exp(-s));
					if (d->act == MT_ACT_SIGMOID)
						s = 1.0 / (1.0 + exp(-s));
					y[(((size_t) b * oh + oy) * ow + ox) * d->cout + o] = (float) s;
				}
}

static void
check_conv(const char *what, mt_conv_desc d, int n, int h, int w)
{
	int			oh = mt_out_size(h, d.kh, d.sh, d.dh, d.pad_t, d.pad_b);
	int			ow = mt_out_size(w, d.kw, d.sw, d.dw, d.pad_l, d.pad_r);
	size_t		xs = (size_t) n * h * w * d.cin,
				ys = (size_t) n * oh * ow * d.cout;
	float	   *x = rand_buf(xs),
			   *wt = rand_buf(mt_conv_packed_size(&d)),
			   *bias = rand_buf(d.cout);
	float	   *packed = malloc(sizeof(float) * mt_conv_packed_size(&d));
	float	   *scratch = malloc(sizeof(float) * (mt_conv_scratch_size(&d, h, w) + 1));
	float	   *y1 = malloc(sizeof(float) * ys),
			   *y2 = malloc(sizeof(float) * ys);
	mt_err		err;

	float		tol;

	mt_conv_pack_oihw(&d, wt, packed);
	conv_ref(&d, n, h, w, x, wt, bias, y2);
	/*
	 * float32 sums of K = kh * kw * cin_g terms in some blocked order: the
	 * rounding error grows about as sqrt(K) (1e-4 up to K = 256)
	 */
	tol = 1e-4f * fmaxf(1.0f, sqrtf((float) (d.kh * d.kw * (d.cin / d.groups)) / 256.0f));
	/* im2col + GEMM (conv2d; what training uses) */
	CHECK(mt_cpu_backend.conv2d(&d, n, h, w, x, packed, bias, y1, scratch, &err) == MT_OK,
		  "%s runs", what);
	CHECK(max_abs_diff(y1, y2, ys) < tol, "%s: max diff %g", what, max_abs_diff(y1, y2, ys));
	/*
	 * a prepared model's path (conv2d_cached): oneDNN when it loads, twice
	 * per shape, two shapes; then with medtl.conv_kernels = winograd
	 * (Winograd at batch >= 2 for dense 3x3 stride-1 convolutions of whole
	 * 16-channel blocks), held to the same tolerance
	 */
	for (int mode = 0; mode < 3; mode++)
	{
		static const char *const names[] = {"cached, gemm", "cached, oneDNN", "cached, Winograd"};
		static const mt_conv_kernels modes[] = {MT_CONV_GEMM, MT_CONV_AUTO, MT_CONV_WINOGRAD};
		const char *kernels = names[mode];
		struct mt_conv_cache *cache = NULL;
		unsigned long before = mt_onednn_conv_count(),
					wino_before = mt_onednn_wino_count();
		int			wino = mode == 2 && n >= 2 && d.groups == 1 && d.kh == 3 && d.kw == 3 &&
			d.sh == 1 && d.sw == 1 && d.dh == 1 && d.dw == 1 && d.cin % 16 == 0 && d.cout % 16 == 0;

		mt_onednn_set_mode(modes[mode]);
		for (int rep = 0; rep < 2; rep++)
		{
			memset(y1, 0, sizeof(float) * ys);
			CHECK(mt_cpu_backend.conv2d_cached(&d, n, h, w, x, packed, bias, y1, scratch,
											   &cache, &err) == MT_OK, "%s (%s) runs", what, kernels);
			CHECK(max_abs_diff(y1, y2, ys) < tol, "%s (%s, pass %d): max diff %g", what, kernels,
				  rep + 1, max_abs_diff(y1, y2, ys));
			/* the first image alone through the same cache (another shape) */
			memset(y1, 0, sizeof(float) * ys);
			CHECK(mt_cpu_backend.conv2d_cached(&d, 1, h, w, x, packed, bias, y1, scratch,
											   &cache, &err) == MT_OK, "%s (%s, n=1) runs", what, kernels);
			CHECK(max_abs_diff(y1, y2, ys / n) < tol, "%s (%s, n=1): max diff %g", what, kernels,
				  max_abs_diff(y1, y2, ys / n));
		}
		if (mode == 0)
			CHECK(mt_onednn_conv_count() == before, "%s: gemm mode kept oneDNN out", what);
		else if (mt_onednn_enabled() && d.cin >= 3 && d.cout >= 4)
			CHECK(mt_onednn_conv_count() >= before + 4, "%s: oneDNN took the convolution", what);
		if (mode == 2 && wino && mt_onednn_enabled() && __builtin_cpu_supports("avx512f") &&
			d.act != MT_ACT_SILU && d.act != MT_ACT_SIGMOID)
			CHECK(mt_onednn_wino_count() == wino_before + 2, "%s: Winograd took the batch of %d (%lu)",
				  what, n, mt_onednn_wino_count() - wino_before);
		else
			CHECK(mt_onednn_wino_count() == wino_before, "%s (%s): no Winograd", what, kernels);
		mt_conv_cache_free(cache);
		if (mode == 2 && wino && mt_onednn_enabled())
		{
			/*
			 * weights released (graph.c frees them once the cache holds
			 * them): a Winograd entry made later takes them from the
			 * direct kernel's copy
			 */
			cache = NULL;
			CHECK(mt_cpu_backend.conv2d_cached(&d, 1, h, w, x, packed, bias, y1, scratch,
											   &cache, &err) == MT_OK, "%s (n=1 first) runs", what);
			if (mt_conv_cache_holds_weights(cache))
			{
				memset(y1, 0, sizeof(float) * ys);
				CHECK(mt_cpu_backend.conv2d_cached(&d, n, h, w, x, NULL, bias, y1, scratch,
												   &cache, &err) == MT_OK &&
					  max_abs_diff(y1, y2, ys) < tol, "%s: Winograd from the kept copy: %s (diff %g)",
					  what, err.msg, max_abs_diff(y1, y2, ys));
			}
			mt_conv_cache_free(cache);
		}
	}
	mt_onednn_set_mode(MT_CONV_AUTO);

	/* backward passes: oneDNN's against im2col + GEMM, both adding into random gradients */
	if (mt_onednn_enabled())
	{
		size_t		ps = mt_conv_packed_size(&d);
		float	   *dy = rand_buf(ys),
				   *dx0 = rand_buf(xs),
				   *dx1 = malloc(sizeof(float) * xs),
				   *dw0 = rand_buf(ps),
				   *dw1 = malloc(sizeof(float) * ps);
		int			rc;
		float		gtol = tol * (1.0f + sqrtf((float) n * oh * ow / 64.0f));

		memcpy(dx1, dx0, sizeof(float) * xs);
		memcpy(dw1, dw0, sizeof(float) * ps);
		mt_onednn_set_mode(MT_CONV_GEMM);
		CHECK(mt_cpu_backend.conv2d_backward_data(&d, n, h, w, dy, packed, dx0, scratch, &err) == MT_OK &&
			  mt_cpu_backend.conv2d_backward_weight(&d, n, h, w, x, dy, dw0, scratch, &err) == MT_OK,
			  "%s: gemm backward", what);
		mt_onednn_set_mode(MT_CONV_AUTO);
		rc = mt_onednn_conv2d_backward_data(&d, n, h, w, dy, packed, dx1, &err);
		CHECK(rc == MT_OK || rc == MT_ERR_UNSUPPORTED, "%s: oneDNN backward data: %s", what, err.msg);
		if (rc == MT_OK)
			CHECK(max_abs_diff(dx0, dx1, xs) < tol, "%s: oneDNN backward data adds gemm's (diff %g)",
				  what, max_abs_diff(dx0, dx1, xs));
		rc = mt_onednn_conv2d_backward_weight(&d, n, h, w, x, dy, dw1, &err);
		CHECK(rc == MT_OK || rc == MT_ERR_UNSUPPORTED, "%s: oneDNN backward weight: %s", what, err.msg);
		if (rc == MT_OK)
			CHECK(max_abs_diff(dw0, dw1, ps) < gtol, "%s: oneDNN backward weight adds gemm's (diff %g, tol %g)",
				  what, max_abs_diff(dw0, dw1, ps), gtol);
		if (d.cin >= 16 && d.groups == 1)
			CHECK(rc == MT_OK, "%s: oneDNN took the weight gradient", what);
		free(dy);
		free(dx0);
		free(dx1);
		free(dw0);
		free(dw1);
	}
	free(x);
	free(wt);
	free(bias);
	free(packed);
	free(scratch);
	free(y1);
	free(y2);
}

static mt_conv_desc
desc(int cin, int cout, int k, int s, int d, int g, int pt, int pl, int pb, int pr, mt_act a)
{
	mt_conv_desc c = {cin, cout, k, k, s, s, d, d, g, pt, pl, pb, pr, a};

	return c;
}

static void
test_conv(void)
{
	int			b,
				a;

	check_conv("3x3 s1 p1", desc(5, 7, 3, 1, 1, 1, 1, 1, 1, 1, MT_ACT_NONE), 2, 9, 8);
	check_conv("3x3 s2 p1", desc(4, 6, 3, 2, 1, 1, 1, 1, 1, 1, MT_ACT_RELU), 1, 10, 10);
	check_conv("7x7 s2 p3", desc(3, 8, 7, 2, 1, 1, 3, 3, 3, 3, MT_ACT_NONE), 1, 17, 15);
	check_conv("1x1 s1 (plain GEMM)", desc(16, 24, 1, 1, 1, 1, 0, 0, 0, 0, MT_ACT_RELU6), 3, 5, 6);
	check_conv("1x1 s2", desc(8, 12, 1, 2, 1, 1, 0, 0, 0, 0, MT_ACT_NONE), 1, 9, 9);
	check_conv("depthwise 3x3 s1", desc(32, 32, 3, 1, 1, 32, 1, 1, 1, 1, MT_ACT_RELU6), 2, 7, 7);
	check_conv("depthwise 3x3 s2", desc(19, 19, 3, 2, 1, 19, 1, 1, 1, 1, MT_ACT_NONE), 1, 8, 8);
	check_conv("depthwise 5x5 dilation 2", desc(8, 8, 5, 1, 2, 8, 4, 4, 4, 4, MT_ACT_NONE), 1, 11, 11);
	check_conv("grouped 3x3 g=2", desc(6, 10, 3, 1, 1, 2, 1, 1, 1, 1, MT_ACT_NONE), 2, 6, 5);
	check_conv("depth multiplier 2 (g=cin, cout=2cin)", desc(4, 8, 3, 1, 1, 4, 1, 1, 1, 1, MT_ACT_NONE), 1, 6, 6);
	check_conv("3x3 dilation 2", desc(3, 4, 3, 1, 2, 1, 2, 2, 2, 2, MT_ACT_NONE), 1, 9, 9);
	check_conv("3x3 SiLU", desc(16, 32, 3, 1, 1, 1, 1, 1, 1, 1, MT_ACT_SILU), 2, 7, 7);
	check_conv("1x1 sigmoid", desc(24, 40, 1, 1, 1, 1, 0, 0, 0, 0, MT_ACT_SIGMOID), 2, 5, 5);
	check_conv("depthwise 5x5 s2 SiLU (EfficientNet)", desc(48, 48, 5, 2, 1, 48, 1, 1, 2, 2, MT_ACT_SILU), 3, 13, 13);
	check_conv("ResNet stage 3x3 256", desc(256, 256, 3, 1, 1, 1, 1, 1, 1, 1, MT_ACT_RELU), 2, 14, 14);
	check_conv("ResNet stage 3x3 64, odd size", desc(64, 64, 3, 1, 1, 1, 1, 1, 1, 1, MT_ACT_NONE), 3, 11, 9);
	check_conv("3x3 32 to 48, no padding", desc(32, 48, 3, 1, 1, 1, 0, 0, 0, 0, MT_ACT_RELU), 2, 10, 13);
	mt_same_padding(224, 3, 2, 1, &b, &a);
	CHECK(b == 0 && a == 1, "SAME 224 k3 s2: %d/%d, want 0/1", b, a);
	mt_same_padding(112, 3, 1, 1, &b, &a);
	CHECK(b == 1 && a == 1, "SAME 112 k3 s1: %d/%d, want 1/1", b, a);
	mt_same_padding(7, 3, 2, 1, &b, &a);
	CHECK(b == 1 && a == 1, "SAME 7 k3 s2: %d/%d, want 1/1", b, a);
	mt_same_padding(224, 1, 2, 1, &b, &a);
	CHECK(b == 0 && a == 0, "SAME 224 k1 s2: %d/%d, want 0/0", b, a);
	check_conv("TF SAME asymmetric 3x3 s2 (0 top/left, 1 bottom/right)",
			   desc(3, 5, 3, 2, 1, 1, 0, 0, 1, 1, MT_ACT_RELU6), 1, 12, 12);
	check_conv("TF SAME asymmetric depthwise s2", desc(7, 7, 3, 2, 1, 7, 0, 0, 1, 1, MT_ACT_NONE), 1, 10, 10);
}

static void
test_pool(void)
{
	mt_pool_desc p = {3, 3, 2, 2, 1, 1, 1, 1, 1};
	int			n = 1,
				h = 9,
				w = 8,
				c = 5;
	int			oh = mt_out_size(h, 3, 2, 1, 1, 1),
				ow = mt_out_size(w, 3, 2, 1, 1, 1);
	float	   *x = rand_buf((size_t) h * w * c);
	float	   *y = malloc(sizeof(float) * oh * ow * c);
	float	   *g = malloc(sizeof(float) * c);
	double		worst_max = 0,
				worst_avg = 0,
				worst_gap = 0;

	mt_cpu_backend.max_pool2d(&p, n, h, w, c, x, y);
	for (int oy = 0; oy < oh; oy++)
		for (int ox = 0; ox < ow; ox++)
			for (int j = 0; j < c; j++)
			{
				float		m = -1e30f;

				for (int ky = 0; ky < 3; ky++)
					for (int kx = 0; kx < 3; kx++)
					{
						int			iy = oy * 2 - 1 + ky,
									ix = ox * 2 - 1 + kx;

						if (iy >= 0 && iy < h && ix >= 0 && ix < w && x[(iy * w + ix) * c + j] > m)
							m = x[(iy * w + ix) * c + j];
					}
				worst_max = fmax(worst_max, fabs(m - y[(oy * ow + ox) * c + j]));
			}
	CHECK(worst_max == 0, "max pool exact (diff %g)", worst_max);

	mt_cpu_backend.avg_pool2d(&p, n, h, w, c, x, y);
	for (int oy = 0; oy < oh; oy++)
		for (int ox = 0; ox < ow; ox++)
			for (int j = 0; j < c; j++)
			{
				double		s = 0;

				for (int ky = 0; ky < 3; ky++)
					for (int kx = 0; kx < 3; kx++)
					{
						int			iy = oy * 2 - 1 + ky,
									ix = ox * 2 - 1 + kx;

						if (iy >= 0 && iy < h && ix >= 0 && ix < w)
							s += x[(iy * w + ix) * c + j];
					}
				/* count_include_pad: always 9 for a 3x3 window inside the padded input */
				worst_avg = fmax(worst_avg, fabs(s / 9 - y[(oy * ow + ox) * c + j]));
			}
	CHECK(worst_avg < 1e-6, "avg pool (count_include_pad) diff %g", worst_avg);

	mt_cpu_backend.global_avg_pool(1, h, w, c, x, g);
	for (int j = 0; j < c; j++)
	{
		double		s = 0;

		for (int i = 0; i < h * w; i++)
			s += x[i * c + j];
		worst_gap = fmax(worst_gap, fabs(s / (h * w) - g[j]));
	}
	CHECK(worst_gap < 1e-6, "global average pool diff %g", worst_gap);
	free(x);
	free(y);
	free(g);
}

static mt_model *
load_mobilenet(const char *shared, int same)
{
	char		path[1024];
	size_t		len;
	uint8_t    *buf;
	mt_safetensors st;
	mt_model   *m;
	mt_err		err;
	int			ok = 1;

	snprintf(path, sizeof(path), "%s/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.safetensors", shared);
	buf = mt_test_read_file(path, &len);
	CHECK(buf != NULL, "read %s", path);
	if (buf == NULL)
		return NULL;
	CHECK(mt_st_parse(buf, len, &st, &err) == MT_OK, "parse: %s", err.msg);
	m = mt_zoo_build("mobilenet_v2", 1000, same, &err);
	for (int i = 0; i < st.n_tensors && ok; i++)
	{
		mt_st_tensor *t = &st.tensors[i];

		ok = mt_model_set_param(m, t->name, t->dtype == MT_I64, t->ndim, t->shape,
								buf + t->offset, t->nbytes, &err) == MT_OK;
		CHECK(ok, "load %s: %s", t->name, err.msg);
	}
	CHECK(mt_model_check_complete(m, &err) == MT_OK, "complete: %s", err.msg);
	CHECK(mt_model_prepare(m, &err) == MT_OK, "prepare: %s", err.msg);
	mt_st_free(&st);
	free(buf);
	return m;
}

static int	cancel_now = 0;

static int
fake_interrupt(void)
{
	return cancel_now;
}

static void
test_mobilenet(const char *shared)
{
	static const char *const images[3] = {"bird_224.png", "cat_224.png", "grace_hopper_224.png"};
	static const int top1[3] = {19, 285, 652};
	static const float half[3] = {0.5f, 0.5f, 0.5f};
	char		path[1024];
	float		expected[2][3][1000];
	FILE	   *f;
	char		line[256];

	snprintf(path, sizeof(path), "%s/models/mobilenet_v2_imagenet/samples/expected_logits.csv", shared);
	f = fopen(path, "r");
	CHECK(f != NULL, "open %s", path);
	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f))
	{
		char		img[64],
					pad[32];
		int			k;
		float		v;

		if (sscanf(line, "%63[^,],%31[^,],%d,%f", img, pad, &k, &v) != 4 || k < 0 || k >= 1000)
			continue;
		for (int i = 0; i < 3; i++)
			if (strcmp(img, images[i]) == 0)
				expected[strcmp(pad, "tf_same") == 0 ? 0 : 1][i][k] = v;
	}
	fclose(f);

	for (int same = 1; same >= 0; same--)
	{
		mt_model   *m = load_mobilenet(shared, same);
		float	   *batch = malloc(sizeof(float) * 3 * 224 * 224 * 3);
		float		logits[3][1000],
					single[1000];
		mt_err		err;

		if (m == NULL)
			return;
		for (int i = 0; i < 3; i++)
		{
			size_t		len;
			uint8_t    *buf;
			mt_image	img;

			snprintf(path, sizeof(path), "%s/models/mobilenet_v2_imagenet/samples/%s", shared, images[i]);
			buf = mt_test_read_file(path, &len);
			CHECK(mt_image_decode(buf, len, 0, &img, &err) == MT_OK, "decode %s", images[i]);
			mt_image_normalize(&img, half, half);
			memcpy(batch + (size_t) i * 224 * 224 * 3, img.data, sizeof(float) * 224 * 224 * 3);
			mt_image_free(&img);
			free(buf);
		}
		/* a batch of three, and the first alone: same numbers */
		CHECK(mt_model_forward(m, batch, 3, 224, 224, &logits[0][0], NULL, &err) == MT_OK,
			  "forward: %s", err.msg);
		CHECK(mt_model_forward(m, batch, 1, 224, 224, single, NULL, &err) == MT_OK, "forward 1");
		CHECK(max_abs_diff(single, logits[0], 1000) < 1e-5, "batch of 1 = row of batch of 3 (%g)",
			  max_abs_diff(single, logits[0], 1000));
		for (int i = 0; i < 3; i++)
		{
			int			best = 0;
			double		d = max_abs_diff(logits[i], expected[same ? 0 : 1][i], 1000);

			for (int k = 1; k < 1000; k++)
				if (logits[i][k] > logits[i][best])
					best = k;
			CHECK(best == top1[i], "%s %s top-1 %d, want %d", images[i],
				  same ? "tf_same" : "symmetric", best, top1[i]);
			CHECK(d < 1e-3, "%s %s logits within 1e-3 of the reference (max diff %g)",
				  images[i], same ? "tf_same" : "symmetric", d);
			printf("mobilenet_v2 %s %-20s max |logit - reference| = %.2e\n",
				   same ? "tf_same  " : "symmetric", images[i], d);
		}
		/* cancellation between layers frees everything and says so */
		cancel_now = 1;
		mt_set_interrupt(fake_interrupt);
		CHECK(mt_model_forward(m, batch, 1, 224, 224, single, NULL, &err) == MT_ERR_CANCELLED,
			  "forward stops when interrupted");
		mt_set_interrupt(NULL);
		cancel_now = 0;
		/* an empty input is an error, not a crash; 1x1 runs as in torch */
		CHECK(mt_model_forward(m, batch, 1, 0, 5, single, NULL, &err) == MT_ERR_INVALID, "0x5 input refused");
		CHECK(mt_model_forward(m, batch, 1, 1, 1, single, NULL, &err) == MT_OK, "1x1 input runs");
		mt_model_free(m);
		free(batch);
	}
}

/* mt_parallel_for covers every index exactly once, nested calls run serially */
typedef struct pool_probe
{
	int		   *hits;
	int			nested_ok;
} pool_probe;

static void
pool_inner(void *p, size_t b, size_t e)
{
	pool_probe *pr = p;

	for (size_t i = b; i < e; i++)
		pr->hits[i] += 1000;
}

static void
pool_outer(void *p, size_t b, size_t e)
{
	pool_probe *pr = p;

	for (size_t i = b; i < e; i++)
		pr->hits[i]++;
}

/* each part runs a parallel_for over its own range from inside the task */
static void
pool_nested(void *p, size_t b, size_t e)
{
	pool_probe *pr = p;
	pool_probe	sub = {pr->hits + b, 0};

	for (size_t i = b; i < e; i++)
		pr->hits[i]++;
	mt_parallel_for(e - b, 1, pool_inner, &sub);
}

static void
test_thread_pool(void)
{
	static const size_t sizes[] = {1, 2, 3, 7, 64, 1000, 100003};
	int			threads[] = {1, 2, 3, 8};

	for (int t = 0; t < 4; t++)
	{
		mt_pool_set_threads(threads[t]);
		for (int s = 0; s < 7; s++)
			for (size_t min_part = 1; min_part <= 4096; min_part *= 64)
			{
				size_t		n = sizes[s];
				int		   *hits = calloc(n, sizeof(int));
				pool_probe	pr = {hits, 0};
				int			bad = 0;

				for (int rep = 0; rep < 3; rep++)
					mt_parallel_for(n, min_part, pool_outer, &pr);
				for (size_t i = 0; i < n; i++)
					bad += hits[i] != 3;
				CHECK(bad == 0, "parallel_for n=%zu min_part=%zu threads=%d: every index once per call (%d wrong)",
					  n, min_part, threads[t], bad);
				free(hits);
			}
	}
	/* a parallel_for issued from inside a task runs serially and completes */
	{
		size_t		n = 5000;
		int		   *hits = calloc(n, sizeof(int));
		pool_probe	pr = {hits, 0};
		int			bad = 0;

		mt_pool_set_threads(4);
		mt_parallel_for(n, 1, pool_nested, &pr);
		for (size_t i = 0; i < n; i++)
			bad += hits[i] != 1001;
		CHECK(bad == 0, "nested parallel_for: %d wrong", bad);
		free(hits);
	}
	mt_pool_set_threads(1);
}

/* A batch run in chunks (micro_batch) gives the same logits and features. */
static void
test_micro_batch(void)
{
	/*
	 * resnet18 only: with freshly initialised weights and identity batch
	 * norm, MobileNetV2's outputs do not depend on the input (nothing to
	 * compare) and DenseNet-121's amplify GEMM rounding (the engine does not
	 * use micro-batches by default)
	 */
	static const char *archs[] = {"resnet18"};

	for (int a = 0; a < 1; a++)
	{
		mt_err		err;
		mt_model   *m = mt_zoo_build(archs[a], 7, 0, &err);
		int			n = 5,
					hw = 32;
		size_t		xs = (size_t) n * hw * hw * 3;
		float	   *x = malloc(sizeof(float) * xs);
		float	   *l0,
				   *l1,
				   *f0,
				   *f1;
		double		worst = 0,
					spread = 0;
		uint32_t	seed = 7;

		CHECK(m != NULL, "%s builds", archs[a]);
		if (m == NULL)
			continue;
		CHECK(mt_model_init_all(m, 11, &err) == MT_OK, "%s initialises: %s", archs[a], err.msg);
		for (size_t j = 0; j < xs; j++)
		{
			seed = seed * 1664525u + 1013904223u;
			x[j] = (float) (seed >> 8) / 16777216.0f - 0.5f;
		}
		l0 = malloc(sizeof(float) * n * 7);
		l1 = malloc(sizeof(float) * n * 7);
		f0 = malloc(sizeof(float) * n * m->feature_dim);
		f1 = malloc(sizeof(float) * n * m->feature_dim);
		CHECK(mt_model_forward(m, x, n, hw, hw, l0, f0, &err) == MT_OK, "%s whole batch: %s", archs[a], err.msg);
		m->micro_batch = 2;		/* chunks of 2, 2 and 1 */
		CHECK(mt_model_forward(m, x, n, hw, hw, l1, f1, &err) == MT_OK, "%s micro-batches: %s", archs[a], err.msg);
		for (int j = 0; j < n * 7; j++)
		{
			worst = fmax(worst, fabs(l0[j] - l1[j]) / (fabs(l0[j]) + 1e-3));
			spread = fmax(spread, fabs(l0[j] - l0[j % 7]));	/* images differ */
		}
		for (int j = 0; j < n * m->feature_dim; j++)
			worst = fmax(worst, fabs(f0[j] - f1[j]) / (fabs(f0[j]) + 1e-3));
		CHECK(worst < 1e-4 && spread > 1e-3,
			  "%s: batch of 5 in chunks of 2 gives the whole batch's logits and features (rel diff %.2g, spread %.2g)",
			  archs[a], worst, spread);
		free(x);
		free(l0);
		free(l1);
		free(f0);
		free(f1);
		mt_model_free(m);
	}
}

/*
 * A stand-in for a device backend: the CPU kernels over "device" memory
 * that is host memory handed out by mem_alloc (filled with NaN, so reading
 * what was never written shows), counted, and refused past a budget.
 * mt_model_to_device's path then runs here bit for bit like the host one.
 */
static mt_backend fake_dev;
static int	fake_live = 0;
static long fake_budget = -1;	/* allocations still allowed; -1: any */

static int
fake_alloc(void **ptr, size_t bytes, mt_err *err)
{
	float	   *p;

	*ptr = NULL;
	if (fake_budget == 0)
		return mt_seterr(err, MT_ERR_NOMEM, "out of device memory in fake_alloc");
	if ((p = malloc(bytes)) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < bytes / sizeof(float); i++)
		p[i] = NAN;
	if (fake_budget > 0)
		fake_budget--;
	fake_live++;
	*ptr = p;
	return MT_OK;
}

static void
fake_free(void *ptr)
{
	if (ptr != NULL)
		fake_live--;
	free(ptr);
}

static int
fake_copy(void *dst, const void *src, size_t bytes, mt_err *err)
{
	memcpy(dst, src, bytes);
	return MT_OK;
}

static int
fake_sync(mt_err *err)
{
	return MT_OK;
}

/*
 * A prepared model's convolutions through oneDNN's caches: the packed
 * weights are freed once the caches hold them (one copy), and whatever
 * needs them again (im2col + GEMM, another batch size, a device, training)
 * gets them back; the logits stay those of im2col + GEMM.
 */
static void
test_conv_caches(void)
{
	mt_err		err;
	mt_model   *m = mt_zoo_build("resnet18", 4, 0, &err);
	int			n = 3,
				hw = 40;
	float	   *x = rand_buf((size_t) n * hw * hw * 3);
	float		ref[3 * 4],
				got[3 * 4];
	size_t		mem_gemm,
				mem_onednn;

	CHECK(m != NULL && mt_model_init_all(m, 9, &err) == MT_OK, "resnet18 builds: %s", err.msg);
	if (m == NULL)
		return;
	mt_onednn_set_mode(MT_CONV_GEMM);
	CHECK(mt_model_forward(m, x, n, hw, hw, ref, NULL, &err) == MT_OK, "gemm forward: %s", err.msg);
	mem_gemm = mt_model_memory(m);
	CHECK(!m->packed_released && mt_model_cache_bytes(m) == 0, "gemm: no caches");
	mt_onednn_set_mode(MT_CONV_AUTO);
	if (!mt_onednn_enabled())
	{
		printf("  (oneDNN not loaded: %s)\n", mt_onednn_info());
		mt_model_free(m);
		free(x);
		return;
	}
	for (int pass = 0; pass < 2; pass++)
	{
		CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK, "oneDNN forward %d: %s",
			  pass + 1, err.msg);
		CHECK(max_abs_diff(ref, got, 12) < 1e-4, "oneDNN pass %d gives gemm's logits (diff %g)",
			  pass + 1, max_abs_diff(ref, got, 12));
	}
	mem_onednn = mt_model_memory(m) + mt_model_cache_bytes(m);
	CHECK(m->packed_released && mt_model_cache_bytes(m) > 0,
		  "oneDNN: caches hold the weights (%zu bytes), packed copies released", mt_model_cache_bytes(m));
	CHECK(mem_onednn <= mem_gemm + mem_gemm / 20,
		  "one copy of the convolution weights: %zu bytes with oneDNN, %zu with gemm", mem_onednn, mem_gemm);
	/* one image: another shape, weights from the cache's copy */
	CHECK(mt_model_forward(m, x, 1, hw, hw, got, NULL, &err) == MT_OK &&
		  max_abs_diff(ref, got, 4) < 1e-4, "batch of one after the release: %s", err.msg);
	/* gemm again: packed again */
	mt_onednn_set_mode(MT_CONV_GEMM);
	CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK &&
		  max_abs_diff(ref, got, 12) < 1e-6 && !m->packed_released,
		  "gemm after a release re-packs: %s (diff %g)", err.msg, max_abs_diff(ref, got, 12));
	mt_onednn_set_mode(MT_CONV_AUTO);
	CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK && m->packed_released &&
		  max_abs_diff(ref, got, 12) < 1e-4, "oneDNN again: %s", err.msg);
	/* training keeps (and re-makes) the packed weights */
	mt_model_keep_packed(m);
	CHECK(!m->packed_released, "keep_packed brings the packed weights back on the next prepare");
	CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK && !m->packed_released &&
		  max_abs_diff(ref, got, 12) < 1e-4, "kept: %s", err.msg);
	/* a context reset frees the caches; the model re-prepares when used */
	m->keep_packed = 0;
	CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK && m->packed_released,
		  "released again");
	mt_model_release_external(m);
	CHECK(mt_model_cache_bytes(m) == 0, "release_external frees the caches");
	CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK &&
		  max_abs_diff(ref, got, 12) < 1e-4, "usable after release_external: %s", err.msg);

	/*
	 * A scoring-only model drops its raw convolution weights; what needs
	 * them again says MT_ERR_RELOAD until the host sets them again.
	 */
	{
		float	  **saved = calloc(m->n_params, sizeof(float *));
		size_t		freed;
		int			reloaded = 0,
					rc;

		for (int i = 0; i < m->n_params; i++)
			if (m->params[i].data != NULL)
			{
				saved[i] = malloc(m->params[i].numel * sizeof(float));
				memcpy(saved[i], m->params[i].data, m->params[i].numel * sizeof(float));
			}
		m->release_raw = 1;
		mt_model_keep_packed(m);	/* prepared anew on the next pass, as training does */
		CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK && !m->raw_released,
			  "a model that keeps its packed weights (training) keeps its raw ones");
		m->keep_packed = 0;
		CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK && m->packed_released,
			  "packed copies released into the caches again");
		mt_model_release_external(m);	/* prepared anew on the next pass */
		freed = mt_model_memory(m);
		CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK && m->packed_released &&
			  m->raw_released && max_abs_diff(ref, got, 12) < 1e-4, "prepared with release_raw: %s", err.msg);
		freed -= mt_model_memory(m);
		CHECK(freed > 10000000, "raw convolution weights freed: %zu bytes", freed);
		CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK &&
			  max_abs_diff(ref, got, 12) < 1e-4, "scores without them: %s", err.msg);
		CHECK(mt_model_forward(m, x, 2, hw, hw, got, NULL, &err) == MT_OK &&
			  max_abs_diff(ref, got, 8) < 1e-4, "another batch size without them: %s", err.msg);
		mt_onednn_set_mode(MT_CONV_GEMM);
		rc = mt_model_forward(m, x, n, hw, hw, got, NULL, &err);
		CHECK(rc == MT_ERR_RELOAD, "gemm needs them: %d %s", rc, err.msg);
		for (int i = 0; i < m->n_params; i++)
			if (!m->params[i].loaded && saved[i] != NULL)
			{
				CHECK(mt_model_set_param(m, m->params[i].name, 0, m->params[i].ndim, m->params[i].shape,
										 saved[i], m->params[i].numel * sizeof(float), &err) == MT_OK,
					  "set %s again: %s", m->params[i].name, err.msg);
				reloaded++;
			}
		CHECK(reloaded > 0 && mt_model_raw_reloaded(m, &err) == MT_OK && !m->raw_released,
			  "%d tensors set again: %s", reloaded, err.msg);
		m->release_raw = 0;
		CHECK(mt_model_forward(m, x, n, hw, hw, got, NULL, &err) == MT_OK &&
			  max_abs_diff(ref, got, 12) < 1e-6, "gemm after the reload: %s (diff %g)", err.msg,
			  max_abs_diff(ref, got, 12));
		mt_onednn_set_mode(MT_CONV_AUTO);
		for (int i = 0; i < m->n_params; i++)
			free(saved[i]);
		free(saved);
	}
	mt_model_free(m);
	free(x);
}

static void
test_device_path(void)
{
	mt_err		err;
	mt_model   *m = mt_zoo_build("densenet121", 5, 0, &err);
	mt_model   *v = mt_zoo_build("vit_b_16", 5, 0, &err);
	int			n = 3,
				hw = 32;
	size_t		xs = (size_t) n * hw * hw * 3;
	float	   *x = rand_buf(xs);
	float		l0[3 * 5],
				l1[3 * 5];
	float	   *f0,
			   *f1;
	int			hi;

	fake_dev = mt_cpu_backend;
	/*
	 * the host's passes through im2col + GEMM, as the fake device's (its
	 * weights are device copies, so it never takes the oneDNN cache path):
	 * the comparisons below are bit for bit
	 */
	mt_onednn_set_mode(MT_CONV_GEMM);
	fake_dev.name = "fake device";
	fake_dev.mem_alloc = fake_alloc;
	fake_dev.mem_free = fake_free;
	fake_dev.upload = fake_copy;
	fake_dev.download = fake_copy;
	fake_dev.synchronize = fake_sync;

	CHECK(m != NULL && v != NULL, "models build");
	if (m == NULL || v == NULL)
		return;
	CHECK(mt_model_init_all(m, 5, &err) == MT_OK, "init: %s", err.msg);
	f0 = malloc(sizeof(float) * n * m->feature_dim);
	f1 = malloc(sizeof(float) * n * m->feature_dim);
	CHECK(mt_model_forward(m, x, n, hw, hw, l0, f0, &err) == MT_OK, "host forward: %s", err.msg);

	/* a host backend: nothing moves */
	CHECK(mt_model_to_device(m, &mt_cpu_backend, &err) == MT_OK && mt_model_device(m) == NULL &&
		  mt_model_plan_bytes(m) > 0, "to_device(cpu) keeps the model on the host");

	/* out of device memory for the weights: nothing left, still on the host */
	fake_budget = 0;
	CHECK(mt_model_to_device(m, &fake_dev, &err) == MT_ERR_NOMEM && mt_model_device(m) == NULL &&
		  fake_live == 0, "to_device out of memory: MT_ERR_NOMEM (%s), nothing left", err.msg);
	CHECK(strstr(err.msg, "weights of densenet121") != NULL, "the message names the weights: %s", err.msg);

	/* the weights go up in one block; the host arena is dropped */
	fake_budget = -1;
	CHECK(mt_model_to_device(m, &fake_dev, &err) == MT_OK && mt_model_device(m) == &fake_dev &&
		  fake_live == 1 && mt_model_plan_bytes(m) == 0 && mt_model_device_bytes(m) > 0,
		  "to_device uploads one weight block: %s", err.msg);
	CHECK(mt_model_forward(m, x, n, hw, hw, l1, f1, &err) == MT_OK, "device forward: %s", err.msg);
	CHECK(memcmp(l0, l1, sizeof(l0)) == 0 && memcmp(f0, f1, sizeof(float) * n * m->feature_dim) == 0,
		  "the device path gives the host's logits and features bit for bit");
	CHECK(fake_live == 2, "one arena on the device besides the weights (%d blocks)", fake_live);
	CHECK(mt_model_forward(m, x, n, hw, hw, l1, NULL, &err) == MT_OK && fake_live == 2 &&
		  memcmp(l0, l1, sizeof(l0)) == 0, "a second pass allocates nothing");

	/* the arena refused: an error, the weights stay, usable afterwards */
	m->micro_batch = 2;
	fake_budget = 0;
	CHECK(mt_model_forward(m, x, n, hw, hw, l1, NULL, &err) == MT_ERR_NOMEM && fake_live == 1,
		  "arena out of memory: MT_ERR_NOMEM (%s), the weights kept", err.msg);
	fake_budget = -1;
	CHECK(mt_model_forward(m, x, n, hw, hw, l1, NULL, &err) == MT_OK, "usable after: %s", err.msg);
	for (int j = 0; j < n * 5; j++)
		CHECK(fabsf(l0[j] - l1[j]) <= 1e-4f * (fabsf(l0[j]) + 1e-2f), "micro-batches on the device: %g vs %g",
			  l0[j], l1[j]);
	m->micro_batch = 0;

	/* changed weights are uploaded again */
	hi = mt_model_find_param(m, mt_zoo_head_weight(m->arch));
	{
		mt_param   *p = &m->params[hi];
		float	   *w = malloc(sizeof(float) * p->numel);

		for (size_t j = 0; j < p->numel; j++)
			w[j] = 2.0f * p->data[j];
		CHECK(mt_model_set_param(m, p->name, 0, p->ndim, p->shape, w, sizeof(float) * p->numel, &err) == MT_OK,
			  "set head: %s", err.msg);
		free(w);
	}
	CHECK(mt_model_forward(m, x, n, hw, hw, l1, NULL, &err) == MT_OK, "forward after a change: %s", err.msg);
	CHECK(mt_model_device(m) == &fake_dev && fake_live == 2, "still on the device (%d blocks)", fake_live);
	CHECK(mt_model_to_device(m, NULL, &err) == MT_OK && fake_live == 0 && mt_model_device(m) == NULL,
		  "to_device(NULL) frees everything on the device (%d blocks)", fake_live);
	CHECK(mt_model_forward(m, x, n, hw, hw, l0, NULL, &err) == MT_OK && memcmp(l0, l1, sizeof(l0)) == 0,
		  "the host gives the device's logits with the changed head");

	/* freeing a model on the device frees its device memory */
	CHECK(mt_model_to_device(m, &fake_dev, &err) == MT_OK &&
		  mt_model_forward(m, x, n, hw, hw, l1, NULL, &err) == MT_OK, "back on the device: %s", err.msg);
	mt_model_free(m);
	CHECK(fake_live == 0, "mt_model_free frees the device copy (%d blocks)", fake_live);

	/*
	 * a backend without the transformer entries keeps a transformer on the
	 * host (refused before anything is allocated)
	 */
	{
		mt_backend	no_vit = fake_dev;

		no_vit.class_token = NULL;
		CHECK(mt_model_to_device(v, &no_vit, &err) == MT_ERR_UNSUPPORTED && mt_model_device(v) == NULL &&
			  fake_live == 0, "vit_b_16 refused by a backend without transformer entries: %s", err.msg);
	}
	mt_model_free(v);
	free(x);
	free(f0);
	free(f1);
	mt_onednn_set_mode(MT_CONV_AUTO);
}

int
main(int argc, char **argv)
{
	const char *shared = argc > 1 ? argv[1] : "../shared";
	mt_err		err;

	CHECK(mt_blas_init("auto", &err) == MT_OK, "OpenBLAS loads: %s", err.msg);
	printf("BLAS: %s, core %s (%s), cpu: %s\n", mt_blas_library(), mt_blas_corename(),
		   mt_blas_core_requested(), mt_cpu_features());
	test_gemm();
	test_conv();
	test_pool();
	test_mobilenet(shared);
	test_thread_pool();
	test_micro_batch();
	test_conv_caches();
	test_device_path();
	/* the same kernels again split over 3 threads (uneven parts) */
	mt_pool_set_threads(3);
	test_conv();
	test_pool();
	test_mobilenet(shared);
	mt_pool_set_threads(1);
	return TEST_SUMMARY("engine");
}
