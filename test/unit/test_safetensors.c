/*
 * test_safetensors.c - unit tests of the safetensors reader and writer.
 *
 * Build and run (argv[1] is the shared folder; argv[2], optional, a folder
 * made by test/gen_safetensors_cases.py for the parity checks, into which
 * this test also writes c_written.safetensors for the Python check):
 *
 *   gcc -std=gnu11 -O2 -Wall -Wextra -Werror -Isrc test/unit/test_safetensors.c \
 *       src/io/safetensors.c src/core/mt_common.c -lm -o /tmp/test_st
 *   d=$(mktemp -d) && /usr/bin/python3 test/gen_safetensors_cases.py $d /work/shared &&
 *   /tmp/test_st /work/shared $d &&
 *   /usr/bin/python3 test/gen_safetensors_cases.py --check $d/c_written.safetensors
 */
#include "io/safetensors.h"
#include "mt_test.h"
#include "count_alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *real_rel =
"/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.safetensors";

/* A file from a header length, header text and data bytes. */
static uint8_t *
make_raw(uint64_t hlen, const char *header, size_t header_bytes,
		 size_t data_len, size_t *len)
{
	uint8_t    *buf;
	int			i;

	*len = 8 + header_bytes + data_len;
	buf = malloc(*len);
	for (i = 0; i < 8; i++)
		buf[i] = (uint8_t) (hlen >> (8 * i));
	memcpy(buf + 8, header, header_bytes);
	for (size_t k = 0; k < data_len; k++)
		buf[8 + header_bytes + k] = (uint8_t) k;
	return buf;
}

/* A file whose header is the given JSON, followed by data_len bytes. */
static uint8_t *
make_file(const char *header, size_t data_len, size_t *len)
{
	size_t		h = strlen(header);

	return make_raw(h, header, h, data_len, len);
}

/* Parse; check the result is an error with the given code and *out zeroed. */
static void
expect_fail_buf(const uint8_t *buf, size_t len, int code, const char *label)
{
	mt_safetensors st;
	mt_safetensors zero;
	mt_err		err;
	int			rc;

	memset(&st, 0xAB, sizeof(st));
	memset(&zero, 0, sizeof(zero));
	mt_clearerr(&err);
	rc = mt_st_parse(buf, len, &st, &err);
	CHECK(rc == code, "%s: rc %d (want %d), msg \"%s\"", label, rc, code, err.msg);
	CHECK(memcmp(&st, &zero, sizeof(st)) == 0, "%s: *out not zeroed", label);
	CHECK(rc == MT_OK || ((int) err.code == rc && err.msg[0] != '\0'),
		  "%s: no message", label);
	if (getenv("ST_VERBOSE"))
		printf("  %-28s -> %s\n", label, err.msg);
	if (rc == MT_OK)
		mt_st_free(&st);
}

/* A header (plus data_len data bytes) that must be refused as corrupt. */
static void
expect_corrupt(const char *header, size_t data_len, const char *label)
{
	size_t		len;
	uint8_t    *buf = make_file(header, data_len, &len);

	expect_fail_buf(buf, len, MT_ERR_CORRUPT, label);
	free(buf);
}

/* A header that must parse; returns the parse for further checks. */
static int
expect_ok(const char *header, size_t data_len, mt_safetensors *st,
		  const char *label)
{
	size_t		len;
	uint8_t    *buf = make_file(header, data_len, &len);
	mt_err		err;
	int			rc;

	mt_clearerr(&err);
	rc = mt_st_parse(buf, len, st, &err);
	CHECK(rc == MT_OK, "%s: rc %d msg \"%s\"", label, rc, err.msg);
	free(buf);
	return rc;
}

/* Little-endian float at buf[off]. */
static float
get_f32(const uint8_t *buf, size_t off)
{
	float		f;

	memcpy(&f, buf + off, 4);
	return f;
}

/* zlib's CRC-32 (as Python's zlib.crc32). */
static uint32_t
crc32_of(const uint8_t *p, size_t n)
{
	static uint32_t table[256];
	static int	ready = 0;
	uint32_t	c = 0xFFFFFFFFu;

	if (!ready)
	{
		for (uint32_t i = 0; i < 256; i++)
		{
			uint32_t	v = i;

			for (int k = 0; k < 8; k++)
				v = (v & 1) ? 0xEDB88320u ^ (v >> 1) : v >> 1;
			table[i] = v;
		}
		ready = 1;
	}
	for (size_t i = 0; i < n; i++)
		c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

/* The real MobileNetV2 file from the shared folder. */
static void
test_real_file(const char *shared)
{
	char		path[4096];
	uint8_t    *buf;
	size_t		len;
	mt_safetensors st;
	mt_err		err;
	const mt_st_tensor *t;
	float		mean[4];
	int			n_scalar_i64 = 0;
	int			i;

	snprintf(path, sizeof(path), "%s%s", shared, real_rel);
	buf = mt_test_read_file(path, &len);
	CHECK(buf != NULL, "cannot read %s", path);
	if (buf == NULL)
		return;
	CHECK(mt_st_parse(buf, len, &st, &err) == MT_OK, "real file: %s", err.msg);
	CHECK(st.n_tensors == 314, "n_tensors %d", st.n_tensors);

	t = mt_st_find(&st, "features.0.0.weight");
	CHECK(t != NULL && t->dtype == MT_F32, "features.0.0.weight");
	if (t != NULL)
		CHECK_NEAR(get_f32(buf, t->offset), -0.5095339, 1e-6, "features.0.0.weight[0]");
	t = mt_st_find(&st, "classifier.1.bias");
	CHECK(t != NULL && t->ndim == 1 && t->shape[0] == 1000, "classifier.1.bias");
	if (t != NULL)
		CHECK_NEAR(get_f32(buf, t->offset), -0.01611438, 1e-7, "classifier.1.bias[0]");
	t = mt_st_find(&st, "classifier.1.weight");
	CHECK(t != NULL && t->ndim == 2 && t->shape[0] == 1000 && t->shape[1] == 1280 &&
		  t->nbytes == (size_t) 1000 * 1280 * 4, "classifier.1.weight shape");
	CHECK(mt_st_find(&st, "no.such.tensor") == NULL, "absent tensor found");

	for (i = 0; i < st.n_tensors; i++)
	{
		if (st.tensors[i].dtype == MT_I64 && st.tensors[i].ndim == 0)
		{
			n_scalar_i64++;
			CHECK(st.tensors[i].nbytes == 8, "scalar nbytes");
			CHECK(strstr(st.tensors[i].name, "num_batches_tracked") != NULL,
				  "scalar %s", st.tensors[i].name);
		}
		if (i > 0)
			CHECK(st.tensors[i].offset ==
				  st.tensors[i - 1].offset + st.tensors[i - 1].nbytes,
				  "tensors not in data order at %d", i);
	}
	CHECK(n_scalar_i64 == 52, "I64 scalars %d", n_scalar_i64);
	CHECK(st.tensors[st.n_tensors - 1].offset + st.tensors[st.n_tensors - 1].nbytes == len,
		  "last tensor does not end the file");

	CHECK(mt_st_meta(&st, "arch") != NULL &&
		  strcmp(mt_st_meta(&st, "arch"), "mobilenet_v2") == 0, "arch");
	CHECK(mt_st_meta(&st, "nope") == NULL, "absent metadata");
	CHECK(mt_json_float_array(mt_st_meta(&st, "mean"), mean, 4) == 3, "mean count");
	CHECK(mean[0] == 0.5f && mean[1] == 0.5f && mean[2] == 0.5f, "mean values");
	CHECK(mt_json_float_array(mt_st_meta(&st, "std"), mean, 3) == 3, "std count");
	CHECK(mt_json_float_array(mt_st_meta(&st, "mean"), mean, 2) == -1, "mean over max");
	mt_st_free(&st);
	CHECK(st.n_tensors == 0 && st.tensors == NULL, "free zeroes");
	mt_st_free(&st);			/* twice is harmless */

	/* damage the real file: cut, extend, and flip bytes of the header */
	expect_fail_buf(buf, len - 1, MT_ERR_CORRUPT, "real file cut by 1");
	{
		uint8_t    *big = malloc(len + 1);
		uint64_t	hlen = 0;

		memcpy(big, buf, len);
		big[len] = 0;
		expect_fail_buf(big, len + 1, MT_ERR_CORRUPT, "real file plus 1 byte");
		for (i = 7; i >= 0; i--)
			hlen = (hlen << 8) | buf[i];
		for (size_t pos = 8; pos < 8 + hlen; pos += 13)
		{
			static const uint8_t subst[] = {'"', '{', '}', '[', ']', ',', ':', '\\',
			'0', '-', 0x80, 0xFF, 0};
			uint8_t		old = big[pos];
			int			rc;

			big[pos] = subst[pos % sizeof(subst)];
			rc = mt_st_parse(big, len, &st, &err);
			CHECK(rc == MT_OK || rc == MT_ERR_CORRUPT, "flip at %zu: rc %d", pos, rc);
			if (rc == MT_OK)
				mt_st_free(&st);
			big[pos] = old;
		}
		free(big);
	}
	free(buf);
}

/* Small valid headers and the edge cases they must allow. */
static void
test_valid_small(void)
{
	mt_safetensors st;
	const mt_st_tensor *t;
	float		v[8];

	if (expect_ok("{}", 0, &st, "empty object") == MT_OK)
	{
		CHECK(st.n_tensors == 0 && st.n_meta == 0, "empty counts");
		CHECK(mt_st_find(&st, "x") == NULL, "find in empty");
		mt_st_free(&st);
	}
	if (expect_ok(" \t\r\n{ \"__metadata__\" : { } }      ", 0, &st,
				  "whitespace, empty metadata") == MT_OK)
		mt_st_free(&st);
	if (expect_ok("{\"b\":{\"data_offsets\":[4,8],\"shape\":[2],\"dtype\":\"BF16\"},"
				  "\"z\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
				  "\"a\\u00e9\\ud83d\\ude00\\n\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
				  "\"__metadata__\":{\"k\\\"\":\"v\\\\\\/\\t\"}}   ", 8, &st,
				  "escapes, zero-size, scalar") == MT_OK)
	{
		CHECK(st.n_tensors == 3, "n %d", st.n_tensors);
		t = mt_st_find(&st, "a\xc3\xa9\xf0\x9f\x98\x80\n");
		CHECK(t != NULL && t->ndim == 0 && t->nbytes == 4 && t == &st.tensors[0],
			  "decoded name / scalar first");
		t = mt_st_find(&st, "z");
		CHECK(t != NULL && t->nbytes == 0 && t->ndim == 2, "zero-size tensor");
		CHECK(st.tensors[2].dtype == MT_BF16 && st.tensors[2].offset == st.tensors[0].offset + 4,
			  "bf16 last");
		CHECK(mt_st_meta(&st, "k\"") != NULL &&
			  strcmp(mt_st_meta(&st, "k\""), "v\\/\t") == 0, "metadata escapes");
		mt_st_free(&st);
	}

	if (expect_ok("{\"t\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,0],"
				  "\"data_offsets\":[0,0]}}", 0, &st, "zero dim among huge ones") == MT_OK)
	{
		CHECK(st.n_tensors == 1 && st.tensors[0].nbytes == 0 && st.tensors[0].ndim == 3,
			  "zero dim among huge ones");
		mt_st_free(&st);
	}

	/* dtypes */
	for (int i = 0; i <= MT_BOOL; i++)
	{
		mt_dtype	dt;

		CHECK(mt_dtype_from_name(mt_dtype_name((mt_dtype) i), &dt) && dt == (mt_dtype) i,
			  "dtype %d", i);
	}
	CHECK(mt_dtype_size(MT_F32) == 4 && mt_dtype_size(MT_BF16) == 2 &&
		  mt_dtype_size(MT_I64) == 8 && mt_dtype_size(MT_BOOL) == 1, "dtype sizes");
	CHECK(!mt_dtype_from_name("f32", NULL) && !mt_dtype_from_name("", NULL) &&
		  !mt_dtype_from_name(NULL, NULL), "dtype names are exact");
	CHECK(mt_dtype_size((mt_dtype) 99) == 0, "bad dtype size");

	/* float arrays */
	CHECK(mt_json_float_array("[0.485, 0.456, 0.406]", v, 3) == 3 &&
		  v[0] == 0.485f && v[2] == 0.406f, "float array");
	CHECK(mt_json_float_array(" [ -1e-2 ,2E+1,0 ] ", v, 8) == 3 &&
		  v[0] == -0.01f && v[1] == 20.0f, "float array exponents");
	CHECK(mt_json_float_array("[]", v, 8) == 0, "empty float array");
	CHECK(mt_json_float_array("[0.5,0.5,0.5]", v, 3) == 3, "exact max");
	CHECK(mt_json_float_array("[0.50000000000000000000000000000000000000000000000000000000000000000001]",
							  v, 1) == 1 && v[0] == 0.5f, "long number");
	CHECK(mt_json_float_array("[1,2,3,4]", v, 3) == -1, "over max");
	CHECK(mt_json_float_array("[1,]", v, 8) == -1, "trailing comma");
	CHECK(mt_json_float_array("[1 2]", v, 8) == -1, "missing comma");
	CHECK(mt_json_float_array("[.5]", v, 8) == -1, "bare fraction");
	CHECK(mt_json_float_array("[01]", v, 8) == -1, "leading zero");
	CHECK(mt_json_float_array("[1e999]", v, 8) == -1, "overflow");
	CHECK(mt_json_float_array("[1] x", v, 8) == -1, "trailing garbage");
	CHECK(mt_json_float_array("[\"1\"]", v, 8) == -1, "string element");
	CHECK(mt_json_float_array("[1", v, 8) == -1, "unterminated");
	CHECK(mt_json_float_array("", v, 8) == -1, "empty string");
	CHECK(mt_json_float_array(NULL, v, 8) == -1, "NULL");
	CHECK(mt_json_float_array("[NaN]", v, 8) == -1, "NaN");
	CHECK(mt_json_float_array("[0x10]", v, 8) == -1, "hex");
}

/* Hostile inputs: each must be refused as corrupt without harm. */
static void
test_hostile(void)
{
	static const char *ok1 =
	"\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
	uint8_t    *buf;
	size_t		len;
	char	   *big;
	char		hdr[512];
	uint8_t		tiny[8] = {2, 0, 0, 0, 0, 0, 0, 0};

	/* the length prefix */
	expect_fail_buf(tiny, 0, MT_ERR_CORRUPT, "len 0");
	expect_fail_buf(tiny, 5, MT_ERR_CORRUPT, "len 5");
	expect_fail_buf(tiny, 8, MT_ERR_CORRUPT, "header past the end");
	expect_fail_buf(NULL, 0, MT_ERR_CORRUPT, "NULL, 0");
	buf = make_raw(0, "", 0, 0, &len);
	expect_fail_buf(buf, len, MT_ERR_CORRUPT, "header length 0");
	free(buf);
	buf = make_raw(1, "{", 1, 0, &len);
	expect_fail_buf(buf, len, MT_ERR_CORRUPT, "header length 1");
	free(buf);
	buf = make_raw(UINT64_MAX, "{}", 2, 0, &len);
	expect_fail_buf(buf, len, MT_ERR_CORRUPT, "header length 2^64-1");
	free(buf);
	buf = make_raw(UINT64_MAX - 7, "{}", 2, 0, &len);
	expect_fail_buf(buf, len, MT_ERR_CORRUPT, "header length 2^64-8");
	free(buf);
	buf = make_raw(MT_ST_MAX_HEADER + 1, "{}", 2, 0, &len);
	expect_fail_buf(buf, len, MT_ERR_CORRUPT, "header length over max");
	free(buf);
	buf = make_raw(3, "{}", 2, 0, &len);
	expect_fail_buf(buf, len, MT_ERR_CORRUPT, "header length 1 past buffer");
	free(buf);

	/* JSON syntax */
	expect_corrupt("hello world", 0, "not JSON");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\"", 0, "truncated JSON");
	expect_corrupt("{\"t\":", 0, "truncated after colon");
	expect_corrupt("{\"t", 0, "truncated in key");
	expect_corrupt("{", 0, "just a brace");
	expect_corrupt("[]", 0, "top-level array");
	expect_corrupt("\"{}\"", 0, "top-level string");
	expect_corrupt("null", 0, "top-level null");
	expect_corrupt("{} x", 0, "trailing garbage");
	expect_corrupt("{}{}", 0, "two objects");
	{
		buf = make_raw(6, "{}\0\0\0\0", 6, 0, &len);
		expect_fail_buf(buf, len, MT_ERR_CORRUPT, "NUL padding");
		free(buf);
	}
	expect_corrupt("{,}", 0, "leading comma");
	expect_corrupt("{\"__metadata__\":{},}", 0, "trailing comma");
	expect_corrupt("{\"__metadata__\"{}}", 0, "missing colon");
	expect_corrupt("{'t':1}", 0, "single quotes");
	expect_corrupt("{\"__metadata__\":{\"a\":\"b\" \"c\":\"d\"}}", 0, "missing comma");
	expect_corrupt("{\"x\":tru}", 0, "bad literal");
	expect_corrupt("{\"x\":nul", 0, "truncated literal");

	/* strings */
	expect_corrupt("{\"a\tb\":{}}", 0, "raw tab in string");
	expect_corrupt("{\"a\nb\":{}}", 0, "raw newline in string");
	expect_corrupt("{\"a\\x\":{}}", 0, "bad escape");
	expect_corrupt("{\"a\\u12\":{}}", 0, "short \\u");
	expect_corrupt("{\"a\\u12G4\":{}}", 0, "non-hex \\u");
	expect_corrupt("{\"a\\ud800\":{}}", 0, "lone high surrogate");
	expect_corrupt("{\"a\\udc00\":{}}", 0, "lone low surrogate");
	expect_corrupt("{\"a\\ud800\\u0041\":{}}", 0, "high + non-low");
	expect_corrupt("{\"a\\", 0, "backslash at end");
	expect_corrupt("{\"\xff\":{}}", 0, "invalid UTF-8 ff");
	expect_corrupt("{\"\xc0\x80\":{}}", 0, "overlong NUL");
	expect_corrupt("{\"\xe0\x80\xaf\":{}}", 0, "overlong 3-byte");
	expect_corrupt("{\"\xed\xa0\x80\":{}}", 0, "UTF-8 surrogate");
	expect_corrupt("{\"\xf4\x90\x80\x80\":{}}", 0, "above U+10FFFF");
	expect_corrupt("{\"\x80\":{}}", 0, "lone continuation");
	expect_corrupt("{\"\xe2\x98\":{}}", 0, "truncated sequence");
	expect_corrupt("{\"\xe2\x98", 0, "sequence cut by header end");

	expect_corrupt("{\"__metadata__\":{\"a\":\"\\b\\f\\r\\u00E9\"},\"x\":false}", 0,
				   "escapes, then false");
	expect_corrupt("{\"x\":1.}", 0, "number 1.");
	expect_corrupt("{\"x\":1e}", 0, "number 1e");
	expect_corrupt("{\"x\":-}", 0, "number -");
	expect_corrupt("{\"x\":+1}", 0, "number +1");
	expect_corrupt("{\"x\":\"\\u00", 0, "\\u cut by header end");
	expect_corrupt("{\"x\":[1 2]}", 0, "array missing comma");
	expect_corrupt("{\"x\":[1,2}", 0, "array closed by brace");
	{
		char		longname[400];

		/* a long name with a 3-byte character across the cut in messages */
		snprintf(longname, sizeof(longname),
				 "{\"%s\xe2\x98\x83%s\":{\"dtype\":\"F8\",\"shape\":[],"
				 "\"data_offsets\":[0,0]}}",
				 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
				 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
		expect_corrupt(longname, 0, "long name in a message");
	}

	/* nesting */
	big = malloc(20001);
	memset(big, '[', 10000);
	big[10000] = '\0';
	expect_corrupt(big, 0, "10000 [ at top");
	memcpy(big, "{\"a\":", 5);
	expect_corrupt(big, 0, "10000 [ in entry");
	memcpy(big, "{\"__metadata__\":{\"k\":", 21);
	expect_corrupt(big, 0, "10000 [ in metadata");
	for (int i = 0; i < 5000; i++)
		memcpy(big + 4 * i, "{\"\":", 4);
	big[20000] = '\0';
	expect_corrupt(big, 0, "deep objects");
	free(big);

	/* the entries */
	expect_corrupt("{\"t\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
				   "unknown dtype");
	expect_corrupt("{\"t\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
				   "lower-case dtype");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\\u0000\",\"shape\":[2],\"data_offsets\":[0,8]}}",
				   8, "dtype with NUL");
	expect_corrupt("{\"t\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
				   "dtype not a string");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8,
				   "negative shape");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[-0],\"data_offsets\":[0,0]}}", 0,
				   "negative zero shape");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
				   "non-integer shape");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2e0],\"data_offsets\":[0,8]}}", 8,
				   "exponent shape");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
				   "string shape");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
				   "shape not an array");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[[2]],\"data_offsets\":[0,8]}}", 8,
				   "nested shape");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8,
				   "leading zero");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[9223372036854775808],"
				   "\"data_offsets\":[0,8]}}", 8, "dimension over int64");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],"
				   "\"data_offsets\":[0,8]}}", 8, "9 dims");
	expect_corrupt("{\"t\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,16],"
				   "\"data_offsets\":[0,0]}}", 0, "dims overflow size_t");
	expect_corrupt("{\"t\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
				   "\"data_offsets\":[0,0]}}", 0, "bytes overflow size_t");
	expect_corrupt("{\"t\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,0],"
				   "\"data_offsets\":[0,1]}}", 1, "zero dim but 1 byte");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
				   "shape*size != range");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7,
				   "offsets beyond the data");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8,
				   "offsets start beyond the data");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8,
				   "begin > end");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],"
				   "\"data_offsets\":[18446744073709551615,7]}}", 8, "begin huge");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],"
				   "\"data_offsets\":[0,18446744073709551616]}}", 8, "end over u64");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
				   "one offset");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8,
				   "three offsets");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", 8,
				   "negative offset");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing offsets");
	expect_corrupt("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "missing dtype");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "missing shape");
	expect_corrupt("{\"t\":{}}", 0, "empty entry");
	expect_corrupt("{\"t\":[]}", 0, "entry is an array");
	expect_corrupt("{\"t\":null}", 0, "entry is null");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],"
				   "\"extra\":1}}", 8, "unknown field");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],"
				   "\"data_offsets\":[0,8]}}", 8, "duplicate field");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
				   "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
				   "duplicate tensor");
	expect_corrupt("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
				   "\"\\u0074\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
				   "duplicate tensor via escape");
	expect_corrupt("{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
				   "empty name");
	expect_corrupt("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
				   "name with NUL");

	/* the layout */
	snprintf(hdr, sizeof(hdr), "{%s,\"u\":{\"dtype\":\"F32\",\"shape\":[2],"
			 "\"data_offsets\":[4,12]}}", ok1);
	expect_corrupt(hdr, 12, "overlapping tensors");
	snprintf(hdr, sizeof(hdr), "{%s,\"u\":{\"dtype\":\"F32\",\"shape\":[2],"
			 "\"data_offsets\":[0,8]}}", ok1);
	expect_corrupt(hdr, 8, "same range twice");
	snprintf(hdr, sizeof(hdr), "{%s,\"u\":{\"dtype\":\"F32\",\"shape\":[0],"
			 "\"data_offsets\":[4,4]}}", ok1);
	expect_corrupt(hdr, 8, "empty tensor inside another");
	snprintf(hdr, sizeof(hdr), "{%s,\"u\":{\"dtype\":\"F32\",\"shape\":[2],"
			 "\"data_offsets\":[12,20]}}", ok1);
	expect_corrupt(hdr, 20, "hole between tensors");
	snprintf(hdr, sizeof(hdr), "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],"
			 "\"data_offsets\":[4,8]}}");
	expect_corrupt(hdr, 8, "hole at start");
	snprintf(hdr, sizeof(hdr), "{%s}", ok1);
	expect_corrupt(hdr, 9, "trailing uncovered byte");
	expect_corrupt("{}", 1, "no tensors, one data byte");
	expect_corrupt("{\"__metadata__\":{}}", 4, "metadata only, data left");

	/* metadata */
	expect_corrupt("{\"__metadata__\":{\"a\":1}}", 0, "metadata value number");
	expect_corrupt("{\"__metadata__\":{\"a\":null}}", 0, "metadata value null");
	expect_corrupt("{\"__metadata__\":{\"a\":{}}}", 0, "metadata value object");
	expect_corrupt("{\"__metadata__\":{\"a\":[\"b\"]}}", 0, "metadata value array");
	expect_corrupt("{\"__metadata__\":[]}", 0, "metadata array");
	expect_corrupt("{\"__metadata__\":\"x\"}", 0, "metadata string");
	expect_corrupt("{\"__metadata__\":null}", 0, "metadata null");
	expect_corrupt("{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"a\":\"3\"}}", 0,
				   "metadata duplicate key");
	expect_corrupt("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "two metadata");
	expect_corrupt("{\"__metadata__\":{\"a\":\"x\\u0000y\"}}", 0, "metadata value NUL");
	expect_corrupt("{\"__metadata__\":{\"a\\u0000\":\"x\"}}", 0, "metadata key NUL");
	expect_corrupt("{\"__metadata__\":{\"a\":\"\xc3\"}}", 0, "metadata bad UTF-8");
}

/* Every allocation failure must give MT_ERR_NOMEM, free all, zero *out. */
static void
test_nomem(const uint8_t *file, size_t file_len)
{
	mt_safetensors st;
	mt_safetensors zero;
	mt_err		err;
	int			nomem_seen = 0;
	long		k;

	memset(&zero, 0, sizeof(zero));
	mt_set_allocator(count_malloc, count_free);
	for (k = 0; k < 200; k++)
	{
		int			rc;

		fail_after = k;
		live_allocs = 0;
		rc = mt_st_parse(file, file_len, &st, &err);
		if (rc == MT_OK)
		{
			CHECK(st.n_tensors == 5, "parse under budget %ld", k);
			mt_st_free(&st);
			CHECK(live_allocs == 0, "leak after free, budget %ld", k);
			break;
		}
		nomem_seen++;
		CHECK(rc == MT_ERR_NOMEM, "budget %ld: rc %d (%s)", k, rc, err.msg);
		CHECK(memcmp(&st, &zero, sizeof(st)) == 0, "budget %ld: not zeroed", k);
		CHECK(live_allocs == 0, "budget %ld: %ld blocks leaked", k, live_allocs);
	}
	CHECK(k < 200 && nomem_seen > 5, "allocation failures tried: %d", nomem_seen);

	/* the writer, too */
	{
		const char *names[] = {"a", "b", "c"};
		mt_dtype	dt[] = {MT_U8, MT_U8, MT_U8};
		int			nd[] = {1, 1, 1};
		int64_t		sh[3][MT_ST_MAX_DIMS] = {{1}, {1}, {1}};
		uint8_t		byte = 1;
		const void *datas[] = {&byte, &byte, &byte};
		uint8_t    *out;
		size_t		out_len;

		for (k = 0; k < 20; k++)
		{
			int			rc;

			fail_after = k;
			live_allocs = 0;
			rc = mt_st_serialize(3, names, dt, nd, sh, datas, 2, names, names,
								 &out, &out_len, &err);
			if (rc == MT_OK)
			{
				mt_free(out);
				CHECK(live_allocs == 0, "writer leak");
				break;
			}
			CHECK(rc == MT_ERR_NOMEM && out == NULL && live_allocs == 0,
				  "writer budget %ld: rc %d", k, rc);
		}
		CHECK(k > 0 && k < 20, "writer allocation failures tried: %ld", k);
	}
	fail_after = -1;
	mt_set_allocator(NULL, NULL);
}

/* The writer, read back by the reader; the file goes to dir if given. */
static void
test_roundtrip(const char *dir)
{
	static const char *names[] = {
		"conv.weight", "bn.num_batches_tracked", "odd \"name\"\\\n\xe2\x98\x83",
		"empty", "half"
	};
	float		w[6];
	int64_t		steps = 42;
	uint8_t		odd[3] = {7, 8, 9};
	uint16_t	half[2] = {0x3C00, 0xC000};	/* 1.0, -2.0 */
	const void *datas[] = {w, &steps, odd, NULL, half};
	mt_dtype	dtypes[] = {MT_F32, MT_I64, MT_U8, MT_F32, MT_F16};
	int			ndims[] = {4, 0, 1, 1, 1};
	int64_t		shapes[5][MT_ST_MAX_DIMS] = {{2, 3, 1, 1}, {0}, {3}, {0}, {2}};
	const char *mkeys[] = {"arch", "q\"uote\\key", "ctl"};
	const char *mvals[] = {"roundtrip", "line\nbreak\ttab \xc3\xa9\xf0\x9f\x98\x80",
	"\x01\x1f"};
	uint8_t    *out = NULL;
	size_t		out_len = 0;
	mt_safetensors st;
	mt_err		err;
	uint64_t	hlen = 0;
	int			rc;
	int			i;

	for (i = 0; i < 6; i++)
		w[i] = i * 0.5f - 1.0f;
	CHECK(mt_st_serialize(5, names, dtypes, ndims, shapes, datas, 3, mkeys, mvals,
						  &out, &out_len, &err) == MT_OK, "serialize: %s", err.msg);
	if (out == NULL)
		return;
	for (i = 7; i >= 0; i--)
		hlen = (hlen << 8) | out[i];
	CHECK(hlen % 8 == 0 && out_len == 8 + hlen + 24 + 8 + 3 + 4, "layout %zu", out_len);
	rc = mt_st_parse(out, out_len, &st, &err);
	CHECK(rc == MT_OK, "parse written: %s", err.msg);
	if (rc == MT_OK)
	{
		CHECK(st.n_tensors == 5 && st.n_meta == 3, "counts");
		for (i = 0; i < 5 && st.n_tensors == 5; i++)
		{
			const mt_st_tensor *t = mt_st_find(&st, names[i]);
			const mt_st_tensor *prev = i > 0 ? mt_st_find(&st, names[i - 1]) : NULL;

			CHECK(t != NULL, "tensor %s", names[i]);
			if (t == NULL)
				continue;
			CHECK(t->dtype == dtypes[i] && t->ndim == ndims[i], "%s dtype/ndim", names[i]);
			CHECK(memcmp(t->shape, shapes[i], sizeof(int64_t) * ndims[i]) == 0,
				  "%s shape", names[i]);
			CHECK(t->nbytes == 0 || memcmp(out + t->offset, datas[i], t->nbytes) == 0,
				  "%s data", names[i]);
			CHECK(prev == NULL || prev->offset + prev->nbytes == t->offset,
				  "%s not in given order", names[i]);
		}
		for (i = 0; i < 3; i++)
			CHECK(mt_st_meta(&st, mkeys[i]) != NULL &&
				  strcmp(mt_st_meta(&st, mkeys[i]), mvals[i]) == 0, "meta %s", mkeys[i]);
		mt_st_free(&st);
	}
	test_nomem(out, out_len);
	if (dir != NULL)
	{
		char		path[4096];
		FILE	   *f;

		snprintf(path, sizeof(path), "%s/c_written.safetensors", dir);
		f = fopen(path, "wb");
		CHECK(f != NULL && fwrite(out, 1, out_len, f) == out_len && fclose(f) == 0,
			  "write %s", path);
	}
	mt_free(out);

	/* no tensors, no metadata: "{}" padded to 8 */
	CHECK(mt_st_serialize(0, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL,
						  &out, &out_len, &err) == MT_OK && out_len == 16 &&
		  memcmp(out + 8, "{}      ", 8) == 0, "empty file");
	if (out != NULL && mt_st_parse(out, out_len, &st, &err) == MT_OK)
	{
		CHECK(st.n_tensors == 0, "empty read back");
		mt_st_free(&st);
	}
	else
		CHECK(0, "empty file read back: %s", err.msg);
	mt_free(out);

	/* bad arguments */
	{
		const char *dup[] = {"a", "a"};
		const char *bad_utf8[] = {"a\xff"};
		const char *reserved[] = {"__metadata__"};
		const char *empty[] = {""};
		mt_dtype	two[] = {MT_U8, MT_U8};
		int			one_d[] = {1, 1};
		int			nine[] = {9};
		int64_t		neg[1][MT_ST_MAX_DIMS] = {{-1}};
		int64_t		sh[2][MT_ST_MAX_DIMS] = {{1}, {1}};
		int64_t		huge[1][MT_ST_MAX_DIMS] = {{INT64_MAX, INT64_MAX}};
		int			two_d[] = {2};
		const void *d2[] = {odd, odd};
		const void *dnull[] = {NULL};
		mt_dtype	baddt[] = {(mt_dtype) 42};

		CHECK(mt_st_serialize(2, dup, two, one_d, sh, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID && out == NULL,
			  "duplicate names");
		CHECK(mt_st_serialize(1, bad_utf8, two, one_d, sh, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "bad UTF-8 name");
		CHECK(mt_st_serialize(1, reserved, two, one_d, sh, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "reserved name");
		CHECK(mt_st_serialize(1, empty, two, one_d, sh, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "empty name");
		CHECK(mt_st_serialize(1, names, two, nine, sh, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "9 dims");
		CHECK(mt_st_serialize(1, names, two, one_d, neg, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "negative dim");
		CHECK(mt_st_serialize(1, names, two, two_d, huge, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_LIMIT, "huge");
		CHECK(mt_st_serialize(1, names, two, one_d, sh, dnull, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "NULL data");
		CHECK(mt_st_serialize(1, names, baddt, one_d, sh, d2, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "bad dtype");
		CHECK(mt_st_serialize(0, NULL, NULL, NULL, NULL, NULL, 2, dup, dup, &out,
							  &out_len, &err) == MT_ERR_INVALID, "duplicate meta");
		CHECK(mt_st_serialize(-1, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, &out,
							  &out_len, &err) == MT_ERR_INVALID, "negative n");
	}
}

/* Split a line at tabs into at most max fields; returns the count. */
static int
split_tabs(char *line, char **f, int max)
{
	int			n = 0;

	while (n < max)
	{
		char	   *tab = strchr(line, '\t');

		f[n++] = line;
		if (tab == NULL)
			break;
		*tab = '\0';
		line = tab + 1;
	}
	return n;
}

/* Decode hex into a NUL-terminated string (out must hold strlen(hex)/2+1). */
static void
unhex(const char *hex, char *out)
{
	size_t		n = strlen(hex) / 2;

	for (size_t i = 0; i < n; i++)
	{
		unsigned	v;

		sscanf(hex + 2 * i, "%2x", &v);
		out[i] = (char) v;
	}
	out[n] = '\0';
}

/* Compare the reader with the manifest written by gen_safetensors_cases.py. */
static void
test_python_cases(const char *dir)
{
	char		path[4096];
	uint8_t    *man;
	size_t		man_len;
	char	   *line;
	char	   *next;
	char		cur[4096] = "";
	uint8_t    *buf = NULL;
	size_t		len = 0;
	mt_safetensors st;
	int			parsed = 0;
	int			files = 0;
	int			tensors = 0;

	memset(&st, 0, sizeof(st));
	snprintf(path, sizeof(path), "%s/manifest.txt", dir);
	man = mt_test_read_file(path, &man_len);
	CHECK(man != NULL, "cannot read %s", path);
	if (man == NULL)
		return;
	man = realloc(man, man_len + 1);
	man[man_len] = '\0';

	for (line = (char *) man; line != NULL && *line; line = next)
	{
		char	   *f[8];
		int			nf;
		char		name[2048];
		char		val[2048];

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		nf = split_tabs(line, f, 8);
		if (nf < 2)
			continue;
		if (strcmp(f[1], cur) != 0)
		{
			mt_err		err;

			if (parsed)
				mt_st_free(&st);
			free(buf);
			parsed = 0;
			snprintf(cur, sizeof(cur), "%s", f[1]);
			if (f[1][0] == '/')
				snprintf(path, sizeof(path), "%s", f[1]);
			else
				snprintf(path, sizeof(path), "%s/%s", dir, f[1]);
			buf = mt_test_read_file(path, &len);
			CHECK(buf != NULL, "cannot read %s", path);
			if (buf == NULL)
				continue;
			files++;
			if (strcmp(f[0], "file") == 0 && nf == 5 && strcmp(f[2], "bad") == 0)
			{
				expect_fail_buf(buf, len, MT_ERR_CORRUPT, f[1]);
				continue;
			}
			parsed = (mt_st_parse(buf, len, &st, &err) == MT_OK);
			CHECK(parsed, "%s: %s", f[1], err.msg);
			if (parsed && nf == 5)
				CHECK(st.n_tensors == atoi(f[3]) && st.n_meta == atoi(f[4]),
					  "%s: counts %d %d", f[1], st.n_tensors, st.n_meta);
			continue;
		}
		if (!parsed)
			continue;
		if (strcmp(f[0], "tensor") == 0 && nf == 8 && strlen(f[2]) / 2 < sizeof(name))
		{
			const mt_st_tensor *t;
			char		dims[256] = "";
			int			d;

			unhex(f[2], name);
			t = mt_st_find(&st, name);
			CHECK(t != NULL, "%s: tensor %s missing", cur, f[2]);
			if (t == NULL)
				continue;
			tensors++;
			for (d = 0; d < t->ndim; d++)
				snprintf(dims + strlen(dims), sizeof(dims) - strlen(dims), "%s%lld",
						 d ? "," : "", (long long) t->shape[d]);
			if (t->ndim == 0)
				strcpy(dims, "-");
			CHECK(strcmp(mt_dtype_name(t->dtype), f[3]) == 0, "%s: dtype", name);
			CHECK(strcmp(dims, f[4]) == 0, "%s: shape %s vs %s", name, dims, f[4]);
			CHECK(t->offset == (size_t) strtoull(f[5], NULL, 10) &&
				  t->nbytes == (size_t) strtoull(f[6], NULL, 10),
				  "%s: offset %zu nbytes %zu", name, t->offset, t->nbytes);
			CHECK(crc32_of(buf + t->offset, t->nbytes) == (uint32_t) strtoul(f[7], NULL, 10),
				  "%s: crc", name);
		}
		else if (strcmp(f[0], "meta") == 0 && nf == 4 &&
				 strlen(f[2]) / 2 < sizeof(name) && strlen(f[3]) / 2 < sizeof(val))
		{
			const char *v;

			unhex(f[2], name);
			unhex(f[3], val);
			v = mt_st_meta(&st, name);
			CHECK(v != NULL && strcmp(v, val) == 0, "%s: meta %s", cur, f[2]);
		}
	}
	if (parsed)
		mt_st_free(&st);
	free(buf);
	free(man);
	CHECK(files >= 10 && tensors >= 300, "python cases: %d files, %d tensors",
		  files, tensors);
}

/* Run the suites; argv[1] is the shared folder, argv[2] the Python cases. */
int
main(int argc, char **argv)
{
	if (argc < 2)
	{
		fprintf(stderr, "usage: %s SHARED_DIR [PY_CASES_DIR]\n", argv[0]);
		return 2;
	}
	test_real_file(argv[1]);
	test_valid_small();
	test_hostile();
	test_roundtrip(argc > 2 ? argv[2] : NULL);
	if (argc > 2)
		test_python_cases(argv[2]);
	return TEST_SUMMARY("safetensors");
}
