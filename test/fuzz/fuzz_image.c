/*
 * fuzz_image.c - fuzz target for the image decoders: probe, decode (at most
 * 2048 x 2048 pixels, to keep each run fast) and resize to 32x32 whatever
 * decodes, checking that probe and decode agree.
 *
 * libFuzzer (clang):
 *   clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       test/fuzz/fuzz_image.c src/io/image.c src/core/mt_common.c \
 *       -ljpeg -lpng -lz -lm -o /tmp/fuzz_image
 *   /tmp/fuzz_image -max_len=65536 -rss_limit_mb=2048 CORPUS_DIR SEED_DIR
 * Replay with plain gcc (files or directories as arguments):
 *   gcc -std=gnu11 -g -O1 -fsanitize=address,undefined -Isrc \
 *       test/fuzz/fuzz_main.c test/fuzz/fuzz_image.c src/io/image.c \
 *       src/core/mt_common.c -ljpeg -lpng -lz -lm -o /tmp/fuzz_image_replay
 *   /tmp/fuzz_image_replay CORPUS_DIR
 */
#include "io/image.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define FUZZ_MAX_PIXELS ((size_t) 2048 * 2048)

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: probe, decode, resize; trap on any inconsistency. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mt_image_info info;
	mt_image	img,
				small;
	mt_err		err;
	int			probed,
				rc;
	size_t		i;

	probed = mt_image_probe(data, size, &info, &err);
	rc = mt_image_decode(data, size, FUZZ_MAX_PIXELS, &img, &err);
	if (rc != MT_OK)
	{
		/* a failed decode leaves nothing behind and says why */
		if (img.data != NULL || (int) err.code != rc || err.msg[0] == '\0')
			__builtin_trap();
		return 0;
	}
	if (probed != MT_OK || info.width != img.width || info.height != img.height)
		__builtin_trap();
	for (i = 0; i < (size_t) img.width * img.height * 3; i++)
		if (!(img.data[i] >= 0.0f && img.data[i] <= 1.0f))
			__builtin_trap();
	if (mt_image_resize(&img, 32, 32, &small, &err) == MT_OK)
	{
		for (i = 0; i < 32 * 32 * 3; i++)
			if (!(small.data[i] >= -1e-6f && small.data[i] <= 1.0f + 1e-6f))
				__builtin_trap();
		mt_image_free(&small);
	}
	else
		__builtin_trap();
	mt_image_free(&img);
	return 0;
}
