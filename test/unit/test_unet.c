/*
 * test_unet.c - the U-Net half of the engine: bilinear upsampling and the
 * transposed convolution against independent direct formulas and their
 * backward passes against central differences; the segmentation loss
 * against a direct computation and its gradient against differences
 * (ignored pixels, class weights); the zoo's U-Nets: tensor names, shapes
 * and input-size errors, inference vs the training forward pass, micro
 * batches, freezing, mt_model_init_unloaded, and whole-model gradients.
 *
 *   make unittest && test/bin/test_unet
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/ops.h"
#include "core/train.h"
#include "nn/zoo.h"
#include "mt_test.h"

#define GRAD_CHECK_SEED 0x2545F4914F6CDD1Dull
#include "grad_check.h"

#include <stdlib.h>
#include <string.h>

static const mt_backend *be = &mt_cpu_backend;

/* ---- bilinear upsampling ------------------------------------------------- */

/*
 * The 1-D oracle for factor 2, align_corners=False, written from the
 * geometry rather than torch's index formula: output 2i sits a quarter
 * pixel before input i, so it is 0.25 x[i-1] + 0.75 x[i]; output 2i+1 a
 * quarter after, 0.75 x[i] + 0.25 x[i+1]; beyond the edges the edge value.
 */
static double
up2_1d(const float *x, int n, size_t stride, int o)
{
	int			i = o / 2;
	int			nb = (o % 2 == 0) ? i - 1 : i + 1;

	if (nb < 0)
		nb = 0;
	if (nb > n - 1)
		nb = n - 1;
	return 0.75 * x[(size_t) i * stride] + 0.25 * x[(size_t) nb * stride];
}

typedef struct up_ctx
{
	int			n,
				h,
				w,
				c,
				f;
	float	   *x;
} up_ctx;

static void
up_fwd(void *p, float *y)
{
	up_ctx	   *u = p;

	be->upsample_bilinear(u->n, u->h, u->w, u->c, u->f, u->x, y);
}

/* Values against the separable oracle (factor 2), dx against differences. */
static void
test_upsample_case(int n, int h, int w, int c, int f)
{
	up_ctx		u = {n, h, w, c, f, NULL};
	size_t		xl = (size_t) n * h * w * c,
				yl = xl * f * f;
	float	   *y = zbuf(yl),
			   *r,
			   *dx;
	double		e = 0,
				ex;

	u.x = rbuf(xl, -1, 1);
	r = rbuf(yl, -1, 1);
	dx = rbuf(xl, -1, 1);		/* backward adds: start from nonzero */
	be->upsample_bilinear(n, h, w, c, f, u.x, y);
	if (f == 2)
	{
		/* separable: rows of the oracle applied to columns of the oracle */
		float	   *tmp = zbuf((size_t) h * w * 2 * c);

		for (int i = 0; i < n; i++)
		{
			const float *xi = u.x + (size_t) i * h * w * c;

			for (int yy = 0; yy < h; yy++)
				for (int ox = 0; ox < 2 * w; ox++)
					for (int j = 0; j < c; j++)
						tmp[((size_t) yy * 2 * w + ox) * c + j] =
							(float) up2_1d(xi + (size_t) yy * w * c + j, w, c, ox);
			for (int oy = 0; oy < 2 * h; oy++)
				for (int ox = 0; ox < 2 * w; ox++)
					for (int j = 0; j < c; j++)
					{
						double		want = up2_1d(tmp + (size_t) ox * c + j, h, (size_t) 2 * w * c, oy);
						float		got = y[(((size_t) i * 2 * h + oy) * 2 * w + ox) * c + j];

						e = fmax(e, fabs(got - want));
					}
		}
		free(tmp);
		CHECK(e < 1e-6, "upsample x2 %dx%dx%d: values vs the direct formula %.2e", h, w, c, e);
	}
	{
		float	   *start = malloc(xl * sizeof(float));

		memcpy(start, dx, xl * sizeof(float));
		be->upsample_bilinear_backward(n, h, w, c, f, r, dx);
		for (size_t k = 0; k < xl; k++)
			dx[k] -= start[k];
		free(start);
	}
	ex = fd_check(up_fwd, &u, u.x, xl, dx, r, y, yl, 80, 1e-2);
	CHECK(ex < 1e-3, "upsample x%d %dx%d: dX %.2e", f, h, w, ex);
	printf("  upsample x%d n%d %dx%dx%d: values %.1e, dX %.2e\n", f, n, h, w, c, e, ex);
	free(u.x);
	free(y);
	free(r);
	free(dx);
}

/* ---- transposed convolution ---------------------------------------------- */

typedef struct tc_ctx
{
	mt_conv_desc d;				/* the transposed convolution's adjoint (ops.h) */
	int			n,
				h,
				w;
	float	   *x,
			   *wt,				/* [cin_t][cout_t][kh][kw] */
			   *bias,
			   *packed,
			   *scratch;
} tc_ctx;

static void
tc_fwd(void *p, float *y)
{
	tc_ctx	   *c = p;

	mt_conv_pack_oihw(&c->d, c->wt, c->packed);
	be->conv_transpose2d(&c->d, c->n, c->h, c->w, c->x, c->packed, c->bias, y, c->scratch, NULL);
}

/*
 * One case: cin_t -> cout_t channels, kernel k, stride s, padding p.  The
 * oracle is the definition: every input value scattered through the kernel,
 * y[iy s - p + ky, ix s - p + kx, co] += x[iy, ix, ci] w[ci, co, ky, kx].
 */
static void
test_tconv_case(int cin_t, int cout_t, int k, int s, int p, int bias, int n, int h, int w)
{
	tc_ctx		c;
	int			oh = mt_conv_transpose_out_size(h, k, s, p, p),
				ow = mt_conv_transpose_out_size(w, k, s, p, p);
	size_t		xl = (size_t) n * h * w * cin_t,
				yl = (size_t) n * oh * ow * cout_t,
				wl = (size_t) cin_t * cout_t * k * k;
	double	   *want = calloc(yl, sizeof(double));
	float	   *y = zbuf(yl),
			   *r,
			   *dx,
			   *dwp,
			   *dw,
			   *db;
	double		e = 0,
				m = 1e-12,
				ex,
				ew,
				eb = 0;

	memset(&c, 0, sizeof(c));
	c.d = (mt_conv_desc) {cout_t, cin_t, k, k, s, s, 1, 1, 1, p, p, p, p, MT_ACT_NONE};
	c.n = n;
	c.h = h;
	c.w = w;
	c.x = rbuf(xl, -1, 1);
	c.wt = rbuf(wl, -1, 1);
	c.bias = bias ? rbuf(cout_t, -1, 1) : NULL;
	c.packed = zbuf(wl);
	c.scratch = zbuf(mt_conv_scratch_size(&c.d, oh, ow) + 1);
	r = rbuf(yl, -1, 1);
	dx = zbuf(xl);
	dwp = zbuf(wl);
	dw = zbuf(wl);
	db = zbuf(cout_t);

	for (int i = 0; i < n; i++)
		for (int iy = 0; iy < h; iy++)
			for (int ix = 0; ix < w; ix++)
				for (int ci = 0; ci < cin_t; ci++)
					for (int co = 0; co < cout_t; co++)
						for (int ky = 0; ky < k; ky++)
							for (int kx = 0; kx < k; kx++)
							{
								int			oy = iy * s - p + ky,
											ox = ix * s - p + kx;

								if (oy < 0 || oy >= oh || ox < 0 || ox >= ow)
									continue;
								want[(((size_t) i * oh + oy) * ow + ox) * cout_t + co] +=
									(double) c.x[(((size_t) i * h + iy) * w + ix) * cin_t + ci] *
									c.wt[(((size_t) ci * cout_t + co) * k + ky) * k + kx];
							}
	tc_fwd(&c, y);
	for (size_t q = 0; q < yl; q++)
	{
		double		b = want[q] + (bias ? c.bias[q % cout_t] : 0.0);

		e = fmax(e, fabs(y[q] - b));
		m = fmax(m, fabs(b));
	}
	CHECK(e / m < 1e-5, "tconv %d->%d k%d s%d p%d: values vs the definition %.2e", cin_t, cout_t,
		  k, s, p, e / m);

	mt_conv_pack_oihw(&c.d, c.wt, c.packed);
	CHECK(be->conv_transpose2d_backward_data(&c.d, n, h, w, r, c.packed, dx, c.scratch, NULL) == MT_OK,
		  "tconv backward data");
	CHECK(be->conv2d_backward_weight(&c.d, n, oh, ow, r, c.x, dwp, c.scratch, NULL) == MT_OK,
		  "tconv backward weight");
	mt_conv_unpack_add_oihw(&c.d, dwp, dw);
	be->bias_backward((size_t) n * oh * ow, cout_t, r, db);
	ex = fd_check(tc_fwd, &c, c.x, xl, dx, r, y, yl, 60, 1e-2);
	ew = fd_check(tc_fwd, &c, c.wt, wl, dw, r, y, yl, 60, 1e-2);
	if (bias)
		eb = fd_check(tc_fwd, &c, c.bias, cout_t, db, r, y, yl, cout_t, 1e-2);
	CHECK(ex < 2e-3 && ew < 2e-3 && eb < 2e-3, "tconv %d->%d k%d s%d p%d: dX %.2e dW %.2e db %.2e",
		  cin_t, cout_t, k, s, p, ex, ew, eb);
	printf("  tconv %d->%d k%d s%d p%d on %dx%d -> %dx%d: values %.1e, dX %.2e dW %.2e db %.2e\n",
		   cin_t, cout_t, k, s, p, h, w, oh, ow, e / m, ex, ew, eb);

	free(want);
	free(c.x);
	free(c.wt);
	free(c.bias);
	free(c.packed);
	free(c.scratch);
	free(y);
	free(r);
	free(dx);
	free(dwp);
	free(dw);
	free(db);
}

static void
test_kernels(void)
{
	test_upsample_case(2, 3, 4, 5, 2);
	test_upsample_case(1, 1, 1, 3, 2);
	test_upsample_case(2, 4, 3, 2, 3);
	test_tconv_case(5, 4, 2, 2, 0, 1, 2, 3, 4);		/* the U-Net's */
	test_tconv_case(3, 6, 3, 2, 1, 0, 2, 4, 3);		/* overlapping windows */
	test_tconv_case(4, 3, 4, 2, 1, 1, 1, 3, 3);
	test_tconv_case(6, 5, 1, 1, 0, 1, 2, 3, 3);		/* pointwise: plain GEMM */
	test_tconv_case(2, 3, 3, 1, 1, 1, 1, 4, 5);
}

/* ---- the segmentation loss ----------------------------------------------- */

/* The loss written out directly (double), for values. */
static double
seg_loss_direct(const float *z, const uint8_t *mask, int n, int hw, int c,
				const float *cw, double wce, double wdice)
{
	double		ce = 0,
				norm = 0,
				dice = 0;
	double	   *I = calloc(c, sizeof(double)),
			   *P = calloc(c, sizeof(double)),
			   *G = calloc(c, sizeof(double));

	for (int i = 0; i < n * hw; i++)
	{
		double		sum = 0;

		if (mask[i] == 255)
			continue;
		for (int j = 0; j < c; j++)
			sum += exp(z[i * c + j]);
		for (int j = 0; j < c; j++)
		{
			double		pj = exp(z[i * c + j]) / sum;

			P[j] += pj;
			if (j == mask[i])
			{
				I[j] += pj;
				G[j] += 1;
				ce += (cw ? cw[j] : 1.0) * -log(pj);
				norm += cw ? cw[j] : 1.0;
			}
		}
	}
	for (int k = 1; k < c; k++)
		dice += (2 * I[k] + 1) / (P[k] + G[k] + 1);
	free(I);
	free(P);
	free(G);
	return wce * ce / norm + wdice * (1 - dice / (c - 1));
}

typedef struct loss_ctx
{
	float	   *z;
	const uint8_t *mask;
	int			n,
				hw,
				c;
	const float *cw;
	float		wce,
				wdice;
} loss_ctx;

static void
loss_fwd(void *p, float *y)
{
	loss_ctx   *l = p;
	mt_err		err;

	if (mt_loss_segmentation(l->z, l->mask, l->n, l->hw, l->c, l->cw, l->wce, l->wdice,
							 y, NULL, &err) != MT_OK)
		fprintf(stderr, "loss: %s\n", err.msg);
}

static void
test_loss_case(const char *what, int c, const float *cw, float wce, float wdice, int ignore)
{
	int			n = 2,
				hw = 12;
	size_t		len = (size_t) n * hw * c;
	float	   *z = rbuf(len, -2, 2),
			   *dz = zbuf(len),
				one = 1.0f,
				loss,
				y;
	uint8_t		mask[24];
	loss_ctx	l;
	mt_err		err;
	double		want,
				e,
				zero = 0;

	for (int i = 0; i < n * hw; i++)
		mask[i] = (uint8_t) (ignore && i % 5 == 2 ? 255 : (int) (urand() * c));
	l = (loss_ctx) {z, mask, n, hw, c, cw, wce, wdice};
	CHECK(mt_loss_segmentation(z, mask, n, hw, c, cw, wce, wdice, &loss, dz, &err) == MT_OK,
		  "%s: %s", what, err.msg);
	want = seg_loss_direct(z, mask, n, hw, c, cw, wce, wdice);
	CHECK(fabs(loss - want) < 1e-5 * fmax(1, fabs(want)), "%s: loss %.7g vs direct %.7g", what, loss, want);
	e = fd_check(loss_fwd, &l, z, len, dz, &one, &y, 1, (int) len, 1e-2);
	for (int i = 0; i < n * hw; i++)
		if (mask[i] == 255)
			for (int j = 0; j < c; j++)
				zero = fmax(zero, fabs(dz[i * c + j]));
	CHECK(e < 2e-3 && zero == 0, "%s: dlogits vs differences %.2e, at ignored pixels %.1e", what, e, zero);
	printf("  seg loss %-38s %.6f (direct %.6f), dlogits %.2e\n", what, loss, want, e);
	free(z);
	free(dz);
}

static void
test_loss(void)
{
	static const float cw3[3] = {0.3f, 1.0f, 2.5f};
	float		z[8] = {0};
	uint8_t		m[4] = {0, 1, 2, 1};
	uint8_t		ign[4] = {255, 255, 255, 255};
	float		loss = -1,
				dz[8];
	mt_err		err;

	test_loss_case("binary CE + Dice", 2, NULL, 1.0f, 1.0f, 0);
	test_loss_case("3 classes, CE only", 3, NULL, 1.0f, 0.0f, 0);
	test_loss_case("3 classes, Dice only, ignored pixels", 3, NULL, 0.0f, 1.0f, 1);
	test_loss_case("3 classes, weights, ignored, 0.5/2", 3, cw3, 0.5f, 2.0f, 1);
	test_loss_case("5 classes, CE + Dice", 5, NULL, 1.0f, 1.0f, 0);

	CHECK(mt_loss_segmentation(z, m, 1, 4, 2, NULL, 1, 1, &loss, dz, &err) == MT_ERR_INVALID &&
		  strstr(err.msg, "2") != NULL, "mask value 2 for 2 classes: %s", err.msg);
	CHECK(mt_loss_segmentation(z, m, 1, 4, 1, NULL, 1, 1, &loss, dz, &err) == MT_ERR_INVALID,
		  "one class refused");
	CHECK(mt_loss_segmentation(z, m, 1, 4, 3, NULL, -1, 1, &loss, dz, &err) == MT_ERR_INVALID,
		  "negative loss weight refused");
	for (int i = 0; i < 8; i++)
		dz[i] = 7;
	CHECK(mt_loss_segmentation(z, ign, 1, 4, 2, NULL, 1, 1, &loss, dz, &err) == MT_OK &&
		  loss == 0 && dz[0] == 0 && dz[7] == 0, "every pixel ignored: loss %g", loss);
}

/* ---- the zoo's U-Nets ---------------------------------------------------- */

/*
 * Random weights and BN statistics (init_all, then perturbed BN).  Kept
 * apart from test_grad's randomise: these draws in double (0.4 u - 0.2)
 * differ in the last bit from frand's float bounds; sharing would move them.
 */
static void
randomise(mt_model *m, uint64_t seed)
{
	mt_err		err;

	CHECK(mt_model_init_all(m, seed, &err) == MT_OK, "init_all: %s", err.msg);
	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_node    *nd = &m->nodes[i];

		if (nd->kind != MT_NODE_BN)
			continue;
		for (int j = 0; j < m->params[nd->p_bn_weight].shape[0]; j++)
		{
			m->params[nd->p_bn_weight].data[j] = (float) (0.5 + urand());
			m->params[nd->p_bn_bias].data[j] = (float) (0.4 * urand() - 0.2);
			m->params[nd->p_bn_mean].data[j] = (float) (0.4 * urand() - 0.2);
			m->params[nd->p_bn_var].data[j] = (float) (0.5 + 1.5 * urand());
		}
	}
}

static int
has(const mt_model *m, const char *name)
{
	return mt_model_find_param(m, name) >= 0;
}

/* Tensor names, shapes, input sizes, inference vs training forward. */
static void
test_zoo_shapes(void)
{
	static const char *const archs[] = {"unet_resnet18", "unet_resnet34", "unet_mobilenet_v2",
	"unet_resnet18_tconv", "unet_resnet34_tconv", "unet_mobilenet_v2_tconv"};
	mt_err		err;

	CHECK(mt_zoo_check_input("unet_resnet18", 48, 64, &err) == MT_ERR_INVALID &&
		  strstr(err.msg, "multiples of 32") != NULL, "48x64 refused: %s", err.msg);
	CHECK(mt_zoo_check_input("unet_mobilenet_v2", 64, 100, &err) == MT_ERR_INVALID, "64x100 refused");
	CHECK(mt_zoo_check_input("unet_resnet34_tconv", 64, 96, &err) == MT_OK, "64x96: %s", err.msg);
	CHECK(mt_zoo_check_input("resnet18", 48, 48, &err) == MT_OK, "classifiers keep any size");
	CHECK(mt_zoo_is_segmentation("unet_resnet18_tconv") && !mt_zoo_is_segmentation("resnet18") &&
		  !mt_zoo_is_segmentation(NULL), "is_segmentation");
	CHECK(strcmp(mt_zoo_encoder_arch("unet_mobilenet_v2_tconv"), "mobilenet_v2") == 0 &&
		  strcmp(mt_zoo_encoder_arch("unet_resnet34"), "resnet34") == 0 &&
		  mt_zoo_encoder_arch("resnet34") == NULL, "encoder_arch");
	CHECK(strcmp(MT_ZOO_ENCODER_PREFIX, "encoder.") == 0, "encoder prefix");

	for (size_t a = 0; a < sizeof(archs) / sizeof(archs[0]); a++)
	{
		const char *arch = archs[a];
		mt_model   *m = mt_zoo_build(arch, 3, 0, &err);
		mt_model   *bb;
		int			tconv = strstr(arch, "_tconv") != NULL;
		int			n = 2,
					h = 64,
					w = 96;
		size_t		yl = (size_t) n * h * w * 3;
		float	   *x = rbuf((size_t) n * h * w * 3, -1.5f, 1.5f);
		float	   *a1 = zbuf(yl),
				   *a2 = zbuf(yl),
				   *a3 = zbuf(yl),
				   *f1 = zbuf((size_t) n * 1280);
		int			missing = 0,
					extra = 0;
		mt_shape3  *shp;
		size_t		scratch;

		CHECK(m != NULL, "%s: %s", arch, err.msg);
		if (m == NULL)
			continue;
		/* every backbone tensor but the classifier, behind "encoder." */
		bb = mt_zoo_build(mt_zoo_encoder_arch(arch), 10, 0, &err);
		for (int i = 0; i < bb->n_params; i++)
		{
			char		name[MT_NAME_MAX + 16];
			int			head = strncmp(bb->params[i].name, "fc.", 3) == 0 ||
				strncmp(bb->params[i].name, "classifier.", 11) == 0;

			snprintf(name, sizeof(name), "encoder.%s", bb->params[i].name);
			if (head == has(m, name))
				missing++;
		}
		for (int i = 0; i < m->n_params; i++)
			if (strncmp(m->params[i].name, "encoder.", 8) != 0 &&
				strncmp(m->params[i].name, "decoder.blocks.", 15) != 0 &&
				strncmp(m->params[i].name, "segmentation_head.", 18) != 0)
				extra++;
		CHECK(missing == 0 && extra == 0, "%s: %d backbone tensors missing or misplaced, %d others",
			  arch, missing, extra);
		mt_model_free(bb);
		CHECK(has(m, "decoder.blocks.0.conv1.0.weight") && has(m, "decoder.blocks.4.conv2.1.running_var") &&
			  has(m, "decoder.blocks.2.conv1.1.num_batches_tracked") &&
			  has(m, "segmentation_head.weight") && has(m, "segmentation_head.bias") &&
			  has(m, "decoder.blocks.3.up.weight") == tconv && !has(m, "decoder.blocks.4.conv3.0.weight"),
			  "%s: decoder tensor names", arch);
		{
			/* block 0's first conv reads the deepest feature plus the stride-16 skip */
			int			i = mt_model_find_param(m, "decoder.blocks.0.conv1.0.weight");
			int			j = mt_model_find_param(m, "decoder.blocks.4.conv1.0.weight");
			int64_t		c0 = strstr(arch, "mobilenet") ? 1280 + 96 : 512 + 256;

			CHECK(i >= 0 && m->params[i].shape[0] == 256 && m->params[i].shape[1] == c0 &&
				  j >= 0 && m->params[j].shape[0] == 16 && m->params[j].shape[1] == 32,
				  "%s: decoder channels", arch);
		}

		shp = calloc(m->n_nodes, sizeof(mt_shape3));
		CHECK(mt_model_shapes(m, h, w, shp, &scratch, &err) == MT_OK, "%s: %s", arch, err.msg);
		CHECK(shp[m->logits_node].h == h && shp[m->logits_node].w == w && shp[m->logits_node].c == 3 &&
			  shp[m->features_node].h == 1 && shp[m->features_node].c == m->feature_dim,
			  "%s: logits %dx%dx%d", arch, shp[m->logits_node].h, shp[m->logits_node].w,
			  shp[m->logits_node].c);
		CHECK(mt_model_shapes(m, 48, 48, shp, &scratch, &err) != MT_OK, "%s: 48x48 does not fit", arch);
		free(shp);

		randomise(m, 11 + a);
		/*
		 * inference (BN folded, activations fused) = the training forward
		 * pass with every BN weight frozen (BN on running statistics) and
		 * everything else training (the graph as built, unfused)
		 */
		CHECK(mt_model_forward(m, x, n, h, w, a1, f1, &err) == MT_OK, "%s: %s", arch, err.msg);
		m->micro_batch = 1;
		CHECK(mt_model_forward(m, x, n, h, w, a2, NULL, &err) == MT_OK, "%s: %s", arch, err.msg);
		m->micro_batch = 0;
		CHECK(mt_model_freeze(m, "none", &err) == MT_OK, "%s", err.msg);
		for (int i = 0; i < m->n_nodes; i++)
			if (m->nodes[i].kind == MT_NODE_BN)
				m->params[m->nodes[i].p_bn_weight].trainable = 0;
		CHECK(mt_model_forward_train(m, x, n, h, w, a3, NULL, &err) == MT_OK, "%s: %s", arch, err.msg);
		mt_model_train_release(m);
		{
			double		e12 = rel_err(a2, a1, yl),
						e13 = rel_err(a3, a1, yl);

			CHECK(e12 < 1e-5 && e13 < 1e-5, "%s: micro-batch %.2e, training forward %.2e", arch, e12, e13);
			printf("  %-24s %dx%d: logits %dx%dx%dx3; micro-batch vs batch %.1e, training vs inference %.1e\n",
				   arch, h, w, n, h, w, e12, e13);
		}
		mt_model_free(m);
		free(x);
		free(a1);
		free(a2);
		free(a3);
		free(f1);
	}
}

/* Freezing "backbone" and encoder stages; init_unloaded. */
static void
test_freeze_init(void)
{
	mt_model   *m = mt_zoo_build("unet_resnet18_tconv", 2, 0, NULL);
	mt_model   *a = mt_zoo_build("unet_resnet18_tconv", 2, 0, NULL);
	mt_model   *src = mt_zoo_build("resnet18", 5, 0, NULL);
	mt_err		err;
	int			bad = 0,
				trainable = 0,
				same = 1,
				kept = 1,
				loaded = 1;

	CHECK(mt_model_freeze(m, "backbone", &err) == MT_OK, "%s", err.msg);
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		int			enc = strncmp(p->name, "encoder.", 8) == 0;
		int			learn = !p->is_buffer && !p->is_counter;

		if (p->trainable != (learn && !enc))
			bad++;
		trainable += p->trainable;
	}
	CHECK(bad == 0 && trainable > 0, "backbone: encoder frozen, decoder and head train (%d wrong)", bad);
	CHECK(mt_model_freeze(m, "encoder.layer3", &err) == MT_OK, "%s", err.msg);
	CHECK(!m->params[mt_model_find_param(m, "encoder.layer3.1.bn2.bias")].trainable &&
		  m->params[mt_model_find_param(m, "encoder.layer4.0.conv1.weight")].trainable &&
		  m->params[mt_model_find_param(m, "decoder.blocks.0.up.weight")].trainable,
		  "stage encoder.layer3");
	CHECK(mt_model_freeze(m, "layer3", &err) == MT_ERR_INVALID &&
		  strstr(err.detail, "encoder.layer3") != NULL, "unknown stage hint: %s", err.detail);

	/* a: everything from seed 5; m: the encoder from a resnet18, the rest from seed 5 */
	CHECK(mt_model_init_all(a, 5, &err) == MT_OK, "%s", err.msg);
	CHECK(mt_model_init_all(src, 99, &err) == MT_OK, "%s", err.msg);
	for (int i = 0; i < src->n_params; i++)
	{
		mt_param   *p = &src->params[i];
		char		name[MT_NAME_MAX + 16];
		int64_t		zero = 0;

		if (strncmp(p->name, "fc.", 3) == 0)
			continue;
		snprintf(name, sizeof(name), "%s%s", MT_ZOO_ENCODER_PREFIX, p->name);
		if (p->is_counter)
			CHECK(mt_model_set_param(m, name, 1, 0, NULL, &zero, 8, &err) == MT_OK, "%s", err.msg);
		else
			CHECK(mt_model_set_param(m, name, 0, p->ndim, p->shape, p->data,
									 p->numel * sizeof(float), &err) == MT_OK, "%s", err.msg);
	}
	CHECK(mt_model_check_complete(m, &err) == MT_ERR_SHAPE, "decoder missing before init");
	CHECK(mt_model_init_unloaded(m, 5, &err) == MT_OK, "%s", err.msg);
	CHECK(mt_model_check_complete(m, &err) == MT_OK, "%s", err.msg);
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];

		if (p->is_counter)
			continue;
		if (strncmp(p->name, "encoder.", 8) == 0)
		{
			int			j = mt_model_find_param(src, p->name + 8);

			kept &= j >= 0 && memcmp(p->data, src->params[j].data, p->numel * sizeof(float)) == 0;
		}
		else if (memcmp(p->data, a->params[i].data, p->numel * sizeof(float)) != 0)
		{
			if (same)
				printf("  init_unloaded: %s differs from init_all's\n", p->name);
			same = 0;
		}
		loaded &= p->loaded;
	}
	CHECK(kept && same && loaded, "init_unloaded: encoder kept %d, decoder as init_all %d", kept, same);
	{
		/* the ConvTranspose2d default bound and the Xavier head */
		mt_param   *up = &a->params[mt_model_find_param(a, "decoder.blocks.0.up.weight")];
		mt_param   *hd = &a->params[mt_model_find_param(a, "segmentation_head.weight")];
		mt_param   *hb = &a->params[mt_model_find_param(a, "segmentation_head.bias")];
		double		bu = 1.0 / sqrt(512.0 * 4),
					bh = sqrt(6.0 / (16 * 9 + 2 * 9)),
					mu = 0,
					mh = 0,
					mb = 0;

		for (size_t k = 0; k < up->numel; k++)
			mu = fmax(mu, fabs(up->data[k]));
		for (size_t k = 0; k < hd->numel; k++)
			mh = fmax(mh, fabs(hd->data[k]));
		for (size_t k = 0; k < hb->numel; k++)
			mb = fmax(mb, fabs(hb->data[k]));
		CHECK(mu <= bu && mu > 0.9 * bu && mh <= bh && mh > 0.8 * bh && mb == 0,
			  "init: tconv max %.4f (bound %.4f), head max %.4f (bound %.4f), head bias %g",
			  mu, bu, mh, bh, mb);
	}
	mt_model_free(m);
	mt_model_free(a);
	mt_model_free(src);
}

/* The segmentation loss of a whole model, for directional differences. */
typedef struct model_ctx
{
	mt_model   *m;
	const float *x;
	const uint8_t *mask;
	int			n,
				hw;
	float	   *logits;
} model_ctx;

static double
model_loss(void *p)
{
	model_ctx  *c = p;
	float		loss = 0;
	mt_err		err;

	c->m->prepared = 0;
	if (mt_model_forward_train(c->m, c->x, c->n, c->hw, c->hw, c->logits, NULL, &err) != MT_OK)
		fprintf(stderr, "forward_train: %s\n", err.msg);
	mt_model_train_release(c->m);
	if (mt_loss_segmentation(c->logits, c->mask, c->n, c->hw * c->hw, 2, NULL, 1, 1, &loss,
							 NULL, &err) != MT_OK)
		fprintf(stderr, "loss: %s\n", err.msg);
	return loss;
}

/*
 * A whole U-Net at 32x32, batch 2, CE + Dice: the gradient of whole tensors
 * against directional differences (as test_grad's whole-model checks: the
 * gradient's own direction and a random one, h |g| = target).
 */
static void
test_unet_backward(const char *arch, const char *freeze, int enc_bn_frozen,
				   const char *const *tensors, double target)
{
	mt_model   *m = mt_zoo_build(arch, 2, 0, NULL),
			   *m2;
	int			n = 2,
				hw = 32;
	size_t		pix = (size_t) n * hw * hw;
	float	   *x = rbuf(pix * 3, -1.5f, 1.5f);
	float	   *logits = zbuf(pix * 2),
			   *dlogits = zbuf(pix * 2),
				loss;
	uint8_t    *mask = malloc(pix);
	model_ctx	c;
	mt_err		err;
	double		worst;
	const char *worst_name;

	/* a blob of foreground per image, a few ignored pixels */
	for (int i = 0; i < n; i++)
		for (int y = 0; y < hw; y++)
			for (int xx = 0; xx < hw; xx++)
			{
				int			dy = y - 12 - 6 * i,
							dx = xx - 16;

				mask[((size_t) i * hw + y) * hw + xx] =
					(y * 7 + xx) % 31 == 0 ? 255 : dy * dy + dx * dx < 60;
			}
	c = (model_ctx) {m, x, mask, n, hw, logits};
	randomise(m, 3);
	CHECK(mt_model_freeze(m, freeze, &err) == MT_OK, "%s", err.msg);
	if (enc_bn_frozen)
		for (int i = 0; i < m->n_nodes; i++)
			if (m->nodes[i].kind == MT_NODE_BN &&
				strncmp(m->params[m->nodes[i].p_bn_weight].name, "encoder.", 8) == 0)
				m->params[m->nodes[i].p_bn_weight].trainable = 0;
	/* the same model, for mt_model_loss_backward below */
	m2 = mt_zoo_build(arch, 2, 0, NULL);
	CHECK(m2 != NULL && mt_model_copy_params(m, m2, &err) == MT_OK &&
		  mt_model_freeze(m2, freeze, &err) == MT_OK, "%s: %s", arch, err.msg);
	for (int i = 0; i < m->n_params; i++)
		m2->params[i].trainable = m->params[i].trainable;
	mt_model_zero_grad(m);
	CHECK(mt_model_forward_train(m, x, n, hw, hw, logits, NULL, &err) == MT_OK, "%s: %s", arch, err.msg);
	CHECK(mt_loss_segmentation(logits, mask, n, hw * hw, 2, NULL, 1, 1, &loss, dlogits, &err) == MT_OK,
		  "%s", err.msg);
	CHECK(mt_model_backward(m, dlogits, &err) == MT_OK, "%s: %s", arch, err.msg);
	/*
	 * the loss where the model trains (mt_model_loss_backward): on the CPU
	 * the same loss and gradients, bit for bit, and the pixel counts of the
	 * training's pixel accuracy
	 */
	{
		mt_loss_spec spec = {.seg = 1, .n = n, .masks = mask, .ce_weight = 1, .dice_weight = 1};
		float		loss2 = -1;
		int64_t		valid = 0,
					correct = 0;
		int			same = 1;

		mt_model_zero_grad(m2);
		CHECK(mt_model_forward_train(m2, x, n, hw, hw, NULL, NULL, &err) == MT_OK &&
			  mt_model_loss_backward(m2, &spec, &loss2, &err) == MT_OK, "%s: %s", arch, err.msg);
		for (int i = 0; i < m->n_params; i++)
			if ((m->params[i].grad == NULL) != (m2->params[i].grad == NULL) ||
				(m->params[i].grad != NULL &&
				 memcmp(m->params[i].grad, m2->params[i].grad, sizeof(float) * m->params[i].numel) != 0))
				same = 0;
		for (size_t i = 0; i < pix; i++)
		{
			int			best = logits[i * 2 + 1] > logits[i * 2];

			if (mask[i] == 255)
				continue;
			valid++;
			correct += best == mask[i];
		}
		CHECK(same && memcmp(&loss, &loss2, sizeof(float)) == 0,
			  "%s: mt_model_loss_backward gives the same loss (%.9g, %.9g) and gradients", arch, loss, loss2);
		CHECK(spec.px_valid == valid && spec.px_correct == correct,
			  "%s: labelled pixels %lld (want %lld), right %lld (want %lld)", arch,
			  (long long) spec.px_valid, (long long) valid, (long long) spec.px_correct, (long long) correct);
		mt_model_free(m2);
	}
	for (int i = 0; i < m->n_params; i++)
		if (strncmp(m->params[i].name, "encoder.", 8) == 0 && strcmp(freeze, "backbone") == 0)
			CHECK(m->params[i].grad == NULL, "%s: frozen %s has no gradient", arch, m->params[i].name);
	worst = model_dir_check(m, arch, tensors, target, model_loss, &c, &worst_name);
	CHECK(worst < 2e-2, "%s (%s) whole model: worst %.2e (%s)", arch, freeze, worst, worst_name);
	printf("  %-24s freeze %-9s%s loss %.4f, directional worst %.2e (%s)\n", arch, freeze,
		   enc_bn_frozen ? " (encoder BN on running statistics)" : "", loss, worst, worst_name);
	mt_model_free(m);
	free(x);
	free(logits);
	free(dlogits);
	free(mask);
}

static void
test_unet_models(void)
{
	static const char *const r18[] = {"encoder.conv1.weight", "encoder.bn1.bias",
		"encoder.layer1.0.conv2.weight", "encoder.layer3.0.downsample.0.weight",
		"decoder.blocks.0.conv1.0.weight", "decoder.blocks.1.conv1.1.weight",
		"decoder.blocks.3.conv2.0.weight", "decoder.blocks.4.conv1.0.weight",
	"segmentation_head.weight", "segmentation_head.bias", NULL};
	static const char *const r18t[] = {"decoder.blocks.0.up.weight", "decoder.blocks.0.up.bias",
		"decoder.blocks.2.up.weight", "decoder.blocks.4.up.weight", "decoder.blocks.4.up.bias",
	"decoder.blocks.4.conv2.1.bias", "segmentation_head.weight", NULL};
	static const char *const mv2t[] = {"encoder.features.0.0.weight", "encoder.features.1.conv.1.weight",
		"encoder.features.13.conv.2.weight", "encoder.features.18.1.bias",
		"decoder.blocks.0.up.weight", "decoder.blocks.3.up.bias", "decoder.blocks.2.conv1.0.weight",
	"segmentation_head.bias", NULL};

	/*
	 * With everything training, the encoder's deepest BN layers normalise
	 * over 2 values per channel at 32x32, batch 2 (1x1 maps): the loss is
	 * far too curved there for differences, so the encoder's BN layers run
	 * on running statistics (their weights frozen, biases training) and the
	 * decoder's on batch statistics.
	 */
	test_unet_backward("unet_resnet18", "none", 1, r18, 3e-4);
	test_unet_backward("unet_resnet18_tconv", "backbone", 0, r18t, 3e-4);
	test_unet_backward("unet_mobilenet_v2_tconv", "none", 1, mv2t, 3e-4);
}

int
main(int argc, char **argv)
{
	mt_err		err;

	(void) argc;
	(void) argv;
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("  (no OpenBLAS: %s; reference GEMM)\n", err.msg);
	test_kernels();
	test_loss();
	test_zoo_shapes();
	test_freeze_init();
	test_unet_models();
	return TEST_SUMMARY("unet");
}
