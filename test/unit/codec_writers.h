/*
 * codec_writers.h - PNG and JPEG encoders for unit tests (libpng's and
 * libjpeg's write APIs into memory), shared by test_image.c and test_mask.c.
 */
#ifndef MT_CODEC_WRITERS_H
#define MT_CODEC_WRITERS_H

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

/* A growable byte buffer for the PNG writer. */
typedef struct membuf
{
	uint8_t    *data;
	size_t		len;
	size_t		cap;
} membuf;

/* libpng write callback appending to a membuf. */
static inline void
membuf_write(png_structp png, png_bytep d, size_t n)
{
	membuf	   *m = (membuf *) png_get_io_ptr(png);

	if (m->len + n > m->cap)
	{
		size_t		cap = (m->len + n) * 2 + 64;
		uint8_t    *p = realloc(m->data, cap);

		if (p == NULL)
			png_error(png, "test writer out of memory");
		m->data = p;
		m->cap = cap;
	}
	memcpy(m->data + m->len, d, n);
	m->len += n;
}

/* libpng flush callback (nothing to do). */
static inline void
membuf_flush(png_structp png)
{
	(void) png;
}

/* Samples per pixel of a PNG colour type. */
static inline int
png_nch(int ctype)
{
	switch (ctype)
	{
		case PNG_COLOR_TYPE_GRAY:
		case PNG_COLOR_TYPE_PALETTE:
			return 1;
		case PNG_COLOR_TYPE_GRAY_ALPHA:
			return 2;
		case PNG_COLOR_TYPE_RGB:
			return 3;
		default:
			return 4;
	}
}

/*
 * Encode a PNG in memory with libpng's write API.  s holds w*h*nch sample
 * values (palette indices for palette images), row-major.
 */
static inline uint8_t *
make_png(int w, int h, int ctype, int depth, int interlace, const uint16_t *s,
		 const png_color *pal, int npal, const uint8_t *trns, int ntrns,
		 png_color_16 *tcolor, size_t *len)
{
	int			nch = png_nch(ctype);
	size_t		rowbytes = ((size_t) w * nch * depth + 7) / 8;
	uint8_t    *raw = calloc((size_t) h, rowbytes);
	png_bytep  *rows = calloc((size_t) h, sizeof(png_bytep));
	membuf		mb = {NULL, 0, 0};
	png_structp png;
	png_infop	info;
	int			x,
				y;

	for (y = 0; y < h; y++)
	{
		uint8_t    *row = raw + y * rowbytes;

		rows[y] = row;
		for (x = 0; x < w * nch; x++)
		{
			unsigned	v = s[(size_t) y * w * nch + x];

			if (depth == 16)
			{
				row[2 * x] = (uint8_t) (v >> 8);
				row[2 * x + 1] = (uint8_t) v;
			}
			else if (depth == 8)
				row[x] = (uint8_t) v;
			else
			{
				int			pos = x * depth;

				row[pos / 8] |= (uint8_t) (v << (8 - depth - pos % 8));
			}
		}
	}
	png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
	info = png_create_info_struct(png);
	if (setjmp(png_jmpbuf(png)))
	{
		png_destroy_write_struct(&png, &info);
		free(raw);
		free(rows);
		free(mb.data);
		return NULL;
	}
	png_set_write_fn(png, &mb, membuf_write, membuf_flush);
	png_set_IHDR(png, info, w, h, depth, ctype,
				 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
				 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
	if (pal != NULL)
		png_set_PLTE(png, info, pal, npal);
	if (trns != NULL || tcolor != NULL)
		png_set_tRNS(png, info, trns, ntrns, tcolor);
	png_write_info(png, info);
	png_write_image(png, rows);
	png_write_end(png, NULL);
	png_destroy_write_struct(&png, &info);
	free(raw);
	free(rows);
	*len = mb.len;
	return mb.data;
}

/*
 * Encode a JPEG in memory.  jpeg_space JCS_UNKNOWN keeps libjpeg's default
 * for in_space.  The result is malloc'd by libjpeg: free() it.
 */
static inline uint8_t *
make_jpeg(int w, int h, int ncomp, J_COLOR_SPACE in_space,
		  J_COLOR_SPACE jpeg_space, const uint8_t *pix, int quality,
		  size_t *len)
{
	struct jpeg_compress_struct c;
	struct jpeg_error_mgr jerr;
	unsigned char *out = NULL;
	unsigned long outsize = 0;
	int			y;

	c.err = jpeg_std_error(&jerr);
	jpeg_create_compress(&c);
	jpeg_mem_dest(&c, &out, &outsize);
	c.image_width = (JDIMENSION) w;
	c.image_height = (JDIMENSION) h;
	c.input_components = ncomp;
	c.in_color_space = in_space;
	jpeg_set_defaults(&c);
	if (jpeg_space != JCS_UNKNOWN)
		jpeg_set_colorspace(&c, jpeg_space);
	jpeg_set_quality(&c, quality, TRUE);
	jpeg_start_compress(&c, TRUE);
	for (y = 0; y < h; y++)
	{
		JSAMPROW	row = (JSAMPROW) (pix + (size_t) y * w * ncomp);

		jpeg_write_scanlines(&c, &row, 1);
	}
	jpeg_finish_compress(&c);
	jpeg_destroy_compress(&c);
	*len = outsize;
	return out;
}

#endif
