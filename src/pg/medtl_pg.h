/*
 * medtl_pg.h - shared declarations of the PostgreSQL layer (src/pg), the
 * only part of medtl that includes postgres.h.
 */
#ifndef MEDTL_PG_H
#define MEDTL_PG_H

#include "postgres.h"
#include "fmgr.h"

#include "core/mt_common.h"
#include "core/graph.h"

/* GUCs */
extern int	medtl_threads;
extern int	medtl_worker_threads;
extern int	medtl_max_image_pixels;
extern int	medtl_model_cache_size;
extern char *medtl_blas_core;

/* Raise the engine error as an ERROR with a SQLSTATE fitting its code. */
void		medtl_raise(const mt_err *err, const char *what) pg_attribute_noreturn();
/* Load OpenBLAS (once) and apply medtl.threads; call before engine work. */
void		medtl_engine_enter(void);
/* Decode, resize to size x size and normalise an image into NHWC floats. */
float	   *medtl_image_tensor(bytea *image, int size, const float mean[3],
							   const float std[3]);

/* A model loaded for inference (model.c). */
typedef struct MedtlModel
{
	int64		model_id;
	char	   *name;
	char	   *arch;
	char	   *task;
	int			input_size;
	float		mean[3];
	float		std[3];
	int			n_labels;
	char	  **labels;
	mt_model   *net;
} MedtlModel;

MedtlModel *medtl_get_model(FunctionCallInfo fcinfo, text *name);
int			medtl_cached_models(void);

#endif
