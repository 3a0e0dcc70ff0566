/*
 * image.c - decode JPEG (libjpeg-turbo) and PNG (libpng 1.6) from memory into
 * RGB floats, resize with PIL's BILINEAR filter, normalise; encode gray PNG.
 *
 * The decoders deliver raw rows to a sink (mt_row_sink): the float RGB sink
 * here builds an mt_image, the one in mask.c a one-byte-per-pixel mask, and
 * all of libjpeg's and libpng's error handling stays in this file.
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

/*
 * Decode a JPEG, delivering 8-bit rows to sink: gray (1 channel), RGB (3) or
 * CMYK (4), or luminance only when the sink asks for it.
 */
static int
jpeg_decode(const uint8_t *buf, size_t len, size_t max_pixels,
			const mt_row_sink *sink, mt_err *err)
{
	struct jpeg_decompress_struct cinfo;
	struct jpeg_progress_mgr progress;
	mt_jpeg_err je;
	JSAMPLE    *volatile row = NULL;
	mt_row_layout layout;
	int			rc;
	int			inverted;
	size_t		width,
				height,
				ncomp;

	if (len > (size_t) (unsigned long) -1)
		return mt_seterr(err, MT_ERR_LIMIT, "JPEG data is too long");
	memset(&cinfo, 0, sizeof(cinfo));
	memset(&progress, 0, sizeof(progress));
	jpeg_init_err(&cinfo, &je);
	if (setjmp(je.jump))
	{
		jpeg_destroy_decompress(&cinfo);
		mt_free(row);
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

	if (sink->jpeg_gray)
		cinfo.out_color_space = JCS_GRAYSCALE;	/* errors for CMYK */
	else
	{
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
	}
	/* Adobe (Photoshop) CMYK JPEGs store inverted ink values, as PIL assumes. */
	inverted = cinfo.saw_Adobe_marker;

	/* DCT scaling: the largest reduction that keeps the size asked for */
	cinfo.scale_num = 1;
	cinfo.scale_denom = 1;
	if (sink->jpeg_min_w > 0 && sink->jpeg_min_h > 0)
		for (unsigned int d = 8; d > 1; d /= 2)
			if ((cinfo.image_width + d - 1) / d >= (JDIMENSION) sink->jpeg_min_w &&
				(cinfo.image_height + d - 1) / d >= (JDIMENSION) sink->jpeg_min_h)
			{
				cinfo.scale_denom = d;
				break;
			}

	jpeg_start_decompress(&cinfo);
	width = cinfo.output_width;
	height = cinfo.output_height;
	ncomp = (size_t) cinfo.output_components;
	if (width != (cinfo.image_width + cinfo.scale_denom - 1) / cinfo.scale_denom ||
		height != (cinfo.image_height + cinfo.scale_denom - 1) / cinfo.scale_denom ||
		(ncomp != 1 && ncomp != 3 && ncomp != 4))
	{
		jpeg_destroy_decompress(&cinfo);
		return mt_seterr(err, MT_ERR_INTERNAL,
						 "libjpeg returned an unexpected output layout");
	}

	memset(&layout, 0, sizeof(layout));
	layout.format = "jpeg";
	layout.width = (int) width;
	layout.height = (int) height;
	layout.channels = (int) ncomp;
	layout.depth = 8;
	layout.cmyk = ncomp == 4 ? (inverted ? 2 : 1) : 0;
	rc = sink->start(sink->ctx, &layout, err);
	if (rc != MT_OK)
	{
		jpeg_destroy_decompress(&cinfo);
		return rc;
	}
	row = mt_malloc(width * ncomp);
	if (row == NULL)
	{
		jpeg_destroy_decompress(&cinfo);
		return mt_seterr(err, MT_ERR_NOMEM,
						 "out of memory for a %zu x %zu image", width, height);
	}

	while (cinfo.output_scanline < cinfo.output_height)
	{
		JSAMPROW	rows[1];
		int			y = (int) cinfo.output_scanline;

		rows[0] = row;
		if (jpeg_read_scanlines(&cinfo, rows, 1) != 1)
		{
			/* cannot happen with a memory source, which never suspends */
			snprintf(je.msg, sizeof(je.msg), "decoder returned no scanline");
			je.code = MT_ERR_CORRUPT;
			longjmp(je.jump, 1);
		}
		rc = sink->row(sink->ctx, y, row, err);
		if (rc != MT_OK)
		{
			jpeg_destroy_decompress(&cinfo);
			mt_free(row);
			return rc;
		}
	}

	/*
	 * No jpeg_finish_decompress: all pixels are in, and what follows (EOI)
	 * does not change them.
	 */
	jpeg_destroy_decompress(&cinfo);
	mt_free(row);
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

/* Are all entries of the PNG's palette gray (r == g == b)? */
static int
png_palette_is_gray(png_structp png, png_infop pinfo)
{
	png_colorp	pal = NULL;
	int			n = 0;

	if (!(png_get_PLTE(png, pinfo, &pal, &n) & PNG_INFO_PLTE))
		return 1;
	for (int i = 0; i < n; i++)
		if (pal[i].red != pal[i].green || pal[i].red != pal[i].blue)
			return 0;
	return 1;
}

/*
 * Decode a PNG, delivering rows of 8- or 16-bit samples (1-4 channels) to
 * sink: low bit depths expanded to 8, palettes to RGB(A) unless the sink
 * wants the indices of a colour palette.
 */
static int
png_decode(const uint8_t *buf, size_t len, size_t max_pixels,
		   const mt_row_sink *sink, mt_err *err)
{
	mt_image_info hdr;
	mt_png_io	io;
	png_structp png;
	png_infop	pinfo;
	uint8_t    *volatile raw = NULL;
	png_bytep  *volatile rowptrs = NULL;
	mt_row_layout layout;
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
	memset(&layout, 0, sizeof(layout));
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
	{
		if (sink->palette_index && !png_palette_is_gray(png, pinfo))
		{
			png_set_packing(png);	/* 1, 2, 4-bit indices to one byte each */
			layout.palette_index = 1;
		}
		else
			png_set_palette_to_rgb(png);
	}
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
		rowbytes != width * (size_t) channels * (size_t) (depth / 8) ||
		(layout.palette_index && (channels != 1 || depth != 8)))
		png_error(png, "unexpected row layout after transformations");

	layout.format = "png";
	layout.width = (int) width;
	layout.height = (int) height;
	layout.channels = channels;
	layout.depth = depth;
	rc = sink->start(sink->ctx, &layout, err);
	if (rc != MT_OK)
	{
		png_destroy_read_struct(&png, &pinfo, NULL);
		return rc;
	}

	if (passes == 1)
	{
		/* one row at a time */
		raw = mt_malloc(rowbytes);
		if (raw == NULL)
			png_error(png, "out of memory for a row buffer");
		for (y = 0; y < height; y++)
		{
			png_read_row(png, raw, NULL);
			if ((rc = sink->row(sink->ctx, (int) y, raw, err)) != MT_OK)
				break;
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
			if ((rc = sink->row(sink->ctx, (int) y, rowptrs[y], err)) != MT_OK)
				break;
	}

	/* No png_read_end: what follows the image data cannot change it. */
	png_destroy_read_struct(&png, &pinfo, NULL);
	mt_free(rowptrs);
	mt_free(raw);
	return rc;
}

/* ------------------------------------------------------------ PNG write -- */

/* The growing output buffer of the PNG writer. */
typedef struct mt_png_out
{
	uint8_t    *data;
	size_t		len;
	size_t		cap;
} mt_png_out;

/* libpng write callback: append to the buffer, doubling it as needed. */
static void
png_write_cb(png_structp png, png_bytep d, size_t n)
{
	mt_png_out *o = (mt_png_out *) png_get_io_ptr(png);

	if (n > o->cap - o->len)
	{
		size_t		cap = o->cap ? o->cap : 4096;
		uint8_t    *p;

		while (cap - o->len < n)
			if (!mt_mul_size(cap, 2, &cap))
				png_error(png, "PNG output too large for memory");
		p = mt_malloc(cap);
		if (p == NULL)
			png_error(png, "out of memory for the PNG output");
		if (o->len > 0)
			memcpy(p, o->data, o->len);
		mt_free(o->data);
		o->data = p;
		o->cap = cap;
	}
	memcpy(o->data + o->len, d, n);
	o->len += n;
}

/* libpng flush callback: nothing to flush in memory. */
static void
png_flush_cb(png_structp png)
{
	(void) png;
}

/* Encode 8-bit gray samples as a non-interlaced PNG in memory. */
int
mt_png_encode_gray8(const uint8_t *pix, int w, int h, uint8_t **out,
					size_t *out_len, mt_err *err)
{
	mt_png_io	eio;			/* only its msg: the error callback's target */
	mt_png_out	ob;
	png_structp png;
	png_infop	pinfo;
	int			rc;

	if (out == NULL || out_len == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output buffer given");
	*out = NULL;
	*out_len = 0;
	if (pix == NULL || w <= 0 || h <= 0 || w > MT_IMAGE_MAX_SIDE || h > MT_IMAGE_MAX_SIDE)
	{
		mt_seterr(err, MT_ERR_INVALID, "cannot encode a %d x %d PNG", w, h);
		mt_setdetail(err, "Each side must be between 1 and %d.", MT_IMAGE_MAX_SIDE);
		return MT_ERR_INVALID;
	}
	memset(&eio, 0, sizeof(eio));
	memset(&ob, 0, sizeof(ob));
	png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &eio, png_error_cb,
								  png_warning_cb);
	if (png == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory creating a PNG encoder");
	pinfo = png_create_info_struct(png);
	if (pinfo == NULL)
	{
		png_destroy_write_struct(&png, NULL);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory creating a PNG encoder");
	}
	if (setjmp(png_jmpbuf(png)))
	{
		png_destroy_write_struct(&png, &pinfo);
		mt_free(ob.data);
		if (strstr(eio.msg, "memory") != NULL)
			rc = mt_seterr(err, MT_ERR_NOMEM, "out of memory while encoding a PNG image");
		else
			rc = mt_seterr(err, MT_ERR_INTERNAL, "could not encode a PNG image");
		mt_setdetail(err, "libpng: %s.", eio.msg);
		return rc;
	}
	png_set_write_fn(png, &ob, png_write_cb, png_flush_cb);
	png_set_IHDR(png, pinfo, (png_uint_32) w, (png_uint_32) h, 8, PNG_COLOR_TYPE_GRAY,
				 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
				 PNG_FILTER_TYPE_DEFAULT);
	png_write_info(png, pinfo);
	for (int y = 0; y < h; y++)
		png_write_row(png, (png_const_bytep) (pix + (size_t) y * w));
	png_write_end(png, NULL);
	png_destroy_write_struct(&png, &pinfo);
	*out = ob.data;
	*out_len = ob.len;
	return MT_OK;
}

/* ------------------------------------------------------ float RGB sink -- */

/* State of the sink that builds an mt_image (RGB floats in [0, 1]). */
typedef struct float_sink
{
	mt_row_layout layout;
	float	   *pixels;
	float		lut8[256];
	/*
	 * Normalisation folded into decoding: asked for with mean/std (and the
	 * size the image must have, 0 x 0 for any), done when the source is
	 * 8-bit, not CMYK, and of that size (lutn[c][v] = (v / 255 - mean[c]) /
	 * std[c], the same float operations as mt_image_normalize).
	 */
	const float *mean,
			   *std;
	int			want_w,
				want_h;
	int			normalized;
	float		lutn[3][256];
} float_sink;

static int
float_sink_start(void *ctx, const mt_row_layout *layout, mt_err *err)
{
	float_sink *fs = (float_sink *) ctx;

	fs->layout = *layout;
	fill_lut8(fs->lut8);
	fs->normalized = fs->mean != NULL && layout->depth == 8 && !layout->cmyk &&
		(fs->want_w <= 0 || (layout->width == fs->want_w && layout->height == fs->want_h));
	if (fs->normalized)
		for (int c = 0; c < 3; c++)
			for (int v = 0; v < 256; v++)
				fs->lutn[c][v] = (fs->lut8[v] - fs->mean[c]) / fs->std[c];
	fs->pixels = alloc_pixels((size_t) layout->width, (size_t) layout->height, err);
	return fs->pixels != NULL ? MT_OK : MT_ERR_NOMEM;
}

/* An 8-bit row, normalised as it is converted (float_sink.normalized). */
static void
float_sink_row_normalized(float_sink *fs, float *dst, const uint8_t *src)
{
	size_t		width = (size_t) fs->layout.width;
	int			channels = fs->layout.channels;
	const float *l0 = fs->lutn[0],
			   *l1 = fs->lutn[1],
			   *l2 = fs->lutn[2];
	/* gray (and gray+alpha) replicated; RGB(A) takes its first three samples */
	int			o1 = channels <= 2 ? 0 : 1,
				o2 = channels <= 2 ? 0 : 2;
	size_t		x;

	for (x = 0; x < width; x++, src += channels, dst += 3)
	{
		dst[0] = l0[src[0]];
		dst[1] = l1[src[o1]];
		dst[2] = l2[src[o2]];
	}
}

/*
 * One row to RGB floats: 8-bit samples / 255, 16-bit / 65535; gray (and
 * gray+alpha) replicated; alpha dropped; CMYK as PIL converts it.
 */
static int
float_sink_row(void *ctx, int y, const uint8_t *src, mt_err *err)
{
	float_sink *fs = (float_sink *) ctx;
	size_t		width = (size_t) fs->layout.width;
	int			channels = fs->layout.channels;
	float	   *dst = fs->pixels + (size_t) y * width * 3;
	const float *lut8 = fs->lut8;
	size_t		x;
	int			c;

	(void) err;
	if (fs->normalized)
		float_sink_row_normalized(fs, dst, src);
	else if (fs->layout.cmyk)
	{
		int			inverted = fs->layout.cmyk == 2;

		/* CMYK -> RGB as PIL: R = (255 - C) * (255 - K) / 255 (ink values) */
		for (x = 0; x < width; x++, src += 4, dst += 3)
		{
			double		cc = inverted ? src[0] : 255 - src[0];
			double		m = inverted ? src[1] : 255 - src[1];
			double		yy = inverted ? src[2] : 255 - src[2];
			double		k = inverted ? src[3] : 255 - src[3];

			dst[0] = (float) (cc * k / 65025.0);
			dst[1] = (float) (m * k / 65025.0);
			dst[2] = (float) (yy * k / 65025.0);
		}
	}
	else if (fs->layout.depth == 8 && channels == 3)
	{
		/* the common case as one straight loop over the samples */
		for (x = 0; x < 3 * width; x++)
			dst[x] = lut8[src[x]];
	}
	else if (fs->layout.depth == 8 && channels == 1)
	{
		for (x = 0; x < width; x++, dst += 3)
			dst[0] = dst[1] = dst[2] = lut8[src[x]];
	}
	else if (fs->layout.depth == 8)
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
	return mt_image_decode_scaled(buf, len, max_pixels, 0, 0, out, err);
}

int
mt_image_decode_scaled(const uint8_t *buf, size_t len, size_t max_pixels,
					   int min_w, int min_h, mt_image *out, mt_err *err)
{
	return mt_image_decode_normalized(buf, len, max_pixels, min_w, min_h,
									  0, 0, NULL, NULL, out, NULL, err);
}

int
mt_image_decode_normalized(const uint8_t *buf, size_t len, size_t max_pixels,
						   int min_w, int min_h, int want_w, int want_h,
						   const float mean[3], const float std[3],
						   mt_image *out, int *normalized, mt_err *err)
{
	float_sink	fs;
	mt_row_sink sink;
	int			rc;

	if (normalized != NULL)
		*normalized = 0;
	if (out == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output image given");
	out->width = 0;
	out->height = 0;
	out->data = NULL;
	if (buf == NULL || len == 0)
		return mt_seterr(err, MT_ERR_CORRUPT, "image data is empty");
	memset(&fs, 0, sizeof(fs));
	memset(&sink, 0, sizeof(sink));
	if (mean != NULL && std != NULL && normalized != NULL)
	{
		fs.mean = mean;
		fs.std = std;
		fs.want_w = want_w;
		fs.want_h = want_h;
	}
	sink.start = float_sink_start;
	sink.row = float_sink_row;
	sink.ctx = &fs;
	sink.jpeg_min_w = min_w;
	sink.jpeg_min_h = min_h;
	rc = mt_image_decode_rows(buf, len, max_pixels, &sink, err);
	if (rc != MT_OK)
	{
		mt_free(fs.pixels);
		return rc;
	}
	out->width = fs.layout.width;
	out->height = fs.layout.height;
	out->data = fs.pixels;
	if (normalized != NULL)
		*normalized = fs.normalized;
	return MT_OK;
}

/* Decode a JPEG or PNG into a sink's rows. */
int
mt_image_decode_rows(const uint8_t *buf, size_t len, size_t max_pixels,
					 const mt_row_sink *sink, mt_err *err)
{
	if (sink == NULL || sink->start == NULL || sink->row == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no row sink given");
	if (buf == NULL || len == 0)
		return mt_seterr(err, MT_ERR_CORRUPT, "image data is empty");
	if (is_jpeg(buf, len))
		return jpeg_decode(buf, len, max_pixels, sink, err);
	if (is_png(buf, len))
		return png_decode(buf, len, max_pixels, sink, err);
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

/*
 * In place: x = (x - mean[c]) / std[c] for each of the 3 channels.  The
 * interleaved channels repeat every 48 floats (16 pixels), so the loop runs
 * over blocks of 48 against 48-entry copies of mean and std, which the
 * compiler vectorises; the arithmetic per value is the same subtraction and
 * division (torchvision's Normalize), so the results are unchanged.
 */
void
mt_image_normalize(mt_image *img, const float mean[3], const float std[3])
{
	float		m[48],
				s[48];
	size_t		len,
				i = 0;
	float	   *p;

	if (img == NULL || img->data == NULL || img->width <= 0 || img->height <= 0)
		return;
	len = (size_t) img->width * (size_t) img->height * 3;
	p = img->data;
	for (int j = 0; j < 48; j++)
	{
		m[j] = mean[j % 3];
		s[j] = std[j % 3];
	}
	for (; i + 48 <= len; i += 48)
		for (int j = 0; j < 48; j++)
			p[i + j] = (p[i + j] - m[j]) / s[j];
	for (; i < len; i++)
		p[i] = (p[i] - mean[i % 3]) / std[i % 3];
}

