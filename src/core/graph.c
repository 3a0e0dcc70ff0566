/*
 * graph.c - parameters, batch-norm folding and the forward pass of a model.
 */
#include "graph.h"
#include "onednn.h"
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mt_model *
mt_model_alloc(const char *arch, int max_nodes, int max_params, mt_err *err)
{
	mt_model   *m = mt_calloc(1, sizeof(mt_model));

	if (m == NULL)
	{
		mt_seterr(err, MT_ERR_NOMEM, "out of memory building model");
		return NULL;
	}
	snprintf(m->arch, sizeof(m->arch), "%s", arch);
	m->nodes = mt_calloc(max_nodes, sizeof(mt_node));
	m->params = mt_calloc(max_params, sizeof(mt_param));
	m->cap_nodes = max_nodes;
	m->cap_params = max_params;
	m->features_node = m->logits_node = -1;
	m->backend = &mt_cpu_backend;
	if (m->nodes == NULL || m->params == NULL)
	{
		mt_model_free(m);
		mt_seterr(err, MT_ERR_NOMEM, "out of memory building model");
		return NULL;
	}
	return m;
}

/* Returns the parameter index, or -1 when the table is full. */
int
mt_model_add_param(mt_model *m, const char *name, int ndim,
				   const int64_t *shape, int is_counter)
{
	mt_param   *p;

	if (m->n_params >= m->cap_params || ndim > MT_MAX_DIMS)
		return -1;
	p = &m->params[m->n_params];
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->ndim = ndim;
	p->numel = 1;
	for (int i = 0; i < ndim; i++)
	{
		p->shape[i] = shape[i];
		p->numel *= (size_t) shape[i];
	}
	p->is_counter = is_counter;
	p->trainable = !is_counter;
	return m->n_params++;
}

mt_node
mt_node_init(mt_node_kind kind, int in0)
{
	mt_node		n;

	memset(&n, 0, sizeof(n));
	n.kind = kind;
	n.in0 = in0;
	n.in1 = -1;
	n.p_weight = n.p_bias = -1;
	n.p_bn_weight = n.p_bn_bias = n.p_bn_mean = n.p_bn_var = -1;
	n.sh = n.sw = n.dh = n.dw = n.groups = 1;
	n.eps = 1e-5f;
	return n;
}

/*
 * Returns the node index, or -1 when the table is full.  A batch norm's
 * running statistics become buffers (never trainable).
 */
int
mt_model_add_node(mt_model *m, const mt_node *proto)
{
	if (m->n_nodes >= m->cap_nodes)
		return -1;
	m->nodes[m->n_nodes] = *proto;
	m->nodes[m->n_nodes].run_act = proto->act;
	if (proto->kind == MT_NODE_BN)
	{
		int			stats[2] = {proto->p_bn_mean, proto->p_bn_var};

		for (int k = 0; k < 2; k++)
			if (stats[k] >= 0 && stats[k] < m->n_params)
			{
				m->params[stats[k]].is_buffer = 1;
				m->params[stats[k]].trainable = 0;
			}
	}
	return m->n_nodes++;
}

int
mt_model_find_param(const mt_model *m, const char *name)
{
	for (int i = 0; i < m->n_params; i++)
		if (strcmp(m->params[i].name, name) == 0)
			return i;
	return -1;
}

/* Format a shape as "[a, b, c]". */
static void
format_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
	size_t		off = 0;

	off += snprintf(buf + off, len - off, "[");
	for (int i = 0; i < ndim && off < len; i++)
		off += snprintf(buf + off, len - off, "%s%lld", i ? ", " : "", (long long) shape[i]);
	if (off < len)
		snprintf(buf + off, len - off, "]");
}

int
mt_model_set_param(mt_model *m, const char *name, int is_int64, int ndim,
				   const int64_t *shape, const void *bytes, size_t nbytes,
				   mt_err *err)
{
	int			idx = mt_model_find_param(m, name);
	mt_param   *p;
	char		want[96],
				got[96];
	int			same;

	if (idx < 0)
		return mt_seterr(err, MT_ERR_SHAPE, "unexpected tensor \"%s\" for architecture %s",
						 name, m->arch);
	p = &m->params[idx];
	same = (ndim == p->ndim);
	for (int i = 0; same && i < ndim; i++)
		same = (shape[i] == p->shape[i]);
	if (!same)
	{
		format_shape(want, sizeof(want), p->ndim, p->shape);
		format_shape(got, sizeof(got), ndim, shape);
		return mt_seterr(err, MT_ERR_SHAPE, "tensor \"%s\" has shape %s, %s expects %s",
						 name, got, m->arch, want);
	}
	if (p->is_counter)
	{
		/* num_batches_tracked: int64 (or float) scalar, value unused */
		p->loaded = 1;
		return MT_OK;
	}
	if (is_int64)
		return mt_seterr(err, MT_ERR_SHAPE, "tensor \"%s\" must be float32, not int64", name);
	if (nbytes != p->numel * sizeof(float))
		return mt_seterr(err, MT_ERR_SHAPE, "tensor \"%s\" holds %zu bytes, expected %zu",
						 name, nbytes, p->numel * sizeof(float));
	/* device training's copy: the other tensors come back, this one changes here */
	{
		int			rc = mt_model_train_device_drop(m, err);

		if (rc != MT_OK)
			return rc;
	}
	if (p->data == NULL)
	{
		p->data = mt_malloc(nbytes);
		if (p->data == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory loading tensor \"%s\"", name);
	}
	memcpy(p->data, bytes, nbytes);
	for (size_t i = 0; i < p->numel; i++)
		if (!isfinite(p->data[i]))
			return mt_seterr(err, MT_ERR_CORRUPT, "tensor \"%s\" holds a NaN or infinite value at %zu",
							 name, i);
	p->loaded = 1;
	m->prepared = 0;
	return MT_OK;
}

int
mt_model_check_complete(const mt_model *m, mt_err *err)
{
	int			missing = 0;
	char		list[400] = "";
	size_t		off = 0;

	for (int i = 0; i < m->n_params; i++)
		if (!m->params[i].loaded)
		{
			if (missing < 5 && off < sizeof(list))
				off += snprintf(list + off, sizeof(list) - off, "%s\"%s\"",
								missing ? ", " : "", m->params[i].name);
			missing++;
		}
	if (missing == 0)
		return MT_OK;
	mt_seterr(err, MT_ERR_SHAPE, "%d tensor%s missing for architecture %s",
			  missing, missing == 1 ? "" : "s", m->arch);
	mt_setdetail(err, "Missing: %s%s.", list, missing > 5 ? ", ..." : "");
	return MT_ERR_SHAPE;
}

/* How many nodes read node i. */
static int
consumers(const mt_model *m, int i)
{
	int			c = 0;

	for (int j = i + 1; j < m->n_nodes; j++)
		c += (m->nodes[j].in0 == i) + (m->nodes[j].in1 == i);
	if (i == m->features_node || i == m->logits_node)
		c++;
	return c;
}

/* The node right after i if it is of kind k and reads only i, else -1. */
int
mt_node_single_follower(const mt_model *m, int i, mt_node_kind k)
{
	if (i + 1 >= m->n_nodes || consumers(m, i) != 1)
		return -1;
	if (m->nodes[i + 1].kind != k || m->nodes[i + 1].in0 != i || m->nodes[i + 1].in1 >= 0)
		return -1;
	return i + 1;
}

/* Per-channel scale and shift of an inference batch norm. */
static void
bn_scale_shift(const mt_model *m, const mt_node *bn, int c, float *scale, float *shift)
{
	const float *g = m->params[bn->p_bn_weight].data;
	const float *b = m->params[bn->p_bn_bias].data;
	const float *mu = m->params[bn->p_bn_mean].data;
	const float *var = m->params[bn->p_bn_var].data;

	for (int j = 0; j < c; j++)
	{
		double		s = (double) g[j] / sqrt((double) var[j] + bn->eps);

		scale[j] = (float) s;
		shift[j] = (float) ((double) b[j] - (double) mu[j] * s);
	}
}

static void plan_free(struct mt_plan *p);
static void dev_drop_weights(mt_model *m);

static void
free_packed(mt_model *m)
{
	/* the memory plan depends on which nodes are folded */
	plan_free(m->plan);
	m->plan = NULL;
	/* the device copy is made from the packed weights: stale now */
	dev_drop_weights(m);
	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_conv_cache_free(m->nodes[i].conv_cache);
		m->nodes[i].conv_cache = NULL;
		mt_free(m->nodes[i].packed);
		mt_free(m->nodes[i].packed_bias);
		m->nodes[i].packed = m->nodes[i].packed_bias = NULL;
		m->nodes[i].folded = 0;
		m->nodes[i].run_act = m->nodes[i].act;
	}
	m->prepared = 0;
	m->packed_released = 0;
}

/* Re-prepare if kernel caches hold weights whose packed copy is gone. */
static int
ensure_packed(mt_model *m, mt_err *err)
{
	if (!m->packed_released)
		return MT_OK;
	free_packed(m);
	return mt_model_prepare(m, err);
}

int
mt_model_raw_reloaded(mt_model *m, mt_err *err)
{
	int			rc = mt_model_check_complete(m, err);

	if (rc == MT_OK)
	{
		m->raw_released = 0;
		m->prepared = 0;		/* prepared anew from the weights given again */
	}
	return rc;
}

void
mt_model_keep_packed(mt_model *m)
{
	m->keep_packed = 1;
	if (m->packed_released)
		free_packed(m);			/* the next prepare packs them again */
}

void
mt_model_release_external(mt_model *m)
{
	if (m == NULL)
		return;
	mt_model_release_device(m);
	mt_onednn_release_scratch();	/* a training run's buffer (onednn.c) */
	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_conv_cache_free(m->nodes[i].conv_cache);
		m->nodes[i].conv_cache = NULL;
	}
	if (m->packed_released)
		m->prepared = 0;		/* weights only the caches held: pack again if used */
}

size_t
mt_model_cache_bytes(const mt_model *m)
{
	size_t		b = 0;

	for (int i = 0; i < m->n_nodes; i++)
		b += mt_conv_cache_bytes(m->nodes[i].conv_cache);
	return b;
}

/* A conv descriptor with symmetric padding (the SAME case is resolved later). */
static mt_conv_desc
conv_desc(const mt_node *n, mt_act act)
{
	mt_conv_desc d;

	memset(&d, 0, sizeof(d));
	d.cin = n->cin;
	d.cout = n->cout;
	d.kh = n->kh;
	d.kw = n->kw;
	d.sh = n->sh;
	d.sw = n->sw;
	d.dh = n->dh;
	d.dw = n->dw;
	d.groups = n->groups;
	d.pad_t = d.pad_b = n->pad_h;
	d.pad_l = d.pad_r = n->pad_w;
	d.act = act;
	return d;
}

int
mt_model_prepare(mt_model *m, mt_err *err)
{
	int			rc;
	int			release_raw = m->release_raw && m->train == NULL && !m->keep_packed;

	if (m->prepared)
		return MT_OK;
	if (m->raw_released)
		return mt_seterr(err, MT_ERR_RELOAD,
						 "the weights of %s were released after preparing; they must be set again",
						 m->arch);
	if ((rc = mt_model_check_complete(m, err)) != MT_OK)
		return rc;
	free_packed(m);

	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_node    *n = &m->nodes[i];

		if (n->folded)
			continue;
		if (n->kind == MT_NODE_CONV)
		{
			mt_conv_desc d = conv_desc(n, n->act);
			size_t		sz = mt_conv_packed_size(&d);
			int			bn = mt_node_single_follower(m, i, MT_NODE_BN);
			int			last = i;
			float	   *w = mt_malloc(sz * sizeof(float));
			float	   *bias = mt_calloc(n->cout, sizeof(float));

			n->packed = w;
			n->packed_bias = bias;
			if (w == NULL || bias == NULL)
				goto nomem;
			if (n->p_bias >= 0)
				memcpy(bias, m->params[n->p_bias].data, sizeof(float) * n->cout);
			if (bn >= 0)
			{
				/* fold: w' = w * s[o], b' = b * s[o] + t[o] */
				const float *src = m->params[n->p_weight].data;
				size_t		per_out = sz / n->cout;
				float	   *scale = mt_malloc(sizeof(float) * n->cout);
				float	   *shift = mt_malloc(sizeof(float) * n->cout);
				float	   *tmp = mt_malloc(sz * sizeof(float));

				if (scale == NULL || shift == NULL || tmp == NULL)
				{
					mt_free(scale);
					mt_free(shift);
					mt_free(tmp);
					goto nomem;
				}
				bn_scale_shift(m, &m->nodes[bn], n->cout, scale, shift);
				for (int o = 0; o < n->cout; o++)
				{
					for (size_t k = 0; k < per_out; k++)
						tmp[o * per_out + k] = src[o * per_out + k] * scale[o];
					bias[o] = bias[o] * scale[o] + shift[o];
				}
				mt_conv_pack_oihw(&d, tmp, w);
				mt_free(scale);
				mt_free(shift);
				mt_free(tmp);
				m->nodes[bn].folded = 1;
				last = bn;
			}
			else
				mt_conv_pack_oihw(&d, m->params[n->p_weight].data, w);
			if (release_raw)
			{
				/* a scoring-only model: the packed copy is all it reads now */
				mt_param   *p = &m->params[n->p_weight];

				mt_free(p->data);
				p->data = NULL;
				p->loaded = 0;
				m->raw_released = 1;
			}
			if (n->run_act == MT_ACT_NONE)
			{
				int			a = mt_node_single_follower(m, last, MT_NODE_ACT);

				if (a >= 0)
				{
					n->run_act = m->nodes[a].act;
					m->nodes[a].folded = 1;
				}
			}
		}
		else if (n->kind == MT_NODE_CONV_TRANSPOSE)
		{
			/* packed once; nothing is folded into a transposed convolution */
			mt_conv_desc d = mt_node_tconv_desc(n, MT_ACT_NONE);

			n->packed = mt_malloc(mt_conv_packed_size(&d) * sizeof(float));
			n->packed_bias = mt_calloc(n->cout, sizeof(float));
			if (n->packed == NULL || n->packed_bias == NULL)
				goto nomem;
			mt_conv_pack_oihw(&d, m->params[n->p_weight].data, n->packed);
			if (n->p_bias >= 0)
				memcpy(n->packed_bias, m->params[n->p_bias].data, sizeof(float) * n->cout);
		}
		else if (n->kind == MT_NODE_BN)
		{
			int			c = m->params[n->p_bn_weight].shape[0];
			int			a = mt_node_single_follower(m, i, MT_NODE_ACT);

			n->packed = mt_malloc(sizeof(float) * c);
			n->packed_bias = mt_malloc(sizeof(float) * c);
			if (n->packed == NULL || n->packed_bias == NULL)
				goto nomem;
			bn_scale_shift(m, n, c, n->packed, n->packed_bias);
			if (a >= 0 && n->run_act == MT_ACT_NONE)
			{
				n->run_act = m->nodes[a].act;
				m->nodes[a].folded = 1;
			}
		}
		else if (n->kind == MT_NODE_ADD && n->run_act == MT_ACT_NONE)
		{
			int			a = mt_node_single_follower(m, i, MT_NODE_ACT);

			if (a >= 0)
			{
				n->run_act = m->nodes[a].act;
				m->nodes[a].folded = 1;
			}
		}
	}
	m->prepared = 1;
	return MT_OK;

nomem:
	free_packed(m);
	return mt_seterr(err, MT_ERR_NOMEM, "out of memory preparing model %s", m->arch);
}

/* The convolution a transposed convolution node transposes (graph.h). */
mt_conv_desc
mt_node_tconv_desc(const mt_node *n, mt_act act)
{
	mt_conv_desc d = conv_desc(n, act);

	d.cin = n->cout;
	d.cout = n->cin;
	d.dh = d.dw = 1;
	d.groups = 1;
	return d;
}

/* The conv descriptor with padding resolved for an h x w input. */
mt_conv_desc
mt_node_conv_desc(const mt_model *m, const mt_node *n, int h, int w, mt_act act)
{
	mt_conv_desc d = conv_desc(n, act);

	if (m->padding_same)
	{
		mt_same_padding(h, d.kh, d.sh, d.dh, &d.pad_t, &d.pad_b);
		mt_same_padding(w, d.kw, d.sw, d.dw, &d.pad_l, &d.pad_r);
	}
	return d;
}

/* The pooling descriptor of a pooling node. */
mt_pool_desc
mt_node_pool_desc(const mt_node *n)
{
	mt_pool_desc p;

	memset(&p, 0, sizeof(p));
	p.kh = p.kw = n->pool_k;
	p.sh = p.sw = n->pool_s;
	p.pad_t = p.pad_b = p.pad_l = p.pad_r = n->pool_p;
	p.count_include_pad = 1;
	return p;
}

/* Output shapes of all nodes and the largest convolution scratch. */
int
mt_model_shapes(const mt_model *m, int h, int w, mt_shape3 *shp,
				size_t *scratch_len, mt_err *err)
{
	*scratch_len = 0;
	for (int i = 0; i < m->n_nodes; i++)
	{
		const mt_node *nd = &m->nodes[i];
		mt_shape3	in = nd->in0 >= 0 ? shp[nd->in0] : (mt_shape3) {h, w, 3};

		switch (nd->kind)
		{
			case MT_NODE_INPUT:
				shp[i] = (mt_shape3) {h, w, 3};
				break;
			case MT_NODE_CONV:
				{
					mt_conv_desc d = mt_node_conv_desc(m, nd, in.h, in.w, MT_ACT_NONE);
					size_t		s = mt_conv_scratch_size(&d, in.h, in.w);

					shp[i].h = mt_out_size(in.h, d.kh, d.sh, d.dh, d.pad_t, d.pad_b);
					shp[i].w = mt_out_size(in.w, d.kw, d.sw, d.dw, d.pad_l, d.pad_r);
					shp[i].c = nd->cout;
					if (in.c != nd->cin)
						return mt_seterr(err, MT_ERR_SHAPE, "node %d: %d input channels, expected %d",
										 i, in.c, nd->cin);
					if (s > *scratch_len)
						*scratch_len = s;
					break;
				}
			case MT_NODE_CONV_TRANSPOSE:
				{
					mt_conv_desc d = mt_node_tconv_desc(nd, MT_ACT_NONE);
					size_t		s;

					if (in.c != nd->cin)
						return mt_seterr(err, MT_ERR_SHAPE, "node %d: %d input channels, expected %d",
										 i, in.c, nd->cin);
					if (nd->groups != 1 || nd->dh != 1 || nd->dw != 1)
						return mt_seterr(err, MT_ERR_UNSUPPORTED,
										 "node %d: transposed convolution with groups or dilation", i);
					shp[i].h = mt_conv_transpose_out_size(in.h, d.kh, d.sh, d.pad_t, d.pad_b);
					shp[i].w = mt_conv_transpose_out_size(in.w, d.kw, d.sw, d.pad_l, d.pad_r);
					shp[i].c = nd->cout;
					if (shp[i].h > (1 << 20) || shp[i].w > (1 << 20))
						return mt_seterr(err, MT_ERR_LIMIT, "node %d: output of %dx%d is too large",
										 i, shp[i].h, shp[i].w);
					/* forward col buffer and backward im2col: the same size */
					s = mt_conv_scratch_size(&d, shp[i].h, shp[i].w);
					if (s > *scratch_len)
						*scratch_len = s;
					break;
				}
			case MT_NODE_UPSAMPLE:
				if (nd->scale_factor < 1 || nd->scale_factor > 64 ||
					in.h > (1 << 20) / nd->scale_factor || in.w > (1 << 20) / nd->scale_factor)
					return mt_seterr(err, MT_ERR_LIMIT, "node %d: upsampling %dx%d by %d",
									 i, in.h, in.w, nd->scale_factor);
				shp[i] = (mt_shape3) {in.h * nd->scale_factor, in.w * nd->scale_factor, in.c};
				break;
			case MT_NODE_MAXPOOL:
			case MT_NODE_AVGPOOL:
				shp[i].h = mt_out_size(in.h, nd->pool_k, nd->pool_s, 1, nd->pool_p, nd->pool_p);
				shp[i].w = mt_out_size(in.w, nd->pool_k, nd->pool_s, 1, nd->pool_p, nd->pool_p);
				shp[i].c = in.c;
				break;
			case MT_NODE_GAP:
				shp[i] = (mt_shape3) {1, 1, in.c};
				break;
			case MT_NODE_CONCAT:
				{
					mt_shape3	b = nd->in1 >= 0 ? shp[nd->in1] : (mt_shape3) {0, 0, 0};

					/* cin and cout: channels of in0 and of the result, as built */
					if (b.h != in.h || b.w != in.w || in.c != nd->cin || in.c + b.c != nd->cout)
						return mt_seterr(err, MT_ERR_SHAPE,
										 "node %d: concatenating %dx%dx%d with %dx%dx%d, expected %d + %d channels",
										 i, in.h, in.w, in.c, b.h, b.w, b.c, nd->cin, nd->cout - nd->cin);
					shp[i] = (mt_shape3) {in.h, in.w, in.c + b.c};
					break;
				}
			case MT_NODE_SCALE:
				{
					mt_shape3	b = nd->in1 >= 0 ? shp[nd->in1] : (mt_shape3) {0, 0, 0};

					if (b.h != 1 || b.w != 1 || b.c != in.c)
						return mt_seterr(err, MT_ERR_SHAPE, "node %d: scaling %d channels by %dx%dx%d",
										 i, in.c, b.h, b.w, b.c);
					shp[i] = in;
					break;
				}
			case MT_NODE_LINEAR:
				shp[i] = (mt_shape3) {1, 1, nd->out_features};
				if (in.h * in.w * in.c != nd->in_features)
					return mt_seterr(err, MT_ERR_SHAPE, "linear layer expects %d features, got %d",
									 nd->in_features, in.h * in.w * in.c);
				break;
			default:
				if (mt_node_is_transformer(nd->kind))
				{
					int			rc = mt_vit_node_shape(m, nd, in, h, w, &shp[i], err);
					size_t		s = mt_vit_node_scratch(nd, in);

					if (rc != MT_OK)
						return rc;
					if (s > *scratch_len)
						*scratch_len = s;
					break;
				}
				shp[i] = in;
				break;
		}
		if (shp[i].h <= 0 || shp[i].w <= 0)
			return mt_seterr(err, MT_ERR_SHAPE, "input of %dx%d is too small for %s",
							 h, w, m->arch);
	}
	return MT_OK;
}

/*
 * Run one prepared node (folded weights, fused activations) through be.  w
 * and bias are the node's weights where be computes: a convolution's
 * packed weights and bias, a batch norm's scale and shift, a linear layer's
 * weight and bias (host memory for the CPU, the device copy otherwise).
 */
static int
node_run(const mt_model *m, const mt_backend *be, const mt_node *nd,
		 const float *w, const float *bias, int n, mt_shape3 in,
		 const float *a, const float *b, float *y, float *scratch, mt_err *err)
{
	switch (nd->kind)
	{
		case MT_NODE_CONV:
			{
				mt_conv_desc d = mt_node_conv_desc(m, nd, in.h, in.w, nd->run_act);

				if (be->conv2d_cached != NULL && w == nd->packed &&
					(w != NULL || nd->conv_cache != NULL))
				{
					/* the node's cache is mutable state of a const node */
					mt_node    *mn = (mt_node *) nd;
					int			rc = be->conv2d_cached(&d, n, in.h, in.w, a, w, bias, y, scratch,
													   &mn->conv_cache, err);

					if (rc == MT_OK && w != NULL && !m->keep_packed &&
						mt_conv_cache_holds_weights(mn->conv_cache))
					{
						/* one copy of the weights, in the kernel's layout */
						mt_free(mn->packed);
						mn->packed = NULL;
						((mt_model *) m)->packed_released = 1;
					}
					return rc;
				}
				if (w == NULL)
					return mt_seterr(err, MT_ERR_INTERNAL, "convolution weights of node %d are missing",
									 (int) (nd - m->nodes));
				return be->conv2d(&d, n, in.h, in.w, a, w, bias, y, scratch, err);
			}
		case MT_NODE_BN:
			be->channel_affine((size_t) n * in.h * in.w, in.c, a, w, bias, nd->run_act, y);
			break;
		case MT_NODE_ACT:
			be->act((size_t) n * in.h * in.w * in.c, a, nd->act, y);
			break;
		case MT_NODE_ADD:
			be->add_act((size_t) n * in.h * in.w * in.c, a, b, nd->run_act, y);
			break;
		case MT_NODE_MAXPOOL:
			{
				mt_pool_desc p = mt_node_pool_desc(nd);

				be->max_pool2d(&p, n, in.h, in.w, in.c, a, y);
				break;
			}
		case MT_NODE_AVGPOOL:
			{
				mt_pool_desc p = mt_node_pool_desc(nd);

				be->avg_pool2d(&p, n, in.h, in.w, in.c, a, y);
				break;
			}
		case MT_NODE_GAP:
			be->global_avg_pool(n, in.h, in.w, in.c, a, y);
			break;
		case MT_NODE_CONCAT:
			be->concat((size_t) n * in.h * in.w, nd->cin, nd->cout - nd->cin, a, b, y);
			break;
		case MT_NODE_SCALE:
			be->scale_channels(n, (size_t) in.h * in.w, in.c, a, b, y);
			break;
		case MT_NODE_UPSAMPLE:
			if (be->upsample_bilinear == NULL)
				return mt_seterr(err, MT_ERR_UNSUPPORTED, "the %s backend has no bilinear upsampling",
								 be->name);
			be->upsample_bilinear(n, in.h, in.w, in.c, nd->scale_factor, a, y);
			break;
		case MT_NODE_CONV_TRANSPOSE:
			{
				mt_conv_desc d = mt_node_tconv_desc(nd, nd->run_act);

				if (be->conv_transpose2d == NULL)
					return mt_seterr(err, MT_ERR_UNSUPPORTED,
									 "the %s backend has no transposed convolution", be->name);
				return be->conv_transpose2d(&d, n, in.h, in.w, a, w, bias, y, scratch, err);
			}
		case MT_NODE_LINEAR:
			be->linear(n, nd->in_features, nd->out_features, a, w, bias, y);
			break;
		default:
			if (mt_node_is_transformer(nd->kind))
				return mt_vit_node_run(m, be, nd, w, bias, n, in, a, y, scratch, err);
			break;
	}
	return MT_OK;
}

int
mt_node_run(const mt_model *m, const mt_backend *be, const mt_node *nd,
			const float *w, const float *bias, int n, mt_shape3 in,
			const float *a, const float *b, float *y, float *scratch, mt_err *err)
{
	return node_run(m, be, nd, w, bias, n, in, a, b, y, scratch, err);
}

/* The host copies of a prepared node's weights, as node_run takes them. */
static void
host_weights(const mt_model *m, const mt_node *nd, const float **w, const float **bias)
{
	if (nd->kind == MT_NODE_LINEAR || nd->kind == MT_NODE_TOKEN_LINEAR ||
		nd->kind == MT_NODE_LAYERNORM || nd->kind == MT_NODE_TOKENS)
	{
		*w = m->params[nd->p_weight].data;
		*bias = nd->p_bias >= 0 ? m->params[nd->p_bias].data : NULL;
	}
	else
	{
		*w = nd->packed;
		*bias = nd->packed_bias;
	}
}

/* Run one prepared node on the host (m->backend). */
int
mt_node_run_prepared(const mt_model *m, const mt_node *nd, int n, mt_shape3 in,
					 const float *a, const float *b, float *y, float *scratch,
					 mt_err *err)
{
	const float *w,
			   *bias;

	host_weights(m, nd, &w, &bias);
	return node_run(m, m->backend, nd, w, bias, n, in, a, b, y, scratch, err);
}

/*
 * Inference memory plan for one input shape: every node's output gets an
 * offset in one arena, reusing the space of buffers whose last reader has
 * run (first fit over the live blocks, in execution order); convolution
 * scratch sits at the arena's start.  Planned once per (n, h, w) and kept
 * with the model, so repeated forward passes allocate nothing; an arena
 * larger than arena_keep bytes (mt_set_arena_keep) is released after each
 * pass.  The default keeps 512 MB: releasing anything over 64 MB (the
 * earlier rule) made every batch of 16 fault its arena's pages in again,
 * and scoring ran at 105 instead of 127 img/s for ResNet-18, 200 instead
 * of 390 for MobileNetV2 (test/bin/bench_engine ARCH 16 2 3, here).
 */
static size_t arena_keep = (size_t) 512 << 20;

void
mt_set_arena_keep(size_t bytes)
{
	arena_keep = bytes;
}

#define MT_ARENA_ALIGN 16		/* floats: 64 bytes */

struct mt_plan
{
	int			n,
				h,
				w;
	size_t		total;			/* floats */
	size_t		scratch_len;
	mt_shape3  *shp;
	int		   *owner;
	size_t	   *off;			/* per owner node; SIZE_MAX if it has no buffer */
	float	   *arena;
	const mt_backend *arena_be; /* whose mem_alloc made arena; NULL: mt_malloc */
};

/* Free the arena (host or device), keeping the plan. */
static void
plan_free_arena(struct mt_plan *p)
{
	if (p->arena_be != NULL)
		p->arena_be->mem_free(p->arena);
	else
		mt_free(p->arena);
	p->arena = NULL;
	p->arena_be = NULL;
}

static void
plan_free(struct mt_plan *p)
{
	if (p == NULL)
		return;
	plan_free_arena(p);
	mt_free(p->shp);
	mt_free(p->owner);
	mt_free(p->off);
	mt_free(p);
}

void
mt_model_release_plan(mt_model *m)
{
	plan_free(m->plan);
	m->plan = NULL;
}

static size_t
align_up(size_t v)
{
	return (v + MT_ARENA_ALIGN - 1) / MT_ARENA_ALIGN * MT_ARENA_ALIGN;
}

static struct mt_plan *
plan_build(mt_model *m, int n, int h, int w, mt_err *err)
{
	struct mt_plan *p = mt_calloc(1, sizeof(struct mt_plan));
	int		   *last_use = NULL;
	size_t	   *len = NULL;
	int		   *live = NULL;
	int			n_live = 0;
	size_t		base,
				top;

	if (p == NULL)
		goto nomem;
	p->n = n;
	p->h = h;
	p->w = w;
	p->shp = mt_calloc(m->n_nodes, sizeof(mt_shape3));
	p->owner = mt_calloc(m->n_nodes, sizeof(int));
	p->off = mt_calloc(m->n_nodes, sizeof(size_t));
	last_use = mt_calloc(m->n_nodes, sizeof(int));
	len = mt_calloc(m->n_nodes, sizeof(size_t));
	live = mt_calloc(m->n_nodes, sizeof(int));
	if (!p->shp || !p->owner || !p->off || !last_use || !len || !live)
		goto nomem;
	if (mt_model_shapes(m, h, w, p->shp, &p->scratch_len, err) != MT_OK)
	{
		plan_free(p);
		p = NULL;
		goto done;
	}

	/* buffer owners (folded nodes alias their input), lifetimes, sizes */
	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_node    *nd = &m->nodes[i];

		p->owner[i] = nd->folded ? p->owner[nd->in0] : i;
		p->off[i] = SIZE_MAX;
		last_use[i] = i;
		if (nd->in0 >= 0 && last_use[p->owner[nd->in0]] < i)
			last_use[p->owner[nd->in0]] = i;
		if (nd->in1 >= 0 && last_use[p->owner[nd->in1]] < i)
			last_use[p->owner[nd->in1]] = i;
		if (!nd->folded)
		{
			size_t		l;

			if (!mt_mul_size((size_t) n, (size_t) p->shp[i].h * p->shp[i].w, &l) ||
				!mt_mul_size(l, (size_t) p->shp[i].c, &l))
			{
				mt_seterr(err, MT_ERR_LIMIT, "activation of %s node %d is too large", m->arch, i);
				plan_free(p);
				p = NULL;
				goto done;
			}
			len[i] = align_up(l);
		}
	}
	if (m->features_node >= 0)
		last_use[p->owner[m->features_node]] = m->n_nodes;
	if (m->logits_node >= 0)
		last_use[p->owner[m->logits_node]] = m->n_nodes;

	/* first fit: live blocks kept sorted by offset */
	base = align_up(p->scratch_len);
	top = base;
	for (int i = 0; i < m->n_nodes; i++)
	{
		size_t		at = base;
		int			k = 0,
					j;

		if (m->nodes[i].folded)
			continue;
		/* drop blocks whose last reader ran before node i */
		for (j = 0; j < n_live; j++)
			if (last_use[live[j]] >= i)
				live[k++] = live[j];
		n_live = k;
		for (j = 0; j < n_live; j++)
		{
			if (p->off[live[j]] >= at + len[i])
				break;
			if (p->off[live[j]] + len[live[j]] > at)
				at = p->off[live[j]] + len[live[j]];
		}
		p->off[i] = at;
		memmove(&live[j + 1], &live[j], sizeof(int) * (n_live - j));
		live[j] = i;
		n_live++;
		if (at + len[i] > top)
			top = at + len[i];
	}
	p->total = top;
	goto done;

nomem:
	mt_seterr(err, MT_ERR_NOMEM, "out of memory planning the forward pass of %s", m->arch);
	plan_free(p);
	p = NULL;
done:
	mt_free(last_use);
	mt_free(len);
	mt_free(live);
	return p;
}

/*
 * The device copy of a model (mt_model_to_device): which backend, and every
 * node's prepared weights in one block of its memory.  The host struct and
 * the w / b tables are engine (mt_malloc) memory; block is the backend's.
 */
struct mt_devcopy
{
	const mt_backend *be;
	void	   *block;			/* NULL until uploaded, and after a re-prepare */
	size_t		block_bytes;
	const float **w;			/* per node: its weights in block, or NULL */
	const float **b;			/* per node: its bias (BN: shift) in block, or NULL */
};

/* Device tensors start at 256-byte boundaries (coalesced loads). */
#define MT_DEV_ALIGN 64			/* floats */

static size_t
dev_align(size_t v)
{
	return (v + MT_DEV_ALIGN - 1) / MT_DEV_ALIGN * MT_DEV_ALIGN;
}

/* Floats of a prepared node's weights and bias, as node_run takes them. */
static void
dev_node_sizes(const mt_model *m, const mt_node *nd, size_t *wlen, size_t *blen)
{
	*wlen = *blen = 0;
	if (nd->folded)
		return;
	switch (nd->kind)
	{
		case MT_NODE_CONV:
			{
				mt_conv_desc d = conv_desc(nd, MT_ACT_NONE);

				*wlen = mt_conv_packed_size(&d);
				*blen = nd->cout;
				break;
			}
		case MT_NODE_CONV_TRANSPOSE:
			{
				mt_conv_desc d = mt_node_tconv_desc(nd, MT_ACT_NONE);

				*wlen = mt_conv_packed_size(&d);
				*blen = nd->cout;
				break;
			}
		case MT_NODE_BN:
			*wlen = *blen = m->params[nd->p_bn_weight].shape[0];
			break;
		case MT_NODE_LINEAR:
		case MT_NODE_TOKEN_LINEAR:
		case MT_NODE_LAYERNORM:
		case MT_NODE_TOKENS:
			/* raw parameters (TOKENS: the class token, then the position embedding) */
			*wlen = m->params[nd->p_weight].numel;
			*blen = nd->p_bias >= 0 ? m->params[nd->p_bias].numel : 0;
			break;
		default:
			break;
	}
}

/*
 * be->mem_alloc, with an out-of-memory or over-the-cap message that says
 * what was being allocated (the backend's detail is kept).
 */
static int
dev_alloc(const mt_model *m, const mt_backend *be, void **ptr, size_t bytes,
		  const char *what, mt_err *err)
{
	mt_err		e;
	int			rc;

	mt_clearerr(&e);
	rc = be->mem_alloc(ptr, bytes, &e);
	if (rc == MT_ERR_NOMEM || rc == MT_ERR_LIMIT)
	{
		char		detail[sizeof(e.detail)];

		memcpy(detail, e.detail, sizeof(detail));
		mt_seterr(&e, rc, "%s for the %s of %s (%zu MB)",
				  rc == MT_ERR_NOMEM ? "out of device memory" : "device memory limit exceeded",
				  what, m->arch, (bytes + (1 << 20) - 1) >> 20);
		memcpy(e.detail, detail, sizeof(detail));
	}
	if (rc != MT_OK && err != NULL)
		*err = e;
	return rc;
}

/* Free the device weight block (the model stays on the device). */
static void
dev_drop_weights(mt_model *m)
{
	struct mt_devcopy *d = m->dev;

	if (d == NULL)
		return;
	if (d->block != NULL)
		d->be->mem_free(d->block);
	d->block = NULL;
	d->block_bytes = 0;
	for (int i = 0; i < m->n_nodes; i++)
		d->w[i] = d->b[i] = NULL;
}

/* Upload every node's prepared weights into one device block (once). */
static int
dev_upload(mt_model *m, mt_err *err)
{
	struct mt_devcopy *d = m->dev;
	const mt_backend *be = d->be;
	size_t		total = 0;
	float	   *base;
	int			rc;

	if (d->block != NULL)
		return MT_OK;
	if ((rc = ensure_packed(m, err)) != MT_OK)
		return rc;
	for (int i = 0; i < m->n_nodes; i++)
	{
		size_t		wl,
					bl;

		dev_node_sizes(m, &m->nodes[i], &wl, &bl);
		total += dev_align(wl) + dev_align(bl);
	}
	if (total > SIZE_MAX / sizeof(float))
		return mt_seterr(err, MT_ERR_LIMIT, "weights of %s are too large", m->arch);
	if ((rc = dev_alloc(m, be, &d->block, total * sizeof(float), "weights", err)) != MT_OK)
	{
		d->block = NULL;
		return rc;
	}
	d->block_bytes = total * sizeof(float);
	base = (float *) d->block;
	for (int i = 0; i < m->n_nodes; i++)
	{
		const mt_node *nd = &m->nodes[i];
		const float *hw,
				   *hb;
		size_t		wl,
					bl;

		dev_node_sizes(m, nd, &wl, &bl);
		if (wl == 0 && bl == 0)
			continue;
		host_weights(m, nd, &hw, &hb);
		if (wl > 0)
		{
			if ((rc = be->upload(base, hw, wl * sizeof(float), err)) != MT_OK)
				goto fail;
			d->w[i] = base;
			base += dev_align(wl);
		}
		if (bl > 0 && hb != NULL)
		{
			if ((rc = be->upload(base, hb, bl * sizeof(float), err)) != MT_OK)
				goto fail;
			d->b[i] = base;
			base += dev_align(bl);
		}
	}
	return MT_OK;

fail:
	dev_drop_weights(m);
	return rc;
}

int
mt_model_device_upload(mt_model *m, mt_err *err)
{
	return m->dev != NULL ? dev_upload(m, err) : MT_OK;
}

void
mt_model_device_node_weights(const mt_model *m, int i, const float **w, const float **bias)
{
	*w = m->dev != NULL ? m->dev->w[i] : NULL;
	*bias = m->dev != NULL ? m->dev->b[i] : NULL;
}

const mt_backend *
mt_model_device(const mt_model *m)
{
	return m->dev != NULL ? m->dev->be : NULL;
}

size_t
mt_model_device_bytes(const mt_model *m)
{
	size_t		bytes;

	if (m->dev == NULL)
		return 0;
	bytes = m->dev->block_bytes;
	if (m->plan != NULL && m->plan->arena != NULL && m->plan->arena_be == m->dev->be)
		bytes += m->plan->total * sizeof(float);
	return bytes;
}

void
mt_model_release_device(mt_model *m)
{
	struct mt_devcopy *d = m->dev;

	/* device training lives on the device copy */
	mt_model_train_device_free(m);
	if (d == NULL)
		return;
	if (m->plan != NULL && m->plan->arena_be == d->be)
		plan_free_arena(m->plan);
	dev_drop_weights(m);
	mt_free(d->w);
	mt_free(d->b);
	mt_free(d);
	m->dev = NULL;
}

int
mt_model_to_device(mt_model *m, const mt_backend *be, mt_err *err)
{
	struct mt_devcopy *d;
	int			rc;

	/* leaving the device (or changing it): what device training changed comes back first */
	if (m->dev != NULL && (be == NULL || be != m->dev->be) &&
		(rc = mt_model_train_device_drop(m, err)) != MT_OK)
		return rc;
	if (be == NULL || be->mem_alloc == NULL)
	{
		/* a host backend: passes run on m->backend */
		mt_model_release_device(m);
		return MT_OK;
	}
	if (m->dev != NULL && m->dev->be != be)
		mt_model_release_device(m);
	if (m->dev == NULL)
	{
		for (int i = 0; i < m->n_nodes; i++)
		{
			const mt_node *nd = &m->nodes[i];

			if (mt_node_is_transformer(nd->kind) &&
				(be->layer_norm == NULL || be->attention == NULL || be->gelu == NULL ||
				 be->vit_tokens == NULL || be->class_token == NULL || be->gemm == NULL))
				return mt_seterr(err, MT_ERR_UNSUPPORTED,
								 "%s inference does not run on %s (transformer layers)",
								 m->arch, be->name);
			if ((nd->kind == MT_NODE_UPSAMPLE && be->upsample_bilinear == NULL) ||
				(nd->kind == MT_NODE_CONV_TRANSPOSE && be->conv_transpose2d == NULL))
				return mt_seterr(err, MT_ERR_UNSUPPORTED,
								 "%s inference does not run on %s yet (U-Net upsampling)",
								 m->arch, be->name);
			if (nd->in0 < 0 && nd->kind != MT_NODE_INPUT)
				return mt_seterr(err, MT_ERR_UNSUPPORTED,
								 "node %d of %s reads the input without an input node", i, m->arch);
		}
	}
	if ((rc = mt_model_prepare(m, err)) != MT_OK)
		return rc;
	if (m->dev == NULL)
	{
		d = mt_calloc(1, sizeof(struct mt_devcopy));
		if (d != NULL)
		{
			d->w = mt_calloc(m->n_nodes, sizeof(float *));
			d->b = mt_calloc(m->n_nodes, sizeof(float *));
		}
		if (d == NULL || d->w == NULL || d->b == NULL)
		{
			if (d != NULL)
			{
				mt_free(d->w);
				mt_free(d->b);
				mt_free(d);
			}
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory moving %s to a device", m->arch);
		}
		d->be = be;
		m->dev = d;
		/* a host arena is of no use any more */
		if (m->plan != NULL && m->plan->arena_be == NULL)
			plan_free_arena(m->plan);
	}
	if ((rc = dev_upload(m, err)) != MT_OK)
		mt_model_release_device(m);
	return rc;
}

/* Copy a node's output out of the arena into host memory. */
static int
copy_out(const mt_backend *dev, float *dst, const float *src, size_t floats, mt_err *err)
{
	if (dev != NULL)
		return dev->download(dst, src, floats * sizeof(float), err);
	memcpy(dst, src, floats * sizeof(float));
	return MT_OK;
}

int
mt_model_forward(mt_model *m, const float *x, int n, int h, int w,
				 float *logits, float *features, mt_err *err)
{
	struct mt_plan *p;
	const mt_backend *dev = mt_model_device(m);
	int			rc = MT_OK;
	int			mb;

	/* weights that training on the device changed: fold the current ones */
	if ((rc = mt_model_sync_to_host(m, err)) != MT_OK)
		return rc;
	/* im2col + GEMM needs the packed weights a kernel cache may hold alone */
	if (m->packed_released && dev == NULL && !mt_onednn_enabled())
		free_packed(m);
	if ((rc = mt_model_prepare(m, err)) != MT_OK)
		return rc;
	if (n <= 0 || h <= 0 || w <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "empty input batch");
	/* after a re-prepare (changed weights) the device copy is re-made */
	if (dev != NULL && (rc = dev_upload(m, err)) != MT_OK)
		return rc;

	/*
	 * Inference has no cross-image operation, so a batch may run as chunks
	 * of at most m->micro_batch images through one plan (0: the whole batch
	 * at once).  Smaller chunks keep activations in cache; which size is
	 * fastest depends on the model and the machine and is not chosen
	 * automatically yet.
	 */
	mb = m->micro_batch > 0 ? m->micro_batch : n;
	if (mb > n)
		mb = n;
	p = m->plan;
	if (p == NULL || p->n != mb || p->h != h || p->w != w)
	{
		mt_model_release_plan(m);
		if ((p = plan_build(m, mb, h, w, err)) == NULL)
			return err->code;
		m->plan = p;
	}
	/* the arena lives where the nodes run */
	if (p->arena != NULL && p->arena_be != dev)
		plan_free_arena(p);
	if (p->arena == NULL)
	{
		if (p->total > SIZE_MAX / sizeof(float))
			return mt_seterr(err, MT_ERR_LIMIT, "activations of %s are too large", m->arch);
		if (dev != NULL)
		{
			void	   *a = NULL;

			if ((rc = dev_alloc(m, dev, &a, p->total * sizeof(float), "activations", err)) != MT_OK)
				return rc;
			p->arena = a;
			p->arena_be = dev;
		}
		else if ((p->arena = mt_malloc(p->total * sizeof(float))) == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory in forward pass of %s (%zu MB of activations)",
							 m->arch, p->total * sizeof(float) >> 20);
	}

	for (int s0 = 0; s0 < n; s0 += mb)
	{
		int			r = n - s0 < mb ? n - s0 : mb;	/* images in this chunk */
		const float *xs = x + (size_t) s0 * h * w * 3;

		for (int i = 0; i < m->n_nodes; i++)
		{
			mt_node    *nd = &m->nodes[i];
			mt_shape3	in = nd->in0 >= 0 ? p->shp[nd->in0] : (mt_shape3) {h, w, 3};
			const float *a = nd->in0 >= 0 ? p->arena + p->off[p->owner[nd->in0]] : xs;
			const float *b = nd->in1 >= 0 ? p->arena + p->off[p->owner[nd->in1]] : NULL;
			float	   *y;

			if (mt_interrupted())
			{
				rc = mt_seterr(err, MT_ERR_CANCELLED, "canceled");
				goto done;
			}
			if (nd->folded)
				continue;
			y = p->arena + p->off[i];
			if (nd->kind == MT_NODE_INPUT)
			{
				if (dev != NULL)
				{
					if ((rc = dev->upload(y, xs, sizeof(float) * r * h * w * 3, err)) != MT_OK)
						goto done;
				}
				else
					memcpy(y, xs, sizeof(float) * r * h * w * 3);
				continue;
			}
			if (dev != NULL)
				rc = node_run(m, dev, nd, m->dev->w[i], m->dev->b[i], r, in, a, b, y,
							  p->arena, err);
			else
				rc = mt_node_run_prepared(m, nd, r, in, a, b, y, p->arena, err);
			if (rc != MT_OK)
				goto done;
		}

		/* whole node outputs: a spatial logits node (U-Net) is h x w x c per image */
		if (features != NULL && m->features_node >= 0)
		{
			mt_shape3	f = p->shp[m->features_node];
			size_t		per = (size_t) f.h * f.w * f.c;

			if ((rc = copy_out(dev, features + (size_t) s0 * per,
							   p->arena + p->off[p->owner[m->features_node]],
							   (size_t) r * per, err)) != MT_OK)
				goto done;
		}
		if (logits != NULL && m->logits_node >= 0)
		{
			mt_shape3	l = p->shp[m->logits_node];
			size_t		per = (size_t) l.h * l.w * l.c;

			if ((rc = copy_out(dev, logits + (size_t) s0 * per,
							   p->arena + p->off[p->owner[m->logits_node]],
							   (size_t) r * per, err)) != MT_OK)
				goto done;
		}
	}
done:
	if (dev != NULL)
	{
		mt_err		e2;
		int			rc2;

		/* the void entries run asynchronously: their first failure, if any */
		mt_clearerr(&e2);
		rc2 = dev->synchronize(&e2);
		if (rc == MT_OK && rc2 != MT_OK)
		{
			rc = rc2;
			if (err != NULL)
				*err = e2;
		}
		/* the device arena is kept across passes (arena_keep is for host memory) */
		if (rc != MT_OK || m->no_arena_keep)
			plan_free_arena(p);
	}
	else if (p->total * sizeof(float) > arena_keep || m->no_arena_keep)
		plan_free_arena(p);
	if (rc == MT_ERR_UNSUPPORTED && dev == NULL && m->packed_released)
	{
		/*
		 * a convolution whose packed weights only a kernel cache held could
		 * not run from it (oneDNN turned off, or no kernel for this shape):
		 * pack them again, keep them, and run the pass again
		 */
		mt_clearerr(err);
		m->keep_packed = 1;
		free_packed(m);
		return mt_model_forward(m, x, n, h, w, logits, features, err);
	}
	return rc;
}

size_t
mt_model_plan_bytes(const mt_model *m)
{
	return m->plan != NULL && m->plan->arena != NULL && m->plan->arena_be == NULL ?
		m->plan->total * sizeof(float) : 0;
}

void
mt_model_free(mt_model *m)
{
	if (m == NULL)
		return;
	mt_model_train_release(m);
	mt_model_step_cache_release(m);
	mt_model_release_device(m);
	if (m->nodes != NULL)
		free_packed(m);
	if (m->params != NULL)
		for (int i = 0; i < m->n_params; i++)
		{
			mt_free(m->params[i].data);
			mt_free(m->params[i].grad);
		}
	mt_free(m->nodes);
	mt_free(m->params);
	mt_free(m);
}

size_t
mt_model_memory(const mt_model *m)
{
	size_t		total = 0;

	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].data != NULL)
			total += m->params[i].numel * sizeof(float);
	for (int i = 0; i < m->n_nodes; i++)
		if (m->nodes[i].packed != NULL && m->nodes[i].kind == MT_NODE_CONV)
		{
			mt_conv_desc d = conv_desc(&m->nodes[i], MT_ACT_NONE);

			total += (mt_conv_packed_size(&d) + m->nodes[i].cout) * sizeof(float);
		}
		else if (m->nodes[i].packed != NULL && m->nodes[i].kind == MT_NODE_CONV_TRANSPOSE)
		{
			mt_conv_desc d = mt_node_tconv_desc(&m->nodes[i], MT_ACT_NONE);

			total += (mt_conv_packed_size(&d) + m->nodes[i].cout) * sizeof(float);
		}
	return total;
}
