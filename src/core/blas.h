/*
 * blas.h - single-precision GEMM through OpenBLAS, loaded lazily with
 * dlopen so medtl can choose OpenBLAS's kernel set (OPENBLAS_CORETYPE) from
 * the CPU's features before the library reads it, and a portable reference
 * GEMM to check it against.
 */
#ifndef MT_BLAS_H
#define MT_BLAS_H

#include "mt_common.h"

/*
 * Load OpenBLAS once per process.  core is "auto" (pick the kernel set from
 * CPUID), "env" (keep whatever OPENBLAS_CORETYPE the environment holds, or
 * OpenBLAS's own detection) or an OpenBLAS core name such as "SkylakeX".
 * Later calls return the first result.  Must be called on the main thread.
 */
int			mt_blas_init(const char *core, mt_err *err);
int			mt_blas_loaded(void);

/* Row-major C = alpha * op(A) * op(B) + beta * C. */
void		mt_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
					 const float *a, int lda, const float *b, int ldb,
					 float beta, float *c, int ldc);
/* y = W x, W row-major out x in (a linear layer on one input). */
void		mt_sgemv_rows(int out, int in, const float *w, const float *x, float *y);
/* The same through plain C loops (double accumulation); for tests. */
void		mt_sgemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
						 const float *a, int lda, const float *b, int ldb,
						 float beta, float *c, int ldc);

void		mt_blas_set_threads(int n);
int			mt_blas_threads(void);

/* Descriptions for runtime_info. */
const char *mt_blas_library(void);		/* path loaded */
const char *mt_blas_corename(void);		/* kernel set in use, from OpenBLAS */
const char *mt_blas_core_requested(void);	/* what medtl asked for and why */
const char *mt_blas_config(void);		/* openblas_get_config() */
const char *mt_cpu_features(void);		/* e.g. "avx2 fma avx512f ..." */
int			mt_cpu_count(void);

#endif
