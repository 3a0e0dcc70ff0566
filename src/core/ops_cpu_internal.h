/*
 * ops_cpu_internal.h - shared between the CPU backend's inference kernels
 * (ops_cpu.c) and its training kernels (ops_cpu_train.c).  Not an API.
 */
#ifndef MT_OPS_CPU_INTERNAL_H
#define MT_OPS_CPU_INTERNAL_H

#include "ops.h"

#include <math.h>

/* Whether the convolution is a plain GEMM on the input (1x1, stride 1, no pad). */
int			mt_cpu_conv_is_pointwise(const mt_conv_desc *d);
/* im2col for one image and one group, NHWC: rows (oy, ox), columns (ky, kx, ci). */
void		mt_cpu_im2col(const mt_conv_desc *d, int h, int w, int oh, int ow, int g,
						  const float *x, float *col);

/* Logistic sigmoid and SiLU in float, as torch computes them. */
static inline float
mt_cpu_sigmoid(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

static inline float
mt_cpu_silu(float x)
{
	return x / (1.0f + expf(-x));
}

/* Apply act to len values in place (any activation). */
void		mt_cpu_act_inplace(size_t len, mt_act act, float *y);

/* Kernels of ops_cpu_cnn.c (concatenation, channel scaling, activations). */
void		mt_cpu_concat(size_t rows, int ca, int cb, const float *a,
						  const float *b, float *y);
void		mt_cpu_scale_channels(int n, size_t hw, int c, const float *x,
								  const float *s, float *y);
void		mt_cpu_act_backward_input(size_t len, const float *x, const float *dy,
									  mt_act act, float *dx);
/* the same on the calling thread (ops_cpu_train.c runs it over the pool) */
void		mt_cpu_act_backward_input_serial(size_t len, const float *x, const float *dy,
											 mt_act act, float *dx);
void		mt_cpu_concat_backward(size_t rows, int ca, int cb, const float *dy,
								   float *da, float *db);
void		mt_cpu_scale_channels_backward(int n, size_t hw, int c, const float *x,
										   const float *s, const float *dy,
										   float *dx, float *ds);

/* U-Net decoder kernels (ops_cpu_unet.c), entries of mt_cpu_backend. */
void		mt_cpu_upsample_bilinear(int n, int h, int w, int c, int f,
									 const float *x, float *y);
void		mt_cpu_upsample_bilinear_backward(int n, int h, int w, int c, int f,
											  const float *dy, float *dx);
int			mt_cpu_conv_transpose2d(const mt_conv_desc *d, int n, int h, int w,
									const float *x, const float *packed_w,
									const float *bias, float *y, float *scratch,
									mt_err *err);
int			mt_cpu_conv_transpose2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
												  const float *dy, const float *packed_w,
												  float *dx, float *scratch, mt_err *err);

/* Training kernels (ops_cpu_train.c), entries of mt_cpu_backend. */
int			mt_cpu_conv2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
										const float *dy, const float *packed_w,
										float *dx, float *scratch, mt_err *err);
int			mt_cpu_conv2d_backward_weight(const mt_conv_desc *d, int n, int h, int w,
										  const float *x, const float *dy,
										  float *packed_dw, float *scratch, mt_err *err);
void		mt_cpu_bias_backward(size_t rows, int c, const float *dy, float *db);
void		mt_cpu_act_backward(size_t len, const float *y, const float *dy,
								mt_act act, float *dx);
void		mt_cpu_channel_stats(size_t rows, int c, const float *x, float *mean, float *var);
void		mt_cpu_batch_norm_backward(size_t rows, int c, const float *x,
									   const float *dy, const float *mean,
									   const float *invstd, const float *gamma,
									   float *dx, float *dgamma, float *dbeta);
void		mt_cpu_batch_norm_act_backward(size_t rows, int c, const float *x,
										   const float *y, mt_act act, const float *dy,
										   const float *mean, const float *invstd,
										   const float *gamma, float *dx, float *dgamma,
										   float *dbeta);
void		mt_cpu_max_pool2d_backward(const mt_pool_desc *p, int n, int h, int w, int c,
									   const float *x, const float *y, const float *dy, float *dx);
void		mt_cpu_avg_pool2d_backward(const mt_pool_desc *p, int n, int h, int w, int c,
									   const float *dy, float *dx);
void		mt_cpu_global_avg_pool_backward(int n, int h, int w, int c,
											const float *dy, float *dx);
void		mt_cpu_linear_backward(int n, int in, int out, const float *x,
								   const float *w, const float *dy, float *dx,
								   float *dw, float *db);
void		mt_cpu_accumulate(size_t len, const float *src, float *dst);
/* the losses' entries (ops_cpu_train.c), and one row of cross-entropy (2c doubles of scratch p) */
void		mt_cpu_ce_row(const float *z, int c, int label, const float *class_weights,
						  double gamma, double eps, double norm, double *p, double *total,
						  float *d);
int			mt_cpu_cross_entropy(int n, int c, const float *logits, const int *labels,
								 const float *cw, float gamma, float eps, double norm,
								 double *row_loss, float *dlogits, mt_err *err);
int			mt_cpu_seg_loss_sums(size_t pixels, int c, const float *logits,
								 const uint8_t *masks, const float *cw, double *sums,
								 mt_err *err);
int			mt_cpu_seg_loss_grad(size_t pixels, int c, const float *logits,
								 const uint8_t *masks, const float *cw, const double *coef,
								 float *dlogits, mt_err *err);
void		mt_cpu_ema_update(size_t len, float *avg, const float *p, float d, float e);
void		mt_cpu_swap(size_t len, float *a, float *b);
void		mt_cpu_sgd_update(size_t len, float *p, const float *g, float *buf,
							  float lr, float momentum, float weight_decay,
							  int nesterov, int first);
void		mt_cpu_adam_update(size_t len, float *p, const float *g, float *m1,
							   float *m2, float lr, float beta1, float beta2,
							   float eps, float weight_decay, int decoupled,
							   int64_t step);

/* Transformer kernels (ops_cpu_vit.c), entries of mt_cpu_backend. */
void		mt_cpu_layer_norm(size_t rows, int c, const float *x, const float *gamma,
							  const float *beta, float eps, float *y);
void		mt_cpu_layer_norm_backward(size_t rows, int c, const float *x,
									   const float *dy, const float *gamma, float eps,
									   float *dx, float *dgamma, float *dbeta);
void		mt_cpu_gelu(size_t len, const float *x, float *y);
void		mt_cpu_gelu_backward(size_t len, const float *x, const float *dy, float *dx);
int			mt_cpu_attention(int n, int t, int d, int heads, const float *qkv,
							 float *y, mt_err *err);
int			mt_cpu_attention_backward(int n, int t, int d, int heads,
									  const float *qkv, const float *dy,
									  float *dqkv, mt_err *err);
void		mt_cpu_vit_tokens(int n, int p, int d, const float *patches,
							  const float *cls, const float *pos, float *y);
int			mt_cpu_augment_images(int m, int size, const uint8_t *src, const double *params,
								  const float mean[3], const float std[3], float *dst,
								  mt_err *err);	/* io/augment.c */
void		mt_cpu_class_token(int n, int t, int d, const float *x, float *y);
int			mt_cpu_augment_masks(int m, int size, const uint8_t *src, const double *params,
								 uint8_t *dst, mt_err *err);
void		mt_cpu_class_token_backward(int n, int t, int d, const float *dy, float *dx);
void		mt_cpu_vit_tokens_backward(int n, int p, int d, const float *dy,
									   float *dpatches, float *dcls, float *dpos);

void		mt_cpu_bn_train_coeffs(int c, const float *g, const float *beta, float *rm,
								   float *rv, float eps, float mom, double unbias,
								   float *mean, float *var, float *scale, float *shift);

#endif
