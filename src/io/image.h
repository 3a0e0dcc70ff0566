/*
 * image.h - decode JPEG and PNG bytes into float RGB, resize as PIL does,
 * normalise.  Engine code: no postgres.h, errors as mt_err.
 */
#ifndef MT_IMAGE_H
#define MT_IMAGE_H

#include "../core/mt_common.h"

/* Header facts about an encoded image, read without decoding pixels. */
typedef struct mt_image_info
{
	const char *format;			/* "jpeg" or "png" (static string) */
	int			width;
	int			height;
	int			channels;		/* as stored: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA */
	int			bit_depth;		/* 8 or 16 (PNG may also be 1, 2, 4) */
} mt_image_info;

/* A decoded image: height x width x 3 floats (HWC, RGB), values in [0, 1]. */
typedef struct mt_image
{
	int			width;
	int			height;
	float	   *data;			/* mt_malloc'd; free with mt_image_free */
} mt_image;

/* Default bound on width*height accepted by the decoders (about 16k x 16k). */
#define MT_IMAGE_MAX_PIXELS ((size_t) 268435456)
#define MT_IMAGE_MAX_SIDE 65500

/*
 * Read the header only.  Returns MT_OK, or MT_ERR_CORRUPT for bytes that
 * are not a JPEG/PNG or are truncated before the size is known.
 */
int			mt_image_probe(const uint8_t *buf, size_t len, mt_image_info *info,
						   mt_err *err);

/*
 * Decode to RGB floats in [0, 1]: 8-bit samples / 255, 16-bit / 65535; gray
 * is replicated to 3 channels; alpha is dropped (like PIL's convert("RGB")).
 * Images whose width*height exceed max_pixels (0 = MT_IMAGE_MAX_PIXELS) or
 * whose width or height is 0 are refused with MT_ERR_LIMIT before any pixel
 * buffer is allocated.  Truncated or corrupt data gives MT_ERR_CORRUPT.
 */
int			mt_image_decode(const uint8_t *buf, size_t len, size_t max_pixels,
							mt_image *out, mt_err *err);

/*
 * As mt_image_decode, but a JPEG may come out smaller: libjpeg-turbo's DCT
 * scaling decodes it at 1/2, 1/4 or 1/8 of its size, the largest reduction
 * that keeps the width at least min_w and the height at least min_h (the
 * size it will be resized to), which skips most of the inverse DCT and
 * colour conversion of a large image (as PIL's Image.draft does).  The
 * pixels are not those of a full decode followed by the same resize, so
 * this is an option (medtl.jpeg_scaling), not the default.  Other formats,
 * and min_w or min_h <= 0, decode at full size.
 */
int			mt_image_decode_scaled(const uint8_t *buf, size_t len, size_t max_pixels,
								   int min_w, int min_h, mt_image *out, mt_err *err);

/*
 * As mt_image_decode_scaled, and when the source is 8-bit (not CMYK) and
 * comes out want_w x want_h (any size if want_w <= 0), normalised as it is
 * converted: x = (v / 255 - mean[c]) / std[c], bit for bit what
 * mt_image_normalize gives after a plain decode.  *normalized says whether
 * that was done (if not, the pixels are in [0, 1] as mt_image_decode's).
 */
int			mt_image_decode_normalized(const uint8_t *buf, size_t len, size_t max_pixels,
									   int min_w, int min_h, int want_w, int want_h,
									   const float mean[3], const float std[3],
									   mt_image *out, int *normalized, mt_err *err);

void		mt_image_free(mt_image *img);

/*
 * Lower level: decode rows of raw samples into a caller's sink, for decoders
 * of other pixel kinds (masks, src/io/mask.c) that share the JPEG/PNG code
 * and its error handling.  The layout of the rows a sink receives:
 */
typedef struct mt_row_layout
{
	const char *format;			/* "jpeg" or "png" */
	int			width;
	int			height;
	int			channels;		/* 1 gray (or palette index), 2 gray+alpha, 3 RGB, 4 RGBA or CMYK */
	int			depth;			/* 8 or 16 bits per sample; 16-bit samples big-endian */
	int			cmyk;			/* JPEG: 0; 1 CMYK ink values; 2 Adobe-inverted CMYK */
	int			palette_index;	/* PNG: samples are indices into a colour palette */
} mt_row_layout;

typedef struct mt_row_sink
{
	/* JPEG: ask libjpeg for luminance only, whatever the colour space */
	int			jpeg_gray;
	/*
	 * JPEG: when both > 0, decode at the smallest DCT scale (1/2, 1/4, 1/8)
	 * that keeps width >= jpeg_min_w and height >= jpeg_min_h
	 */
	int			jpeg_min_w,
				jpeg_min_h;
	/*
	 * PNG: deliver a colour palette's indices (8 bits, 1 channel) instead of
	 * its colours; a palette whose entries are all gray is still expanded.
	 */
	int			palette_index;
	/* once the layout is known, before any row; MT_OK or an error (err set) */
	int			(*start) (void *ctx, const mt_row_layout *layout, mt_err *err);
	/* row y (0 .. height-1, in order): MT_OK, or an error (err set) to stop */
	int			(*row) (void *ctx, int y, const uint8_t *samples, mt_err *err);
	void	   *ctx;
} mt_row_sink;

/*
 * Decode into sink: dimension checks as mt_image_decode; on any error the
 * decoder's own state is freed and what the sink allocated is the caller's
 * to free.
 */
int			mt_image_decode_rows(const uint8_t *buf, size_t len, size_t max_pixels,
								 const mt_row_sink *sink, mt_err *err);

/*
 * Encode w x h 8-bit gray samples as a PNG in memory.  *out is mt_malloc'd
 * (free with mt_free); on error *out is NULL.
 */
int			mt_png_encode_gray8(const uint8_t *pix, int w, int h, uint8_t **out,
								size_t *out_len, mt_err *err);

/*
 * Resize to out_w x out_h with PIL's Image.BILINEAR (a triangle filter whose
 * support widens when shrinking, i.e. antialiased), separably: horizontal
 * pass first, then vertical, as PIL does.
 */
int			mt_image_resize(const mt_image *in, int out_w, int out_h,
							mt_image *out, mt_err *err);

/*
 * The same as PIL computes it for an 8-bit image: each pass's result is
 * rounded to a multiple of 1/255, so predictions on 8-bit JPEG/PNG match the
 * usual PIL resize + ToTensor pipeline exactly (and training, which keeps
 * resized images as bytes, sees the same pixels as scoring).
 */
int			mt_image_resize_u8(const mt_image *in, int out_w, int out_h,
							   mt_image *out, mt_err *err);

/* In place: x = (x - mean[c]) / std[c]. */
void		mt_image_normalize(mt_image *img, const float mean[3], const float std[3]);

#endif
