/*
 * safetensors.c - strict reader and writer of the safetensors format.
 *
 * The bytes come from SQL users, so the reader trusts nothing.  The header
 * is read in two passes over the same text:
 *
 *	1. a JSON validator (RFC 8259: UTF-8, escapes, numbers, literals,
 *	   nesting bounded by MT_JSON_MAX_DEPTH) that also counts the members of
 *	   the top-level object, so arrays are allocated once at their final size;
 *	2. a schema reader that walks the (now known to be well-formed) object
 *	   and extracts the tensor entries and the "__metadata__" strings.
 *
 * Then the tensors are checked against the data section: in range, no
 * overlap, no holes, nothing left over.  No function here reads outside
 * [buf, buf + len), recurses without bound, or calls exit/abort.
 *
 * The writer (mt_st_serialize) lays out a header that the reader accepts.
 */
#include "safetensors.h"

#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MT_JSON_MAX_DEPTH 64
#define MT_ST_META_KEY "__metadata__"

static const char *const dtype_names[] = {
	"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
};
static const int dtype_sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

#define MT_N_DTYPES ((int) (sizeof(dtype_sizes) / sizeof(dtype_sizes[0])))

/* A cursor over JSON text. */
typedef struct jscan
{
	const uint8_t *s;
	size_t		len;
	size_t		pos;
	mt_err	   *err;
} jscan;

/* A number token: where it is and what kind it is. */
typedef struct jnum
{
	size_t		start;
	size_t		end;
	int			negative;
	int			integer;		/* no fraction, no exponent */
} jnum;

/* State of the schema pass. */
typedef struct st_reader
{
	jscan		js;
	mt_safetensors *st;			/* being built */
	int			cap_tensors;	/* size of st->tensors */
	int			seen_meta;
	size_t		data_start;		/* 8 + N */
	size_t		data_len;
} st_reader;

/* A buffer being written, or (buf == NULL) only measured. */
typedef struct st_out
{
	uint8_t    *buf;
	size_t		cap;
	size_t		pos;
	int			overflow;
} st_out;


/* ---------------------------------------------------------------- dtypes */

/* The safetensors name of a dtype ("F32", ...), "?" if out of range. */
const char *
mt_dtype_name(mt_dtype dt)
{
	if ((int) dt < 0 || (int) dt >= MT_N_DTYPES)
		return "?";
	return dtype_names[dt];
}

/* Bytes per element of a dtype, 0 if out of range. */
int
mt_dtype_size(mt_dtype dt)
{
	if ((int) dt < 0 || (int) dt >= MT_N_DTYPES)
		return 0;
	return dtype_sizes[dt];
}

/* Look up a dtype by its safetensors name; 1 if known, else 0. */
int
mt_dtype_from_name(const char *s, mt_dtype *out)
{
	int			i;

	if (s == NULL)
		return 0;
	for (i = 0; i < MT_N_DTYPES; i++)
	{
		if (strcmp(s, dtype_names[i]) == 0)
		{
			if (out != NULL)
				*out = (mt_dtype) i;
			return 1;
		}
	}
	return 0;
}


/* ------------------------------------------------------------ UTF-8 text */

/* Length of the well-formed UTF-8 sequence at s[0..n) (n >= 1), 0 if none. */
static int
utf8_seq_len(const uint8_t *s, size_t n)
{
	uint8_t		c = s[0];
	uint8_t		lo = 0x80;
	uint8_t		hi = 0xBF;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
	{
		if (n < 2 || (s[1] & 0xC0) != 0x80)
			return 0;
		return 2;
	}
	if (c >= 0xE0 && c <= 0xEF)
	{
		if (c == 0xE0)
			lo = 0xA0;			/* no overlong forms */
		if (c == 0xED)
			hi = 0x9F;			/* no surrogates */
		if (n < 3 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80)
			return 0;
		return 3;
	}
	if (c >= 0xF0 && c <= 0xF4)
	{
		if (c == 0xF0)
			lo = 0x90;			/* no overlong forms */
		if (c == 0xF4)
			hi = 0x8F;			/* nothing above U+10FFFF */
		if (n < 4 || s[1] < lo || s[1] > hi ||
			(s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
			return 0;
		return 4;
	}
	return 0;
}

/* 1 if s[0..n) is entirely well-formed UTF-8. */
static int
utf8_valid(const uint8_t *s, size_t n)
{
	size_t		i = 0;

	while (i < n)
	{
		int			k = utf8_seq_len(s + i, n - i);

		if (k == 0)
			return 0;
		i += k;
	}
	return 1;
}

/* Encode code point cp as UTF-8 into dst (if not NULL); returns the length. */
static size_t
utf8_put(uint8_t *dst, unsigned cp)
{
	uint8_t		b[4];
	size_t		n;

	if (cp < 0x80)
	{
		b[0] = (uint8_t) cp;
		n = 1;
	}
	else if (cp < 0x800)
	{
		b[0] = (uint8_t) (0xC0 | (cp >> 6));
		b[1] = (uint8_t) (0x80 | (cp & 0x3F));
		n = 2;
	}
	else if (cp < 0x10000)
	{
		b[0] = (uint8_t) (0xE0 | (cp >> 12));
		b[1] = (uint8_t) (0x80 | ((cp >> 6) & 0x3F));
		b[2] = (uint8_t) (0x80 | (cp & 0x3F));
		n = 3;
	}
	else
	{
		b[0] = (uint8_t) (0xF0 | (cp >> 18));
		b[1] = (uint8_t) (0x80 | ((cp >> 12) & 0x3F));
		b[2] = (uint8_t) (0x80 | ((cp >> 6) & 0x3F));
		b[3] = (uint8_t) (0x80 | (cp & 0x3F));
		n = 4;
	}
	if (dst != NULL)
		memcpy(dst, b, n);
	return n;
}

/*
 * Copy a (possibly hostile) name into buf for an error message: at most
 * about 60 bytes, cut on a UTF-8 boundary, control bytes shown as '?'.
 */
static const char *
display_name(const char *name, char *buf, size_t size)
{
	const size_t limit = 60;
	size_t		n = strlen(name);
	size_t		i;
	int			cut = 0;

	if (size < limit + 4)
		return "";
	if (n > limit)
	{
		n = limit;
		while (n > 0 && ((uint8_t) name[n] & 0xC0) == 0x80)
			n--;
		cut = 1;
	}
	for (i = 0; i < n; i++)
	{
		uint8_t		c = (uint8_t) name[i];

		buf[i] = (c < 0x20 || c == 0x7F) ? '?' : (char) c;
	}
	if (cut)
	{
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return buf;
}


/* ------------------------------------------------------------------ JSON */

/* Report a JSON syntax error at the cursor; returns MT_ERR_CORRUPT. */
static int
json_error(jscan *js, const char *what)
{
	return mt_seterr(js->err, MT_ERR_CORRUPT,
					 "invalid safetensors header: %s at byte %zu of the JSON",
					 what, js->pos);
}

/* Report an allocation failure; returns MT_ERR_NOMEM. */
static int
nomem(mt_err *err)
{
	return mt_seterr(err, MT_ERR_NOMEM, "out of memory reading safetensors");
}

/* Skip JSON whitespace. */
static void
json_skip_ws(jscan *js)
{
	while (js->pos < js->len)
	{
		uint8_t		c = js->s[js->pos];

		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		js->pos++;
	}
}

/* The byte at the cursor, or -1 at the end. */
static int
json_peek(const jscan *js)
{
	return js->pos < js->len ? js->s[js->pos] : -1;
}

/* Read four hex digits of a \u escape. */
static int
json_hex4(jscan *js, unsigned *out)
{
	unsigned	v = 0;
	int			i;

	if (js->len - js->pos < 4)
		return json_error(js, "truncated \\u escape");
	for (i = 0; i < 4; i++)
	{
		uint8_t		c = js->s[js->pos + i];
		unsigned	d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return json_error(js, "invalid \\u escape");
		v = v * 16 + d;
	}
	js->pos += 4;
	*out = v;
	return MT_OK;
}

/*
 * Read a string at the cursor (which must be at its opening quote), check
 * it, and decode it into dst when dst is not NULL.  *dlen gets the decoded
 * length, which never exceeds the raw length.
 */
static int
json_string(jscan *js, uint8_t *dst, size_t *dlen)
{
	size_t		n = 0;

	if (json_peek(js) != '"')
		return json_error(js, "expected a string");
	js->pos++;
	for (;;)
	{
		uint8_t		c;

		if (js->pos >= js->len)
			return json_error(js, "unterminated string");
		c = js->s[js->pos];
		if (c == '"')
		{
			js->pos++;
			break;
		}
		if (c < 0x20)
			return json_error(js, "control character in string");
		if (c == '\\')
		{
			unsigned	cp;

			js->pos++;
			if (js->pos >= js->len)
				return json_error(js, "unterminated string");
			c = js->s[js->pos++];
			switch (c)
			{
				case '"':
				case '\\':
				case '/':
					cp = c;
					break;
				case 'b':
					cp = '\b';
					break;
				case 'f':
					cp = '\f';
					break;
				case 'n':
					cp = '\n';
					break;
				case 'r':
					cp = '\r';
					break;
				case 't':
					cp = '\t';
					break;
				case 'u':
					if (json_hex4(js, &cp) != MT_OK)
						return MT_ERR_CORRUPT;
					if (cp >= 0xDC00 && cp <= 0xDFFF)
						return json_error(js, "unpaired surrogate in \\u escape");
					if (cp >= 0xD800 && cp <= 0xDBFF)
					{
						unsigned	lo;

						if (js->len - js->pos < 2 ||
							js->s[js->pos] != '\\' || js->s[js->pos + 1] != 'u')
							return json_error(js, "unpaired surrogate in \\u escape");
						js->pos += 2;
						if (json_hex4(js, &lo) != MT_OK)
							return MT_ERR_CORRUPT;
						if (lo < 0xDC00 || lo > 0xDFFF)
							return json_error(js, "unpaired surrogate in \\u escape");
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					}
					break;
				default:
					js->pos--;
					return json_error(js, "invalid escape in string");
			}
			n += utf8_put(dst != NULL ? dst + n : NULL, cp);
		}
		else
		{
			int			k = utf8_seq_len(js->s + js->pos, js->len - js->pos);

			if (k == 0)
				return json_error(js, "invalid UTF-8 in string");
			if (dst != NULL)
				memcpy(dst + n, js->s + js->pos, k);
			n += k;
			js->pos += k;
		}
	}
	*dlen = n;
	return MT_OK;
}

/*
 * Read a string at the cursor into a new NUL-terminated mt_malloc'd buffer.
 * *len gets its decoded length (which differs from strlen() when the string
 * holds \u0000).
 */
static int
json_string_dup(jscan *js, char **out, size_t *len)
{
	size_t		start = js->pos;
	size_t		n;
	int			rc;
	char	   *p;

	*out = NULL;
	rc = json_string(js, NULL, &n);
	if (rc != MT_OK)
		return rc;
	p = mt_malloc(n + 1);
	if (p == NULL)
		return nomem(js->err);
	js->pos = start;
	rc = json_string(js, (uint8_t *) p, &n);
	if (rc != MT_OK)
	{
		mt_free(p);
		return rc;
	}
	p[n] = '\0';
	*out = p;
	*len = n;
	return MT_OK;
}

/*
 * Read a short string at the cursor into buf (size bytes).  If its decoded
 * form does not fit (or holds a NUL), buf gets "..." and *fits is 0.
 */
static int
json_string_small(jscan *js, char *buf, size_t size, int *fits)
{
	size_t		start = js->pos;
	size_t		n;
	int			rc;

	rc = json_string(js, NULL, &n);
	if (rc != MT_OK)
		return rc;
	*fits = 0;
	if (n < size)
	{
		js->pos = start;
		rc = json_string(js, (uint8_t *) buf, &n);
		if (rc != MT_OK)
			return rc;
		buf[n] = '\0';
		*fits = (strlen(buf) == n);
	}
	if (!*fits && size >= 4)
		memcpy(buf, "...", 4);
	return MT_OK;
}

/* 1 if c is an ASCII digit. */
static int
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* Read a number token at the cursor (RFC 8259 grammar). */
static int
json_number(jscan *js, jnum *num)
{
	const uint8_t *s = js->s;
	size_t		len = js->len;
	size_t		p = js->pos;

	num->start = p;
	num->negative = 0;
	num->integer = 1;
	if (p < len && s[p] == '-')
	{
		num->negative = 1;
		p++;
	}
	if (p >= len || !is_digit(s[p]))
		return json_error(js, "invalid number");
	if (s[p] == '0')
		p++;
	else
		while (p < len && is_digit(s[p]))
			p++;
	if (p < len && s[p] == '.')
	{
		p++;
		num->integer = 0;
		if (p >= len || !is_digit(s[p]))
		{
			js->pos = p;
			return json_error(js, "invalid number");
		}
		while (p < len && is_digit(s[p]))
			p++;
	}
	if (p < len && (s[p] == 'e' || s[p] == 'E'))
	{
		p++;
		num->integer = 0;
		if (p < len && (s[p] == '+' || s[p] == '-'))
			p++;
		if (p >= len || !is_digit(s[p]))
		{
			js->pos = p;
			return json_error(js, "invalid number");
		}
		while (p < len && is_digit(s[p]))
			p++;
	}
	num->end = p;
	js->pos = p;
	return MT_OK;
}

/*
 * Value of a number token as an unsigned integer of at most max: 0 if it
 * is one, 1 if it is negative or not an integer, 2 if it is larger.
 */
static int
json_uint(const jscan *js, const jnum *num, uint64_t max, uint64_t *out)
{
	uint64_t	v = 0;
	size_t		i;

	if (num->negative || !num->integer)
		return 1;
	for (i = num->start; i < num->end; i++)
	{
		unsigned	d = js->s[i] - '0';

		if (v > (max - d) / 10)
			return 2;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* Match the literal word at the cursor. */
static int
json_literal(jscan *js, const char *word)
{
	size_t		n = strlen(word);

	if (js->len - js->pos < n || memcmp(js->s + js->pos, word, n) != 0)
		return json_error(js, "invalid literal");
	js->pos += n;
	return MT_OK;
}

/*
 * Check one JSON value at the cursor (after optional whitespace), leaving
 * the cursor after it.  Containers nest at most MT_JSON_MAX_DEPTH deep, so
 * the recursion is bounded.  For an object or array, *count (if not NULL)
 * gets its number of members or elements.
 */
static int
json_value(jscan *js, int depth, size_t *count)
{
	int			c;
	size_t		n = 0;
	size_t		dummy;
	int			rc;

	json_skip_ws(js);
	c = json_peek(js);
	if (c == '{' || c == '[')
	{
		int			close = (c == '{') ? '}' : ']';

		if (depth >= MT_JSON_MAX_DEPTH)
			return json_error(js, "nesting too deep");
		js->pos++;
		json_skip_ws(js);
		if (json_peek(js) == close)
			js->pos++;
		else
		{
			for (;;)
			{
				int			d;

				if (c == '{')
				{
					json_skip_ws(js);
					if ((rc = json_string(js, NULL, &dummy)) != MT_OK)
						return rc;
					json_skip_ws(js);
					if (json_peek(js) != ':')
						return json_error(js, "expected ':'");
					js->pos++;
				}
				if ((rc = json_value(js, depth + 1, NULL)) != MT_OK)
					return rc;
				n++;
				json_skip_ws(js);
				d = json_peek(js);
				if (d == ',')
				{
					js->pos++;
					continue;
				}
				if (d == close)
				{
					js->pos++;
					break;
				}
				if (d < 0)
					return json_error(js, "unexpected end");
				return json_error(js, c == '{' ? "expected ',' or '}'" :
								  "expected ',' or ']'");
			}
		}
		if (count != NULL)
			*count = n;
		return MT_OK;
	}
	if (c == '"')
		return json_string(js, NULL, &dummy);
	if (c == 't')
		return json_literal(js, "true");
	if (c == 'f')
		return json_literal(js, "false");
	if (c == 'n')
		return json_literal(js, "null");
	if (c == '-' || is_digit(c))
	{
		jnum		num;

		return json_number(js, &num);
	}
	if (c < 0)
		return json_error(js, "unexpected end");
	return json_error(js, "unexpected character");
}


/* ---------------------------------------------------------------- reader */

/*
 * Bytes of a tensor of the given dtype and shape (dims >= 0 and fitting
 * size_t); 0 on overflow, else 1.  A zero dimension makes it 0 bytes however
 * large the others are.
 */
static int
shape_bytes(mt_dtype dtype, int ndim, const int64_t *shape, size_t *out)
{
	size_t		n = (size_t) mt_dtype_size(dtype);
	int			d;

	for (d = 0; d < ndim; d++)
	{
		if (shape[d] == 0)
		{
			*out = 0;
			return 1;
		}
	}
	for (d = 0; d < ndim; d++)
	{
		if (!mt_mul_size(n, (size_t) shape[d], &n))
			return 0;
	}
	*out = n;
	return 1;
}


/* Report a schema error about tensor t; returns MT_ERR_CORRUPT. */
static int
tensor_error(st_reader *r, const char *name, const char *what)
{
	char		shown[80];

	return mt_seterr(r->js.err, MT_ERR_CORRUPT, "tensor \"%s\": %s",
					 display_name(name, shown, sizeof(shown)), what);
}

/*
 * Read an array of at most max non-negative integers (each <= limit) at
 * the cursor into vals; *n gets the count.  Returns 0, or 1 if the value is
 * not such an array (the caller words the error), or an error code from the
 * JSON layer.  A longer array gives *n = max + 1.
 */
static int
read_uint_array(st_reader *r, uint64_t *vals, int max, uint64_t limit, int *n,
				int *too_large)
{
	jscan	   *js = &r->js;

	*n = 0;
	*too_large = 0;
	if (json_peek(js) != '[')
		return 1;
	js->pos++;
	json_skip_ws(js);
	if (json_peek(js) == ']')
	{
		js->pos++;
		return 0;
	}
	for (;;)
	{
		jnum		num;
		int			c = json_peek(js);
		int			rc;

		if (*n == max)
		{
			*n = max + 1;
			return 1;
		}
		if (c != '-' && !is_digit(c))
			return 1;
		if ((rc = json_number(js, &num)) != MT_OK)
			return rc;
		rc = json_uint(js, &num, limit, &vals[*n]);
		if (rc != 0)
		{
			*too_large = (rc == 2);
			return 1;
		}
		(*n)++;
		json_skip_ws(js);
		c = json_peek(js);
		if (c == ']')
		{
			js->pos++;
			return 0;
		}
		if (c != ',')
			return json_error(js, "expected ',' or ']'");
		js->pos++;
		json_skip_ws(js);
	}
}

/*
 * Read the entry of tensor t (whose name is set) at the cursor: an object
 * with exactly "dtype", "shape" and "data_offsets"; then check its byte
 * range against its shape and the data section.
 */
static int
read_tensor(st_reader *r, mt_st_tensor *t)
{
	jscan	   *js = &r->js;
	int			have_dtype = 0;
	int			have_shape = 0;
	int			have_offsets = 0;
	uint64_t	offs[2] = {0, 0};
	size_t		need;
	int			rc;
	int			i;
	char		msg[160];

	if (json_peek(js) != '{')
		return tensor_error(r, t->name, "entry is not an object");
	js->pos++;
	json_skip_ws(js);
	if (json_peek(js) == '}')
		js->pos++;
	else
	{
		for (;;)
		{
			char		key[32];
			char		shown[80];
			int			fits;
			int			c;

			json_skip_ws(js);
			if ((rc = json_string_small(js, key, sizeof(key), &fits)) != MT_OK)
				return rc;
			json_skip_ws(js);
			if (json_peek(js) != ':')
				return json_error(js, "expected ':'");
			js->pos++;
			json_skip_ws(js);

			if (fits && strcmp(key, "dtype") == 0)
			{
				char		dt[16];

				if (have_dtype++)
					return tensor_error(r, t->name, "duplicate field \"dtype\"");
				if (json_peek(js) != '"')
					return tensor_error(r, t->name, "dtype is not a string");
				if ((rc = json_string_small(js, dt, sizeof(dt), &fits)) != MT_OK)
					return rc;
				if (!fits || !mt_dtype_from_name(dt, &t->dtype))
				{
					snprintf(msg, sizeof(msg), "unknown dtype \"%s\"",
							 display_name(dt, shown, sizeof(shown)));
					return tensor_error(r, t->name, msg);
				}
			}
			else if (fits && strcmp(key, "shape") == 0)
			{
				uint64_t	dims[MT_ST_MAX_DIMS];
				int			n;
				int			big;

				if (have_shape++)
					return tensor_error(r, t->name, "duplicate field \"shape\"");
				rc = read_uint_array(r, dims, MT_ST_MAX_DIMS, (uint64_t) INT64_MAX,
									 &n, &big);
				if (rc == 1)
				{
					if (n > MT_ST_MAX_DIMS)
					{
						snprintf(msg, sizeof(msg),
								 "shape has more than %d dimensions",
								 MT_ST_MAX_DIMS);
						return tensor_error(r, t->name, msg);
					}
					return tensor_error(r, t->name, big ?
										"shape dimension too large" :
										"shape is not an array of non-negative integers");
				}
				if (rc != MT_OK)
					return rc;
				t->ndim = n;
				for (i = 0; i < n; i++)
					t->shape[i] = (int64_t) dims[i];
			}
			else if (fits && strcmp(key, "data_offsets") == 0)
			{
				int			n;
				int			big;

				if (have_offsets++)
					return tensor_error(r, t->name,
										"duplicate field \"data_offsets\"");
				rc = read_uint_array(r, offs, 2, (uint64_t) SIZE_MAX, &n, &big);
				if (rc == 1 && big)
					return tensor_error(r, t->name, "data_offsets out of range");
				if (rc == 1 || (rc == MT_OK && n != 2))
					return tensor_error(r, t->name,
										"data_offsets is not two non-negative integers");
				if (rc != MT_OK)
					return rc;
			}
			else
			{
				snprintf(msg, sizeof(msg), "unknown field \"%s\"",
						 display_name(key, shown, sizeof(shown)));
				return tensor_error(r, t->name, msg);
			}

			json_skip_ws(js);
			c = json_peek(js);
			if (c == ',')
			{
				js->pos++;
				continue;
			}
			if (c == '}')
			{
				js->pos++;
				break;
			}
			return json_error(js, "expected ',' or '}'");
		}
	}

	if (!have_dtype)
		return tensor_error(r, t->name, "missing field \"dtype\"");
	if (!have_shape)
		return tensor_error(r, t->name, "missing field \"shape\"");
	if (!have_offsets)
		return tensor_error(r, t->name, "missing field \"data_offsets\"");

	if (offs[0] > offs[1])
		return tensor_error(r, t->name, "data_offsets begin is after end");
	if (offs[1] > r->data_len)
		return tensor_error(r, t->name, "data_offsets out of range");
	if (!shape_bytes(t->dtype, t->ndim, t->shape, &need))
		return tensor_error(r, t->name, "shape too large");
	if (need != offs[1] - offs[0])
	{
		snprintf(msg, sizeof(msg),
				 "shape and dtype %s need %zu bytes but data_offsets span %zu",
				 mt_dtype_name(t->dtype), need, (size_t) (offs[1] - offs[0]));
		return tensor_error(r, t->name, msg);
	}
	t->offset = r->data_start + (size_t) offs[0];
	t->nbytes = need;
	return MT_OK;
}

/* strcmp for qsort over an array of char pointers. */
static int
cmp_strp(const void *a, const void *b)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/*
 * Read the "__metadata__" object at the cursor: string keys to string
 * values, stored in file order.
 */
static int
read_metadata(st_reader *r)
{
	jscan	   *js = &r->js;
	mt_safetensors *st = r->st;
	size_t		count = 0;
	size_t		start;
	char	  **sorted;
	char		shown[80];
	int			rc;
	int			i;

	if (r->seen_meta++)
		return mt_seterr(js->err, MT_ERR_CORRUPT,
						 "safetensors header has a duplicate \"__metadata__\" key");
	if (json_peek(js) != '{')
		return mt_seterr(js->err, MT_ERR_CORRUPT,
						 "safetensors \"__metadata__\" is not an object");

	/* count the members (the text was already checked) */
	start = js->pos;
	if ((rc = json_value(js, 1, &count)) != MT_OK)
		return rc;
	js->pos = start;
	if (count > (size_t) INT_MAX)
		return mt_seterr(js->err, MT_ERR_CORRUPT,
						 "safetensors \"__metadata__\" has too many entries");
	st->meta_keys = mt_calloc(count ? count : 1, sizeof(char *));
	st->meta_vals = mt_calloc(count ? count : 1, sizeof(char *));
	if (st->meta_keys == NULL || st->meta_vals == NULL)
		return nomem(js->err);

	js->pos++;
	json_skip_ws(js);
	if (json_peek(js) == '}')
	{
		js->pos++;
		return MT_OK;
	}
	for (;;)
	{
		size_t		klen;
		size_t		vlen;
		int			c;

		if ((size_t) st->n_meta >= count)
			return json_error(js, "inconsistent object");	/* cannot happen */
		json_skip_ws(js);
		rc = json_string_dup(js, &st->meta_keys[st->n_meta], &klen);
		if (rc != MT_OK)
			return rc;
		st->n_meta++;
		if (strlen(st->meta_keys[st->n_meta - 1]) != klen)
			return mt_seterr(js->err, MT_ERR_CORRUPT,
							 "safetensors metadata key \"%s\" contains a NUL character",
							 display_name(st->meta_keys[st->n_meta - 1], shown,
										  sizeof(shown)));
		json_skip_ws(js);
		if (json_peek(js) != ':')
			return json_error(js, "expected ':'");
		js->pos++;
		json_skip_ws(js);
		if (json_peek(js) != '"')
			return mt_seterr(js->err, MT_ERR_CORRUPT,
							 "safetensors metadata \"%s\" is not a string",
							 display_name(st->meta_keys[st->n_meta - 1], shown,
										  sizeof(shown)));
		rc = json_string_dup(js, &st->meta_vals[st->n_meta - 1], &vlen);
		if (rc != MT_OK)
			return rc;
		if (strlen(st->meta_vals[st->n_meta - 1]) != vlen)
			return mt_seterr(js->err, MT_ERR_CORRUPT,
							 "safetensors metadata \"%s\" contains a NUL character",
							 display_name(st->meta_keys[st->n_meta - 1], shown,
										  sizeof(shown)));
		json_skip_ws(js);
		c = json_peek(js);
		if (c == ',')
		{
			js->pos++;
			continue;
		}
		if (c == '}')
		{
			js->pos++;
			break;
		}
		return json_error(js, "expected ',' or '}'");
	}

	/* duplicate keys */
	if (st->n_meta > 1)
	{
		sorted = mt_malloc(sizeof(char *) * (size_t) st->n_meta);
		if (sorted == NULL)
			return nomem(js->err);
		memcpy(sorted, st->meta_keys, sizeof(char *) * (size_t) st->n_meta);
		qsort(sorted, st->n_meta, sizeof(char *), cmp_strp);
		for (i = 1; i < st->n_meta; i++)
		{
			if (strcmp(sorted[i - 1], sorted[i]) == 0)
			{
				mt_seterr(js->err, MT_ERR_CORRUPT,
						  "safetensors metadata has a duplicate key \"%s\"",
						  display_name(sorted[i], shown, sizeof(shown)));
				mt_free(sorted);
				return MT_ERR_CORRUPT;
			}
		}
		mt_free(sorted);
	}
	return MT_OK;
}

/* Order tensors by name (for finding duplicates). */
static int
cmp_tensor_name(const void *a, const void *b)
{
	return strcmp(((const mt_st_tensor *) a)->name,
				  ((const mt_st_tensor *) b)->name);
}

/* Order tensors by where their data starts, then ends, then by name. */
static int
cmp_tensor_offset(const void *a, const void *b)
{
	const mt_st_tensor *x = a;
	const mt_st_tensor *y = b;

	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	if (x->nbytes != y->nbytes)
		return x->nbytes < y->nbytes ? -1 : 1;
	return strcmp(x->name, y->name);
}

/*
 * Read the top-level object (already checked as JSON, with count members)
 * into r->st.
 */
static int
read_header(st_reader *r, size_t count)
{
	jscan	   *js = &r->js;
	mt_safetensors *st = r->st;
	int			rc;

	if (count > (size_t) INT_MAX)
		return mt_seterr(js->err, MT_ERR_CORRUPT,
						 "safetensors header has too many entries");
	st->tensors = mt_calloc(count ? count : 1, sizeof(mt_st_tensor));
	if (st->tensors == NULL)
		return nomem(js->err);
	r->cap_tensors = (int) count;

	js->pos = 0;
	json_skip_ws(js);
	js->pos++;					/* the '{' */
	json_skip_ws(js);
	if (json_peek(js) == '}')
		return MT_OK;
	for (;;)
	{
		char	   *key;
		size_t		klen;
		int			c;

		json_skip_ws(js);
		if ((rc = json_string_dup(js, &key, &klen)) != MT_OK)
			return rc;
		json_skip_ws(js);
		if (json_peek(js) != ':')
		{
			mt_free(key);
			return json_error(js, "expected ':'");
		}
		js->pos++;
		json_skip_ws(js);

		if (strcmp(key, MT_ST_META_KEY) == 0 && klen == strlen(key))
		{
			mt_free(key);
			if ((rc = read_metadata(r)) != MT_OK)
				return rc;
		}
		else
		{
			mt_st_tensor *t;

			if (st->n_tensors >= r->cap_tensors)
			{
				mt_free(key);
				return json_error(js, "inconsistent object");	/* cannot happen */
			}
			t = &st->tensors[st->n_tensors++];
			t->name = key;		/* owned by st from here on */
			if (klen == 0)
				return mt_seterr(js->err, MT_ERR_CORRUPT,
								 "safetensors header has a tensor with an empty name");
			if (strlen(key) != klen)
				return tensor_error(r, key, "name contains a NUL character");
			if ((rc = read_tensor(r, t)) != MT_OK)
				return rc;
		}

		json_skip_ws(js);
		c = json_peek(js);
		if (c == ',')
		{
			js->pos++;
			continue;
		}
		if (c == '}')
		{
			js->pos++;
			break;
		}
		return json_error(js, "expected ',' or '}'");
	}
	return MT_OK;
}

/*
 * Check the tensors as a whole: unique names; sorted by offset, they tile
 * the data section exactly.
 */
static int
check_layout(st_reader *r)
{
	mt_safetensors *st = r->st;
	size_t		expect;
	char		shown[80];
	char		msg[160];
	int			i;

	if (st->n_tensors > 1)
	{
		qsort(st->tensors, st->n_tensors, sizeof(mt_st_tensor), cmp_tensor_name);
		for (i = 1; i < st->n_tensors; i++)
		{
			if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
				return mt_seterr(r->js.err, MT_ERR_CORRUPT,
								 "safetensors header has a duplicate tensor \"%s\"",
								 display_name(st->tensors[i].name, shown,
											  sizeof(shown)));
		}
		qsort(st->tensors, st->n_tensors, sizeof(mt_st_tensor), cmp_tensor_offset);
	}

	expect = r->data_start;
	for (i = 0; i < st->n_tensors; i++)
	{
		const mt_st_tensor *t = &st->tensors[i];

		if (t->offset < expect)
		{
			snprintf(msg, sizeof(msg), "data overlaps tensor \"%s\"",
					 display_name(st->tensors[i - 1].name, shown, sizeof(shown)));
			return tensor_error(r, t->name, msg);
		}
		if (t->offset > expect)
		{
			snprintf(msg, sizeof(msg),
					 "%zu bytes before its data are not covered by any tensor",
					 t->offset - expect);
			return tensor_error(r, t->name, msg);
		}
		expect = t->offset + t->nbytes;
	}
	if (expect != r->data_start + r->data_len)
		return mt_seterr(r->js.err, MT_ERR_CORRUPT,
						 "safetensors data section ends with %zu bytes not covered by any tensor",
						 r->data_start + r->data_len - expect);
	return MT_OK;
}

/* Parse and validate a safetensors buffer (see safetensors.h). */
int
mt_st_parse(const uint8_t *buf, size_t len, mt_safetensors *out, mt_err *err)
{
	mt_safetensors st;
	st_reader	r;
	uint64_t	n = 0;
	size_t		count = 0;
	int			rc;
	int			i;

	if (out == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output for safetensors");
	memset(out, 0, sizeof(*out));
	memset(&st, 0, sizeof(st));
	if (buf == NULL && len > 0)
		return mt_seterr(err, MT_ERR_INVALID, "no input for safetensors");
	if (len < 8)
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "safetensors data too short: %zu bytes", len);
	for (i = 7; i >= 0; i--)
		n = (n << 8) | buf[i];
	if (n < 2)
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "safetensors header length %" PRIu64 " is too small", n);
	if (n > MT_ST_MAX_HEADER)
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "safetensors header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes",
						 n, MT_ST_MAX_HEADER);
	if (n > (uint64_t) (len - 8))
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "safetensors header length %" PRIu64 " exceeds the %zu bytes available",
						 n, len - 8);

	memset(&r, 0, sizeof(r));
	r.js.s = buf + 8;
	r.js.len = (size_t) n;
	r.js.err = err;
	r.st = &st;
	r.data_start = 8 + (size_t) n;
	r.data_len = len - r.data_start;

	/* pass 1: well-formed JSON whose top level is an object */
	json_skip_ws(&r.js);
	if (json_peek(&r.js) != '{')
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "safetensors header is not a JSON object");
	if ((rc = json_value(&r.js, 0, &count)) != MT_OK)
		return rc;
	json_skip_ws(&r.js);
	if (r.js.pos != r.js.len)
		return json_error(&r.js, "trailing characters after the object");

	/* pass 2: the schema; then the layout of the data */
	rc = read_header(&r, count);
	if (rc == MT_OK)
		rc = check_layout(&r);
	if (rc != MT_OK)
	{
		mt_st_free(&st);
		return rc;
	}
	*out = st;
	return MT_OK;
}

/* Free everything a parse allocated and zero *st. */
void
mt_st_free(mt_safetensors *st)
{
	int			i;

	if (st == NULL)
		return;
	if (st->tensors != NULL)
	{
		for (i = 0; i < st->n_tensors; i++)
			mt_free(st->tensors[i].name);
		mt_free(st->tensors);
	}
	for (i = 0; i < st->n_meta; i++)
	{
		if (st->meta_keys != NULL)
			mt_free(st->meta_keys[i]);
		if (st->meta_vals != NULL)
			mt_free(st->meta_vals[i]);
	}
	mt_free(st->meta_keys);
	mt_free(st->meta_vals);
	memset(st, 0, sizeof(*st));
}

/* The tensor called name, or NULL. */
const mt_st_tensor *
mt_st_find(const mt_safetensors *st, const char *name)
{
	int			i;

	if (st == NULL || name == NULL)
		return NULL;
	for (i = 0; i < st->n_tensors; i++)
	{
		if (strcmp(st->tensors[i].name, name) == 0)
			return &st->tensors[i];
	}
	return NULL;
}

/* The metadata value for key, or NULL. */
const char *
mt_st_meta(const mt_safetensors *st, const char *key)
{
	int			i;

	if (st == NULL || key == NULL || st->meta_keys == NULL)
		return NULL;
	for (i = 0; i < st->n_meta; i++)
	{
		if (st->meta_keys[i] != NULL && strcmp(st->meta_keys[i], key) == 0)
			return st->meta_vals[i];
	}
	return NULL;
}

/*
 * Parse a JSON array of numbers into out (see safetensors.h).  Conversion
 * uses strtod, which expects LC_NUMERIC "C" (as PostgreSQL backends keep).
 */
int
mt_json_float_array(const char *s, float *out, int max)
{
	jscan		js;
	int			n = 0;

	if (s == NULL || max < 0)
		return -1;
	memset(&js, 0, sizeof(js));
	js.s = (const uint8_t *) s;
	js.len = strlen(s);
	json_skip_ws(&js);
	if (json_peek(&js) != '[')
		return -1;
	js.pos++;
	json_skip_ws(&js);
	if (json_peek(&js) == ']')
		js.pos++;
	else
	{
		for (;;)
		{
			jnum		num;
			char		small[64];
			char	   *tok = small;
			size_t		tlen;
			double		d;
			int			c = json_peek(&js);

			if (c != '-' && !is_digit(c))
				return -1;
			if (json_number(&js, &num) != MT_OK || n >= max || out == NULL)
				return -1;
			tlen = num.end - num.start;
			if (tlen >= sizeof(small))
			{
				tok = mt_malloc(tlen + 1);
				if (tok == NULL)
					return -1;
			}
			memcpy(tok, s + num.start, tlen);
			tok[tlen] = '\0';
			d = strtod(tok, NULL);
			if (tok != small)
				mt_free(tok);
			if (!isfinite(d) || fabs(d) > FLT_MAX)
				return -1;
			out[n++] = (float) d;
			json_skip_ws(&js);
			c = json_peek(&js);
			if (c == ']')
			{
				js.pos++;
				break;
			}
			if (c != ',')
				return -1;
			js.pos++;
			json_skip_ws(&js);
		}
	}
	json_skip_ws(&js);
	return js.pos == js.len ? n : -1;
}


/* ---------------------------------------------------------------- writer */

/* Append n bytes (or only count them when measuring). */
static void
out_bytes(st_out *o, const void *p, size_t n)
{
	size_t		end;

	if (!mt_add_size(o->pos, n, &end))
	{
		o->overflow = 1;
		return;
	}
	if (o->buf != NULL)
	{
		if (end > o->cap)
		{
			o->overflow = 1;
			return;
		}
		memcpy(o->buf + o->pos, p, n);
	}
	o->pos = end;
}

/* Append a C string verbatim. */
static void
out_str(st_out *o, const char *s)
{
	out_bytes(o, s, strlen(s));
}

/* Append an unsigned integer in decimal. */
static void
out_uint(st_out *o, uint64_t v)
{
	char		tmp[32];

	snprintf(tmp, sizeof(tmp), "%" PRIu64, v);
	out_str(o, tmp);
}

/* Append s (valid UTF-8) as a quoted, escaped JSON string. */
static void
out_json_string(st_out *o, const char *s)
{
	const uint8_t *p = (const uint8_t *) s;

	out_bytes(o, "\"", 1);
	for (; *p; p++)
	{
		char		esc[8];

		switch (*p)
		{
			case '"':
				out_bytes(o, "\\\"", 2);
				break;
			case '\\':
				out_bytes(o, "\\\\", 2);
				break;
			case '\b':
				out_bytes(o, "\\b", 2);
				break;
			case '\f':
				out_bytes(o, "\\f", 2);
				break;
			case '\n':
				out_bytes(o, "\\n", 2);
				break;
			case '\r':
				out_bytes(o, "\\r", 2);
				break;
			case '\t':
				out_bytes(o, "\\t", 2);
				break;
			default:
				if (*p < 0x20)
				{
					snprintf(esc, sizeof(esc), "\\u%04x", *p);
					out_bytes(o, esc, 6);
				}
				else
					out_bytes(o, p, 1);
		}
	}
	out_bytes(o, "\"", 1);
}

/* Append the JSON header (not padded). */
static void
out_header(st_out *o, int n, const char *const *names, const mt_dtype *dtypes,
		   const int *ndims, const int64_t (*shapes)[MT_ST_MAX_DIMS],
		   int n_meta, const char *const *meta_keys,
		   const char *const *meta_vals)
{
	size_t		begin = 0;
	int			first = 1;
	int			i;
	int			d;

	out_str(o, "{");
	if (n_meta > 0)
	{
		out_str(o, "\"" MT_ST_META_KEY "\":{");
		for (i = 0; i < n_meta; i++)
		{
			if (i > 0)
				out_str(o, ",");
			out_json_string(o, meta_keys[i]);
			out_str(o, ":");
			out_json_string(o, meta_vals[i]);
		}
		out_str(o, "}");
		first = 0;
	}
	for (i = 0; i < n; i++)
	{
		size_t		nb = 0;

		(void) shape_bytes(dtypes[i], ndims[i], shapes[i], &nb);
		if (!first)
			out_str(o, ",");
		first = 0;
		out_json_string(o, names[i]);
		out_str(o, ":{\"dtype\":\"");
		out_str(o, mt_dtype_name(dtypes[i]));
		out_str(o, "\",\"shape\":[");
		for (d = 0; d < ndims[i]; d++)
		{
			if (d > 0)
				out_str(o, ",");
			out_uint(o, (uint64_t) shapes[i][d]);
		}
		out_str(o, "],\"data_offsets\":[");
		out_uint(o, begin);
		out_str(o, ",");
		out_uint(o, begin + nb);
		out_str(o, "]}");
		begin += nb;
	}
	out_str(o, "}");
}

/* Check that no string in a list is repeated: MT_OK or an error code. */
static int
check_distinct(int n, const char *const *strs, mt_err *err, const char *what)
{
	const char **sorted;
	int			rc = MT_OK;
	int			i;

	if (n < 2)
		return MT_OK;
	sorted = mt_malloc(sizeof(char *) * (size_t) n);
	if (sorted == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory writing safetensors");
	memcpy(sorted, strs, sizeof(char *) * (size_t) n);
	qsort(sorted, n, sizeof(char *), cmp_strp);
	for (i = 1; i < n && rc == MT_OK; i++)
	{
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
		{
			char		shown[80];

			rc = mt_seterr(err, MT_ERR_INVALID, "duplicate %s \"%s\"", what,
						   display_name(sorted[i], shown, sizeof(shown)));
		}
	}
	mt_free(sorted);
	return rc;
}

/* Serialize tensors and metadata as a safetensors file (see safetensors.h). */
int
mt_st_serialize(int n, const char *const *names, const mt_dtype *dtypes,
				const int *ndims, const int64_t (*shapes)[MT_ST_MAX_DIMS],
				const void *const *datas, int n_meta,
				const char *const *meta_keys, const char *const *meta_vals,
				uint8_t **out, size_t *out_len, mt_err *err)
{
	st_out		o;
	size_t		data_total = 0;
	size_t		hlen;
	size_t		padded;
	size_t		total;
	uint8_t    *buf;
	char		shown[80];
	int			rc;
	int			i;
	int			d;

	if (out == NULL || out_len == NULL)
		return mt_seterr(err, MT_ERR_INVALID, "no output for safetensors");
	*out = NULL;
	*out_len = 0;
	if (n < 0 || n_meta < 0)
		return mt_seterr(err, MT_ERR_INVALID, "negative tensor or metadata count");
	if (n > 0 && (names == NULL || dtypes == NULL || ndims == NULL ||
				  shapes == NULL || datas == NULL))
		return mt_seterr(err, MT_ERR_INVALID, "missing tensor arrays");
	if (n_meta > 0 && (meta_keys == NULL || meta_vals == NULL))
		return mt_seterr(err, MT_ERR_INVALID, "missing metadata arrays");

	for (i = 0; i < n; i++)
	{
		size_t		nb = 0;

		if (names[i] == NULL || names[i][0] == '\0')
			return mt_seterr(err, MT_ERR_INVALID, "tensor %d has no name", i);
		display_name(names[i], shown, sizeof(shown));
		if (!utf8_valid((const uint8_t *) names[i], strlen(names[i])))
			return mt_seterr(err, MT_ERR_INVALID,
							 "tensor name \"%s\" is not valid UTF-8", shown);
		if (strcmp(names[i], MT_ST_META_KEY) == 0)
			return mt_seterr(err, MT_ERR_INVALID,
							 "tensor name \"%s\" is reserved", shown);
		if (mt_dtype_size(dtypes[i]) == 0)
			return mt_seterr(err, MT_ERR_INVALID,
							 "tensor \"%s\": unknown dtype %d", shown,
							 (int) dtypes[i]);
		if (ndims[i] < 0 || ndims[i] > MT_ST_MAX_DIMS)
			return mt_seterr(err, MT_ERR_INVALID,
							 "tensor \"%s\": %d dimensions (at most %d)", shown,
							 ndims[i], MT_ST_MAX_DIMS);
		for (d = 0; d < ndims[i]; d++)
		{
			if (shapes[i][d] < 0)
				return mt_seterr(err, MT_ERR_INVALID,
								 "tensor \"%s\": negative dimension", shown);
		}
		if (!shape_bytes(dtypes[i], ndims[i], shapes[i], &nb))
			return mt_seterr(err, MT_ERR_LIMIT,
							 "tensor \"%s\": too large", shown);
		if (nb > 0 && datas[i] == NULL)
			return mt_seterr(err, MT_ERR_INVALID,
							 "tensor \"%s\": no data", shown);
		if (!mt_add_size(data_total, nb, &data_total))
			return mt_seterr(err, MT_ERR_LIMIT, "tensors too large to write");
	}
	for (i = 0; i < n_meta; i++)
	{
		if (meta_keys[i] == NULL || meta_vals[i] == NULL)
			return mt_seterr(err, MT_ERR_INVALID, "metadata entry %d is NULL", i);
		if (!utf8_valid((const uint8_t *) meta_keys[i], strlen(meta_keys[i])) ||
			!utf8_valid((const uint8_t *) meta_vals[i], strlen(meta_vals[i])))
			return mt_seterr(err, MT_ERR_INVALID,
							 "metadata entry %d is not valid UTF-8", i);
	}
	if ((rc = check_distinct(n, names, err, "tensor name")) != MT_OK ||
		(rc = check_distinct(n_meta, meta_keys, err, "metadata key")) != MT_OK)
		return rc;

	/* measure the header, pad it to a multiple of 8, then write it all */
	memset(&o, 0, sizeof(o));
	out_header(&o, n, names, dtypes, ndims, shapes, n_meta, meta_keys, meta_vals);
	hlen = o.pos;
	if (o.overflow || !mt_add_size(hlen, 7, &padded))
		return mt_seterr(err, MT_ERR_LIMIT, "safetensors header too large");
	padded &= ~(size_t) 7;
	if ((uint64_t) padded > MT_ST_MAX_HEADER)
		return mt_seterr(err, MT_ERR_LIMIT, "safetensors header too large");
	if (!mt_add_size(8 + padded, data_total, &total))
		return mt_seterr(err, MT_ERR_LIMIT, "tensors too large to write");

	buf = mt_malloc(total);
	if (buf == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory writing safetensors");
	for (i = 0; i < 8; i++)
		buf[i] = (uint8_t) ((uint64_t) padded >> (8 * i));
	memset(&o, 0, sizeof(o));
	o.buf = buf + 8;
	o.cap = padded;
	out_header(&o, n, names, dtypes, ndims, shapes, n_meta, meta_keys, meta_vals);
	if (o.overflow || o.pos != hlen)
	{
		mt_free(buf);
		return mt_seterr(err, MT_ERR_INTERNAL, "safetensors header size changed");
	}
	memset(buf + 8 + hlen, ' ', padded - hlen);

	total = 8 + padded;
	for (i = 0; i < n; i++)
	{
		size_t		nb = 0;

		(void) shape_bytes(dtypes[i], ndims[i], shapes[i], &nb);
		if (nb > 0)
			memcpy(buf + total, datas[i], nb);
		total += nb;
	}
	*out = buf;
	*out_len = total;
	return MT_OK;
}
