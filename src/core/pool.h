/*
 * pool.h - a small pool of worker threads for the engine's own kernels
 * (depthwise convolution, im2col, bias + activation, elementwise ops).
 * GEMM threads belong to OpenBLAS; mt_blas_set_threads() sets both.
 *
 * Workers start on first use with every signal blocked, so the host's signal
 * handlers (PostgreSQL's interrupts) only ever run on the calling thread.
 * Tasks must be pure computation: no allocation through the engine's hooks,
 * no error reporting, no calls back into the host.  A parallel_for from
 * inside a task runs serially.  If threads cannot be started the work runs
 * on the calling thread.
 */
#ifndef MT_POOL_H
#define MT_POOL_H

#include <stddef.h>

/* Process items [begin, end) of a job. */
typedef void (*mt_range_fn) (void *arg, size_t begin, size_t end);

/*
 * Run fn over [0, n) in contiguous parts, at most one per thread (the caller
 * runs the first), each at least min_part items long; returns when all are
 * done.
 */
void		mt_parallel_for(size_t n, size_t min_part, mt_range_fn fn, void *arg);

/*
 * Run jobs on OpenMP's threads instead of the pool's own: gomp_parallel is
 * libgomp's GOMP_parallel and thread_num/num_threads its omp_get_thread_num
 * and omp_get_num_threads (onednn.c passes them once it has loaded oneDNN,
 * whose convolutions run on those threads).  NULL goes back to the pool.
 */
void		mt_pool_use_openmp(void *gomp_parallel, int (*thread_num) (void), int (*num_threads) (void));

/* Threads to use, the caller included (1: everything on the caller). */
void		mt_pool_set_threads(int n);
int			mt_pool_threads(void);

#endif
