/*
 * graph.h - a model as a list of layers (nodes) over named parameters.
 *
 * Parameters carry torchvision's state_dict names and shapes, so a checkpoint
 * loads 1:1.  Nodes are in execution order; each reads the outputs of earlier
 * nodes.  For inference mt_model_prepare() folds batch norm into the
 * preceding convolution and fuses activations, then mt_model_forward() runs
 * the nodes through a backend (ops.h).
 */
#ifndef MT_GRAPH_H
#define MT_GRAPH_H

#include "ops.h"
#include "rng.h"

#define MT_NAME_MAX 128
#define MT_MAX_DIMS 4

typedef enum mt_node_kind
{
	MT_NODE_INPUT = 0,
	MT_NODE_CONV,
	MT_NODE_BN,
	MT_NODE_ACT,
	MT_NODE_ADD,
	MT_NODE_MAXPOOL,
	MT_NODE_AVGPOOL,
	MT_NODE_GAP,				/* global average pool, N x C output */
	MT_NODE_LINEAR,
	/* transformer nodes (graph_vit.c); a token sequence is N x 1 x T x D */
	MT_NODE_TOKENS,				/* patches + class token + position embedding */
	MT_NODE_LAYERNORM,			/* over the channels of each position */
	MT_NODE_TOKEN_LINEAR,		/* a linear layer applied to every position */
	MT_NODE_ATTENTION,			/* multi-head self-attention on packed q|k|v */
	MT_NODE_GELU,				/* exact (erf) GELU */
	MT_NODE_CLASS_TOKEN,		/* the first token of each sequence */
	MT_NODE_CONCAT,				/* channels of in0 then of in1 (same h x w) */
	MT_NODE_SCALE,				/* in0 (h x w x c) times in1 (1 x 1 x c) per channel */
	/* U-Net decoder nodes (ops_cpu_unet.c) */
	MT_NODE_UPSAMPLE,			/* bilinear, align_corners=False, by scale_factor */
	MT_NODE_CONV_TRANSPOSE		/* ConvTranspose2d: weight [cin][cout][kh][kw] */
} mt_node_kind;

/*
 * How mt_model_init_all initialises a node's weight (p_weight) or bias
 * (p_bias); MT_INIT_DEFAULT is the kind's usual initialisation (train.h).
 */
typedef enum mt_init_kind
{
	MT_INIT_DEFAULT = 0,
	MT_INIT_ZERO,
	MT_INIT_NORMAL,				/* normal(0, std) */
	MT_INIT_XAVIER_UNIFORM,		/* U(+-sqrt(6 / (fan_in + fan_out))) */
	MT_INIT_LINEAR_UNIFORM		/* U(+-1/sqrt(fan_in)): nn.Linear's default */
} mt_init_kind;

typedef struct mt_param
{
	char		name[MT_NAME_MAX];
	int			ndim;
	int64_t		shape[MT_MAX_DIMS];
	size_t		numel;
	int			is_counter;		/* int64 num_batches_tracked: accepted, unused */
	int			is_buffer;		/* batch-norm running statistics: never trained */
	int			loaded;
	float	   *data;			/* numel floats once loaded */

	/* training (train.h) */
	int			trainable;		/* receives gradients and optimizer updates */
	float	   *grad;			/* numel floats, allocated by the first backward */
} mt_param;

typedef struct mt_node
{
	mt_node_kind kind;
	int			in0,
				in1;			/* input node indices, -1 if unused */
	mt_act		act;			/* activation applied by this node (as built) */

	/*
	 * convolution; a transposed convolution uses cin, cout (its own input
	 * and output channels), kh, kw, sh, sw, pad_h, pad_w (groups and
	 * dilation 1; TF "SAME" padding does not apply to it)
	 */
	int			cin,
				cout,
				kh,
				kw,
				sh,
				sw,
				dh,
				dw,
				groups,
				pad_h,
				pad_w;
	int			p_weight,
				p_bias;			/* conv / linear parameters, -1 if none */

	/* batch norm */
	int			p_bn_weight,
				p_bn_bias,
				p_bn_mean,
				p_bn_var;
	float		eps;

	/* pooling */
	int			pool_k,
				pool_s,
				pool_p;

	/* upsampling: integer factor of both sides */
	int			scale_factor;

	/* linear */
	int			in_features,
				out_features;

	/*
	 * transformer: attention heads; TOKENS: patch size and the side of the
	 * square position grid the weights hold (torchvision's image_size /
	 * patch_size), resized to the input's grid
	 */
	int			heads,
				patch,
				pos_grid;

	/* initialisation from scratch (mt_model_init_all) */
	mt_init_kind init_w,
				init_b;
	float		init_w_std,
				init_b_std;

	/* filled by mt_model_prepare */
	int			folded;			/* computed by its producer; aliases in0 */
	mt_act		run_act;		/* act, or the activation fused into it */
	float	   *packed;			/* conv: packed weights (BN folded); BN: scale */
	float	   *packed_bias;	/* conv: bias (BN folded); BN: shift */
	/*
	 * conv: the backend's kernels and re-laid-out weights for packed
	 * (ops.h conv2d_cached); freed with packed.  A cache, so it may be
	 * filled through a const node.
	 */
	struct mt_conv_cache *conv_cache;
} mt_node;

/* How mt_model_init_head initialises a linear classifier (train.h). */
typedef enum mt_head_init
{
	MT_HEAD_INIT_LINEAR = 0,	/* nn.Linear's default: U(+-1/sqrt(in)) */
	MT_HEAD_INIT_NORMAL,		/* normal(0, 0.01), zero bias (MobileNetV2) */
	MT_HEAD_INIT_ZERO,			/* zero weight and bias (VisionTransformer) */
	MT_HEAD_INIT_ZERO_BIAS,		/* nn.Linear's default weight, zero bias (DenseNet) */
	MT_HEAD_INIT_UNIFORM_OUT	/* U(+-1/sqrt(out)), zero bias (EfficientNet) */
} mt_head_init;

struct mt_train_state;
struct mt_devcopy;
struct mt_devtrain;

typedef struct mt_model
{
	char		arch[32];
	int			num_classes;
	int			padding_same;	/* TF "SAME" padding for every convolution */
	int			n_nodes,
				cap_nodes;
	mt_node    *nodes;
	int			n_params,
				cap_params;
	mt_param   *params;
	int			features_node;	/* pooled backbone features */
	int			logits_node;
	int			feature_dim;
	/*
	 * Tensor-name prefix of the pretrained part of a model whose head is
	 * not a single layer (a U-Net's "encoder."): mt_model_freeze(m,
	 * "backbone") freezes exactly those tensors.  NULL: the backbone is
	 * everything but the logits node.
	 */
	const char *backbone_prefix;
	int			prepared;
	const mt_backend *backend;

	/* training (train.h) */
	mt_head_init head_init;
	int			conv_init_fan_in;	/* init_all: kaiming normal over fan_in (DenseNet) */
	int			bn_train_frozen;	/* frozen BN layers use batch statistics too */
	/*
	 * Dropout on the classifier head's input in training (train.h): the
	 * probability of zeroing a feature (0: none), and the generator the
	 * masks come from.
	 */
	float		head_dropout;
	mt_rng		dropout_rng;
	struct mt_train_state *train;	/* kept by mt_model_forward_train */
	struct mt_step_cache *step_cache;	/* host blocks reused by training steps */
	/*
	 * Set by a host for a model that only scores: mt_model_prepare frees each
	 * convolution's raw weights once it has packed them (the packed copy, or
	 * the kernel cache made from it, is all inference reads).  Preparing
	 * anew (another kernel mode, a device, a shape oneDNN refuses) then
	 * fails with MT_ERR_RELOAD until the host sets those weights again
	 * (mt_model_set_param) and calls mt_model_raw_reloaded.  Never for a
	 * model that trains.
	 */
	int			release_raw;
	int			raw_released;	/* some raw weights are gone (release_raw) */
	struct mt_plan *plan;		/* inference memory plan (graph.c) */
	int			no_arena_keep;	/* release the arena after every pass (benchmarks) */
	int			micro_batch;	/* images per inference pass; 0: the default */
	struct mt_devcopy *dev;		/* inference on a device (mt_model_to_device) */
	struct mt_devtrain *devtrain;	/* training on that device (train.c) */
	/*
	 * Convolution weights held by kernel caches only (onednn.h): a node's
	 * packed copy is freed once its cache holds the weights in the
	 * kernel's layout, unless keep_packed; anything else that needs them
	 * (im2col + GEMM, a device upload, training) re-prepares first.
	 */
	int			packed_released;
	int			keep_packed;
} mt_model;

/* Building (used by the model zoo). */
mt_model   *mt_model_alloc(const char *arch, int max_nodes, int max_params, mt_err *err);
int			mt_model_add_param(mt_model *m, const char *name, int ndim,
							   const int64_t *shape, int is_counter);
int			mt_model_add_node(mt_model *m, const mt_node *proto);
mt_node		mt_node_init(mt_node_kind kind, int in0);

/* Loading. */
int			mt_model_find_param(const mt_model *m, const char *name);
/*
 * Copy one tensor's data into the parameter of that name.  is_int64 marks an
 * int64 tensor (only num_batches_tracked counters may be int64); float data
 * is little-endian float32.  Errors name the tensor.
 */
int			mt_model_set_param(mt_model *m, const char *name, int is_int64,
							   int ndim, const int64_t *shape,
							   const void *bytes, size_t nbytes, mt_err *err);
/* MT_ERR_SHAPE naming the missing tensors if any parameter was not loaded. */
int			mt_model_check_complete(const mt_model *m, mt_err *err);

/* Inference. */
int			mt_model_prepare(mt_model *m, mt_err *err);
/*
 * Host arenas of inference plans up to this many bytes stay with their
 * model between passes (default 512 MB); larger ones are released after
 * each pass.  medtl.arena_keep_mb sets it.
 */
void		mt_set_arena_keep(size_t bytes);

/*
 * x is n x h x w x 3 (NHWC, normalised).  logits (n x num_classes, or for
 * a spatial logits node such as a U-Net's n x oh x ow x num_classes, the
 * node's whole output) and features (n x feature_dim) may each be NULL.
 */
int			mt_model_forward(mt_model *m, const float *x, int n, int h, int w,
							 float *logits, float *features, mt_err *err);
void		mt_model_free(mt_model *m);
/* Drop the inference memory plan and its arena (re-made on the next pass). */
void		mt_model_release_plan(mt_model *m);
/*
 * Free what the model holds outside its allocator: kernel caches
 * (onednn.h) and the device copy.  For a host that frees the model's
 * memory wholesale (a PostgreSQL memory context reset) instead of calling
 * mt_model_free.
 */
void		mt_model_release_external(mt_model *m);
/* After the host set every released weight again: MT_OK, or what is missing. */
int			mt_model_raw_reloaded(mt_model *m, mt_err *err);
/*
 * The node right after node i if it is of kind k and the only reader of
 * i's output (not the features or logits either), else -1.
 */
int			mt_node_single_follower(const mt_model *m, int i, mt_node_kind k);
/*
 * Keep every prepared node's packed weights from now on (training reads
 * them); re-prepares on the next use if some were released.
 */
void		mt_model_keep_packed(mt_model *m);
/* Bytes of re-laid-out convolution weights the kernel caches hold. */
size_t		mt_model_cache_bytes(const mt_model *m);
/* Bytes of the host activation arena kept with the model (0 if none; a
 * device arena counts in mt_model_device_bytes). */
size_t		mt_model_plan_bytes(const mt_model *m);

/*
 * Inference on a device backend, one whose tensors live in its own memory
 * (mem_alloc set: mt_cuda_backend).  mt_model_to_device(m, be) prepares the
 * model and uploads its folded weights (packed convolutions with batch norm
 * folded in, batch-norm scale/shift, linear layers) once, into one device
 * block; from then on mt_model_forward runs every node through be: the
 * input is uploaded per pass, the activation arena is planned as on the
 * host and allocated once on the device (kept across passes, re-made when
 * the batch shape changes), and logits/features are downloaded.  Callers
 * still pass and receive host memory.  be NULL (or a host backend such as
 * mt_cpu_backend) releases the device copy: passes run on m->backend again.
 * Training (train.h) runs on the device too once the model is there: see
 * "Training on a device" in train.h; mt_model_forward first brings the
 * host copy up to date (mt_model_sync_to_host) when device training
 * changed the weights.
 *
 * Ownership: the device memory belongs to the model and is freed through
 * be->mem_free by mt_model_release_device (= mt_model_to_device(m, NULL)),
 * by mt_model_free, and, for the weight block only, when the host weights
 * change (set_param, training: the next prepare), after which the next pass
 * uploads them again; the model stays on the device.  The backend object
 * must outlive the model's device copy.
 *
 * Errors: MT_ERR_UNSUPPORTED (the backend has no device: its reason; a
 * transformer model, not on devices yet), MT_ERR_NOMEM (device out of
 * memory), MT_ERR_LIMIT (the backend's memory cap, mt_cuda_set_mem_limit).
 * On an error nothing is left allocated on the device and the model is
 * still usable on the host.  A failing device pass (mt_model_forward)
 * keeps the weights uploaded and frees the arena.
 */
int			mt_model_to_device(mt_model *m, const mt_backend *be, mt_err *err);
void		mt_model_release_device(mt_model *m);
/* The device backend passes run on, or NULL when they run on the host. */
const mt_backend *mt_model_device(const mt_model *m);
/* Bytes of device memory the model holds (weights and arena). */
size_t		mt_model_device_bytes(const mt_model *m);

/*
 * Device training's parameters (train.h): mt_model_sync_to_host copies
 * every parameter, running statistic and gradient that training on the
 * device changed back into the host copy (a no-op when nothing changed or
 * training runs on the host).  mt_model_train_device_drop syncs, then frees
 * the device training state (the next training pass on the device uploads
 * again); mt_model_train_device_free frees it without syncing (what the
 * device changed since the last sync is lost).
 */
int			mt_model_sync_to_host(mt_model *m, mt_err *err);
int			mt_model_train_device_drop(mt_model *m, mt_err *err);
void		mt_model_train_device_free(mt_model *m);

/* Bytes of float data held (parameters and packed copies). */
size_t		mt_model_memory(const mt_model *m);

/*
 * Engine-internal helpers shared by graph.c and train.c.
 */
typedef struct mt_shape3
{
	int			h,
				w,
				c;
} mt_shape3;

/*
 * Output shape of every node for an n x h x w x 3 input, and the largest
 * convolution scratch (floats) any node needs.  MT_ERR_SHAPE on mismatch.
 */
int			mt_model_shapes(const mt_model *m, int h, int w, mt_shape3 *shp,
							size_t *scratch_len, mt_err *err);
/*
 * The convolution a transposed-convolution node is the transpose of (ops.h:
 * cin and cout swapped), with its own symmetric padding.
 */
mt_conv_desc mt_node_tconv_desc(const mt_node *n, mt_act act);
/* A node's convolution with padding resolved for an h x w input. */
mt_conv_desc mt_node_conv_desc(const mt_model *m, const mt_node *n, int h, int w,
							   mt_act act);
mt_pool_desc mt_node_pool_desc(const mt_node *n);
/*
 * Run one prepared (folded) node for inference: a and b are its inputs
 * (b only for MT_NODE_ADD), y its output.
 */
int			mt_node_run_prepared(const mt_model *m, const mt_node *nd, int n,
								 mt_shape3 in, const float *a, const float *b,
								 float *y, float *scratch, mt_err *err);

/*
 * Run one node through be with the given weights (as prepared nodes take
 * them: a convolution's packed weights and bias, a BN node's scale and
 * shift, a linear layer's weight and bias), e.g. device copies.
 */
int			mt_node_run(const mt_model *m, const mt_backend *be, const mt_node *nd,
						const float *w, const float *bias, int n, mt_shape3 in,
						const float *a, const float *b, float *y, float *scratch,
						mt_err *err);
/*
 * The model's device copy (mt_model_to_device): upload the prepared
 * weights if they are not there (after a re-prepare), and node i's
 * weights in it.
 */
int			mt_model_device_upload(mt_model *m, mt_err *err);
void		mt_model_device_node_weights(const mt_model *m, int i, const float **w,
										 const float **bias);

/*
 * Transformer nodes (graph_vit.c), called from the generic code above for
 * the kinds MT_NODE_TOKENS .. MT_NODE_CLASS_TOKEN.
 */
int			mt_node_is_transformer(mt_node_kind kind);
/* Output shape of such a node for input shape in, model input h x w. */
int			mt_vit_node_shape(const mt_model *m, const mt_node *nd, mt_shape3 in,
							  int h, int w, mt_shape3 *out, mt_err *err);
/*
 * Forward of such a node through be, with wt / bs its p_weight / p_bias
 * where be computes (host memory, or their device copies); there is
 * nothing to fold.  scratch holds mt_vit_node_scratch(nd, in) floats where
 * be computes (a TOKENS node resizing its position embedding on a device).
 */
int			mt_vit_node_run(const mt_model *m, const mt_backend *be, const mt_node *nd,
							const float *wt, const float *bs, int n, mt_shape3 in,
							const float *a, float *y, float *scratch, mt_err *err);
/* Floats of scratch such a node needs for input shape in (0 for most). */
size_t		mt_vit_node_scratch(const mt_node *nd, mt_shape3 in);
/*
 * Backward of such a node through be: x is its input (kept when the node's
 * backward reads it, see mt_vit_node_reads_input), dy the gradient of its
 * output; adds into dx (may be NULL) and into dw / db, the gradients of
 * p_weight / p_bias (each may be NULL); wt and scratch as for the forward.
 */
int			mt_vit_node_backward(const mt_model *m, const mt_backend *be, const mt_node *nd,
								 const float *wt, int n, mt_shape3 in, const float *x,
								 const float *dy, float *dx, float *dw, float *db,
								 float *scratch, mt_err *err);
/* Whether the node's backward reads its input (given what trains). */
int			mt_vit_node_reads_input(const mt_node *nd, int weight_trains);

#endif
