/*
 * cuda_train_check - one training step on the CUDA backend against the same
 * step on the CPU backend (built by `make -f src/cuda/cuda.mk cuda-check` or
 * `make WITH_CUDA=1 cuda-check`; under the CPU emulation by
 * test/cuda_emu/run.sh).
 *
 * For each architecture and each setting (SGD with momentum and AdamW, each
 * with every layer training and with the backbone frozen): two copies of
 * one random model (torchvision's initialisation, then random batch-norm
 * statistics and affine parameters); one stays on the host, the other goes
 * to the device (mt_model_to_device).  Both take one step from the same
 * batch: zero_grad, forward_train, the loss (cross-entropy; a U-Net's
 * segmentation loss on random masks), backward, optimizer step.  Then the
 * device copy is brought to the host (mt_model_sync_to_host) and compared:
 * the loss, every gradient, every parameter after the update (weights and
 * running statistics), each as max|a - b| / max(max|b|, 1e-6) <= 1e-4 per
 * tensor, b the CPU's, on the graph with ReLU replaced by the sigmoid (see
 * smooth_acts: activation-threshold flips are not kernel errors; an AdamW
 * step's parameters against the CPU's AdamW applied to the device's
 * gradients, see update_from_device_grads); then the
 * model as built, SGD, every layer training, within 1e-1 (loss 1e-4).  The first setting also checks inference after the
 * step (mt_model_forward syncs and re-folds) and the return to the host.
 * At the end no device memory may be left.
 *
 * Then (unless --no-bench) training images/s, one step = zero_grad +
 * forward_train + loss + backward + optimizer step (AdamW, every layer
 * training): the device at the benchmark batch (best of timed steps after
 * a warm-up), in float32 and with bf16 GEMM operands, beside the CPU at
 * its smaller batch (one timed step).
 *
 * Prints "ok: ..." / "FAIL: ..." lines, a table, and last
 * "cuda_train: N passed, M failed"; exits 1 when M > 0.  Without a device:
 * "no CUDA device: <reason>" and "cuda_train: 0 passed, 0 failed (skipped:
 * no device)", exit 0.  CUDA_TRAIN_VERBOSE=1 prints every gradient's error.
 *
 *   cuda_train_check [--size S] [--batch B] [--cpu-batch B] [--bench-size S]
 *                    [--archs a,b,..] [--settings 0123] [--no-bench] [--seconds T]
 *   settings: 0 SGD full fine-tune, 1 AdamW full, 2 SGD frozen backbone,
 *   3 AdamW frozen backbone (0-3 with the sigmoid for ReLU, bound 1e-4;
 *   the AdamW ones with head dropout 0.2, both sides drawing the same masks,
 *   and the classifier head at 10x the rate, mt_optim_set_lr_scale),
 *   then for every arch a step repeated on the device (bit for bit) and the
 *   weights' moving average kept there against the CPU's (ema_check),
 *   4 SGD full fine-tune of the model as built (bound 1e-1), 5 SGD full
 *   fine-tune with the sigmoid, the device step at bf16 precision (loss
 *   within 1e-2, all gradients together within 5e-2 norm-wise
 *   (||d - c|| / ||c||) and not the float32 ones, parameters within 5e-2)
 *   defaults: compared at 64x64 batch 4; benchmark 224x224, device batch
 *   64, CPU batch 4; resnet18,resnet50,mobilenet_v2
 */
#include "core/blas.h"
#include "core/graph.h"
#include "core/rng.h"
#include "core/train.h"
#include "cuda/cuda.h"
#include "io/augment.h"
#include "nn/zoo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOL 1e-4
/* a bf16 step on the device (GEMM operands in bf16) against the float32 CPU */
#define TOL_BF16 5e-2
#define TOL_BF16_LOSS 1e-2
#define CLASSES 10
#define SEG_CLASSES 3

#define CHECK_TOOL "cuda_train"
#include "cuda_check_common.h"

static void
check(int ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok" : "FAIL", what);
	if (ok)
		n_pass++;
	else
		n_fail++;
}

/* A batch, its labels (or masks) */
typedef struct batch
{
	int			n,
				size;
	float	   *x;
	int		   *labels;
	uint8_t    *masks;
} batch;

static batch
make_batch(int n, int size, int seg)
{
	batch		b = {n, size, NULL, NULL, NULL};
	mt_rng		rng;
	size_t		xs = (size_t) n * size * size * 3;

	mt_rng_seed(&rng, 11, 0);
	b.x = xmalloc(sizeof(float) * xs);
	for (size_t i = 0; i < xs; i++)
		b.x[i] = (float) mt_rng_normal(&rng);
	b.labels = xmalloc(sizeof(int) * n);
	for (int i = 0; i < n; i++)
		b.labels[i] = i % CLASSES;
	if (seg)
	{
		b.masks = xmalloc((size_t) n * size * size);
		for (size_t i = 0; i < (size_t) n * size * size; i++)
			b.masks[i] = (uint8_t) (mt_rng_uniform(&rng) * SEG_CLASSES) % SEG_CLASSES;
	}
	return b;
}

static void
free_batch(batch *b)
{
	free(b->x);
	free(b->labels);
	free(b->masks);
}

/* Floats of the logits per image. */
static size_t
logits_per(const mt_model *m, int size)
{
	return is_unet(m->arch) ? (size_t) size * size * SEG_CLASSES : (size_t) m->num_classes;
}

/* One step; the loss into *loss.  Prints the failure and returns 0 on one. */
/* The loss of batch b for m: cross-entropy, or a U-Net's CE + Dice on its masks. */
static mt_loss_spec
batch_loss(const mt_model *m, const batch *b)
{
	mt_loss_spec spec = {0};

	spec.seg = is_unet(m->arch);
	spec.n = b->n;
	spec.labels = b->labels;
	spec.masks = b->masks;
	spec.ce_weight = spec.dice_weight = 1.0f;
	return spec;
}

static int
step(mt_model *m, mt_optim *o, const batch *b, float lr, float *loss, const char *what)
{
	mt_loss_spec spec = batch_loss(m, b);
	mt_err		err;
	int			rc;

	mt_clearerr(&err);
	mt_model_zero_grad(m);
	/* the loss runs where the model trains (on the device: the backend's loss entries) */
	rc = mt_model_forward_train(m, b->x, b->n, b->size, b->size, NULL, NULL, &err);
	if (rc == MT_OK)
		rc = mt_model_loss_backward(m, &spec, loss, &err);
	if (rc == MT_OK)
		rc = mt_optim_step(o, m, lr, &err);
	if (rc != MT_OK)
	{
		printf("FAIL: %s %s: %s%s%s\n", m->arch, what, err.msg, err.detail[0] ? " " : "", err.detail);
		n_fail++;
		return 0;
	}
	return 1;
}

/*
 * AdamW with eps 1e-3 here: Adam's first update is lr g / (|g| + eps), which
 * for eps 1e-8 is lr sign(g) and turns a gradient of ~1e-9 that differs by
 * fp32 rounding into an update that differs by up to 2 lr; with eps of
 * the gradients' order the update is a smooth function of them, so the
 * comparison tests the kernels, not the conditioning.  (cuda_ops_check
 * compares the update kernel itself with eps 1e-8.)
 */
static mt_optim *
make_optim(mt_model *m, int adamw, mt_err *err)
{
	if (adamw)
		return mt_optim_create(m, MT_OPTIM_ADAMW, 0.0f, 0.9f, 0.999f, 1e-3f, 0.01f, 0, err);
	return mt_optim_create(m, MT_OPTIM_SGD, 0.9f, 0.0f, 0.0f, 0.0f, 1e-4f, 0, err);
}

/* Worst relative errors of one compared step. */
typedef struct cmp
{
	double		loss,
				grad,
				param;
	const char *grad_at,
			   *param_at;
} cmp;

/*
 * ReLU and ReLU6 replaced by the sigmoid (a smooth model).  With ReLU, an
 * activation input within rounding of 0 (or 6) takes the other side on
 * one of the two backends, and that element's whole gradient is then
 * routed differently: a difference of one term in a weight gradient's sum,
 * far above 1e-4 for a deep net on a small batch, whatever the kernels'
 * accuracy.  The strict comparison therefore runs the same graph with a
 * smooth activation (every kernel path is the same; the ReLU masks
 * themselves are compared op by op in cuda_ops_check), and the model as
 * built is compared with a bound that catches wrong kernels, not rounding.
 */
static void
smooth_acts(mt_model *m)
{
	for (int i = 0; i < m->n_nodes; i++)
		if (m->nodes[i].act == MT_ACT_RELU || m->nodes[i].act == MT_ACT_RELU6)
			m->nodes[i].act = MT_ACT_SIGMOID;
	m->prepared = 0;
}

/*
 * The same step twice on the device from identical weights: every gradient,
 * every updated parameter and the loss must agree bit for bit (the device's
 * reductions use no atomics), so a seed repeats a run as on the CPU.
 */
static void
repeat_step(const char *arch, const batch *b)
{
	char		what[256];
	mt_err		err;
	mt_model   *m[2] = {NULL, NULL};
	mt_optim   *o[2] = {NULL, NULL};
	float		loss[2] = {0, 0};
	size_t		differ = 0,
				values = 0;

	mt_clearerr(&err);
	for (int k = 0; k < 2; k++)
		if ((m[k] = random_model(arch, 42, &err)) == NULL || mt_model_freeze(m[k], "none", &err) != MT_OK ||
			(o[k] = make_optim(m[k], 0, &err)) == NULL ||
			mt_model_to_device(m[k], &mt_cuda_backend, &err) != MT_OK ||
			!step(m[k], o[k], b, 1e-2f, &loss[k], "device step (repeat)") ||
			mt_model_sync_to_host(m[k], &err) != MT_OK)
		{
			printf("FAIL: %s repeat: %s %s\n", arch, err.msg, err.detail);
			n_fail++;
			goto out;
		}
	for (int i = 0; i < m[0]->n_params; i++)
	{
		const mt_param *a = &m[0]->params[i],
				   *c = &m[1]->params[i];

		if (a->data == NULL || a->is_counter)
			continue;
		values += a->numel;
		if (memcmp(a->data, c->data, a->numel * sizeof(float)) != 0)
			differ++;
		if (a->grad != NULL && c->grad != NULL && memcmp(a->grad, c->grad, a->numel * sizeof(float)) != 0)
			differ++;
	}
	snprintf(what, sizeof(what), "%s SGD full fine-tune (%dx%d batch %d): the device step twice gives the same "
			 "loss, gradients and parameters bit for bit (%zu values; %zu tensors differ)",
			 arch, b->size, b->size, b->n, values, differ);
	check(differ == 0 && memcmp(&loss[0], &loss[1], sizeof(float)) == 0, what);
out:
	for (int k = 0; k < 2; k++)
	{
		if (o[k])
			mt_optim_free(o[k]);
		if (m[k])
			mt_model_free(m[k]);
	}
}

/* Parameter values of m (host copy) as one array; NULL on failure. */
static float *
params_copy(const mt_model *m, size_t *len)
{
	size_t		n = 0,
				at = 0;
	float	   *v;

	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].data != NULL && !m->params[i].is_counter)
			n += m->params[i].numel;
	v = xmalloc(sizeof(float) * (n > 0 ? n : 1));
	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].data != NULL && !m->params[i].is_counter)
		{
			memcpy(v + at, m->params[i].data, sizeof(float) * m->params[i].numel);
			at += m->params[i].numel;
		}
	*len = n;
	return v;
}

/*
 * The moving average of the weights (mt_ema) kept on the device beside its
 * training against the one the CPU keeps: three SGD steps (sigmoid for
 * ReLU) with an update at decay 0.9 after each, then the average swapped
 * in: within 1e-3 of the CPU's (three steps compound float32 differences),
 * and not the weights themselves; swapped back: the device's weights bit
 * for bit as before the two swaps.
 */
static void
ema_check(const char *arch, const batch *b)
{
	char		what[768];
	mt_err		err;
	mt_model   *m[2] = {NULL, NULL};
	mt_optim   *o[2] = {NULL, NULL};
	mt_ema	   *e[2] = {NULL, NULL};
	unsigned char *which = NULL;
	float	   *w_dev = NULL,
			   *avg_dev = NULL,
			   *avg_cpu = NULL,
			   *again = NULL;
	size_t		len = 0;
	float		loss;

	mt_clearerr(&err);
	for (int k = 0; k < 2; k++)
	{
		if ((m[k] = random_model(arch, 42, &err)) == NULL || mt_model_freeze(m[k], "none", &err) != MT_OK ||
			(o[k] = make_optim(m[k], 0, &err)) == NULL)
			goto fail;
		smooth_acts(m[k]);
		if (which == NULL)
		{
			which = xmalloc(m[k]->n_params);
			for (int i = 0; i < m[k]->n_params; i++)
				which[i] = m[k]->params[i].trainable;
		}
		if ((e[k] = mt_ema_create(m[k], which, &err)) == NULL ||
			(k == 1 && mt_model_to_device(m[k], &mt_cuda_backend, &err) != MT_OK))
			goto fail;
		for (int t = 0; t < 3; t++)
			if (!step(m[k], o[k], b, 1e-2f, &loss, k == 0 ? "CPU step (ema)" : "device step (ema)") ||
				mt_ema_update(e[k], m[k], 0.9, &err) != MT_OK)
				goto fail;
	}
	if (mt_model_sync_to_host(m[1], &err) != MT_OK)
		goto fail;
	w_dev = params_copy(m[1], &len);
	if (mt_ema_swap(e[0], m[0], &err) != MT_OK || mt_ema_swap(e[1], m[1], &err) != MT_OK ||
		mt_model_sync_to_host(m[1], &err) != MT_OK)
		goto fail;
	avg_cpu = params_copy(m[0], &len);
	avg_dev = params_copy(m[1], &len);
	snprintf(what, sizeof(what), "%s moving average (decay 0.9, 3 SGD steps) kept on the device vs the CPU's: "
			 "rel err %.2e (<= 1e-3); it is not the weights (rel %.2e from them)", arch,
			 rel_err(avg_dev, avg_cpu, len), rel_err(avg_dev, w_dev, len));
	check(rel_err(avg_dev, avg_cpu, len) <= 1e-3 && rel_err(avg_dev, w_dev, len) > 1e-5, what);
	if (mt_ema_swap(e[1], m[1], &err) != MT_OK || mt_model_sync_to_host(m[1], &err) != MT_OK)
		goto fail;
	again = params_copy(m[1], &len);
	snprintf(what, sizeof(what), "%s: swapped back, the device's weights are as before, bit for bit", arch);
	check(memcmp(again, w_dev, sizeof(float) * len) == 0, what);
	goto out;
fail:
	printf("FAIL: %s moving average: %s %s\n", arch, err.msg, err.detail);
	n_fail++;
out:
	for (int k = 0; k < 2; k++)
	{
		mt_ema_free(e[k]);
		mt_optim_free(o[k]);
		mt_model_free(m[k]);
	}
	free(which);
	free(w_dev);
	free(avg_dev);
	free(avg_cpu);
	free(again);
}

/*
 * A training pass on a batch of bytes (mt_model_forward_train_u8): the
 * device renders it (augmentation draws, normalisation) and trains on it;
 * the CPU renders the same bytes under the same draws on the host.  The
 * logits must agree within TOL.
 */
static void
u8_check(const char *arch, int size, int n)
{
	char		what[768];
	mt_err		err;
	mt_model   *m[2] = {NULL, NULL};
	size_t		bytes = (size_t) n * size * size * 3;
	uint8_t    *src = xmalloc(bytes),
			   *masks = NULL;
	double	   *par = xmalloc(sizeof(double) * MT_AUG_PARAMS * n);
	float	   *lg[2],
				loss[2] = {0, 0};
	int64_t		valid[2] = {0, 0},
				right[2] = {0, 0};
	int			seg = is_unet(arch);
	size_t		per = 0;
	const float mean[3] = {0.485f, 0.456f, 0.406f},
				std[3] = {0.229f, 0.224f, 0.225f};
	mt_augment	a = {1, 20.0f, 0.2f, 0.2f, 0.8f};
	mt_rng		rng;

	mt_clearerr(&err);
	for (size_t i = 0; i < bytes; i++)
		src[i] = (uint8_t) ((i * 2654435761u) >> 24);
	if (seg)
	{
		/* a blob per image as its mask; the draws rotate some pixels out (255) */
		masks = xmalloc((size_t) n * size * size);
		for (size_t i = 0; i < (size_t) n * size * size; i++)
		{
			int			x = (int) (i % size) - size / 2,
						y = (int) ((i / size) % size) - size / 3;

			masks[i] = (uint8_t) ((x * x + y * y < size * size / 10) ? 1 : 0) % SEG_CLASSES;
		}
	}
	mt_rng_seed(&rng, 3, 1);
	mt_augment_draw_params(&a, n, size, &rng, par);
	lg[0] = lg[1] = NULL;
	for (int k = 0; k < 2; k++)
	{
		if ((m[k] = random_model(arch, 42, &err)) == NULL || mt_model_freeze(m[k], "none", &err) != MT_OK ||
			(k == 1 && mt_model_to_device(m[k], &mt_cuda_backend, &err) != MT_OK))
			goto fail;
		per = logits_per(m[k], size);
		lg[k] = xmalloc(sizeof(float) * per * n);
		if (mt_model_forward_train_u8(m[k], src, par, masks, n, size, mean, std, lg[k], NULL, &err) != MT_OK)
			goto fail;
		if (seg)
		{
			/* the loss over the masks rendered with the batch (on the device: there) */
			mt_loss_spec spec = {.seg = 1, .n = n, .ce_weight = 1, .dice_weight = 1};

			if (mt_model_loss_backward(m[k], &spec, &loss[k], &err) != MT_OK)
				goto fail;
			valid[k] = spec.px_valid;
			right[k] = spec.px_correct;
		}
		mt_model_train_release(m[k]);
	}
	snprintf(what, sizeof(what), "%s: a batch of bytes augmented and normalised on the device, trained on "
			 "(%dx%d batch %d), vs rendered on the host: logits rel err %.2e", arch, size, size, n,
			 rel_err(lg[1], lg[0], per * n));
	check(rel_err(lg[1], lg[0], per * n) <= TOL, what);
	if (seg)
	{
		snprintf(what, sizeof(what), "%s: its masks rendered on the device and the loss there: loss %.7g vs CPU "
				 "%.7g, labelled pixels %lld vs %lld (of %d), predicted right %lld vs %lld", arch,
				 loss[1], loss[0], (long long) valid[1], (long long) valid[0], n * size * size,
				 (long long) right[1], (long long) right[0]);
		check(fabs((double) loss[1] - loss[0]) <= TOL * fabs(loss[0]) && valid[1] == valid[0] &&
			  valid[0] < (int64_t) n * size * size && llabs(right[1] - right[0]) <= valid[0] / 1000, what);
	}
	goto out;
fail:
	printf("FAIL: %s bytes batch: %s %s\n", arch, err.msg, err.detail);
	n_fail++;
out:
	for (int k = 0; k < 2; k++)
	{
		mt_model_free(m[k]);
		free(lg[k]);
	}
	free(src);
	free(masks);
	free(par);
}

/*
 * The AdamW settings train the head (the logits node's weight and bias, as
 * mt_model_freeze's "backbone" finds it; a U-Net's segmentation head) at
 * 10x the rate (a parameter group of its own, fine_tune's head_lr_scale),
 * so the device's per-parameter rate is compared too.
 */
static void
scale_head(mt_model *m, mt_optim *o, mt_err *err)
{
	const mt_node *h = m->logits_node >= 0 ? &m->nodes[m->logits_node] : NULL;

	if (h != NULL && h->p_weight >= 0)
		mt_optim_set_lr_scale(o, h->p_weight, 10.0f, err);
	if (h != NULL && h->p_bias >= 0)
		mt_optim_set_lr_scale(o, h->p_bias, 10.0f, err);
}

/*
 * Adam's update divides each gradient by its own size plus eps, so an
 * updated parameter can move further from the CPU's, relative to the
 * parameter's own size, than its gradient did (on the H200, ViT-B/16's
 * small random conv_proj.bias was 1.36e-4 off after one AdamW step with
 * every gradient within 2.6e-6).  An AdamW step's update is therefore
 * judged apart from its gradients, as test/parity_train.py's "optimizer
 * alone" is: the CPU's optimizer applied to the device's gradients, from
 * the same initial weights, must give the device's updated parameters
 * within TOL.  Returns the worst relative error over the parameters that
 * have a gradient (*at: which), or INFINITY on failure.
 */
static double
update_from_device_grads(const char *arch, int frozen, int smooth, const batch *b, float lr,
						 const mt_model *md, const char **at)
{
	mt_err		err;
	mt_model   *mx = NULL;
	mt_optim   *ox = NULL;
	mt_loss_spec spec;
	float		loss;
	double		worst = INFINITY;

	mt_clearerr(&err);
	if ((mx = random_model(arch, 42, &err)) == NULL ||
		mt_model_freeze(mx, frozen ? "backbone" : "none", &err) != MT_OK ||
		(ox = make_optim(mx, 1, &err)) == NULL)
		goto out;
	scale_head(mx, ox, &err);
	if (smooth)
		smooth_acts(mx);
	/* a CPU forward and backward pass, only to give mx its gradient buffers */
	spec = batch_loss(mx, b);
	mt_model_zero_grad(mx);
	if (mt_model_forward_train(mx, b->x, b->n, b->size, b->size, NULL, NULL, &err) != MT_OK ||
		mt_model_loss_backward(mx, &spec, &loss, &err) != MT_OK)
		goto out;
	for (int i = 0; i < mx->n_params; i++)
		if (mx->params[i].grad != NULL && md->params[i].grad != NULL)
			memcpy(mx->params[i].grad, md->params[i].grad, mx->params[i].numel * sizeof(float));
	if (mt_optim_step(ox, mx, lr, &err) != MT_OK)
		goto out;
	worst = 0;
	*at = "-";
	for (int i = 0; i < mx->n_params; i++)
	{
		double		e;

		if (mx->params[i].grad == NULL || md->params[i].grad == NULL)
			continue;
		if ((e = rel_err(md->params[i].data, mx->params[i].data, mx->params[i].numel)) >= worst)
		{
			worst = e;
			*at = md->params[i].name;
		}
	}
out:
	if (worst == INFINITY)
		printf("  (the update from the device's gradients: %s %s)\n", err.msg, err.detail);
	mt_optim_free(ox);
	mt_model_free(mx);
	return worst;
}

/* One setting: a step on the CPU and on the device from identical weights. */
static void
compare_step(const char *arch, int adamw, int frozen, const batch *b, int lifecycle, int smooth,
			 int bf16)
{
	char		label[160],
				what[768];
	mt_err		err;
	mt_model   *mc = NULL,
			   *md = NULL;
	mt_optim   *oc = NULL,
			   *od = NULL;
	float		lc = 0,
				ld = 0;
	float		lr = adamw ? 1e-3f : 1e-2f;
	cmp			r = {0, 0, 0, "-", "-"};
	double		gmax = 1e-6;

	double		tol = bf16 ? TOL_BF16 : smooth ? TOL : 1e-1;
	double		e_all;
	int			dstep;

	snprintf(label, sizeof(label), "%s %s%s %s (%dx%d batch %d%s%s)", arch, adamw ? "AdamW" : "SGD",
			 adamw ? " head dropout 0.2, head at 10x lr" : "",
			 frozen ? "frozen backbone" : "full fine-tune", b->size, b->size, b->n,
			 smooth ? ", sigmoid for ReLU" : ", as built, bound 1e-1",
			 bf16 ? ", bf16 on the device" : "");
	mt_clearerr(&err);
	if ((mc = random_model(arch, 42, &err)) == NULL || (md = random_model(arch, 42, &err)) == NULL ||
		mt_model_freeze(mc, frozen ? "backbone" : "none", &err) != MT_OK ||
		mt_model_freeze(md, frozen ? "backbone" : "none", &err) != MT_OK ||
		(oc = make_optim(mc, adamw, &err)) == NULL || (od = make_optim(md, adamw, &err)) == NULL)
	{
		printf("FAIL: %s: setup: %s\n", label, err.msg);
		n_fail++;
		goto out;
	}
	if (smooth)
	{
		smooth_acts(mc);
		smooth_acts(md);
	}
	if (adamw)
	{
		scale_head(mc, oc, &err);
		scale_head(md, od, &err);
		/* the masks are drawn on the host: both sides get the same ones */
		mc->head_dropout = md->head_dropout = 0.2f;
		mt_rng_seed(&mc->dropout_rng, 5, 2);
		md->dropout_rng = mc->dropout_rng;
	}
	if (mt_model_to_device(md, &mt_cuda_backend, &err) != MT_OK)
	{
		printf("FAIL: %s: to_device: %s%s%s\n", label, err.msg, err.detail[0] ? " " : "", err.detail);
		n_fail++;
		goto out;
	}
	if (!step(mc, oc, b, lr, &lc, "CPU step"))
		goto out;
	mt_set_precision(bf16 ? MT_PREC_BF16 : MT_PREC_FP32);
	dstep = step(md, od, b, lr, &ld, "device step");
	mt_set_precision(MT_PREC_FP32);
	if (!dstep)
		goto out;
	snprintf(what, sizeof(what), "%s: training state on the device (%zu MB of parameters and gradients)",
			 label, mt_cuda_mem_used() >> 20);
	check(md->devtrain != NULL && mt_model_device(md) != NULL, what);
	if (mt_model_sync_to_host(md, &err) != MT_OK)
	{
		printf("FAIL: %s: sync_to_host: %s %s\n", label, err.msg, err.detail);
		n_fail++;
		goto out;
	}
	r.loss = fabs((double) ld - lc) / fmax(fabs((double) lc), 1e-6);
	/*
	 * A gradient that is exactly zero in exact arithmetic (MobileNetV2's
	 * linear bottleneck: a BN bias feeding, through a convolution, a BN
	 * with batch statistics, which cancels any constant shift) is rounding
	 * noise of ~1e-9 on both sides; gradients are therefore compared
	 * against max(max|cpu|, 1e-3 of the model's largest gradient).
	 */
	for (int i = 0; i < mc->n_params; i++)
		if (mc->params[i].grad != NULL)
			for (size_t j = 0; j < mc->params[i].numel; j++)
				gmax = fmax(gmax, fabs(mc->params[i].grad[j]));
	if (getenv("CUDA_TRAIN_VERBOSE"))
		for (int i = 0; i < mc->n_params; i++)
		{
			const mt_param *pc = &mc->params[i];
			double		mx = 0;

			if (pc->grad == NULL || md->params[i].grad == NULL)
				continue;
			for (size_t j = 0; j < pc->numel; j++)
				mx = fmax(mx, fabs(pc->grad[j]));
			printf("  grad %-44s rel err %.2e  max|grad| %.3e  param rel err %.2e\n", pc->name,
				   rel_err_floor(md->params[i].grad, pc->grad, pc->numel, 1e-3 * gmax), mx,
				   rel_err(md->params[i].data, pc->data, pc->numel));
		}
	for (int i = 0; i < mc->n_params; i++)
	{
		const mt_param *pc = &mc->params[i],
				   *pd = &md->params[i];
		double		e;

		if (pc->is_counter || pc->data == NULL)
			continue;
		if ((pc->grad != NULL) != (pd->grad != NULL))
		{
			snprintf(what, sizeof(what), "%s: gradient of %s %s on the device only", label, pc->name,
					 pc->grad != NULL ? "missing" : "present");
			check(0, what);
		}
		else if (pc->grad != NULL &&
				 (e = bf16 ? rel_err_norm(pd->grad, pc->grad, pc->numel, 1e-3 * gmax) :
				  rel_err_floor(pd->grad, pc->grad, pc->numel, 1e-3 * gmax)) >= r.grad)
		{
			r.grad = e;
			r.grad_at = pc->name;
		}
		if ((e = rel_err(pd->data, pc->data, pc->numel)) >= r.param)
		{
			r.param = e;
			r.param_at = pc->name;
		}
	}
	snprintf(what, sizeof(what), "%s: loss %.6f vs CPU %.6f: rel err %.2e", label, ld, lc, r.loss);
	check(r.loss <= (bf16 ? TOL_BF16_LOSS : TOL), what);
	if (bf16)
	{
		/*
		 * bf16 rounds every convolution's operands (about 2e-3 each, see
		 * cuda_ops_check); through a deep backward pass and batch norm over
		 * a few values per channel single tensors drift further (printed),
		 * so the bound is on all gradients together: ||d - c|| / ||c||
		 */
		double		d2 = 0,
					c2 = 0;

		for (int i = 0; i < mc->n_params; i++)
			if (mc->params[i].grad != NULL && md->params[i].grad != NULL)
				for (size_t j = 0; j < mc->params[i].numel; j++)
				{
					double		dd = (double) md->params[i].grad[j] - mc->params[i].grad[j];

					d2 += dd * dd;
					c2 += (double) mc->params[i].grad[j] * mc->params[i].grad[j];
				}
		e_all = isnan(d2) ? INFINITY : sqrt(d2) / fmax(sqrt(c2), 1e-12);
		snprintf(what, sizeof(what), "%s: all gradients: ||d - c|| / ||c|| = %.2e (in (1e-6, %.0e]; "
				 "worst single tensor %.2e, %s)", label, e_all, tol, r.grad, r.grad_at);
		check(e_all <= tol && e_all > 1e-6, what);
	}
	else
	{
		snprintf(what, sizeof(what), "%s: every gradient: worst rel err %.2e (%s)", label, r.grad, r.grad_at);
		check(r.grad <= tol, what);
	}
	if (adamw && !bf16)
	{
		const char *at = "-";
		double		upd = update_from_device_grads(arch, frozen, smooth, b, lr, md, &at),
					rest = 0;
		const char *rest_at = "-";

		/* what the optimizer does not touch (running statistics) against the CPU's step */
		for (int i = 0; i < mc->n_params; i++)
		{
			double		e;

			if (mc->params[i].is_counter || mc->params[i].data == NULL || md->params[i].grad != NULL)
				continue;
			if ((e = rel_err(md->params[i].data, mc->params[i].data, mc->params[i].numel)) >= rest)
			{
				rest = e;
				rest_at = mc->params[i].name;
			}
		}
		snprintf(what, sizeof(what), "%s: every parameter after the update: the CPU's AdamW on the device's "
				 "gradients %.2e (%s), the rest %.2e (%s); against the CPU's step %.2e (%s), not judged",
				 label, upd, at, rest, rest_at, r.param, r.param_at);
		check(upd <= tol && rest <= tol, what);
	}
	else
	{
		snprintf(what, sizeof(what), "%s: every parameter after the update: worst rel err %.2e (%s)",
				 label, r.param, r.param_at);
		check(r.param <= tol, what);
	}

	if (lifecycle)
	{
		size_t		per = logits_per(mc, b->size);
		float	   *l1 = xmalloc(sizeof(float) * per * b->n),
				   *l2 = xmalloc(sizeof(float) * per * b->n);
		size_t		used;

		/* a second step on the device: the arena is reused, nothing new */
		if (step(md, od, b, lr, &ld, "second device step") && step(mc, oc, b, lr, &lc, "second CPU step"))
		{
			used = mt_cuda_mem_used();
			if (step(md, od, b, lr, &ld, "third device step") && step(mc, oc, b, lr, &lc, "third CPU step"))
			{
				snprintf(what, sizeof(what), "%s: a third step allocates nothing new (%zu MB in use)",
						 label, used >> 20);
				check(mt_cuda_mem_used() == used, what);
			}
		}
		/* inference on the device after training: synced and re-folded */
		mt_clearerr(&err);
		if (mt_model_forward(md, b->x, b->n, b->size, b->size, l1, NULL, &err) != MT_OK ||
			mt_model_forward(mc, b->x, b->n, b->size, b->size, l2, NULL, &err) != MT_OK)
			printf("FAIL: %s: inference after training: %s\n", label, err.msg), n_fail++;
		else
		{
			snprintf(what, sizeof(what), "%s: inference on the device after 3 steps vs CPU: rel err %.2e",
					 label, rel_err(l1, l2, per * b->n));
			check(rel_err(l1, l2, per * b->n) <= TOL, what);
		}
		/* back to the host: values come along, training goes on there */
		if (mt_model_to_device(md, NULL, &err) != MT_OK)
			printf("FAIL: %s: to_device(NULL): %s\n", label, err.msg), n_fail++;
		else if (step(md, od, b, lr, &ld, "host step after the device") &&
				 step(mc, oc, b, lr, &lc, "fourth CPU step"))
		{
			double		worst = 0;
			const char *at = "-";

			for (int i = 0; i < mc->n_params; i++)
				if (!mc->params[i].is_counter && mc->params[i].data != NULL &&
					rel_err(md->params[i].data, mc->params[i].data, mc->params[i].numel) >= worst)
				{
					worst = rel_err(md->params[i].data, mc->params[i].data, mc->params[i].numel);
					at = mc->params[i].name;
				}
			/* four steps compound fp32 differences: 1e-3 here */
			snprintf(what, sizeof(what),
					 "%s: back on the host (optimizer state too), a 4th step: worst rel err %.2e (%s) <= 1e-3",
					 label, worst, at);
			check(md->devtrain == NULL && worst <= 1e-3, what);
		}
		free(l1);
		free(l2);
	}

out:
	mt_optim_free(oc);
	mt_optim_free(od);
	mt_model_free(mc);
	mt_model_free(md);
}

/* Training images/s: the device at batch, the CPU at cpu_batch (AdamW, full). */
/* images/s of timed device steps (best of; the caller warmed up); NAN on failure */
static double
time_steps(mt_model *m, mt_optim *o, const batch *b, double seconds, const char *what)
{
	double		best = INFINITY,
				start = now();
	float		loss;

	for (int it = 0; it < 20 && (it < 3 || now() - start < seconds); it++)
	{
		double		s = now();

		if (!step(m, o, b, 1e-4f, &loss, what))
			return NAN;
		if (now() - s < best)
			best = now() - s;
	}
	return isfinite(best) ? b->n / best : NAN;
}

/* One step with the convolutions timed apart (mt_cuda_profile): where a step's time goes. */
static void
profile_step(mt_model *m, mt_optim *o, const batch *b, const char *arch, const char *prec)
{
	double		ms[3],
				t;
	float		loss;

	mt_cuda_profile(1, NULL);
	t = now();
	if (step(m, o, b, 1e-4f, &loss, "profiled device step"))
	{
		t = (now() - t) * 1e3;
		mt_cuda_profile(0, ms);
		printf("%s %s step, the device synchronised around each convolution: %.1f ms; convolutions "
			   "forward %.1f, backward data %.1f, backward weight %.1f; everything else %.1f\n",
			   arch, prec, t, ms[0], ms[1], ms[2], t - ms[0] - ms[1] - ms[2]);
	}
	mt_cuda_profile(0, NULL);
}

static void
bench(const char *arch, int size, int batch_n, int cpu_batch, double seconds,
	  double *dev_ips, double *dev_bf16_ips, double *cpu_ips)
{
	mt_err		err;
	mt_model   *m;
	mt_optim   *o;
	batch		b = make_batch(batch_n, size, is_unet(arch));
	batch		bc = b;
	float		loss;
	double		t0;

	*dev_ips = *dev_bf16_ips = *cpu_ips = NAN;
	bc.n = cpu_batch;
	mt_clearerr(&err);
	if ((m = random_model(arch, 5, &err)) == NULL || (o = make_optim(m, 1, &err)) == NULL)
	{
		printf("FAIL: %s bench setup: %s\n", arch, err.msg);
		n_fail++;
		mt_model_free(m);
		free_batch(&b);
		return;
	}
	/* the CPU: a warm-up step (first-touch allocations), then one timed */
	if (step(m, o, &bc, 1e-4f, &loss, "CPU bench step"))
	{
		t0 = now();
		if (step(m, o, &bc, 1e-4f, &loss, "CPU timed step"))
			*cpu_ips = cpu_batch / (now() - t0);
	}
	if (mt_model_to_device(m, &mt_cuda_backend, &err) != MT_OK)
	{
		printf("FAIL: %s bench to_device: %s\n", arch, err.msg);
		n_fail++;
	}
	else if (step(m, o, &b, 1e-4f, &loss, "device warm-up step"))
	{
		*dev_ips = time_steps(m, o, &b, seconds, "device timed step");
		printf("%s: device training memory %zu MB at batch %d\n", arch, mt_cuda_mem_used() >> 20, batch_n);
		profile_step(m, o, &b, arch, "fp32");
		/* bf16 GEMM operands: a warm-up step (workspace, cuBLAS heuristics), then timed */
		mt_set_precision(MT_PREC_BF16);
		if (step(m, o, &b, 1e-4f, &loss, "device bf16 warm-up step"))
		{
			*dev_bf16_ips = time_steps(m, o, &b, seconds, "device timed bf16 step");
			profile_step(m, o, &b, arch, "bf16");
		}
		mt_set_precision(MT_PREC_FP32);
		printf("%s: device training memory %zu MB at batch %d with bf16\n", arch,
			   mt_cuda_mem_used() >> 20, batch_n);
	}
	mt_optim_free(o);
	mt_model_free(m);
	free_batch(&b);
}

int
main(int argc, char **argv)
{
	const char *archs = "resnet18,resnet50,mobilenet_v2";
	/* 0 SGD full, 1 AdamW full, 2 SGD frozen, 3 AdamW frozen (smooth); 4 SGD full as built */
	const char *settings = "012345";
	int			size = 64,
				batch_n = 4,
				bench_size = 224,
				bench_batch = 64,
				cpu_batch = 4,
				do_bench = 1;
	double		seconds = 2.0;
	mt_err		err;
	char		list[512];
	struct
	{
		const char *arch;
		double		dev,
					dev_bf16,
					cpu;
	}			res[16];
	int			nres = 0;

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--no-bench") == 0)
			do_bench = 0;
		else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
			size = atoi(argv[++i]);
		else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
			batch_n = atoi(argv[++i]);
		else if (strcmp(argv[i], "--bench-size") == 0 && i + 1 < argc)
			bench_size = atoi(argv[++i]);
		else if (strcmp(argv[i], "--bench-batch") == 0 && i + 1 < argc)
			bench_batch = atoi(argv[++i]);
		else if (strcmp(argv[i], "--cpu-batch") == 0 && i + 1 < argc)
			cpu_batch = atoi(argv[++i]);
		else if (strcmp(argv[i], "--archs") == 0 && i + 1 < argc)
			archs = argv[++i];
		else if (strcmp(argv[i], "--settings") == 0 && i + 1 < argc)
			settings = argv[++i];
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = atof(argv[++i]);
		else
		{
			fprintf(stderr, "usage: cuda_train_check [--size S] [--batch B] [--bench-size S] "
					"[--bench-batch B] [--cpu-batch B] [--archs a,b,..] [--no-bench] [--seconds T]\n");
			return 2;
		}
	}
	if (size < 32 || size % 32 != 0 || batch_n < 2 || cpu_batch < 2 || bench_batch < 2)
	{
		fprintf(stderr, "cuda_train_check: sizes are multiples of 32; batches at least 2 (batch norm)\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (mt_blas_init("auto", &err) != MT_OK)
		printf("note: %s (the CPU reference uses the C GEMM)\n", err.msg);
	mt_clearerr(&err);
	if (mt_cuda_available(&err) != MT_OK)
	{
		if (strcmp(err.msg, "no CUDA device") == 0)
			printf("no CUDA device: %s\n", err.detail[0] ? err.detail : err.msg);
		else
			printf("no CUDA device: %s%s%s\n", err.msg, err.detail[0] ? ": " : "", err.detail);
		printf("cuda_train: 0 passed, 0 failed (skipped: no device)\n");
		return 0;
	}
	printf("device: %s\n", mt_cuda_device_name());

	snprintf(list, sizeof(list), "%s", archs);
	for (char *save = NULL, *a = strtok_r(list, ",", &save); a != NULL; a = strtok_r(NULL, ",", &save))
	{
		batch		b = make_batch(batch_n, size, is_unet(a));

		for (const char *c = settings; *c >= '0' && *c <= '5'; c++)
			if (*c == '5')
				compare_step(a, 0, 0, &b, 0, 1, 1);
			else if (*c == '4')
				compare_step(a, 0, 0, &b, 0, 0, 0);
			else
				compare_step(a, (*c - '0') & 1, (*c - '0') >> 1, &b, *c == '0' && a == list, 1, 0);
		repeat_step(a, &b);
		ema_check(a, &b);
		/* the first classifier's and every U-Net's batch as bytes (a U-Net's with its masks) */
		if (a == list || is_unet(a))
			u8_check(a, size, batch_n);
		free_batch(&b);
		if (do_bench && nres < 16)
		{
			res[nres].arch = a;
			bench(a, bench_size, bench_batch, cpu_batch, seconds, &res[nres].dev, &res[nres].dev_bf16,
				  &res[nres].cpu);
			nres++;
		}
	}
	mt_cuda_shutdown();
	check(mt_cuda_mem_used() == 0,
		  "all models and optimizers freed: no device memory left");
	if (do_bench)
	{
		printf("\n%-24s %20s %20s %20s\n", "model (training step)", "device images/s", "device images/s",
			   "CPU images/s");
		printf("%-24s %20s %20s %20s\n", "", "fp32", "bf16", "fp32");
		for (int i = 0; i < nres; i++)
		{
			char		g[40] = "-",
						gb[40] = "-",
						c[40] = "-";

			if (!isnan(res[i].dev))
				snprintf(g, sizeof(g), "%.1f (b%d)", res[i].dev, bench_batch);
			if (!isnan(res[i].dev_bf16))
				snprintf(gb, sizeof(gb), "%.1f (b%d)", res[i].dev_bf16, bench_batch);
			if (!isnan(res[i].cpu))
				snprintf(c, sizeof(c), "%.1f (b%d)", res[i].cpu, cpu_batch);
			printf("%-24s %20s %20s %20s\n", res[i].arch, g, gb, c);
		}
		printf("(%dx%d, AdamW, every layer training; a step is zero_grad + forward_train + loss "
			   "+ backward + update; bf16: the convolutions' GEMM operands, float32 master weights; "
			   "device: best of timed steps; CPU: one timed step, %d threads)\n",
			   bench_size, bench_size, mt_blas_threads());
	}
	printf("cuda_train: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail > 0;
}
