/*
 * train.c - freezing, the training forward pass, the backward pass, the
 * cross-entropy loss, optimizers, parameter copies and initialisation.
 *
 * The training forward pass runs the graph as built (no batch-norm folding,
 * no fused activations) from the lowest node that a trainable parameter
 * feeds; the nodes below it run as inference with the folded weights of
 * mt_model_prepare (when no BN among them uses batch statistics).  It keeps,
 * per node, only what that node's backward reads:
 *
 *   convolution   its input, when the weight trains
 *   batch norm    its input, batch mean and 1/std (batch statistics); nothing
 *                 in inference mode
 *   activation    its output (also for an activation fused into a node);
 *                 SiLU, whose output does not determine its slope: its input
 *                 (so SiLU must be a node of its own in training)
 *   max pool      its input (the window maxima are recomputed)
 *   linear        its input, when the weight trains
 *   channel scale both inputs (squeeze-and-excitation)
 *   add, concatenation, average pools: nothing
 *
 * A kept buffer is shared: a ReLU's output kept for its own backward is also
 * the next convolution's input.  The backward pass walks the nodes in
 * reverse, frees each kept buffer after its last reader and hands gradient
 * buffers down the graph (in place through activations and additions).
 */
#include "train.h"
#include "onednn.h"
#include "ops_cpu_internal.h"
#include "../io/augment.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

struct mt_train_state
{
	int			n,
				h,
				w;				/* input batch */
	int			n_nodes;
	mt_shape3  *shp;			/* output shape of every node */
	int		   *owner;			/* node whose buffer holds node i's output */
	float	  **buf;			/* outputs kept for backward, by owner */
	float	  **bn_mean;		/* batch-statistics BN: mean, per channel */
	float	  **bn_invstd;		/* ... and 1 / sqrt(var + eps) */
	unsigned char *req;			/* output depends on a trainable parameter */
	unsigned char *fused;		/* an activation its producer applied */
	int		   *bw_last;		/* lowest node whose backward reads buf[k], or -1 */
	int			first;			/* lowest node with req, n_nodes if none */
	size_t		bytes;			/* kept bytes */
	struct mt_devtrain *dt;		/* buffers in its arena; NULL: host memory */
	struct mt_step_cache *cache;	/* host: the model's reusable blocks */
	/* head dropout (train.h): the mask and the head's dropped input */
	float	   *drop_mask;
	float	   *drop_x;
	/* a byte batch's rendered segmentation masks (n x h x w bytes), for the loss */
	float	   *mask;
};

/*
 * Host blocks of a training step kept for the next one.  Every step of a
 * run asks for the same sizes in the same order; fresh large blocks come
 * from mmap and cost a page fault per 4 kB touched (about 130,000 a
 * MobileNetV2 step at batch 16), so freed blocks of STEP_BLOCK_MIN bytes
 * or more wait here and are handed out again best fit.  The cache never
 * holds more than 1.5 times the most the step had in use at once: holding
 * only the peak dropped, every ResNet-18 step, the blocks that sizes
 * taken by near fits had left without a match (75 MB a step allocated
 * fresh and page-faulted, about 6% of the step).  It is emptied by
 * mt_model_step_cache_release() (end of a run, mt_model_free), which also
 * frees the buffer oneDNN's input gradients go through (onednn.c).
 */
#define STEP_BLOCK_MIN ((size_t) 1 << 18)

typedef struct step_block
{
	float	   *p;
	size_t		cap;			/* floats */
} step_block;

struct mt_step_cache
{
	step_block *free_blk;		/* waiting to be reused */
	int			n_free,
				cap_free;
	step_block *used;			/* handed out */
	int			n_used,
				cap_used;
	size_t		held,			/* floats in free_blk */
				live,			/* floats in used */
				peak;			/* most ever in used */
};

/* Whether parameter idx receives gradients. */
static int
param_trains(const mt_model *m, int idx)
{
	const mt_param *p;

	if (idx < 0 || idx >= m->n_params)
		return 0;
	p = &m->params[idx];
	return p->trainable && !p->is_buffer && !p->is_counter && p->data != NULL;
}

/* Whether a parameter can train at all (a weight or bias, not a statistic). */
static int
param_learnable(const mt_param *p)
{
	return !p->is_buffer && !p->is_counter;
}

/* Whether any of a node's own parameters trains. */
static int
node_trains(const mt_model *m, const mt_node *nd)
{
	return param_trains(m, nd->p_weight) || param_trains(m, nd->p_bias) ||
		param_trains(m, nd->p_bn_weight) || param_trains(m, nd->p_bn_bias);
}

/* Whether a BN node normalises with batch statistics in training. */
static int
bn_uses_batch(const mt_model *m, const mt_node *nd)
{
	return nd->kind == MT_NODE_BN &&
		(param_trains(m, nd->p_bn_weight) || m->bn_train_frozen);
}

/* Whether the node applies its own (as built) activation in training. */
static int
node_applies_act(const mt_node *nd)
{
	return nd->act != MT_ACT_NONE &&
		(nd->kind == MT_NODE_CONV || nd->kind == MT_NODE_BN ||
		 nd->kind == MT_NODE_ACT || nd->kind == MT_NODE_ADD ||
		 nd->kind == MT_NODE_CONV_TRANSPOSE);
}

/*
 * Whether the host's training convolutions go to oneDNN directly, on the
 * parameters' own layout (onednn.h), instead of through be's packed
 * entries: for the CPU backend itself, when oneDNN is in use.
 */
static int
host_onednn(const mt_backend *be)
{
	return be == &mt_cpu_backend && mt_onednn_enabled();
}

/* Elements of node i's output. */
static size_t
node_len(const struct mt_train_state *st, int i)
{
	return (size_t) st->n * st->shp[i].h * st->shp[i].w * st->shp[i].c;
}

/*
 * Training on a device (train.h).  The device copy of the parameters:
 * every float parameter's values (convolution and transposed-convolution
 * weights in the packed layout of mt_conv_pack_oihw, which the convolution
 * entries read and their weight gradients add into; the optimizer updates
 * are elementwise, so the layout is theirs too) and the gradients of the
 * trainable ones, in one block of device memory.  A step's activations,
 * saved state and gradient buffers come from one device arena: a first-fit
 * sub-allocator whose bookkeeping is on the host.  The first step at a new
 * shape finds how much it needs (what does not fit gets its own
 * allocation); the arena is then made that large, and from the next step
 * on nothing else is allocated.
 */
typedef struct dt_blk
{
	size_t		off,			/* floats into the arena's address range */
				len;
	float	   *ptr;			/* arena + off, or its own allocation */
	int			own;
} dt_blk;

struct mt_devtrain
{
	const mt_backend *be;
	void	   *block;			/* values, then gradients */
	size_t		block_bytes;
	float	  **data;			/* per parameter: its values on the device, or NULL */
	float	  **grad;			/* per parameter: its gradient (trainable ones), or NULL */
	float	   *grads;			/* the gradients' part of block */
	size_t		grads_len;		/* floats */
	unsigned char *had_grad;	/* a backward pass reached it (torch: grad not None) */
	int			host_stale;		/* the device changed values the host has not seen */
	float	   *arena;
	size_t		arena_len;		/* floats */
	size_t		want;			/* floats the arena needs (the largest step so far) */
	dt_blk	   *blk;			/* live blocks, by offset */
	int			n_blk,
				cap_blk;
	int			alloc_rc;		/* why the last allocation failed */
	mt_err		pending;		/* a failure of mt_model_zero_grad, for the next pass */
};

#define DT_ALIGN 64				/* floats: 256-byte boundaries */

static size_t
dt_align(size_t v)
{
	return (v + DT_ALIGN - 1) / DT_ALIGN * DT_ALIGN;
}

/* A block of len floats from the arena (zeroed if asked); NULL on failure. */
static float *
dt_alloc(struct mt_devtrain *dt, size_t len, int zero)
{
	const mt_backend *be = dt->be;
	size_t		at = 0;
	int			j;
	dt_blk		b;
	mt_err		e;

	mt_clearerr(&e);
	len = dt_align(len > 0 ? len : 1);
	for (j = 0; j < dt->n_blk; j++)
	{
		if (dt->blk[j].off >= at + len)
			break;
		if (dt->blk[j].off + dt->blk[j].len > at)
			at = dt->blk[j].off + dt->blk[j].len;
	}
	if (dt->n_blk == dt->cap_blk)
	{
		int			cap = dt->cap_blk > 0 ? 2 * dt->cap_blk : 64;
		dt_blk	   *nb = mt_malloc(sizeof(dt_blk) * cap);

		if (nb == NULL)
		{
			dt->alloc_rc = MT_ERR_NOMEM;
			return NULL;
		}
		if (dt->n_blk > 0)
			memcpy(nb, dt->blk, sizeof(dt_blk) * dt->n_blk);
		mt_free(dt->blk);
		dt->blk = nb;
		dt->cap_blk = cap;
	}
	b.off = at;
	b.len = len;
	b.own = 0;
	if (at + len > dt->want)
		dt->want = at + len;
	if (dt->arena != NULL && at + len <= dt->arena_len)
		b.ptr = dt->arena + at;
	else
	{
		void	   *p = NULL;

		if ((dt->alloc_rc = be->mem_alloc(&p, len * sizeof(float), &e)) != MT_OK)
			return NULL;
		b.ptr = p;
		b.own = 1;
	}
	if (zero && (dt->alloc_rc = be->mem_zero(b.ptr, len * sizeof(float), &e)) != MT_OK)
	{
		if (b.own)
			be->mem_free(b.ptr);
		return NULL;
	}
	memmove(&dt->blk[j + 1], &dt->blk[j], sizeof(dt_blk) * (dt->n_blk - j));
	dt->blk[j] = b;
	dt->n_blk++;
	return b.ptr;
}

static void
dt_release(struct mt_devtrain *dt, float *p)
{
	if (p == NULL)
		return;
	for (int j = 0; j < dt->n_blk; j++)
		if (dt->blk[j].ptr == p)
		{
			if (dt->blk[j].own)
				dt->be->mem_free(p);
			memmove(&dt->blk[j], &dt->blk[j + 1], sizeof(dt_blk) * (dt->n_blk - j - 1));
			dt->n_blk--;
			return;
		}
}

/*
 * At the start of a step (nothing allocated): make the arena as large as
 * the largest step so far needed.  A failure leaves it as it was (the
 * blocks then get their own allocations, which report the shortage).
 */
static void
dt_arena_fit(struct mt_devtrain *dt)
{
	void	   *p = NULL;
	mt_err		e;

	if (dt->n_blk > 0 || dt->want <= dt->arena_len)
		return;
	mt_clearerr(&e);
	dt->be->mem_free(dt->arena);
	dt->arena = NULL;
	dt->arena_len = 0;
	if (dt->be->mem_alloc(&p, dt->want * sizeof(float), &e) == MT_OK)
	{
		dt->arena = p;
		dt->arena_len = dt->want;
	}
}

/* Append b to a growing array of blocks; 0 when out of memory. */
static int
blocks_push(step_block **arr, int *n, int *cap, step_block b)
{
	if (*n == *cap)
	{
		int			nc = *cap > 0 ? 2 * *cap : 32;
		step_block *na = mt_malloc(sizeof(step_block) * nc);

		if (na == NULL)
			return 0;
		if (*n > 0)
			memcpy(na, *arr, sizeof(step_block) * *n);
		mt_free(*arr);
		*arr = na;
		*cap = nc;
	}
	(*arr)[(*n)++] = b;
	return 1;
}

static float *
cache_alloc(struct mt_step_cache *c, size_t len, int zero)
{
	int			best = -1;
	step_block	b;

	for (int i = 0; i < c->n_free; i++)
		if (c->free_blk[i].cap >= len && c->free_blk[i].cap <= len + len / 2 &&
			(best < 0 || c->free_blk[i].cap < c->free_blk[best].cap))
			best = i;
	if (best >= 0)
	{
		b = c->free_blk[best];
		c->free_blk[best] = c->free_blk[--c->n_free];
		c->held -= b.cap;
		if (zero)
			memset(b.p, 0, len * sizeof(float));
	}
	else
	{
		b.cap = len;
		b.p = zero ? mt_calloc(len, sizeof(float)) : mt_malloc(len * sizeof(float));
		if (b.p == NULL)
			return NULL;
	}
	if (!blocks_push(&c->used, &c->n_used, &c->cap_used, b))
	{
		mt_free(b.p);
		return NULL;
	}
	c->live += b.cap;
	if (c->live > c->peak)
		c->peak = c->live;
	return b.p;
}

/* 1 when p was one of the cache's blocks (then it is free or kept) */
static int
cache_free(struct mt_step_cache *c, float *p)
{
	for (int i = c->n_used - 1; i >= 0; i--)
	{
		step_block	b = c->used[i];

		if (b.p != p)
			continue;
		c->used[i] = c->used[--c->n_used];
		c->live -= b.cap;
		if (c->held + b.cap > c->peak + c->peak / 2 ||
			!blocks_push(&c->free_blk, &c->n_free, &c->cap_free, b))
			mt_free(b.p);
		else
			c->held += b.cap;
		return 1;
	}
	return 0;
}

/* Free the blocks the cache keeps (those in use stay with their owners). */
void
mt_model_step_cache_release(mt_model *m)
{
	struct mt_step_cache *c = m != NULL ? m->step_cache : NULL;

	mt_onednn_release_scratch();	/* the input-gradient buffer of oneDNN */
	if (c == NULL)
		return;
	for (int i = 0; i < c->n_free; i++)
		mt_free(c->free_blk[i].p);
	c->n_free = 0;
	c->held = 0;
	if (c->n_used == 0)
	{
		mt_free(c->free_blk);
		mt_free(c->used);
		mt_free(c);
		m->step_cache = NULL;
	}
}

/*
 * Step memory: the device's arena when training runs on a device, else
 * the heap, large blocks through the model's step cache.
 */
static float *
t_alloc(struct mt_train_state *st, size_t len, int zero)
{
	if (st->dt != NULL)
		return dt_alloc(st->dt, len, zero);
	if (st->cache != NULL && len * sizeof(float) >= STEP_BLOCK_MIN)
		return cache_alloc(st->cache, len, zero);
	return zero ? mt_calloc(len, sizeof(float)) : mt_malloc(len * sizeof(float));
}

static void
t_free(struct mt_train_state *st, float *p)
{
	if (p == NULL)
		return;
	if (st->dt != NULL)
		dt_release(st->dt, p);
	else if (st->cache == NULL || !cache_free(st->cache, p))
		mt_free(p);
}

/*
 * The convolution whose packed layout parameter i has on the device (a
 * convolution's or transposed convolution's weight): 1 and *d, else 0.
 */
static int
param_packing(const mt_model *m, int i, mt_conv_desc *d)
{
	for (int k = 0; k < m->n_nodes; k++)
	{
		const mt_node *nd = &m->nodes[k];

		if (nd->p_weight != i)
			continue;
		if (nd->kind == MT_NODE_CONV)
		{
			*d = mt_node_conv_desc(m, nd, 1, 1, MT_ACT_NONE);
			return 1;
		}
		if (nd->kind == MT_NODE_CONV_TRANSPOSE)
		{
			*d = mt_node_tconv_desc(nd, MT_ACT_NONE);
			return 1;
		}
	}
	return 0;
}

/* Upload numel host values of parameter i's layout (packing a conv weight). */
static int
dev_put(const mt_model *m, const mt_backend *be, int i, float *dst, const float *src,
		mt_err *err)
{
	size_t		numel = m->params[i].numel;
	mt_conv_desc d;
	float	   *tmp;
	int			rc;

	if (!param_packing(m, i, &d))
		return be->upload(dst, src, numel * sizeof(float), err);
	if ((tmp = mt_malloc(numel * sizeof(float))) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory packing \"%s\"", m->params[i].name);
	mt_conv_pack_oihw(&d, src, tmp);
	rc = be->upload(dst, tmp, numel * sizeof(float), err);
	mt_free(tmp);
	return rc;
}

/* Download parameter i's device layout into host values (unpacking). */
static int
dev_get(const mt_model *m, const mt_backend *be, int i, float *dst, const float *src,
		mt_err *err)
{
	size_t		numel = m->params[i].numel;
	mt_conv_desc d;
	float	   *tmp;
	int			rc;

	if (!param_packing(m, i, &d))
		return be->download(dst, src, numel * sizeof(float), err);
	if ((tmp = mt_malloc(numel * sizeof(float))) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory unpacking \"%s\"", m->params[i].name);
	if ((rc = be->download(tmp, src, numel * sizeof(float), err)) == MT_OK)
	{
		memset(dst, 0, numel * sizeof(float));
		mt_conv_unpack_add_oihw(&d, tmp, dst);
	}
	mt_free(tmp);
	return rc;
}

/* Free the device training state without syncing. */
void
mt_model_train_device_free(mt_model *m)
{
	struct mt_devtrain *dt = m->devtrain;

	if (dt == NULL)
		return;
	mt_model_train_release(m);
	for (int j = 0; j < dt->n_blk; j++)
		if (dt->blk[j].own)
			dt->be->mem_free(dt->blk[j].ptr);
	dt->be->mem_free(dt->arena);
	dt->be->mem_free(dt->block);
	mt_free(dt->blk);
	mt_free(dt->data);
	mt_free(dt->grad);
	mt_free(dt->had_grad);
	mt_free(dt);
	m->devtrain = NULL;
}

/* Copy what device training changed back into the host copy. */
int
mt_model_sync_to_host(mt_model *m, mt_err *err)
{
	struct mt_devtrain *dt = m->devtrain;
	int			rc;

	if (dt == NULL || !dt->host_stale)
		return MT_OK;
	if ((rc = dt->be->synchronize(err)) != MT_OK)
		return rc;
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];

		if (dt->data[i] != NULL &&
			(rc = dev_get(m, dt->be, i, p->data, dt->data[i], err)) != MT_OK)
			return rc;
		if (dt->grad[i] != NULL && dt->had_grad[i])
		{
			if (p->grad == NULL && (p->grad = mt_calloc(p->numel, sizeof(float))) == NULL)
				return mt_seterr(err, MT_ERR_NOMEM, "out of memory for the gradient of \"%s\"",
								 p->name);
			if ((rc = dev_get(m, dt->be, i, p->grad, dt->grad[i], err)) != MT_OK)
				return rc;
		}
	}
	dt->host_stale = 0;
	m->prepared = 0;			/* the folded copies are of the old values */
	return MT_OK;
}

/* Sync, then free the device training state. */
int
mt_model_train_device_drop(mt_model *m, mt_err *err)
{
	int			rc = mt_model_sync_to_host(m, err);

	if (rc == MT_OK)
		mt_model_train_device_free(m);
	return rc;
}

/*
 * The device training state of a model on a device (mt_model_to_device),
 * made from the host copy if there is none: one block for the values of
 * every float parameter and the gradients of the trainable ones (a host
 * gradient, if any, is uploaded; otherwise zero).
 */
static int
dt_create(mt_model *m, mt_err *err)
{
	const mt_backend *be = mt_model_device(m);
	struct mt_devtrain *dt;
	size_t		vals = 0,
				grads = 0;
	float	   *base;
	void	   *blk = NULL;
	int			rc;

	if (m->devtrain != NULL)
		return MT_OK;
	for (int i = 0; i < m->n_params; i++)
	{
		const mt_param *p = &m->params[i];

		if (p->is_counter || p->data == NULL)
			continue;
		vals += dt_align(p->numel);
		if (param_trains(m, i))
			grads += dt_align(p->numel);
	}
	if ((dt = mt_calloc(1, sizeof(*dt))) == NULL ||
		(dt->data = mt_calloc(m->n_params, sizeof(float *))) == NULL ||
		(dt->grad = mt_calloc(m->n_params, sizeof(float *))) == NULL ||
		(dt->had_grad = mt_calloc(m->n_params, 1)) == NULL)
	{
		if (dt != NULL)
		{
			mt_free(dt->data);
			mt_free(dt->grad);
			mt_free(dt);
		}
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory moving training of %s to a device",
						 m->arch);
	}
	dt->be = be;
	if ((rc = be->mem_alloc(&blk, (vals + grads) * sizeof(float), err)) != MT_OK)
		goto fail;
	dt->block = blk;
	dt->block_bytes = (vals + grads) * sizeof(float);
	base = blk;
	dt->grads = base + vals;
	dt->grads_len = grads;
	if (grads > 0 && (rc = be->mem_zero(dt->grads, grads * sizeof(float), err)) != MT_OK)
		goto fail;
	{
		float	   *g = dt->grads;

		for (int i = 0; i < m->n_params; i++)
		{
			mt_param   *p = &m->params[i];

			if (p->is_counter || p->data == NULL)
				continue;
			dt->data[i] = base;
			base += dt_align(p->numel);
			if ((rc = dev_put(m, be, i, dt->data[i], p->data, err)) != MT_OK)
				goto fail;
			if (!param_trains(m, i))
				continue;
			dt->grad[i] = g;
			g += dt_align(p->numel);
			if (p->grad != NULL)
			{
				if ((rc = dev_put(m, be, i, dt->grad[i], p->grad, err)) != MT_OK)
					goto fail;
				dt->had_grad[i] = 1;
			}
		}
	}
	m->devtrain = dt;
	return MT_OK;

fail:
	m->devtrain = dt;
	mt_model_train_device_free(m);
	return rc;
}

/* Parameter idx's values where training runs (NULL for idx < 0). */
static float *
pdata(const mt_model *m, int idx)
{
	if (idx < 0)
		return NULL;
	return m->devtrain != NULL ? m->devtrain->data[idx] : m->params[idx].data;
}

/* Free a training state and everything it holds. */
static void
train_state_free(struct mt_train_state *st)
{
	if (st == NULL)
		return;
	for (int i = 0; i < st->n_nodes; i++)
	{
		if (st->buf != NULL)
			t_free(st, st->buf[i]);
		if (st->bn_mean != NULL)
			t_free(st, st->bn_mean[i]);
		if (st->bn_invstd != NULL)
			t_free(st, st->bn_invstd[i]);
	}
	t_free(st, st->drop_mask);
	t_free(st, st->drop_x);
	t_free(st, st->mask);
	mt_free(st->shp);
	mt_free(st->owner);
	mt_free(st->buf);
	mt_free(st->bn_mean);
	mt_free(st->bn_invstd);
	mt_free(st->req);
	mt_free(st->fused);
	mt_free(st->bw_last);
	mt_free(st);
}

/* Drop the saved training state. */
void
mt_model_train_release(mt_model *m)
{
	if (m == NULL || m->train == NULL)
		return;
	train_state_free(m->train);
	m->train = NULL;
}

/* Bytes held by the saved training state. */
size_t
mt_model_train_memory(const mt_model *m)
{
	return m->train != NULL ? m->train->bytes : 0;
}

/* Whether name is prefix itself or starts with prefix followed by a dot. */
static int
name_in_stage(const char *name, const char *prefix)
{
	size_t		len = strlen(prefix);

	return strncmp(name, prefix, len) == 0 && (name[len] == '\0' || name[len] == '.');
}

/*
 * Whether parameter i trains under a freeze setting: mode 0 everything, 1
 * the head only, 2 everything after parameter `last`.
 */
static int
freeze_flag(const mt_model *m, int mode, int last, int i)
{
	const mt_node *head;

	if (!param_learnable(&m->params[i]))
		return 0;
	if (mode == 0)
		return 1;
	if (mode == 2)
		return i > last;
	if (m->backbone_prefix != NULL)
		return strncmp(m->params[i].name, m->backbone_prefix, strlen(m->backbone_prefix)) != 0;
	head = &m->nodes[m->logits_node];
	return i == head->p_weight || i == head->p_bias;
}

/* Choose the trainable parameters (see train.h). */
int
mt_model_freeze(mt_model *m, const char *upto, mt_err *err)
{
	int			mode,
				last = -1,
				count = 0;

	if (upto == NULL || upto[0] == '\0' || strcmp(upto, "none") == 0)
		mode = 0;
	else if (strcmp(upto, "backbone") == 0)
	{
		if (m->logits_node < 0)
			return mt_seterr(err, MT_ERR_INVALID, "model %s has no classifier head", m->arch);
		mode = 1;
	}
	else
	{
		mode = 2;
		for (int i = 0; i < m->n_params; i++)
			if (name_in_stage(m->params[i].name, upto))
				last = i;
		if (last < 0)
		{
			mt_seterr(err, MT_ERR_INVALID, "unknown stage \"%s\" for architecture %s",
					  upto, m->arch);
			mt_setdetail(err, "A stage is a parameter-name prefix such as \"%s\", or \"none\" or \"backbone\".",
						 strncmp(m->arch, "unet_resnet", 11) == 0 ? "encoder.layer3" :
						 strncmp(m->arch, "unet_", 5) == 0 ? "encoder.features.13" :
						 strncmp(m->arch, "resnet", 6) == 0 ? "layer3" :
						 strncmp(m->arch, "vit_", 4) == 0 ? "encoder.layers.encoder_layer_9" :
						 strncmp(m->arch, "densenet", 8) == 0 ? "features.denseblock3" :
						 strncmp(m->arch, "efficientnet", 12) == 0 ? "features.5" : "features.13");
			return MT_ERR_INVALID;
		}
	}
	for (int i = 0; i < m->n_params; i++)
		count += freeze_flag(m, mode, last, i);
	if (count == 0)
		return mt_seterr(err, MT_ERR_INVALID, "freezing up to \"%s\" leaves nothing to train in %s",
						 upto, m->arch);

	/* a device training copy holds gradients for the old choice: made again */
	{
		int			rc = mt_model_train_device_drop(m, err);

		if (rc != MT_OK)
			return rc;
	}
	mt_model_train_release(m);
	for (int i = 0; i < m->n_params; i++)
	{
		m->params[i].trainable = freeze_flag(m, mode, last, i);
		if (!m->params[i].trainable && m->params[i].grad != NULL)
		{
			mt_free(m->params[i].grad);
			m->params[i].grad = NULL;
		}
	}
	return MT_OK;
}

/* Number of trainable tensors and (optionally) values. */
int
mt_model_trainable_count(const mt_model *m, size_t *n_values)
{
	int			count = 0;
	size_t		values = 0;

	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].trainable && param_learnable(&m->params[i]))
		{
			count++;
			values += m->params[i].numel;
		}
	if (n_values != NULL)
		*n_values = values;
	return count;
}

/* Zero every gradient buffer. */
void
mt_model_zero_grad(mt_model *m)
{
	struct mt_devtrain *dt = m->devtrain;

	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].grad != NULL)
			memset(m->params[i].grad, 0, m->params[i].numel * sizeof(float));
	/* the device's gradients are one range; a failure shows at the next synchronize */
	if (dt != NULL && dt->grads_len > 0)
	{
		mt_err		e;

		mt_clearerr(&e);
		if (dt->be->mem_zero(dt->grads, dt->grads_len * sizeof(float), &e) != MT_OK &&
			dt->pending.code == MT_OK)
			dt->pending = e;
	}
}

/* The parameter's gradient buffer, allocated zeroed on first use. */
static float *
param_grad(mt_model *m, int idx)
{
	mt_param   *p = &m->params[idx];

	if (m->devtrain != NULL)
	{
		/* the device copy's (made with the state, zeroed) */
		m->devtrain->had_grad[idx] = 1;
		return m->devtrain->grad[idx];
	}
	if (p->grad == NULL)
		p->grad = mt_calloc(p->numel, sizeof(float));
	return p->grad;
}

/*
 * Run node i of the training part of the graph: the graph as built, raw
 * parameters, batch statistics where BN trains.  wpack, scratch and the
 * four per-channel arrays are caller-provided work space.
 */
static int
run_train_node(mt_model *m, struct mt_train_state *st, int i, const float *a,
			   const float *b, float *y, float *wpack, float *scratch,
			   float *mean, float *var, float *scale, float *shift,
			   int *stats_changed, mt_err *err)
{
	const mt_backend *be = st->dt != NULL ? st->dt->be : m->backend;
	mt_node    *nd = &m->nodes[i];
	mt_shape3	in = nd->in0 >= 0 ? st->shp[nd->in0] : (mt_shape3) {st->h, st->w, 3};
	int			n = st->n;
	size_t		rows = (size_t) n * in.h * in.w;
	size_t		len = node_len(st, i);
	/* an activation node right after, applied here (see fuse_act) */
	mt_act		act = i + 1 < st->n_nodes && st->fused[i + 1] ? m->nodes[i + 1].act : nd->act;

	switch (nd->kind)
	{
		case MT_NODE_CONV:
			{
				mt_conv_desc d = mt_node_conv_desc(m, nd, in.h, in.w, nd->act);
				const float *wt = pdata(m, nd->p_weight);

				/* on a device the weights are kept packed */
				if (st->dt == NULL)
				{
					if (host_onednn(be))
					{
						/* oneDNN reads the weights as they are */
						int			rc = mt_onednn_train_forward(&d, n, in.h, in.w, a, wt,
																 pdata(m, nd->p_bias), y, err);

						if (rc != MT_ERR_UNSUPPORTED)
							return rc;
						mt_clearerr(err);	/* a shape oneDNN does not take */
					}
					mt_conv_pack_oihw(&d, wt, wpack);
					wt = wpack;
				}
				return be->conv2d(&d, n, in.h, in.w, a, wt, pdata(m, nd->p_bias),
								  y, scratch, err);
			}
		case MT_NODE_BN:
			{
				int			c = in.c;
				const float *g = pdata(m, nd->p_bn_weight);
				const float *beta = pdata(m, nd->p_bn_bias);
				float	   *rm = pdata(m, nd->p_bn_mean);
				float	   *rv = pdata(m, nd->p_bn_var);

				if (bn_uses_batch(m, nd))
				{
					double		unbias;

					if (rows < 2)
						return mt_seterr(err, MT_ERR_SHAPE,
										 "batch norm \"%s\" needs more than one value per channel in training",
										 m->params[nd->p_bn_weight].name);
					unbias = (double) rows / (double) (rows - 1);
					if (st->req[i])
					{
						/* backward reads the mean and 1/std: computed in place */
						st->bn_mean[i] = t_alloc(st, c, 0);
						st->bn_invstd[i] = t_alloc(st, c, 0);
						if (st->bn_mean[i] == NULL || st->bn_invstd[i] == NULL)
							return mt_seterr(err, st->dt && st->dt->alloc_rc ? st->dt->alloc_rc : MT_ERR_NOMEM,
											 "out of memory in training forward pass");
						mean = st->bn_mean[i];
						var = st->bn_invstd[i];
						st->bytes += 2 * sizeof(float) * c;
					}
					be->channel_stats(rows, c, a, mean, var);
					be->bn_train_coeffs(c, g, beta, rm, rv, nd->eps, MT_BN_MOMENTUM, unbias,
										mean, var, scale, shift);
					*stats_changed = 1;
				}
				else
					be->bn_train_coeffs(c, g, beta, rm, rv, nd->eps, 0.0f, 0.0, NULL, NULL,
										scale, shift);
				be->channel_affine(rows, c, a, scale, shift, act, y);
				break;
			}
		case MT_NODE_CONV_TRANSPOSE:
			{
				mt_conv_desc d = mt_node_tconv_desc(nd, nd->act);
				const float *wt = pdata(m, nd->p_weight);

				if (be->conv_transpose2d == NULL)
					return mt_seterr(err, MT_ERR_UNSUPPORTED,
									 "the %s backend has no transposed convolution", be->name);
				if (st->dt == NULL)
				{
					mt_conv_pack_oihw(&d, wt, wpack);
					wt = wpack;
				}
				return be->conv_transpose2d(&d, n, in.h, in.w, a, wt, pdata(m, nd->p_bias),
											y, scratch, err);
			}
		case MT_NODE_ADD:
			/* the activation as built (inference may have fused another into run_act) */
			be->add_act(len, a, b, act, y);
			break;
		default:
			/* activations, pooling, linear: the same as in inference */
			if (st->dt != NULL)
				return mt_node_run(m, be, nd, pdata(m, nd->p_weight), pdata(m, nd->p_bias),
								   n, in, a, b, y, scratch, err);
			return mt_node_run_prepared(m, nd, n, in, a, b, y, scratch, err);
	}
	return MT_OK;
}

void
mt_dropout_mask(mt_model *m, int n, int d, float *mask)
{
	float		p = m->head_dropout;
	float		keep = 1.0f / (1.0f - p);
	size_t		len = (size_t) n * d;

	for (size_t i = 0; i < len; i++)
		mask[i] = mt_rng_uniform(&m->dropout_rng) < p ? 0.0f : keep;
}

/*
 * Head dropout in a training pass: a fresh mask (drawn on the host,
 * uploaded on a device) times the logits node's input, both kept for the
 * backward pass; *a then points at the dropped input.
 */
static int
drop_head_input(mt_model *m, struct mt_train_state *st, const mt_node *nd,
				const float **a, mt_err *err)
{
	const mt_backend *be = st->dt != NULL ? st->dt->be : m->backend;
	size_t		len = (size_t) st->n * nd->in_features;
	int			rc = MT_OK;

	st->drop_mask = t_alloc(st, len, 0);
	st->drop_x = t_alloc(st, len, 0);
	if (st->drop_mask == NULL || st->drop_x == NULL)
		return mt_seterr(err, st->dt && st->dt->alloc_rc ? st->dt->alloc_rc : MT_ERR_NOMEM,
						 "out of memory for the head's dropout mask");
	if (st->dt != NULL)
	{
		float	   *host = mt_malloc(len * sizeof(float));

		if (host == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory for the head's dropout mask");
		mt_dropout_mask(m, st->n, nd->in_features, host);
		rc = be->upload(st->drop_mask, host, len * sizeof(float), err);
		mt_free(host);
		if (rc != MT_OK)
			return rc;
	}
	else
		mt_dropout_mask(m, st->n, nd->in_features, st->drop_mask);
	be->scale_channels(st->n, 1, nd->in_features, *a, st->drop_mask, st->drop_x);
	st->bytes += 2 * len * sizeof(float);
	*a = st->drop_x;
	return MT_OK;
}

/* Record that node j's backward reads buffer k. */
static void
mark_read(struct mt_train_state *st, int k, int j)
{
	if (st->bw_last[k] < 0 || j < st->bw_last[k])
		st->bw_last[k] = j;
}

/* A batch of bytes to render on the device (mt_model_forward_train_u8). */
typedef struct u8_batch
{
	const uint8_t *src;			/* NULL: the images came as floats */
	const double *params;
	const float *mean;
	const float *std;
	const uint8_t *masks;		/* source masks, or NULL */
} u8_batch;

/*
 * A byte batch's augmentation rows uploaded once for the images' and the
 * masks' rendering on the device (*dpar NULL when nothing there needs them).
 */
static int
upload_params(struct mt_train_state *st, const u8_batch *u8, int n, float **dpar, mt_err *err)
{
	size_t		pbytes = (size_t) n * MT_AUG_PARAMS * sizeof(double);
	int			rc;

	*dpar = NULL;
	if (st->dt == NULL || u8 == NULL || u8->params == NULL ||
		(u8->src == NULL && (u8->masks == NULL || st->dt->be->augment_masks == NULL)))
		return MT_OK;
	if ((*dpar = t_alloc(st, pbytes / 4, 0)) == NULL)
		return mt_seterr(err, st->dt->alloc_rc != MT_OK ? st->dt->alloc_rc : MT_ERR_NOMEM,
						 "out of device memory for a training batch");
	if ((rc = st->dt->be->upload(*dpar, u8->params, pbytes, err)) != MT_OK)
	{
		t_free(st, *dpar);
		*dpar = NULL;
	}
	return rc;
}

/*
 * A byte batch's masks rendered under its rows into st->mask, where the
 * model trains (on a device: uploaded and rendered there with the rows
 * upload_params put in dpar, or rendered on the host and uploaded when the
 * backend has no augment_masks entry).
 */
static int
render_masks(struct mt_train_state *st, const u8_batch *u8, const float *dpar, int n, int size,
			 mt_err *err)
{
	size_t		bytes = (size_t) n * size * size;
	const mt_backend *be = st->dt != NULL ? st->dt->be : NULL;
	float	   *dsrc = NULL;
	uint8_t    *host = NULL;
	int			rc = MT_OK;

	if ((st->mask = t_alloc(st, (bytes + 3) / 4, 0)) == NULL)
		goto nomem;
	if (be == NULL)
		return mt_cpu_augment_masks(n, size, u8->masks, u8->params, (uint8_t *) st->mask, err);
	if (be->augment_masks == NULL)
	{
		if ((host = mt_malloc(bytes)) == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a batch's masks");
		rc = mt_cpu_augment_masks(n, size, u8->masks, u8->params, host, err);
		if (rc == MT_OK)
			rc = be->upload(st->mask, host, bytes, err);
		mt_free(host);
		return rc;
	}
	if ((dsrc = t_alloc(st, (bytes + 3) / 4, 0)) == NULL)
		goto nomem;
	if ((rc = be->upload(dsrc, u8->masks, bytes, err)) == MT_OK)
		rc = be->augment_masks(n, size, (const uint8_t *) dsrc, (const double *) dpar,
							   (uint8_t *) st->mask, err);
	t_free(st, dsrc);
	return rc;

nomem:
	t_free(st, dsrc);
	if (be != NULL)
		return mt_seterr(err, st->dt->alloc_rc != MT_OK ? st->dt->alloc_rc : MT_ERR_NOMEM,
						 "out of device memory for a batch's masks");
	return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a batch's masks");
}

/* The input node's output on the device, rendered from the bytes there (rows in dpar). */
static int
render_u8_on_device(struct mt_train_state *st, const u8_batch *u8, const float *dpar, int n,
					int size, float *y, mt_err *err)
{
	const mt_backend *be = st->dt->be;
	size_t		bytes = (size_t) n * size * size * 3;
	float	   *dsrc = t_alloc(st, (bytes + 3) / 4, 0);
	int			rc;

	if (dsrc == NULL)
		rc = mt_seterr(err, st->dt->alloc_rc != MT_OK ? st->dt->alloc_rc : MT_ERR_NOMEM,
					   "out of device memory for a training batch");
	else if ((rc = be->upload(dsrc, u8->src, bytes, err)) == MT_OK)
		rc = be->augment_images(n, size, (const uint8_t *) dsrc, (const double *) dpar,
								u8->mean, u8->std, y, err);
	t_free(st, dsrc);
	return rc;
}

static int	forward_train(mt_model *m, const float *x, const u8_batch *u8, int n, int h, int w,
						  float *logits, float *features, mt_err *err);

int
mt_model_forward_train(mt_model *m, const float *x, int n, int h, int w,
					   float *logits, float *features, mt_err *err)
{
	return forward_train(m, x, NULL, n, h, w, logits, features, err);
}

int
mt_model_forward_train_u8(mt_model *m, const uint8_t *src, const double *params,
						  const uint8_t *masks, int n, int size, const float mean[3],
						  const float std[3], float *logits, float *features, mt_err *err)
{
	const mt_backend *dev = mt_model_device(m);
	u8_batch	u8 = {src, params, mean, std, masks};
	float	   *x;
	int			rc;

	if (n <= 0 || size <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "empty input batch");
	/* the masks' values are checked here, where they are still on the host */
	if (masks != NULL)
		for (size_t i = 0; i < (size_t) n * size * size; i++)
			if (masks[i] != 255 && masks[i] >= m->num_classes)
				return mt_seterr(err, MT_ERR_INVALID,
								 "mask value %d out of range for %d classes (255 marks a pixel to ignore)",
								 masks[i], m->num_classes);
	if (dev != NULL && dev->augment_images != NULL)
		return forward_train(m, NULL, &u8, n, size, size, logits, features, err);
	/* the host renders (the CPU backend's entry), then the floats go as usual */
	if ((x = mt_malloc(sizeof(float) * (size_t) n * size * size * 3)) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a training batch");
	rc = mt_cpu_backend.augment_images(n, size, src, params, mean, std, x, err);
	u8.src = NULL;
	if (rc == MT_OK)
		rc = forward_train(m, x, masks != NULL ? &u8 : NULL, n, size, size, logits, features, err);
	mt_free(x);
	return rc;
}

/* Forward pass in training mode (see train.h), from floats x or bytes u8. */
static int
forward_train(mt_model *m, const float *x, const u8_batch *u8, int n, int h, int w,
			  float *logits, float *features, mt_err *err)
{
	struct mt_train_state *st;
	int			nn = m->n_nodes;
	int		   *last_use = NULL;
	float	   *scratch = NULL,
			   *wpack = NULL,
			   *chan = NULL;
	size_t		scratch_len = 0,
				wpack_len = 0;
	int			max_c = 1;
	int			fast_end;
	int			stats_changed = 0;
	int			rc = MT_OK;

	mt_model_train_release(m);
	if (n <= 0 || h <= 0 || w <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "empty input batch");
	if (!(m->head_dropout >= 0.0f && m->head_dropout < 1.0f))
		return mt_seterr(err, MT_ERR_INVALID, "head dropout must be at least 0 and below 1");
	if ((rc = mt_model_check_complete(m, err)) != MT_OK)
		return rc;
	for (int i = 0; i < nn; i++)
		if (node_applies_act(&m->nodes[i]) && m->nodes[i].kind != MT_NODE_ACT &&
			mt_act_needs_input(m->nodes[i].act))
			return mt_seterr(err, MT_ERR_UNSUPPORTED,
							 "node %d of %s: an activation that needs its input for training must be a node of its own",
							 i, m->arch);

	/* the frozen prefix may need the packed weights (im2col + GEMM) */
	mt_model_keep_packed(m);

	/* on a device: its copy of the parameters, made once */
	if (mt_model_device(m) != NULL && (rc = dt_create(m, err)) != MT_OK)
		return rc;
	if (m->devtrain != NULL && m->devtrain->pending.code != MT_OK)
	{
		/* zero_grad failed: the gradients are not zero */
		if (err != NULL)
			*err = m->devtrain->pending;
		rc = m->devtrain->pending.code;
		mt_clearerr(&m->devtrain->pending);
		return rc;
	}
	if (m->devtrain != NULL)
		dt_arena_fit(m->devtrain);

	st = mt_calloc(1, sizeof(*st));
	if (st == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in training forward pass");
	st->dt = m->devtrain;
	if (st->dt == NULL && m->step_cache == NULL)
		m->step_cache = mt_calloc(1, sizeof(struct mt_step_cache));	/* NULL: plain heap */
	st->cache = st->dt == NULL ? m->step_cache : NULL;
	st->n = n;
	st->h = h;
	st->w = w;
	st->n_nodes = nn;
	st->shp = mt_calloc(nn, sizeof(mt_shape3));
	st->owner = mt_calloc(nn, sizeof(int));
	st->buf = mt_calloc(nn, sizeof(float *));
	st->bn_mean = mt_calloc(nn, sizeof(float *));
	st->bn_invstd = mt_calloc(nn, sizeof(float *));
	st->req = mt_calloc(nn, 1);
	st->fused = mt_calloc(nn, 1);
	st->bw_last = mt_calloc(nn, sizeof(int));
	last_use = mt_calloc(nn, sizeof(int));
	if (!st->shp || !st->owner || !st->buf || !st->bn_mean || !st->bn_invstd ||
		!st->req || !st->fused || !st->bw_last || !last_use)
		goto nomem;
	if ((rc = mt_model_shapes(m, h, w, st->shp, &scratch_len, err)) != MT_OK)
		goto done;

	/* which outputs depend on a trainable parameter */
	st->first = nn;
	for (int i = 0; i < nn; i++)
	{
		const mt_node *nd = &m->nodes[i];

		st->req[i] = node_trains(m, nd) ||
			(nd->in0 >= 0 && st->req[nd->in0]) || (nd->in1 >= 0 && st->req[nd->in1]);
		if (st->req[i] && st->first == nn)
			st->first = i;
	}

	/* the prefix that runs as inference: below `first`, no batch-stat BN */
	fast_end = st->first;
	for (int i = 0; i < fast_end; i++)
		if (bn_uses_batch(m, &m->nodes[i]))
			fast_end = i;
	/* folded weights are read only by a prefix with more than the input node */
	if (fast_end > 1 || (fast_end == 1 && m->nodes[0].kind != MT_NODE_INPUT))
	{
		if ((rc = mt_model_prepare(m, err)) != MT_OK ||
			(st->dt != NULL && (rc = mt_model_device_upload(m, err)) != MT_OK))
			goto done;
		/* never split a fused group (conv + BN + activation) */
		while (fast_end > 0 && fast_end < nn && m->nodes[fast_end].folded)
			fast_end--;
	}

	/*
	 * An activation node that alone reads a batch norm or an addition runs
	 * inside it (one pass over the tensor instead of two) and shares its
	 * buffer, when its gradient comes from its output (ReLU, ReLU6,
	 * sigmoid): the batch norm's backward reads only its input.
	 */
	for (int i = fast_end; i + 1 < nn; i++)
	{
		const mt_node *nd = &m->nodes[i];

		if ((nd->kind == MT_NODE_BN || nd->kind == MT_NODE_ADD) && nd->act == MT_ACT_NONE &&
			mt_node_single_follower(m, i, MT_NODE_ACT) == i + 1 &&
			!mt_act_needs_input(m->nodes[i + 1].act))
			st->fused[i + 1] = 1;
	}

	/* buffer owners, what backward reads, forward lifetimes */
	for (int i = 0; i < nn; i++)
	{
		const mt_node *nd = &m->nodes[i];

		st->owner[i] = ((i < fast_end && nd->folded) || st->fused[i]) ? st->owner[nd->in0] : i;
		st->bw_last[i] = -1;
		last_use[i] = i;
		if (nd->in0 >= 0 && last_use[st->owner[nd->in0]] < i)
			last_use[st->owner[nd->in0]] = i;
		if (nd->in1 >= 0 && last_use[st->owner[nd->in1]] < i)
			last_use[st->owner[nd->in1]] = i;
		if (i >= fast_end)
		{
			if ((nd->kind == MT_NODE_CONV || nd->kind == MT_NODE_CONV_TRANSPOSE) &&
				st->dt == NULL)
			{
				/* the host packs weights per pass; a device keeps them packed */
				mt_conv_desc d = nd->kind == MT_NODE_CONV ?
					mt_node_conv_desc(m, nd, 1, 1, MT_ACT_NONE) :
					mt_node_tconv_desc(nd, MT_ACT_NONE);
				size_t		sz = mt_conv_packed_size(&d);

				if (sz > wpack_len)
					wpack_len = sz;
			}
			if (nd->kind == MT_NODE_BN && st->shp[i].c > max_c)
				max_c = st->shp[i].c;
		}
	}
	for (int j = st->first; j < nn; j++)
	{
		const mt_node *nd = &m->nodes[j];

		if (!st->req[j])
			continue;
		if (node_applies_act(nd) && mt_act_needs_input(nd->act))
			mark_read(st, st->owner[nd->in0], j);	/* SiLU: from its input */
		else if (node_applies_act(nd))
			mark_read(st, st->owner[j], j);	/* its output (a fused one: its producer's) */
		if (nd->kind == MT_NODE_SCALE)
		{
			mark_read(st, st->owner[nd->in0], j);
			mark_read(st, st->owner[nd->in1], j);
		}
		if (((nd->kind == MT_NODE_CONV || nd->kind == MT_NODE_CONV_TRANSPOSE) &&
			 param_trains(m, nd->p_weight)) ||
			(nd->kind == MT_NODE_LINEAR && param_trains(m, nd->p_weight)) ||
			(nd->kind == MT_NODE_BN && bn_uses_batch(m, nd)) ||
			nd->kind == MT_NODE_MAXPOOL ||
			(mt_node_is_transformer(nd->kind) &&
			 mt_vit_node_reads_input(nd, param_trains(m, nd->p_weight))))
			mark_read(st, st->owner[nd->in0], j);
		/* max pooling's backward finds each window's maximum by its output */
		if (nd->kind == MT_NODE_MAXPOOL && !node_applies_act(nd))
			mark_read(st, st->owner[j], j);
		/* a host batch norm takes the activation after it (bn_takes_act) */
		if (nd->kind == MT_NODE_BN && st->dt == NULL &&
			(node_applies_act(nd) || (j + 1 < nn && st->fused[j + 1])))
			mark_read(st, st->owner[j], j);
	}
	if (m->features_node >= 0)
		last_use[st->owner[m->features_node]] = nn;
	if (m->logits_node >= 0)
		last_use[st->owner[m->logits_node]] = nn;

	if (scratch_len > 0 && (scratch = t_alloc(st, scratch_len, 0)) == NULL)
		goto nomem;
	if (wpack_len > 0 && (wpack = t_alloc(st, wpack_len, 0)) == NULL)
		goto nomem;
	if ((chan = t_alloc(st, (size_t) max_c * 4, 1)) == NULL)
		goto nomem;

	for (int i = 0; i < nn; i++)
	{
		const mt_node *nd = &m->nodes[i];
		size_t		out_len = node_len(st, i);
		const float *a,
				   *b;
		float	   *y;

		if (mt_interrupted())
		{
			rc = mt_seterr(err, MT_ERR_CANCELLED, "canceled");
			goto done;
		}
		if ((i < fast_end && nd->folded) || st->fused[i])
			continue;
		if ((y = t_alloc(st, out_len, 0)) == NULL)
			goto nomem;
		st->buf[i] = y;
		if (nd->kind == MT_NODE_INPUT)
		{
			float	   *dpar;

			if ((rc = upload_params(st, u8, n, &dpar, err)) != MT_OK)
				goto done;
			if (u8 != NULL && u8->masks != NULL)
				rc = render_masks(st, u8, dpar, n, h, err);
			if (rc == MT_OK && st->dt != NULL && u8 != NULL && u8->src != NULL)
				rc = render_u8_on_device(st, u8, dpar, n, h, y, err);
			else if (rc == MT_OK && st->dt != NULL)
				rc = st->dt->be->upload(y, x, out_len * sizeof(float), err);
			else if (rc == MT_OK)
				memcpy(y, x, out_len * sizeof(float));
			t_free(st, dpar);
			if (rc != MT_OK)
				goto done;
			continue;
		}
		a = nd->in0 >= 0 ? st->buf[st->owner[nd->in0]] : x;
		b = nd->in1 >= 0 ? st->buf[st->owner[nd->in1]] : NULL;
		if (i < fast_end && st->dt != NULL)
		{
			/* the frozen prefix: the model's folded device copy */
			const float *fw,
					   *fb;

			mt_model_device_node_weights(m, i, &fw, &fb);
			rc = mt_node_run(m, st->dt->be, nd, fw, fb, n,
							 nd->in0 >= 0 ? st->shp[nd->in0] : (mt_shape3) {h, w, 3},
							 a, b, y, scratch, err);
		}
		else if (i < fast_end)
			rc = mt_node_run_prepared(m, nd, n,
									  nd->in0 >= 0 ? st->shp[nd->in0] : (mt_shape3) {h, w, 3},
									  a, b, y, scratch, err);
		else
		{
			if (i == m->logits_node && nd->kind == MT_NODE_LINEAR && st->req[i] &&
				m->head_dropout > 0.0f && (rc = drop_head_input(m, st, nd, &a, err)) != MT_OK)
				goto done;
			rc = run_train_node(m, st, i, a, b, y, wpack, scratch, chan, chan + max_c,
								chan + 2 * max_c, chan + 3 * max_c, &stats_changed, err);
		}
		if (rc != MT_OK)
			goto done;
		/* release inputs whose last reader this was, unless backward reads them */
		for (int k = 0; k < 2; k++)
		{
			int			src = k == 0 ? nd->in0 : nd->in1;

			if (src < 0)
				continue;
			src = st->owner[src];
			if (last_use[src] == i && st->bw_last[src] < 0 && st->buf[src] != NULL)
			{
				t_free(st, st->buf[src]);
				st->buf[src] = NULL;
			}
		}
	}

	if (st->dt != NULL)
	{
		/* the outputs asked for come to the host */
		const mt_backend *be = st->dt->be;

		if (features != NULL && m->features_node >= 0 &&
			(rc = be->download(features, st->buf[st->owner[m->features_node]],
							   node_len(st, m->features_node) * sizeof(float), err)) != MT_OK)
			goto done;
		if (logits != NULL && m->logits_node >= 0 &&
			(rc = be->download(logits, st->buf[st->owner[m->logits_node]],
							   node_len(st, m->logits_node) * sizeof(float), err)) != MT_OK)
			goto done;
		/* the entries that queue work report their first failure here */
		if ((rc = be->synchronize(err)) != MT_OK)
			goto done;
	}
	else
	{
		if (features != NULL && m->features_node >= 0)
			memcpy(features, st->buf[st->owner[m->features_node]],
				   node_len(st, m->features_node) * sizeof(float));
		if (logits != NULL && m->logits_node >= 0)
			memcpy(logits, st->buf[st->owner[m->logits_node]],
				   node_len(st, m->logits_node) * sizeof(float));
	}
	/* the logits stay for mt_model_loss_backward; the rest only if backward reads them */
	for (int i = 0; i < nn; i++)
	{
		if (st->buf[i] != NULL && st->bw_last[i] < 0 &&
			!(m->logits_node >= 0 && i == st->owner[m->logits_node]))
		{
			t_free(st, st->buf[i]);
			st->buf[i] = NULL;
		}
		if (st->buf[i] != NULL)
			st->bytes += node_len(st, i) * sizeof(float);
	}
	goto done;

nomem:
	if (st->dt != NULL)
		rc = mt_seterr(err, st->dt->alloc_rc != MT_OK ? st->dt->alloc_rc : MT_ERR_NOMEM,
					   "out of device memory in training forward pass of %s", m->arch);
	else
		rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in training forward pass of %s", m->arch);
done:
	/*
	 * New running statistics: the host's folded copy is stale.  On a
	 * device the host copy is stale as a whole (mt_model_sync_to_host
	 * re-folds); the device's frozen prefix never holds a BN that changed.
	 */
	if (stats_changed && st->dt != NULL)
		st->dt->host_stale = 1;
	else if (stats_changed)
		m->prepared = 0;
	mt_free(last_use);
	t_free(st, scratch);
	t_free(st, wpack);
	t_free(st, chan);
	if (rc == MT_OK)
		m->train = st;
	else
		train_state_free(st);
	return rc;
}

/* Work space and gradient buffers of one backward pass. */
typedef struct bw_ctx
{
	mt_model   *m;
	struct mt_train_state *st;
	const mt_backend *be;		/* where the pass runs */
	float	  **dbuf;			/* gradient of each node's output */
	float	   *wpack;
	float	   *dwpack;
	float	   *scratch;
	float	   *scale;
	float	   *zero;
	mt_act	   *bn_act;			/* an activation batch norm k's backward applies */
} bw_ctx;

/*
 * Whether batch norm k's backward takes the activation of node i (k
 * itself, or the activation fused after it): a ReLU or ReLU6, the backend
 * has the fused entry and k's output, which the activation shares, stays
 * until k's backward.
 */
static int
bn_takes_act(const bw_ctx *c, int k, int i)
{
	const struct mt_train_state *st = c->st;

	mt_act		act = c->m->nodes[i].act;

	return c->be->batch_norm_act_backward != NULL && c->m->nodes[k].kind == MT_NODE_BN &&
		(act == MT_ACT_RELU || act == MT_ACT_RELU6) &&
		(k == i || st->fused[i]) && st->owner[i] == st->owner[k] &&
		st->buf[st->owner[k]] != NULL && st->bw_last[st->owner[k]] >= 0 &&
		st->bw_last[st->owner[k]] <= k;
}

/* Node k's gradient buffer, allocated zeroed when first needed. */
static float *
grad_buf(bw_ctx *c, int k)
{
	if (c->dbuf[k] == NULL)
		c->dbuf[k] = t_alloc(c->st, node_len(c->st, k), 1);
	return c->dbuf[k];
}

/* Pass node i's gradient buffer on to node k (taking it, or adding it). */
static int
give_grad(bw_ctx *c, int i, int k)
{
	if (!c->st->req[k])
		return MT_OK;
	if (c->dbuf[k] == NULL)
	{
		c->dbuf[k] = c->dbuf[i];
		c->dbuf[i] = NULL;
	}
	else
		c->be->accumulate(node_len(c->st, k), c->dbuf[i], c->dbuf[k]);
	return MT_OK;
}

/* Add node i's gradient into node k's without giving the buffer away. */
static int
copy_grad(bw_ctx *c, int i, int k)
{
	size_t		len = node_len(c->st, k);

	if (!c->st->req[k])
		return MT_OK;
	if (c->dbuf[k] == NULL && c->st->dt != NULL)
	{
		/* a copy on the device: zero plus the gradient, exactly it */
		if ((c->dbuf[k] = t_alloc(c->st, len, 1)) == NULL)
			return MT_ERR_NOMEM;
		c->be->accumulate(len, c->dbuf[i], c->dbuf[k]);
	}
	else if (c->dbuf[k] == NULL)
	{
		if ((c->dbuf[k] = mt_malloc(len * sizeof(float))) == NULL)
			return MT_ERR_NOMEM;
		memcpy(c->dbuf[k], c->dbuf[i], len * sizeof(float));
	}
	else
		c->be->accumulate(len, c->dbuf[i], c->dbuf[k]);
	return MT_OK;
}

/*
 * Weight and bias gradients of a convolution or a transposed convolution,
 * d being the convolution that maps a (h x w per image) to b: the weight
 * gradient is d's conv2d_backward_weight over (a, b) (a transposed
 * convolution passes its output gradient as a and its input as b), the bias
 * gradient the channel sums of dy (rows_out x cout).  A host gradient is
 * OIHW, so the packed result is unpacked into it; the device's gradient is
 * packed already and is added to directly.
 */
static int
conv_param_backward(bw_ctx *c, const mt_node *nd, const mt_conv_desc *d, int h, int w,
					const float *a, const float *b, size_t rows_out, int cout,
					const float *dy, mt_err *err)
{
	mt_model   *m = c->m;
	const mt_backend *be = c->be;
	int			n = c->st->n;
	int			rc;

	if (param_trains(m, nd->p_weight))
	{
		float	   *g = param_grad(m, nd->p_weight);

		if (g == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory in backward pass of %s", m->arch);
		if (c->st->dt != NULL)
		{
			if ((rc = be->conv2d_backward_weight(d, n, h, w, a, b, g, c->scratch, err)) != MT_OK)
				return rc;
		}
		else
		{
			/* oneDNN adds into the parameter's layout; else packed, through the backend */
			rc = host_onednn(be) ? mt_onednn_train_backward_weight(d, n, h, w, a, b, g, err) :
				MT_ERR_UNSUPPORTED;
			if (rc == MT_ERR_UNSUPPORTED)
			{
				mt_clearerr(err);
				memset(c->dwpack, 0, mt_conv_packed_size(d) * sizeof(float));
				if ((rc = be->conv2d_backward_weight(d, n, h, w, a, b, c->dwpack,
													 c->scratch, err)) != MT_OK)
					return rc;
				mt_conv_unpack_add_oihw(d, c->dwpack, g);
			}
			else if (rc != MT_OK)
				return rc;
		}
	}
	if (param_trains(m, nd->p_bias))
	{
		float	   *g = param_grad(m, nd->p_bias);

		if (g == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory in backward pass of %s", m->arch);
		be->bias_backward(rows_out, cout, dy, g);
	}
	return MT_OK;
}

/*
 * The weight as the backward-data entries take it: packed for d (on the
 * host into c->wpack; the device keeps its copy packed).
 */
static const float *
conv_backward_weight(bw_ctx *c, const mt_node *nd, const mt_conv_desc *d)
{
	const float *wt = pdata(c->m, nd->p_weight);

	if (c->st->dt != NULL)
		return wt;
	mt_conv_pack_oihw(d, wt, c->wpack);
	return c->wpack;
}

/* Backward through node i: parameter gradients and its inputs' gradients. */
static int
backward_node(bw_ctx *c, int i, mt_err *err)
{
	mt_model   *m = c->m;
	struct mt_train_state *st = c->st;
	const mt_backend *be = c->be;
	const mt_node *nd = &m->nodes[i];
	int			n = st->n;
	int			in0 = nd->in0;
	mt_shape3	in = in0 >= 0 ? st->shp[in0] : (mt_shape3) {st->h, st->w, 3};
	mt_shape3	out = st->shp[i];
	size_t		rows_out = (size_t) n * out.h * out.w;
	size_t		len = rows_out * out.c;
	float	   *dy = c->dbuf[i];
	const float *x = in0 >= 0 ? st->buf[st->owner[in0]] : NULL;
	int			want_dx = in0 >= 0 && st->req[in0];
	float	   *dx = NULL;
	int			rc = MT_OK;

	if (node_applies_act(nd) && mt_act_needs_input(nd->act))
		be->act_backward_input(len, x, dy, nd->act, dy);	/* only MT_NODE_ACT */
	else if (node_applies_act(nd))
	{
		int			k = nd->kind == MT_NODE_ACT ? in0 : i;

		if (k >= 0 && bn_takes_act(c, k, i))
			c->bn_act[k] = nd->act; /* in the batch norm's own passes */
		else
			be->act_backward(len, st->buf[st->owner[i]], dy, nd->act, dy);
	}

	switch (nd->kind)
	{
		case MT_NODE_ACT:
			return give_grad(c, i, in0);
		case MT_NODE_ADD:
			if (!st->req[in0])
				return give_grad(c, i, nd->in1);
			if (copy_grad(c, i, nd->in1) != MT_OK)
				goto nomem;
			return give_grad(c, i, in0);
		case MT_NODE_CONV:
			{
				mt_conv_desc d = mt_node_conv_desc(m, nd, in.h, in.w, MT_ACT_NONE);

				if ((rc = conv_param_backward(c, nd, &d, in.h, in.w, x, dy, rows_out, out.c, dy,
											  err)) != MT_OK)
					return rc;
				if (want_dx)
				{
					/* the input's first gradient: oneDNN writes it (no zeroing, no add) */
					int			set = host_onednn(be) && c->dbuf[in0] == NULL;

					if (set)
						dx = c->dbuf[in0] = t_alloc(st, node_len(st, in0), 0);
					else
						dx = grad_buf(c, in0);
					if (dx == NULL)
						goto nomem;
					/* oneDNN reads the weights as they are; else packed */
					rc = host_onednn(be) ?
						mt_onednn_train_backward_data(&d, n, in.h, in.w, dy, pdata(m, nd->p_weight),
													  dx, set, err) : MT_ERR_UNSUPPORTED;
					if (rc == MT_ERR_UNSUPPORTED)
					{
						mt_clearerr(err);
						if (set)
							memset(dx, 0, node_len(st, in0) * sizeof(float));
						rc = be->conv2d_backward_data(&d, n, in.h, in.w, dy,
													  conv_backward_weight(c, nd, &d),
													  dx, c->scratch, err);
					}
				}
				return rc;
			}
		case MT_NODE_BN:
			{
				float	   *dgamma = NULL,
						   *dbeta = NULL;
				const float *gamma = pdata(m, nd->p_bn_weight);

				if (param_trains(m, nd->p_bn_weight) &&
					(dgamma = param_grad(m, nd->p_bn_weight)) == NULL)
					goto nomem;
				if (param_trains(m, nd->p_bn_bias) &&
					(dbeta = param_grad(m, nd->p_bn_bias)) == NULL)
					goto nomem;
				if (c->bn_act[i] != MT_ACT_NONE)
				{
					/* with the activation after it, written into dy, then passed on */
					const float *yb = st->buf[st->owner[i]];

					if (st->bn_mean[i] == NULL && want_dx)
						be->bn_train_coeffs(out.c, gamma, NULL, NULL, pdata(m, nd->p_bn_var), nd->eps,
											0.0f, 0.0, NULL, NULL, c->scale, NULL);
					be->batch_norm_act_backward(rows_out, out.c, x, yb, c->bn_act[i], dy,
												st->bn_mean[i],
												st->bn_mean[i] != NULL ? st->bn_invstd[i] : c->scale,
												gamma, want_dx ? dy : NULL,
												st->bn_mean[i] != NULL ? dgamma : NULL, dbeta);
					return want_dx ? give_grad(c, i, in0) : MT_OK;
				}
				if (st->bn_mean[i] != NULL)
				{
					/* batch statistics */
					if (want_dx && (dx = grad_buf(c, in0)) == NULL)
						goto nomem;
					be->batch_norm_backward(rows_out, out.c, x, dy, st->bn_mean[i],
											st->bn_invstd[i], gamma, dx, dgamma, dbeta);
					return MT_OK;
				}
				/* running statistics: y = x * scale + shift */
				if (dbeta != NULL)
					be->bias_backward(rows_out, out.c, dy, dbeta);
				if (want_dx)
				{
					/* scale = gamma / sqrt(running_var + eps) */
					be->bn_train_coeffs(out.c, gamma, NULL, NULL, pdata(m, nd->p_bn_var), nd->eps,
										0.0f, 0.0, NULL, NULL, c->scale, NULL);
					be->channel_affine(rows_out, out.c, dy, c->scale, c->zero, MT_ACT_NONE, dy);
					return give_grad(c, i, in0);
				}
				return MT_OK;
			}
		case MT_NODE_CONV_TRANSPOSE:
			{
				mt_conv_desc d = mt_node_tconv_desc(nd, MT_ACT_NONE);

				/* the transposed convolution's weight is d's: d maps dy to x */
				if ((rc = conv_param_backward(c, nd, &d, out.h, out.w, dy, x, rows_out, out.c, dy,
											  err)) != MT_OK)
					return rc;
				if (want_dx)
				{
					if (be->conv_transpose2d_backward_data == NULL)
						return mt_seterr(err, MT_ERR_UNSUPPORTED,
										 "the %s backend has no transposed convolution", be->name);

					if ((dx = grad_buf(c, in0)) == NULL)
						goto nomem;
					rc = be->conv_transpose2d_backward_data(&d, n, in.h, in.w, dy,
															conv_backward_weight(c, nd, &d), dx,
															c->scratch, err);
				}
				return rc;
			}
		case MT_NODE_UPSAMPLE:
			if (!want_dx)
				return MT_OK;
			if (be->upsample_bilinear_backward == NULL)
				return mt_seterr(err, MT_ERR_UNSUPPORTED, "the %s backend has no bilinear upsampling",
								 be->name);
			if ((dx = grad_buf(c, in0)) == NULL)
				goto nomem;
			be->upsample_bilinear_backward(n, in.h, in.w, in.c, nd->scale_factor, dy, dx);
			return MT_OK;
		case MT_NODE_MAXPOOL:
		case MT_NODE_AVGPOOL:
			{
				mt_pool_desc p = mt_node_pool_desc(nd);

				if (!want_dx)
					return MT_OK;
				if ((dx = grad_buf(c, in0)) == NULL)
					goto nomem;
				if (nd->kind == MT_NODE_MAXPOOL)
					be->max_pool2d_backward(&p, n, in.h, in.w, in.c, x,
											node_applies_act(nd) ? NULL : st->buf[st->owner[i]],
											dy, dx);
				else
					be->avg_pool2d_backward(&p, n, in.h, in.w, in.c, dy, dx);
				return MT_OK;
			}
		case MT_NODE_CONCAT:
			{
				float	   *db = NULL;

				if (want_dx && (dx = grad_buf(c, in0)) == NULL)
					goto nomem;
				if (st->req[nd->in1] && (db = grad_buf(c, nd->in1)) == NULL)
					goto nomem;
				be->concat_backward(rows_out, nd->cin, nd->cout - nd->cin, dy, dx, db);
				return MT_OK;
			}
		case MT_NODE_SCALE:
			{
				float	   *ds = NULL;

				if (want_dx && (dx = grad_buf(c, in0)) == NULL)
					goto nomem;
				if (st->req[nd->in1] && (ds = grad_buf(c, nd->in1)) == NULL)
					goto nomem;
				be->scale_channels_backward(n, (size_t) out.h * out.w, out.c, x,
											st->buf[st->owner[nd->in1]], dy, dx, ds);
				return MT_OK;
			}
		case MT_NODE_GAP:
			if (!want_dx)
				return MT_OK;
			if ((dx = grad_buf(c, in0)) == NULL)
				goto nomem;
			be->global_avg_pool_backward(n, in.h, in.w, in.c, dy, dx);
			return MT_OK;
		case MT_NODE_LINEAR:
			{
				float	   *dw = NULL,
						   *db = NULL;

				if (param_trains(m, nd->p_weight) && (dw = param_grad(m, nd->p_weight)) == NULL)
					goto nomem;
				if (param_trains(m, nd->p_bias) && (db = param_grad(m, nd->p_bias)) == NULL)
					goto nomem;
				if (want_dx && (dx = grad_buf(c, in0)) == NULL)
					goto nomem;
				if (i == m->logits_node && st->drop_x != NULL)
				{
					/* head dropout: through the dropped input, then the mask */
					size_t		dl = (size_t) n * nd->in_features;
					float	   *t = want_dx ? t_alloc(st, dl, 1) : NULL;

					if (want_dx && t == NULL)
						goto nomem;
					be->linear_backward(n, nd->in_features, nd->out_features, st->drop_x,
										pdata(m, nd->p_weight), dy, t, dw, db);
					if (t != NULL)
						be->scale_channels_backward(n, 1, nd->in_features, NULL, st->drop_mask,
													t, dx, NULL);
					t_free(st, t);
					return MT_OK;
				}
				be->linear_backward(n, nd->in_features, nd->out_features, x,
									pdata(m, nd->p_weight), dy, dx, dw, db);
				return MT_OK;
			}
		default:
			if (mt_node_is_transformer(nd->kind))
			{
				float	   *dw = NULL,
						   *db = NULL;

				if (param_trains(m, nd->p_weight) && (dw = param_grad(m, nd->p_weight)) == NULL)
					goto nomem;
				if (param_trains(m, nd->p_bias) && (db = param_grad(m, nd->p_bias)) == NULL)
					goto nomem;
				if (want_dx && (dx = grad_buf(c, in0)) == NULL)
					goto nomem;
				return mt_vit_node_backward(m, be, nd, pdata(m, nd->p_weight), n, in, x, dy,
											dx, dw, db, c->scratch, err);
			}
			return MT_OK;
	}

nomem:
	return mt_seterr(err, MT_ERR_NOMEM, "out of memory in backward pass of %s", m->arch);
}

static int	ce_check(const int *labels, int n, int c, const float *class_weights,
					 float focal_gamma, float label_smoothing, double *norm, mt_err *err);
static int	seg_check(const uint8_t *masks, int n, int hw, int c, const float *class_weights,
					  float ce_weight, float dice_weight, size_t *pixels, mt_err *err);
static int	seg_loss_host(const float *logits, const uint8_t *masks, int n, int hw, int c,
						  const float *class_weights, float ce_weight, float dice_weight,
						  float *loss_out, float *dlogits, int64_t *px_valid,
						  int64_t *px_correct, mt_err *err);

/*
 * The loss of spec over the logits kept by the forward pass (node ln's
 * output) and its gradient into dl (n x classes values where the model
 * trains); see mt_model_loss_backward.
 */
static int
loss_of_logits(mt_model *m, struct mt_train_state *st, const mt_backend *be,
			   mt_loss_spec *spec, float *dl, float *loss_out, mt_err *err)
{
	int			ln = m->logits_node;
	const float *z = st->buf[st->owner[ln]];
	int			c = st->shp[ln].c,
				hw = st->shp[ln].h * st->shp[ln].w,
				n = st->n;
	size_t		len = node_len(st, ln),
				pixels;
	const float *cw = spec->class_weights;
	float	   *zh = NULL,
			   *dh = NULL,
			   *dev[5] = {NULL, NULL, NULL, NULL, NULL};
	double	   *sums = NULL;
	uint8_t    *hmask = NULL;	/* host copy of a device's rendered masks */
	const uint8_t *masks = spec->masks;	/* host masks, or NULL: st->mask */
	float		loss = 0.0f;
	int			rc = MT_OK;

	if (spec->n != n)
		return mt_seterr(err, MT_ERR_INVALID, "the loss has %d images, the forward pass %d", spec->n, n);
	if (!spec->seg && hw != 1)
		return mt_seterr(err, MT_ERR_INVALID, "cross-entropy needs a classifier's logits");
	if (spec->seg && spec->masks == NULL && st->mask == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "the segmentation loss needs masks");
	if (!spec->seg && spec->labels == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "the loss needs labels");

	if (st->dt == NULL || (!spec->seg && be->cross_entropy == NULL) ||
		(spec->seg && (be->seg_loss_sums == NULL || be->seg_loss_grad == NULL)))
	{
		/* on the host: the CPU's functions (the logits come down first from a device) */
		if (st->dt != NULL)
		{
			if ((zh = mt_malloc(len * sizeof(float))) == NULL ||
				(dh = mt_malloc(len * sizeof(float))) == NULL)
			{
				rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in loss");
				goto done;
			}
			if ((rc = be->download(zh, z, len * sizeof(float), err)) != MT_OK)
				goto done;
		}
		if (spec->seg && masks == NULL)
		{
			/* the rendered masks of a byte batch: host memory, or down from the device */
			if (st->dt == NULL)
				masks = (const uint8_t *) st->mask;
			else if ((hmask = mt_malloc((size_t) n * hw)) == NULL)
			{
				rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in the segmentation loss");
				goto done;
			}
			else if ((rc = be->download(hmask, st->mask, (size_t) n * hw, err)) != MT_OK)
				goto done;
			else
				masks = hmask;
		}
		if (!spec->seg)
			rc = mt_loss_cross_entropy(zh ? zh : z, spec->labels, n, c, cw, spec->focal_gamma,
									   spec->label_smoothing, &loss, dh ? dh : dl, err);
		else if ((rc = seg_loss_host(zh ? zh : z, masks, n, hw, c, cw, spec->ce_weight,
									 spec->dice_weight, &loss, dh ? dh : dl, &spec->px_valid,
									 &spec->px_correct, err)) != MT_OK)
			goto done;
		if (rc == MT_OK && dh != NULL)
			rc = be->upload(dl, dh, len * sizeof(float), err);
		goto done;
	}

	/* on the device: labels or masks (and weights) up, a few sums down */
	if (cw != NULL &&
		((dev[0] = t_alloc(st, (size_t) c, 0)) == NULL ||
		 (rc = be->upload(dev[0], cw, sizeof(float) * c, err)) != MT_OK))
		goto devfail;
	if (!spec->seg)
	{
		double		norm;

		if ((rc = ce_check(spec->labels, n, c, cw, spec->focal_gamma, spec->label_smoothing,
						   &norm, err)) != MT_OK)
			goto done;
		if ((sums = mt_malloc(sizeof(double) * n)) == NULL)
		{
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in loss");
			goto done;
		}
		if ((dev[1] = t_alloc(st, (size_t) n, 0)) == NULL ||
			(dev[2] = t_alloc(st, 2 * (size_t) n, 0)) == NULL)
			goto devfail;
		if ((rc = be->upload(dev[1], spec->labels, sizeof(int) * n, err)) != MT_OK ||
			(rc = be->cross_entropy(n, c, z, (const int *) dev[1], dev[0], spec->focal_gamma,
									spec->label_smoothing, norm, (double *) dev[2], dl, err)) != MT_OK ||
			(rc = be->download(sums, dev[2], sizeof(double) * n, err)) != MT_OK)
			goto done;
		{
			double		total = 0.0;

			for (int i = 0; i < n; i++)
				total += sums[i];
			loss = (float) total;
		}
	}
	else
	{
		size_t		ns = MT_SEG_SUMS(c),
					nc = MT_SEG_COEFS(c);
		const uint8_t *dmask;

		/* a byte batch's masks were checked before they went up (NULL: not scanned) */
		if ((rc = seg_check(masks, n, hw, c, cw, spec->ce_weight, spec->dice_weight,
							&pixels, err)) != MT_OK)
			goto done;
		if ((sums = mt_malloc(sizeof(double) * (ns + nc))) == NULL)
		{
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in the segmentation loss");
			goto done;
		}
		if ((masks != NULL && (dev[1] = t_alloc(st, (pixels + 3) / 4, 0)) == NULL) ||
			(dev[2] = t_alloc(st, 2 * ns, 0)) == NULL ||
			(dev[3] = t_alloc(st, 2 * nc, 0)) == NULL)
			goto devfail;
		if (masks == NULL)
			dmask = (const uint8_t *) st->mask;
		else if ((rc = be->upload(dev[1], masks, pixels, err)) != MT_OK)
			goto done;
		else
			dmask = (const uint8_t *) dev[1];
		if ((rc = be->seg_loss_sums(pixels, c, z, dmask, dev[0],
									(double *) dev[2], err)) != MT_OK ||
			(rc = be->download(sums, dev[2], sizeof(double) * ns, err)) != MT_OK ||
			(rc = mt_seg_loss_finish(sums, c, spec->ce_weight, spec->dice_weight, &loss,
									 sums + ns, err)) != MT_OK ||
			(rc = be->upload(dev[3], sums + ns, sizeof(double) * nc, err)) != MT_OK ||
			(rc = be->seg_loss_grad(pixels, c, z, dmask, dev[0],
									(const double *) dev[3], dl, err)) != MT_OK)
			goto done;
	}
	goto done;

devfail:
	rc = mt_seterr(err, st->dt->alloc_rc != MT_OK ? st->dt->alloc_rc : MT_ERR_NOMEM,
				   "out of device memory in the loss of %s", m->arch);
done:
	if (rc == MT_OK && spec->seg && sums != NULL)
	{
		spec->px_valid = (int64_t) sums[2];
		spec->px_correct = (int64_t) sums[3];
	}
	for (int i = 0; i < 5; i++)
		t_free(st, dev[i]);
	mt_free(sums);
	mt_free(hmask);
	mt_free(zh);
	mt_free(dh);
	if (rc == MT_OK && loss_out != NULL)
		*loss_out = loss;
	return rc;
}

static int	backward_run(mt_model *m, const float *dlogits, mt_loss_spec *spec,
						 float *loss_out, mt_err *err);

/* Backward pass (see train.h). */
int
mt_model_backward(mt_model *m, const float *dlogits, mt_err *err)
{
	return backward_run(m, dlogits, NULL, NULL, err);
}

/* The loss and the backward pass from its gradient (see train.h). */
int
mt_model_loss_backward(mt_model *m, mt_loss_spec *spec, float *loss_out, mt_err *err)
{
	spec->px_valid = spec->px_correct = 0;
	if (m->train == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "loss without a training forward pass");
	if (m->logits_node < 0 || m->train->buf[m->train->owner[m->logits_node]] == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "the training forward pass kept no logits");
	return backward_run(m, NULL, spec, loss_out, err);
}

static int
backward_run(mt_model *m, const float *dlogits, mt_loss_spec *spec, float *loss_out,
			 mt_err *err)
{
	struct mt_train_state *st = m->train;
	bw_ctx		c;
	size_t		scratch_len = 0,
				wpack_len = 0;
	int			max_c = 1;
	int			ln = m->logits_node;
	int			rc = MT_OK;

	if (st == NULL)
		return mt_seterr(err, MT_ERR_INVALID,
						 "backward pass without a training forward pass");
	if (st->n_nodes != m->n_nodes)
	{
		mt_model_train_release(m);
		return mt_seterr(err, MT_ERR_INTERNAL, "training state does not match the model");
	}
	memset(&c, 0, sizeof(c));
	c.m = m;
	c.st = st;
	c.be = st->dt != NULL ? st->dt->be : m->backend;
	if (ln < 0 || !st->req[ln])
	{
		/* nothing trainable feeds the logits: the loss alone, if asked */
		if (spec != NULL && ln >= 0)
		{
			float	   *dl = t_alloc(st, node_len(st, ln), 0);

			rc = dl == NULL ? mt_seterr(err, MT_ERR_NOMEM, "out of memory in loss") :
				loss_of_logits(m, st, c.be, spec, dl, loss_out, err);
			t_free(st, dl);
		}
		goto done;
	}

	for (int i = st->first; i < m->n_nodes; i++)
	{
		const mt_node *nd = &m->nodes[i];
		mt_shape3	in = nd->in0 >= 0 ? st->shp[nd->in0] : (mt_shape3) {st->h, st->w, 3};

		if (!st->req[i])
			continue;
		if (nd->kind == MT_NODE_CONV || nd->kind == MT_NODE_CONV_TRANSPOSE)
		{
			mt_conv_desc d = nd->kind == MT_NODE_CONV ?
				mt_node_conv_desc(m, nd, in.h, in.w, MT_ACT_NONE) :
				mt_node_tconv_desc(nd, MT_ACT_NONE);
			/* a transposed convolution's im2col runs over its output */
			size_t		s = nd->kind == MT_NODE_CONV ?
				mt_conv_scratch_size(&d, in.h, in.w) :
				mt_conv_scratch_size(&d, st->shp[i].h, st->shp[i].w);

			if (s > scratch_len)
				scratch_len = s;
			if (mt_conv_packed_size(&d) > wpack_len)
				wpack_len = mt_conv_packed_size(&d);
		}
		if (nd->kind == MT_NODE_BN && st->shp[i].c > max_c)
			max_c = st->shp[i].c;
		if (mt_node_is_transformer(nd->kind) && mt_vit_node_scratch(nd, in) > scratch_len)
			scratch_len = mt_vit_node_scratch(nd, in);
	}
	if (st->dt != NULL)
		wpack_len = 0;			/* a device keeps the weights and gradients packed */
	c.dbuf = mt_calloc(m->n_nodes, sizeof(float *));
	c.bn_act = mt_calloc(m->n_nodes, sizeof(mt_act));
	c.scale = t_alloc(st, max_c, 1);
	c.zero = t_alloc(st, max_c, 1);
	if (c.dbuf == NULL || c.bn_act == NULL || c.scale == NULL || c.zero == NULL ||
		(scratch_len > 0 && (c.scratch = t_alloc(st, scratch_len, 0)) == NULL) ||
		(wpack_len > 0 && (c.wpack = t_alloc(st, wpack_len, 0)) == NULL) ||
		(wpack_len > 0 && (c.dwpack = t_alloc(st, wpack_len, 0)) == NULL) ||
		(c.dbuf[ln] = t_alloc(st, node_len(st, ln), 0)) == NULL)
	{
		if (st->dt != NULL)
			rc = mt_seterr(err, st->dt->alloc_rc != MT_OK ? st->dt->alloc_rc : MT_ERR_NOMEM,
						   "out of device memory in backward pass of %s", m->arch);
		else
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory in backward pass of %s", m->arch);
		goto done;
	}
	if (st->dt != NULL)
		st->dt->host_stale = 1; /* gradients change on the device: the host's are stale from here */
	if (spec != NULL)
	{
		int			lo = st->owner[ln];

		if ((rc = loss_of_logits(m, st, c.be, spec, c.dbuf[ln], loss_out, err)) != MT_OK)
			goto done;
		/* the logits were kept for the loss alone */
		if (st->bw_last[lo] < 0)
		{
			t_free(st, st->buf[lo]);
			st->buf[lo] = NULL;
		}
	}
	else if (st->dt != NULL)
	{
		if ((rc = c.be->upload(c.dbuf[ln], dlogits, node_len(st, ln) * sizeof(float), err)) != MT_OK)
			goto done;
	}
	else
		memcpy(c.dbuf[ln], dlogits, node_len(st, ln) * sizeof(float));

	for (int i = m->n_nodes - 1; i >= st->first; i--)
	{
		if (mt_interrupted())
		{
			rc = mt_seterr(err, MT_ERR_CANCELLED, "canceled");
			goto done;
		}
		if (st->req[i] && c.dbuf[i] != NULL &&
			(rc = backward_node(&c, i, err)) != MT_OK)
			goto done;
		/* node i's gradient and the buffers only its backward still read */
		t_free(st, c.dbuf[i]);
		c.dbuf[i] = NULL;
		for (int k = 0; k <= i; k++)
			if (st->bw_last[k] == i && st->buf[k] != NULL)
			{
				t_free(st, st->buf[k]);
				st->buf[k] = NULL;
			}
	}
	/* the entries that queue work report their first failure here */
	if (st->dt != NULL)
		rc = c.be->synchronize(err);

done:
	if (c.dbuf != NULL)
		for (int i = 0; i < m->n_nodes; i++)
			t_free(st, c.dbuf[i]);
	mt_free(c.dbuf);
	mt_free(c.bn_act);
	t_free(st, c.scratch);
	t_free(st, c.wpack);
	t_free(st, c.dwpack);
	t_free(st, c.scale);
	t_free(st, c.zero);
	mt_model_train_release(m);
	return rc;
}

/*
 * Checks of mt_loss_cross_entropy's arguments, and its normaliser: the sum
 * of the labels' weights (gamma 0, as torch) or n (focal).
 */
static int
ce_check(const int *labels, int n, int c, const float *class_weights, float focal_gamma,
		 float label_smoothing, double *norm, mt_err *err)
{
	double		eps = label_smoothing;
	double		gamma = focal_gamma;

	*norm = 0.0;
	if (n <= 0 || c <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "empty batch for the loss");
	if (!(gamma >= 0.0) || !isfinite(gamma))
		return mt_seterr(err, MT_ERR_INVALID, "focal gamma must be 0 or more, not %g", gamma);
	if (!(eps >= 0.0 && eps <= 1.0))
		return mt_seterr(err, MT_ERR_INVALID, "label smoothing must be between 0 and 1, not %g", eps);
	for (int i = 0; i < n; i++)
		if (labels[i] < 0 || labels[i] >= c)
			return mt_seterr(err, MT_ERR_INVALID, "label %d out of range for %d classes",
							 labels[i], c);
	if (class_weights != NULL)
		for (int j = 0; j < c; j++)
			if (!isfinite(class_weights[j]) || class_weights[j] < 0.0f)
				return mt_seterr(err, MT_ERR_INVALID,
								 "class weight %d must be finite and not negative", j);
	if (gamma == 0.0)
	{
		for (int i = 0; i < n; i++)
			*norm += class_weights ? class_weights[labels[i]] : 1.0;
		if (*norm <= 0.0)
			return mt_seterr(err, MT_ERR_INVALID, "the class weights of the batch's labels sum to zero");
	}
	else
		*norm = n;
	return MT_OK;
}


/* Cross-entropy / focal loss with PyTorch semantics (see train.h). */
int
mt_loss_cross_entropy(const float *logits, const int *labels, int n, int c,
					  const float *class_weights, float focal_gamma,
					  float label_smoothing, float *loss_out, float *dlogits,
					  mt_err *err)
{
	double		norm;
	double		total = 0.0;
	double	   *p;
	int			rc;

	if ((rc = ce_check(labels, n, c, class_weights, focal_gamma, label_smoothing, &norm, err)) != MT_OK)
		return rc;
	if ((p = mt_malloc(sizeof(double) * 2 * (size_t) c)) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in loss");
	for (int i = 0; i < n; i++)
		mt_cpu_ce_row(logits + (size_t) i * c, c, labels[i], class_weights, focal_gamma,
			   label_smoothing, norm, p, &total, dlogits ? dlogits + (size_t) i * c : NULL);
	mt_free(p);
	if (loss_out != NULL)
		*loss_out = (float) total;
	return MT_OK;
}



/* Checks of mt_loss_segmentation's arguments (see train.h). */
static int
seg_check(const uint8_t *masks, int n, int hw, int c, const float *class_weights,
		  float ce_weight, float dice_weight, size_t *pixels, mt_err *err)
{
	size_t		len;

	if (n <= 0 || hw <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "empty batch for the segmentation loss");
	if (c < 2 || c > 255)
		return mt_seterr(err, MT_ERR_INVALID,
						 "the segmentation loss needs between 2 and 255 classes, not %d", c);
	if (!(ce_weight >= 0.0f) || !isfinite(ce_weight) ||
		!(dice_weight >= 0.0f) || !isfinite(dice_weight))
		return mt_seterr(err, MT_ERR_INVALID,
						 "loss weights must be finite and not negative, not %g and %g",
						 ce_weight, dice_weight);
	if (!mt_mul_size((size_t) n, (size_t) hw, pixels) || !mt_mul_size(*pixels, (size_t) c, &len))
		return mt_seterr(err, MT_ERR_LIMIT, "segmentation batch of %d x %d pixels is too large", n, hw);
	if (class_weights != NULL)
		for (int j = 0; j < c; j++)
			if (!isfinite(class_weights[j]) || class_weights[j] < 0.0f)
				return mt_seterr(err, MT_ERR_INVALID,
								 "class weight %d must be finite and not negative", j);
	for (size_t i = 0; masks != NULL && i < *pixels; i++)
		if (masks[i] != 255 && masks[i] >= c)
			return mt_seterr(err, MT_ERR_INVALID,
							 "mask value %d out of range for %d classes (255 marks a pixel to ignore)",
							 masks[i], c);
	return MT_OK;
}




/*
 * The segmentation loss on the host: the sums, then the loss and the
 * gradient's coefficients, then the gradient (when dlogits is not NULL),
 * the pipeline a device runs with its own sums and gradient.  px_valid /
 * px_correct (either may be NULL) get the pixel-accuracy counts.
 */
static int
seg_loss_host(const float *logits, const uint8_t *masks, int n, int hw, int c,
			  const float *class_weights, float ce_weight, float dice_weight,
			  float *loss_out, float *dlogits, int64_t *px_valid, int64_t *px_correct,
			  mt_err *err)
{
	size_t		pixels;
	double	   *sums,
			   *coef;
	int			rc;

	if ((rc = seg_check(masks, n, hw, c, class_weights, ce_weight, dice_weight, &pixels, err)) != MT_OK)
		return rc;
	if ((sums = mt_malloc(sizeof(double) * (MT_SEG_SUMS(c) + MT_SEG_COEFS(c)))) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in the segmentation loss");
	coef = sums + MT_SEG_SUMS(c);
	if ((rc = mt_cpu_seg_loss_sums(pixels, c, logits, masks, class_weights, sums, err)) == MT_OK &&
		(rc = mt_seg_loss_finish(sums, c, ce_weight, dice_weight, loss_out, coef, err)) == MT_OK &&
		dlogits != NULL)
		rc = mt_cpu_seg_loss_grad(pixels, c, logits, masks, class_weights, coef, dlogits, err);
	if (rc == MT_OK && px_valid != NULL)
		*px_valid = (int64_t) sums[2];
	if (rc == MT_OK && px_correct != NULL)
		*px_correct = (int64_t) sums[3];
	mt_free(sums);
	return rc;
}

/* Pixel cross-entropy plus soft Dice over a batch of masks (see train.h). */
int
mt_loss_segmentation(const float *logits, const uint8_t *masks, int n, int hw, int c,
					 const float *class_weights, float ce_weight, float dice_weight,
					 float *loss_out, float *dlogits, mt_err *err)
{
	return seg_loss_host(logits, masks, n, hw, c, class_weights, ce_weight, dice_weight,
						 loss_out, dlogits, NULL, NULL, err);
}

/* Optimizer state: per parameter, up to two buffers and a step count. */
struct mt_optim
{
	mt_optim_kind kind;
	float		momentum,
				beta1,
				beta2,
				eps,
				weight_decay;
	int			nesterov;
	int			n_params;
	float	  **s1;				/* SGD momentum buffer; Adam first moment */
	float	  **s2;				/* Adam second moment */
	int64_t    *steps;
	float	   *lr_scale;		/* per parameter: its rate is lr times this (1: lr) */
	size_t		bytes;			/* state allocated */

	/*
	 * The state on a device (made by the first step on one): one block
	 * with both buffers for every float parameter the device training
	 * copy holds (so freezing differently later needs nothing new), in
	 * the device's layout (packed convolution weights).  While it exists
	 * the host's s1 / s2 are stale; a step on the host brings them back.
	 */
	const mt_backend *dbe;
	void	   *dblock;
	size_t		dbytes;
	float	  **d1,
			  **d2;
};

/* Free the device state (its values are lost: see optim_state_to_host). */
static void
optim_device_free(mt_optim *o)
{
	if (o->dblock != NULL)
		o->dbe->mem_free(o->dblock);
	o->dblock = NULL;
	o->dbytes = 0;
	mt_free(o->d1);
	mt_free(o->d2);
	o->d1 = o->d2 = NULL;
	o->dbe = NULL;
}

/* Free an optimizer and its state. */
void
mt_optim_free(mt_optim *o)
{
	if (o == NULL)
		return;
	for (int i = 0; i < o->n_params; i++)
	{
		if (o->s1 != NULL)
			mt_free(o->s1[i]);
		if (o->s2 != NULL)
			mt_free(o->s2[i]);
	}
	optim_device_free(o);
	mt_free(o->s1);
	mt_free(o->s2);
	mt_free(o->steps);
	mt_free(o->lr_scale);
	mt_free(o);
}

/* Allocate parameter i's optimizer state if it has none yet. */
static int
optim_state(mt_optim *o, const mt_param *p, int i)
{
	int			need1 = o->kind != MT_OPTIM_SGD || o->momentum != 0.0f;
	int			need2 = o->kind != MT_OPTIM_SGD;

	if (need1 && o->s1[i] == NULL)
	{
		if ((o->s1[i] = mt_calloc(p->numel, sizeof(float))) == NULL)
			return MT_ERR_NOMEM;
		o->bytes += p->numel * sizeof(float);
	}
	if (need2 && o->s2[i] == NULL)
	{
		if ((o->s2[i] = mt_calloc(p->numel, sizeof(float))) == NULL)
			return MT_ERR_NOMEM;
		o->bytes += p->numel * sizeof(float);
	}
	return MT_OK;
}

/* Create an optimizer for m's trainable parameters. */
mt_optim *
mt_optim_create(mt_model *m, mt_optim_kind kind, float momentum, float beta1,
				float beta2, float eps, float weight_decay, int nesterov,
				mt_err *err)
{
	mt_optim   *o;

	if (kind != MT_OPTIM_SGD && kind != MT_OPTIM_ADAM && kind != MT_OPTIM_ADAMW)
	{
		mt_seterr(err, MT_ERR_INVALID, "unknown optimizer %d", (int) kind);
		return NULL;
	}
	if (!(weight_decay >= 0.0f) || !isfinite(weight_decay))
	{
		mt_seterr(err, MT_ERR_INVALID, "weight decay must be 0 or more, not %g", weight_decay);
		return NULL;
	}
	if (kind == MT_OPTIM_SGD)
	{
		if (!(momentum >= 0.0f) || !isfinite(momentum))
		{
			mt_seterr(err, MT_ERR_INVALID, "momentum must be 0 or more, not %g", momentum);
			return NULL;
		}
		if (nesterov && momentum <= 0.0f)
		{
			mt_seterr(err, MT_ERR_INVALID, "nesterov momentum requires a momentum above 0");
			return NULL;
		}
	}
	else
	{
		if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f))
		{
			mt_seterr(err, MT_ERR_INVALID, "Adam betas must be in [0, 1), not %g and %g",
					  beta1, beta2);
			return NULL;
		}
		if (!(eps >= 0.0f) || !isfinite(eps))
		{
			mt_seterr(err, MT_ERR_INVALID, "Adam eps must be 0 or more, not %g", eps);
			return NULL;
		}
	}
	if ((o = mt_calloc(1, sizeof(mt_optim))) == NULL)
		goto nomem;
	o->kind = kind;
	o->momentum = momentum;
	o->beta1 = beta1;
	o->beta2 = beta2;
	o->eps = eps;
	o->weight_decay = weight_decay;
	o->nesterov = nesterov != 0;
	o->n_params = m->n_params;
	o->s1 = mt_calloc(m->n_params, sizeof(float *));
	o->s2 = mt_calloc(m->n_params, sizeof(float *));
	o->steps = mt_calloc(m->n_params, sizeof(int64_t));
	o->lr_scale = mt_calloc(m->n_params, sizeof(float));
	if (o->s1 == NULL || o->s2 == NULL || o->steps == NULL || o->lr_scale == NULL)
		goto nomem;
	for (int i = 0; i < m->n_params; i++)
		o->lr_scale[i] = 1.0f;
	for (int i = 0; i < m->n_params; i++)
		if (param_trains(m, i) && optim_state(o, &m->params[i], i) != MT_OK)
			goto nomem;
	return o;

nomem:
	mt_optim_free(o);
	mt_seterr(err, MT_ERR_NOMEM, "out of memory creating optimizer");
	return NULL;
}

/* Bring device optimizer state back into s1 / s2 and free it. */
static int
optim_state_to_host(mt_optim *o, const mt_model *m, mt_err *err)
{
	int			rc;

	if (o->dblock == NULL)
		return MT_OK;
	for (int i = 0; i < m->n_params; i++)
	{
		if (o->d1[i] == NULL)
			continue;
		if (optim_state(o, &m->params[i], i) != MT_OK)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory in optimizer step");
		if ((o->s1[i] != NULL &&
			 (rc = dev_get(m, o->dbe, i, o->s1[i], o->d1[i], err)) != MT_OK) ||
			(o->s2[i] != NULL &&
			 (rc = dev_get(m, o->dbe, i, o->s2[i], o->d2[i], err)) != MT_OK))
			return rc;
	}
	optim_device_free(o);
	return MT_OK;
}

/* The optimizer's state on dt's device, made from the host state if none. */
static int
optim_state_to_device(mt_optim *o, const mt_model *m, const struct mt_devtrain *dt,
					  mt_err *err)
{
	size_t		total = 0;
	float	   *base;
	void	   *blk = NULL;
	int			rc;

	if (o->dblock != NULL && o->dbe == dt->be)
		return MT_OK;
	if (o->dblock != NULL && (rc = optim_state_to_host(o, m, err)) != MT_OK)
		return rc;
	for (int i = 0; i < m->n_params; i++)
		if (dt->data[i] != NULL && param_learnable(&m->params[i]))
			total += 2 * dt_align(m->params[i].numel);
	if ((o->d1 = mt_calloc(m->n_params, sizeof(float *))) == NULL ||
		(o->d2 = mt_calloc(m->n_params, sizeof(float *))) == NULL)
	{
		optim_device_free(o);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in optimizer step");
	}
	o->dbe = dt->be;
	if ((rc = dt->be->mem_alloc(&blk, total * sizeof(float), err)) != MT_OK ||
		(o->dblock = blk, o->dbytes = total * sizeof(float),
		 rc = dt->be->mem_zero(blk, total * sizeof(float), err)) != MT_OK)
	{
		if (o->dblock == NULL)
			o->dbe = NULL;
		optim_device_free(o);
		return rc;
	}
	base = blk;
	for (int i = 0; i < m->n_params; i++)
	{
		if (dt->data[i] == NULL || !param_learnable(&m->params[i]))
			continue;
		o->d1[i] = base;
		o->d2[i] = base + dt_align(m->params[i].numel);
		base += 2 * dt_align(m->params[i].numel);
		/* state the host built up so far (zero, unless it took steps) */
		if ((o->s1[i] != NULL && o->steps[i] > 0 &&
			 (rc = dev_put(m, dt->be, i, o->d1[i], o->s1[i], err)) != MT_OK) ||
			(o->s2[i] != NULL && o->steps[i] > 0 &&
			 (rc = dev_put(m, dt->be, i, o->d2[i], o->s2[i], err)) != MT_OK))
		{
			optim_device_free(o);
			return rc;
		}
	}
	return MT_OK;
}

/* One update on the device of every trainable parameter that had a backward pass. */
static int
optim_step_device(mt_optim *o, mt_model *m, float lr, mt_err *err)
{
	struct mt_devtrain *dt = m->devtrain;
	const mt_backend *be = dt->be;
	int			rc;

	if ((rc = optim_state_to_device(o, m, dt, err)) != MT_OK)
		return rc;
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		int			sgd_buf = o->kind == MT_OPTIM_SGD && o->momentum != 0.0f;

		if (!param_trains(m, i) || dt->grad[i] == NULL || !dt->had_grad[i])
			continue;
		o->steps[i]++;
		if (o->kind == MT_OPTIM_SGD)
			be->sgd_update(p->numel, dt->data[i], dt->grad[i], sgd_buf ? o->d1[i] : NULL,
						   lr * o->lr_scale[i], o->momentum, o->weight_decay, o->nesterov,
						   o->steps[i] == 1);
		else
			be->adam_update(p->numel, dt->data[i], dt->grad[i], o->d1[i], o->d2[i], lr * o->lr_scale[i],
							o->beta1, o->beta2, o->eps, o->weight_decay,
							o->kind == MT_OPTIM_ADAMW, o->steps[i]);
	}
	dt->host_stale = 1;
	/*
	 * m->prepared stays: the folded copy serves only the frozen prefix of a
	 * device training pass (unchanged); mt_model_forward syncs and re-folds.
	 */
	return be->synchronize(err);
}

/* One update of every trainable parameter that has a gradient. */
int
mt_optim_step(mt_optim *o, mt_model *m, float lr, mt_err *err)
{
	const mt_backend *be = m->backend;
	int			rc;

	if (o->n_params != m->n_params)
		return mt_seterr(err, MT_ERR_INVALID, "optimizer was created for another model");
	if (!(lr >= 0.0f) || !isfinite(lr))
		return mt_seterr(err, MT_ERR_INVALID, "learning rate must be 0 or more, not %g", lr);
	if (m->devtrain != NULL)
		return optim_step_device(o, m, lr, err);
	/* back on the host after steps on a device: the state comes along */
	if ((rc = optim_state_to_host(o, m, err)) != MT_OK)
		return rc;
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];

		if (!param_trains(m, i) || p->grad == NULL)
			continue;
		if (optim_state(o, p, i) != MT_OK)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory in optimizer step");
		o->steps[i]++;
		if (o->kind == MT_OPTIM_SGD)
			be->sgd_update(p->numel, p->data, p->grad, o->s1[i], lr * o->lr_scale[i], o->momentum,
						   o->weight_decay, o->nesterov, o->steps[i] == 1);
		else
			be->adam_update(p->numel, p->data, p->grad, o->s1[i], o->s2[i], lr * o->lr_scale[i],
							o->beta1, o->beta2, o->eps, o->weight_decay,
							o->kind == MT_OPTIM_ADAMW, o->steps[i]);
	}
	m->prepared = 0;
	return MT_OK;
}

/* Parameter i's rate: lr times scale in every later step (torch's param groups). */
int
mt_optim_set_lr_scale(mt_optim *o, int i, float scale, mt_err *err)
{
	if (i < 0 || i >= o->n_params)
		return mt_seterr(err, MT_ERR_INVALID, "no parameter %d (the model has %d)", i, o->n_params);
	if (!(scale >= 0.0f) || !isfinite(scale))
		return mt_seterr(err, MT_ERR_INVALID, "learning-rate scale must be 0 or more, not %g", scale);
	o->lr_scale[i] = scale;
	return MT_OK;
}

/* Steps taken by the most-updated parameter. */
int64_t
mt_optim_steps(const mt_optim *o)
{
	int64_t		s = 0;

	for (int i = 0; i < o->n_params; i++)
		if (o->steps[i] > s)
			s = o->steps[i];
	return s;
}

/* Bytes of optimizer state. */
size_t
mt_optim_memory(const mt_optim *o)
{
	return o->bytes + o->dbytes;
}

/* The moving average of the weights (train.h). */
struct mt_ema
{
	int			n_params;
	unsigned char *which;
	float	  **avg;			/* per averaged parameter: host or device values */
	const mt_backend *dev;		/* the device holding them; NULL: host (or not yet placed) */
	void	   *block;			/* their device block */
	int			placed;
	int64_t		t;
};

mt_ema *
mt_ema_create(const mt_model *m, const unsigned char *which, mt_err *err)
{
	mt_ema	   *e = mt_calloc(1, sizeof(*e));

	if (e == NULL || (e->which = mt_calloc(m->n_params, 1)) == NULL ||
		(e->avg = mt_calloc(m->n_params, sizeof(float *))) == NULL)
	{
		mt_ema_free(e);
		mt_seterr(err, MT_ERR_NOMEM, "out of memory for the weights' moving average");
		return NULL;
	}
	e->n_params = m->n_params;
	for (int i = 0; i < m->n_params; i++)
		e->which[i] = which[i] && !m->params[i].is_counter;
	return e;
}

/* Values of parameter i where training keeps them: device or host. */
static float *
ema_values(mt_model *m, int i)
{
	return m->devtrain != NULL ? m->devtrain->data[i] : m->params[i].data;
}

/* The average's memory, zeroed, on the side the model trains on. */
static int
ema_place(mt_ema *e, mt_model *m, mt_err *err)
{
	const mt_backend *dev = m->devtrain != NULL ? m->devtrain->be : NULL;
	size_t		total = 0;
	int			rc;

	for (int i = 0; i < e->n_params; i++)
		if (e->which[i] && m->params[i].data != NULL)
			total += dt_align(m->params[i].numel);
	if (dev != NULL)
	{
		float	   *base;

		if ((rc = dev->mem_alloc(&e->block, (total > 0 ? total : 1) * sizeof(float), err)) != MT_OK)
			return rc;
		base = e->block;
		if (total > 0 && (rc = dev->mem_zero(base, total * sizeof(float), err)) != MT_OK)
		{
			dev->mem_free(e->block);
			e->block = NULL;
			return rc;
		}
		for (int i = 0; i < e->n_params; i++)
			if (e->which[i] && m->params[i].data != NULL)
			{
				e->avg[i] = base;
				base += dt_align(m->params[i].numel);
			}
	}
	else
		for (int i = 0; i < e->n_params; i++)
			if (e->which[i] && m->params[i].data != NULL &&
				(e->avg[i] = mt_calloc(m->params[i].numel, sizeof(float))) == NULL)
				return mt_seterr(err, MT_ERR_NOMEM, "out of memory for the weights' moving average");
	e->dev = dev;
	e->placed = 1;
	return MT_OK;
}

/* The backend that runs the average's entries, after checking the side. */
static const mt_backend *
ema_backend(mt_ema *e, mt_model *m, mt_err *err)
{
	const mt_backend *be = m->devtrain != NULL ? m->devtrain->be : m->backend;

	if (e->n_params != m->n_params)
	{
		mt_seterr(err, MT_ERR_INVALID, "moving average made for another model");
		return NULL;
	}
	if (e->placed && e->dev != (m->devtrain != NULL ? m->devtrain->be : NULL))
	{
		mt_seterr(err, MT_ERR_INVALID,
				  "the model's training moved between the host and a device during a moving average");
		return NULL;
	}
	if (be->ema_update == NULL || be->swap == NULL)
	{
		mt_seterr(err, MT_ERR_UNSUPPORTED, "the %s backend cannot keep a moving average", be->name);
		return NULL;
	}
	return be;
}

int
mt_ema_update(mt_ema *e, mt_model *m, double decay, mt_err *err)
{
	const mt_backend *be = ema_backend(e, m, err);
	double		t;
	float		d,
				c;
	int			rc;

	if (be == NULL)
		return err != NULL ? err->code : MT_ERR_INVALID;
	if (!(decay >= 0.0 && decay < 1.0))
		return mt_seterr(err, MT_ERR_INVALID, "moving-average decay must be at least 0 and below 1");
	if (!e->placed && (rc = ema_place(e, m, err)) != MT_OK)
		return rc;
	t = (double) ++e->t;
	d = (float) (decay * (1.0 - pow(decay, t - 1.0)) / (1.0 - pow(decay, t)));
	c = 1.0f - d;
	for (int i = 0; i < e->n_params; i++)
		if (e->avg[i] != NULL)
			be->ema_update(m->params[i].numel, e->avg[i], ema_values(m, i), d, c);
	return MT_OK;
}

int
mt_ema_swap(mt_ema *e, mt_model *m, mt_err *err)
{
	const mt_backend *be = ema_backend(e, m, err);

	if (be == NULL)
		return err != NULL ? err->code : MT_ERR_INVALID;
	if (!e->placed)
		return MT_OK;			/* no update yet: the average is the weights */
	for (int i = 0; i < e->n_params; i++)
		if (e->avg[i] != NULL)
			be->swap(m->params[i].numel, e->avg[i], ema_values(m, i));
	if (m->devtrain != NULL)
		m->devtrain->host_stale = 1;
	m->prepared = 0;
	return MT_OK;
}

int64_t
mt_ema_steps(const mt_ema *e)
{
	return e->t;
}

void
mt_ema_free(mt_ema *e)
{
	if (e == NULL)
		return;
	if (e->dev != NULL && e->block != NULL)
		e->dev->mem_free(e->block);
	else if (e->avg != NULL)
		for (int i = 0; i < e->n_params; i++)
			mt_free(e->avg[i]);
	mt_free(e->avg);
	mt_free(e->which);
	mt_free(e);
}

/* Copy parameter data between two models of the same architecture. */
int
mt_model_copy_params(const mt_model *src, mt_model *dst, mt_err *err)
{
	if (src->n_params != dst->n_params || strcmp(src->arch, dst->arch) != 0)
		return mt_seterr(err, MT_ERR_SHAPE, "cannot copy parameters of %s into %s",
						 src->arch, dst->arch);
	for (int i = 0; i < src->n_params; i++)
	{
		const mt_param *s = &src->params[i];
		mt_param   *d = &dst->params[i];

		if (strcmp(s->name, d->name) != 0 || s->numel != d->numel || s->ndim != d->ndim)
			return mt_seterr(err, MT_ERR_SHAPE, "tensor \"%s\" does not match \"%s\"",
							 s->name, d->name);
	}
	{
		/*
		 * src's host copy brought up to date (its values do not change, so
		 * src stays const to callers); dst's device copy is replaced.
		 */
		int			rc = mt_model_sync_to_host((mt_model *) src, err);

		if (rc == MT_OK)
			rc = mt_model_train_device_drop(dst, err);
		if (rc != MT_OK)
			return rc;
	}
	mt_model_train_release(dst);
	for (int i = 0; i < src->n_params; i++)
	{
		const mt_param *s = &src->params[i];
		mt_param   *d = &dst->params[i];

		if (s->data != NULL)
		{
			if (d->data == NULL && (d->data = mt_malloc(s->numel * sizeof(float))) == NULL)
				return mt_seterr(err, MT_ERR_NOMEM, "out of memory copying tensor \"%s\"", s->name);
			memcpy(d->data, s->data, s->numel * sizeof(float));
		}
		d->loaded = s->loaded;
	}
	dst->prepared = 0;
	return MT_OK;
}

/*
 * xoshiro256** seeded through splitmix64.  keep (NULL: none): the fill
 * functions below leave parameter i alone where keep[i] (those loaded
 * before an mt_model_init_unloaded), still drawing its random numbers so
 * that every other parameter gets the values it would get without that.
 */
typedef struct rng
{
	uint64_t	s[4];
	const unsigned char *keep;
} rng;

/* splitmix64: the next 64 bits of a seed sequence. */
static uint64_t
splitmix64(uint64_t *x)
{
	uint64_t	z = (*x += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* Seed the generator's four words from one 64-bit seed. */
static void
rng_seed(rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&seed);
	r->keep = NULL;
}

/* Rotate left by k bits. */
static uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256**: the next 64 random bits. */
static uint64_t
rng_next(rng *r)
{
	uint64_t	result = rotl(r->s[1] * 5, 7) * 9;
	uint64_t	t = r->s[1] << 17;

	r->s[2] ^= r->s[0];
	r->s[3] ^= r->s[1];
	r->s[1] ^= r->s[2];
	r->s[0] ^= r->s[3];
	r->s[2] ^= t;
	r->s[3] = rotl(r->s[3], 45);
	return result;
}

/* Uniform in [0, 1) with 53 bits. */
static double
rng_uniform(rng *r)
{
	return (double) (rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller, one value per call). */
static double
rng_normal(rng *r)
{
	double		u1 = 1.0 - rng_uniform(r);	/* (0, 1] */
	double		u2 = rng_uniform(r);

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Parameter idx's data, allocated if needed, marked loaded; NULL if no memory. */
static float *
param_data(mt_model *m, int idx)
{
	mt_param   *p = &m->params[idx];

	if (p->data == NULL)
		p->data = mt_malloc(p->numel * sizeof(float));
	if (p->data != NULL)
		p->loaded = 1;
	return p->data;
}

/* Fill parameter idx with a constant (unless r keeps it loaded). */
static int
fill_const(mt_model *m, int idx, float v, const rng *r)
{
	float	   *d;

	if (idx < 0 || (r->keep != NULL && r->keep[idx]))
		return MT_OK;
	if ((d = param_data(m, idx)) == NULL)
		return MT_ERR_NOMEM;
	for (size_t i = 0; i < m->params[idx].numel; i++)
		d[i] = v;
	return MT_OK;
}

/* Fill parameter idx with normal(0, std) or uniform(-bound, bound) values. */
static int
fill_random(mt_model *m, int idx, rng *r, int normal, double scale)
{
	float	   *d;

	if (idx < 0)
		return MT_OK;
	if (r->keep != NULL && r->keep[idx])
	{
		/* draw what filling would draw: the other parameters stay as with init_all */
		for (size_t i = 0; i < m->params[idx].numel; i++)
			(void) (normal ? rng_normal(r) : rng_uniform(r));
		return MT_OK;
	}
	if ((d = param_data(m, idx)) == NULL)
		return MT_ERR_NOMEM;
	for (size_t i = 0; i < m->params[idx].numel; i++)
		d[i] = (float) (normal ? rng_normal(r) * scale
						: (2.0 * rng_uniform(r) - 1.0) * scale);
	return MT_OK;
}

/* Initialise a linear layer as the model's head_init says. */
static int
init_linear(mt_model *m, const mt_node *nd, rng *r)
{
	double		bound = 1.0 / sqrt((double) nd->in_features);
	int			rc;

	if (m->head_init == MT_HEAD_INIT_ZERO && nd == &m->nodes[m->logits_node])
	{
		if ((rc = fill_const(m, nd->p_weight, 0.0f, r)) != MT_OK)
			return rc;
		return fill_const(m, nd->p_bias, 0.0f, r);
	}
	if (m->head_init == MT_HEAD_INIT_NORMAL)
	{
		if ((rc = fill_random(m, nd->p_weight, r, 1, 0.01)) != MT_OK)
			return rc;
		return fill_const(m, nd->p_bias, 0.0f, r);
	}
	if (m->head_init == MT_HEAD_INIT_ZERO_BIAS || m->head_init == MT_HEAD_INIT_UNIFORM_OUT)
	{
		if (m->head_init == MT_HEAD_INIT_UNIFORM_OUT)
			bound = 1.0 / sqrt((double) nd->out_features);
		if ((rc = fill_random(m, nd->p_weight, r, 0, bound)) != MT_OK)
			return rc;
		return fill_const(m, nd->p_bias, 0.0f, r);
	}
	if ((rc = fill_random(m, nd->p_weight, r, 0, bound)) != MT_OK)
		return rc;
	return fill_random(m, nd->p_bias, r, 0, bound);
}

/* Fill parameter idx as kind says; fans for the Xavier and Linear bounds. */
static int
init_param(mt_model *m, int idx, mt_init_kind kind, float std, double fan_in,
		   double fan_out, rng *r)
{
	switch (kind)
	{
		case MT_INIT_ZERO:
			return fill_const(m, idx, 0.0f, r);
		case MT_INIT_NORMAL:
			return fill_random(m, idx, r, 1, std);
		case MT_INIT_XAVIER_UNIFORM:
			return fill_random(m, idx, r, 0, sqrt(6.0 / (fan_in + fan_out)));
		case MT_INIT_LINEAR_UNIFORM:
			return fill_random(m, idx, r, 0, 1.0 / sqrt(fan_in));
		default:
			return MT_OK;
	}
}

/*
 * Transformer nodes and explicit per-node initialisations: layer norm
 * weight 1 bias 0, per-token linear layers as nn.Linear, anything else
 * zero, unless the node says otherwise (init_w, init_b).
 */
static int
init_node_explicit(mt_model *m, const mt_node *nd, rng *r)
{
	double		fan_in = 1.0,
				fan_out = 1.0;
	int			rc = MT_OK;

	if (nd->kind == MT_NODE_CONV)
	{
		fan_in = (double) nd->cin / nd->groups * nd->kh * nd->kw;
		fan_out = (double) nd->cout * nd->kh * nd->kw;
	}
	else if (nd->kind == MT_NODE_LINEAR || nd->kind == MT_NODE_TOKEN_LINEAR)
	{
		fan_in = nd->in_features;
		fan_out = nd->out_features;
	}
	if (mt_node_is_transformer(nd->kind))
	{
		if (nd->kind == MT_NODE_LAYERNORM)
		{
			rc = fill_const(m, nd->p_weight, 1.0f, r);
			if (rc == MT_OK)
				rc = fill_const(m, nd->p_bias, 0.0f, r);
		}
		else if (nd->kind == MT_NODE_TOKEN_LINEAR)
		{
			rc = fill_random(m, nd->p_weight, r, 0, 1.0 / sqrt(fan_in));
			if (rc == MT_OK)
				rc = fill_random(m, nd->p_bias, r, 0, 1.0 / sqrt(fan_in));
		}
		else
		{
			rc = fill_const(m, nd->p_weight, 0.0f, r);
			if (rc == MT_OK)
				rc = fill_const(m, nd->p_bias, 0.0f, r);
		}
	}
	if (rc == MT_OK && nd->init_w != MT_INIT_DEFAULT)
		rc = init_param(m, nd->p_weight, nd->init_w, nd->init_w_std, fan_in, fan_out, r);
	if (rc == MT_OK && nd->init_b != MT_INIT_DEFAULT)
		rc = init_param(m, nd->p_bias, nd->init_b, nd->init_b_std, fan_in, fan_out, r);
	return rc;
}

/* Fresh classifier head (see train.h). */
int
mt_model_init_head(mt_model *m, uint64_t seed, mt_err *err)
{
	rng			r;

	if (m->logits_node < 0 || m->nodes[m->logits_node].kind != MT_NODE_LINEAR)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "model %s has no linear classifier head", m->arch);
	rng_seed(&r, seed);
	{
		int			rc = mt_model_train_device_drop(m, err);

		if (rc != MT_OK)
			return rc;
	}
	if (init_linear(m, &m->nodes[m->logits_node], &r) != MT_OK)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory initialising the head of %s", m->arch);
	mt_model_train_release(m);
	m->prepared = 0;
	return MT_OK;
}

/* Every parameter from scratch, or only those not loaded (see train.h). */
static int
init_params(mt_model *m, uint64_t seed, int keep_loaded, mt_err *err)
{
	rng			r;
	int			rc = MT_OK;
	unsigned char *keep = NULL;

	rng_seed(&r, seed);
	if ((rc = mt_model_train_device_drop(m, err)) != MT_OK)
		return rc;
	if (keep_loaded)
	{
		/* which were loaded before: filling a parameter marks it loaded */
		if ((keep = mt_calloc(m->n_params > 0 ? m->n_params : 1, 1)) == NULL)
			return mt_seterr(err, MT_ERR_NOMEM, "out of memory initialising %s", m->arch);
		for (int i = 0; i < m->n_params; i++)
			keep[i] = m->params[i].loaded != 0;
		r.keep = keep;
	}
	mt_model_train_release(m);
	for (int i = 0; i < m->n_nodes && rc == MT_OK; i++)
	{
		const mt_node *nd = &m->nodes[i];

		if (nd->kind == MT_NODE_CONV)
		{
			double		fan_out = (double) nd->cout * nd->kh * nd->kw;
			double		fan_in = (double) (nd->cin / nd->groups) * nd->kh * nd->kw;

			rc = fill_random(m, nd->p_weight, &r, 1,
							 sqrt(2.0 / (m->conv_init_fan_in ? fan_in : fan_out)));
			if (rc == MT_OK)
				rc = fill_const(m, nd->p_bias, 0.0f, &r);
		}
		else if (nd->kind == MT_NODE_BN)
		{
			rc = fill_const(m, nd->p_bn_weight, 1.0f, &r);
			if (rc == MT_OK)
				rc = fill_const(m, nd->p_bn_bias, 0.0f, &r);
			if (rc == MT_OK)
				rc = fill_const(m, nd->p_bn_mean, 0.0f, &r);
			if (rc == MT_OK)
				rc = fill_const(m, nd->p_bn_var, 1.0f, &r);
		}
		else if (nd->kind == MT_NODE_CONV_TRANSPOSE)
		{
			/*
			 * torch's ConvTranspose2d default: kaiming_uniform(a=sqrt(5)) and
			 * the bias alike, U(+-1/sqrt(fan_in)) with torch's fan_in of
			 * the [cin][cout][kh][kw] weight, cout kh kw
			 */
			double		bound = 1.0 / sqrt((double) nd->cout * nd->kh * nd->kw);

			rc = fill_random(m, nd->p_weight, &r, 0, bound);
			if (rc == MT_OK)
				rc = fill_random(m, nd->p_bias, &r, 0, bound);
		}
		else if (nd->kind == MT_NODE_LINEAR && i != m->logits_node)
			rc = init_linear(m, nd, &r);
		/* a linear head follows head_init below; any other head its node's init */
		if (rc == MT_OK && (i != m->logits_node || nd->kind != MT_NODE_LINEAR))
			rc = init_node_explicit(m, nd, &r);
	}
	if (rc == MT_OK && m->logits_node >= 0 && m->nodes[m->logits_node].kind == MT_NODE_LINEAR)
		rc = init_linear(m, &m->nodes[m->logits_node], &r);
	mt_free(keep);
	if (rc != MT_OK)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory initialising %s", m->arch);
	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].is_counter)
			m->params[i].loaded = 1;
	m->prepared = 0;
	return MT_OK;
}

/* Every parameter from scratch (see train.h). */
int
mt_model_init_all(mt_model *m, uint64_t seed, mt_err *err)
{
	return init_params(m, seed, 0, err);
}

/* The parameters not loaded yet, as mt_model_init_all would (see train.h). */
int
mt_model_init_unloaded(mt_model *m, uint64_t seed, mt_err *err)
{
	return init_params(m, seed, 1, err);
}
