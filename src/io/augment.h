/*
 * augment.h - training-time augmentation of images already at the model's
 * input size: random resized crop, horizontal flip, rotation, brightness and
 * contrast, then normalisation.  Engine code: no postgres.h.
 */
#ifndef MT_AUGMENT_H
#define MT_AUGMENT_H

#include "../core/mt_common.h"
#include "../core/rng.h"

typedef struct mt_augment
{
	int			hflip;			/* flip left-right with probability 1/2 */
	float		rotate_deg;		/* rotate by U(-r, r) degrees; 0 = off */
	float		brightness;		/* multiply by U(1-b, 1+b); 0 = off */
	float		contrast;		/* blend with the mean gray by U(1-c, 1+c); 0 = off */
	float		crop_min_area;	/* random resized crop of area U(a, 1), aspect 3/4..4/3; 1 = off */
} mt_augment;

/* Whether any augmentation is switched on. */
int			mt_augment_enabled(const mt_augment *a);

/*
 * dst (size x size x 3 floats, normalised with mean/std) from src (size x
 * size x 3 bytes, RGB) under one random draw of the augmentations.  The
 * geometric ones are composed into one affine map sampled bilinearly, with
 * black outside the image, as torchvision does.
 */
void		mt_augment_image(const uint8_t *src, int size, const mt_augment *a, mt_rng *rng,
							 const float mean[3], const float std[3], float *dst);

/*
 * An image and its segmentation mask under the same draw: dst as
 * mt_augment_image makes it (identical for the same rng state, which both
 * advance alike), mask_dst (size x size class indices) from mask_src by the
 * same geometric map sampled by nearest neighbour.  Output pixels whose
 * source lies outside the mask become MT_MASK_IGNORE (255, mask.h), which
 * losses skip: the image there is black padding, not background.
 * Brightness and contrast touch only the image.
 */
void		mt_augment_pair(const uint8_t *src, const uint8_t *mask_src, int size,
							const mt_augment *a, mt_rng *rng, const float mean[3],
							const float std[3], float *dst, uint8_t *mask_dst);

/*
 * m images (srcs[i]: size x size x 3 bytes) into dst (m x size x size x 3
 * floats, normalised), augmented when a is non-NULL and enabled, with their
 * masks (mask_srcs, or NULL) into mask_dst the same way: the random draws in
 * image order from rng, so each image equals what mt_augment_image /
 * mt_augment_pair would make of it in a loop, then the pixels on the
 * engine's threads (core/pool.h).  Without augmentation the images are only
 * normalised and the masks copied.
 */
void		mt_augment_batch(const uint8_t *const *srcs, const uint8_t *const *mask_srcs, int m,
							 int size, const mt_augment *a, mt_rng *rng, const float mean[3],
							 const float std[3], float *dst, uint8_t *mask_dst);

/*
 * The draws of mt_augment_batch as numbers, for a renderer elsewhere (a
 * device): m rows of MT_AUG_PARAMS doubles, drawn in image order from rng
 * exactly as mt_augment_batch draws them (nothing is drawn when a is NULL
 * or switched off: the rows then hold the identity).  A row is the crop
 * window (x0, y0, width, height in source pixels), the flip (0 or 1), the
 * rotation's cosine and sine, the window's centre (x, y), the brightness
 * and the contrast factors.  mt_augment_render renders one image from
 * its row as mt_augment_batch does.
 */
#define MT_AUG_PARAMS 11
void		mt_augment_draw_params(const mt_augment *a, int m, int size, mt_rng *rng,
								   double *params);
void		mt_augment_render(const uint8_t *src, int size, const double *params,
							  const float mean[3], const float std[3], float *dst);
/*
 * A segmentation mask (size x size class bytes) under a row of params as
 * mt_augment_pair maps it (nearest neighbour, MT_MASK_IGNORE outside);
 * params NULL: a copy.
 */
void		mt_augment_render_mask(const uint8_t *src, int size, const double *params,
								   uint8_t *dst);

/* dst = (src / 255 - mean) / std for n pixels of 3 channels. */
void		mt_normalize_u8(const uint8_t *src, size_t n, const float mean[3],
							const float std[3], float *dst);

#endif
