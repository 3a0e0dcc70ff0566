/*
 * train.h - the training half of the engine: which parameters train, a
 * forward pass that keeps what the backward pass needs, the backward pass,
 * losses, optimizers, parameter copies and initialisation.
 *
 * A training step:
 *
 *     mt_model_freeze(m, "backbone", &err);        once (or "none", "layer3")
 *     o = mt_optim_create(m, MT_OPTIM_ADAMW, ...);  once
 *     loop:
 *         mt_model_zero_grad(m);
 *         mt_model_forward_train(m, x, n, h, w, logits, NULL, &err);
 *         mt_loss_cross_entropy(logits, labels, n, c, NULL, 0, 0, &loss, dlogits, &err);
 *         mt_model_backward(m, dlogits, &err);
 *         mt_optim_step(o, m, lr, &err);
 *
 * Validation and prediction use mt_model_forward (inference, running
 * statistics, folded weights); it re-folds after every update because the
 * optimizer step (and a training forward that updated running statistics)
 * sets m->prepared = 0.
 *
 * Batch norm in training.  A BN layer whose weight is trainable uses the
 * batch statistics (biased variance for the normalisation, eps 1e-5) and
 * updates running_mean / running_var as PyTorch does (momentum 0.1,
 * running_var from the unbiased batch variance).  A frozen BN layer (weight
 * not trainable) runs in inference mode with its running statistics, which
 * it does not update: the usual fine-tuning practice (torch: those modules
 * in eval()).  Set m->bn_train_frozen = 1 for PyTorch's plain model.train()
 * instead: frozen BN layers then also use batch statistics and update their
 * running statistics (but their weight and bias still do not change).
 *
 * Every function returns MT_OK or an mt_err code with *err set; on any error
 * the saved training state is released.
 *
 * Training on a device.  Once mt_model_to_device(m, &mt_cuda_backend, ...)
 * has put the model on a device, the same calls run there (CNNs and
 * U-Nets; a transformer is refused with MT_ERR_UNSUPPORTED).  The first
 * mt_model_forward_train uploads a training copy: every float parameter
 * (convolution weights packed as the convolution entries read them) and
 * the gradients of the trainable ones, in one device block owned by the
 * model (m->devtrain).  A step's activations, saved statistics and
 * gradient buffers come from one device arena kept with it (sized by the
 * first step at a batch shape; later steps allocate nothing).  The
 * optimizer keeps its state in one device block of its own (made by its
 * first step on a device, for every float parameter so that freezing
 * differently later needs nothing new; freed by mt_optim_free; brought
 * back into host memory by a later step on the host).  Callers still pass
 * host memory: the input batch is uploaded, logits and features (when
 * asked for) are downloaded; mt_model_loss_backward runs the loss on the
 * device (labels or masks go up, a few sums come down), while
 * mt_model_backward takes dlogits from the host.  The frozen prefix of
 * the graph runs with the model's folded inference copy on the device.
 *
 * The host copy (m->params[i].data and .grad) is NOT updated by device
 * steps: mt_model_sync_to_host(m, &err) brings it up to date (call it
 * before reading weights, writing them to SQL or exporting);
 * mt_model_forward, mt_model_copy_params (from such a model), freezing,
 * set_param, the init functions and mt_model_to_device(m, NULL) do so
 * themselves first (the last three then drop the device copy, which the
 * next training pass makes again).  mt_model_release_device and
 * mt_model_free drop it without syncing.
 */
#ifndef MT_TRAIN_H
#define MT_TRAIN_H

#include "graph.h"

/* PyTorch's BatchNorm2d default momentum for the running statistics. */
#define MT_BN_MOMENTUM 0.1f

/*
 * Choose the trainable parameters.  upto NULL, "" or "none": everything
 * (every weight and bias; running statistics are never trainable).
 * "backbone": only the classifier head (the linear layer producing the
 * logits: resnet fc.*, mobilenet_v2 classifier.1.*, vit_b_16 heads.head.*);
 * for a model with a backbone_prefix (graph.h; a U-Net's "encoder.")
 * every tensor outside it (the U-Net's decoder and segmentation head).
 * Otherwise a stage name, a parameter-name prefix ending at a dot boundary
 * ("layer3", "features.13", "encoder.layers.encoder_layer_9", "conv_proj",
 * or a full tensor name): every parameter up to and including the last one
 * of that stage, in state_dict order (execution order; vit_b_16's
 * class_token comes first and encoder.pos_embedding right after conv_proj,
 * as in torchvision), is frozen and the rest trains.  Unknown stage, or a stage that leaves nothing to train:
 * MT_ERR_INVALID.  Frozen parameters lose their gradient buffers; the
 * saved training state is released.
 */
int			mt_model_freeze(mt_model *m, const char *upto, mt_err *err);
/* Number of trainable tensors; *n_values (if not NULL) their element count. */
int			mt_model_trainable_count(const mt_model *m, size_t *n_values);

/*
 * Forward pass in training mode over x (n x h x w x 3, NHWC), keeping what
 * mt_model_backward needs.  logits gets the logits node's output (n x
 * num_classes; n x h x w x c for a graph whose last node is spatial) and
 * features the pooled features (n x feature_dim); either may be NULL.
 * Train-mode BN layers update their running statistics here.  Nothing is
 * kept for layers that no trainable parameter feeds (a frozen backbone runs
 * as inference, with folded weights).  Replaces any state kept earlier.
 */
int			mt_model_forward_train(mt_model *m, const float *x, int n, int h, int w,
								   float *logits, float *features, mt_err *err);

/*
 * mt_model_forward_train on a batch made from bytes: n images of size x
 * size x 3 bytes (src, host memory) rendered as the backend's
 * augment_images entry does (ops.h), with params (n rows of
 * MT_AUG_PARAMS doubles from mt_augment_draw_params, io/augment.h) or
 * without (NULL: only normalised with mean and std), where the model
 * trains: on a device the bytes and rows are uploaded (a quarter of the
 * rendered floats) and the batch is rendered there; on the host into a
 * buffer of its own.  A device backend without the entry renders on the
 * host and uploads the floats.  A segmentation model's masks (masks: n
 * of size x size class bytes, 255 to ignore, or NULL) go the same way:
 * rendered under the same rows where the model trains (the backend's
 * augment_masks) and kept for mt_model_loss_backward, which then takes
 * them when its spec has no masks of its own; values other than 255 must
 * be below m->num_classes (MT_ERR_INVALID).
 */
int			mt_model_forward_train_u8(mt_model *m, const uint8_t *src, const double *params,
									  const uint8_t *masks, int n, int size, const float mean[3],
									  const float std[3], float *logits, float *features,
									  mt_err *err);

/*
 * Dropout on the head (torch.nn.Dropout before the classifier, as
 * torchvision's MobileNetV2 and EfficientNet have it): with m->head_dropout
 * = p > 0, mt_model_forward_train multiplies the input of the logits node
 * (a linear layer) by a fresh mask, each value 0 with probability p and
 * else 1 / (1 - p), and mt_model_backward passes the gradients through the
 * same mask; the features output stays as it was.  Inference never drops.
 * The masks come from m->dropout_rng (seed it with mt_rng_seed; every
 * training pass advances it), drawn on the host row by row, so a run
 * repeats on any backend.  p must be in [0, 1).
 */
void		mt_dropout_mask(mt_model *m, int n, int d, float *mask);

/*
 * Backward pass from dlogits, the gradient of the (mean) loss with respect
 * to the logits (same shape as forward_train's logits).  Adds the gradients
 * into each trainable parameter's grad (allocated, zeroed, on first use);
 * stops below the lowest trainable layer.  Releases the saved state, on
 * success or error.  MT_ERR_INVALID without a preceding forward_train.
 */
int			mt_model_backward(mt_model *m, const float *dlogits, mt_err *err);

/* Zero every gradient buffer (they stay allocated). */
void		mt_model_zero_grad(mt_model *m);

/* Drop the state kept by mt_model_forward_train (no-op if none). */
void		mt_model_train_release(mt_model *m);

/*
 * Free the host blocks a CPU training run keeps from one step to the next
 * (its peak step memory; a run calls this when it ends, mt_model_free too).
 */
void		mt_model_step_cache_release(mt_model *m);

/* Bytes held by the saved training state (activations and statistics). */
size_t		mt_model_train_memory(const mt_model *m);

/*
 * Cross-entropy loss over n rows of c logits with integer labels in
 * [0, c), PyTorch semantics, and optionally its gradient (dlogits, n x c,
 * may be NULL).  class_weights (c values, NULL = all 1) and
 * label_smoothing (eps in [0, 1]) as torch.nn.functional.cross_entropy
 * with reduction "mean":
 *
 *     q_ic = (1 - eps) [c == y_i] + eps / C
 *     loss = sum_i sum_c q_ic w_c (-log p_ic) / sum_i w_{y_i}
 *
 * With focal_gamma > 0 the softmax focal loss (Lin et al.) with the class
 * weight as alpha, averaged over the batch:
 *
 *     loss = (1/n) sum_i sum_c q_ic w_c (1 - p_ic)^gamma (-log p_ic)
 *
 * which without smoothing is the usual -alpha_y (1 - p_y)^gamma log p_y.
 * Note the normaliser: sum of the labels' weights for gamma == 0 (torch),
 * the batch size for gamma > 0; they agree when no weights are given.
 * Labels out of range, a negative gamma, smoothing outside [0, 1], or
 * weights of the batch's labels summing to 0: MT_ERR_INVALID.
 */
int			mt_loss_cross_entropy(const float *logits, const int *labels, int n, int c,
								  const float *class_weights, float focal_gamma,
								  float label_smoothing, float *loss_out,
								  float *dlogits, mt_err *err);

/*
 * Segmentation loss over n images of hw pixels: logits n x hw x c (NHWC,
 * a U-Net's output), masks n x hw class indices, 255 marking a pixel to
 * ignore (left out of both terms).  With the non-ignored pixels i of the
 * whole batch, p = softmax over c, g the one-hot mask, w = class_weights
 * (NULL = all 1), in PyTorch:
 *
 *     ce   = F.cross_entropy(z, y, weight=w, ignore_index=255)
 *          = sum_i w[y_i] (-log p[i, y_i]) / sum_i w[y_i]
 *     dice = 1 - mean over k = 1 .. c-1 of
 *            (2 sum_i p[i,k] g[i,k] + 1) / (sum_i p[i,k] + sum_i g[i,k] + 1)
 *     loss = ce_weight * ce + dice_weight * dice
 *
 * (soft Dice over the foreground classes, sums over every pixel of the
 * batch, smoothing 1; the class weights weigh only the cross-entropy).
 * dlogits (n x hw x c, may be NULL) gets the exact gradient of loss, 0 at
 * ignored pixels.  A batch whose every pixel is ignored has loss 0 and
 * gradient 0 (torch would give NaN).  c must be 2 .. 255; a mask value >=
 * c other than 255, negative or non-finite weights, or class weights of
 * the labelled pixels summing to 0 (with ce_weight > 0): MT_ERR_INVALID.
 */
int			mt_loss_segmentation(const float *logits, const uint8_t *masks, int n, int hw,
								 int c, const float *class_weights, float ce_weight,
								 float dice_weight, float *loss_out, float *dlogits,
								 mt_err *err);

/*
 * The loss of the last mt_model_forward_train(_u8) and the backward pass
 * from its gradient, in one call: what mt_loss_cross_entropy (seg 0) or
 * mt_loss_segmentation (seg 1) and then mt_model_backward do, but where
 * the model trains.  On the CPU that is those functions on the logits
 * kept from the forward pass (the same bits); on a device the loss and
 * its gradient are computed there (the backend's cross_entropy, or
 * seg_loss_sums and seg_loss_grad), so the logits need not come down nor
 * dlogits go up: the labels or masks go up, and n doubles (a classifier)
 * or MT_SEG_SUMS(c) doubles (a U-Net) come down.  The loss agrees with the
 * host's within rounding (the device's exp and log, and its order of
 * summation).  Inputs are host memory.  For a segmentation model it also
 * counts the labelled pixels (px_valid) and those whose largest logit is
 * the mask's class (px_correct), as the training's pixel accuracy needs.
 */
typedef struct mt_loss_spec
{
	int			seg;			/* 0: cross-entropy / focal; 1: segmentation */
	int			n;				/* images in the batch */
	const int  *labels;			/* classifier: n labels */
	const uint8_t *masks;		/* segmentation: n x h x w mask values, or NULL:
								 * those mt_model_forward_train_u8 rendered */
	const float *class_weights; /* c values, or NULL */
	float		focal_gamma,
				label_smoothing;	/* classifier */
	float		ce_weight,
				dice_weight;	/* segmentation */
	int64_t		px_valid,
				px_correct;		/* out (segmentation) */
} mt_loss_spec;

int			mt_model_loss_backward(mt_model *m, mt_loss_spec *spec, float *loss_out,
								   mt_err *err);

/* Optimizers with torch.optim's update rules. */
typedef enum mt_optim_kind
{
	MT_OPTIM_SGD = 0,			/* momentum, dampening 0, nesterov, L2 decay */
	MT_OPTIM_ADAM,				/* L2 decay added to the gradient */
	MT_OPTIM_ADAMW				/* decoupled weight decay */
} mt_optim_kind;

typedef struct mt_optim mt_optim;

/*
 * An optimizer for m's trainable parameters (state is created for each
 * trainable parameter, also for one made trainable later).  SGD reads
 * momentum and nesterov (which needs momentum > 0); Adam/AdamW read beta1,
 * beta2, eps.  All read weight_decay.  Bad values: MT_ERR_INVALID.
 */
mt_optim   *mt_optim_create(mt_model *m, mt_optim_kind kind, float momentum,
							float beta1, float beta2, float eps,
							float weight_decay, int nesterov, mt_err *err);
/*
 * One update with learning rate lr of every trainable parameter that has a
 * gradient buffer (one that never had a backward pass is skipped, as torch
 * skips grad None).  Sets m->prepared = 0.
 */
int			mt_optim_step(mt_optim *o, mt_model *m, float lr, mt_err *err);
/*
 * Parameter i (an index into m->params) updates at lr * scale from the next
 * step on, as a torch.optim param group with its own lr would (scale 1,
 * the default, is lr itself, bit for bit).  MT_ERR_INVALID for an index out
 * of range or a scale that is negative or not finite.
 */
int			mt_optim_set_lr_scale(mt_optim *o, int i, float scale, mt_err *err);
/* Steps taken (of the parameter updated most often). */
int64_t		mt_optim_steps(const mt_optim *o);
/* Bytes of optimizer state. */
size_t		mt_optim_memory(const mt_optim *o);
void		mt_optim_free(mt_optim *o);

/*
 * A moving average of the weights (exponential, bias-corrected as Adam's
 * moments are): after the t-th update, with decay b,
 *
 *     avg = d avg + (1 - d) w,   d = b (1 - b^(t-1)) / (1 - b^t)
 *
 * (d is 0 at t = 1, so the average starts at the first updated weights),
 * in float, elementwise.  which[i] (n_params flags) chooses the parameters
 * averaged.  The average lives where the model's training does: host
 * memory, or, once the model trains on a device (m->devtrain), device
 * memory beside it (placed by the first update; a model that changes side
 * afterwards gets MT_ERR_INVALID).  mt_ema_swap exchanges the model's
 * values of those parameters with the average (twice restores them); on a
 * device the host copy is then stale until mt_model_sync_to_host, which
 * mt_model_forward calls.  Errors: MT_ERR_NOMEM, a backend without the
 * entries (MT_ERR_UNSUPPORTED), device errors.
 */
typedef struct mt_ema mt_ema;

mt_ema	   *mt_ema_create(const mt_model *m, const unsigned char *which, mt_err *err);
int			mt_ema_update(mt_ema *e, mt_model *m, double decay, mt_err *err);
int			mt_ema_swap(mt_ema *e, mt_model *m, mt_err *err);
/* Updates so far. */
int64_t		mt_ema_steps(const mt_ema *e);
void		mt_ema_free(mt_ema *e);

/*
 * Copy every parameter's data (weights and running statistics) from src to
 * dst, which must have the same architecture (same tensor names and
 * shapes), e.g. for keeping the best epoch.  Gradients, trainable flags
 * and saved state are not copied; dst->prepared = 0.
 */
int			mt_model_copy_params(const mt_model *src, mt_model *dst, mt_err *err);

/*
 * Fresh classifier head for transfer learning, like torchvision: m's
 * head_init says how (nn.Linear's default U(-1/sqrt(in), 1/sqrt(in)) for
 * weight and bias, as in ResNet; normal(0, 0.01) and zero bias for
 * MobileNetV2).  Deterministic in seed (xoshiro256**, seeded through
 * splitmix64).  DenseNet: the default weight, zero bias; EfficientNet:
 * U(-1/sqrt(out), 1/sqrt(out)) weight, zero bias.  Marks the head loaded.
 */
int			mt_model_init_head(mt_model *m, uint64_t seed, mt_err *err);
/*
 * Every parameter from scratch, like torchvision's constructors:
 * convolutions kaiming_normal(mode="fan_out", relu) (std sqrt(2/fan_out);
 * fan_in where m->conv_init_fan_in, as DenseNet),
 * zero conv bias, BN weight 1 bias 0, running mean 0 var 1, layer norm
 * weight 1 bias 0, per-token linear layers as nn.Linear, other transformer
 * parameters 0, unless a node asks for another init (init_w / init_b: the
 * ViT's Xavier-uniform MLP and in_proj weights, normal(0, 0.02) position
 * embedding, ...), then the head as mt_model_init_head (zero for the ViT).
 * Same seed, same weights.
 */
int			mt_model_init_all(mt_model *m, uint64_t seed, mt_err *err);
/*
 * Only the parameters not loaded yet, each as mt_model_init_all(m, seed)
 * would set it (the random numbers of the loaded ones are drawn and
 * dropped), e.g. a U-Net's decoder and head after its encoder was copied
 * from a backbone.  Transposed convolutions, here as in init_all, get
 * torch's ConvTranspose2d default: weight and bias U(+-1/sqrt(cout kh kw));
 * a U-Net's segmentation head Xavier-uniform weight and zero bias (as
 * segmentation_models_pytorch), its other convolutions and BN layers as
 * init_all's.  Marks them loaded.
 */
int			mt_model_init_unloaded(mt_model *m, uint64_t seed, mt_err *err);

#endif
