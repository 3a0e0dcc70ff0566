/*
 * test_pth.c - unit tests of the .pth reader on crafted archives: a strict
 * zip reader (truncation, bad offsets, overlapping entries, compressed or
 * encrypted entries, CRC) and the restricted unpickler (forbidden globals,
 * malformed and refused opcodes, stack and MARK limits, storage and view
 * bounds, huge sizes), plus every allocation failing in turn.
 *
 *   make test/bin/test_pth && test/bin/test_pth
 */
#include "io/pth.h"
#include "mt_test.h"
#include "count_alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ------------------------------------------------------- byte builder */

typedef struct bb
{
	uint8_t    *b;
	size_t		n,
				cap;
} bb;

static void
put(bb *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (b->n + n > b->cap)
	{
		b->cap = (b->n + n) * 2 + 64;
		b->b = realloc(b->b, b->cap);
	}
	memcpy(b->b + b->n, p, n);
	b->n += n;
}

static void
put8(bb *b, unsigned v)
{
	uint8_t		c = (uint8_t) v;

	put(b, &c, 1);
}

static void
put16(bb *b, unsigned v)
{
	put8(b, v & 0xFF);
	put8(b, (v >> 8) & 0xFF);
}

static void
put32(bb *b, uint32_t v)
{
	put16(b, v & 0xFFFF);
	put16(b, v >> 16);
}

static void
puts_(bb *b, const char *s)
{
	put(b, s, strlen(s));
}

/* ------------------------------------------------------- zip builder */

typedef struct zent
{
	const char *name;
	const uint8_t *data;
	size_t		len;
} zent;

/* Offsets of interesting fields, for corrupting them afterwards. */
typedef struct zinfo
{
	size_t		lho[8];
	size_t		cen[8];
	size_t		cd_off;
	size_t		eocd;
} zinfo;

static void
put64(bb *b, uint64_t v)
{
	put32(b, (uint32_t) v);
	put32(b, (uint32_t) (v >> 32));
}

/*
 * A stored zip of n entries, as torch.save lays it out; with z64, the
 * central directory's sizes and offsets and the end record are saturated
 * and the values are in zip64 extra fields and zip64 end records.
 */
static uint8_t *
make_zip_ex(const zent *e, int n, size_t *len, zinfo *zi, int z64)
{
	bb			b = {0};
	zinfo		dummy;

	if (zi == NULL)
		zi = &dummy;
	for (int i = 0; i < n; i++)
	{
		zi->lho[i] = b.n;
		put32(&b, 0x04034b50);
		put16(&b, 20);
		put16(&b, 0);
		put16(&b, 0);			/* stored */
		put32(&b, 0);
		put32(&b, (uint32_t) crc32(0, e[i].data, (uInt) e[i].len));
		put32(&b, (uint32_t) e[i].len);
		put32(&b, (uint32_t) e[i].len);
		put16(&b, (unsigned) strlen(e[i].name));
		put16(&b, 0);
		puts_(&b, e[i].name);
		put(&b, e[i].data, e[i].len);
	}
	zi->cd_off = b.n;
	for (int i = 0; i < n; i++)
	{
		zi->cen[i] = b.n;
		put32(&b, 0x02014b50);
		put16(&b, 20);
		put16(&b, 20);
		put16(&b, 0);
		put16(&b, 0);
		put32(&b, 0);
		put32(&b, (uint32_t) crc32(0, e[i].data, (uInt) e[i].len));
		put32(&b, z64 ? 0xFFFFFFFFu : (uint32_t) e[i].len);
		put32(&b, z64 ? 0xFFFFFFFFu : (uint32_t) e[i].len);
		put16(&b, (unsigned) strlen(e[i].name));
		put16(&b, z64 ? 28 : 0);
		put16(&b, 0);
		put16(&b, 0);
		put16(&b, 0);
		put32(&b, 0);
		put32(&b, z64 ? 0xFFFFFFFFu : (uint32_t) zi->lho[i]);
		puts_(&b, e[i].name);
		if (z64)
		{
			put16(&b, 1);
			put16(&b, 24);
			put64(&b, e[i].len);
			put64(&b, e[i].len);
			put64(&b, zi->lho[i]);
		}
	}
	zi->eocd = b.n;
	if (z64)
	{
		size_t		rec = b.n;

		put32(&b, 0x06064b50);
		put64(&b, 44);
		put16(&b, 45);
		put16(&b, 45);
		put32(&b, 0);
		put32(&b, 0);
		put64(&b, (uint64_t) n);
		put64(&b, (uint64_t) n);
		put64(&b, rec - zi->cd_off);
		put64(&b, zi->cd_off);
		put32(&b, 0x07064b50);
		put32(&b, 0);
		put64(&b, rec);
		put32(&b, 1);
		zi->eocd = b.n;
	}
	put32(&b, 0x06054b50);
	put16(&b, 0);
	put16(&b, 0);
	put16(&b, z64 ? 0xFFFF : (unsigned) n);
	put16(&b, z64 ? 0xFFFF : (unsigned) n);
	put32(&b, z64 ? 0xFFFFFFFFu : (uint32_t) (zi->eocd - zi->cd_off));
	put32(&b, z64 ? 0xFFFFFFFFu : (uint32_t) zi->cd_off);
	put16(&b, 0);
	*len = b.n;
	return b.b;
}

static uint8_t *
make_zip(const zent *e, int n, size_t *len, zinfo *zi)
{
	return make_zip_ex(e, n, len, zi, 0);
}

static void
set32(uint8_t *p, uint32_t v)
{
	p[0] = v & 0xFF;
	p[1] = (v >> 8) & 0xFF;
	p[2] = (v >> 16) & 0xFF;
	p[3] = v >> 24;
}

/* ------------------------------------------------------- pickle builder */

static void
p_str(bb *b, const char *s)
{
	put8(b, 'X');
	put32(b, (uint32_t) strlen(s));
	puts_(b, s);
}

static void
p_int(bb *b, int32_t v)
{
	put8(b, 'J');
	put32(b, (uint32_t) v);
}

static void
p_global(bb *b, const char *mod, const char *name)
{
	put8(b, 'c');
	puts_(b, mod);
	put8(b, '\n');
	puts_(b, name);
	put8(b, '\n');
}

/* _rebuild_tensor_v2(storage(type, key, numel), offset, shape, stride, False, OrderedDict()) */
static void
p_tensor(bb *b, const char *type, const char *key, int32_t numel, int32_t offset,
		 int nd, const int32_t *shape, const int32_t *stride)
{
	p_global(b, "torch._utils", "_rebuild_tensor_v2");
	put8(b, '(');
	put8(b, '(');
	p_str(b, "storage");
	p_global(b, "torch", type);
	p_str(b, key);
	p_str(b, "cpu");
	p_int(b, numel);
	put8(b, 't');
	put8(b, 'Q');
	p_int(b, offset);
	put8(b, '(');
	for (int i = 0; i < nd; i++)
		p_int(b, shape[i]);
	put8(b, 't');
	put8(b, '(');
	for (int i = 0; i < nd; i++)
		p_int(b, stride[i]);
	put8(b, 't');
	put8(b, 0x89);
	p_global(b, "collections", "OrderedDict");
	put8(b, ')');
	put8(b, 'R');
	put8(b, 't');
	put8(b, 'R');
}

static void
p_begin_dict(bb *b)
{
	put8(b, 0x80);
	put8(b, 2);
	p_global(b, "collections", "OrderedDict");
	put8(b, ')');
	put8(b, 'R');
	put8(b, 'q');
	put8(b, 0);
	put8(b, '(');
}

static void
p_end_dict(bb *b)
{
	put8(b, 'u');
	put8(b, '.');
}

/* An archive of one pickle and up to 3 storages "0", "1", "2". */
static uint8_t *
make_pth(const bb *pkl, const uint8_t *s0, size_t n0, const uint8_t *s1, size_t n1,
		 size_t *len, zinfo *zi)
{
	zent		e[5];
	int			n = 0;

	e[n++] = (zent) {"arc/data.pkl", pkl->b, pkl->n};
	if (s0)
		e[n++] = (zent) {"arc/data/0", s0, n0};
	if (s1)
		e[n++] = (zent) {"arc/data/1", s1, n1};
	e[n++] = (zent) {"arc/version", (const uint8_t *) "3\n", 2};
	return make_zip(e, n, len, zi);
}

static int
parse_code(const uint8_t *buf, size_t len, mt_err *err)
{
	mt_pth		p;
	int			rc = mt_pth_parse(buf, len, &p, err);

	if (rc == MT_OK)
		mt_pth_free(&p);
	return rc;
}

/* Expect an error of the given code whose message holds want. */
static void
expect_err(const uint8_t *buf, size_t len, int code, const char *want, const char *label)
{
	mt_err		err;
	int			rc = parse_code(buf, len, &err);

	CHECK(rc == code && (want == NULL || strstr(err.msg, want) != NULL),
		  "%s: rc %d, want %d with \"%s\": %s", label, rc, code, want ? want : "", err.msg);
}

static float storage0[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

/* A 3x4 float tensor "w", its transpose "wt", a row, and a half tensor. */
static uint8_t *
good_file(size_t *len, zinfo *zi, const char *prefix)
{
	bb			pkl = {0};
	int32_t		s34[] = {3, 4},
				st34[] = {4, 1},
				s43[] = {4, 3},
				st43[] = {1, 4},
				s4[] = {4},
				st1[] = {1},
				s2[] = {2};
	static uint16_t half[2] = {0x3C00, 0xC000};	/* 1, -2 */
	char		name[64];
	uint8_t    *out;

	p_begin_dict(&pkl);
	snprintf(name, sizeof(name), "%sw", prefix);
	p_str(&pkl, name);
	p_tensor(&pkl, "FloatStorage", "0", 12, 0, 2, s34, st34);
	snprintf(name, sizeof(name), "%swt", prefix);
	p_str(&pkl, name);
	p_tensor(&pkl, "FloatStorage", "0", 12, 0, 2, s43, st43);
	snprintf(name, sizeof(name), "%srow", prefix);
	p_str(&pkl, name);
	p_tensor(&pkl, "FloatStorage", "0", 12, 8, 1, s4, st1);
	snprintf(name, sizeof(name), "%sh", prefix);
	p_str(&pkl, name);
	p_tensor(&pkl, "HalfStorage", "1", 2, 0, 1, s2, st1);
	p_end_dict(&pkl);
	out = make_pth(&pkl, (const uint8_t *) storage0, sizeof(storage0),
				   (const uint8_t *) half, sizeof(half), len, zi);
	free(pkl.b);
	return out;
}

static const float *
tensor_f32(const mt_pth *p, const char *name)
{
	const mt_st_tensor *t = mt_st_find(&p->st, name);

	return t ? (const float *) (p->data + t->offset) : NULL;
}

static void
test_valid(void)
{
	size_t		len;
	uint8_t    *buf = good_file(&len, NULL, "");
	mt_pth		p;
	mt_err		err;
	int			rc = mt_pth_parse(buf, len, &p, &err);

	CHECK(rc == MT_OK, "good file: %s", err.msg);
	if (rc == MT_OK)
	{
		const float *w = tensor_f32(&p, "w"),
				   *wt = tensor_f32(&p, "wt"),
				   *row = tensor_f32(&p, "row"),
				   *h = tensor_f32(&p, "h");
		int			ok = w && wt && row && h;

		CHECK(p.st.n_tensors == 4 && p.stripped_prefix == 0, "4 tensors");
		CHECK(strcmp(p.st.tensors[0].name, "w") == 0 && strcmp(p.st.tensors[3].name, "h") == 0,
			  "state_dict order kept");
		for (int i = 0; ok && i < 3; i++)
			for (int j = 0; j < 4; j++)
			{
				ok &= (w[i * 4 + j] == (float) (i * 4 + j));
				ok &= (wt[j * 3 + i] == (float) (i * 4 + j));	/* gathered transpose */
			}
		CHECK(ok, "w and its transposed view");
		CHECK(row && row[0] == 8 && row[3] == 11, "view at storage offset 8");
		CHECK(h && h[0] == 1.0f && h[1] == -2.0f, "half converted to float32");
		CHECK(mt_st_find(&p.st, "wt")->shape[0] == 4 && mt_st_find(&p.st, "wt")->dtype == MT_F32,
			  "shape and dtype");
		mt_pth_free(&p);
	}
	free(buf);

	/* module. prefix removed when every name has it */
	buf = good_file(&len, NULL, "module.");
	rc = mt_pth_parse(buf, len, &p, &err);
	CHECK(rc == MT_OK && p.stripped_prefix && mt_st_find(&p.st, "wt") != NULL,
		  "module. prefix stripped: %s", err.msg);
	if (rc == MT_OK)
		mt_pth_free(&p);
	free(buf);

	/* every truncation fails cleanly */
	buf = good_file(&len, NULL, "");
	{
		int			bad = 0;

		for (size_t k = 0; k < len; k++)
			if (parse_code(buf, k, &err) == MT_OK)
				bad++;
		CHECK(bad == 0, "%d truncations parsed", bad);
	}
	/* every single-byte flip either fails or parses (never crashes) */
	for (size_t k = 0; k < len; k++)
	{
		buf[k] ^= 0x40;
		(void) parse_code(buf, len, &err);
		buf[k] ^= 0x40;
	}
	free(buf);
}

/* The good file's entries as a zip64 archive: parses the same; cut records fail. */
static void
test_zip64(void)
{
	size_t		len,
				len64;
	zinfo		zi;
	uint8_t    *buf = good_file(&len, &zi, "");
	zent		e[4];
	uint8_t    *z;
	mt_pth		p;
	mt_err		err;
	int			rc;
	static const char *const names[4] = {"arc/data.pkl", "arc/data/0", "arc/data/1", "arc/version"};

	/* take the entries back out of the plain archive */
	for (int i = 0; i < 4; i++)
	{
		const uint8_t *c = buf + zi.cen[i];
		size_t		nl = c[28] | (c[29] << 8);
		size_t		sz = c[20] | (c[21] << 8) | ((size_t) c[22] << 16) | ((size_t) c[23] << 24);
		size_t		lho = c[42] | (c[43] << 8) | ((size_t) c[44] << 16) | ((size_t) c[45] << 24);

		CHECK(nl == strlen(names[i]) && memcmp(c + 46, names[i], nl) == 0, "entry %d name", i);
		e[i] = (zent) {names[i], buf + lho + 30 + nl, sz};
	}
	z = make_zip_ex(e, 4, &len64, &zi, 1);
	rc = mt_pth_parse(z, len64, &p, &err);
	CHECK(rc == MT_OK && p.st.n_tensors == 4 && tensor_f32(&p, "wt") != NULL &&
		  tensor_f32(&p, "wt")[1] == 4.0f, "zip64 archive: %s", err.msg);
	if (rc == MT_OK)
		mt_pth_free(&p);
	/* a zip64 extra field that is too short */
	z[zi.cen[1] + 46 + strlen(names[1]) + 2] = 8;
	expect_err(z, len64, MT_ERR_CORRUPT, "zip64", "short zip64 extra");
	free(z);
	/* zip64 end record pointing outside, locator missing */
	z = make_zip_ex(e, 4, &len64, &zi, 1);
	set32(z + zi.eocd - 20 + 8, 0x7FFFFFF0u);
	expect_err(z, len64, MT_ERR_CORRUPT, "zip64 end record", "zip64 record offset");
	set32(z + zi.eocd - 20, 0);
	expect_err(z, len64, MT_ERR_CORRUPT, "zip64 locator", "no zip64 locator");
	free(z);
	free(buf);
}

static void
test_zip_hostile(void)
{
	size_t		len;
	zinfo		zi;
	uint8_t    *buf;
	mt_err		err;

	expect_err((const uint8_t *) "PK\003\004", 4, MT_ERR_CORRUPT, "zip", "4 bytes");
	expect_err((const uint8_t *) "hello", 5, MT_ERR_CORRUPT, "zip header", "not zip");

	/* local header offset past the directory */
	buf = good_file(&len, &zi, "");
	set32(buf + zi.cen[1] + 42, (uint32_t) len);
	expect_err(buf, len, MT_ERR_CORRUPT, "local header", "lho past the end");
	free(buf);

	/* entry size past the directory */
	buf = good_file(&len, &zi, "");
	set32(buf + zi.cen[1] + 20, 0x7FFFFFF0u);
	set32(buf + zi.cen[1] + 24, 0x7FFFFFF0u);
	expect_err(buf, len, MT_ERR_CORRUPT, "past the central directory", "huge entry");
	free(buf);

	/* central directory offset and size past the end */
	buf = good_file(&len, &zi, "");
	set32(buf + zi.eocd + 16, 0xFFFFFFF0u);
	expect_err(buf, len, MT_ERR_CORRUPT, "central directory", "cd offset");
	free(buf);
	buf = good_file(&len, &zi, "");
	set32(buf + zi.eocd + 12, 0x10000000u);
	expect_err(buf, len, MT_ERR_CORRUPT, "central directory", "cd size");
	free(buf);

	/* zip64 markers without a zip64 record */
	buf = good_file(&len, &zi, "");
	set32(buf + zi.eocd + 16, 0xFFFFFFFFu);
	expect_err(buf, len, MT_ERR_CORRUPT, "zip64", "zip64 without locator");
	free(buf);

	/* compressed and encrypted entries */
	buf = good_file(&len, &zi, "");
	buf[zi.cen[1] + 10] = 8;
	expect_err(buf, len, MT_ERR_UNSUPPORTED, "compressed", "deflated entry");
	free(buf);
	buf = good_file(&len, &zi, "");
	buf[zi.cen[2] + 8] |= 1;
	expect_err(buf, len, MT_ERR_UNSUPPORTED, "encrypted", "encrypted entry");
	free(buf);

	/* CRC mismatch in a storage */
	buf = good_file(&len, &zi, "");
	buf[zi.lho[1] + 30 + strlen("arc/data/0") + 5] ^= 1;
	expect_err(buf, len, MT_ERR_CORRUPT, "CRC", "crc");
	free(buf);

	/* local name differs from the directory */
	buf = good_file(&len, &zi, "");
	buf[zi.lho[1] + 30] = 'X';
	expect_err(buf, len, MT_ERR_CORRUPT, "local header does not match", "name mismatch");
	free(buf);

	/* overlapping entries: B's local header lies inside A's data */
	{
		bb			a = {0};
		bb			pkl = {0};
		zent		e[1];
		zinfo		z2;
		size_t		l2;
		uint8_t    *inner,
				   *outer;

		put8(&pkl, 0x80);
		put8(&pkl, 2);
		put8(&pkl, '}');
		put8(&pkl, '.');
		e[0] = (zent) {"arc/data/0", (const uint8_t *) storage0, 16};
		inner = make_zip(e, 1, &l2, &z2);
		put(&a, inner, z2.cd_off);	/* local header + data of B */
		e[0] = (zent) {"arc/data.pkl", a.b, a.n};
		{
			zent		two[2] = {{"arc/data.pkl", a.b, a.n}, {"arc/data/0", (const uint8_t *) storage0, 16}};

			outer = make_zip(two, 2, &len, &zi);
		}
		/* point B's directory entry at the copy inside A's data */
		set32(outer + zi.cen[1] + 42, (uint32_t) (zi.lho[0] + 30 + strlen("arc/data.pkl")));
		expect_err(outer, len, MT_ERR_CORRUPT, "overlaps", "overlapping entries");
		free(inner);
		free(outer);
		free(a.b);
		free(pkl.b);
	}

	/* duplicate names, no data.pkl, two data.pkl */
	{
		zent		dup[2] = {{"arc/data.pkl", (const uint8_t *) "}.", 2}, {"arc/data.pkl", (const uint8_t *) "}.", 2}};
		zent		none[1] = {{"arc/other", (const uint8_t *) "x", 1}};
		zent		two[2] = {{"a/data.pkl", (const uint8_t *) "}.", 2}, {"b/data.pkl", (const uint8_t *) "}.", 2}};

		buf = make_zip(dup, 2, &len, NULL);
		expect_err(buf, len, MT_ERR_CORRUPT, "duplicate", "duplicate entry");
		free(buf);
		buf = make_zip(none, 1, &len, NULL);
		expect_err(buf, len, MT_ERR_CORRUPT, "data.pkl", "no data.pkl");
		free(buf);
		buf = make_zip(two, 2, &len, NULL);
		expect_err(buf, len, MT_ERR_CORRUPT, "more than one", "two data.pkl");
		free(buf);
	}

	/* big-endian byteorder record */
	{
		zent		e[2] = {{"arc/data.pkl", (const uint8_t *) "}.", 2}, {"arc/byteorder", (const uint8_t *) "big", 3}};

		buf = make_zip(e, 2, &len, NULL);
		expect_err(buf, len, MT_ERR_UNSUPPORTED, "byteorder", "big-endian");
		free(buf);
	}
	/* legacy (pre-1.6) format */
	{
		static const uint8_t legacy[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
		0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};

		expect_err(legacy, sizeof(legacy), MT_ERR_UNSUPPORTED, "legacy", "legacy format");
	}
	(void) err;
}

/* An archive around a raw pickle (no storages). */
static void
expect_pickle(const bb *pkl, int code, const char *want, const char *label)
{
	size_t		len;
	uint8_t    *buf = make_pth(pkl, (const uint8_t *) storage0, sizeof(storage0), NULL, 0,
							   &len, NULL);

	expect_err(buf, len, code, want, label);
	free(buf);
}

static void
test_pickle_hostile(void)
{
	static const char *const forbidden[][2] = {
		{"os", "system"}, {"posix", "system"}, {"builtins", "eval"}, {"builtins", "exec"},
		{"__builtin__", "eval"}, {"subprocess", "Popen"}, {"torch", "load"},
		{"torch._utils", "_rebuild_tensor"}, {"collections", "OrderedDictX"},
		{"torch", "ByteStorage"}, {"numpy.core.multiarray", "_reconstruct"},
	};
	bb			b;
	int32_t		s1[] = {1},
				st1[] = {1},
				sbig[] = {0x7FFFFFFF, 16},
				shuge[] = {0x7FFFFFFF, 0x7FFFFFFF},
				st0[] = {0, 0},
				s12[] = {12},
				st2[] = {2};

	/* forbidden globals via GLOBAL and STACK_GLOBAL, called or not */
	for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
	{
		char		want[128];

		snprintf(want, sizeof(want), "%s.%s", forbidden[i][0], forbidden[i][1]);
		b = (bb) {0};
		put8(&b, 0x80);
		put8(&b, 2);
		p_global(&b, forbidden[i][0], forbidden[i][1]);
		p_str(&b, "echo pwned");
		put8(&b, 0x85);
		put8(&b, 'R');
		put8(&b, '.');
		expect_pickle(&b, MT_ERR_UNSUPPORTED, want, want);
		free(b.b);
		b = (bb) {0};
		put8(&b, 0x80);
		put8(&b, 4);
		p_str(&b, forbidden[i][0]);
		p_str(&b, forbidden[i][1]);
		put8(&b, 0x93);
		put8(&b, '.');
		expect_pickle(&b, MT_ERR_UNSUPPORTED, want, "STACK_GLOBAL");
		free(b.b);
	}

	/* a global whose name is not UTF-8 is shown with '?' */
	b = (bb) {0};
	put8(&b, 0x80);
	put8(&b, 2);
	p_global(&b, "os\xff\xfe", "sys\x01tem");
	put8(&b, '.');
	expect_pickle(&b, MT_ERR_UNSUPPORTED, "global os??.sys?tem", "non-UTF-8 global name");
	free(b.b);

	/* refused and unknown opcodes */
	{
		static const uint8_t refused[] = {'i', 'o', 0x81, 0x92, 'P', 'I', 'L', 'F', 'S', 'V',
		'B', 'C', 0x82, 0x8b, 0x8f, 'g', 'p'};

		for (size_t i = 0; i < sizeof(refused); i++)
		{
			b = (bb) {0};
			put8(&b, 0x80);
			put8(&b, 2);
			put8(&b, refused[i]);
			put8(&b, '.');
			expect_pickle(&b, MT_ERR_UNSUPPORTED, "opcode", "refused opcode");
			free(b.b);
		}
		b = (bb) {0};
		put8(&b, 0xFF);
		expect_pickle(&b, MT_ERR_CORRUPT, "opcode 0xff", "unknown opcode");
		free(b.b);
	}

	/* malformed pickles */
	{
		static const struct
		{
			const char *bytes;
			size_t		n;
			const char *want;
		}			bad[] = {
			{"", 0, "no STOP"},
			{".", 1, "underflow"},
			{"}s.", 3, "underflow"},
			{"N}s.", 4, "underflow"},
			{"NNNs.", 5, "SETITEM on a None"},
			{"Na.", 3, "underflow"},
			{"NNa.", 4, "APPEND on a None"},
			{"u.", 2, "MARK"},
			{"t.", 2, "MARK"},
			{"}(NNNu.", 7, "odd"},
			{"h\x05.", 3, "unset"},
			{"j\xff\xff\xff\x7f.", 6, "unset"},
			{"Nr\xff\xff\xff\xff.", 7, "memo index"},
			{"q\x00.", 3, "empty stack"},
			{"\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09.", 12, "64 bits"},
			{"X\xff\xff\xff\xff", 5, "past the end"},
			{"X\x02\x00\x00\x00\xc3(.", 8, "UTF-8"},
			{"\x80\x09.", 3, "protocol"},
			{"cos\nsystem", 10, "two lines"},
			{"N)R.", 4, "REDUCE on a None"},
			{"NQ.", 3, "persistent id"},
			{"NNb.", 4, "BUILD on a None"},
			{"\x8c\x01", 2, "past the end"},
			{"J\x01\x00", 3, "truncated"},
			{"N.", 2, "not a state_dict"},
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		{
			b = (bb) {0};
			put(&b, bad[i].bytes, bad[i].n);
			expect_pickle(&b, strcmp(bad[i].want, "not a state_dict") == 0 ? MT_ERR_UNSUPPORTED : MT_ERR_CORRUPT,
						  bad[i].want, bad[i].want);
			free(b.b);
		}
	}

	/* MARKs nested too deep, a stack too deep */
	b = (bb) {0};
	for (int i = 0; i < MT_PTH_MAX_MARKS + 1; i++)
		put8(&b, '(');
	expect_pickle(&b, MT_ERR_LIMIT, "MARKs", "deep marks");
	free(b.b);
	b = (bb) {0};
	for (int i = 0; i < MT_PTH_MAX_STACK + 1; i++)
		put8(&b, 'N');
	expect_pickle(&b, MT_ERR_LIMIT, "stack", "deep stack");
	free(b.b);

	/* storage bounds: element count vs entry size, views outside */
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 13, 0, 1, s1, st1);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_CORRUPT, "declares 13 elements", "storage size mismatch");
	free(b.b);
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 12, 12, 1, s1, st1);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_CORRUPT, "tensor \"x\" (offset 12)", "offset past the storage");
	free(b.b);
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 12, 0, 1, s12, st2);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_CORRUPT, "reaches element 22", "stride past the storage");
	free(b.b);
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "9", 12, 0, 1, s1, st1);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_CORRUPT, "no entry", "missing storage entry");
	free(b.b);
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", -1, 0, 1, s1, st1);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_CORRUPT, "storage size", "negative storage size");
	free(b.b);
	/* a huge stride-0 view of a small storage */
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 12, 0, 2, sbig, st0);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_LIMIT, "expands", "huge broadcast view");
	free(b.b);
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 12, 0, 2, shuge, st0);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_LIMIT, "too large", "2^62 elements");
	free(b.b);
	/* duplicate key, non-tensor value, non-string key */
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 12, 0, 1, s1, st1);
	p_str(&b, "x");
	p_tensor(&b, "FloatStorage", "0", 12, 0, 1, s1, st1);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_CORRUPT, "twice", "duplicate tensor");
	free(b.b);
	b = (bb) {0};
	p_begin_dict(&b);
	p_str(&b, "x");
	p_int(&b, 5);
	p_end_dict(&b);
	expect_pickle(&b, MT_ERR_UNSUPPORTED, "entry \"x\" is a int", "non-tensor entry");
	free(b.b);
	/* a training checkpoint: state_dict under "model" */
	{
		size_t		len;
		uint8_t    *buf;
		mt_pth		p;
		mt_err		err;
		int			rc;

		b = (bb) {0};
		put8(&b, 0x80);
		put8(&b, 2);
		put8(&b, '}');
		put8(&b, '(');
		p_str(&b, "epoch");
		p_int(&b, 7);
		p_str(&b, "model");
		put8(&b, '}');
		put8(&b, '(');
		p_str(&b, "module.x");
		p_tensor(&b, "FloatStorage", "0", 12, 3, 1, s1, st1);
		put8(&b, 'u');
		put8(&b, 'u');
		put8(&b, '.');
		buf = make_pth(&b, (const uint8_t *) storage0, sizeof(storage0), NULL, 0, &len, NULL);
		rc = mt_pth_parse(buf, len, &p, &err);
		CHECK(rc == MT_OK && strcmp(p.wrapper, "model") == 0 && p.stripped_prefix &&
			  tensor_f32(&p, "x") != NULL && tensor_f32(&p, "x")[0] == 3.0f,
			  "checkpoint wrapper: %s", err.msg);
		if (rc == MT_OK)
			mt_pth_free(&p);
		free(buf);
		free(b.b);
	}
}

static void
test_nomem(void)
{
	size_t		len;
	uint8_t    *buf = good_file(&len, NULL, "module.");
	int			nomem_seen = 0;
	long		k;

	mt_set_allocator(count_malloc, count_free);
	for (k = 0; k < 2000; k++)
	{
		mt_pth		p;
		mt_err		err;
		int			rc;

		fail_after = k;
		live_allocs = 0;
		rc = mt_pth_parse(buf, len, &p, &err);
		if (rc == MT_OK)
		{
			mt_pth_free(&p);
			CHECK(live_allocs == 0, "leak after free, budget %ld", k);
			break;
		}
		nomem_seen++;
		CHECK(rc == MT_ERR_NOMEM, "budget %ld: rc %d (%s)", k, rc, err.msg);
		CHECK(live_allocs == 0, "budget %ld: %ld blocks leaked", k, live_allocs);
	}
	mt_set_allocator(NULL, NULL);
	CHECK(k < 2000 && nomem_seen > 20, "allocation failures tried: %d", nomem_seen);
	free(buf);
}

int
main(int argc, char **argv)
{
	(void) argc;
	(void) argv;
	test_valid();
	test_zip_hostile();
	test_zip64();
	test_pickle_hostile();
	test_nomem();
	return TEST_SUMMARY("pth");
}
