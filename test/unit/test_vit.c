/*
 * test_vit.c - the transformer half of the engine: layer norm, exact GELU,
 * multi-head self-attention, ViT token assembly and the bicubic resize of
 * position embeddings, each backward against central finite differences of
 * its forward; a small transformer graph's backward pass (through
 * mt_model_forward_train / mt_model_backward) against differences; and the
 * vit_b_16 of the zoo (tensor names, shapes, count, order, initialisation,
 * freezing, input sizes).
 *
 *   make unittest && test/bin/test_vit
 *
 * Error measure of a gradient check: max |finite difference - analytic|
 * over the checked elements divided by max |analytic| over the tensor.
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

/* ---- layer norm ------------------------------------------------------------ */

typedef struct ln_ctx
{
	size_t		rows;
	int			c;
	float	   *x,
			   *g,
			   *b;
} ln_ctx;

static void
ln_fwd(void *p, float *y)
{
	ln_ctx	   *c = p;

	be->layer_norm(c->rows, c->c, c->x, c->g, c->b, 1e-6f, y);
}

static void
test_layer_norm(void)
{
	ln_ctx		c = {6, 12, NULL, NULL, NULL};
	size_t		len = c.rows * c.c;
	float	   *r,
			   *y,
			   *dx,
			   *dg,
			   *db;
	double		ex,
				eg,
				eb,
				mean = 0,
				var = 0;

	c.x = rbuf(len, -2, 3);
	c.g = rbuf(c.c, 0.5f, 1.5f);
	c.b = rbuf(c.c, -0.5f, 0.5f);
	r = rbuf(len, -1, 1);
	y = zbuf(len);
	dx = zbuf(len);
	dg = zbuf(c.c);
	db = zbuf(c.c);

	/* forward against the formula on row 0 */
	ln_fwd(&c, y);
	for (int j = 0; j < c.c; j++)
		mean += c.x[j];
	mean /= c.c;
	for (int j = 0; j < c.c; j++)
		var += (c.x[j] - mean) * (c.x[j] - mean);
	var /= c.c;
	ex = 0;
	for (int j = 0; j < c.c; j++)
		ex = fmax(ex, fabs(y[j] - ((c.x[j] - mean) / sqrt(var + 1e-6) * c.g[j] + c.b[j])));
	CHECK(ex < 1e-5, "layer norm forward vs formula: %.2e", ex);

	be->layer_norm_backward(c.rows, c.c, c.x, r, c.g, 1e-6f, dx, dg, db);
	ex = fd_check(ln_fwd, &c, c.x, len, dx, r, y, len, (int) len, 1e-2);
	eg = fd_check(ln_fwd, &c, c.g, c.c, dg, r, y, len, c.c, 1e-2);
	eb = fd_check(ln_fwd, &c, c.b, c.c, db, r, y, len, c.c, 1e-2);
	CHECK(ex < 2e-3 && eg < 2e-3 && eb < 2e-3, "layer norm: dX %.2e dgamma %.2e dbeta %.2e",
		  ex, eg, eb);
	printf("  %-40s dX %.2e dgamma %.2e dbeta %.2e\n", "layer norm", ex, eg, eb);

	/* NULL outputs are skipped; dx accumulates */
	memset(dg, 0, sizeof(float) * c.c);
	be->layer_norm_backward(c.rows, c.c, c.x, r, c.g, 1e-6f, NULL, dg, NULL);
	ex = fd_check(ln_fwd, &c, c.g, c.c, dg, r, y, len, c.c, 1e-2);
	CHECK(ex < 2e-3, "layer norm dgamma alone: %.2e", ex);
	free(c.x);
	free(c.g);
	free(c.b);
	free(r);
	free(y);
	free(dx);
	free(dg);
	free(db);
}

/* ---- GELU ------------------------------------------------------------------ */

typedef struct gelu_ctx
{
	size_t		len;
	float	   *x;
} gelu_ctx;

static void
gelu_fwd(void *p, float *y)
{
	gelu_ctx   *c = p;

	be->gelu(c->len, c->x, y);
}

static void
test_gelu(void)
{
	gelu_ctx	c = {200, NULL};
	float	   *r = rbuf(c.len, -1, 1),
			   *y = zbuf(c.len),
			   *dx = zbuf(c.len);
	/* values from torch.nn.functional.gelu (approximate='none') */
	static const float xs[5] = {-3.0f, -1.0f, 0.0f, 0.5f, 2.0f};
	static const float want[5] = {-0.00404969f, -0.15865526f, 0.0f, 0.34573123f, 1.95449972f};
	float		got[5];
	double		e = 0;

	be->gelu(5, xs, got);
	for (int i = 0; i < 5; i++)
		e = fmax(e, fabs(got[i] - want[i]));
	CHECK(e < 1e-6, "gelu values vs torch: %.2e", e);

	c.x = rbuf(c.len, -4, 4);
	be->gelu_backward(c.len, c.x, r, dx);
	e = fd_check(gelu_fwd, &c, c.x, c.len, dx, r, y, c.len, (int) c.len, 1e-2);
	CHECK(e < 2e-3, "gelu: dX %.2e", e);
	printf("  %-40s dX %.2e\n", "GELU (erf)", e);
	free(c.x);
	free(r);
	free(y);
	free(dx);
}

/* ---- attention ------------------------------------------------------------- */

typedef struct att_ctx
{
	int			n,
				t,
				d,
				heads;
	float	   *qkv;
} att_ctx;

static void
att_fwd(void *p, float *y)
{
	att_ctx    *c = p;

	be->attention(c->n, c->t, c->d, c->heads, c->qkv, y, NULL);
}

/* Attention of one head of one sequence in double, straight from the formula. */
static void
att_ref(const att_ctx *c, int s, int j, double *y)
{
	int			hd = c->d / c->heads;
	const float *q = c->qkv + (size_t) s * c->t * 3 * c->d;

	for (int i = 0; i < c->t; i++)
	{
		double		sc[16],
					mx = -1e300,
					sum = 0;

		for (int k = 0; k < c->t; k++)
		{
			double		v = 0;

			for (int e = 0; e < hd; e++)
				v += (double) q[i * 3 * c->d + j * hd + e] * q[k * 3 * c->d + c->d + j * hd + e];
			sc[k] = v / sqrt((double) hd);
			mx = fmax(mx, sc[k]);
		}
		for (int k = 0; k < c->t; k++)
			sum += (sc[k] = exp(sc[k] - mx));
		for (int e = 0; e < hd; e++)
		{
			double		v = 0;

			for (int k = 0; k < c->t; k++)
				v += sc[k] / sum * q[k * 3 * c->d + 2 * c->d + j * hd + e];
			y[i * hd + e] = v;
		}
	}
}

static void
test_attention(void)
{
	att_ctx		c = {2, 5, 8, 2, NULL};
	size_t		xl = (size_t) c.n * c.t * 3 * c.d,
				yl = (size_t) c.n * c.t * c.d;
	float	   *r = rbuf(yl, -1, 1),
			   *y = zbuf(yl),
			   *dx = zbuf(xl);
	double		ref[5 * 4],
				e = 0;
	mt_err		err;

	c.qkv = rbuf(xl, -1.5f, 1.5f);
	CHECK(be->attention(c.n, c.t, c.d, c.heads, c.qkv, y, &err) == MT_OK, "%s", err.msg);
	for (int s = 0; s < c.n; s++)
		for (int j = 0; j < c.heads; j++)
		{
			int			hd = c.d / c.heads;

			att_ref(&c, s, j, ref);
			for (int i = 0; i < c.t; i++)
				for (int k = 0; k < hd; k++)
					e = fmax(e, fabs(y[((size_t) s * c.t + i) * c.d + j * hd + k] - ref[i * hd + k]));
		}
	CHECK(e < 1e-5, "attention forward vs formula: %.2e", e);

	CHECK(be->attention_backward(c.n, c.t, c.d, c.heads, c.qkv, r, dx, &err) == MT_OK, "%s", err.msg);
	e = fd_check(att_fwd, &c, c.qkv, xl, dx, r, y, yl, (int) xl, 1e-2);
	CHECK(e < 2e-3, "attention: dQKV %.2e", e);
	printf("  %-40s dQKV %.2e (2 sequences, 5 tokens, 2 heads)\n", "multi-head self-attention", e);
	CHECK(be->attention(1, 2, 7, 2, c.qkv, y, &err) == MT_ERR_INVALID,
		  "7 channels do not split into 2 heads");
	free(c.qkv);
	free(r);
	free(y);
	free(dx);
}

/* ---- bicubic resize and token assembly ------------------------------------- */

static void
test_resize(void)
{
	int			ih = 5,
				iw = 4,
				oh = 3,
				ow = 7,
				c = 3;
	size_t		il = (size_t) ih * iw * c,
				ol = (size_t) oh * ow * c;
	float	   *src = rbuf(il, -1, 1),
			   *dst = zbuf(ol),
			   *g = rbuf(ol, -1, 1),
			   *adj = zbuf(il),
			   *cst = zbuf(il);
	double		lhs,
				rhs,
				e = 0;

	/* the adjoint: <A x, g> == <x, A^T g> */
	mt_bicubic_resize_ac(ih, iw, oh, ow, c, src, dst);
	mt_bicubic_resize_ac_adjoint(ih, iw, oh, ow, c, g, adj);
	lhs = dot(dst, g, ol);
	rhs = dot(src, adj, il);
	CHECK(fabs(lhs - rhs) < 1e-5 * fmax(1.0, fabs(lhs)), "resize adjoint: %.8g vs %.8g", lhs, rhs);
	/* align_corners keeps the four corners */
	for (int ch = 0; ch < c; ch++)
	{
		e = fmax(e, fabs(dst[ch] - src[ch]));
		e = fmax(e, fabs(dst[(size_t) (ow - 1) * c + ch] - src[(size_t) (iw - 1) * c + ch]));
		e = fmax(e, fabs(dst[((size_t) (oh - 1) * ow) * c + ch] - src[((size_t) (ih - 1) * iw) * c + ch]));
		e = fmax(e, fabs(dst[((size_t) oh * ow - 1) * c + ch] - src[((size_t) ih * iw - 1) * c + ch]));
	}
	CHECK(e < 1e-6, "resize keeps the corners: %.2e", e);
	/* constants stay constant (the weights sum to 1) */
	for (size_t i = 0; i < il; i++)
		cst[i] = 0.75f;
	mt_bicubic_resize_ac(ih, iw, oh, ow, c, cst, dst);
	e = 0;
	for (size_t i = 0; i < ol; i++)
		e = fmax(e, fabs(dst[i] - 0.75f));
	CHECK(e < 1e-6, "resize of a constant: %.2e", e);
	/*
	 * 4 -> 3 along one axis: position 1 samples at 1.5, weights of
	 * t = 0.5: (-0.09375, 0.59375, 0.59375, -0.09375) on rows 0..3.
	 */
	{
		float		col[4] = {1.0f, 2.0f, 4.0f, 8.0f},
					out[3];

		mt_bicubic_resize_ac(4, 1, 3, 1, 1, col, out);
		CHECK(fabs(out[0] - 1.0f) < 1e-6 && fabs(out[2] - 8.0f) < 1e-6 &&
			  fabs(out[1] - (-0.09375 * 1 + 0.59375 * 2 + 0.59375 * 4 - 0.09375 * 8)) < 1e-5,
			  "resize 4 -> 3: %g %g %g", out[0], out[1], out[2]);
	}
	/* same size: identity */
	mt_bicubic_resize_ac(ih, iw, ih, iw, c, src, adj);
	CHECK(memcmp(src, adj, il * sizeof(float)) == 0, "resize to the same size is the identity");
	free(src);
	free(dst);
	free(g);
	free(adj);
	free(cst);
}

typedef struct tok_ctx
{
	int			n,
				p,
				d;
	float	   *patches,
			   *cls,
			   *pos;
} tok_ctx;

static void
tok_fwd(void *q, float *y)
{
	tok_ctx    *c = q;

	be->vit_tokens(c->n, c->p, c->d, c->patches, c->cls, c->pos, y);
}

static void
test_tokens(void)
{
	tok_ctx		c = {2, 4, 3, NULL, NULL, NULL};
	size_t		pl = (size_t) c.n * c.p * c.d,
				yl = (size_t) c.n * (c.p + 1) * c.d,
				posl = (size_t) (c.p + 1) * c.d;
	float	   *r = rbuf(yl, -1, 1),
			   *y = zbuf(yl),
			   *dp = zbuf(pl),
			   *dc = zbuf(c.d),
			   *dpos = zbuf(posl);
	double		e1,
				e2,
				e3;

	c.patches = rbuf(pl, -1, 1);
	c.cls = rbuf(c.d, -1, 1);
	c.pos = rbuf(posl, -1, 1);
	be->vit_tokens_backward(c.n, c.p, c.d, r, dp, dc, dpos);
	e1 = fd_check(tok_fwd, &c, c.patches, pl, dp, r, y, yl, (int) pl, 1e-2);
	e2 = fd_check(tok_fwd, &c, c.cls, c.d, dc, r, y, yl, c.d, 1e-2);
	e3 = fd_check(tok_fwd, &c, c.pos, posl, dpos, r, y, yl, (int) posl, 1e-2);
	CHECK(e1 < 2e-3 && e2 < 2e-3 && e3 < 2e-3, "tokens: dpatches %.2e dcls %.2e dpos %.2e",
		  e1, e2, e3);
	printf("  %-40s dpatches %.2e dcls %.2e dpos %.2e\n", "token assembly", e1, e2, e3);
	free(c.patches);
	free(c.cls);
	free(c.pos);
	free(r);
	free(y);
	free(dp);
	free(dc);
	free(dpos);
}

/* ---- a small transformer graph ------------------------------------------- */

static int
add_p(mt_model *m, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d)
{
	int64_t		shape[4] = {a, b, c, d};

	return mt_model_add_param(m, name, ndim, shape, 0);
}

static int
g_ln(mt_model *m, const char *name, int in, int d)
{
	mt_node		n = mt_node_init(MT_NODE_LAYERNORM, in);
	char		buf[64];

	n.eps = 1e-6f;
	snprintf(buf, sizeof(buf), "%s.weight", name);
	n.p_weight = add_p(m, buf, 1, d, 0, 0, 0);
	snprintf(buf, sizeof(buf), "%s.bias", name);
	n.p_bias = add_p(m, buf, 1, d, 0, 0, 0);
	return mt_model_add_node(m, &n);
}

static int
g_lin(mt_model *m, mt_node_kind kind, const char *name, int in, int fin, int fout)
{
	mt_node		n = mt_node_init(kind, in);
	char		buf[64];

	n.in_features = fin;
	n.out_features = fout;
	snprintf(buf, sizeof(buf), "%s.weight", name);
	n.p_weight = add_p(m, buf, 2, fout, fin, 0, 0);
	snprintf(buf, sizeof(buf), "%s.bias", name);
	n.p_bias = add_p(m, buf, 1, fout, 0, 0, 0);
	return mt_model_add_node(m, &n);
}

static int
g_node(mt_model *m, mt_node_kind kind, int in0, int in1)
{
	mt_node		n = mt_node_init(kind, in0);

	n.in1 = in1;
	n.heads = 2;
	return mt_model_add_node(m, &n);
}

/*
 * A one-block pre-norm transformer with patch 4, width 8, 2 heads, its
 * position embedding held for a 3x3 grid: on an 8x8 input (2x2 grid) and a
 * 12x16 input (3x4 grid) the embedding is resized both ways.
 */
static mt_model *
tiny_vit(void)
{
	mt_model   *m = mt_model_alloc("tiny_vit", 32, 64, NULL);
	mt_node		n;
	int			x,
				y,
				cls;

	x = g_node(m, MT_NODE_INPUT, -1, -1);
	cls = add_p(m, "class_token", 3, 1, 1, 8, 0);
	n = mt_node_init(MT_NODE_CONV, x);
	n.cin = 3;
	n.cout = 8;
	n.kh = n.kw = n.sh = n.sw = 4;
	n.p_weight = add_p(m, "conv_proj.weight", 4, 8, 3, 4, 4);
	n.p_bias = add_p(m, "conv_proj.bias", 1, 8, 0, 0, 0);
	x = mt_model_add_node(m, &n);
	n = mt_node_init(MT_NODE_TOKENS, x);
	n.patch = 4;
	n.pos_grid = 3;
	n.p_weight = cls;
	n.p_bias = add_p(m, "pos", 3, 1, 10, 8, 0);
	x = mt_model_add_node(m, &n);
	y = g_ln(m, "ln_1", x, 8);
	y = g_lin(m, MT_NODE_TOKEN_LINEAR, "in_proj", y, 8, 24);
	y = g_node(m, MT_NODE_ATTENTION, y, -1);
	y = g_lin(m, MT_NODE_TOKEN_LINEAR, "out_proj", y, 8, 8);
	x = g_node(m, MT_NODE_ADD, y, x);
	y = g_ln(m, "ln_2", x, 8);
	y = g_lin(m, MT_NODE_TOKEN_LINEAR, "mlp.0", y, 8, 16);
	y = g_node(m, MT_NODE_GELU, y, -1);
	y = g_lin(m, MT_NODE_TOKEN_LINEAR, "mlp.3", y, 16, 8);
	x = g_node(m, MT_NODE_ADD, x, y);
	x = g_node(m, MT_NODE_CLASS_TOKEN, x, -1);
	x = g_ln(m, "ln", x, 8);
	m->features_node = x;
	m->feature_dim = 8;
	m->logits_node = g_lin(m, MT_NODE_LINEAR, "head", x, 8, 3);
	m->num_classes = 3;
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];

		p->data = rbuf(p->numel, -0.5f, 0.5f);
		if (strstr(p->name, "ln") != NULL && strstr(p->name, "weight") != NULL)
			for (size_t k = 0; k < p->numel; k++)
				p->data[k] += 1.0f;
		p->loaded = 1;
	}
	return m;
}

/* Backward once with dlogits = r; every trainable tensor against differences. */
static void
graph_check(const char *what, mt_model *m, int n, int h, int w, int expect_tensors)
{
	float	   *x = rbuf((size_t) n * h * w * 3, -1, 1);
	graph_ctx	c = {m, x, n, h, w};
	size_t		yl = (size_t) n * 3;
	float	   *r = rbuf(yl, -1, 1),
			   *y = zbuf(yl),
			   *y2 = zbuf(yl);
	double		worst = 0,
				e = 0;
	const char *worst_name = "";
	int			checked = 0;
	mt_err		err;

	mt_model_zero_grad(m);
	CHECK(mt_model_forward_train(m, x, n, h, w, y, NULL, &err) == MT_OK, "%s: %s", what, err.msg);
	CHECK(mt_model_backward(m, r, &err) == MT_OK, "%s: %s", what, err.msg);
	/* inference gives the same logits */
	CHECK(mt_model_forward(m, x, n, h, w, y2, NULL, &err) == MT_OK, "%s: %s", what, err.msg);
	for (size_t i = 0; i < yl; i++)
		e = fmax(e, fabs(y[i] - y2[i]));
	CHECK(e < 1e-5, "%s: training and inference logits differ by %.2e", what, e);
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		double		ep;

		if (!p->trainable)
			continue;
		if (p->grad == NULL)
		{
			CHECK(0, "%s: no gradient for %s", what, p->name);
			continue;
		}
		ep = fd_check(graph_fwd, &c, p->data, p->numel, p->grad, r, y, yl, 40, 1e-2);
		checked++;
		if (ep > worst)
		{
			worst = ep;
			worst_name = p->name;
		}
	}
	CHECK(checked == expect_tensors && worst < 5e-3, "%s: worst %.2e (%s) over %d tensors",
		  what, worst, worst_name, checked);
	printf("  %-40s worst %.2e (%s), %d tensors\n", what, worst, worst_name, checked);
	free(x);
	free(r);
	free(y);
	free(y2);
}

static void
test_graph(void)
{
	mt_model   *m = tiny_vit();
	mt_err		err;
	float		x[12 * 12 * 3] = {0},
				logits[3];

	CHECK(mt_model_freeze(m, "none", &err) == MT_OK, "%s", err.msg);
	graph_check("tiny ViT 8x8 (pos 3x3 -> 2x2)", m, 2, 8, 8, m->n_params);
	graph_check("tiny ViT 12x16 (pos 3x3 -> 3x4)", m, 2, 12, 16, m->n_params);
	graph_check("tiny ViT 12x12 (pos as stored)", m, 1, 12, 12, m->n_params);
	CHECK(mt_model_freeze(m, "mlp.0", &err) == MT_OK, "%s", err.msg);
	graph_check("tiny ViT frozen up to mlp.0", m, 2, 8, 8, 6);
	/* not a multiple of the patch size */
	CHECK(mt_model_forward(m, x, 1, 10, 12, logits, NULL, &err) == MT_ERR_SHAPE,
		  "10x12 input rejected");
	CHECK(strstr(err.msg, "multiple of 4") != NULL, "error says why: %s", err.msg);
	mt_model_free(m);
}

/* ---- the zoo's vit_b_16 ---------------------------------------------------- */

static void
test_zoo_vit(void)
{
	mt_err		err;
	mt_model   *m = mt_zoo_build("vit_b_16", 4, 0, &err);
	size_t		total = 0,
				values = 0;
	float	   *x,
				logits[8],
				feat[768];
	int			ok = 1;

	CHECK(m != NULL, "build vit_b_16: %s", m ? "" : err.msg);
	if (m == NULL)
		return;
	for (int i = 0; i < m->n_params; i++)
		total += m->params[i].numel;
	/* torchvision: 152 tensors, 86,567,656 values with 1000 classes */
	CHECK(m->n_params == 152, "vit_b_16 has %d tensors", m->n_params);
	CHECK(total == 86567656 - 1000 * 769 + 4 * 769, "vit_b_16 holds %zu values", total);
	CHECK(strcmp(m->params[0].name, "class_token") == 0 &&
		  strcmp(m->params[3].name, "encoder.pos_embedding") == 0 &&
		  m->params[3].shape[1] == 197 &&
		  strcmp(m->params[6].name, "encoder.layers.encoder_layer_0.self_attention.in_proj_weight") == 0 &&
		  strcmp(m->params[14].name, "encoder.layers.encoder_layer_0.mlp.3.weight") == 0 &&
		  strcmp(m->params[150].name, "heads.head.weight") == 0,
		  "vit_b_16 tensor order: %s %s %s", m->params[0].name, m->params[6].name,
		  m->params[150].name);
	CHECK(strcmp(mt_zoo_head_weight("vit_b_16"), "heads.head.weight") == 0, "head name");

	CHECK(mt_model_init_all(m, 7, &err) == MT_OK, "init_all: %s", err.msg);
	for (size_t k = 0; k < m->params[150].numel; k++)
		ok &= m->params[150].data[k] == 0.0f;
	CHECK(ok, "heads.head.weight starts at zero as in torchvision");
	ok = 1;
	for (size_t k = 0; k < 768; k++)
		ok &= m->params[0].data[k] == 0.0f && m->params[4].data[k] == 1.0f;
	CHECK(ok, "class token zero, ln_1.weight one");
	CHECK(m->params[3].data[5] != 0.0f && fabs(m->params[3].data[5]) < 0.2f,
		  "position embedding normal(0, 0.02): %g", m->params[3].data[5]);

	CHECK(mt_model_freeze(m, "encoder.layers.encoder_layer_9", &err) == MT_OK, "%s", err.msg);
	CHECK(mt_model_trainable_count(m, &values) == 2 * 12 + 2 + 2, "stage freeze leaves %d tensors",
		  mt_model_trainable_count(m, NULL));
	CHECK(mt_model_freeze(m, "conv_proj", &err) == MT_OK, "%s", err.msg);
	CHECK(!m->params[0].trainable && !m->params[1].trainable && m->params[3].trainable,
		  "freeze conv_proj: class_token and conv_proj frozen, pos_embedding trains");
	CHECK(mt_model_freeze(m, "backbone", &err) == MT_OK &&
		  mt_model_trainable_count(m, NULL) == 2, "backbone freeze: the head only");

	/* a forward pass at 32x32 (2x2 grid), and sizes that are not multiples of 16 */
	x = rbuf(32 * 32 * 3, -1, 1);
	for (size_t k = 0; k < m->params[150].numel; k++)
		m->params[150].data[k] = 0.01f * (float) (k % 7);
	m->prepared = 0;
	CHECK(mt_model_forward(m, x, 1, 32, 32, logits, feat, &err) == MT_OK, "forward 32x32: %s", err.msg);
	CHECK(isfinite(logits[0]) && isfinite(feat[0]) && logits[0] != logits[1], "finite logits %g %g",
		  logits[0], logits[1]);
	CHECK(mt_model_forward(m, x, 1, 24, 24, logits, NULL, &err) == MT_ERR_SHAPE &&
		  strstr(err.msg, "multiple of 16") != NULL, "24x24 rejected: %s", err.msg);
	free(x);
	mt_model_free(m);

	/* input sizes checked before a model is created */
	CHECK(mt_zoo_check_input("vit_b_16", 96, 96, &err) == MT_OK, "96 accepted");
	CHECK(mt_zoo_check_input("vit_b_16", 1024, 1024, &err) == MT_OK, "1024 accepted");
	CHECK(mt_zoo_check_input("vit_b_16", 40, 40, &err) == MT_ERR_INVALID &&
		  strstr(err.msg, "multiple of 16") != NULL, "40 refused: %s", err.msg);
	CHECK(mt_zoo_check_input("vit_b_16", 1040, 1040, &err) == MT_ERR_LIMIT,
		  "1040 over the patch limit: %s", err.msg);
	CHECK(mt_zoo_check_input("resnet18", 40, 40, &err) == MT_OK, "resnet18 takes 40");
}

int
main(int argc, char **argv)
{
	mt_err		err;

	(void) argc;
	(void) argv;
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("  (no OpenBLAS: %s; reference GEMM)\n", err.msg);
	test_layer_norm();
	test_gelu();
	test_attention();
	test_resize();
	test_tokens();
	test_graph();
	test_zoo_vit();
	return TEST_SUMMARY("vit");
}
