/*
 * ops.h - tensor operations and the backend boundary.
 *
 * Activations are float32 NHWC: element (n, y, x, c) of an N x H x W x C
 * tensor is at ((n * H + y) * W + x) * C + c.  In this layout a 1x1
 * convolution is a plain GEMM and every other convolution is im2col + GEMM
 * with contiguous channel runs.
 *
 * Layers (src/core/graph.c) call operations only through an mt_backend, a
 * table of function pointers, so a CUDA backend or a different CPU kernel set
 * slots in without touching the layers.
 */
#ifndef MT_OPS_H
#define MT_OPS_H

#include "mt_common.h"

typedef enum mt_act
{
	MT_ACT_NONE = 0,
	MT_ACT_RELU,
	MT_ACT_RELU6,
	MT_ACT_SILU,				/* x * sigmoid(x) (torch.nn.SiLU) */
	MT_ACT_SIGMOID
} mt_act;

/*
 * Whether an activation's derivative needs its input (SiLU is not monotone,
 * so its output does not determine it): backward then goes through
 * act_backward_input.  The others are differentiated from their output.
 */
static inline int
mt_act_needs_input(mt_act a)
{
	return a == MT_ACT_SILU;
}

/* A convolution with its padding resolved for one input size. */
typedef struct mt_conv_desc
{
	int			cin,
				cout,
				kh,
				kw,
				sh,
				sw,
				dh,
				dw,
				groups;
	int			pad_t,
				pad_l,
				pad_b,
				pad_r;
	mt_act		act;			/* applied after the bias */
} mt_conv_desc;

/* A pooling window with its padding resolved. */
typedef struct mt_pool_desc
{
	int			kh,
				kw,
				sh,
				sw;
	int			pad_t,
				pad_l,
				pad_b,
				pad_r;
	int			count_include_pad;	/* for average pooling, as torch's default */
} mt_pool_desc;

/* Output size of a window op: floor((in + pads - dil*(k-1) - 1) / s) + 1. */
int			mt_out_size(int in, int k, int s, int d, int pad_before, int pad_after);

/*
 * Padding.  Symmetric: pad on each side as given.  TF "SAME": out =
 * ceil(in / s), total padding split with the smaller half before (so a
 * stride-2 3x3 convolution on an even size pads 0 top/left, 1 bottom/right).
 */
void		mt_same_padding(int in, int k, int s, int d, int *before, int *after);

/*
 * Packed convolution weights.  Dense/grouped: for each group a K x cout_g
 * row-major matrix, K = kh * kw * cin_g ordered (ky, kx, ci) to match im2col.
 * Depthwise (groups == cin == cout): kh x kw x C.
 */
int			mt_conv_is_depthwise(const mt_conv_desc *d);
size_t		mt_conv_packed_size(const mt_conv_desc *d);
/* Pack from PyTorch's OIHW [cout][cin_g][kh][kw]. */
void		mt_conv_pack_oihw(const mt_conv_desc *d, const float *oihw, float *packed);
/* Add packed-layout weights (e.g. a gradient) into PyTorch's OIHW layout. */
void		mt_conv_unpack_add_oihw(const mt_conv_desc *d, const float *packed, float *oihw);
/*
 * Floats of scratch conv2d needs for one input of h x w; the backward
 * entries need the same.
 */
size_t		mt_conv_scratch_size(const mt_conv_desc *d, int h, int w);
/*
 * Output size of a transposed convolution over an input of `in` (the
 * convolution it transposes has kernel k, stride s, padding before and
 * after): (in - 1) s - before - after + k; 0 when that is not positive.
 */
int			mt_conv_transpose_out_size(int in, int k, int s, int pad_before, int pad_after);

/*
 * The segmentation loss's sums over a batch (backend seg_loss_sums):
 * [0] sum of w_g (lse - z_g), [1] sum of w_g, [2] labelled pixels, [3]
 * labelled pixels whose largest logit (the first, in class order) is the
 * mask's class; then for each foreground class k = 1 .. c-1, at 4 + 3 (k -
 * 1): sum of p_k [g = k], sum of p_k, sum of [g = k].  Its gradient's
 * coefficients (seg_loss_grad): [0] ce_weight / sum w_g (0 when nothing is
 * labelled), [1] -dice_weight / (c - 1), then for k = 1 .. c-1 at 2 + 2 (k -
 * 1): Dice's denominator and numerator for class k.
 */
#define MT_SEG_SUMS(c)	(4 + 3 * ((size_t) (c) - 1))
#define MT_SEG_COEFS(c)	(2 + 2 * ((size_t) (c) - 1))

/*
 * The segmentation loss (loss_out) and its gradient's coefficients (coef)
 * from a batch's sums, on the host (ops_cpu_train.c); MT_ERR_INVALID when
 * the labelled pixels' class weights sum to 0 and ce_weight > 0.
 * train.h's mt_loss_segmentation is the CPU's sums, this, and the CPU's
 * gradient.
 */
int			mt_seg_loss_finish(const double *sums, int c, float ce_weight, float dice_weight,
							   float *loss_out, double *coef, mt_err *err);

/* A convolution node's kernel cache (onednn.h); owned by the node. */
struct mt_conv_cache;

typedef struct mt_backend
{
	const char *name;
	/* y = act(conv(x, w) + bias); bias may be NULL */
	int			(*conv2d) (const mt_conv_desc *d, int n, int h, int w,
						   const float *x, const float *packed_w, const float *bias,
						   float *y, float *scratch, mt_err *err);
	/*
	 * The same for weights that stay fixed while *cache lives (a prepared
	 * model's node): the backend may keep kernels and re-laid-out weights
	 * in *cache (freed with mt_conv_cache_free).  NULL: use conv2d.
	 */
	int			(*conv2d_cached) (const mt_conv_desc *d, int n, int h, int w,
								  const float *x, const float *packed_w, const float *bias,
								  float *y, float *scratch, struct mt_conv_cache **cache,
								  mt_err *err);
	void		(*max_pool2d) (const mt_pool_desc *p, int n, int h, int w, int c,
							   const float *x, float *y);
	void		(*avg_pool2d) (const mt_pool_desc *p, int n, int h, int w, int c,
							   const float *x, float *y);
	void		(*global_avg_pool) (int n, int h, int w, int c, const float *x, float *y);
	/* y[n x c] = x * scale[c] + shift[c], then act (inference batch norm) */
	void		(*channel_affine) (size_t rows, int c, const float *x,
								   const float *scale, const float *shift,
								   mt_act act, float *y);
	/* y = act(a + b) elementwise */
	void		(*add_act) (size_t len, const float *a, const float *b, mt_act act, float *y);
	void		(*act) (size_t len, const float *x, mt_act act, float *y);
	/* y[n x out] = x[n x in] * W^T + b, W is [out][in] as in PyTorch */
	void		(*linear) (int n, int in, int out, const float *x, const float *w,
						   const float *b, float *y);
	void		(*softmax) (int n, int c, const float *x, float *y);
	/*
	 * Channel concatenation (DenseNet): y[r] = a[r] (ca values) then b[r]
	 * (cb values) for each of rows positions.
	 */
	void		(*concat) (size_t rows, int ca, int cb, const float *a,
						   const float *b, float *y);
	/*
	 * Channel-wise scaling (squeeze-and-excitation): y[i, p, c] = x[i, p, c]
	 * * s[i, c] for n images of hw positions and c channels.
	 */
	void		(*scale_channels) (int n, size_t hw, int c, const float *x,
								   const float *s, float *y);

	/*
	 * Training (backward passes and optimizer updates).  Every backward
	 * entry ADDS into its gradient outputs, which the caller zeroes first;
	 * outputs documented "may be NULL" are then skipped.  Activations fused
	 * into a node are the caller's business (act_backward): the conv
	 * backward entries ignore d->act.
	 */
	/* dx (n x h x w x cin) += gradient of the convolution w.r.t. its input */
	int			(*conv2d_backward_data) (const mt_conv_desc *d, int n, int h, int w,
										 const float *dy, const float *packed_w,
										 float *dx, float *scratch, mt_err *err);
	/* packed_dw (layout of mt_conv_pack_oihw) += gradient w.r.t. the weights */
	int			(*conv2d_backward_weight) (const mt_conv_desc *d, int n, int h, int w,
										   const float *x, const float *dy,
										   float *packed_dw, float *scratch, mt_err *err);
	/* db[j] += sum over rows of dy[r][j] (bias gradient) */
	void		(*bias_backward) (size_t rows, int c, const float *dy, float *db);
	/*
	 * dx = dy * act'(x), from the activation's OUTPUT y (not for an
	 * activation where mt_act_needs_input); overwrites, dx may be dy
	 */
	void		(*act_backward) (size_t len, const float *y, const float *dy,
								 mt_act act, float *dx);
	/*
	 * dx = dy * act'(x), from the activation's INPUT x (every activation,
	 * needed for those where mt_act_needs_input); overwrites, dx may be dy
	 */
	void		(*act_backward_input) (size_t len, const float *x, const float *dy,
									   mt_act act, float *dx);
	/* da += the first ca channels of dy, db += the other cb (each may be NULL) */
	void		(*concat_backward) (size_t rows, int ca, int cb, const float *dy,
									float *da, float *db);
	/*
	 * Backward of scale_channels: dx += dy * s, ds[i, c] += sum over
	 * positions of dy * x (each may be NULL).
	 */
	void		(*scale_channels_backward) (int n, size_t hw, int c, const float *x,
											const float *s, const float *dy,
											float *dx, float *ds);
	/* per-channel mean and biased variance of x (rows x c) */
	void		(*channel_stats) (size_t rows, int c, const float *x,
								  float *mean, float *var);
	/*
	 * Batch norm with batch statistics: y = (x - mean) * invstd * gamma + beta.
	 * Adds dx, dgamma, dbeta (each may be NULL).
	 */
	void		(*batch_norm_backward) (size_t rows, int c, const float *x,
										const float *dy, const float *mean,
										const float *invstd, const float *gamma,
										float *dx, float *dgamma, float *dbeta);
	/*
	 * Optional (NULL: the caller runs act_backward, then the entries
	 * above).  Batch norm backward through the activation after it (ReLU,
	 * ReLU6 or none), from that activation's output y, in the same passes: g = dy * act'(y); with batch statistics
	 * (mean set) dgamma, dbeta and dx as batch_norm_backward from g; with
	 * running ones (mean NULL, invstd the channels' scale, gamma and
	 * dgamma unread) dbeta += sum g and dx = g * scale.  dx is
	 * OVERWRITTEN, not added to, and may be dy; dx, dgamma, dbeta may be
	 * NULL.
	 */
	void		(*batch_norm_act_backward) (size_t rows, int c, const float *x,
											const float *y, mt_act act, const float *dy,
											const float *mean, const float *invstd,
											const float *gamma, float *dx, float *dgamma,
											float *dbeta);
	/*
	 * Batch-norm coefficients in training (train.c), per channel of c.
	 * With batch statistics (mean, var from channel_stats): scale = gamma
	 * / sqrt(var + eps), shift = beta - mean * scale, the running
	 * statistics rm, rv move by momentum (rv toward var * unbias), and var
	 * is overwritten with 1 / sqrt(var + eps).  With mean NULL, from the
	 * running statistics: scale = gamma / sqrt(rv + eps), shift = beta -
	 * rm * scale (shift NULL: scale only; beta and rm are then unread).
	 * Computed in double as the CPU always did.
	 */
	void		(*bn_train_coeffs) (int c, const float *gamma, const float *beta,
									float *rm, float *rv, float eps, float momentum,
									double unbias, float *mean, float *var,
									float *scale, float *shift);
	/*
	 * dx += dy routed to each window's maximum (first in scan order), from x;
	 * y, the forward's output or NULL, spares a backend the search
	 */
	void		(*max_pool2d_backward) (const mt_pool_desc *p, int n, int h, int w, int c,
										const float *x, const float *y, const float *dy,
										float *dx);
	void		(*avg_pool2d_backward) (const mt_pool_desc *p, int n, int h, int w, int c,
										const float *dy, float *dx);
	void		(*global_avg_pool_backward) (int n, int h, int w, int c,
											 const float *dy, float *dx);
	/* dx += dy W, dw += dy^T x, db += sum dy (each may be NULL) */
	void		(*linear_backward) (int n, int in, int out, const float *x,
									const float *w, const float *dy, float *dx,
									float *dw, float *db);
	/* dst += src */
	void		(*accumulate) (size_t len, const float *src, float *dst);
	/*
	 * A moving average's step over len values, avg = d * avg + e * p (in
	 * float, d and e as given; train.h mt_ema), and the exchange of a and b.
	 */
	void		(*ema_update) (size_t len, float *avg, const float *p, float d, float e);
	void		(*swap) (size_t len, float *a, float *b);
	/*
	 * torch.optim.SGD on len values (dampening 0): weight decay added to the
	 * gradient; buf is the momentum buffer (NULL when momentum is 0), set
	 * from the gradient when first is true.
	 */
	void		(*sgd_update) (size_t len, float *p, const float *g, float *buf,
							   float lr, float momentum, float weight_decay,
							   int nesterov, int first);
	/*
	 * torch.optim.Adam (decoupled 0: decay added to the gradient) or AdamW
	 * (decoupled 1: p *= 1 - lr * decay first); step counts from 1.
	 */
	void		(*adam_update) (size_t len, float *p, const float *g, float *m1,
								float *m2, float lr, float beta1, float beta2,
								float eps, float weight_decay, int decoupled,
								int64_t step);

	/*
	 * Transformer (ViT) operations.  Rows are positions, c values each.
	 * Backward entries add into their outputs as above.
	 */
	/* y = (x - mean) / sqrt(var + eps) * gamma + beta per row (biased var) */
	void		(*layer_norm) (size_t rows, int c, const float *x, const float *gamma,
							   const float *beta, float eps, float *y);
	/* dx, dgamma, dbeta (each may be NULL) of layer_norm, from its input x */
	void		(*layer_norm_backward) (size_t rows, int c, const float *x,
										const float *dy, const float *gamma, float eps,
										float *dx, float *dgamma, float *dbeta);
	/* y = x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2)) */
	void		(*gelu) (size_t len, const float *x, float *y);
	/* dx += dy * gelu'(x), from the input x */
	void		(*gelu_backward) (size_t len, const float *x, const float *dy, float *dx);
	/*
	 * Multi-head self-attention over n sequences of t tokens: qkv is
	 * n x t x 3d, each token's queries, keys and values (d = heads x hd,
	 * head j at columns j*hd of each third), as nn.MultiheadAttention's
	 * packed in_proj produces them; y (n x t x d) = per head
	 * softmax(Q K^T / sqrt(hd)) V, heads side by side.
	 */
	int			(*attention) (int n, int t, int d, int heads, const float *qkv,
							  float *y, mt_err *err);
	/* dqkv += gradient of attention w.r.t. qkv (recomputes the softmax) */
	int			(*attention_backward) (int n, int t, int d, int heads,
									   const float *qkv, const float *dy,
									   float *dqkv, mt_err *err);
	/*
	 * Token sequence of a ViT: y (n x (1 + p) x d) row 0 = cls + pos[0],
	 * row 1 + i = patches[i] + pos[1 + i] (patches n x p x d; cls d values;
	 * pos (1 + p) x d).
	 */
	void		(*vit_tokens) (int n, int p, int d, const float *patches,
							   const float *cls, const float *pos, float *y);
	/* dpatches, dcls, dpos (each may be NULL) of vit_tokens */
	void		(*vit_tokens_backward) (int n, int p, int d, const float *dy,
										float *dpatches, float *dcls, float *dpos);
	/*
	 * The class token of each of n sequences of t tokens: y (n x d) = row 0
	 * of x (n x t x d); the backward adds dy into those rows of dx.
	 */
	void		(*class_token) (int n, int t, int d, const float *x, float *y);
	void		(*class_token_backward) (int n, int t, int d, const float *dy, float *dx);
	/*
	 * A training batch (io/augment.h): m images of size x size x 3 bytes
	 * (src) into dst (m x size x size x 3 floats).  With params (m rows of
	 * MT_AUG_PARAMS doubles) each as mt_augment_render makes it (on a
	 * device the mean gray is summed in another order: equal within
	 * rounding), without (NULL) normalised as mt_normalize_u8 does.  mean
	 * and std are host arrays; src, params and dst are where the backend
	 * computes.
	 */
	int			(*augment_images) (int m, int size, const uint8_t *src, const double *params,
								   const float mean[3], const float std[3], float *dst,
								   mt_err *err);
	/*
	 * Their segmentation masks (m of size x size class bytes, src) under
	 * the same rows into dst, as mt_augment_render_mask maps them (nearest
	 * neighbour, 255 where the source lies outside; params NULL: a copy).
	 */
	int			(*augment_masks) (int m, int size, const uint8_t *src, const double *params,
								  uint8_t *dst, mt_err *err);
	/*
	 * The training losses (train.h), where the backend computes; every
	 * pointer but mt_err is backend memory.  cross_entropy: rows n of c
	 * logits, labels in [0, c) (checked by the caller), class weights cw
	 * (c values, or NULL for all 1), focal gamma, label smoothing eps and
	 * the normaliser norm as mt_loss_cross_entropy takes them; row_loss[i]
	 * gets row i's share of the loss (the loss is their sum), dlogits the
	 * gradient.  Each row in double, as mt_loss_cross_entropy does it.
	 */
	int			(*cross_entropy) (int n, int c, const float *logits, const int *labels,
								  const float *cw, float gamma, float eps, double norm,
								  double *row_loss, float *dlogits, mt_err *err);
	/*
	 * mt_loss_segmentation in two passes over pixels (n x hw) of c logits
	 * and their mask values (255: ignored; others < c, checked by the
	 * caller).  seg_loss_sums writes MT_SEG_SUMS(c) doubles to sums (the
	 * layout above), summed in an order of the backend's (the CPU's:
	 * pixel by pixel); seg_loss_grad writes dlogits from the coefficients
	 * mt_seg_loss_finish makes of them (coef, MT_SEG_COEFS(c) doubles).
	 */
	int			(*seg_loss_sums) (size_t pixels, int c, const float *logits,
								  const uint8_t *masks, const float *cw, double *sums,
								  mt_err *err);
	int			(*seg_loss_grad) (size_t pixels, int c, const float *logits,
								  const uint8_t *masks, const float *cw, const double *coef,
								  float *dlogits, mt_err *err);
	/*
	 * Row-major C[m x n] = alpha op(A) op(B) + beta C (op: transposed when
	 * the flag is set; lda, ldb, ldc the row strides), as mt_sgemm.
	 */
	void		(*gemm) (int ta, int tb, int m, int n, int k, float alpha, const float *a,
						 int lda, const float *b, int ldb, float beta, float *c, int ldc);

	/*
	 * U-Net decoder operations (ops_cpu_unet.c; a backend that leaves
	 * them NULL gets MT_ERR_UNSUPPORTED from the graph).
	 *
	 * Bilinear upsampling of n images of h x w x c by the integer factor f
	 * to (h f) x (w f), as torch's F.interpolate(scale_factor=f,
	 * mode="bilinear", align_corners=False): output row oy reads source
	 * row s = max(0, (oy + 0.5) / f - 0.5), rows floor(s) and the next one
	 * (clamped to the last) weighted 1 - frac(s) and frac(s); columns alike.
	 */
	void		(*upsample_bilinear) (int n, int h, int w, int c, int f,
									  const float *x, float *y);
	/* dx (n x h x w x c) += the adjoint of upsample_bilinear applied to dy */
	void		(*upsample_bilinear_backward) (int n, int h, int w, int c, int f,
											   const float *dy, float *dx);

	/*
	 * Transposed convolution (torch's ConvTranspose2d, groups 1, dilation
	 * 1, no output padding), described by d, the convolution it is the
	 * transpose of: that convolution maps y (oh x ow x d->cin) to x
	 * (h x w x d->cout), so here x (n x h x w x d->cout) becomes
	 * y (n x oh x ow x d->cin), oh = (h - 1) sh - pad_t - pad_b + kh.
	 * packed_w is ConvTranspose2d's weight [d->cout][d->cin][kh][kw] packed
	 * by mt_conv_pack_oihw(d, ...) (that layout read as OIHW is exactly d's
	 * weight); bias (d->cin values) may be NULL; d->act is applied last.
	 * scratch holds mt_conv_scratch_size(d, oh, ow) floats.  Its gradient
	 * with respect to the weights is conv2d_backward_weight(d, n, oh, ow,
	 * dy, x, ...), and with respect to x:
	 */
	int			(*conv_transpose2d) (const mt_conv_desc *d, int n, int h, int w,
									 const float *x, const float *packed_w,
									 const float *bias, float *y, float *scratch,
									 mt_err *err);
	/* dx (n x h x w x d->cout) += the convolution d applied to dy (n x oh x ow x d->cin) */
	int			(*conv_transpose2d_backward_data) (const mt_conv_desc *d, int n, int h, int w,
												   const float *dy, const float *packed_w,
												   float *dx, float *scratch, mt_err *err);

	/*
	 * Memory of a backend whose tensors do not live in host memory (CUDA).
	 * NULL in the CPU backend, whose tensors are plain host memory.  The
	 * entries above that return void may run asynchronously; synchronize
	 * waits for them and returns the first error any of them hit.
	 */
	int			(*mem_alloc) (void **ptr, size_t bytes, mt_err *err);
	void		(*mem_free) (void *ptr);
	int			(*mem_zero) (void *ptr, size_t bytes, mt_err *err);
	int			(*upload) (void *dst, const void *host_src, size_t bytes, mt_err *err);
	int			(*download) (void *host_dst, const void *src, size_t bytes, mt_err *err);
	int			(*synchronize) (mt_err *err);
} mt_backend;

extern const mt_backend mt_cpu_backend;

/*
 * Resize a grid of ih x iw positions of c channels (channels last) to
 * oh x ow as torch's interpolate(mode="bicubic", align_corners=True) does
 * (cubic convolution, A = -0.75, borders clamped); torchvision's
 * interpolate_embeddings resizes ViT position embeddings so.  The adjoint
 * adds the transposed map of dst_grad into src_grad (the resize is linear).
 */
void		mt_bicubic_resize_ac(int ih, int iw, int oh, int ow, int c,
								 const float *src, float *dst);
void		mt_bicubic_resize_ac_adjoint(int ih, int iw, int oh, int ow, int c,
										 const float *dst_grad, float *src_grad);

#endif
