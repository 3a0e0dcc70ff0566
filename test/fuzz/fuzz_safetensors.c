/*
 * fuzz_safetensors.c - fuzz target for the safetensors reader: parse; on
 * success look up every tensor and metadata key, check the layout
 * invariants, parse every metadata value as a float array, and write the
 * tensors back out with mt_st_serialize, which must give a file that
 * parses to the same tensors.  Each input is also tried with its length
 * prefix fixed up to end the header at its last '}'.
 *
 * libFuzzer (clang):
 *   clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       test/fuzz/fuzz_safetensors.c src/io/safetensors.c src/core/mt_common.c \
 *       -lm -o /tmp/fuzz_safetensors
 *   /tmp/fuzz_safetensors -max_len=65536 -rss_limit_mb=2048 CORPUS_DIR SEED_DIR
 * Replay with plain gcc (files or directories as arguments):
 *   gcc -std=gnu11 -g -O1 -fsanitize=address,undefined -Isrc \
 *       test/fuzz/fuzz_main.c test/fuzz/fuzz_safetensors.c src/io/safetensors.c \
 *       src/core/mt_common.c -lm -o /tmp/fuzz_safetensors_replay
 *   /tmp/fuzz_safetensors_replay CORPUS_DIR
 */
#include "io/safetensors.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_TENSORS 4096

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Write the parsed tensors back out and check the copy parses the same. */
static void
check_rewrite(const uint8_t *data, const mt_safetensors *st)
{
	static const char *names[FUZZ_MAX_TENSORS];
	static mt_dtype dtypes[FUZZ_MAX_TENSORS];
	static int	ndims[FUZZ_MAX_TENSORS];
	static int64_t shapes[FUZZ_MAX_TENSORS][MT_ST_MAX_DIMS];
	static const void *datas[FUZZ_MAX_TENSORS];
	mt_safetensors st2;
	uint8_t    *out = NULL;
	size_t		out_len = 0;
	mt_err		err;
	int			i;

	if (st->n_tensors > FUZZ_MAX_TENSORS)
		return;
	for (i = 0; i < st->n_tensors; i++)
	{
		names[i] = st->tensors[i].name;
		dtypes[i] = st->tensors[i].dtype;
		ndims[i] = st->tensors[i].ndim;
		memcpy(shapes[i], st->tensors[i].shape, sizeof(shapes[i]));
		datas[i] = data + st->tensors[i].offset;
	}
	if (mt_st_serialize(st->n_tensors, names, dtypes, ndims,
						(const int64_t (*)[MT_ST_MAX_DIMS]) shapes, datas,
						st->n_meta, (const char *const *) st->meta_keys,
						(const char *const *) st->meta_vals,
						&out, &out_len, &err) != MT_OK)
	{
		if (err.code == MT_ERR_NOMEM || err.code == MT_ERR_LIMIT)
			return;
		__builtin_trap();		/* whatever parses must be writable */
	}
	if (mt_st_parse(out, out_len, &st2, &err) != MT_OK)
		__builtin_trap();
	if (st2.n_tensors != st->n_tensors || st2.n_meta != st->n_meta)
		__builtin_trap();
	for (i = 0; i < st->n_tensors; i++)
	{
		const mt_st_tensor *a = &st->tensors[i];
		const mt_st_tensor *b = mt_st_find(&st2, a->name);

		if (b == NULL || b->dtype != a->dtype || b->ndim != a->ndim ||
			b->nbytes != a->nbytes ||
			memcmp(b->shape, a->shape, sizeof(int64_t) * a->ndim) != 0 ||
			memcmp(out + b->offset, data + a->offset, a->nbytes) != 0)
			__builtin_trap();
	}
	for (i = 0; i < st->n_meta; i++)
	{
		const char *v = mt_st_meta(&st2, st->meta_keys[i]);

		if (v == NULL || strcmp(v, st->meta_vals[i]) != 0)
			__builtin_trap();
	}
	mt_st_free(&st2);
	mt_free(out);
}

/* Parse, then check and use everything the parse returned. */
static void
check_one(const uint8_t *data, size_t size)
{
	mt_safetensors st;
	mt_err		err;
	size_t		end = 0;
	float		vals[16];
	int			i;

	if (mt_st_parse(data, size, &st, &err) != MT_OK)
	{
		if (err.code != MT_ERR_CORRUPT && err.code != MT_ERR_NOMEM)
			__builtin_trap();
		if (st.tensors != NULL || st.n_tensors != 0 || st.meta_keys != NULL)
			__builtin_trap();
		return;
	}
	for (i = 0; i < st.n_tensors; i++)
	{
		const mt_st_tensor *t = &st.tensors[i];
		const mt_st_tensor *found = mt_st_find(&st, t->name);
		volatile uint8_t sink = 0;

		if (found == NULL || strcmp(found->name, t->name) != 0)
			__builtin_trap();
		if (t->ndim < 0 || t->ndim > MT_ST_MAX_DIMS || mt_dtype_size(t->dtype) == 0)
			__builtin_trap();
		if (t->offset > size || t->nbytes > size - t->offset)
			__builtin_trap();
		if (i == 0)
			end = t->offset;
		if (t->offset != end)
			__builtin_trap();
		end = t->offset + t->nbytes;
		if (t->nbytes > 0)		/* touch the first and last byte */
			sink = data[t->offset] ^ data[t->offset + t->nbytes - 1];
		(void) sink;
	}
	if (st.n_tensors > 0 && end != size)
		__builtin_trap();
	for (i = 0; i < st.n_meta; i++)
	{
		const char *v = mt_st_meta(&st, st.meta_keys[i]);

		if (v == NULL)
			__builtin_trap();
		(void) mt_json_float_array(v, vals, 16);
	}
	check_rewrite(data, &st);
	mt_st_free(&st);
}

/*
 * One input as given, then again with its length prefix rewritten so that
 * the header ends at the last '}' (so mutations of the JSON are not all
 * lost to a stale length).
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t    *copy;
	size_t		p;
	int			i;

	check_one(data, size);
	for (p = size; p > 9 && data[p - 1] != '}'; p--)
		;
	if (p <= 9 || (copy = malloc(size)) == NULL)
		return 0;
	memcpy(copy, data, size);
	for (i = 0; i < 8; i++)
		copy[i] = (uint8_t) ((uint64_t) (p - 8) >> (8 * i));
	check_one(copy, size);
	free(copy);
	return 0;
}
