/*
 * fuzz_pth.c - fuzz target for the .pth (torch.save zip + pickle) reader:
 * parse; on failure the error must be one of the expected kinds and *out
 * zeroed; on success every tensor must lie inside the converted data, be
 * found by name, have the byte count of its shape and dtype, and be read
 * end to end.  Each input is also wrapped, as data.pkl, into a valid
 * archive with three small storages (CRCs computed here), so that mutations
 * reach the unpickler instead of stopping at the archive's CRC check.
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
#include <zlib.h>

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
w16(uint8_t *p, unsigned v)
{
	p[0] = v & 0xFF;
	p[1] = (v >> 8) & 0xFF;
}

static void
w32(uint8_t *p, uint32_t v)
{
	w16(p, v & 0xFFFF);
	w16(p + 2, v >> 16);
}

/* A stored zip of n entries into out (big enough); returns its length. */
static size_t
make_zip(uint8_t *out, const char *const *names, const uint8_t *const *datas,
		 const size_t *lens, int n)
{
	size_t		pos = 0,
				lho[8],
				cd;

	for (int i = 0; i < n; i++)
	{
		size_t		nl = strlen(names[i]);
		uint32_t	crc = (uint32_t) crc32(0, datas[i], (uInt) lens[i]);

		lho[i] = pos;
		memset(out + pos, 0, 30);
		w32(out + pos, 0x04034b50);
		w32(out + pos + 14, crc);
		w32(out + pos + 18, (uint32_t) lens[i]);
		w32(out + pos + 22, (uint32_t) lens[i]);
		w16(out + pos + 26, (unsigned) nl);
		memcpy(out + pos + 30, names[i], nl);
		if (lens[i])
			memcpy(out + pos + 30 + nl, datas[i], lens[i]);
		pos += 30 + nl + lens[i];
	}
	cd = pos;
	for (int i = 0; i < n; i++)
	{
		size_t		nl = strlen(names[i]);

		memset(out + pos, 0, 46);
		w32(out + pos, 0x02014b50);
		w32(out + pos + 16, (uint32_t) crc32(0, datas[i], (uInt) lens[i]));
		w32(out + pos + 20, (uint32_t) lens[i]);
		w32(out + pos + 24, (uint32_t) lens[i]);
		w16(out + pos + 28, (unsigned) nl);
		w32(out + pos + 42, (uint32_t) lho[i]);
		memcpy(out + pos + 46, names[i], nl);
		pos += 46 + nl;
	}
	memset(out + pos, 0, 22);
	w32(out + pos, 0x06054b50);
	w16(out + pos + 8, (unsigned) n);
	w16(out + pos + 10, (unsigned) n);
	w32(out + pos + 12, (uint32_t) (pos - cd));
	w32(out + pos + 16, (uint32_t) cd);
	return pos + 22;
}

static void check_one(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const float f32[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
	static const uint16_t f16[4] = {0x3C00, 0xC000, 0x0001, 0x7C00};
	static const int64_t i64[1] = {7};
	const char *const names[5] = {"arc/data.pkl", "arc/data/0", "arc/data/1", "arc/data/2",
	"arc/version"};
	const uint8_t *datas[5] = {data, (const uint8_t *) f32, (const uint8_t *) f16,
	(const uint8_t *) i64, (const uint8_t *) "3\n"};
	size_t		lens[5] = {size, sizeof(f32), sizeof(f16), sizeof(i64), 2};
	uint8_t    *zip;

	check_one(data, size);
	if (size > (1u << 20))
		return 0;
	zip = malloc(size + 1024);
	if (zip == NULL)
		return 0;
	check_one(zip, make_zip(zip, names, datas, lens, 5));
	free(zip);
	return 0;
}

/* Parse and check the invariants. */
static void
check_one(const uint8_t *data, size_t size)
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
		return;
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
}
