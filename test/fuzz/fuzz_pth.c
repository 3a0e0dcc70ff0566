/*
 * fuzz_pth.c - fuzz target for the .pth (torch.save zip + pickle) reader:
 * parse; on failure the error must be one of the expected kinds and *out
 * zeroed; on success every tensor must lie inside the converted data, be
 * found by name, have the byte count of its shape and dtype, and be read
 * end to end.
 *
 * libFuzzer (clang):
 *   clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       test/fuzz/fuzz_pth.c src/io/pth.c src/io/safetensors.c src/core/mt_common.c \
 *       -lz -lm -o /tmp/fuzz_pth
 *   /tmp/fuzz_pth -max_len=65536 -rss_limit_mb=2048 CORPUS_DIR SEED_DIR
 * Replay with plain gcc: make fuzz && test/bin/fuzz_pth CORPUS_DIR
 */
#include "io/pth.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mt_pth		p;
	mt_pth		zero;
	mt_err		err;

	memset(&zero, 0, sizeof(zero));
	if (mt_pth_parse(data, size, &p, &err) != MT_OK)
	{
		if (err.code != MT_ERR_CORRUPT && err.code != MT_ERR_UNSUPPORTED &&
			err.code != MT_ERR_LIMIT && err.code != MT_ERR_NOMEM)
			__builtin_trap();
		if (memcmp(&p, &zero, sizeof(p)) != 0 || err.msg[0] == '\0')
			__builtin_trap();
		return 0;
	}
	for (int i = 0; i < p.st.n_tensors; i++)
	{
		const mt_st_tensor *t = &p.st.tensors[i];
		size_t		n = t->dtype == MT_I64 ? 8 : 4;
		volatile uint8_t sink = 0;

		if (t->dtype != MT_F32 && t->dtype != MT_I64)
			__builtin_trap();
		if (t->ndim < 0 || t->ndim > MT_ST_MAX_DIMS || t->name[0] == '\0')
			__builtin_trap();
		for (int d = 0; d < t->ndim; d++)
			n *= (size_t) t->shape[d];
		if (n != t->nbytes || t->offset > p.data_len || t->nbytes > p.data_len - t->offset)
			__builtin_trap();
		if (mt_st_find(&p.st, t->name) != t)
			__builtin_trap();
		for (size_t k = 0; k < t->nbytes; k++)
			sink ^= p.data[t->offset + k];
		(void) sink;
	}
	mt_pth_free(&p);
	return 0;
}
