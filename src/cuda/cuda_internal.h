/*
 * cuda_internal.h - shared by the CUDA sources (C++ / nvcc only).  Not an API.
 */
#ifndef MT_CUDA_INTERNAL_H
#define MT_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <cublas_v2.h>

#include "cuda/cuda.h"

extern "C"
{

/* Map a runtime status to *err (MT_OK for cudaSuccess). */
int			mt_cuda_status(cudaError_t e, const char *what, mt_err *err);
int			mt_cublas_status(cublasStatus_t s, const char *what, mt_err *err);

/* Keep the first error of asynchronous work for mt_cuda_synchronize. */
void		mt_cuda_note(cudaError_t e, const char *what);
void		mt_cuda_note_blas(cublasStatus_t s, const char *what);
void		mt_cuda_note_err(const mt_err *err);
/* Whether an error is pending (work after it is skipped). */
int			mt_cuda_failed(void);

/* The cuBLAS handle, created on first use; NULL with *err set on failure. */
cublasHandle_t mt_cuda_blas(mt_err *err);

/*
 * The backend's own device workspace (reductions), grown on demand and kept
 * until mt_cuda_shutdown; NULL with *err set on failure.
 */
void	   *mt_cuda_workspace(size_t bytes, mt_err *err);

}

#endif
