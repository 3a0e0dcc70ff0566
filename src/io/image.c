/*
 * image.c - decode JPEG (libjpeg-turbo) and PNG (libpng 1.6) from memory into
 * RGB floats, resize with PIL's BILINEAR filter, normalise.
 *
 * Both libraries report fatal errors by calling a handler that must not
 * return.  Our handlers longjmp back to a setjmp inside the one function that
 * drives the library (probe or decode), which frees what it holds and
 * returns an mt_err; no jump ever leaves this file.  Neither library prints
 * anything: warnings are recorded (libjpeg) or ignored (libpng).
 */
#include "image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

/* Progressive JPEGs with more scans than this are refused (a DoS guard). */
#define MT_JPEG_MAX_SCANS 1000

/* Largest ancillary PNG chunk libpng may buffer (iCCP, text, ...). */
#define MT_PNG_CHUNK_MAX ((png_alloc_size_t) 8000000)

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

/* Fill a sample-to-float table: lut[v] = v / 255, rounded once to float. */
static void
fill_lut8(float lut[256])
{
	int			i;

	for (i = 0; i < 256; i++)
		lut[i] = (float) (i / 255.0);
}

/* Is buf a JPEG (SOI followed by a marker)? */
static int
is_jpeg(const uint8_t *buf, size_t len)
{
	return len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF;
}

/* Does buf start with the PNG signature? */
static int
is_png(const uint8_t *buf, size_t len)
{
	return len >= 8 && memcmp(buf, png_signature, 8) == 0;
}

/* Refuse zero or oversized dimensions, before any pixel buffer exists. */
static int
check_dims(const char *fmt, size_t width, size_t height, size_t max_pixels,
		   mt_err *err)
{
	size_t		npix;

	if (max_pixels == 0)
		max_pixels = MT_IMAGE_MAX_PIXELS;
	if (width == 0 || height == 0)
	{
		mt_seterr(err, MT_ERR_CORRUPT, "%s image has zero width or height", fmt);
		mt_setdetail(err, "The header says %zu x %zu pixels.", width, height);
		return MT_ERR_CORRUPT;
	}
	if (width > MT_IMAGE_MAX_SIDE || height > MT_IMAGE_MAX_SIDE)
	{
		mt_seterr(err, MT_ERR_LIMIT, "%s image is too large", fmt);
		mt_setdetail(err, "The header says %zu x %zu pixels; each side may be at most %d.",
					 width, height, MT_IMAGE_MAX_SIDE);
		return MT_ERR_LIMIT;
	}
	if (!mt_mul_size(width, height, &npix) || npix > max_pixels)
	{
		mt_seterr(err, MT_ERR_LIMIT, "%s image is too large", fmt);
		mt_setdetail(err, "The header says %zu x %zu pixels; at most %zu pixels are allowed.",
					 width, height, max_pixels);
		return MT_ERR_LIMIT;
	}
	return MT_OK;
}

/* Allocate the float buffer of an image (width*height*3, checked). */
static float *
alloc_pixels(size_t width, size_t height, mt_err *err)
{
	size_t		n;
	float	   *p = NULL;

	if (mt_mul_size(width, height, &n) && mt_mul_size(n, 3, &n) &&
		mt_mul_size(n, sizeof(float), &n))
		p = mt_malloc(n);
	if (p == NULL)
		mt_seterr(err, MT_ERR_NOMEM, "out of memory for a %zu x %zu image",
				  width, height);
	return p;
}

/* ---------------------------------------------------------------- JPEG -- */

/* libjpeg error manager extended with our jump target and the message. */
typedef struct mt_jpeg_err
{
	struct jpeg_error_mgr pub;	/* must be first */
	jmp_buf		jump;
	int			code;			/* the mt_code to return after the jump */
	char		msg[JMSG_LENGTH_MAX];
} mt_jpeg_err;

/* Map a libjpeg fatal message code to an mt_code. */
static int
jpeg_code_for(int msg_code)
{
	switch (msg_code)
	{
		case JERR_OUT_OF_MEMORY:
			return MT_ERR_NOMEM;
		case JERR_EMPTY_IMAGE:
			return MT_ERR_CORRUPT;
		case JERR_IMAGE_TOO_BIG:
			return MT_ERR_LIMIT;
		case JERR_BAD_PRECISION:
		case JERR_SOF_UNSUPPORTED:
		case JERR_CONVERSION_NOTIMPL:
		case JERR_NOT_COMPILED:
			return MT_ERR_UNSUPPORTED;
		default:
			return MT_ERR_CORRUPT;
	}
}

/* Fatal libjpeg error: remember the message and jump back to our setjmp. */
static void
jpeg_error_exit_cb(j_common_ptr cinfo)
{
	mt_jpeg_err *je = (mt_jpeg_err *) cinfo->err;

	(*cinfo->err->format_message) (cinfo, je->msg);
	je->code = jpeg_code_for(je->pub.msg_code);
	longjmp(je->jump, 1);
}

/*
 * Warnings (msg_level -1).  Those that mean the entropy-coded data is
 * damaged or cut short - libjpeg would go on and pad with gray - are fatal
 * for us; harmless ones (unknown JFIF revision, extraneous bytes between
 * markers, odd SOS parameters, bad ICC chunk) are counted and ignored.
 * Trace messages (level >= 0) are dropped.
 */
static void
jpeg_emit_message_cb(j_common_ptr cinfo, int msg_level)
{
	mt_jpeg_err *je = (mt_jpeg_err *) cinfo->err;

	if (msg_level >= 0)
		return;
	je->pub.num_warnings++;
	switch (je->pub.msg_code)
	{
		case JWRN_JPEG_EOF:
		case JWRN_HIT_MARKER:
		case JWRN_HUFF_BAD_CODE:
		case JWRN_ARITH_BAD_CODE:
		case JWRN_MUST_RESYNC:
		case JWRN_BOGUS_PROGRESSION:
			(*cinfo->err->format_message) (cinfo, je->msg);
			je->code = MT_ERR_CORRUPT;
			longjmp(je->jump, 1);
		default:
			break;
	}
}

/* libjpeg would print messages to stderr here; we print nothing. */
static void
jpeg_output_message_cb(j_common_ptr cinfo)
{
	(void) cinfo;
}

/* Called periodically while decoding: refuse absurd numbers of scans. */
static void
jpeg_progress_cb(j_common_ptr cinfo)
{
	mt_jpeg_err *je = (mt_jpeg_err *) cinfo->err;

	if (cinfo->is_decompressor &&
		((j_decompress_ptr) cinfo)->input_scan_number > MT_JPEG_MAX_SCANS)
	{
		snprintf(je->msg, sizeof(je->msg),
				 "more than %d scans in a progressive JPEG", MT_JPEG_MAX_SCANS);
		je->code = MT_ERR_CORRUPT;
		longjmp(je->jump, 1);
	}
}

/* Point cinfo at our silent error manager (before jpeg_create_decompress). */
static void
jpeg_init_err(struct jpeg_decompress_struct *cinfo, mt_jpeg_err *je)
{
	memset(je, 0, sizeof(*je));
	cinfo->err = jpeg_std_error(&je->pub);
	je->pub.error_exit = jpeg_error_exit_cb;
	je->pub.emit_message = jpeg_emit_message_cb;
	je->pub.output_message = jpeg_output_message_cb;
	je->code = MT_ERR_CORRUPT;
}

/* Turn what the error manager recorded into an mt_err. */
static int
jpeg_report(mt_jpeg_err *je, mt_err *err)
{
	switch (je->code)
	{
		case MT_ERR_NOMEM:
			mt_seterr(err, MT_ERR_NOMEM, "out of memory while decoding a JPEG image");
			break;
		case MT_ERR_LIMIT:
			mt_seterr(err, MT_ERR_LIMIT, "JPEG image has an unsupported size");
			break;
		case MT_ERR_UNSUPPORTED:
			mt_seterr(err, MT_ERR_UNSUPPORTED, "unsupported kind of JPEG image");
			break;
		default:
			mt_seterr(err, MT_ERR_CORRUPT, "corrupt or truncated JPEG image");
			break;
	}
	mt_setdetail(err, "libjpeg: %s.", je->msg);
	return je->code;
}

/* Header facts of a JPEG whose header jpeg_read_header has read. */
static void
jpeg_fill_info(struct jpeg_decompress_struct *cinfo, mt_image_info *info)
{
	info->format = "jpeg";
	info->width = (int) cinfo->image_width;
	info->height = (int) cinfo->image_height;
	info->channels = cinfo->num_components;
	info->bit_depth = cinfo->data_precision;
}

/* Read a JPEG header (no pixels). */
static int
jpeg_probe(const uint8_t *buf, size_t len, mt_image_info *info, mt_err *err)
{
	struct jpeg_decompress_struct cinfo;
	mt_jpeg_err je;

	if (len > (size_t) (unsigned long) -1)
		return mt_seterr(err, MT_ERR_LIMIT, "JPEG data is too long");
	memset(&cinfo, 0, sizeof(cinfo));
	jpeg_init_err(&cinfo, &je);
	if (setjmp(je.jump))
	{
		jpeg_destroy_decompress(&cinfo);
		return jpeg_report(&je, err);
	}
	jpeg_create_decompress(&cinfo);
	jpeg_mem_src(&cinfo, buf, (unsigned long) len);
	(void) jpeg_read_header(&cinfo, TRUE);
	jpeg_fill_info(&cinfo, info);
	jpeg_destroy_decompress(&cinfo);
	return MT_OK;
}

/* Decode a JPEG into a freshly allocated RGB float image. */
static int
jpeg_decode(const uint8_t *buf, size_t len, size_t max_pixels, mt_image *out,
			mt_err *err)
{
	struct jpeg_decompress_struct cinfo;
	struct jpeg_progress_mgr progress;
	mt_jpeg_err je;
	float	   *volatile pixels = NULL;
	JSAMPLE    *volatile row = NULL;
	float		lut8[256];
	int			rc;
	int			inverted;
	size_t		width,
				height,
				ncomp,
				x;

	if (len > (size_t) (unsigned long) -1)
		return mt_seterr(err, MT_ERR_LIMIT, "JPEG data is too long");
	memset(&cinfo, 0, sizeof(cinfo));
	memset(&progress, 0, sizeof(progress));
	jpeg_init_err(&cinfo, &je);
	if (setjmp(je.jump))
	{
		jpeg_destroy_decompress(&cinfo);
		mt_free(row);
		mt_free(pixels);
		return jpeg_report(&je, err);
	}
	jpeg_create_decompress(&cinfo);
	progress.progress_monitor = jpeg_progress_cb;
	cinfo.progress = &progress;
	jpeg_mem_src(&cinfo, buf, (unsigned long) len);
	(void) jpeg_read_header(&cinfo, TRUE);

	rc = check_dims("JPEG", cinfo.image_width, cinfo.image_height, max_pixels, err);
	if (rc != MT_OK)
	{
		jpeg_destroy_decompress(&cinfo);
		return rc;
	}

	switch (cinfo.jpeg_color_space)
	{
		case JCS_GRAYSCALE:
			cinfo.out_color_space = JCS_GRAYSCALE;
			break;
		case JCS_CMYK:
		case JCS_YCCK:
			cinfo.out_color_space = JCS_CMYK;	/* libjpeg undoes YCCK */
			break;
		default:
			cinfo.out_color_space = JCS_RGB;	/* errors if it cannot */
			break;
	}
	/* Adobe (Photoshop) CMYK JPEGs store inverted ink values, as PIL assumes. */
	inverted = cinfo.saw_Adobe_marker;

	jpeg_start_decompress(&cinfo);
	width = cinfo.output_width;
	height = cinfo.output_height;
	ncomp = (size_t) cinfo.output_components;
	if (width != cinfo.image_width || height != cinfo.image_height ||
		(ncomp != 1 && ncomp != 3 && ncomp != 4))
	{
		jpeg_destroy_decompress(&cinfo);
		return mt_seterr(err, MT_ERR_INTERNAL,
						 "libjpeg returned an unexpected output layout");
	}

	fill_lut8(lut8);
	pixels = alloc_pixels(width, height, err);
	row = (pixels != NULL) ? mt_malloc(width * ncomp) : NULL;
	if (row == NULL)
	{
		jpeg_destroy_decompress(&cinfo);
		mt_free(pixels);
		return mt_seterr(err, MT_ERR_NOMEM,
						 "out of memory for a %zu x %zu image", width, height);
	}

	while (cinfo.output_scanline < cinfo.output_height)
	{
		JSAMPROW	rows[1];
		float	   *dst = pixels + (size_t) cinfo.output_scanline * width * 3;
		const JSAMPLE *src = row;

		rows[0] = row;
		if (jpeg_read_scanlines(&cinfo, rows, 1) != 1)
		{
			/* cannot happen with a memory source, which never suspends */
			snprintf(je.msg, sizeof(je.msg), "decoder returned no scanline");
			je.code = MT_ERR_CORRUPT;
			longjmp(je.jump, 1);
		}
		if (ncomp == 1)
		{
			for (x = 0; x < width; x++, dst += 3)
				dst[0] = dst[1] = dst[2] = lut8[src[x]];
		}
		else if (ncomp == 3)
		{
			for (x = 0; x < width * 3; x++)
				dst[x] = lut8[src[x]];
		}
		else
		{
			/* CMYK -> RGB as PIL: R = (255 - C) * (255 - K) / 255 (ink values) */
			for (x = 0; x < width; x++, src += 4, dst += 3)
			{
				double		c = inverted ? src[0] : 255 - src[0];
				double		m = inverted ? src[1] : 255 - src[1];
				double		y = inverted ? src[2] : 255 - src[2];
				double		k = inverted ? src[3] : 255 - src[3];

				dst[0] = (float) (c * k / 65025.0);
				dst[1] = (float) (m * k / 65025.0);
				dst[2] = (float) (y * k / 65025.0);
			}
		}
	}

	/*
	 * No jpeg_finish_decompress: all pixels are in, and what follows (EOI)
	 * does not change them.
	 */
	jpeg_destroy_decompress(&cinfo);
	mt_free(row);
	out->width = (int) width;
	out->height = (int) height;
	out->data = pixels;
	return MT_OK;
}

/* ----------------------------------------------------------------- PNG -- */

/* Read a big-endian 32-bit number. */
static uint32_t
be32(const uint8_t *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
		((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

/*
 * Parse the IHDR chunk that must follow the signature, without libpng, so
 * sizes are checked before libpng allocates anything.  The CRC is left to
 * libpng (decode checks it).
 */
static int
png_parse_ihdr(const uint8_t *buf, size_t len, mt_image_info *info, mt_err *err)
{
	uint32_t	width,
				height;
	int			depth,
				ctype,
				channels;
	int			ok;

	if (len < 8 + 8 + 13)
		return mt_seterr(err, MT_ERR_CORRUPT, "PNG image is truncated before its header");
	if (be32(buf + 8) != 13 || memcmp(buf + 12, "IHDR", 4) != 0)
		return mt_seterr(err, MT_ERR_CORRUPT, "PNG image does not start with an IHDR chunk");
	width = be32(buf + 16);
	height = be32(buf + 20);
	depth = buf[24];
	ctype = buf[25];
	switch (ctype)
	{
		case 0:					/* gray */
			ok = (depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16);
			channels = 1;
			break;
		case 2:					/* RGB */
			ok = (depth == 8 || depth == 16);
			channels = 3;
			break;
		case 3:					/* palette: reported as RGB */
			ok = (depth == 1 || depth == 2 || depth == 4 || depth == 8);
			channels = 3;
			break;
		case 4:					/* gray + alpha */
			ok = (depth == 8 || depth == 16);
			channels = 2;
			break;
		case 6:					/* RGBA */
			ok = (depth == 8 || depth == 16);
			channels = 4;
			break;
		default:
			ok = 0;
			channels = 0;
			break;
	}
	if (!ok || buf[26] != 0 || buf[27] != 0 || buf[28] > 1)
	{
		mt_seterr(err, MT_ERR_CORRUPT, "PNG image has an invalid header");
		mt_setdetail(err, "IHDR has bit depth %d, color type %d, compression %d, filter %d, interlace %d.",
					 depth, ctype, buf[26], buf[27], buf[28]);
		return MT_ERR_CORRUPT;
	}
	if (width > 0x7fffffffU || height > 0x7fffffffU)
	{
		mt_seterr(err, MT_ERR_CORRUPT, "PNG image has an invalid header");
		mt_setdetail(err, "IHDR gives %u x %u pixels, beyond what PNG allows.",
					 (unsigned) width, (unsigned) height);
		return MT_ERR_CORRUPT;
	}
	info->format = "png";
	info->width = (int) width;
	info->height = (int) height;
	info->channels = channels;
	info->bit_depth = depth;
	return MT_OK;
}

/* Our libpng I/O and error state: the input buffer and the last message. */
typedef struct mt_png_io
{
	const uint8_t *buf;
	size_t		len;
	size_t		pos;
	char		msg[256];
} mt_png_io;

/* libpng read callback: copy from the memory buffer, error at its end. */
static void
png_read_cb(png_structp png, png_bytep data, size_t n)
{
	mt_png_io  *io = (mt_png_io *) png_get_io_ptr(png);

	if (n > io->len - io->pos)
		png_error(png, "unexpected end of PNG data");
	memcpy(data, io->buf + io->pos, n);
	io->pos += n;
}

/* libpng error callback: keep the message, jump back to our setjmp. */
static void
png_error_cb(png_structp png, png_const_charp msg)
{
	mt_png_io  *io = (mt_png_io *) png_get_error_ptr(png);

	if (io != NULL)
		snprintf(io->msg, sizeof(io->msg), "%s", msg ? msg : "unknown error");
	png_longjmp(png, 1);
}

/* libpng warning callback: say nothing. */
static void
png_warning_cb(png_structp png, png_const_charp msg)
{
	(void) png;
	(void) msg;
}

/* Convert one decoded PNG row (1-4 channels, 8/16 bits) to RGB floats. */
static void
png_convert_row(const uint8_t *src, float *dst, size_t width, int channels,
				int depth, const float *lut8)
{
	size_t		x;
	int			c;

	if (depth == 8)
	{
		for (x = 0; x < width; x++, src += channels, dst += 3)
		{
			if (channels <= 2)
				dst[0] = dst[1] = dst[2] = lut8[src[0]];
			else
				for (c = 0; c < 3; c++)
					dst[c] = lut8[src[c]];
		}
	}
	else
	{
		for (x = 0; x < width; x++, src += 2 * channels, dst += 3)
		{
			if (channels <= 2)
				dst[0] = dst[1] = dst[2] =
					(float) (((src[0] << 8) | src[1]) / 65535.0);
			else
				for (c = 0; c < 3; c++)
					dst[c] = (float) (((src[2 * c] << 8) | src[2 * c + 1]) / 65535.0);
		}
	}
}

/* Decode a PNG into a freshly allocated RGB float image. */
static int
png_decode(const uint8_t *buf, size_t len, size_t max_pixels, mt_image *out,
		   mt_err *err)
{
	mt_image_info hdr;
	mt_png_io	io;
	png_structp png;
	png_infop	pinfo;
	float	   *volatile pixels = NULL;
	uint8_t    *volatile raw = NULL;
	png_bytep  *volatile rowptrs = NULL;
	float		lut8[256];
	png_uint_32 pw,
				ph;
	int			depth,
				ctype,
				interlace,
				passes,
				channels,
				rc;
	size_t		width,
				height,
				rowbytes,
				y;

	rc = png_parse_ihdr(buf, len, &hdr, err);
	if (rc != MT_OK)
		return rc;
	rc = check_dims("PNG", (size_t) hdr.width, (size_t) hdr.height, max_pixels, err);
	if (rc != MT_OK)
		return rc;

	memset(&io, 0, sizeof(io));
	io.buf = buf;
	io.len = len;
	png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, png_error_cb,
								 png_warning_cb);
	if (png == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory creating a PNG decoder");
	pinfo = png_create_info_struct(png);
	if (pinfo == NULL)
	{
		png_destroy_read_struct(&png, NULL, NULL);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory creating a PNG decoder");
	}
	if (setjmp(png_jmpbuf(png)))
	{
		png_destroy_read_struct(&png, &pinfo, NULL);
		mt_free(rowptrs);
		mt_free(raw);
		mt_free(pixels);
		if (strstr(io.msg, "memory") != NULL)
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory while decoding a PNG image");
		else
			rc = mt_seterr(err, MT_ERR_CORRUPT, "corrupt or truncated PNG image");
		mt_setdetail(err, "libpng: %s.", io.msg);
		return rc;
	}
	png_set_read_fn(png, &io, png_read_cb);
	png_set_user_limits(png, MT_IMAGE_MAX_SIDE, MT_IMAGE_MAX_SIDE);
	png_set_chunk_malloc_max(png, MT_PNG_CHUNK_MAX);
#ifdef MT_FUZZING
	/* let fuzzer mutations reach past the checksums */
	png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
#ifdef PNG_IGNORE_ADLER32
	png_set_option(png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
#endif
#endif
	png_read_info(png, pinfo);
	png_get_IHDR(png, pinfo, &pw, &ph, &depth, &ctype, &interlace, NULL, NULL);
	if ((int) pw != hdr.width || (int) ph != hdr.height)
		png_error(png, "IHDR changed between reads");

	/* Expand to 8 or 16 bits per sample; no gamma, no compositing. */
	if (ctype == PNG_COLOR_TYPE_PALETTE)
		png_set_palette_to_rgb(png);
	if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8)
		png_set_expand_gray_1_2_4_to_8(png);
	passes = png_set_interlace_handling(png);
	png_read_update_info(png, pinfo);

	width = pw;
	height = ph;
	channels = png_get_channels(png, pinfo);
	depth = png_get_bit_depth(png, pinfo);
	rowbytes = png_get_rowbytes(png, pinfo);
	if (channels < 1 || channels > 4 || (depth != 8 && depth != 16) ||
		rowbytes != width * (size_t) channels * (size_t) (depth / 8))
		png_error(png, "unexpected row layout after transformations");

	fill_lut8(lut8);
	pixels = alloc_pixels(width, height, err);
	if (pixels == NULL)
		png_error(png, "out of memory for the pixel buffer");

	if (passes == 1)
	{
		/* one row at a time */
		raw = mt_malloc(rowbytes);
		if (raw == NULL)
			png_error(png, "out of memory for a row buffer");
		for (y = 0; y < height; y++)
		{
			png_read_row(png, raw, NULL);
			png_convert_row(raw, pixels + y * width * 3, width, channels, depth,
							lut8);
		}
	}
	else
	{
		/* interlaced: the passes fill the whole image in turn */
		size_t		total;

		if (!mt_mul_size(rowbytes, height, &total) ||
			(raw = mt_malloc(total)) == NULL ||
			(rowptrs = mt_calloc(height, sizeof(png_bytep))) == NULL)
			png_error(png, "out of memory for an interlaced image");
		for (y = 0; y < height; y++)
			rowptrs[y] = raw + y * rowbytes;
		png_read_image(png, rowptrs);
		for (y = 0; y < height; y++)
			png_convert_row(rowptrs[y], pixels + y * width * 3, width, channels,
							depth, lut8);
	}

	/* No png_read_end: what follows the image data cannot change it. */
	png_destroy_read_struct(&png, &pinfo, NULL);
	mt_free(rowptrs);
	mt_free(raw);
	out->width = (int) width;
	out->height = (int) height;
	out->data = pixels;
	return MT_OK;
}

/* ------------------------------------------------------------- public -- */

/* Read a JPEG/PNG header; a side of 0 is MT_ERR_CORRUPT, over MT_IMAGE_MAX_SIDE MT_ERR_LIMIT. */
int
mt_image_probe(const uint8_t *buf, size_t len, mt_image_info *info, mt_err *err)
{
	mt_image_info tmp;
	int			rc;

	memset(&tmp, 0, sizeof(tmp));
	if (buf == NULL || len == 0)
		return mt_seterr(err, MT_ERR_CORRUPT, "image data is empty");
	if (is_jpeg(buf, len))
		rc = jpeg_probe(buf, len, &tmp, err);
	else if (is_png(buf, len))
	{
		rc = png_parse_ihdr(buf, len, &tmp, err);
		if (rc == MT_OK)
			rc = check_dims("PNG", (size_t) tmp.width, (size_t) tmp.height,
							SIZE_MAX, err);
	}
	else
	{
		mt_seterr(err, MT_ERR_CORRUPT, "unrecognised image format");
		mt_setdetail(err, "Only JPEG and PNG images are supported.");
		return MT_ERR_CORRUPT;
	}
	if (rc == MT_OK && info != NULL)
		*info = tmp;
	return rc;
}

/* Decode a JPEG or PNG into RGB floats in [0, 1]. */
int
mt_image_decode(const uint8_t *buf, size_t len, size_t max_pixels,
				mt_image *out, mt_err *err)
{
	if (out == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output image given");
	out->width = 0;
	out->height = 0;
	out->data = NULL;
	if (buf == NULL || len == 0)
		return mt_seterr(err, MT_ERR_CORRUPT, "image data is empty");
	if (is_jpeg(buf, len))
		return jpeg_decode(buf, len, max_pixels, out, err);
	if (is_png(buf, len))
		return png_decode(buf, len, max_pixels, out, err);
	mt_seterr(err, MT_ERR_CORRUPT, "unrecognised image format");
	mt_setdetail(err, "Only JPEG and PNG images are supported.");
	return MT_ERR_CORRUPT;
}

/* Free the pixels of an image and mark it empty. */
void
mt_image_free(mt_image *img)
{
	if (img == NULL)
		return;
	mt_free(img->data);
	img->data = NULL;
	img->width = 0;
	img->height = 0;
}

/* ---------------------------------------------------------- resize -- */

/* Per-output-sample filter taps along one axis. */
typedef struct resize_axis
{
	int			ksize;			/* room for taps per output sample */
	int		   *first;			/* first input index, per output sample */
	int		   *count;			/* number of taps, per output sample */
	double	   *weights;		/* ksize weights per output sample */
} resize_axis;

/* The bilinear (triangle) filter with support 1. */
static double
triangle(double x)
{
	if (x < 0.0)
		x = -x;
	return x < 1.0 ? 1.0 - x : 0.0;
}

/* Free what resize_axis_init allocated. */
static void
resize_axis_free(resize_axis *ax)
{
	mt_free(ax->first);
	mt_free(ax->count);
	mt_free(ax->weights);
	ax->first = ax->count = NULL;
	ax->weights = NULL;
}

/*
 * Taps for resampling in_size samples to out_size, as PIL's BILINEAR does:
 * when shrinking the triangle is stretched by the scale (antialiasing);
 * each output's weights are normalised to sum to 1.
 */
static int
resize_axis_init(resize_axis *ax, int in_size, int out_size, mt_err *err)
{
	double		scale = (double) in_size / out_size;
	double		filterscale = scale < 1.0 ? 1.0 : scale;
	double		support = 1.0 * filterscale;
	size_t		nweights;
	int			i,
				j;

	memset(ax, 0, sizeof(*ax));
	ax->ksize = (int) ceil(support) * 2 + 1;
	if (!mt_mul_size((size_t) out_size, (size_t) ax->ksize, &nweights))
		return mt_seterr(err, MT_ERR_LIMIT, "resize filter is too large");
	ax->first = mt_calloc((size_t) out_size, sizeof(int));
	ax->count = mt_calloc((size_t) out_size, sizeof(int));
	ax->weights = mt_calloc(nweights, sizeof(double));
	if (ax->first == NULL || ax->count == NULL || ax->weights == NULL)
	{
		resize_axis_free(ax);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory for resize filter");
	}
	for (i = 0; i < out_size; i++)
	{
		double		center = (i + 0.5) * scale;
		double	   *k = ax->weights + (size_t) i * ax->ksize;
		double		total = 0.0;
		int			lo = (int) (center - support + 0.5);
		int			hi = (int) (center + support + 0.5);

		if (lo < 0)
			lo = 0;
		if (hi > in_size)
			hi = in_size;
		if (hi - lo > ax->ksize)
			hi = lo + ax->ksize;	/* cannot happen; keeps k in bounds */
		for (j = 0; j < hi - lo; j++)
		{
			k[j] = triangle((j + lo - center + 0.5) / filterscale);
			total += k[j];
		}
		if (total != 0.0)
			for (j = 0; j < hi - lo; j++)
				k[j] /= total;
		ax->first[i] = lo;
		ax->count[i] = hi > lo ? hi - lo : 0;
	}
	return MT_OK;
}

/* A pass's result as stored: as is, or (8-bit mode) PIL's floor(x + 1/2) clipped to 0..255. */
static inline float
pass_out(double x, int round8)
{
	if (!round8)
		return (float) x;
	x = floor(x + 0.5);
	return (float) (x < 0.0 ? 0.0 : (x > 255.0 ? 255.0 : x));
}

/* Horizontal pass over rows [y0, y1) of in, into tmp (out_w wide). */
static void
resize_horizontal(const float *in, int in_w, int y0, int y1,
				  const resize_axis *ax, int out_w, float *tmp, int round8)
{
	int			y,
				x,
				j;

	for (y = y0; y < y1; y++)
	{
		const float *src = in + (size_t) y * in_w * 3;
		float	   *dst = tmp + (size_t) (y - y0) * out_w * 3;

		for (x = 0; x < out_w; x++)
		{
			const double *k = ax->weights + (size_t) x * ax->ksize;
			const float *s = src + (size_t) ax->first[x] * 3;
			double		r = 0.0,
						g = 0.0,
						b = 0.0;

			for (j = 0; j < ax->count[x]; j++, s += 3)
			{
				r += s[0] * k[j];
				g += s[1] * k[j];
				b += s[2] * k[j];
			}
			dst[3 * x] = pass_out(r, round8);
			dst[3 * x + 1] = pass_out(g, round8);
			dst[3 * x + 2] = pass_out(b, round8);
		}
	}
}

/* Vertical pass: in holds rows starting at input row y0. */
static void
resize_vertical(const float *in, int w, int y0, const resize_axis *ax,
				int out_h, double *acc, float *out, int round8)
{
	size_t		rowlen = (size_t) w * 3;
	size_t		i;
	int			y,
				j;

	for (y = 0; y < out_h; y++)
	{
		const double *k = ax->weights + (size_t) y * ax->ksize;
		float	   *dst = out + (size_t) y * rowlen;

		for (i = 0; i < rowlen; i++)
			acc[i] = 0.0;
		for (j = 0; j < ax->count[y]; j++)
		{
			const float *src = in + (size_t) (ax->first[y] + j - y0) * rowlen;
			double		wj = k[j];

			for (i = 0; i < rowlen; i++)
				acc[i] += src[i] * wj;
		}
		for (i = 0; i < rowlen; i++)
			dst[i] = pass_out(acc[i], round8);
	}
}

/* PIL's 8-bit rounding of a pass's result on the 0..255 scale: floor(x + 1/2), clipped. */
static void
round_clip255(float *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
	{
		double		x = floor((double) v[i] + 0.5);

		v[i] = (float) (x < 0.0 ? 0.0 : (x > 255.0 ? 255.0 : x));
	}
}

/* PIL's 8-bit filter coefficients: each weight rounded to a multiple of 2^-22. */
static void
fixed_point_weights(resize_axis *ax, int n_out)
{
	const double one = (double) (1 << 22);

	for (size_t i = 0; i < (size_t) n_out * ax->ksize; i++)
	{
		double		w = ax->weights[i] * one;

		ax->weights[i] = (double) (int64_t) (w >= 0 ? w + 0.5 : w - 0.5) / one;
	}
}

/*
 * Resize like PIL's Image.resize(size, Image.BILINEAR): in float, or with
 * round8 as PIL does on an 8-bit image (rounding after each pass).
 */
static int
resize_impl(const mt_image *in, int out_w, int out_h, mt_image *out, int round8,
			mt_err *err)
{
	resize_axis hx,
				vy;
	float	   *pixels = NULL;
	float	   *tmp = NULL;
	float	   *scaled = NULL;
	const float *src = in ? in->data : NULL;
	double	   *acc = NULL;
	int			need_h,
				need_v,
				y0,
				y1,
				rc;

	if (out == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output image given");
	out->width = out->height = 0;
	out->data = NULL;
	if (in == NULL || in->data == NULL || in->width <= 0 || in->height <= 0)
		return mt_seterr(err, MT_ERR_INVALID, "cannot resize an empty image");
	if (out_w <= 0 || out_h <= 0 || out_w > MT_IMAGE_MAX_SIDE || out_h > MT_IMAGE_MAX_SIDE)
	{
		mt_seterr(err, MT_ERR_INVALID, "invalid resize target %d x %d", out_w, out_h);
		mt_setdetail(err, "Each side must be between 1 and %d.", MT_IMAGE_MAX_SIDE);
		return MT_ERR_INVALID;
	}
	if ((size_t) out_w * (size_t) out_h > MT_IMAGE_MAX_PIXELS)
		return mt_seterr(err, MT_ERR_LIMIT, "resize target %d x %d is too large",
						 out_w, out_h);

	pixels = alloc_pixels((size_t) out_w, (size_t) out_h, err);
	if (pixels == NULL)
		return MT_ERR_NOMEM;

	need_h = (out_w != in->width);
	need_v = (out_h != in->height);
	if (!need_h && !need_v)
	{
		memcpy(pixels, in->data, (size_t) out_w * out_h * 3 * sizeof(float));
		out->width = out_w;
		out->height = out_h;
		out->data = pixels;
		return MT_OK;
	}

	memset(&hx, 0, sizeof(hx));
	memset(&vy, 0, sizeof(vy));
	rc = MT_OK;
	if (need_h)
		rc = resize_axis_init(&hx, in->width, out_w, err);
	if (rc == MT_OK && need_v)
		rc = resize_axis_init(&vy, in->height, out_h, err);
	if (rc != MT_OK)
		goto done;
	if (round8)
	{
		/* PIL's 8-bit path: integer samples, fixed-point weights, rounding per pass */
		size_t		n = (size_t) in->width * in->height * 3;

		scaled = alloc_pixels((size_t) in->width, (size_t) in->height, err);
		if (scaled == NULL)
		{
			rc = MT_ERR_NOMEM;
			goto done;
		}
		for (size_t i = 0; i < n; i++)
			scaled[i] = in->data[i] * 255.0f;
		round_clip255(scaled, n);
		src = scaled;
		if (need_h)
			fixed_point_weights(&hx, out_w);
		if (need_v)
			fixed_point_weights(&vy, out_h);
	}

	/* rows of the input that the vertical pass will read */
	y0 = 0;
	y1 = in->height;
	if (need_v)
	{
		y0 = vy.first[0];
		y1 = vy.first[out_h - 1] + vy.count[out_h - 1];
	}

	if (need_h && need_v)
	{
		tmp = alloc_pixels((size_t) out_w, (size_t) (y1 - y0), err);
		acc = tmp ? mt_calloc((size_t) out_w * 3, sizeof(double)) : NULL;
		if (acc == NULL)
		{
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory while resizing");
			goto done;
		}
		resize_horizontal(src, in->width, y0, y1, &hx, out_w, tmp, round8);
		resize_vertical(tmp, out_w, y0, &vy, out_h, acc, pixels, round8);
	}
	else if (need_h)
		resize_horizontal(src, in->width, 0, in->height, &hx, out_w, pixels, round8);
	else
	{
		acc = mt_calloc((size_t) out_w * 3, sizeof(double));
		if (acc == NULL)
		{
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory while resizing");
			goto done;
		}
		resize_vertical(src, out_w, 0, &vy, out_h, acc, pixels, round8);
	}
	if (round8)
		for (size_t i = 0; i < (size_t) out_w * out_h * 3; i++)
			pixels[i] /= 255.0f;

done:
	mt_free(scaled);
	resize_axis_free(&hx);
	resize_axis_free(&vy);
	mt_free(tmp);
	mt_free(acc);
	if (rc != MT_OK)
	{
		mt_free(pixels);
		return rc;
	}
	out->width = out_w;
	out->height = out_h;
	out->data = pixels;
	return MT_OK;
}

int
mt_image_resize(const mt_image *in, int out_w, int out_h, mt_image *out, mt_err *err)
{
	return resize_impl(in, out_w, out_h, out, 0, err);
}

int
mt_image_resize_u8(const mt_image *in, int out_w, int out_h, mt_image *out, mt_err *err)
{
	return resize_impl(in, out_w, out_h, out, 1, err);
}

/* In place: x = (x - mean[c]) / std[c] for each of the 3 channels. */
void
mt_image_normalize(mt_image *img, const float mean[3], const float std[3])
{
	size_t		n,
				i;

	if (img == NULL || img->data == NULL || img->width <= 0 || img->height <= 0)
		return;
	n = (size_t) img->width * (size_t) img->height;
	for (i = 0; i < n; i++)
	{
		float	   *p = img->data + 3 * i;

		p[0] = (p[0] - mean[0]) / std[0];
		p[1] = (p[1] - mean[1]) / std[1];
		p[2] = (p[2] - mean[2]) / std[2];
	}
}

