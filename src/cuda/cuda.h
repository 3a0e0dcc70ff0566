/*
 * cuda.h - the CUDA side of the engine, callable from C.  Includers need no
 * CUDA headers.  Built with `make WITH_CUDA=1` (the .cu files in src/cuda, defines
 * MEDTL_CUDA); otherwise src/cuda/cuda_stub.c provides the same functions,
 * each answering "medtl was built without CUDA".
 *
 * Nothing here aborts: every cudaError_t and cublasStatus_t is checked and
 * becomes an mt_err (device out of memory -> MT_ERR_NOMEM).  No function
 * touches the device until called, so a process that never calls one never
 * creates a CUDA context (PostgreSQL's postmaster must not).
 *
 * The backend entries in mt_cuda_backend that return void run asynchronously
 * on the default stream; a failure among them is kept (the first one) and
 * returned by the next mt_cuda_synchronize().
 */
#ifndef MT_CUDA_H
#define MT_CUDA_H

#ifdef __cplusplus
#include <stddef.h>
#include <stdint.h>
extern "C"
{
#endif

#include "core/ops.h"

/* 1 if this build has the CUDA backend compiled in. */
int			mt_cuda_built(void);

/*
 * MT_OK when a usable device is present; otherwise MT_ERR_UNSUPPORTED with
 * "medtl was built without CUDA" or "no CUDA device" (detail: the runtime's
 * reason).  Never aborts; the answer is computed once per process.
 */
int			mt_cuda_available(mt_err *err);

/* Description of device 0 ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"). */
const char *mt_cuda_device_name(void);

/*
 * Per-process cap on device memory allocated through mt_cuda_alloc
 * (0: no cap beyond the device).  An allocation over it fails with
 * MT_ERR_LIMIT.
 */
void		mt_cuda_set_mem_limit(size_t bytes);
size_t		mt_cuda_mem_limit(void);
size_t		mt_cuda_mem_used(void);

/* Device memory.  *ptr is NULL on failure.  Freeing NULL does nothing. */
int			mt_cuda_alloc(void **ptr, size_t bytes, mt_err *err);
void		mt_cuda_free(void *ptr);
int			mt_cuda_zero(void *dptr, size_t bytes, mt_err *err);
int			mt_cuda_upload(void *dst, const void *host_src, size_t bytes, mt_err *err);
int			mt_cuda_download(void *host_dst, const void *src, size_t bytes, mt_err *err);
int			mt_cuda_copy(void *dst, const void *src, size_t bytes, mt_err *err);

/* Wait for queued work; return (and clear) the first error queued work hit. */
int			mt_cuda_synchronize(mt_err *err);

/*
 * Most bytes of device memory a convolution uses for the im2col columns of
 * several images at once (default 128 MiB, from the backend's workspace,
 * within the memory cap); 0 or too small: one image at a time in the
 * caller's scratch.
 */
void		mt_cuda_set_im2col_limit(size_t bytes);

/* Destroy the cuBLAS handle and free the backend's own workspace. */
void		mt_cuda_shutdown(void);

#ifdef MEDTL_CUDA
/* Every entry takes device pointers; scratch is mt_conv_scratch_size floats. */
extern const mt_backend mt_cuda_backend;

/*
 * Diagnostics for the check tools: with on = 1 the convolution entries
 * synchronise the device before and after and add up their milliseconds
 * (forward, backward data, backward weight); each call first copies the
 * sums so far into conv_ms[3] (if not NULL) and clears them.
 */
void		mt_cuda_profile(int on, double *conv_ms);
#endif

#ifdef __cplusplus
}
#endif

#endif
