/*
 * graph_vit.c - the transformer nodes of a model graph: shapes, forward and
 * backward of token assembly, layer norm, per-token linear layers,
 * multi-head self-attention, GELU and class-token selection.
 *
 * A token sequence lives as an N x 1 x T x D activation (h = 1, w = T,
 * c = D), so the generic shape plumbing and the residual additions work on
 * it unchanged; per-token layers are GEMMs over N * T rows.
 *
 * Position embeddings.  The TOKENS node's weights hold torchvision's
 * encoder.pos_embedding for its image_size (pos_grid x pos_grid patches
 * plus the class token).  For an input of another size (a multiple of the
 * patch size) the patch part is resized to the input's grid on every pass,
 * exactly as torchvision's interpolate_embeddings does when a checkpoint is
 * loaded for another image_size (bicubic, align_corners=True, class token
 * kept); in training the gradient flows back through that (linear) resize
 * into the stored embedding.
 */
#include "graph.h"

#include <string.h>

/*
 * Attention scores are tokens x tokens floats: at most 4097^2 (64 MB),
 * about a second per block on two cores.
 */
#define MT_VIT_MAX_PATCHES 4096

int
mt_node_is_transformer(mt_node_kind kind)
{
	return kind >= MT_NODE_TOKENS && kind <= MT_NODE_CLASS_TOKEN;
}

/* Output shape of a transformer node. */
int
mt_vit_node_shape(const mt_model *m, const mt_node *nd, mt_shape3 in, int h, int w,
				  mt_shape3 *out, mt_err *err)
{
	switch (nd->kind)
	{
		case MT_NODE_TOKENS:
			if (nd->patch <= 0 || h % nd->patch != 0 || w % nd->patch != 0)
				return mt_seterr(err, MT_ERR_SHAPE,
								 "%s needs an input size that is a multiple of %d, not %dx%d",
								 m->arch, nd->patch, h, w);
			if ((h / nd->patch) * (w / nd->patch) > MT_VIT_MAX_PATCHES)
				return mt_seterr(err, MT_ERR_LIMIT,
								 "%s takes at most %d patches (1024x1024 pixels), not %dx%d",
								 m->arch, MT_VIT_MAX_PATCHES, h / nd->patch, w / nd->patch);
			if (in.h != h / nd->patch || in.w != w / nd->patch)
				return mt_seterr(err, MT_ERR_SHAPE, "patch grid %dx%d does not match a %dx%d input",
								 in.h, in.w, h, w);
			*out = (mt_shape3) {1, 1 + in.h * in.w, in.c};
			return MT_OK;
		case MT_NODE_TOKEN_LINEAR:
			if (in.c != nd->in_features)
				return mt_seterr(err, MT_ERR_SHAPE, "linear layer expects %d features, got %d",
								 nd->in_features, in.c);
			*out = (mt_shape3) {in.h, in.w, nd->out_features};
			return MT_OK;
		case MT_NODE_ATTENTION:
			if (nd->heads <= 0 || in.c % (3 * nd->heads) != 0)
				return mt_seterr(err, MT_ERR_SHAPE, "attention input of %d channels does not split into q, k, v of %d heads",
								 in.c, nd->heads);
			*out = (mt_shape3) {in.h, in.w, in.c / 3};
			return MT_OK;
		case MT_NODE_CLASS_TOKEN:
			*out = (mt_shape3) {1, 1, in.c};
			return MT_OK;
		default:
			*out = in;
			return MT_OK;
	}
}

/* The position embedding for a gh x gw patch grid ((1 + gh * gw) x d, malloc'd). */
static float *
resized_pos(const mt_node *nd, const float *pos, int gh, int gw, int d)
{
	float	   *out = mt_malloc(sizeof(float) * (size_t) (1 + gh * gw) * d);

	if (out == NULL)
		return NULL;
	memcpy(out, pos, sizeof(float) * d);
	mt_bicubic_resize_ac(nd->pos_grid, nd->pos_grid, gh, gw, d, pos + d, out + d);
	return out;
}

/* Whether a TOKENS node's stored grid differs from the input's (in: its input shape). */
static int
pos_resized(const mt_node *nd, mt_shape3 in)
{
	return in.h != nd->pos_grid || in.w != nd->pos_grid;
}

size_t
mt_vit_node_scratch(const mt_node *nd, mt_shape3 in)
{
	size_t		p1 = (size_t) 1 + (size_t) in.h * in.w,
				g1 = (size_t) 1 + (size_t) nd->pos_grid * nd->pos_grid;

	if (nd->kind != MT_NODE_TOKENS || !pos_resized(nd, in))
		return 0;
	return p1 * g1 + p1 * (size_t) in.c;
}

/*
 * On a device the resize runs as one GEMM: the matrix R ((1 + p) x (1 +
 * g^2), row 0 keeping the class token's entry, the others the bicubic
 * weights of mt_bicubic_resize_ac), made on the host and uploaded into the
 * node's scratch, and the resized embedding (R pos) or its gradient right
 * after it (*after).  Returns R's device copy (*cols its columns), or NULL
 * with *rc set.
 */
static float *
device_resize_matrix(const mt_backend *be, const mt_node *nd, mt_shape3 in, float *scratch,
					 float **after, int *cols_out, int *rc, mt_err *err)
{
	int			g = nd->pos_grid,
				p = in.h * in.w;
	size_t		g2 = (size_t) g * g,
				rows = (size_t) 1 + p,
				cols = 1 + g2;
	float	   *eye = mt_calloc(g2 * g2, sizeof(float)),
			   *res = mt_malloc(sizeof(float) * (size_t) p * g2),
			   *r = mt_calloc(rows * cols, sizeof(float));

	*rc = MT_OK;
	if (eye == NULL || res == NULL || r == NULL)
		*rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory resizing position embeddings");
	else
	{
		/* the resize of the g^2 unit grids, one per channel, gives R's columns */
		for (size_t k = 0; k < g2; k++)
			eye[k * g2 + k] = 1.0f;
		mt_bicubic_resize_ac(g, g, in.h, in.w, (int) g2, eye, res);
		r[0] = 1.0f;
		for (int i = 0; i < p; i++)
			memcpy(r + (size_t) (1 + i) * cols + 1, res + (size_t) i * g2, sizeof(float) * g2);
		*rc = be->upload(scratch, r, sizeof(float) * rows * cols, err);
	}
	mt_free(eye);
	mt_free(res);
	mt_free(r);
	*after = scratch + rows * cols;
	*cols_out = (int) cols;
	return *rc == MT_OK ? scratch : NULL;
}

/* Forward of a transformer node. */
int
mt_vit_node_run(const mt_model *m, const mt_backend *be, const mt_node *nd,
				const float *wt, const float *bs, int n, mt_shape3 in,
				const float *a, float *y, float *scratch, mt_err *err)
{
	size_t		rows = (size_t) n * in.h * in.w;

	(void) m;
	switch (nd->kind)
	{
		case MT_NODE_TOKENS:
			{
				int			p = in.h * in.w;
				float	   *pos;

				if (!pos_resized(nd, in))
				{
					be->vit_tokens(n, p, in.c, a, wt, bs, y);
					return MT_OK;
				}
				if (be->mem_alloc != NULL)
				{
					/* a device: R pos in the scratch, after R */
					int			rc,
								cols;
					float	   *r = device_resize_matrix(be, nd, in, scratch, &pos, &cols, &rc, err);

					if (r == NULL)
						return rc;
					be->gemm(0, 0, 1 + p, in.c, cols, 1.0f, r, cols, bs, in.c, 0.0f, pos, in.c);
					be->vit_tokens(n, p, in.c, a, wt, pos, y);
					return MT_OK;
				}
				if ((pos = resized_pos(nd, bs, in.h, in.w, in.c)) == NULL)
					return mt_seterr(err, MT_ERR_NOMEM, "out of memory resizing position embeddings");
				be->vit_tokens(n, p, in.c, a, wt, pos, y);
				mt_free(pos);
				return MT_OK;
			}
		case MT_NODE_LAYERNORM:
			be->layer_norm(rows, in.c, a, wt, bs, nd->eps, y);
			return MT_OK;
		case MT_NODE_TOKEN_LINEAR:
			be->linear((int) rows, nd->in_features, nd->out_features, a, wt, bs, y);
			return MT_OK;
		case MT_NODE_ATTENTION:
			return be->attention(n, in.h * in.w, in.c / 3, nd->heads, a, y, err);
		case MT_NODE_GELU:
			be->gelu(rows * in.c, a, y);
			return MT_OK;
		case MT_NODE_CLASS_TOKEN:
			be->class_token(n, in.h * in.w, in.c, a, y);
			return MT_OK;
		default:
			return mt_seterr(err, MT_ERR_INTERNAL, "node kind %d is not a transformer node",
							 (int) nd->kind);
	}
}

/* Whether the node's backward reads its input. */
int
mt_vit_node_reads_input(const mt_node *nd, int weight_trains)
{
	switch (nd->kind)
	{
		case MT_NODE_LAYERNORM:
		case MT_NODE_ATTENTION:
		case MT_NODE_GELU:
			return 1;
		case MT_NODE_TOKEN_LINEAR:
			return weight_trains;
		default:
			return 0;
	}
}

/* Backward of a transformer node (see graph.h). */
int
mt_vit_node_backward(const mt_model *m, const mt_backend *be, const mt_node *nd,
					 const float *wt, int n, mt_shape3 in, const float *x,
					 const float *dy, float *dx, float *dw, float *db, float *scratch,
					 mt_err *err)
{
	size_t		rows = (size_t) n * in.h * in.w;

	(void) m;
	switch (nd->kind)
	{
		case MT_NODE_TOKENS:
			{
				int			p = in.h * in.w,
							d = in.c;
				float	   *dpos = NULL;

				if (db == NULL || !pos_resized(nd, in))
				{
					be->vit_tokens_backward(n, p, d, dy, dx, dw, db);
					return MT_OK;
				}
				if (be->mem_alloc != NULL)
				{
					/* a device: db += R^T dpos, R and dpos in the scratch */
					int			rc,
								cols;
					float	   *r = device_resize_matrix(be, nd, in, scratch, &dpos, &cols, &rc, err);

					if (r == NULL ||
						(rc = be->mem_zero(dpos, sizeof(float) * ((size_t) 1 + p) * d, err)) != MT_OK)
						return rc;
					be->vit_tokens_backward(n, p, d, dy, dx, dw, dpos);
					be->gemm(1, 0, cols, d, 1 + p, 1.0f, r, cols, dpos, d, 1.0f, db, d);
					return MT_OK;
				}
				if ((dpos = mt_calloc((size_t) (1 + p) * d, sizeof(float))) == NULL)
					return mt_seterr(err, MT_ERR_NOMEM, "out of memory in backward pass");
				be->vit_tokens_backward(n, p, d, dy, dx, dw, dpos);
				for (int c = 0; c < d; c++)
					db[c] += dpos[c];
				mt_bicubic_resize_ac_adjoint(nd->pos_grid, nd->pos_grid, in.h, in.w, d,
											 dpos + d, db + d);
				mt_free(dpos);
				return MT_OK;
			}
		case MT_NODE_LAYERNORM:
			be->layer_norm_backward(rows, in.c, x, dy, wt, nd->eps, dx, dw, db);
			return MT_OK;
		case MT_NODE_TOKEN_LINEAR:
			be->linear_backward((int) rows, nd->in_features, nd->out_features, x, wt, dy,
								dx, dw, db);
			return MT_OK;
		case MT_NODE_ATTENTION:
			if (dx == NULL)
				return MT_OK;
			return be->attention_backward(n, in.h * in.w, in.c / 3, nd->heads, x, dy, dx, err);
		case MT_NODE_GELU:
			if (dx != NULL)
				be->gelu_backward(rows * in.c, x, dy, dx);
			return MT_OK;
		case MT_NODE_CLASS_TOKEN:
			if (dx != NULL)
				be->class_token_backward(n, in.h * in.w, in.c, dy, dx);
			return MT_OK;
		default:
			return mt_seterr(err, MT_ERR_INTERNAL, "node kind %d is not a transformer node",
							 (int) nd->kind);
	}
}
