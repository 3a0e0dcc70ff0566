/*
 * grad_check.h - random buffers and finite-difference gradient checks
 * shared by test_grad.c, test_unet.c and test_vit.c.
 *
 * The includer defines GRAD_CHECK_SEED first: the start of its own
 * xorshift64 sequence (rng_state), so each suite keeps its own draws.
 *
 * Error measure of fd_check: max |finite difference - analytic| over the
 * checked elements divided by max |analytic| over the tensor.
 */
#ifndef MT_GRAD_CHECK_H
#define MT_GRAD_CHECK_H

#include "core/graph.h"
#include "core/train.h"
#include "mt_test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GRAD_CHECK_SEED
#error "define GRAD_CHECK_SEED before including grad_check.h"
#endif

static uint64_t rng_state = GRAD_CHECK_SEED;

/* Uniform in [0, 1). */
static inline double
urand(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (double) (rng_state >> 11) / 9007199254740992.0;
}

/* Uniform in [lo, hi). */
static inline float
frand(float lo, float hi)
{
	return (float) (lo + (hi - lo) * urand());
}

/* Uniform integer in [0, n). */
static inline int
irand(int n)
{
	return (int) (urand() * n);
}

/* A buffer of uniform values in [lo, hi). */
static inline float *
rbuf(size_t n, float lo, float hi)
{
	float	   *p = malloc((n ? n : 1) * sizeof(float));

	for (size_t i = 0; i < n; i++)
		p[i] = frand(lo, hi);
	return p;
}

/* A zeroed buffer. */
static inline float *
zbuf(size_t n)
{
	return calloc(n ? n : 1, sizeof(float));
}

/* Inner product in double. */
static inline double
dot(const float *a, const float *b, size_t n)
{
	double		s = 0;

	for (size_t i = 0; i < n; i++)
		s += (double) a[i] * b[i];
	return s;
}

/* Max |a - b| / max |b|. */
static inline double
rel_err(const float *a, const float *b, size_t n)
{
	double		d = 0,
				m = 1e-12;

	for (size_t i = 0; i < n; i++)
	{
		d = fmax(d, fabs((double) a[i] - b[i]));
		m = fmax(m, fabs((double) b[i]));
	}
	return d / m;
}

typedef void (*fwd_fn) (void *ctx, float *y);

/*
 * Central differences of f = <y(v), r> with respect to v[k] for `samples`
 * elements (all if samples >= len, else random ones); returns the error
 * measure with max |ga| taken as at least `floor`.
 */
static inline double
fd_check_floor(fwd_fn f, void *ctx, float *v, size_t len, const float *ga,
			   const float *r, float *y, size_t ylen, int samples, double h,
			   double floor)
{
	double		worst = 0,
				gmax = 0;
	int			count = samples >= (int) len ? (int) len : samples;

	for (size_t k = 0; k < len; k++)
		gmax = fabs(ga[k]) > gmax ? fabs(ga[k]) : gmax;
	for (int s = 0; s < count; s++)
	{
		size_t		k = samples >= (int) len ? (size_t) s : (size_t) irand((int) len);
		float		save = v[k];
		float		hi = (float) (save + h),
					lo = (float) (save - h);
		double		lp,
					lm,
					fd;

		v[k] = hi;
		f(ctx, y);
		lp = dot(y, r, ylen);
		v[k] = lo;
		f(ctx, y);
		lm = dot(y, r, ylen);
		v[k] = save;
		fd = (lp - lm) / ((double) hi - (double) lo);
		if (fabs(fd - ga[k]) > worst)
			worst = fabs(fd - ga[k]);
	}
	return worst / (gmax > floor ? gmax : floor);
}

/* fd_check_floor for tensors whose gradient is not tiny. */
static inline double
fd_check(fwd_fn f, void *ctx, float *v, size_t len, const float *ga,
		 const float *r, float *y, size_t ylen, int samples, double h)
{
	return fd_check_floor(f, ctx, v, len, ga, r, y, ylen, samples, h, 1e-6);
}

/* Context of a graph-level check: f = <output of the logits node, r>. */
typedef struct graph_ctx
{
	mt_model   *m;
	const float *x;
	int			n,
				h,
				w;
	const mt_rng *drop;			/* head dropout: every pass starts from this state */
} graph_ctx;

/* Forward of a graph context in training mode (state dropped). */
static inline void
graph_fwd(void *p, float *y)
{
	graph_ctx  *c = p;
	mt_err		err;

	c->m->prepared = 0;			/* parameters were just perturbed */
	if (c->drop != NULL)
		c->m->dropout_rng = *c->drop;	/* the same mask every time */
	if (mt_model_forward_train(c->m, c->x, c->n, c->h, c->w, y, NULL, &err) != MT_OK)
		fprintf(stderr, "forward_train: %s\n", err.msg);
	mt_model_train_release(c->m);
}

/* The loss of a whole model at its current parameters. */
typedef double (*model_loss_fn) (void *ctx);

/*
 * The gradient of a whole model's loss (already in the tensors' grad, from
 * one backward pass) against directional differences, tensor by tensor:
 * for a unit direction d (the gradient's own, and a random one),
 * (L(w + h d) - L(w - h d)) / 2h against <grad, d>, with h |g| = target.
 * Returns the worst |fd - <g, d>| / |g| and sets *worst_name to its tensor.
 */
static inline double
model_dir_check(mt_model *m, const char *arch, const char *const *tensors, double target,
				model_loss_fn loss, void *ctx, const char **worst_name)
{
	double		worst = 0;

	*worst_name = "";
	for (int t = 0; tensors[t] != NULL; t++)
	{
		int			idx = mt_model_find_param(m, tensors[t]);
		mt_param   *p;
		float	   *save,
				   *dir;
		double		gnorm = 0,
					e = 0;

		CHECK(idx >= 0 && m->params[idx].grad != NULL, "%s: gradient of %s", arch, tensors[t]);
		if (idx < 0 || m->params[idx].grad == NULL)
			continue;
		p = &m->params[idx];
		save = malloc(p->numel * sizeof(float));
		dir = malloc(p->numel * sizeof(float));
		memcpy(save, p->data, p->numel * sizeof(float));
		for (size_t k = 0; k < p->numel; k++)
			gnorm += (double) p->grad[k] * p->grad[k];
		gnorm = sqrt(gnorm);
		for (int s = 0; s < 2; s++)
		{
			double		dnorm = 0,
						an = 0,
						lp,
						lm,
						fd,
						h = target / fmax(gnorm, 1e-3);

			for (size_t k = 0; k < p->numel; k++)
			{
				dir[k] = s == 0 ? p->grad[k] : (urand() < 0.5 ? -1.0f : 1.0f);
				dnorm += (double) dir[k] * dir[k];
			}
			dnorm = sqrt(dnorm);
			for (size_t k = 0; k < p->numel; k++)
			{
				dir[k] = (float) (dir[k] / dnorm);
				an += (double) p->grad[k] * dir[k];
			}
			for (size_t k = 0; k < p->numel; k++)
				p->data[k] = (float) (save[k] + h * dir[k]);
			lp = loss(ctx);
			for (size_t k = 0; k < p->numel; k++)
				p->data[k] = (float) (save[k] - h * dir[k]);
			lm = loss(ctx);
			memcpy(p->data, save, p->numel * sizeof(float));
			fd = (lp - lm) / (2 * h);
			if (getenv("MT_GRAD_DEBUG"))
				printf("    %s dir %d: fd %.6g an %.6g |g| %.3g\n", p->name, s, fd, an, gnorm);
			e = fmax(e, fabs(fd - an) / fmax(gnorm, 1e-6));
		}
		free(save);
		free(dir);
		if (e > worst)
		{
			worst = e;
			*worst_name = p->name;
		}
	}
	return worst;
}

#endif
