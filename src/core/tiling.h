/*
 * tiling.h - sliding-window segmentation of images larger than a model's
 * input (as MONAI's sliding_window_inference): square tiles of the model's
 * input size with overlap, per-pixel softmax probabilities of overlapping
 * tiles blended with an importance map, processed one band of tile rows at
 * a time so that only about classes x width x tile floats are held.
 * Engine code: no postgres.h, errors as mt_err.
 */
#ifndef MT_TILING_H
#define MT_TILING_H

#include "mt_common.h"

/* How overlapping tiles are weighted (MONAI's BlendMode). */
typedef enum mt_blend
{
	MT_BLEND_CONSTANT = 0,		/* every pixel of a tile weighs 1: a plain mean */
	MT_BLEND_GAUSSIAN			/* exp(-d^2 / 2 sigma^2), sigma = tile / 8, max 1 */
} mt_blend;

#define MT_TILE_MAX_OVERLAP 0.9

typedef struct mt_tile_opts
{
	int			tile;			/* tile side: the model's input size */
	int			classes;		/* channels of the model's output */
	double		overlap;		/* fraction of a tile shared with the next, 0..0.9 */
	mt_blend	blend;
	int			tiles_per_pass; /* tiles per forward call (>= 1) */
	/*
	 * Size of the probability rows delivered: 0 x 0 = the image's own size;
	 * otherwise the image's probabilities resized bilinearly to it
	 * (align_corners=False, as F.interpolate), e.g. back to the size of an
	 * image that was scaled before tiling.
	 */
	int			out_w;
	int			out_h;
} mt_tile_opts;

/*
 * The model: logits of n tiles, x n x size x size x 3 (NHWC, normalised)
 * -> logits n x size x size x classes.  Returns MT_OK or an error code
 * with err set.
 */
typedef int (*mt_tile_forward_fn) (void *ctx, const float *x, int n, int size,
								   float *logits, mt_err *err);

/*
 * The output: rows y .. y + n_rows - 1 of the probability map are final:
 * prob is n_rows x out_w x classes floats (valid only during the call).
 * Rows arrive once each, top to bottom.  Returns MT_OK or an error code.
 */
typedef int (*mt_tile_rows_fn) (void *ctx, int y, int n_rows, const float *prob,
								mt_err *err);

/* Stride between tile origins: round(tile x (1 - overlap)), at least 1. */
int			mt_tile_stride(int tile, double overlap);

/*
 * Tile origins along one axis of len pixels, returned in starts (which may
 * be NULL to count them): 0, stride, 2 stride, ... and a last one flush
 * with the far edge (len - tile); for len < tile one origin,
 * -((tile - len) / 2), i.e. the image centred in a tile padded on both
 * sides (the padding is zero in normalised units: the mean colour).
 * Returns the number of origins.
 */
int			mt_tile_starts(int len, int tile, int stride, int *starts);

/*
 * Importance map of one tile, tile x tile floats row-major (MONAI's
 * compute_importance_map): all 1, or a Gaussian with sigma = tile / 8
 * centred on the tile's centre, normalised to a maximum of 1.
 */
void		mt_tile_weights(mt_blend blend, int tile, float *map);

/*
 * Bytes mt_tile_segment allocates for an image of width w (the banded
 * accumulators, one pass's tiles and logits, the importance map and the
 * resampling rows); the model's own activations come on top.  0 on
 * overflow.
 */
size_t		mt_tile_memory(int w, const mt_tile_opts *o);

/*
 * Segment img (h x w x 3 floats, HWC, normalised) tile by tile: for each
 * band of tiles sharing a row origin, forward the band's tiles in the
 * fewest passes of at most tiles_per_pass (split evenly), softmax each
 * pixel's logits, add them weighted by the importance map into the band's
 * accumulators, and hand the rows no later band touches to sink, divided
 * by their summed weight.  Pixels of a tile outside the image (padding)
 * are never accumulated.  mt_interrupted() is polled before each forward
 * call (MT_ERR_CANCELLED).  Errors of fwd or sink are returned as they are.
 */
int			mt_tile_segment(const float *img, int w, int h, const mt_tile_opts *o,
							mt_tile_forward_fn fwd, void *fwd_ctx,
							mt_tile_rows_fn sink, void *sink_ctx, mt_err *err);

/*
 * A forward function for an mt_model (ctx): mt_model_forward of its logits
 * node, e.g. a U-Net's n x size x size x classes.
 */
int			mt_tile_model_forward(void *model, const float *x, int n, int size,
								  float *logits, mt_err *err);

/*
 * Source rows (or columns) of output index o when n_in values are resized
 * to n_out bilinearly with align_corners=False: the two neighbours and the
 * weight of the second (as medtl.segment's resize mode computes it).
 */
void		mt_tile_source_index(int o, int n_in, int n_out, int *i0, int *i1, float *t);

/*
 * Bilinear blend of a (top left), b (top right), c (bottom left), d
 * (bottom right): one expression shared by the resize mode and the
 * sliding window's resampling, so both round alike.
 */
static inline float
mt_tile_bilerp(float a, float b, float c, float d, float tx, float ty)
{
	return (1 - ty) * ((1 - tx) * a + tx * b) + ty * ((1 - tx) * c + tx * d);
}

#endif
