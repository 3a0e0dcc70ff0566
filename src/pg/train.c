/*
 * train.c - fine-tuning in SQL: medtl._train_run() runs one phase of a
 * training run on the rows of a source, writes one medtl.epochs row per
 * epoch and, when the phase completes, the trained tensors back into
 * medtl.weights.  A cancel or error rolls everything back with the
 * statement: the model's rows change only when the phase completes.
 */
#include "medtl_pg.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "core/blas.h"
#include "core/metrics.h"
#include "core/onednn.h"
#include "core/rng.h"
#include "core/train.h"
#include "io/augment.h"
#include "nn/zoo.h"

/* Everything one phase needs, resolved from the arguments. */
/* validation rows from which keep_best defaults to val_auc */
#define MEDTL_MIN_VAL_FOR_BEST 200

typedef struct TrainArgs
{
	int64		run_id;
	char	   *model;
	char	   *source;
	char	   *image_col;
	char	   *label_col;
	char	   *group_col;
	char	   *val_source;
	int			phase;
	int			epochs;
	int			batch_size;
	double		lr;
	mt_optim_kind optimizer;
	double		weight_decay;
	double		momentum;
	char	   *schedule;		/* constant, step, cosine */
	int			warmup_epochs;
	int			step_size;
	double		gamma;
	char	   *freeze;
	mt_augment	aug;
	char	   *class_weights;	/* none, balanced */
	float	   *explicit_weights;
	int			n_explicit_weights;
	double		focal_gamma;
	double		label_smoothing;
	double		val_fraction;
	const char *keep_best;		/* val_auc, val_accuracy, val_loss, none; NULL: by n_val */
	int			patience;
	int64		seed;
	bool		skip_bad_rows;
	bool		bn_frozen;		/* batch norm keeps its statistics and affine */
	double		ema;			/* decay of the weights' moving average; 0: none */
	double		dropout;		/* on the classifier head's input; 0: none */
	double		head_lr_scale;	/* the head's rate is lr times this */
	/* segmentation: label_col is the mask column; loss weights */
	bool		seg;
	float		ce_weight,
				dice_weight;
} TrainArgs;

static char *
text_arg(FunctionCallInfo fcinfo, int i)
{
	return PG_ARGISNULL(i) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(i));
}

/* Indexes of a split: train and validation rows of the dataset. */
typedef struct Split
{
	int			n_train,
				n_val;
	int		   *train;
	int		   *val;
} Split;

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Fisher-Yates shuffle of n ints. */
static void
shuffle(int *v, int n, mt_rng *rng)
{
	for (int i = n - 1; i > 0; i--)
	{
		int			j = (int) mt_rng_below(rng, (uint64_t) i + 1);
		int			t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
}

/*
 * Stratified split: per class, a val_fraction share of the rows (or of the
 * groups, when a group column is given, so a group never straddles the split).
 */
static Split
split_dataset(const MedtlDataset *ds, int n_classes, double val_fraction, mt_rng *rng)
{
	Split		s = {0, 0, palloc(sizeof(int) * ds->n), palloc(sizeof(int) * ds->n)};
	bool	   *is_val = palloc0(sizeof(bool) * ds->n);

	if (val_fraction <= 0)
	{
		for (int i = 0; i < ds->n; i++)
			s.train[s.n_train++] = i;
		return s;
	}
	if (ds->groups == NULL)
	{
		int		   *idx = palloc(sizeof(int) * ds->n);

		for (int c = 0; c < n_classes; c++)
		{
			int			m = 0,
						take;

			for (int i = 0; i < ds->n; i++)
				if (ds->labels[i] == c)
					idx[m++] = i;
			shuffle(idx, m, rng);
			take = (int) floor(m * val_fraction + 0.5);
			if (take == m && m > 1)
				take = m - 1;
			for (int i = 0; i < take; i++)
				is_val[idx[i]] = true;
		}
	}
	else
	{
		/* distinct groups, each with its majority label; stratify groups by it */
		char	  **keys = palloc(sizeof(char *) * ds->n);
		int			ng = 0;
		int		   *gidx = palloc(sizeof(int) * ds->n);
		int		   *glabel;
		int		   *counts;
		bool	   *gval;

		for (int i = 0; i < ds->n; i++)
			keys[i] = ds->groups[i];
		qsort(keys, ds->n, sizeof(char *), cmp_str);
		for (int i = 0; i < ds->n; i++)
			if (i == 0 || strcmp(keys[i], keys[ng - 1]) != 0)
				keys[ng++] = keys[i];
		glabel = palloc0(sizeof(int) * ng);
		counts = palloc0(sizeof(int) * (size_t) ng * n_classes);
		gval = palloc0(sizeof(bool) * ng);
		for (int i = 0; i < ds->n; i++)
		{
			char	  **hit = bsearch(&ds->groups[i], keys, ng, sizeof(char *), cmp_str);

			gidx[i] = (int) (hit - keys);
			counts[(size_t) gidx[i] * n_classes + ds->labels[i]]++;
		}
		for (int g = 0; g < ng; g++)
			for (int c = 1; c < n_classes; c++)
				if (counts[(size_t) g * n_classes + c] > counts[(size_t) g * n_classes + glabel[g]])
					glabel[g] = c;
		for (int c = 0; c < n_classes; c++)
		{
			int		   *idx = palloc(sizeof(int) * ng);
			int			m = 0,
						take;

			for (int g = 0; g < ng; g++)
				if (glabel[g] == c)
					idx[m++] = g;
			shuffle(idx, m, rng);
			take = (int) floor(m * val_fraction + 0.5);
			if (take == m && m > 1)
				take = m - 1;
			for (int i = 0; i < take; i++)
				gval[idx[i]] = true;
		}
		for (int i = 0; i < ds->n; i++)
			is_val[i] = gval[gidx[i]];
	}
	for (int i = 0; i < ds->n; i++)
	{
		if (is_val[i])
			s.val[s.n_val++] = i;
		else
			s.train[s.n_train++] = i;
	}
	return s;
}

/* Learning rate at a fractional epoch position t in [0, epochs). */
static double
lr_at(const TrainArgs *a, double t)
{
	double		lr = a->lr;

	if (a->warmup_epochs > 0 && t < a->warmup_epochs)
		return lr * (t + 1.0 / 64) / a->warmup_epochs;
	if (strcmp(a->schedule, "step") == 0)
		return lr * pow(a->gamma, floor(t / Max(a->step_size, 1)));
	if (strcmp(a->schedule, "cosine") == 0)
	{
		double		span = Max(a->epochs - a->warmup_epochs, 1);
		double		u = (t - a->warmup_epochs) / span;

		return lr * 0.5 * (1.0 + cos(M_PI * Min(u, 1.0)));
	}
	return lr;
}

/* Run the engine or raise its error. */
static void
check(int rc, const mt_err *err, const char *what)
{
	if (rc != MT_OK)
		medtl_raise(err, what);
}

/*
 * Where a run's steps go: the device medtl.device chooses (an ERROR under
 * cuda without a usable one, as for inference), with the model moved there
 * (its training copy follows on the first step); NULL: the CPU.  A model
 * the device cannot run (its backend lacks a layer) stays on the CPU under
 * auto; under cuda that is an ERROR (0A000).  Device out of memory is 53200, over medtl.device_memory_mb 54000.
 */
static const mt_backend *
train_device(MedtlModel *mm, const TrainArgs *a)
{
	const mt_backend *dev = medtl_inference_device();
	MemoryContext old;
	mt_err		err;
	int			rc;

	if (dev == NULL)
		return NULL;
	old = MemoryContextSwitchTo(mm->cxt);
	rc = mt_model_to_device(mm->net, dev, &err);
	MemoryContextSwitchTo(old);
	if (rc == MT_ERR_UNSUPPORTED && medtl_device == MEDTL_DEVICE_AUTO)
	{
		ereport(NOTICE, (errmsg("training runs on the CPU: %s", err.msg)));
		return NULL;
	}
	check(rc, &err, "cannot train on the device");
	return dev;
}

/*
 * The optimizer and the weights' moving average of a run, freed with the
 * run's memory (their device state is not palloc'd).
 */
typedef struct OptimHolder
{
	mt_optim   *opt;
	mt_ema	   *ema;
} OptimHolder;

static void
free_optim_cb(void *arg)
{
	OptimHolder *h = (OptimHolder *) arg;

	mt_optim_free(h->opt);
	h->opt = NULL;
	mt_ema_free(h->ema);
	h->ema = NULL;
}

/* Validation: loss, accuracy and AUC of the model on the val rows. */
typedef struct ValResult
{
	double		loss,
				accuracy,		/* pixel accuracy for segmentation */
				auc,			/* NaN for segmentation */
				dice;			/* segmentation: mean Dice per image; NaN otherwise */
} ValResult;

/* AUC of class probabilities: binary -> of class 1; multi-class -> macro one-vs-rest. */
static double
auc_of(const float *probs, const int *labels, int n, int k)
{
	double	   *s = palloc(sizeof(double) * n);
	uint8	   *p = palloc(n);
	double		sum = 0;
	int			used = 0;

	for (int c = (k == 2 ? 1 : 0); c < k; c++)
	{
		double		a;

		for (int i = 0; i < n; i++)
		{
			s[i] = probs[(size_t) i * k + c];
			p[i] = labels[i] == c;
		}
		a = mt_auc(s, p, n);
		if (!isnan(a))
		{
			sum += a;
			used++;
		}
	}
	pfree(s);
	pfree(p);
	return used ? sum / used : NAN;
}

/* Loss (as trained, without smoothing), accuracy and AUC from logits. */
static ValResult
score_logits(float *logits, const int *labels, int n, int k, const float *cw)
{
	ValResult	r;
	mt_err		err;
	float		loss;

	check(mt_loss_cross_entropy(logits, labels, n, k, cw, 0.0f, 0.0f, &loss, NULL, &err),
		  &err, "validation loss");
	r.loss = loss;
	mt_cpu_backend.softmax(n, k, logits, logits);
	r.accuracy = (double) mt_count_correct(logits, labels, n, k) / n;
	r.auc = auc_of(logits, labels, n, k);
	r.dice = NAN;
	return r;
}

/*
 * Normalised batch input for rows idx[0..m) (augmented when aug is on), their
 * labels (y) and, for a dataset with masks, their masks (masks, m x size x
 * size; the same geometric augmentation as the image, nearest neighbour).
 */
static void
fill_batch(const MedtlDataset *ds, const int *idx, int m, const MedtlModel *mm,
		   const mt_augment *aug, mt_rng *rng, float *x, int *y, uint8 *masks)
{
	size_t		per = (size_t) ds->size * ds->size * 3;
	size_t		stored = medtl_dataset_image_bytes(ds);
	const uint8 **srcs = palloc(sizeof(uint8 *) * m);
	const uint8 **mask_srcs = ds->has_masks ? palloc(sizeof(uint8 *) * m) : NULL;
	uint8	   *staged = NULL;
	int			nstaged = 0;

	/*
	 * rows spilled to the temporary file come back through one buffer:
	 * copy those aside so the whole batch can be rendered at once
	 */
	for (int i = 0; i < m; i++)
		if (idx[i] >= ds->n_mem)
			nstaged++;
	if (nstaged > 0)
		staged = palloc(stored * nstaged);
	nstaged = 0;
	for (int i = 0; i < m; i++)
	{
		const uint8 *src = medtl_dataset_image(ds, idx[i]);

		if (idx[i] >= ds->n_mem)
		{
			memcpy(staged + stored * nstaged, src, stored);
			src = staged + stored * nstaged++;
		}
		srcs[i] = src;
		if (mask_srcs)
			mask_srcs[i] = src + per;
		y[i] = ds->labels[idx[i]];
	}
	/* the random draws in row order, the pixels on the engine's threads */
	mt_augment_batch(srcs, mask_srcs, m, ds->size, aug, rng, mm->mean, mm->std, x, masks);
	pfree(srcs);
	if (mask_srcs)
		pfree(mask_srcs);
	if (staged)
		pfree(staged);
}

/*
 * The stored bytes (size x size x 3) of rows idx, one after another into
 * dst, and their labels into y.
 */
static void
gather_bytes(const MedtlDataset *ds, const int *idx, int m, uint8 *dst, uint8 *mdst, int *y)
{
	size_t		per = (size_t) ds->size * ds->size * 3,
				px = (size_t) ds->size * ds->size;

	for (int i = 0; i < m; i++)
	{
		const uint8 *src = medtl_dataset_image(ds, idx[i]);

		memcpy(dst + per * i, src, per);
		/* a segmentation row stores its mask after the image */
		if (mdst != NULL)
			memcpy(mdst + px * i, src + per, px);
		y[i] = ds->labels[idx[i]];
	}
}

/* Features (or logits) of rows idx through the inference path, in batches. */
static void
forward_rows(MedtlModel *mm, const MedtlDataset *ds, const int *idx, int m, int batch,
			 float *logits, float *features)
{
	size_t		per = (size_t) ds->size * ds->size * 3;
	float	   *x = palloc(sizeof(float) * per * batch);
	int		   *y = palloc(sizeof(int) * batch);

	for (int s = 0; s < m; s += batch)
	{
		int			b = Min(batch, m - s);

		CHECK_FOR_INTERRUPTS();
		fill_batch(ds, idx + s, b, mm, NULL, NULL, x, y, NULL);
		medtl_forward(mm, x, b,
					  logits ? logits + (size_t) s * mm->net->num_classes : NULL,
					  features ? features + (size_t) s * mm->net->feature_dim : NULL);
	}
	pfree(x);
	pfree(y);
}

/*
 * Segmentation scores of a batch: pixel counts for accuracy and the per-image
 * Dice (mean over the foreground classes 1..k-1 of 2|P n T| / (|P| + |T|),
 * 1 when both are empty), from logits (m x hw x k) and masks (m x hw; 255
 * ignored).  Adds into *correct, *valid and *dice_sum.
 */
static void
seg_scores(const float *logits, const uint8 *masks, int m, size_t hw, int k,
		   int64 *correct, int64 *valid, double *dice_sum)
{
	int64	   *inter = palloc(sizeof(int64) * k);
	int64	   *psum = palloc(sizeof(int64) * k);
	int64	   *tsum = palloc(sizeof(int64) * k);

	for (int i = 0; i < m; i++)
	{
		double		d = 0;

		memset(inter, 0, sizeof(int64) * k);
		memset(psum, 0, sizeof(int64) * k);
		memset(tsum, 0, sizeof(int64) * k);
		for (size_t p = 0; p < hw; p++)
		{
			const float *v = logits + ((size_t) i * hw + p) * k;
			int			t = masks[(size_t) i * hw + p];
			int			best = 0;

			if (t >= k)
				continue;		/* 255: outside the (augmented) image */
			for (int c = 1; c < k; c++)
				if (v[c] > v[best])
					best = c;
			(*valid)++;
			*correct += best == t;
			psum[best]++;
			tsum[t]++;
			inter[t] += best == t;
		}
		for (int c = 1; c < k; c++)
			d += psum[c] + tsum[c] == 0 ? 1.0 : 2.0 * inter[c] / (double) (psum[c] + tsum[c]);
		*dice_sum += d / (k - 1);
	}
	pfree(inter);
	pfree(psum);
	pfree(tsum);
}

/* Validation of a segmentation model: loss as trained, pixel accuracy, mean Dice. */
static ValResult
validate_seg(MedtlModel *mm, const MedtlDataset *ds, const int *idx, int n, int batch,
			 const float *cw, const TrainArgs *a)
{
	ValResult	r = {0, 0, NAN, 0};
	size_t		hw = (size_t) ds->size * ds->size;
	int			k = mm->net->num_classes;
	float	   *x = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(float) * hw * 3 * batch);
	float	   *logits = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(float) * hw * k * batch);
	uint8	   *masks = MemoryContextAllocHuge(CurrentMemoryContext, hw * batch);
	int		   *y = palloc(sizeof(int) * batch);
	int64		correct = 0,
				valid = 0;
	double		loss_sum = 0,
				dice_sum = 0;
	mt_err		err;

	for (int s = 0; s < n; s += batch)
	{
		int			b = Min(batch, n - s);
		float		loss;

		CHECK_FOR_INTERRUPTS();
		fill_batch(ds, idx + s, b, mm, NULL, NULL, x, y, masks);
		medtl_forward(mm, x, b, logits, NULL);
		check(mt_loss_segmentation(logits, masks, b, (int) hw, k, cw, a->ce_weight,
								   a->dice_weight, &loss, NULL, &err),
			  &err, "validation loss");
		loss_sum += (double) loss * b;
		seg_scores(logits, masks, b, hw, k, &correct, &valid, &dice_sum);
	}
	r.loss = loss_sum / n;
	r.accuracy = valid ? (double) correct / valid : NAN;
	r.dice = dice_sum / n;
	pfree(x);
	pfree(logits);
	pfree(masks);
	pfree(y);
	return r;
}

/* The head's weight and bias parameters. */
static void
head_params(mt_model *m, mt_param **w, mt_param **b)
{
	const char *wname = mt_zoo_head_weight(m->arch);
	char		bname[MT_NAME_MAX];
	int			wi,
				bi;

	snprintf(bname, sizeof(bname), "%.*sbias", (int) (strlen(wname) - strlen("weight")), wname);
	wi = mt_model_find_param(m, wname);
	bi = mt_model_find_param(m, bname);
	if (wi < 0 || bi < 0)
		elog(ERROR, "model %s has no head parameters", m->arch);
	*w = &m->params[wi];
	*b = &m->params[bi];
}

/* Insert the epoch's row. */
static void
record_epoch(const TrainArgs *a, int epoch, double lr, double tl, double ta,
			 const ValResult *v, double seconds)
{
	Oid			types[11] = {INT8OID, INT4OID, INT4OID, FLOAT8OID, FLOAT8OID, FLOAT8OID,
	FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID};
	Datum		vals[11];
	char		nulls[11];

	memset(nulls, ' ', sizeof(nulls));
	vals[0] = Int64GetDatum(a->run_id);
	vals[1] = Int32GetDatum(a->phase);
	vals[2] = Int32GetDatum(epoch);
	vals[3] = Float8GetDatum(lr);
	vals[4] = Float8GetDatum(tl);
	vals[5] = Float8GetDatum(ta);
	vals[6] = Float8GetDatum(v ? v->loss : 0);
	vals[7] = Float8GetDatum(v ? v->accuracy : 0);
	vals[8] = Float8GetDatum(v ? v->auc : 0);
	vals[9] = Float8GetDatum(seconds);
	vals[10] = Float8GetDatum(v ? v->dice : 0);
	if (v == NULL)
		nulls[6] = nulls[7] = nulls[8] = nulls[10] = 'n';
	else
	{
		if (isnan(v->auc))
			nulls[8] = 'n';
		if (isnan(v->accuracy))
			nulls[7] = 'n';
		if (isnan(v->dice))
			nulls[10] = 'n';
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO medtl.epochs (run_id, phase, epoch, lr, train_loss, "
							  "train_accuracy, val_loss, val_accuracy, val_auc, seconds, val_dice) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
							  11, types, vals, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record epoch");
	SPI_finish();
}

/*
 * Keep every batch-norm layer of the backbone as it is: its weight and bias
 * stop training, so it normalises with its running statistics (an affine map
 * the gradient passes through) and never updates them.  Layers that are new
 * on top of the backbone (a U-Net's decoder, past m->backbone_prefix) have no
 * statistics worth keeping and train as usual, on batch statistics.
 */
static void
freeze_batch_norm(mt_model *m)
{
	for (int i = 0; i < m->n_nodes; i++)
	{
		mt_node    *nd = &m->nodes[i];
		const char *pre = m->backbone_prefix;

		if (nd->kind != MT_NODE_BN)
			continue;
		if (pre != NULL && strncmp(m->params[nd->p_bn_weight].name, pre, strlen(pre)) != 0)
			continue;
		m->params[nd->p_bn_weight].trainable = 0;
		m->params[nd->p_bn_bias].trainable = 0;
	}
}

/* Whether parameter i is the classifier head's weight or bias. */
static bool
is_head_param(mt_model *m, int i)
{
	mt_param   *w,
			   *b;

	head_params(m, &w, &b);
	return &m->params[i] == w || &m->params[i] == b;
}

/* Whether only the head trains (the backbone is frozen and stays in inference mode). */
static bool
only_head_trains(mt_model *m)
{
	if (m->bn_train_frozen)
		return false;
	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].trainable && !is_head_param(m, i))
			return false;
	return true;
}

/* Whether training may change parameter i: the head, or any tensor when more trains. */
static bool
may_change(mt_model *m, int i, bool head_only)
{
	if (m->params[i].is_counter || m->params[i].data == NULL)
		return false;
	return head_only ? is_head_param(m, i) : true;
}

/*
 * Exponential moving average of the weights (as timm's ModelEma and
 * torch.optim.swa_utils.AveragedModel keep one): after optimizer step t the
 * average is sum over s <= t of decay^(t-s) w_s, divided by the sum of the
 * factors, i.e. avg = d_t avg + (1 - d_t) w with d_t = decay (1 - decay^(t-1))
 * / (1 - decay^t) (Adam's bias correction: the weights before the first
 * step do not count, so a short run is not dragged back to its start).
 * Validation, keep_best and the weights a run leaves are the average's.
 * Only tensors that change are averaged: trainable ones, and the running
 * statistics when batch norm trains.
 */
static mt_ema *
ema_create(mt_model *m, bool head_only, bool bn_frozen)
{
	unsigned char *which = palloc0(m->n_params);
	mt_ema	   *e;
	mt_err		err;

	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];

		which[i] = may_change(m, i, head_only) && (p->trainable || (p->is_buffer && !bn_frozen));
	}
	if ((e = mt_ema_create(m, which, &err)) == NULL)
		medtl_raise(&err, "moving average");
	pfree(which);
	return e;
}

/* Exchange the model's weights and their average (the model is re-folded). */
static void
ema_swap(mt_model *m, mt_ema *e)
{
	mt_err		err;

	check(mt_ema_swap(e, m, &err), &err, "moving average");
}

/* Write every parameter that training may have changed back to medtl.weights. */
static void
write_weights(MedtlModel *mm, bool head_only)
{
	Oid			types[3] = {INT8OID, TEXTOID, BYTEAOID};
	SPIPlanPtr	plan = SPI_prepare("UPDATE medtl.weights SET data = $3 "
								   "WHERE model_id OPERATOR(pg_catalog.=) $1 "
								   "AND tensor OPERATOR(pg_catalog.=) $2", 3, types);
	mt_model   *m = mm->net;

	if (plan == NULL)
		elog(ERROR, "could not prepare weight update");
	for (int i = 0; i < m->n_params; i++)
	{
		mt_param   *p = &m->params[i];
		bytea	   *data;
		Datum		vals[3];

		if (!may_change(m, i, head_only))
			continue;
		data = palloc(VARHDRSZ + p->numel * sizeof(float));
		SET_VARSIZE(data, VARHDRSZ + p->numel * sizeof(float));
		memcpy(VARDATA(data), p->data, p->numel * sizeof(float));
		vals[0] = Int64GetDatum(mm->model_id);
		vals[1] = CStringGetTextDatum(p->name);
		vals[2] = PointerGetDatum(data);
		if (SPI_execute_plan(plan, vals, NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("could not write tensor \"%s\" of model \"%s\"", p->name, mm->name),
					 errhint("Only the model's owner may train it.")));
		pfree(data);
	}
}

/* Class weights: explicit, balanced (n / (k * count_c)) or none (NULL). */
static float *
class_weights(const TrainArgs *a, const MedtlDataset *ds, const Split *s, int k)
{
	float	   *w;

	if (a->explicit_weights != NULL)
	{
		if (a->n_explicit_weights != k)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("class_weight has %d values but the model has %d classes",
							a->n_explicit_weights, k)));
		return a->explicit_weights;
	}
	if (a->class_weights == NULL || strcmp(a->class_weights, "none") == 0)
		return NULL;
	w = palloc0(sizeof(float) * k);
	if (ds->has_masks)
	{
		/* balanced over pixels: total / (k * count_c) */
		size_t		hw = (size_t) ds->size * ds->size;
		double	   *cnt = palloc0(sizeof(double) * k);
		double		total = 0;

		for (int i = 0; i < s->n_train; i++)
		{
			const uint8 *mask = medtl_dataset_image(ds, s->train[i]) + hw * 3;

			for (size_t p = 0; p < hw; p++)
				if (mask[p] < k)
				{
					cnt[mask[p]] += 1;
					total += 1;
				}
		}
		for (int c = 0; c < k; c++)
			w[c] = cnt[c] > 0 ? (float) (total / (k * cnt[c])) : 0;
		pfree(cnt);
		return w;
	}
	for (int i = 0; i < s->n_train; i++)
		w[ds->labels[s->train[i]]] += 1;
	for (int c = 0; c < k; c++)
		w[c] = w[c] > 0 ? (float) s->n_train / (k * w[c]) : 0;
	return w;
}

/*
 * The augmentation options flip, rotation, brightness, contrast and
 * crop_scale as arguments first .. first + 4 (train and fine_tune): NULL,
 * NaN, infinities and values outside their ranges would make NaN pixels or
 * crops of no area.
 */
static void
check_augment_args(FunctionCallInfo fcinfo, int first)
{
	double		rotation,
				brightness,
				contrast,
				crop_scale;

	for (int i = first; i < first + 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("flip, rotation, brightness, contrast and crop_scale must not be NULL")));
	rotation = PG_GETARG_FLOAT8(first + 1);
	brightness = PG_GETARG_FLOAT8(first + 2);
	contrast = PG_GETARG_FLOAT8(first + 3);
	crop_scale = PG_GETARG_FLOAT8(first + 4);
	if (!(rotation >= 0 && rotation <= 180))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rotation must be between 0 and 180 degrees, not %g", rotation)));
	if (!(brightness >= 0 && brightness <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("brightness must be between 0 and 1 (each image is scaled by a factor drawn from 1 - brightness .. 1 + brightness), not %g",
						brightness)));
	if (!(contrast >= 0 && contrast <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("contrast must be between 0 and 1 (a factor drawn from 1 - contrast .. 1 + contrast), not %g",
						contrast)));
	if (!(crop_scale > 0 && crop_scale <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crop_scale must be above 0 and at most 1 (the smallest random crop's share of the image's area; 1: no crop), not %g",
						crop_scale)));
}

/*
 * medtl._check_augment(flip, rotation, brightness, contrast, crop_scale):
 * fine_tune checks its options before its phases.
 */
PG_FUNCTION_INFO_V1(medtl_check_augment);
Datum
medtl_check_augment(PG_FUNCTION_ARGS)
{
	check_augment_args(fcinfo, 0);
	PG_RETURN_VOID();
}

/*
 * medtl._train_run(run_id, model, source, ...) -> jsonb: one phase of a
 * training run.  Arguments are resolved by medtl.train(); see there.
 */
PG_FUNCTION_INFO_V1(medtl_train_run);
Datum
medtl_train_run(PG_FUNCTION_ARGS)
{
	TrainArgs	a;
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "medtl training",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	MedtlModel *mm;
	MedtlDataset *ds,
			   *vds = NULL;
	Split		sp;
	mt_rng		rng;
	mt_err		err;
	int			k;
	float	   *cw;
	bool		head_only;
	bool		features_once;
	mt_optim   *opt;
	StringInfoData summary;
	int			best_epoch = 0;
	double		best_metric = -INFINITY;
	float	  **best = NULL;
	mt_ema	   *ema = NULL;
	int			since_best = 0;
	instr_time	t_start,
				t_now;
	int			ran = 0;
	double		epoch_secs = 0;
	const mt_backend *dev;
	bool		used_device;
	OptimHolder *optim_holder;

	/* a library newer or older than the installed SQL objects must not read past the arguments */
	if (PG_NARGS() != 38)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("medtl._train_run was declared with %d arguments, the medtl library expects 38",
						PG_NARGS()),
				 errhint("The installed SQL objects do not match the medtl library; update the extension (ALTER EXTENSION medtl UPDATE, or drop and re-create it).")));
	/* the options a user gives train by name, named in the messages */
	check_augment_args(fcinfo, 19);
	for (int i = 0; i < PG_NARGS(); i++)
		if (PG_ARGISNULL(i) && i != 5 && i != 6 && i != 25 && i != 29 && i != 30 && i != 34)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("argument %d of medtl._train_run must not be NULL", i + 1)));
	memset(&a, 0, sizeof(a));
	a.run_id = PG_GETARG_INT64(0);
	a.model = text_arg(fcinfo, 1);
	a.source = text_arg(fcinfo, 2);
	a.image_col = text_arg(fcinfo, 3);
	a.label_col = text_arg(fcinfo, 4);
	a.group_col = text_arg(fcinfo, 5);
	a.val_source = text_arg(fcinfo, 6);
	a.phase = PG_GETARG_INT32(7);
	a.epochs = PG_GETARG_INT32(8);
	a.batch_size = PG_GETARG_INT32(9);
	a.lr = PG_GETARG_FLOAT8(10);
	{
		char	   *o = text_arg(fcinfo, 11);

		a.optimizer = strcmp(o, "sgd") == 0 ? MT_OPTIM_SGD :
			strcmp(o, "adam") == 0 ? MT_OPTIM_ADAM : MT_OPTIM_ADAMW;
	}
	a.weight_decay = PG_GETARG_FLOAT8(12);
	a.momentum = PG_GETARG_FLOAT8(13);
	a.schedule = text_arg(fcinfo, 14);
	a.warmup_epochs = PG_GETARG_INT32(15);
	a.step_size = PG_GETARG_INT32(16);
	a.gamma = PG_GETARG_FLOAT8(17);
	a.freeze = text_arg(fcinfo, 18);
	a.aug.hflip = PG_GETARG_BOOL(19);
	a.aug.rotate_deg = (float) PG_GETARG_FLOAT8(20);
	a.aug.brightness = (float) PG_GETARG_FLOAT8(21);
	a.aug.contrast = (float) PG_GETARG_FLOAT8(22);
	a.aug.crop_min_area = (float) PG_GETARG_FLOAT8(23);
	a.class_weights = text_arg(fcinfo, 24);
	if (!PG_ARGISNULL(25))
	{
		Datum	   *el;
		bool	   *nulls;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(25), FLOAT4OID, 4, true, TYPALIGN_INT,
						  &el, &nulls, &a.n_explicit_weights);
		a.explicit_weights = palloc(sizeof(float) * Max(a.n_explicit_weights, 1));
		for (int i = 0; i < a.n_explicit_weights; i++)
			a.explicit_weights[i] = nulls[i] ? 0 : DatumGetFloat4(el[i]);
	}
	a.focal_gamma = PG_GETARG_FLOAT8(26);
	a.label_smoothing = PG_GETARG_FLOAT8(27);
	a.val_fraction = PG_GETARG_FLOAT8(28);
	a.keep_best = text_arg(fcinfo, 29);
	a.patience = PG_ARGISNULL(30) ? 0 : PG_GETARG_INT32(30);
	a.seed = PG_GETARG_INT64(31);
	a.skip_bad_rows = PG_GETARG_BOOL(32);
	a.ema = PG_GETARG_FLOAT8(35);
	if (!(a.ema >= 0 && a.ema < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ema must be at least 0 and below 1 (0: no moving average of the weights)")));
	a.dropout = PG_GETARG_FLOAT8(36);
	if (!(a.dropout >= 0 && a.dropout < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dropout must be at least 0 and below 1")));
	a.head_lr_scale = PG_GETARG_FLOAT8(37);
	if (!(a.head_lr_scale > 0 && a.head_lr_scale <= 1000))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("head_lr_scale must be above 0 and at most 1000")));
	{
		char	   *bn = text_arg(fcinfo, 33);

		if (strcmp(bn, "frozen") != 0 && strcmp(bn, "train") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batch_norm must be frozen or train, not \"%s\"", bn)));
		a.bn_frozen = strcmp(bn, "frozen") == 0;
	}
	if (!PG_ARGISNULL(34))
	{
		/* segmentation loss: cross_entropy, dice, or cross_entropy+dice */
		char	   *l = text_arg(fcinfo, 34);

		a.ce_weight = strcmp(l, "cross_entropy") == 0 || strcmp(l, "cross_entropy+dice") == 0;
		a.dice_weight = strcmp(l, "dice") == 0 || strcmp(l, "cross_entropy+dice") == 0;
		if (a.ce_weight == 0 && a.dice_weight == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a segmentation loss is cross_entropy, dice or cross_entropy+dice, not \"%s\"", l)));
	}

	old = MemoryContextSwitchTo(cxt);
	medtl_engine_enter();
	mm = medtl_load_model_private(a.model, cxt);
	/* validation follows the training steps (train_device below) */
	mm->cpu_only = true;
	k = mm->net->num_classes;
	a.seg = strcmp(mm->task, "segmentation") == 0;
	if (a.seg != mt_zoo_is_segmentation(mm->arch))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\" has task %s but architecture %s", a.model, mm->task, mm->arch)));
	if (a.seg && a.ce_weight == 0 && a.dice_weight == 0)
		a.ce_weight = a.dice_weight = 1;
	if (a.seg && a.dropout > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dropout applies to a classifier's head; segmentation model \"%s\" has none", a.model)));
	if (a.seg && k < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("segmentation model \"%s\" needs at least two classes (e.g. background and the structure)", a.model)));
	if (mm->n_labels != k)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("model \"%s\" needs one label per class to train", a.model),
				 errhint("Set medtl.models.labels, or derive a model with medtl.create_model(name, backbone, labels).")));

	/* data: decoded and resized once */
	mt_rng_seed(&rng, (uint64_t) a.seed, 1);
	ds = medtl_read_dataset(a.source, a.image_col, a.label_col, a.group_col,
							mm->labels, k, mm->input_size, a.skip_bad_rows, a.seg);
	if (a.val_source != NULL)
	{
		vds = medtl_read_dataset(a.val_source, a.image_col, a.label_col, NULL,
								 mm->labels, k, mm->input_size, a.skip_bad_rows, a.seg);
		sp = split_dataset(ds, k, 0, &rng);
		sp.n_val = vds->n;
		sp.val = palloc(sizeof(int) * vds->n);
		for (int i = 0; i < vds->n; i++)
			sp.val[i] = i;
	}
	else
	{
		sp = split_dataset(ds, k, a.val_fraction, &rng);
		vds = ds;
	}
	if (sp.n_train == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("no training rows left after holding out validation rows")));
	cw = class_weights(&a, ds, &sp, k);

	/*
	 * keep_best not given: choose the best epoch by validation AUC only when
	 * the validation set is large enough for that choice to mean something;
	 * on a few dozen rows it mostly picks noise (BreastMNIST's 63 rows kept
	 * an early epoch: test AUC 0.850 against 0.889 for the last one)
	 */
	if (a.keep_best == NULL && a.seg)
		a.keep_best = sp.n_val > 0 ? "val_dice" : "none";
	else if (a.keep_best == NULL)
	{
		a.keep_best = sp.n_val >= MEDTL_MIN_VAL_FOR_BEST ? "val_auc" : "none";
		if (sp.n_val > 0 && sp.n_val < MEDTL_MIN_VAL_FOR_BEST)
			ereport(NOTICE,
					(errmsg("keeping the last epoch: %d validation rows are too few to choose the best (keep_best picks by val_auc from %d rows)",
							sp.n_val, MEDTL_MIN_VAL_FOR_BEST)));
	}

	check(mt_model_freeze(mm->net, a.freeze, &err), &err, "freeze");
	if (a.bn_frozen)
		freeze_batch_norm(mm->net);
	/*
	 * batch_norm 'train' is PyTorch's model.train(): every batch-norm layer,
	 * frozen ones included, normalises with batch statistics and updates its
	 * running statistics (so the backbone's features are not computed once)
	 */
	mm->net->bn_train_frozen = !a.bn_frozen;
	/* head dropout: its masks on a stream of their own, so they move nothing else */
	mm->net->head_dropout = (float) a.dropout;
	mt_rng_seed(&mm->net->dropout_rng, (uint64_t) a.seed, 2);
	head_only = !a.seg && only_head_trains(mm->net);
	features_once = head_only && !mt_augment_enabled(&a.aug);
	dev = train_device(mm, &a);
	used_device = dev != NULL;
	mm->cpu_only = dev == NULL;
	opt = mt_optim_create(mm->net, a.optimizer, (float) a.momentum, 0.9f, 0.999f, 1e-8f,
						  (float) a.weight_decay, 0, &err);
	if (opt == NULL)
		medtl_raise(&err, "optimizer");
	/* the classifier head at lr * head_lr_scale (a param group of its own) */
	if (a.head_lr_scale != 1.0)
	{
		mt_param   *hw,
				   *hb;

		head_params(mm->net, &hw, &hb);
		if (mt_optim_set_lr_scale(opt, (int) (hw - mm->net->params), (float) a.head_lr_scale, &err) != MT_OK ||
			mt_optim_set_lr_scale(opt, (int) (hb - mm->net->params), (float) a.head_lr_scale, &err) != MT_OK)
		{
			mt_optim_free(opt);
			medtl_raise(&err, "optimizer");
		}
	}
	{
		MemoryContextCallback *cb = palloc0(sizeof(MemoryContextCallback));

		optim_holder = palloc0(sizeof(OptimHolder));
		optim_holder->opt = opt;
		cb->func = free_optim_cb;
		cb->arg = optim_holder;
		MemoryContextRegisterResetCallback(cxt, cb);
	}

	{
		int			np = mm->net->n_params;

		best = palloc0(sizeof(float *) * np);
		for (int i = 0; i < np; i++)
			if (may_change(mm->net, i, head_only))
				best[i] = MemoryContextAllocHuge(cxt, sizeof(float) * mm->net->params[i].numel);
		if (a.ema > 0)
			ema = optim_holder->ema = ema_create(mm->net, head_only, a.bn_frozen);
	}

	ereport(NOTICE,
			(errmsg("training \"%s\" (phase %d): %d rows, %d for validation, %d epochs, %s%s",
					a.model, a.phase, sp.n_train, sp.n_val, a.epochs,
					features_once ? "backbone frozen: features computed once" :
					mt_augment_enabled(&a.aug) ? "with augmentation" : "no augmentation",
					dev == NULL ? "" : features_once ? ", features on the device" : ", on the device")));

	INSTR_TIME_SET_CURRENT(t_start);
	{
		int			fd = mm->net->feature_dim;
		int			bs = a.batch_size;
		/* outputs per image: k logits, or k per pixel for segmentation */
		size_t		npx = a.seg ? (size_t) mm->input_size * mm->input_size : 1;
		size_t		outs = npx * k;
		int64		px_correct = 0,
					px_valid = 0;
		mt_loss_spec spec = {0};
		float	   *tf = NULL,
				   *vf = NULL;
		int		   *order = palloc(sizeof(int) * sp.n_train);
		size_t		per = (size_t) mm->input_size * mm->input_size * 3;
		/* on a device the batches go as bytes (gather_bytes; a U-Net's with its masks), else as floats */
		bool		byte_batches = !features_once && dev != NULL;
		float	   *x = features_once || byte_batches ? NULL :
			MemoryContextAllocHuge(cxt, sizeof(float) * per * bs);
		uint8	   *u8 = byte_batches ? MemoryContextAllocHuge(cxt, per * bs) : NULL;
		uint8	   *u8m = byte_batches && a.seg ? MemoryContextAllocHuge(cxt, npx * bs) : NULL;
		/* a U-Net's rendered masks on the host (on a device they are rendered there) */
		uint8	   *masks = a.seg && !byte_batches ? MemoryContextAllocHuge(cxt, npx * bs) : NULL;
		int		   *y = palloc(sizeof(int) * bs);
		/* a classifier's logits (a U-Net's stay with the engine, which runs its loss) */
		float	   *logits = MemoryContextAllocHuge(cxt, sizeof(float) * (size_t) bs * (a.seg ? 1 : outs));
		/* the head's gradient when it trains on cached features */
		float	   *dlogits = features_once ? palloc(sizeof(float) * (size_t) bs * k) : NULL;
		float	   *vlogits = palloc(sizeof(float) * (size_t) Max(a.seg ? 1 : sp.n_val, 1) * k);
		int		   *vlabels = palloc(sizeof(int) * Max(sp.n_val, 1));
		mt_param   *hw,
				   *hb;
		int			steps_per_epoch = (sp.n_train + bs - 1) / bs;

		head_params(mm->net, &hw, &hb);
		for (int i = 0; i < sp.n_val; i++)
			vlabels[i] = vds->labels[sp.val[i]];
		if (features_once)
		{
			/* the frozen backbone runs once per image */
			if (hw->grad == NULL)
				hw->grad = palloc0(sizeof(float) * hw->numel);
			if (hb->grad == NULL)
				hb->grad = palloc0(sizeof(float) * hb->numel);
			tf = MemoryContextAllocHuge(cxt, sizeof(float) * (size_t) sp.n_train * fd);
			forward_rows(mm, ds, sp.train, sp.n_train, 32, NULL, tf);
			if (sp.n_val > 0)
			{
				vf = MemoryContextAllocHuge(cxt, sizeof(float) * (size_t) sp.n_val * fd);
				forward_rows(mm, vds, sp.val, sp.n_val, 32, NULL, vf);
			}
			/* the head trains on the host, on these features: the device is done */
			if (dev != NULL)
			{
				mt_model_release_device(mm->net);
				mm->cpu_only = true;
				dev = NULL;
			}
		}
		for (int i = 0; i < sp.n_train; i++)
			order[i] = i;

		for (int epoch = 1; epoch <= a.epochs; epoch++)
		{
			double		loss_sum = 0;
			int			correct = 0;
			double		lr = 0;
			ValResult	v;
			double		metric;
			double		train_acc;
			instr_time	t_epoch;
			double		secs;

			INSTR_TIME_SET_CURRENT(t_epoch);
			shuffle(order, sp.n_train, &rng);
			px_correct = px_valid = 0;
			for (int step = 0; step < steps_per_epoch; step++)
			{
				int			s0 = step * bs;
				int			m = Min(bs, sp.n_train - s0);
				float		loss;

				CHECK_FOR_INTERRUPTS();
				lr = lr_at(&a, epoch - 1 + (double) step / steps_per_epoch);
				mt_model_zero_grad(mm->net);
				if (features_once)
				{
					/* logits = f W^T + b on the cached features */
					float	   *f = palloc(sizeof(float) * (size_t) m * fd);

					for (int i = 0; i < m; i++)
					{
						memcpy(f + (size_t) i * fd, tf + (size_t) order[s0 + i] * fd, sizeof(float) * fd);
						y[i] = ds->labels[sp.train[order[s0 + i]]];
					}
					if (a.dropout > 0)
					{
						/* as mt_model_forward_train drops the head's input */
						float	   *mask = palloc(sizeof(float) * (size_t) m * fd);

						mt_dropout_mask(mm->net, m, fd, mask);
						for (size_t j = 0; j < (size_t) m * fd; j++)
							f[j] *= mask[j];
						pfree(mask);
					}
					mt_cpu_backend.linear(m, fd, k, f, hw->data, hb->data, logits);
					check(mt_loss_cross_entropy(logits, y, m, k, cw, (float) a.focal_gamma,
												(float) a.label_smoothing, &loss, dlogits, &err),
						  &err, "loss");
					/* dW = dlogits^T f, db = column sums of dlogits */
					mt_sgemm(1, 0, k, fd, m, 1.0f, dlogits, k, f, fd, 1.0f, hw->grad, fd);
					for (int i = 0; i < m; i++)
						for (int c = 0; c < k; c++)
							hb->grad[c] += dlogits[(size_t) i * k + c];
					pfree(f);
				}
				else
				{
					int		   *idx = palloc(sizeof(int) * m);

					for (int i = 0; i < m; i++)
						idx[i] = sp.train[order[s0 + i]];
					if (byte_batches)
					{
						/*
						 * on a device the batch goes up as bytes and is
						 * augmented and normalised there (the same draws,
						 * in the same order, as fill_batch's)
						 */
						double	   *params = NULL;

						gather_bytes(ds, idx, m, u8, u8m, y);
						if (mt_augment_enabled(&a.aug))
						{
							params = palloc(sizeof(double) * MT_AUG_PARAMS * m);
							mt_augment_draw_params(&a.aug, m, ds->size, &rng, params);
						}
						check(mt_model_forward_train_u8(mm->net, u8, params, u8m, m, ds->size, mm->mean,
														mm->std, a.seg ? NULL : logits, NULL, &err),
							  &err, "forward pass");
						if (params != NULL)
							pfree(params);
					}
					else
					{
						fill_batch(ds, idx, m, mm, &a.aug, &rng, x, y, masks);
						/* a U-Net's logits stay where it trains: the loss runs there */
						check(mt_model_forward_train(mm->net, x, m, ds->size, ds->size,
													 a.seg ? NULL : logits, NULL, &err),
							  &err, "forward pass");
					}
					/* the loss and its gradient where the model trains, then backward */
					spec.seg = a.seg;
					spec.n = m;
					spec.labels = y;
					spec.masks = byte_batches ? NULL : masks;	/* NULL: those rendered with the batch */
					spec.class_weights = cw;
					spec.focal_gamma = (float) a.focal_gamma;
					spec.label_smoothing = (float) a.label_smoothing;
					spec.ce_weight = a.ce_weight;
					spec.dice_weight = a.dice_weight;
					check(mt_model_loss_backward(mm->net, &spec, &loss, &err), &err, "loss and backward pass");
					pfree(idx);
				}
				check(mt_optim_step(opt, mm->net, (float) lr, &err), &err, "optimizer step");
				if (ema != NULL)
					check(mt_ema_update(ema, mm->net, a.ema, &err), &err, "moving average");
				loss_sum += (double) loss * m;
				if (a.seg)
				{
					px_correct += spec.px_correct;
					px_valid += spec.px_valid;
				}
				else
					correct += mt_count_correct(logits, y, m, k);
			}

			/* validation (of the weights' average, when there is one) */
			if (ema != NULL)
				ema_swap(mm->net, ema);
			if (sp.n_val > 0)
			{
				if (a.seg)
					v = validate_seg(mm, vds, sp.val, sp.n_val, bs, cw, &a);
				else
				{
					if (features_once)
						mt_cpu_backend.linear(sp.n_val, fd, k, vf, hw->data, hb->data, vlogits);
					else
						forward_rows(mm, vds, sp.val, sp.n_val, bs, vlogits, NULL);
					v = score_logits(vlogits, vlabels, sp.n_val, k, cw);
				}
			}
			INSTR_TIME_SET_CURRENT(t_now);
			secs = INSTR_TIME_GET_DOUBLE(t_now) - INSTR_TIME_GET_DOUBLE(t_epoch);
			/* pixel accuracy (of the pixels inside the augmented image) for segmentation */
			train_acc = !a.seg ? (double) correct / sp.n_train :
				px_valid > 0 ? (double) px_correct / px_valid : NAN;
			record_epoch(&a, epoch, lr, loss_sum / sp.n_train, train_acc,
						 sp.n_val > 0 ? &v : NULL, secs);
			ran = epoch;
			{
				double		left;

				epoch_secs += secs;
				left = epoch_secs / epoch * (a.epochs - epoch);

				if (sp.n_val > 0 && a.seg)
					ereport(NOTICE,
							(errmsg("epoch %d/%d%s: train loss %.4f pixel acc %.3f | val loss %.4f pixel acc %.3f dice %.3f | %.1f s, about %.0f s left",
									epoch, a.epochs, a.phase > 1 ? psprintf(" (phase %d)", a.phase) : "",
									loss_sum / sp.n_train, train_acc,
									v.loss, v.accuracy, v.dice, secs, left)));
				else if (sp.n_val > 0)
					ereport(NOTICE,
							(errmsg("epoch %d/%d%s: train loss %.4f acc %.3f | val loss %.4f acc %.3f auc %.3f | %.1f s, about %.0f s left",
									epoch, a.epochs, a.phase > 1 ? psprintf(" (phase %d)", a.phase) : "",
									loss_sum / sp.n_train, train_acc,
									v.loss, v.accuracy, v.auc, secs, left)));
				else
					ereport(NOTICE,
							(errmsg("epoch %d/%d%s: train loss %.4f %s %.3f | %.1f s, about %.0f s left",
									epoch, a.epochs, a.phase > 1 ? psprintf(" (phase %d)", a.phase) : "",
									loss_sum / sp.n_train, a.seg ? "pixel acc" : "acc", train_acc, secs, left)));
			}

			/* keep the best epoch by the chosen validation metric */
			if (sp.n_val > 0 && strcmp(a.keep_best, "none") != 0)
			{
				metric = strcmp(a.keep_best, "val_loss") == 0 ? -v.loss :
					strcmp(a.keep_best, "val_accuracy") == 0 ? v.accuracy :
					strcmp(a.keep_best, "val_dice") == 0 ? (isnan(v.dice) ? v.accuracy : v.dice) :
					(isnan(v.auc) ? v.accuracy : v.auc);
				if (metric > best_metric)
				{
					best_metric = metric;
					best_epoch = epoch;
					since_best = 0;
					if (dev != NULL)
						check(mt_model_sync_to_host(mm->net, &err), &err, "weights from the device");
					for (int i = 0; i < mm->net->n_params; i++)
						if (best[i] != NULL)
							memcpy(best[i], mm->net->params[i].data,
								   sizeof(float) * mm->net->params[i].numel);
				}
				else if (a.patience > 0 && ++since_best >= a.patience)
				{
					ereport(NOTICE,
							(errmsg("stopping early: no improvement of %s for %d epochs",
									a.keep_best, a.patience)));
					if (ema != NULL)
						ema_swap(mm->net, ema);
					break;
				}
			}
			if (ema != NULL)
				ema_swap(mm->net, ema);	/* training goes on from the weights themselves */
		}
	}
	if (ema != NULL && !(best_epoch > 0 && best_epoch != ran))
	{
		/* the run leaves the average (a best epoch restored below is one too) */
		ema_swap(mm->net, ema);
	}
	if (dev != NULL)
	{
		/* the weights come back to the host (written below); the device memory goes */
		check(mt_model_to_device(mm->net, NULL, &err), &err, "weights from the device");
		mm->cpu_only = true;
	}
	mt_ema_free(ema);
	optim_holder->ema = ema = NULL;
	if (best_epoch > 0 && best_epoch != ran)
	{
		for (int i = 0; i < mm->net->n_params; i++)
			if (best[i] != NULL)
				memcpy(mm->net->params[i].data, best[i], sizeof(float) * mm->net->params[i].numel);
		ereport(NOTICE, (errmsg("keeping the weights of epoch %d (best %s)", best_epoch, a.keep_best)));
	}
	mt_optim_free(opt);
	optim_holder->opt = NULL;
	mt_model_step_cache_release(mm->net);
	if (vds != NULL && vds != ds)
		medtl_dataset_free(vds);
	medtl_dataset_free(ds);

	/* the model's rows change only now, when the phase has completed */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	write_weights(mm, head_only);
	SPI_finish();

	INSTR_TIME_SET_CURRENT(t_now);
	MemoryContextSwitchTo(old);
	initStringInfo(&summary);
	appendStringInfo(&summary,
					 "{\"n_train\": %d, \"n_val\": %d, \"skipped_rows\": %d, \"epochs_run\": %d, "
					 "\"best_epoch\": %d, \"keep_best\": \"%s\", \"head_only_features\": %s, "
					 "\"precision\": \"%s\", \"device\": \"%s\", \"seconds\": %.3f}",
					 sp.n_train, sp.n_val, ds->n_bad + (vds != ds && vds ? vds->n_bad : 0),
					 ran, best_epoch, a.keep_best, features_once ? "true" : "false",
					 mt_get_precision() == MT_PREC_BF16 && (used_device || mt_onednn_enabled()) ?
					 "bf16" : "fp32", used_device ? "cuda" : "cpu",
					 INSTR_TIME_GET_DOUBLE(t_now) - INSTR_TIME_GET_DOUBLE(t_start));
	MemoryContextDelete(cxt);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(summary.data)));
}

/*
 * medtl._score_source(model, source, image_column, label_column,
 * skip_bad_rows) -> setof (label, truth, p): class probabilities of every
 * labelled row of a source, scored in batches; rows with bad images or
 * unknown labels are reported by row number (or skipped).  Used by evaluate.
 */
PG_FUNCTION_INFO_V1(medtl_score_source);
Datum
medtl_score_source(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *source = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *image_col = text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *label_col = text_to_cstring(PG_GETARG_TEXT_PP(3));
	bool		skip = PG_GETARG_BOOL(4);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "medtl scoring",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	MedtlModel *mm;
	MedtlDataset *ds;
	int			k;
	int		   *idx;
	float	   *probs;

	InitMaterializedSRF(fcinfo, 0);
	old = MemoryContextSwitchTo(cxt);
	medtl_engine_enter();
	mm = medtl_load_model_private(model, cxt);
	k = mm->net->num_classes;
	if (strcmp(mm->task, "classification") != 0 || mm->n_labels != k)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("model \"%s\" is not a classifier with one label per class", model)));
	ds = medtl_read_dataset(source, image_col, label_col, NULL, mm->labels, k,
							mm->input_size, skip, false);
	idx = palloc(sizeof(int) * ds->n);
	for (int i = 0; i < ds->n; i++)
		idx[i] = i;
	probs = MemoryContextAllocHuge(cxt, sizeof(float) * (size_t) ds->n * k);
	forward_rows(mm, ds, idx, ds->n, 16, probs, NULL);
	mt_cpu_backend.softmax(ds->n, k, probs, probs);
	medtl_dataset_free(ds);
	MemoryContextSwitchTo(old);
	for (int i = 0; i < ds->n; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};
		Datum	   *p = palloc(sizeof(Datum) * k);

		for (int c = 0; c < k; c++)
			p[c] = Float4GetDatum(probs[(size_t) i * k + c]);
		values[0] = CStringGetTextDatum(mm->labels[ds->labels[i]]);
		values[1] = Int32GetDatum(ds->labels[i] + 1);
		values[2] = PointerGetDatum(construct_array(p, k, FLOAT4OID, 4, true, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		pfree(p);
	}
	MemoryContextDelete(cxt);
	return (Datum) 0;
}
