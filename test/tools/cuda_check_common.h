/*
 * cuda_check_common.h - what cuda_model_check.c and cuda_train_check.c
 * share: pass/fail counters, a clock, an allocation that ends the run with
 * its summary line, the relative error, and a model with random weights.
 *
 * The including file defines CHECK_TOOL (the summary's name, e.g.
 * "cuda_model"), CLASSES and SEG_CLASSES (a U-Net's classes) first.
 */
#ifndef CUDA_CHECK_COMMON_H
#define CUDA_CHECK_COMMON_H

#include "core/graph.h"
#include "core/rng.h"
#include "core/train.h"
#include "nn/zoo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int	n_pass = 0;
static int	n_fail = 0;

static inline double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void *
xmalloc(size_t bytes)
{
	void	   *p = malloc(bytes ? bytes : 1);

	if (p == NULL)
	{
		printf("FAIL: host out of memory\n");
		printf("%s: %d passed, %d failed\n", CHECK_TOOL, n_pass, n_fail + 1);
		exit(1);
	}
	return p;
}

/* U-Nets: spatial logits, input sides multiples of 32 */
static inline int
is_unet(const char *arch)
{
	return strncmp(arch, "unet_", 5) == 0;
}

/* max|a - b| / max(max|b|, floor) over len values; a NaN counts as infinite */
static inline double
rel_err_floor(const float *a, const float *b, size_t len, double floor)
{
	double		diff = 0,
				scale = floor;

	for (size_t i = 0; i < len; i++)
	{
		double		d = fabs((double) a[i] - (double) b[i]);

		if (d > diff || isnan(d))
			diff = isnan(d) ? INFINITY : d;
		if (fabs((double) b[i]) > scale)
			scale = fabs((double) b[i]);
	}
	return diff / scale;
}

/*
 * ||a - b||_2 / max(||b||_2, floor): the error of a whole tensor, for
 * results rounded on purpose (bf16), where one element's max error says
 * little; a NaN counts as infinite
 */
static inline double
rel_err_norm(const float *a, const float *b, size_t len, double floor)
{
	double		d2 = 0,
				b2 = 0;

	for (size_t i = 0; i < len; i++)
	{
		double		d = (double) a[i] - (double) b[i];

		d2 += d * d;
		b2 += (double) b[i] * b[i];
	}
	if (isnan(d2))
		return INFINITY;
	return sqrt(d2) / fmax(sqrt(b2), floor);
}

/* max|a - b| / max(max|b|, 1e-6) */
static inline double
rel_err(const float *a, const float *b, size_t len)
{
	return rel_err_floor(a, b, len, 1e-6);
}

/*
 * A model with torchvision's initialisation, then batch-norm statistics
 * and affine parameters drawn at random (the initialisation's 1/0/0/1
 * would make folding trivial).
 */
static inline mt_model *
random_model(const char *arch, uint64_t seed, mt_err *err)
{
	mt_model   *m = mt_zoo_build(arch, is_unet(arch) ? SEG_CLASSES : CLASSES, 0, err);
	mt_rng		rng;

	if (m == NULL)
		return NULL;
	if (mt_model_init_all(m, seed, err) != MT_OK)
	{
		mt_model_free(m);
		return NULL;
	}
	mt_rng_seed(&rng, seed, 7);
	for (int i = 0; i < m->n_nodes; i++)
	{
		const mt_node *nd = &m->nodes[i];

		if (nd->kind != MT_NODE_BN)
			continue;
		for (size_t j = 0; j < m->params[nd->p_bn_weight].numel; j++)
		{
			m->params[nd->p_bn_weight].data[j] = (float) (0.5 + mt_rng_uniform(&rng));
			m->params[nd->p_bn_bias].data[j] = (float) (0.2 * mt_rng_uniform(&rng) - 0.1);
			m->params[nd->p_bn_mean].data[j] = (float) (0.2 * mt_rng_uniform(&rng) - 0.1);
			m->params[nd->p_bn_var].data[j] = (float) (0.5 + mt_rng_uniform(&rng));
		}
	}
	/*
	 * a transformer's constant initial values (zero head and biases, unit
	 * layer norms) made random too, so every logit and gradient is nonzero
	 */
	for (int i = 0; i < m->n_nodes; i++)
	{
		const mt_node *nd = &m->nodes[i];
		int			ln = nd->kind == MT_NODE_LAYERNORM;

		if (!mt_node_is_transformer(nd->kind) && !(nd->kind == MT_NODE_LINEAR && i == m->logits_node &&
												   strncmp(arch, "vit", 3) == 0))
			continue;
		for (int k = 0; k < 2; k++)
		{
			int			pi = k == 0 ? nd->p_weight : nd->p_bias;

			if (pi < 0 || (k == 0 && nd->kind == MT_NODE_TOKEN_LINEAR) ||
				(k == 1 && nd->kind == MT_NODE_TOKENS))
				continue;		/* Xavier weights and the position embedding are random already */
			for (size_t j = 0; j < m->params[pi].numel; j++)
				m->params[pi].data[j] = (float) ((ln && k == 0 ? 1.0 : 0.0) +
												 0.1 * (2.0 * mt_rng_uniform(&rng) - 1.0));
		}
	}
	m->prepared = 0;
	return m;
}

#endif
