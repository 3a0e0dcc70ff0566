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
resized_pos(const mt_model *m, const mt_node *nd, int gh, int gw, int d)
{
	const float *pos = m->params[nd->p_bias].data;
	float	   *out = mt_malloc(sizeof(float) * (size_t) (1 + gh * gw) * d);

	if (out == NULL)
		return NULL;
	memcpy(out, pos, sizeof(float) * d);
	mt_bicubic_resize_ac(nd->pos_grid, nd->pos_grid, gh, gw, d, pos + d, out + d);
	return out;
}

/* Forward of a transformer node. */
int
mt_vit_node_run(const mt_model *m, const mt_node *nd, int n, mt_shape3 in,
				const float *a, float *y, mt_err *err)
{
	const mt_backend *be = m->backend;
	size_t		rows = (size_t) n * in.h * in.w;
	const float *wt = nd->p_weight >= 0 ? m->params[nd->p_weight].data : NULL;
	const float *bs = nd->p_bias >= 0 ? m->params[nd->p_bias].data : NULL;

	switch (nd->kind)
	{
		case MT_NODE_TOKENS:
			{
				float	   *pos = resized_pos(m, nd, in.h, in.w, in.c);

				if (pos == NULL)
					return mt_seterr(err, MT_ERR_NOMEM, "out of memory resizing position embeddings");
				be->vit_tokens(n, in.h * in.w, in.c, a, wt, pos, y);
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
			for (int s = 0; s < n; s++)
				memcpy(y + (size_t) s * in.c, a + (size_t) s * in.h * in.w * in.c,
					   sizeof(float) * in.c);
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
mt_vit_node_backward(const mt_model *m, const mt_node *nd, int n, mt_shape3 in,
					 const float *x, const float *dy, float *dx, float *dw,
					 float *db, mt_err *err)
{
	const mt_backend *be = m->backend;
	size_t		rows = (size_t) n * in.h * in.w;
	const float *wt = nd->p_weight >= 0 ? m->params[nd->p_weight].data : NULL;

	switch (nd->kind)
	{
		case MT_NODE_TOKENS:
			{
				int			p = in.h * in.w,
							d = in.c;
				float	   *dpos = NULL;

				if (db != NULL &&
					(dpos = mt_calloc((size_t) (1 + p) * d, sizeof(float))) == NULL)
					return mt_seterr(err, MT_ERR_NOMEM, "out of memory in backward pass");
				be->vit_tokens_backward(n, p, d, dy, dx, dw, dpos);
				if (dpos != NULL)
				{
					for (int c = 0; c < d; c++)
						db[c] += dpos[c];
					mt_bicubic_resize_ac_adjoint(nd->pos_grid, nd->pos_grid, in.h, in.w, d,
												 dpos + d, db + d);
					mt_free(dpos);
				}
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
				for (int s = 0; s < n; s++)
				{
					float	   *d0 = dx + (size_t) s * in.h * in.w * in.c;

					for (int c = 0; c < in.c; c++)
						d0[c] += dy[(size_t) s * in.c + c];
				}
			return MT_OK;
		default:
			return mt_seterr(err, MT_ERR_INTERNAL, "node kind %d is not a transformer node",
							 (int) nd->kind);
	}
}
