/*
 * onednn.h - convolutions through oneDNN (Debian's libdnnl2, the library
 * PyTorch's CPU convolutions use), loaded lazily with dlopen.
 *
 * The engine's own convolution is im2col + OpenBLAS GEMM (ops_cpu.c).  On
 * batches of images oneDNN's direct convolutions (JIT kernels for the CPU's
 * vector ISA, weights in a blocked layout) are faster, so the CPU backend
 * hands every convolution it can to oneDNN when the library is present and
 * medtl.conv_kernels allows it, and falls back to im2col + GEMM otherwise
 * (library missing, a shape oneDNN refuses).  Activations stay NHWC; the
 * packed weights (ops.h) are described to oneDNN as they are (hwio /
 * ghwio / hwigo) and reordered to the layout the kernel wants.
 *
 * A convolution node of a prepared model keeps an mt_conv_cache: the
 * oneDNN primitive for each input shape it has seen and the weights
 * reordered once, so scoring a row neither re-creates kernels nor
 * re-reorders weights.  Training, whose weights change every step, runs
 * its convolutions (forward, input and weight gradients) through oneDNN
 * too, with kernels and reordered weights made per call.
 *
 * Threads: Debian's oneDNN runs on OpenMP (libgomp).  The thread count
 * follows mt_blas_set_threads.  Every call runs with all signals blocked on
 * the calling thread, so OpenMP's worker threads, created inside a call,
 * inherit a full signal mask and PostgreSQL's handlers only ever run on the
 * backend's own thread (as with medtl's pool, pool.h).
 */
#ifndef MT_ONEDNN_H
#define MT_ONEDNN_H

#include "ops.h"

typedef struct mt_conv_cache mt_conv_cache;

typedef enum mt_conv_kernels
{
	MT_CONV_AUTO = 0,			/* oneDNN when it loads, else im2col + GEMM:
								 * scoring on the direct kernels, training's
								 * passes of dense 3x3 stride-1 float32
								 * convolutions at batch >= 2 on oneDNN's
								 * Winograd F(4x4, 3x3) kernels where it has
								 * them, the rest on the direct ones */
	MT_CONV_GEMM,				/* always im2col + GEMM */
	MT_CONV_WINOGRAD,			/* as AUTO, and scoring's batches too */
	MT_CONV_DIRECT				/* oneDNN's direct kernels only (AUTO before
								 * the sixteenth session) */
} mt_conv_kernels;

/*
 * Until set, the mode is MT_CONV_GEMM when the environment holds
 * MEDTL_CONV_KERNELS=gemm (engine tools, A/B runs), MT_CONV_WINOGRAD for
 * MEDTL_CONV_KERNELS=winograd, MT_CONV_DIRECT for direct, else
 * MT_CONV_AUTO.
 */
void		mt_onednn_set_mode(mt_conv_kernels mode);
mt_conv_kernels mt_onednn_mode(void);

/*
 * The oneDNN convolutions at the engine's precision (mt_set_precision,
 * mt_common.h).  MT_PREC_BF16: scoring's convolutions convert their input
 * to bfloat16, keep their weights in bfloat16 and accumulate and write
 * float32; training's (from the parameters' own layout) do the same for
 * the forward pass, and read bfloat16 activations, output gradients and
 * weights for the input and weight gradients, which they write in float32
 * (mixed precision with float32 master weights).  A cache made in the other
 * precision starts again (MT_ERR_UNSUPPORTED when the packed weights were
 * released: the caller packs them again).
 */

/*
 * Whether convolutions go to oneDNN now (mode auto and the library loaded;
 * the first call tries to load it).
 */
int			mt_onednn_enabled(void);
/* "oneDNN 2.6.3 (libdnnl.so.2)", or why it is not used. */
const char *mt_onednn_info(void);

/*
 * y = act(conv(x, w) + bias) as ops.h's conv2d, for fixed weights whose
 * kernels and re-laid-out copy live in *cache (created on the first call;
 * a call with other packed_w starts it again).  packed_w may be NULL once
 * mt_conv_cache_holds_weights(*cache).  Returns MT_OK, MT_ERR_UNSUPPORTED
 * when oneDNN cannot take this convolution (no cache, no optimised kernel,
 * a shape that would need the released packed weights: the caller then
 * uses its own kernel; nothing was written), MT_ERR_NOMEM, or
 * MT_ERR_INTERNAL for a library failure.
 */
int			mt_onednn_conv2d(const mt_conv_desc *d, int n, int h, int w,
							 const float *x, const float *packed_w, const float *bias,
							 float *y, mt_conv_cache **cache, mt_err *err);

/*
 * Training's backward passes, as ops.h's conv2d_backward_data (dx +=) and
 * conv2d_backward_weight (packed_dw +=); d->act is ignored.  Same returns
 * as mt_onednn_conv2d.
 */
int			mt_onednn_conv2d_backward_data(const mt_conv_desc *d, int n, int h, int w,
										   const float *dy, const float *packed_w, float *dx,
										   mt_err *err);
int			mt_onednn_conv2d_backward_weight(const mt_conv_desc *d, int n, int h, int w,
											 const float *x, const float *dy, float *packed_dw,
											 mt_err *err);

/*
 * Training (train.c): the forward pass (y = act(conv(x, w) + bias)), the
 * input gradient (dx +=, or dx = when set) and the weight gradient (dw +=) with the weights
 * and their gradient in the parameter's own layout, PyTorch's [cout][cin /
 * groups][kh][kw], so nothing is packed; made per call (oneDNN's primitive
 * cache keeps the kernels between steps), weights reordered per call.  Same
 * returns as mt_onednn_conv2d.
 */
int			mt_onednn_train_forward(const mt_conv_desc *d, int n, int h, int w, const float *x,
									const float *w_oihw, const float *bias, float *y, mt_err *err);
int			mt_onednn_train_backward_data(const mt_conv_desc *d, int n, int h, int w,
										  const float *dy, const float *w_oihw, float *dx,
										  int set, mt_err *err);
int			mt_onednn_train_backward_weight(const mt_conv_desc *d, int n, int h, int w,
											const float *x, const float *dy, float *dw_oihw,
											mt_err *err);
/* Free the input-gradient buffer the backward-data entries keep between calls. */
void		mt_onednn_release_scratch(void);
/* Free a cache (NULL is fine). */
void		mt_conv_cache_free(mt_conv_cache *c);
/* Bytes of reordered weights a cache holds. */
size_t		mt_conv_cache_bytes(const mt_conv_cache *c);
/*
 * Whether every shape the cache runs reads the cache's own copy of the
 * weights, so the packed weights it was made from may be freed.
 */
int			mt_conv_cache_holds_weights(const mt_conv_cache *c);

/* Convolutions oneDNN has run in this process (for tests and diagnostics). */
unsigned long mt_onednn_conv_count(void);

/* Of those, the ones through a Winograd kernel (wino_shape, onednn.c). */
unsigned long mt_onednn_wino_count(void);

/* Called by mt_blas_set_threads. */
void		mt_onednn_set_threads(int n);

#endif
