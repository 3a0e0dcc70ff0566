/*
 * fuzz_mask.c - fuzz target for the mask decoder: decode (at most 2048 x
 * 2048 pixels), then what training and the metrics do with a mask: class
 * conversion, nearest resize, overlap counts, and an encode/decode round
 * trip that must give the same values back.
 *
 * libFuzzer (clang):
 *   clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       test/fuzz/fuzz_mask.c src/io/mask.c src/io/image.c src/core/mt_common.c \
 *       -ljpeg -lpng -lz -lm -o /tmp/fuzz_mask
 * Replay with plain gcc: make fuzz && test/bin/fuzz_mask CORPUS_DIR
 */
#include "io/mask.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_MAX_PIXELS ((size_t) 2048 * 2048)

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input; trap on any inconsistency. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mt_mask		m,
				back,
				small;
	mt_err		err;
	uint8_t    *png;
	size_t		png_len;
	int64_t		inter,
				psum,
				tsum;
	int			rc;

	rc = mt_mask_decode(data, size, FUZZ_MAX_PIXELS, &m, &err);
	if (rc != MT_OK)
	{
		/* a failed decode leaves nothing behind and says why */
		if (m.data != NULL || (int) err.code != rc || err.msg[0] == '\0')
			__builtin_trap();
		return 0;
	}
	if (m.w <= 0 || m.h <= 0)
		__builtin_trap();

	/* the mask against itself: every foreground pixel overlaps */
	if (mt_mask_counts(&m, &m, -1, &inter, &psum, &tsum, &err) != MT_OK ||
		inter != psum || psum != tsum || psum > (int64_t) m.w * m.h)
		__builtin_trap();

	if (mt_mask_encode_png(m.data, m.w, m.h, &png, &png_len, &err) != MT_OK)
		__builtin_trap();
	if (mt_mask_decode(png, png_len, FUZZ_MAX_PIXELS, &back, &err) != MT_OK ||
		back.w != m.w || back.h != m.h ||
		memcmp(back.data, m.data, (size_t) m.w * m.h) != 0)
		__builtin_trap();
	mt_mask_free(&back);
	mt_free(png);

	if (mt_mask_resize_nearest(&m, 16, 16, &small, &err) != MT_OK)
		__builtin_trap();
	mt_mask_free(&small);

	/* binary conversion either succeeds with 0/1 values or names a pixel */
	rc = mt_mask_to_classes_auto(&m, 2, &err);
	if (rc == MT_OK)
	{
		for (size_t i = 0; i < (size_t) m.w * m.h; i++)
			if (m.data[i] > 1)
				__builtin_trap();
	}
	else if (rc != MT_ERR_INVALID || strstr(err.msg, "mask value") == NULL)
		__builtin_trap();
	mt_mask_free(&m);
	return 0;
}
