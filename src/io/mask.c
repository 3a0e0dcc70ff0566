/*
 * mask.c - segmentation masks as one byte per pixel.
 *
 * Decoding goes through image.c's decoders (mt_image_decode_rows), so the
 * libjpeg/libpng error handling and the size checks are the ones images
 * get; this file only turns rows of samples into mask values.
 */
#include "mask.h"
#include "image.h"

#include <math.h>
#include <string.h>

/* ----------------------------------------------------------- decoding -- */

/* State of the sink that builds a mask. */
typedef struct mask_sink
{
	mt_row_layout layout;
	uint8_t    *data;			/* w*h values */
	uint16_t   *wide;			/* 16-bit sources: w*h samples, reduced at the end */
} mask_sink;

static int
mask_sink_start(void *ctx, const mt_row_layout *layout, mt_err *err)
{
	mask_sink  *ms = (mask_sink *) ctx;
	size_t		n = (size_t) layout->width * (size_t) layout->height;

	ms->layout = *layout;
	if (layout->cmyk)
		return mt_seterr(err, MT_ERR_UNSUPPORTED, "CMYK JPEG masks are not supported");
	/* check_dims bounded width*height already, so n and 2n do not overflow */
	ms->data = mt_malloc(n);
	if (ms->data != NULL && layout->depth == 16)
		ms->wide = mt_malloc(n * sizeof(uint16_t));
	if (ms->data == NULL || (layout->depth == 16 && ms->wide == NULL))
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a %d x %d mask",
						 layout->width, layout->height);
	return MT_OK;
}

/* The error for a pixel whose colour channels differ. */
static int
colour_error(int x, int y, unsigned r, unsigned g, unsigned b, mt_err *err)
{
	mt_seterr(err, MT_ERR_INVALID, "colour mask: channels differ at (%d, %d)", x, y);
	mt_setdetail(err, "The pixel is (%u, %u, %u); a mask has one value per pixel: gray, or equal colour channels.",
				 r, g, b);
	return MT_ERR_INVALID;
}

/* One row: the gray value, or the first of agreeing colour channels. */
static int
mask_sink_row(void *ctx, int y, const uint8_t *src, mt_err *err)
{
	mask_sink  *ms = (mask_sink *) ctx;
	int			w = ms->layout.width;
	int			ch = ms->layout.channels;
	size_t		off = (size_t) y * w;

	if (ms->layout.depth == 8)
	{
		uint8_t    *dst = ms->data + off;

		for (int x = 0; x < w; x++, src += ch)
		{
			if (ch >= 3 && (src[1] != src[0] || src[2] != src[0]))
				return colour_error(x, y, src[0], src[1], src[2], err);
			dst[x] = src[0];
		}
	}
	else
	{
		uint16_t   *dst = ms->wide + off;

		for (int x = 0; x < w; x++, src += 2 * ch)
		{
			unsigned	v = ((unsigned) src[0] << 8) | src[1];

			if (ch >= 3)
			{
				unsigned	g = ((unsigned) src[2] << 8) | src[3];
				unsigned	b = ((unsigned) src[4] << 8) | src[5];

				if (g != v || b != v)
					return colour_error(x, y, v, g, b, err);
			}
			dst[x] = (uint16_t) v;
		}
	}
	return MT_OK;
}

/*
 * 16-bit samples to bytes: kept when all are below 256 (class indices
 * stored wide), divided by 257 when all are multiples of it (an 8-bit mask
 * scaled up: 65535 -> 255); anything else has no one-byte meaning.
 */
static int
mask_reduce16(mask_sink *ms, mt_err *err)
{
	size_t		n = (size_t) ms->layout.width * ms->layout.height;
	int			small = 1,
				scaled = 1;
	size_t		bad = 0;

	for (size_t i = 0; i < n; i++)
	{
		small &= ms->wide[i] <= 255;
		scaled &= ms->wide[i] % 257 == 0;
	}
	if (small)
		for (size_t i = 0; i < n; i++)
			ms->data[i] = (uint8_t) ms->wide[i];
	else if (scaled)
		for (size_t i = 0; i < n; i++)
			ms->data[i] = (uint8_t) (ms->wide[i] / 257);
	else
	{
		/* the first value that is neither below 256 nor a multiple of 257 */
		for (size_t i = 0; i < n; i++)
			if (ms->wide[i] > 255 && ms->wide[i] % 257 != 0)
			{
				bad = i;
				break;
			}
		mt_seterr(err, MT_ERR_INVALID, "16-bit mask value %u at (%d, %d) does not fit one byte",
				  (unsigned) ms->wide[bad], (int) (bad % ms->layout.width),
				  (int) (bad / ms->layout.width));
		mt_setdetail(err, "A 16-bit mask holds class indices below 256, or 8-bit values scaled by 257 (0 and 65535).");
		return MT_ERR_INVALID;
	}
	return MT_OK;
}

int
mt_mask_decode(const uint8_t *buf, size_t len, size_t max_pixels, mt_mask *out,
			   mt_err *err)
{
	mask_sink	ms;
	mt_row_sink sink;
	int			rc;

	if (out == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output mask given");
	memset(out, 0, sizeof(*out));
	memset(&ms, 0, sizeof(ms));
	memset(&sink, 0, sizeof(sink));
	sink.jpeg_gray = 1;
	sink.palette_index = 1;
	sink.start = mask_sink_start;
	sink.row = mask_sink_row;
	sink.ctx = &ms;
	rc = mt_image_decode_rows(buf, len, max_pixels, &sink, err);
	if (rc == MT_OK && ms.wide != NULL)
		rc = mask_reduce16(&ms, err);
	mt_free(ms.wide);
	if (rc != MT_OK)
	{
		mt_free(ms.data);
		return rc;
	}
	out->w = ms.layout.width;
	out->h = ms.layout.height;
	out->data = ms.data;
	out->lossy = strcmp(ms.layout.format, "jpeg") == 0;
	return MT_OK;
}

void
mt_mask_free(mt_mask *m)
{
	if (m == NULL)
		return;
	mt_free(m->data);
	memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------ classes -- */

/* Shared checks of the to_classes functions. */
static int
check_classes_args(const mt_mask *m, int n_classes, mt_err *err)
{
	if (m == NULL || m->data == NULL || m->w <= 0 || m->h <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "no mask given");
	if (n_classes < 2 || n_classes >= MT_MASK_IGNORE)
	{
		mt_seterr(err, MT_ERR_INVALID, "a mask cannot have %d classes", n_classes);
		mt_setdetail(err, "Masks hold 2 to %d classes (one byte per pixel, %d means ignore).",
					 MT_MASK_IGNORE - 1, MT_MASK_IGNORE);
		return MT_ERR_INVALID;
	}
	return MT_OK;
}

/* Values to class indices; threshold: binary masks cut at 127 instead of checked. */
static int
to_classes(const mt_mask *m, int n_classes, int threshold, mt_err *err)
{
	size_t		n;
	uint8_t    *p;
	int			rc = check_classes_args(m, n_classes, err);

	if (rc != MT_OK)
		return rc;
	n = (size_t) m->w * m->h;
	p = m->data;
	for (size_t i = 0; i < n; i++)
	{
		unsigned	v = p[i];

		if (n_classes == 2)
		{
			if (threshold)
				p[i] = v > 127;
			else if (v == 0 || v == 1 || v == 255)
				p[i] = v != 0;
			else
			{
				mt_seterr(err, MT_ERR_INVALID,
						  "mask value %u at (%d, %d): a binary model expects 0/255 (or 0/1)",
						  v, (int) (i % m->w), (int) (i / m->w));
				mt_setdetail(err, "Masks that went through JPEG compression need a threshold at 127.");
				return MT_ERR_INVALID;
			}
		}
		else if (v >= (unsigned) n_classes)
		{
			mt_seterr(err, MT_ERR_INVALID,
					  "mask value %u at (%d, %d): a model with %d classes expects class indices 0 to %d",
					  v, (int) (i % m->w), (int) (i / m->w), n_classes, n_classes - 1);
			return MT_ERR_INVALID;
		}
	}
	return MT_OK;
}

int
mt_mask_to_classes(const mt_mask *m, int n_classes, mt_err *err)
{
	return to_classes(m, n_classes, 0, err);
}

int
mt_mask_to_classes_threshold(const mt_mask *m, int n_classes, mt_err *err)
{
	return to_classes(m, n_classes, 1, err);
}

int
mt_mask_to_classes_auto(const mt_mask *m, int n_classes, mt_err *err)
{
	return to_classes(m, n_classes, m != NULL && m->lossy, err);
}

/* ------------------------------------------------------------- resize -- */

int
mt_mask_resize_nearest(const mt_mask *in, int w, int h, mt_mask *out, mt_err *err)
{
	int		   *xs;
	uint8_t    *data;

	if (out == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output mask given");
	memset(out, 0, sizeof(*out));
	if (in == NULL || in->data == NULL || in->w <= 0 || in->h <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "cannot resize an empty mask");
	if (w <= 0 || h <= 0 || w > MT_IMAGE_MAX_SIDE || h > MT_IMAGE_MAX_SIDE)
	{
		mt_seterr(err, MT_ERR_INVALID, "invalid resize target %d x %d", w, h);
		mt_setdetail(err, "Each side must be between 1 and %d.", MT_IMAGE_MAX_SIDE);
		return MT_ERR_INVALID;
	}
	if ((size_t) w * (size_t) h > MT_IMAGE_MAX_PIXELS)
		return mt_seterr(err, MT_ERR_LIMIT, "resize target %d x %d is too large", w, h);
	data = mt_malloc((size_t) w * h);
	xs = mt_malloc((size_t) w * sizeof(int));
	if (data == NULL || xs == NULL)
	{
		mt_free(data);
		mt_free(xs);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a %d x %d mask", w, h);
	}
	/* exact integer form of floor((x + 0.5) * in_w / w) */
	for (int x = 0; x < w; x++)
		xs[x] = (int) (((int64_t) 2 * x + 1) * in->w / ((int64_t) 2 * w));
	for (int y = 0; y < h; y++)
	{
		int			sy = (int) (((int64_t) 2 * y + 1) * in->h / ((int64_t) 2 * h));
		const uint8_t *src = in->data + (size_t) sy * in->w;
		uint8_t    *dst = data + (size_t) y * w;

		for (int x = 0; x < w; x++)
			dst[x] = src[xs[x]];
	}
	mt_free(xs);
	out->w = w;
	out->h = h;
	out->data = data;
	out->lossy = in->lossy;
	return MT_OK;
}

/* ------------------------------------------------------------ encoding -- */

int
mt_mask_encode_png(const uint8_t *pix, int w, int h, uint8_t **out,
				   size_t *out_len, mt_err *err)
{
	return mt_png_encode_gray8(pix, w, h, out, out_len, err);
}

int
mt_mask_encode_prob_png(const float *p, int w, int h, uint8_t **out,
						size_t *out_len, mt_err *err)
{
	uint8_t    *pix;
	size_t		n;
	int			rc;

	if (out != NULL)
		*out = NULL;
	if (p == NULL || w <= 0 || h <= 0 || w > MT_IMAGE_MAX_SIDE || h > MT_IMAGE_MAX_SIDE)
		return mt_png_encode_gray8(NULL, w, h, out, out_len, err);	/* its error */
	n = (size_t) w * h;
	pix = mt_malloc(n);
	if (pix == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory for a %d x %d mask", w, h);
	for (size_t i = 0; i < n; i++)
	{
		float		v = p[i] * 255.0f;

		/* written so that NaN fails both tests and becomes 0 */
		pix[i] = v >= 255.0f ? 255 : (v > 0.0f ? (uint8_t) lrintf(v) : 0);
	}
	rc = mt_png_encode_gray8(pix, w, h, out, out_len, err);
	mt_free(pix);
	return rc;
}

/* -------------------------------------------------------------- counts -- */

/* Is value v of mask m foreground? */
static inline int
is_fg(unsigned v, int cls, int lossy)
{
	if (cls >= 0)
		return v == (unsigned) cls;
	return lossy ? v > 127 : v != 0;
}

int
mt_mask_counts(const mt_mask *pred, const mt_mask *truth, int cls,
			   int64_t *inter, int64_t *psum, int64_t *tsum, mt_err *err)
{
	int64_t		ni = 0,
				np = 0,
				nt = 0;
	size_t		n;

	if (pred == NULL || truth == NULL || pred->data == NULL || truth->data == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no mask given");
	if (pred->w != truth->w || pred->h != truth->h)
	{
		mt_seterr(err, MT_ERR_SHAPE, "masks differ in size: %dx%d and %dx%d",
				  pred->w, pred->h, truth->w, truth->h);
		mt_setdetail(err, "The first mask is %d pixels wide and %d high, the second %d and %d.",
					 pred->w, pred->h, truth->w, truth->h);
		return MT_ERR_SHAPE;
	}
	n = (size_t) pred->w * pred->h;
	for (size_t i = 0; i < n; i++)
	{
		int			p = is_fg(pred->data[i], cls, pred->lossy);
		int			t = is_fg(truth->data[i], cls, truth->lossy);

		np += p;
		nt += t;
		ni += p & t;
	}
	*inter = ni;
	*psum = np;
	*tsum = nt;
	return MT_OK;
}
