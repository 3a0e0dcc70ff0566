/*
 * mask.h - segmentation masks: decode a PNG or JPEG into one byte per pixel,
 * turn values into class indices, resize by nearest neighbour, encode as an
 * 8-bit gray PNG, count overlaps for Dice and IoU.  Engine code: no
 * postgres.h, errors as mt_err.
 */
#ifndef MT_MASK_H
#define MT_MASK_H

#include "../core/mt_common.h"

/*
 * Class index of pixels a loss must skip: what augmentation writes where the
 * transformed mask falls outside its source (see mt_augment_pair).
 */
#define MT_MASK_IGNORE 255

/* A mask: h rows of w bytes. */
typedef struct mt_mask
{
	int			w;
	int			h;
	uint8_t    *data;			/* w*h bytes, row-major; mt_malloc'd, mt_mask_free */
	int			lossy;			/* decoded from a JPEG: values near 0 and 255 blur */
} mt_mask;

/*
 * Decode a mask to one 8-bit value per pixel:
 *  - PNG gray (1-16 bits) or gray+alpha: the gray value (alpha ignored);
 *  - PNG RGB/RGBA, or a palette whose entries are all gray: the first
 *    channel, provided every channel agrees, else MT_ERR_INVALID "colour
 *    mask" naming the first such pixel;
 *  - PNG palette with colours: the palette index (as PIL/numpy read mode P);
 *  - 16 bits: values as they are when all are below 256 (class indices),
 *    else value / 257 when all are multiples of 257 (a scaled 8-bit mask,
 *    65535 -> 255), else MT_ERR_INVALID;
 *  - JPEG: its luminance, and lossy is set (see mt_mask_to_classes_auto).
 * Sizes are checked as mt_image_decode does (max_pixels 0 = the default).
 * Truncated or corrupt bytes give MT_ERR_CORRUPT and leave out empty.
 */
int			mt_mask_decode(const uint8_t *buf, size_t len, size_t max_pixels,
						   mt_mask *out, mt_err *err);

void		mt_mask_free(mt_mask *m);

/*
 * In place (the pixels change, not the struct), values to class indices:
 *  - n_classes == 2 (binary): 0 -> 0, and 1 or 255 -> 1; anything else is
 *    MT_ERR_INVALID "mask value 128 at (x, y): a binary model expects
 *    0/255 (or 0/1)";
 *  - n_classes > 2: values must already be indices below n_classes, else
 *    MT_ERR_INVALID naming value and pixel.
 * On error the pixels before the offending one are already converted.
 */
int			mt_mask_to_classes(const mt_mask *m, int n_classes, mt_err *err);

/*
 * The same, but a binary mask is thresholded: value > 127 -> 1, else 0 (for
 * masks that went through JPEG and ring around edges).  For n_classes > 2
 * it is mt_mask_to_classes: class indices have no sensible threshold.
 */
int			mt_mask_to_classes_threshold(const mt_mask *m, int n_classes, mt_err *err);

/* mt_mask_to_classes_threshold for a lossy (JPEG) mask, else mt_mask_to_classes. */
int			mt_mask_to_classes_auto(const mt_mask *m, int n_classes, mt_err *err);

/*
 * out = in resized to w x h by nearest neighbour with pixel centres aligned
 * (source index floor((x + 0.5) * in_w / w), as PIL's NEAREST and torch's
 * "nearest-exact"): class indices are never blended.
 */
int			mt_mask_resize_nearest(const mt_mask *in, int w, int h, mt_mask *out,
								   mt_err *err);

/*
 * w x h bytes as an 8-bit gray PNG; *out is mt_malloc'd (free with
 * mt_free), NULL on error.
 */
int			mt_mask_encode_png(const uint8_t *pix, int w, int h, uint8_t **out,
							   size_t *out_len, mt_err *err);

/*
 * A probability map (w x h floats in [0, 1]) as an 8-bit gray PNG:
 * round(p * 255), clamped; NaN becomes 0.
 */
int			mt_mask_encode_prob_png(const float *p, int w, int h, uint8_t **out,
									size_t *out_len, mt_err *err);

/*
 * Overlap counts of two masks of the same size: foreground is value == cls
 * when cls >= 0; otherwise any nonzero value, or value > 127 for a lossy
 * (JPEG) mask whose compression leaves small values around the edges.
 * Masks of different sizes give MT_ERR_SHAPE "masks differ in size: WxH and
 * WxH".
 */
int			mt_mask_counts(const mt_mask *pred, const mt_mask *truth, int cls,
						   int64_t *inter, int64_t *psum, int64_t *tsum, mt_err *err);

#endif
