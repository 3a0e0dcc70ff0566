/*
 * mt_common.h - error reporting and allocation shared by the engine (src/core,
 * src/nn, src/io).  Nothing here includes postgres.h: the engine returns
 * status codes with a message and never calls exit, abort or longjmp out of
 * its own functions.
 */
#ifndef MT_COMMON_H
#define MT_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Status codes.  The SQL layer maps each to a SQLSTATE. */
typedef enum mt_code
{
	MT_OK = 0,
	MT_ERR_NOMEM,			/* allocation failed */
	MT_ERR_INVALID,			/* bad argument from the caller */
	MT_ERR_CORRUPT,			/* malformed bytes (image, weight file) */
	MT_ERR_SHAPE,			/* tensor shape / size mismatch */
	MT_ERR_LIMIT,			/* over a size limit (dimensions, memory budget) */
	MT_ERR_UNSUPPORTED,		/* valid but not supported (format, dtype) */
	MT_ERR_CANCELLED,		/* the interrupt callback asked us to stop */
	MT_ERR_INTERNAL,		/* a bug or a library failure */
	MT_ERR_RELOAD			/* the host must give the model its weights again */
} mt_code;

/* An error: a code, a one-line message, an optional detail sentence. */
typedef struct mt_err
{
	mt_code		code;
	char		msg[256];
	char		detail[512];
} mt_err;

/* Set *err (if not NULL) and return code.  msg is printf-style. */
int			mt_seterr(mt_err *err, mt_code code, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));
/* Add a detail sentence to an error already set. */
void		mt_setdetail(mt_err *err, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));
void		mt_clearerr(mt_err *err);

/*
 * Allocation.  Every engine allocation goes through these so the host (the
 * PostgreSQL backend) can route them into a memory context.  Hooks must
 * return NULL on failure, never longjmp.  They are only ever called from the
 * thread that called into the engine.
 */
typedef void *(*mt_malloc_fn) (size_t size);
typedef void (*mt_free_fn) (void *ptr);
void		mt_set_allocator(mt_malloc_fn m, mt_free_fn f);
void	   *mt_malloc(size_t size);
void	   *mt_calloc(size_t n, size_t size);	/* overflow-checked, zeroed */
void		mt_free(void *ptr);
char	   *mt_strdup(const char *s);

/* Overflow-checked size arithmetic: return 0 on overflow, else 1. */
int			mt_mul_size(size_t a, size_t b, size_t *out);
int			mt_add_size(size_t a, size_t b, size_t *out);

/*
 * Interrupt polling.  Long loops call mt_interrupted() between layers and
 * batches; the host sets a callback that returns non-zero when the user
 * cancelled (without itself jumping anywhere).  The engine then frees what
 * it holds and returns MT_ERR_CANCELLED.
 */
typedef int (*mt_interrupt_fn) (void);
void		mt_set_interrupt(mt_interrupt_fn fn);
int			mt_interrupted(void);

/*
 * The engine's precision for convolutions (medtl.precision), read per call
 * by the backends that have a bf16 path: oneDNN on the CPU (onednn.h) and
 * the CUDA backend (ops_cuda.cu, the dense convolutions' GEMM operands).
 * Everything else, and training's weights, gradients and optimizer state,
 * stays float32.  Until set, MEDTL_PRECISION=bf16 in the environment
 * selects bf16 (engine tools), else fp32.
 */
typedef enum mt_precision
{
	MT_PREC_FP32 = 0,			/* float32 throughout */
	MT_PREC_BF16				/* convolutions read bfloat16 operands */
} mt_precision;

void		mt_set_precision(mt_precision p);
mt_precision mt_get_precision(void);

#endif
