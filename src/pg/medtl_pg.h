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
#include "core/adapt.h"

/* GUCs */
extern int	medtl_threads;
extern int	medtl_worker_threads;
extern int	medtl_max_image_pixels;
extern bool medtl_jpeg_scaling;
extern int	medtl_model_cache_size;
extern char *medtl_blas_core;
extern int	medtl_device;
extern int	medtl_device_memory_mb;

/* medtl.device */
typedef enum MedtlDevice
{
	MEDTL_DEVICE_CPU = 0,
	MEDTL_DEVICE_CUDA,
	MEDTL_DEVICE_AUTO
} MedtlDevice;

/* Raise the engine error as an ERROR with a SQLSTATE fitting its code. */
void		medtl_raise(const mt_err *err, const char *what) pg_attribute_noreturn();
/* The SQLSTATE medtl_raise uses for an engine error code. */
int			medtl_sqlstate(int code);
/* Load OpenBLAS (once) and apply medtl.threads; call before engine work. */
void		medtl_engine_enter(void);
/*
 * Scoring's thread count under medtl.threads = 0 (adapt.h): whether it
 * adapts here (not in a parallel worker, not with a set count), and the
 * count to run with now (applied as medtl_engine_enter applies its own).
 */
bool		medtl_threads_adapt(void);
void		medtl_apply_threads(int n);
/*
 * For runtime_info: the last count scoring ran with (n; 0: the count
 * medtl_engine_enter applied), and its probes and moves.
 */
void		medtl_note_scoring_threads(int n, long probes, long moves);
/*
 * The device backend inference runs on under medtl.device (device.c): NULL
 * for the CPU.  Raises ERROR (feature_not_supported) when medtl.device is
 * cuda and no device can be used; applies medtl.device_memory_mb.
 */
const mt_backend *medtl_inference_device(void);
/* What medtl.device resolves to now, for runtime_info: cpu, cuda, unavailable. */
const char *medtl_device_in_use(void);
/*
 * Decode an image (under medtl.max_image_pixels) and, when out_w > 0,
 * resize it to out_w x out_h as PIL does (8-bit sources as PIL resizes
 * 8-bit images); then, when mean is not NULL, normalise it by (v - mean) /
 * std per channel, the values of mt_image_normalize, in the same pass as
 * the conversion to floats where no resize is needed
 * (mt_image_decode_normalized).  Raises on corrupt or oversized images.
 */
struct mt_image;
void		medtl_decode_image(bytea *image, int out_w, int out_h, const float mean[3],
							   const float std[3], struct mt_image *out);
/* Decode, resize to size x size and normalise an image into NHWC floats. */
float	   *medtl_image_tensor(bytea *image, int size, const float mean[3],
							   const float std[3]);

/* Segmentation masks (seg_metrics.c). */
struct mt_mask;
/*
 * Decode a mask (mt_mask_decode under medtl.max_image_pixels) or raise
 * "invalid <what>: ..." with the SQLSTATE of the engine error.
 */
void		medtl_decode_mask(bytea *mask, const char *what, struct mt_mask *out);
/*
 * Decode two masks and count foreground pixels: |P∩T|, |P|, |T|.
 * Foreground is value == cls when cls >= 0, else nonzero (above 127 in a
 * JPEG mask).  Raises on corrupt bytes, masks of different sizes (22000) or
 * a class beyond 255.
 */
void		medtl_mask_counts(bytea *pred, bytea *truth, int cls, int64 *inter,
							  int64 *psum, int64 *tsum);

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
	mt_model   *net;			/* NULL for an ensemble */
	bool		cpu_only;		/* forward passes ignore medtl.device (training) */
	bool		trimmed;		/* malloc_trim ran after its first pass (medtl_forward) */
	/*
	 * scoring's thread count under medtl.threads = 0 (adapt.h), for single
	 * images and for batches; adapt_cores 0: not started
	 */
	int			adapt_cores;
	mt_adapt	adapt[2];
	MemoryContext cxt;			/* holds the model: its forward pass allocates here */
	/* an ensemble (arch "ensemble"): member names and normalised weights */
	int			n_members;
	char	  **member_names;
	float	   *member_weights;
} MedtlModel;

MedtlModel *medtl_get_model(FunctionCallInfo fcinfo, text *name);
/*
 * mt_model_forward in the model's memory context (the engine keeps its
 * activation plan with the model); raises on error.
 */
void		medtl_forward(MedtlModel *mm, const float *x, int n, float *logits, float *features);
/* A private copy of a model (not cached), e.g. to train it. */
MedtlModel *medtl_load_model_private(const char *name, MemoryContext cxt);
int			medtl_cached_models(void);

/*
 * Labelled images for training (dataset.c): size x size x 3 bytes each,
 * followed, for segmentation (has_masks), by the image's mask as size x size
 * class indexes (255: no class, e.g. outside a rotated image).
 */
typedef struct MedtlDataset
{
	int			n;
	int			size;
	uint8	   *pixels;			/* the first n_mem images, size x size x 3 bytes */
	int			n_mem;
	struct BufFile *spill;		/* images n_mem..n-1, in order, when over budget */
	uint8	   *buf;			/* one image read back from spill */
	bool		has_masks;		/* a mask follows each image */
	int		   *labels;			/* class index per image (0 with masks) */
	int64	   *rows;			/* 1-based row number in the source */
	char	  **groups;			/* group key per image, or NULL */
	int			n_bad;			/* rows skipped */
} MedtlDataset;

extern int	medtl_train_memory_mb;
MedtlDataset *medtl_read_dataset(const char *source, const char *image_col,
								 const char *label_col, const char *group_col,
								 char **labels, int n_labels, int size,
								 bool skip_bad_rows, bool masks);
/*
 * The pixels of image i, then its mask when the dataset has masks (valid
 * until the next call).
 */
const uint8 *medtl_dataset_image(const MedtlDataset *ds, int i);
/* Bytes medtl_dataset_image returns for one image: its pixels, then its mask if any. */
size_t		medtl_dataset_image_bytes(const MedtlDataset *ds);
void		medtl_dataset_free(MedtlDataset *ds);
char	   *medtl_join_labels(char **labels, int n);
/* The FROM item of a source (a query or a table name); needs SPI connected. */
char	   *medtl_source_from_item(const char *source);
/*
 * A read-only SPI cursor over "SELECT columns FROM source t" (columns name
 * the source's row as t), with the caller's privileges; needs SPI connected.
 */
struct PortalData *medtl_source_cursor(const char *source, const char *columns);

#endif
