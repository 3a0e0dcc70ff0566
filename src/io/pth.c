/*
 * pth.c - PyTorch checkpoints (torch.save since 1.6) read without Python
 * and without executing anything.
 *
 * A checkpoint is a zip archive ("<name>/data.pkl", "<name>/data/<key>" per
 * storage, "<name>/version", optionally "<name>/byteorder").  Three layers:
 *
 *	1. a strict zip reader: end-of-central-directory record (zip64 records
 *	   when the classic fields are saturated), central directory entries
 *	   checked against their local headers, stored (uncompressed,
 *	   unencrypted) entries only, every range inside the buffer, entries not
 *	   overlapping each other or the directory, CRC-32 of every entry read;
 *	2. a restricted unpickler for data.pkl: an explicit value stack (no
 *	   recursion), the opcodes torch.save's pickles use and an allow-list of
 *	   globals; anything else is an error naming the opcode or global.
 *	   Globals are never looked up or called: REDUCE on an allowed global
 *	   is interpreted here (OrderedDict() is an empty dict, _rebuild_tensor_v2
 *	   a tensor description);
 *	3. the state_dict: tensors gathered from their storages (offsets, strides,
 *	   views of one storage) into contiguous float32 (int64 kept for integer
 *	   storages such as num_batches_tracked).
 */
#include "pth.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ------------------------------------------------------------ utilities */

static uint16_t
rd16(const uint8_t *p)
{
	return (uint16_t) (p[0] | (p[1] << 8));
}

static uint32_t
rd32(const uint8_t *p)
{
	return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
		((uint32_t) p[3] << 24);
}

static uint64_t
rd64(const uint8_t *p)
{
	return (uint64_t) rd32(p) | ((uint64_t) rd32(p + 4) << 32);
}

static int	utf8_ok(const uint8_t *s, size_t n);

/* A hostile name made printable for a message: at most 60 bytes, '?' for controls. */
static const char *
shown(const char *s, size_t n, char *buf, size_t size)
{
	size_t		k = n < 60 ? n : 60;
	size_t		i;

	if (size < 64)
		return "";
	for (i = 0; i < k; i++)
	{
		uint8_t		c = (uint8_t) s[i];

		buf[i] = (c < 0x20 || c == 0x7F) ? '?' : (char) c;
	}
	if (!utf8_ok((const uint8_t *) buf, k))
		for (i = 0; i < k; i++)
			if ((uint8_t) buf[i] >= 0x80)
				buf[i] = '?';	/* messages stay valid UTF-8 */
	if (k < n)
	{
		memcpy(buf + k, "...", 3);
		k += 3;
	}
	buf[k] = '\0';
	return buf;
}

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
static int
utf8_ok(const uint8_t *s, size_t n)
{
	size_t		i = 0;

	while (i < n)
	{
		uint8_t		c = s[i];
		uint8_t		lo = 0x80,
					hi = 0xBF;
		int			k;

		if (c < 0x80)
		{
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF)
			k = 2;
		else if (c >= 0xE0 && c <= 0xEF)
		{
			k = 3;
			if (c == 0xE0)
				lo = 0xA0;
			if (c == 0xED)
				hi = 0x9F;
		}
		else if (c >= 0xF0 && c <= 0xF4)
		{
			k = 4;
			if (c == 0xF0)
				lo = 0x90;
			if (c == 0xF4)
				hi = 0x8F;
		}
		else
			return 0;
		if (n - i < (size_t) k || s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (int j = 2; j < k; j++)
			if ((s[i + j] & 0xC0) != 0x80)
				return 0;
		i += k;
	}
	return 1;
}

static int
nomem(mt_err *err)
{
	return mt_seterr(err, MT_ERR_NOMEM, "out of memory reading a .pth checkpoint");
}

/* ------------------------------------------------------------------ zip */

typedef struct zentry
{
	const char *name;			/* into the buffer, not NUL-terminated */
	size_t		name_len;
	size_t		lho;			/* local header offset */
	size_t		data_off;
	size_t		size;
	uint32_t	crc;
	int			crc_ok;			/* checked already */
} zentry;

typedef struct zipfile
{
	const uint8_t *buf;
	size_t		len;
	zentry	   *e;
	size_t		n;
	zentry	  **by_name;		/* sorted by name, for lookups */
} zipfile;

static int
zip_err(mt_err *err, const char *fmt, const char *what, size_t off)
{
	char		msg[200];

	snprintf(msg, sizeof(msg), fmt, what);
	return mt_seterr(err, MT_ERR_CORRUPT, "invalid .pth archive: %s (at byte %zu)", msg, off);
}

static int
cmp_lho(const void *a, const void *b)
{
	const zentry *x = a,
			   *y = b;

	return x->lho < y->lho ? -1 : x->lho > y->lho;
}

static int
name_cmp(const char *a, size_t an, const char *b, size_t bn)
{
	int			c = memcmp(a, b, an < bn ? an : bn);

	if (c != 0)
		return c;
	return an < bn ? -1 : an > bn;
}

static int
cmp_name(const void *a, const void *b)
{
	const zentry *x = *(zentry * const *) a,
			   *y = *(zentry * const *) b;

	return name_cmp(x->name, x->name_len, y->name, y->name_len);
}

/* Find the zip64 end-of-central-directory record through its locator. */
static int
zip64_eocd(const uint8_t *buf, size_t len, size_t eocd, uint64_t *n, uint64_t *cd_size,
		   uint64_t *cd_off, mt_err *err)
{
	size_t		loc;
	uint64_t	rec;

	if (eocd < 20 || rd32(buf + eocd - 20) != 0x07064b50)
		return zip_err(err, "%s", "saturated end record without a zip64 locator", eocd);
	loc = eocd - 20;
	rec = rd64(buf + loc + 8);
	if (rd32(buf + loc + 4) != 0 || rd32(buf + loc + 16) > 1)
		return zip_err(err, "%s", "multi-disk archive", loc);
	if (rec > loc || loc - rec < 56 || rd32(buf + rec) != 0x06064b50)
		return zip_err(err, "%s", "bad zip64 end record offset", loc);
	if (rd32(buf + rec + 16) != 0 || rd32(buf + rec + 20) != 0 ||
		rd64(buf + rec + 24) != rd64(buf + rec + 32))
		return zip_err(err, "%s", "multi-disk archive", rec);
	*n = rd64(buf + rec + 32);
	*cd_size = rd64(buf + rec + 40);
	*cd_off = rd64(buf + rec + 48);
	(void) len;
	return MT_OK;
}

/* Values from a zip64 extra field (id 1) for the saturated 32-bit fields. */
static int
zip64_extra(const uint8_t *x, size_t xlen, uint64_t *usize, uint64_t *csize,
			uint64_t *lho, int need_u, int need_c, int need_l)
{
	size_t		p = 0;

	while (xlen - p >= 4)
	{
		uint16_t	id = rd16(x + p),
					sz = rd16(x + p + 2);
		size_t		q = p + 4;

		if (sz > xlen - q)
			return 0;
		if (id == 1)
		{
			size_t		end = q + sz;

			if (need_u)
			{
				if (end - q < 8)
					return 0;
				*usize = rd64(x + q);
				q += 8;
			}
			if (need_c)
			{
				if (end - q < 8)
					return 0;
				*csize = rd64(x + q);
				q += 8;
			}
			if (need_l)
			{
				if (end - q < 8)
					return 0;
				*lho = rd64(x + q);
			}
			return 1;
		}
		p = q + sz;
	}
	return 0;
}

static void
zip_free(zipfile *z)
{
	mt_free(z->e);
	mt_free(z->by_name);
	z->e = NULL;
	z->by_name = NULL;
}

/* Read and check the central directory of buf. */
static int
zip_open(const uint8_t *buf, size_t len, zipfile *z, mt_err *err)
{
	size_t		eocd = SIZE_MAX;
	size_t		lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
	uint64_t	n,
				cd_size,
				cd_off;
	size_t		p;
	char		nb[64];
	int			rc;

	memset(z, 0, sizeof(*z));
	z->buf = buf;
	z->len = len;
	if (len < 22)
		return zip_err(err, "%s", "too short for a zip archive", 0);
	for (size_t i = len - 22 + 1; i-- > lo;)
	{
		if (rd32(buf + i) == 0x06054b50 && (size_t) rd16(buf + i + 20) == len - i - 22)
		{
			eocd = i;
			break;
		}
	}
	if (eocd == SIZE_MAX)
		return zip_err(err, "%s", "no end-of-central-directory record", len);
	if (rd16(buf + eocd + 4) != 0 || rd16(buf + eocd + 6) != 0 ||
		rd16(buf + eocd + 8) != rd16(buf + eocd + 10))
		return zip_err(err, "%s", "multi-disk archive", eocd);
	n = rd16(buf + eocd + 10);
	cd_size = rd32(buf + eocd + 12);
	cd_off = rd32(buf + eocd + 16);
	if (n == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu)
	{
		if ((rc = zip64_eocd(buf, len, eocd, &n, &cd_size, &cd_off, err)) != MT_OK)
			return rc;
	}
	if (cd_off > eocd || cd_size > eocd - cd_off)
		return zip_err(err, "%s", "central directory outside the file", eocd);
	if (n == 0)
		return zip_err(err, "%s", "empty archive", eocd);
	if (n > MT_PTH_MAX_ENTRIES || n > cd_size / 46)
		return zip_err(err, "%s", "entry count does not fit the central directory", eocd);
	z->e = mt_calloc((size_t) n, sizeof(zentry));
	z->by_name = mt_calloc((size_t) n, sizeof(zentry *));
	if (z->e == NULL || z->by_name == NULL)
	{
		zip_free(z);
		return nomem(err);
	}
	z->n = (size_t) n;
	p = (size_t) cd_off;
	for (size_t i = 0; i < z->n; i++)
	{
		zentry	   *e = &z->e[i];
		const uint8_t *c = buf + p;
		size_t		end = (size_t) (cd_off + cd_size);
		uint16_t	flags = 0,
					method = 0,
					nlen = 0,
					xlen = 0,
					clen = 0;
		uint64_t	csize = 0,
					usize = 0,
					lho = 0;
		size_t		lnlen,
					lxlen;

		if (end - p < 46 || rd32(c) != 0x02014b50)
			rc = zip_err(err, "%s", "bad central directory entry", p);
		else
		{
			flags = rd16(c + 8);
			method = rd16(c + 10);
			e->crc = rd32(c + 16);
			csize = rd32(c + 20);
			usize = rd32(c + 24);
			nlen = rd16(c + 28);
			xlen = rd16(c + 30);
			clen = rd16(c + 32);
			lho = rd32(c + 42);
			rc = MT_OK;
			if ((size_t) nlen + xlen + clen > end - p - 46)
				rc = zip_err(err, "%s", "central directory entry runs past the directory", p);
			else
			{
				e->name = (const char *) c + 46;
				e->name_len = nlen;
				if ((csize == 0xFFFFFFFFu || usize == 0xFFFFFFFFu || lho == 0xFFFFFFFFu) &&
					!zip64_extra(c + 46 + nlen, xlen, &usize, &csize, &lho,
								 usize == 0xFFFFFFFFu, csize == 0xFFFFFFFFu,
								 lho == 0xFFFFFFFFu))
					rc = zip_err(err, "entry \"%s\": bad zip64 extra field",
								 shown(e->name, nlen, nb, sizeof(nb)), p);
				else if (flags & 0x41)
					rc = mt_seterr(err, MT_ERR_UNSUPPORTED,
								   "entry \"%s\" of the .pth archive is encrypted",
								   shown(e->name, nlen, nb, sizeof(nb)));
				else if (method != 0)
					rc = mt_seterr(err, MT_ERR_UNSUPPORTED,
								   "entry \"%s\" of the .pth archive is compressed (method %u); only stored entries are read, as torch.save writes them",
								   shown(e->name, nlen, nb, sizeof(nb)), method);
				else if (csize != usize)
					rc = zip_err(err, "entry \"%s\": stored sizes differ",
								 shown(e->name, nlen, nb, sizeof(nb)), p);
				else if (lho > cd_off || cd_off - lho < 30)
					rc = zip_err(err, "entry \"%s\": local header outside the file",
								 shown(e->name, nlen, nb, sizeof(nb)), p);
			}
		}
		if (rc != MT_OK)
		{
			zip_free(z);
			return rc;
		}
		/* the local header must agree with the directory */
		c = buf + lho;
		lnlen = rd16(c + 26);
		lxlen = rd16(c + 28);
		if (rd32(c) != 0x04034b50 || rd16(c + 8) != method || lnlen != nlen ||
			lnlen + lxlen > cd_off - lho - 30 ||
			memcmp(c + 30, e->name, nlen) != 0)
		{
			rc = zip_err(err, "entry \"%s\": local header does not match the directory",
						 shown(e->name, nlen, nb, sizeof(nb)), (size_t) lho);
			zip_free(z);
			return rc;
		}
		e->lho = (size_t) lho;
		e->data_off = (size_t) lho + 30 + lnlen + lxlen;
		if (csize > cd_off - e->data_off)
		{
			rc = zip_err(err, "entry \"%s\": data runs past the central directory",
						 shown(e->name, nlen, nb, sizeof(nb)), e->data_off);
			zip_free(z);
			return rc;
		}
		e->size = (size_t) csize;
		if (memchr(e->name, '\0', nlen) != NULL)
		{
			zip_free(z);
			return zip_err(err, "%s", "NUL in an entry name", p);
		}
		p += 46 + (size_t) nlen + xlen + clen;
	}
	/* entries may not overlap each other */
	qsort(z->e, z->n, sizeof(zentry), cmp_lho);
	for (size_t i = 0; i + 1 < z->n; i++)
	{
		if (z->e[i].data_off + z->e[i].size > z->e[i + 1].lho)
		{
			size_t		off = z->e[i + 1].lho;

			rc = zip_err(err, "entry \"%s\" overlaps the next entry",
						 shown(z->e[i].name, z->e[i].name_len, nb, sizeof(nb)), off);
			zip_free(z);
			return rc;
		}
	}
	for (size_t i = 0; i < z->n; i++)
		z->by_name[i] = &z->e[i];
	qsort(z->by_name, z->n, sizeof(zentry *), cmp_name);
	for (size_t i = 0; i + 1 < z->n; i++)
	{
		if (cmp_name(&z->by_name[i], &z->by_name[i + 1]) == 0)
		{
			rc = zip_err(err, "duplicate entry \"%s\"",
						 shown(z->by_name[i]->name, z->by_name[i]->name_len, nb, sizeof(nb)),
						 z->by_name[i + 1]->lho);
			zip_free(z);
			return rc;
		}
	}
	return MT_OK;
}

/* The entry called prefix + rest, or NULL. */
static zentry *
zip_find(zipfile *z, const char *prefix, size_t plen, const char *rest, size_t rlen)
{
	size_t		lo = 0,
				hi = z->n;
	char		small[512];

	if (plen + rlen > sizeof(small))
		return NULL;
	memcpy(small, prefix, plen);
	memcpy(small + plen, rest, rlen);
	while (lo < hi)
	{
		size_t		mid = lo + (hi - lo) / 2;
		int			c = name_cmp(z->by_name[mid]->name, z->by_name[mid]->name_len,
								 small, plen + rlen);

		if (c == 0)
			return z->by_name[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Check an entry's CRC-32 once. */
static int
zip_check_crc(zipfile *z, zentry *e, mt_err *err)
{
	uLong		crc = crc32(0L, Z_NULL, 0);
	size_t		done = 0;
	char		nb[64];

	if (e->crc_ok)
		return MT_OK;
	while (done < e->size)
	{
		size_t		k = e->size - done > (1u << 30) ? (1u << 30) : e->size - done;

		crc = crc32(crc, z->buf + e->data_off + done, (uInt) k);
		done += k;
	}
	if ((uint32_t) crc != e->crc)
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "invalid .pth archive: CRC-32 mismatch in entry \"%s\" (data at byte %zu)",
						 shown(e->name, e->name_len, nb, sizeof(nb)), e->data_off);
	e->crc_ok = 1;
	return MT_OK;
}

/* ------------------------------------------------------------- unpickler */

typedef enum vkind
{
	V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL,
	V_STORAGE, V_TENSOR
} vkind;

static const char *const vkind_names[] = {
	"None", "bool", "int", "float", "str", "tuple", "list", "dict", "global",
	"storage", "tensor"
};

typedef enum gkind
{
	G_ODICT, G_REBUILD_V2, G_REBUILD_PARAM, G_REBUILD_PARAM_STATE,
	G_ST_FLOAT, G_ST_HALF, G_ST_BF16, G_ST_DOUBLE, G_ST_LONG
} gkind;

static const struct
{
	const char *module;
	const char *name;
	gkind		kind;
}			allowed_globals[] = {
	{"collections", "OrderedDict", G_ODICT},
	{"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2},
	{"torch._utils", "_rebuild_parameter", G_REBUILD_PARAM},
	{"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAM_STATE},
	{"torch", "FloatStorage", G_ST_FLOAT},
	{"torch", "HalfStorage", G_ST_HALF},
	{"torch", "BFloat16Storage", G_ST_BF16},
	{"torch", "DoubleStorage", G_ST_DOUBLE},
	{"torch", "LongStorage", G_ST_LONG},
};

#define N_ALLOWED ((int) (sizeof(allowed_globals) / sizeof(allowed_globals[0])))

typedef struct pval pval;
struct pval
{
	vkind		kind;
	pval	   *next;			/* all values, for freeing */
	union
	{
		int64_t		i;
		double		f;
		struct
		{
			const char *s;
			size_t		len;
		}			str;
		struct
		{
			pval	  **items;
			size_t		n,
						cap;
		}			seq;		/* tuple, list; dict as key, value pairs */
		gkind		global;
		struct
		{
			gkind		type;
			zentry	   *entry;
			int64_t		numel;
		}			storage;
		struct
		{
			pval	   *storage;
			int64_t		offset;
			int			ndim;
			int64_t		shape[MT_ST_MAX_DIMS];
			int64_t		stride[MT_ST_MAX_DIMS];
		}			tensor;
	}			u;
};

typedef struct unpickler
{
	const uint8_t *s;			/* data.pkl */
	size_t		len;
	size_t		pos;
	zipfile    *zip;
	const char *prefix;			/* "<archive>/" */
	size_t		prefix_len;
	pval	   *all;
	pval	  **stack;
	size_t		sp,
				stack_cap;
	size_t		marks[MT_PTH_MAX_MARKS];
	int			n_marks;
	pval	  **memo;
	size_t		memo_cap;
	size_t		memo_count;
	mt_err	   *err;
} unpickler;

static pval *
new_val(unpickler *u, vkind k)
{
	pval	   *v = mt_calloc(1, sizeof(pval));

	if (v == NULL)
		return NULL;
	v->kind = k;
	v->next = u->all;
	u->all = v;
	return v;
}

static void
free_vals(unpickler *u)
{
	pval	   *v = u->all;

	while (v != NULL)
	{
		pval	   *next = v->next;

		if (v->kind == V_TUPLE || v->kind == V_LIST || v->kind == V_DICT)
			mt_free(v->u.seq.items);
		mt_free(v);
		v = next;
	}
	u->all = NULL;
	mt_free(u->stack);
	mt_free(u->memo);
	u->stack = NULL;
	u->memo = NULL;
}

static int
pk_err(unpickler *u, size_t at, const char *fmt, const char *what)
{
	char		msg[200];

	snprintf(msg, sizeof(msg), fmt, what);
	return mt_seterr(u->err, MT_ERR_CORRUPT,
					 "invalid .pth pickle: %s (at byte %zu of data.pkl)", msg, at);
}

static int
seq_push(pval *v, pval *item)
{
	if (v->u.seq.n == v->u.seq.cap)
	{
		size_t		cap = v->u.seq.cap ? v->u.seq.cap * 2 : 4;
		pval	  **items = mt_malloc(cap * sizeof(pval *));

		if (items == NULL)
			return 0;
		if (v->u.seq.n)
			memcpy(items, v->u.seq.items, v->u.seq.n * sizeof(pval *));
		mt_free(v->u.seq.items);
		v->u.seq.items = items;
		v->u.seq.cap = cap;
	}
	v->u.seq.items[v->u.seq.n++] = item;
	return 1;
}

static int
push(unpickler *u, pval *v, size_t at)
{
	if (v == NULL)
		return nomem(u->err);
	if (u->sp == u->stack_cap)
	{
		size_t		cap = u->stack_cap ? u->stack_cap * 2 : 64;
		pval	  **s;

		if (cap > MT_PTH_MAX_STACK)
			return mt_seterr(u->err, MT_ERR_LIMIT,
							 "invalid .pth pickle: stack deeper than %d items (at byte %zu of data.pkl)",
							 MT_PTH_MAX_STACK, at);
		s = mt_malloc(cap * sizeof(pval *));
		if (s == NULL)
			return nomem(u->err);
		if (u->sp)
			memcpy(s, u->stack, u->sp * sizeof(pval *));
		mt_free(u->stack);
		u->stack = s;
		u->stack_cap = cap;
	}
	u->stack[u->sp++] = v;
	return MT_OK;
}

/* Items above the innermost mark (0 if there is no mark: an error). */
static int
pop_mark(unpickler *u, size_t *base, size_t at)
{
	if (u->n_marks == 0)
		return pk_err(u, at, "%s", "no MARK on the stack");
	*base = u->marks[--u->n_marks];
	if (*base > u->sp)
		return pk_err(u, at, "%s", "MARK above the stack");
	return MT_OK;
}

static int
need(unpickler *u, size_t n, size_t at)
{
	size_t		floor = u->n_marks ? u->marks[u->n_marks - 1] : 0;

	if (u->sp < floor + n)
		return pk_err(u, at, "%s", "stack underflow");
	return MT_OK;
}

static int
memo_put(unpickler *u, uint64_t idx, size_t at)
{
	if (u->sp == 0)
		return pk_err(u, at, "%s", "memo store from an empty stack");
	if (idx >= u->len)
		return pk_err(u, at, "%s", "memo index larger than the pickle");
	if (idx >= u->memo_cap)
	{
		size_t		cap = u->memo_cap ? u->memo_cap : 64;
		pval	  **m;

		while (cap <= idx)
			cap *= 2;
		m = mt_calloc(cap, sizeof(pval *));
		if (m == NULL)
			return nomem(u->err);
		if (u->memo_cap)
			memcpy(m, u->memo, u->memo_cap * sizeof(pval *));
		mt_free(u->memo);
		u->memo = m;
		u->memo_cap = cap;
	}
	if (u->memo[idx] == NULL)
		u->memo_count++;
	u->memo[idx] = u->stack[u->sp - 1];
	return MT_OK;
}

static int
memo_get(unpickler *u, uint64_t idx, size_t at)
{
	if (idx >= u->memo_cap || u->memo[idx] == NULL)
		return pk_err(u, at, "%s", "memo read of an unset index");
	return push(u, u->memo[idx], at);
}

/* Take n bytes at the cursor. */
static int
take(unpickler *u, size_t n, const uint8_t **p, size_t at)
{
	if (u->len - u->pos < n)
		return pk_err(u, at, "%s", "truncated opcode argument");
	*p = u->s + u->pos;
	u->pos += n;
	return MT_OK;
}

static int
str_is(const pval *v, const char *s)
{
	return v->kind == V_STR && v->u.str.len == strlen(s) &&
		memcmp(v->u.str.s, s, v->u.str.len) == 0;
}

/* Resolve module.name against the allow-list. */
static int
find_global(unpickler *u, const char *mod, size_t mlen, const char *name, size_t nlen,
			size_t at)
{
	char		a[64],
				b[64];

	for (int i = 0; i < N_ALLOWED; i++)
	{
		if (strlen(allowed_globals[i].module) == mlen &&
			memcmp(allowed_globals[i].module, mod, mlen) == 0 &&
			strlen(allowed_globals[i].name) == nlen &&
			memcmp(allowed_globals[i].name, name, nlen) == 0)
		{
			pval	   *v = new_val(u, V_GLOBAL);

			if (v == NULL)
				return nomem(u->err);
			v->u.global = allowed_globals[i].kind;
			return push(u, v, at);
		}
	}
	mt_seterr(u->err, MT_ERR_UNSUPPORTED,
			  "the .pth pickle refers to the global %s.%s, which is not allowed (at byte %zu of data.pkl)",
			  shown(mod, mlen, a, sizeof(a)), shown(name, nlen, b, sizeof(b)), at);
	mt_setdetail(u->err,
				 "Only a state_dict of tensors is read (globals allowed: collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and the float, half, bfloat16, double and long storages); nothing in the file is executed. Save model.state_dict(), not the model or other objects.");
	return MT_ERR_UNSUPPORTED;
}

static int
int_arg(const pval *v, int64_t *out)
{
	if (v->kind == V_INT)
		*out = v->u.i;
	else if (v->kind == V_BOOL)
		*out = v->u.i;
	else
		return 0;
	return 1;
}

/* persistent id ('storage', type, key, location, numel) -> a storage */
static int
persistent_load(unpickler *u, pval *pid, size_t at)
{
	pval	  **it;
	pval	   *v;
	zentry	   *e;
	int64_t		numel;
	int			es;
	char		nb[64];
	char		key[80];

	if (pid->kind != V_TUPLE || pid->u.seq.n != 5)
		return pk_err(u, at, "%s", "persistent id is not a 5-tuple ('storage', type, key, location, size)");
	it = pid->u.seq.items;
	if (!str_is(it[0], "storage"))
		return pk_err(u, at, "%s", "persistent id is not a storage");
	if (it[1]->kind != V_GLOBAL || it[1]->u.global < G_ST_FLOAT)
		return pk_err(u, at, "%s", "persistent id with a storage type that is not a storage class");
	if (it[2]->kind != V_STR || it[2]->u.str.len == 0 || it[2]->u.str.len > 64)
		return pk_err(u, at, "%s", "storage key is not a short string");
	if (it[3]->kind != V_STR)
		return pk_err(u, at, "%s", "storage location is not a string");
	if (!int_arg(it[4], &numel) || numel < 0)
		return pk_err(u, at, "%s", "storage size is not a non-negative integer");
	shown(it[2]->u.str.s, it[2]->u.str.len, key, sizeof(key));
	{
		char		rest[80];

		memcpy(rest, "data/", 5);
		memcpy(rest + 5, it[2]->u.str.s, it[2]->u.str.len);
		e = zip_find(u->zip, u->prefix, u->prefix_len, rest, 5 + it[2]->u.str.len);
	}
	if (e == NULL)
		return mt_seterr(u->err, MT_ERR_CORRUPT,
						 "invalid .pth archive: storage \"%s\" has no entry %sdata/%s",
						 key, shown(u->prefix, u->prefix_len, nb, sizeof(nb)), key);
	switch (it[1]->u.global)
	{
		case G_ST_HALF:
		case G_ST_BF16:
			es = 2;
			break;
		case G_ST_FLOAT:
			es = 4;
			break;
		default:
			es = 8;
			break;
	}
	if ((uint64_t) numel > e->size / es || (uint64_t) numel * es != e->size)
		return mt_seterr(u->err, MT_ERR_CORRUPT,
						 "invalid .pth archive: storage \"%s\" declares %lld elements of %d bytes but entry \"%s\" holds %zu bytes",
						 key, (long long) numel, es, shown(e->name, e->name_len, nb, sizeof(nb)),
						 e->size);
	v = new_val(u, V_STORAGE);
	if (v == NULL)
		return nomem(u->err);
	v->u.storage.type = it[1]->u.global;
	v->u.storage.entry = e;
	v->u.storage.numel = numel;
	return push(u, v, at);
}

/* A tuple of at most MT_ST_MAX_DIMS non-negative ints. */
static int
int_tuple(const pval *v, int64_t *out, int *n)
{
	if (v->kind != V_TUPLE || v->u.seq.n > MT_ST_MAX_DIMS)
		return 0;
	for (size_t i = 0; i < v->u.seq.n; i++)
	{
		if (v->u.seq.items[i]->kind != V_INT || v->u.seq.items[i]->u.i < 0)
			return 0;
		out[i] = v->u.seq.items[i]->u.i;
	}
	*n = (int) v->u.seq.n;
	return 1;
}

/* REDUCE: apply an allowed global to a tuple of arguments. */
static int
reduce(unpickler *u, pval *f, pval *args, size_t at)
{
	pval	   *v;

	if (f->kind != V_GLOBAL)
		return pk_err(u, at, "REDUCE on a %s, not an allowed callable", vkind_names[f->kind]);
	if (args->kind != V_TUPLE)
		return pk_err(u, at, "%s", "REDUCE arguments are not a tuple");
	switch (f->u.global)
	{
		case G_ODICT:
			if (args->u.seq.n != 0)
				return pk_err(u, at, "%s", "OrderedDict called with arguments");
			return push(u, new_val(u, V_DICT), at);
		case G_REBUILD_V2:
			{
				pval	  **a = args->u.seq.items;
				int			nd,
							ns;

				if (args->u.seq.n != 6 && args->u.seq.n != 7)
					return pk_err(u, at, "%s", "_rebuild_tensor_v2 takes 6 or 7 arguments");
				if (a[0]->kind != V_STORAGE)
					return pk_err(u, at, "%s", "_rebuild_tensor_v2 without a storage");
				v = new_val(u, V_TENSOR);
				if (v == NULL)
					return nomem(u->err);
				v->u.tensor.storage = a[0];
				if (a[1]->kind != V_INT || a[1]->u.i < 0)
					return pk_err(u, at, "%s", "tensor storage offset is not a non-negative integer");
				v->u.tensor.offset = a[1]->u.i;
				if (!int_tuple(a[2], v->u.tensor.shape, &nd))
					return pk_err(u, at, "tensor size is not a tuple of at most %s non-negative integers", "8");
				if (!int_tuple(a[3], v->u.tensor.stride, &ns) || ns != nd)
					return pk_err(u, at, "%s", "tensor stride is not a tuple of non-negative integers as long as its size");
				v->u.tensor.ndim = nd;
				return push(u, v, at);
			}
		case G_REBUILD_PARAM:
		case G_REBUILD_PARAM_STATE:
			if (args->u.seq.n != (f->u.global == G_REBUILD_PARAM ? 3u : 4u) ||
				args->u.seq.items[0]->kind != V_TENSOR)
				return pk_err(u, at, "%s", "_rebuild_parameter takes a tensor and 2 (or 3) more arguments");
			return push(u, args->u.seq.items[0], at);
		default:
			return pk_err(u, at, "%s", "REDUCE on a storage class");
	}
}

static const char *
opcode_name(uint8_t op)
{
	switch (op)
	{
		case 'c': return "GLOBAL";
		case 'i': return "INST";
		case 'o': return "OBJ";
		case 0x81: return "NEWOBJ";
		case 0x92: return "NEWOBJ_EX";
		case 'P': return "PERSID";
		case 0x82: case 0x83: case 0x84: return "EXT";
		case 'I': return "INT";
		case 'L': return "LONG";
		case 0x8b: return "LONG4";
		case 'F': return "FLOAT";
		case 'S': case 'T': case 'U': return "STRING";
		case 'V': return "UNICODE";
		case 'B': case 'C': case 0x8e: return "BYTES";
		case 0x96: return "BYTEARRAY8";
		case 0x97: return "NEXT_BUFFER";
		case 0x98: return "READONLY_BUFFER";
		case 'g': return "GET";
		case 'p': return "PUT";
		case 0x8f: return "EMPTY_SET";
		case 0x90: return "ADDITEMS";
		case 0x91: return "FROZENSET";
		default: return "unknown";
	}
}

/* Run data.pkl; *result gets the value at STOP. */
static int
unpickle(unpickler *u, pval **result)
{
	const uint8_t *p = NULL;
	int			rc;

	for (;;)
	{
		size_t		at = u->pos;
		uint8_t		op;
		pval	   *v;
		size_t		base = 0;

		if (u->pos >= u->len)
			return pk_err(u, at, "%s", "no STOP opcode");
		op = u->s[u->pos++];
		rc = MT_OK;
		switch (op)
		{
			case 0x80:			/* PROTO */
				if ((rc = take(u, 1, &p, at)) == MT_OK && (p[0] < 2 || p[0] > 5))
					rc = pk_err(u, at, "%s", "unsupported pickle protocol");
				break;
			case 0x95:			/* FRAME: framing is only a hint */
				rc = take(u, 8, &p, at);
				break;
			case '.':			/* STOP */
				if ((rc = need(u, 1, at)) != MT_OK)
					return rc;
				*result = u->stack[u->sp - 1];
				return MT_OK;
			case '(':			/* MARK */
				if (u->n_marks == MT_PTH_MAX_MARKS)
					return mt_seterr(u->err, MT_ERR_LIMIT,
									 "invalid .pth pickle: MARKs nested deeper than %d (at byte %zu of data.pkl)",
									 MT_PTH_MAX_MARKS, at);
				u->marks[u->n_marks++] = u->sp;
				break;
			case '0':			/* POP */
				if ((rc = need(u, 1, at)) == MT_OK)
					u->sp--;
				break;
			case '1':			/* POP_MARK */
				if ((rc = pop_mark(u, &base, at)) == MT_OK)
					u->sp = base;
				break;
			case '2':			/* DUP */
				if ((rc = need(u, 1, at)) == MT_OK)
					rc = push(u, u->stack[u->sp - 1], at);
				break;
			case 'N':
				rc = push(u, new_val(u, V_NONE), at);
				break;
			case 0x88:			/* NEWTRUE */
			case 0x89:			/* NEWFALSE */
				if ((v = new_val(u, V_BOOL)) != NULL)
					v->u.i = (op == 0x88);
				rc = push(u, v, at);
				break;
			case 'J':			/* BININT */
			case 'K':			/* BININT1 */
			case 'M':			/* BININT2 */
				{
					size_t		n = op == 'J' ? 4 : op == 'K' ? 1 : 2;

					if ((rc = take(u, n, &p, at)) != MT_OK)
						break;
					if ((v = new_val(u, V_INT)) != NULL)
						v->u.i = op == 'J' ? (int64_t) (int32_t) rd32(p) :
							op == 'K' ? p[0] : rd16(p);
					rc = push(u, v, at);
					break;
				}
			case 0x8a:			/* LONG1 */
				{
					uint64_t	x = 0;
					size_t		n;

					if ((rc = take(u, 1, &p, at)) != MT_OK)
						break;
					n = p[0];
					if (n > 8)
					{
						rc = pk_err(u, at, "%s", "integer wider than 64 bits");
						break;
					}
					if ((rc = take(u, n, &p, at)) != MT_OK)
						break;
					for (size_t i = 0; i < n; i++)
						x |= (uint64_t) p[i] << (8 * i);
					if (n > 0 && n < 8 && (p[n - 1] & 0x80))
						x |= ~(uint64_t) 0 << (8 * n);	/* sign-extend */
					if ((v = new_val(u, V_INT)) != NULL)
						memcpy(&v->u.i, &x, sizeof(x));
					rc = push(u, v, at);
					break;
				}
			case 'G':			/* BINFLOAT, big-endian */
				{
					uint64_t	x = 0;

					if ((rc = take(u, 8, &p, at)) != MT_OK)
						break;
					for (int i = 0; i < 8; i++)
						x = (x << 8) | p[i];
					if ((v = new_val(u, V_FLOAT)) != NULL)
						memcpy(&v->u.f, &x, sizeof(x));
					rc = push(u, v, at);
					break;
				}
			case 'X':			/* BINUNICODE */
			case 0x8c:			/* SHORT_BINUNICODE */
			case 0x8d:			/* BINUNICODE8 */
				{
					size_t		w = op == 'X' ? 4 : op == 0x8c ? 1 : 8;
					uint64_t	n;

					if ((rc = take(u, w, &p, at)) != MT_OK)
						break;
					n = w == 4 ? rd32(p) : w == 1 ? p[0] : rd64(p);
					if (n > u->len - u->pos)
					{
						rc = pk_err(u, at, "%s", "string runs past the end");
						break;
					}
					if ((rc = take(u, (size_t) n, &p, at)) != MT_OK)
						break;
					if (!utf8_ok(p, (size_t) n))
					{
						rc = pk_err(u, at, "%s", "string is not valid UTF-8");
						break;
					}
					if ((v = new_val(u, V_STR)) != NULL)
					{
						v->u.str.s = (const char *) p;
						v->u.str.len = (size_t) n;
					}
					rc = push(u, v, at);
					break;
				}
			case '}':			/* EMPTY_DICT */
				rc = push(u, new_val(u, V_DICT), at);
				break;
			case ']':			/* EMPTY_LIST */
				rc = push(u, new_val(u, V_LIST), at);
				break;
			case ')':			/* EMPTY_TUPLE */
				rc = push(u, new_val(u, V_TUPLE), at);
				break;
			case 't':			/* TUPLE */
			case 'l':			/* LIST */
			case 'd':			/* DICT */
				if ((rc = pop_mark(u, &base, at)) != MT_OK)
					break;
				if (op == 'd' && (u->sp - base) % 2 != 0)
				{
					rc = pk_err(u, at, "%s", "DICT with an odd number of items");
					break;
				}
				if ((v = new_val(u, op == 't' ? V_TUPLE : op == 'l' ? V_LIST : V_DICT)) == NULL)
					return nomem(u->err);
				for (size_t i = base; i < u->sp; i++)
					if (!seq_push(v, u->stack[i]))
						return nomem(u->err);
				u->sp = base;
				rc = push(u, v, at);
				break;
			case 0x85:			/* TUPLE1..3 */
			case 0x86:
			case 0x87:
				{
					size_t		n = op - 0x84;

					if ((rc = need(u, n, at)) != MT_OK)
						break;
					if ((v = new_val(u, V_TUPLE)) == NULL)
						return nomem(u->err);
					for (size_t i = u->sp - n; i < u->sp; i++)
						if (!seq_push(v, u->stack[i]))
							return nomem(u->err);
					u->sp -= n;
					rc = push(u, v, at);
					break;
				}
			case 'q':			/* BINPUT */
				if ((rc = take(u, 1, &p, at)) == MT_OK)
					rc = memo_put(u, p[0], at);
				break;
			case 'r':			/* LONG_BINPUT */
				if ((rc = take(u, 4, &p, at)) == MT_OK)
					rc = memo_put(u, rd32(p), at);
				break;
			case 0x94:			/* MEMOIZE */
				rc = memo_put(u, u->memo_count, at);
				break;
			case 'h':			/* BINGET */
				if ((rc = take(u, 1, &p, at)) == MT_OK)
					rc = memo_get(u, p[0], at);
				break;
			case 'j':			/* LONG_BINGET */
				if ((rc = take(u, 4, &p, at)) == MT_OK)
					rc = memo_get(u, rd32(p), at);
				break;
			case 's':			/* SETITEM */
				if ((rc = need(u, 3, at)) != MT_OK)
					break;
				v = u->stack[u->sp - 3];
				if (v->kind != V_DICT)
				{
					rc = pk_err(u, at, "SETITEM on a %s", vkind_names[v->kind]);
					break;
				}
				if (!seq_push(v, u->stack[u->sp - 2]) || !seq_push(v, u->stack[u->sp - 1]))
					return nomem(u->err);
				u->sp -= 2;
				break;
			case 'u':			/* SETITEMS */
			case 'e':			/* APPENDS */
				if ((rc = pop_mark(u, &base, at)) != MT_OK)
					break;
				if (base == 0 || base > u->sp)
				{
					rc = pk_err(u, at, "%s", "nothing below the MARK");
					break;
				}
				v = u->stack[base - 1];
				if (v->kind != (op == 'u' ? V_DICT : V_LIST))
				{
					rc = pk_err(u, at, op == 'u' ? "SETITEMS on a %s" : "APPENDS on a %s",
								vkind_names[v->kind]);
					break;
				}
				if (op == 'u' && (u->sp - base) % 2 != 0)
				{
					rc = pk_err(u, at, "%s", "SETITEMS with an odd number of items");
					break;
				}
				for (size_t i = base; i < u->sp; i++)
					if (!seq_push(v, u->stack[i]))
						return nomem(u->err);
				u->sp = base;
				break;
			case 'a':			/* APPEND */
				if ((rc = need(u, 2, at)) != MT_OK)
					break;
				v = u->stack[u->sp - 2];
				if (v->kind != V_LIST)
				{
					rc = pk_err(u, at, "APPEND on a %s", vkind_names[v->kind]);
					break;
				}
				if (!seq_push(v, u->stack[u->sp - 1]))
					return nomem(u->err);
				u->sp--;
				break;
			case 'b':			/* BUILD: state of a dict or tensor is ignored */
				if ((rc = need(u, 2, at)) != MT_OK)
					break;
				v = u->stack[u->sp - 2];
				if (v->kind != V_DICT && v->kind != V_TENSOR)
				{
					rc = pk_err(u, at, "BUILD on a %s", vkind_names[v->kind]);
					break;
				}
				u->sp--;
				break;
			case 'R':			/* REDUCE */
				{
					pval	   *f,
							   *args;

					if ((rc = need(u, 2, at)) != MT_OK)
						break;
					f = u->stack[u->sp - 2];
					args = u->stack[u->sp - 1];
					u->sp -= 2;
					rc = reduce(u, f, args, at);
					break;
				}
			case 'Q':			/* BINPERSID */
				if ((rc = need(u, 1, at)) != MT_OK)
					break;
				v = u->stack[--u->sp];
				rc = persistent_load(u, v, at);
				break;
			case 'c':			/* GLOBAL "module\nname\n" */
				{
					const uint8_t *m = u->s + u->pos,
							   *nl1,
							   *nl2;
					size_t		rest = u->len - u->pos;

					nl1 = memchr(m, '\n', rest);
					nl2 = nl1 ? memchr(nl1 + 1, '\n', rest - (nl1 + 1 - m)) : NULL;
					if (nl2 == NULL)
					{
						rc = pk_err(u, at, "%s", "GLOBAL without two lines");
						break;
					}
					u->pos += nl2 + 1 - m;
					rc = find_global(u, (const char *) m, nl1 - m,
									 (const char *) nl1 + 1, nl2 - nl1 - 1, at);
					break;
				}
			case 0x93:			/* STACK_GLOBAL */
				{
					pval	   *mod,
							   *name;

					if ((rc = need(u, 2, at)) != MT_OK)
						break;
					mod = u->stack[u->sp - 2];
					name = u->stack[u->sp - 1];
					if (mod->kind != V_STR || name->kind != V_STR)
					{
						rc = pk_err(u, at, "%s", "STACK_GLOBAL of non-strings");
						break;
					}
					u->sp -= 2;
					rc = find_global(u, mod->u.str.s, mod->u.str.len,
									 name->u.str.s, name->u.str.len, at);
					break;
				}
			default:
				rc = mt_seterr(u->err,
							   strcmp(opcode_name(op), "unknown") == 0 ? MT_ERR_CORRUPT : MT_ERR_UNSUPPORTED,
							   "the .pth pickle uses opcode 0x%02x (%s) at byte %zu of data.pkl, which medtl does not accept",
							   op, opcode_name(op), at);
				mt_setdetail(u->err, "Only the opcodes a torch.save state_dict needs are read; nothing in the file is executed.");
				break;
		}
		if (rc != MT_OK)
			return rc;
	}
}

/* ----------------------------------------------------------- state_dict */

static float
half_to_float(uint16_t h)
{
	uint32_t	sign = (uint32_t) (h & 0x8000) << 16;
	uint32_t	exp = (h >> 10) & 0x1F;
	uint32_t	man = h & 0x3FF;
	uint32_t	bits;
	float		f;

	if (exp == 0)
	{
		f = ldexpf((float) man, -24);	/* zero or subnormal */
		return sign ? -f : f;
	}
	if (exp == 31)
		bits = sign | 0x7F800000u | (man << 13);
	else
		bits = sign | ((exp + 112) << 23) | (man << 13);
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* Copy element src (of storage type t) into dst as float32 or int64. */
static void
convert(gkind t, const uint8_t *src, uint8_t *dst, size_t n)
{
	switch (t)
	{
		case G_ST_FLOAT:
		case G_ST_LONG:
			memcpy(dst, src, n * (t == G_ST_FLOAT ? 4 : 8));
			break;
		case G_ST_HALF:
			for (size_t i = 0; i < n; i++)
			{
				float		f = half_to_float(rd16(src + 2 * i));

				memcpy(dst + 4 * i, &f, 4);
			}
			break;
		case G_ST_BF16:
			for (size_t i = 0; i < n; i++)
			{
				uint32_t	bits = (uint32_t) rd16(src + 2 * i) << 16;

				memcpy(dst + 4 * i, &bits, 4);
			}
			break;
		default:				/* G_ST_DOUBLE */
			for (size_t i = 0; i < n; i++)
			{
				double		d;
				float		f;

				memcpy(&d, src + 8 * i, 8);
				if (isnan(d))
					f = NAN;
				else if (d > FLT_MAX)
					f = INFINITY;
				else if (d < -FLT_MAX)
					f = -INFINITY;
				else
					f = (float) d;
				memcpy(dst + 4 * i, &f, 4);
			}
			break;
	}
}

static int
storage_esize(gkind t)
{
	return (t == G_ST_HALF || t == G_ST_BF16) ? 2 : (t == G_ST_FLOAT ? 4 : 8);
}

/*
 * Check that a tensor's view lies within its storage; *numel gets its
 * element count.
 */
static int
check_view(const pval *t, const char *name, size_t *numel, mt_err *err)
{
	const pval *s = t->u.tensor.storage;
	uint64_t	n = 1,
				last = (uint64_t) t->u.tensor.offset;
	char		nb[64],
				eb[64];

	for (int d = 0; d < t->u.tensor.ndim; d++)
	{
		if (t->u.tensor.shape[d] == 0)
		{
			*numel = 0;
			return MT_OK;
		}
	}
	for (int d = 0; d < t->u.tensor.ndim; d++)
	{
		uint64_t	ext;

		if (__builtin_mul_overflow(n, (uint64_t) t->u.tensor.shape[d], &n) ||
			__builtin_mul_overflow((uint64_t) (t->u.tensor.shape[d] - 1),
								   (uint64_t) t->u.tensor.stride[d], &ext) ||
			__builtin_add_overflow(last, ext, &last))
			return mt_seterr(err, MT_ERR_CORRUPT,
							 "invalid .pth checkpoint: tensor \"%s\" has a size or stride that overflows",
							 shown(name, strlen(name), nb, sizeof(nb)));
	}
	if (last >= (uint64_t) s->u.storage.numel)
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "invalid .pth checkpoint: tensor \"%s\" (offset %lld) reaches element %llu of a storage of %lld elements (entry \"%s\")",
						 shown(name, strlen(name), nb, sizeof(nb)),
						 (long long) t->u.tensor.offset, (unsigned long long) last,
						 (long long) s->u.storage.numel,
						 shown(s->u.storage.entry->name, s->u.storage.entry->name_len, eb, sizeof(eb)));
	if (n > SIZE_MAX / 8)
		return mt_seterr(err, MT_ERR_LIMIT, ".pth tensor \"%s\" is too large",
						 shown(name, strlen(name), nb, sizeof(nb)));
	*numel = (size_t) n;
	return MT_OK;
}

/* Gather tensor t into dst (contiguous, row-major). */
static void
gather(const pval *t, const uint8_t *sbase, uint8_t *dst, size_t numel)
{
	gkind		ty = t->u.tensor.storage->u.storage.type;
	int			es = storage_esize(ty);
	int			os = ty == G_ST_LONG ? 8 : 4;
	int			nd = t->u.tensor.ndim;
	const int64_t *shape = t->u.tensor.shape;
	const int64_t *stride = t->u.tensor.stride;
	int64_t		idx[MT_ST_MAX_DIMS] = {0};
	int64_t		inner,
				istride;
	size_t		done = 0;

	if (numel == 0)
		return;
	if (nd == 0)
	{
		convert(ty, sbase + (size_t) t->u.tensor.offset * es, dst, 1);
		return;
	}
	inner = shape[nd - 1];
	istride = stride[nd - 1];
	while (done < numel)
	{
		size_t		off = (size_t) t->u.tensor.offset;

		for (int d = 0; d < nd - 1; d++)
			off += (size_t) idx[d] * (size_t) stride[d];
		if (istride == 1)
			convert(ty, sbase + off * es, dst + done * os, (size_t) inner);
		else
			for (int64_t i = 0; i < inner; i++)
				convert(ty, sbase + (off + (size_t) i * istride) * es,
						dst + (done + i) * os, 1);
		done += (size_t) inner;
		for (int d = nd - 2; d >= 0; d--)
		{
			if (++idx[d] < shape[d])
				break;
			idx[d] = 0;
		}
	}
}

static int
dict_is_tensors(const pval *d)
{
	for (size_t i = 0; i + 1 < d->u.seq.n; i += 2)
		if (d->u.seq.items[i + 1]->kind != V_TENSOR)
			return 0;
	return 1;
}

static int
cmp_tensor_name(const void *a, const void *b)
{
	const mt_st_tensor *x = *(mt_st_tensor * const *) a,
			   *y = *(mt_st_tensor * const *) b;

	return strcmp(x->name, y->name);
}

/* Turn the unpickled dict into tensors. */
static int
build_state_dict(unpickler *u, pval *top, mt_pth *out, size_t in_len, mt_err *err)
{
	static const char *const wrappers[] = {"state_dict", "model", "model_state_dict", "net"};
	pval	   *sd = top;
	size_t		n,
				total = 0,
				limit;
	const char *pre = "module.";
	size_t		plen = strlen(pre);
	int			strip = 1;
	mt_st_tensor **sorted;
	char		nb[64];
	int			rc = MT_OK;

	if (top->kind != V_DICT)
		return mt_seterr(err, MT_ERR_UNSUPPORTED,
						 "the .pth file holds a %s, not a state_dict", vkind_names[top->kind]);
	if (!dict_is_tensors(top))
	{
		sd = NULL;
		for (int w = 0; w < (int) (sizeof(wrappers) / sizeof(wrappers[0])) && sd == NULL; w++)
			for (size_t i = 0; i + 1 < top->u.seq.n; i += 2)
				if (str_is(top->u.seq.items[i], wrappers[w]) &&
					top->u.seq.items[i + 1]->kind == V_DICT &&
					dict_is_tensors(top->u.seq.items[i + 1]))
				{
					sd = top->u.seq.items[i + 1];
					snprintf(out->wrapper, sizeof(out->wrapper), "%s", wrappers[w]);
					break;
				}
		if (sd == NULL)
		{
			for (size_t i = 0; i + 1 < top->u.seq.n; i += 2)
				if (top->u.seq.items[i + 1]->kind != V_TENSOR)
				{
					pval	   *k = top->u.seq.items[i];

					mt_seterr(err, MT_ERR_UNSUPPORTED,
							  "the .pth file is not a state_dict: entry %s%s%s is a %s, not a tensor",
							  k->kind == V_STR ? "\"" : "",
							  k->kind == V_STR ? shown(k->u.str.s, k->u.str.len, nb, sizeof(nb)) : "(not a string)",
							  k->kind == V_STR ? "\"" : "",
							  vkind_names[top->u.seq.items[i + 1]->kind]);
					mt_setdetail(err, "A checkpoint dict is read when its state_dict is under \"state_dict\", \"model\", \"model_state_dict\" or \"net\".");
					return MT_ERR_UNSUPPORTED;
				}
		}
	}
	n = sd->u.seq.n / 2;
	if (n > MT_PTH_MAX_TENSORS)
		return mt_seterr(err, MT_ERR_LIMIT, "the .pth state_dict has more than %d tensors",
						 MT_PTH_MAX_TENSORS);
	for (size_t i = 0; i < n; i++)
	{
		pval	   *k = sd->u.seq.items[2 * i];

		if (k->kind != V_STR)
			return mt_seterr(err, MT_ERR_CORRUPT,
							 "invalid .pth state_dict: key %zu is a %s, not a string", i,
							 vkind_names[k->kind]);
		if (k->u.str.len == 0 || k->u.str.len > 1024 || memchr(k->u.str.s, '\0', k->u.str.len))
			return mt_seterr(err, MT_ERR_CORRUPT,
							 "invalid .pth state_dict: key %zu is empty, too long or holds a NUL", i);
		if (k->u.str.len <= plen || memcmp(k->u.str.s, pre, plen) != 0)
			strip = 0;
	}
	if (n == 0)
		strip = 0;
	out->stripped_prefix = strip;
	out->st.tensors = mt_calloc(n ? n : 1, sizeof(mt_st_tensor));
	if (out->st.tensors == NULL)
		return nomem(err);
	/* names, shapes, output offsets */
	for (size_t i = 0; i < n; i++)
	{
		pval	   *k = sd->u.seq.items[2 * i];
		pval	   *t = sd->u.seq.items[2 * i + 1];
		mt_st_tensor *o = &out->st.tensors[i];
		size_t		skip = strip ? plen : 0;
		size_t		numel,
					nbytes;

		o->name = mt_malloc(k->u.str.len - skip + 1);
		if (o->name == NULL)
			return nomem(err);
		out->st.n_tensors = (int) i + 1;
		memcpy(o->name, k->u.str.s + skip, k->u.str.len - skip);
		o->name[k->u.str.len - skip] = '\0';
		if ((rc = check_view(t, o->name, &numel, err)) != MT_OK)
			return rc;
		o->dtype = t->u.tensor.storage->u.storage.type == G_ST_LONG ? MT_I64 : MT_F32;
		o->ndim = t->u.tensor.ndim;
		memcpy(o->shape, t->u.tensor.shape, sizeof(o->shape));
		nbytes = numel * (o->dtype == MT_I64 ? 8 : 4);
		/* keep 8-byte alignment for the int64 tensors */
		total = (total + 7) & ~(size_t) 7;
		o->offset = total;
		o->nbytes = nbytes;
		if (!mt_add_size(total, nbytes, &total))
			return mt_seterr(err, MT_ERR_LIMIT, "the .pth state_dict is too large");
	}
	/* a tiny file could describe huge overlapping or stride-0 views */
	limit = in_len > SIZE_MAX / 4 - 65536 ? SIZE_MAX : in_len * 4 + 65536;
	if (total > limit)
		return mt_seterr(err, MT_ERR_LIMIT,
						 "the .pth state_dict expands to %zu bytes, more than 4 times the file's %zu",
						 total, in_len);
	sorted = mt_malloc((n ? n : 1) * sizeof(mt_st_tensor *));
	if (sorted == NULL)
		return nomem(err);
	for (size_t i = 0; i < n; i++)
		sorted[i] = &out->st.tensors[i];
	qsort(sorted, n, sizeof(mt_st_tensor *), cmp_tensor_name);
	for (size_t i = 0; i + 1 < n; i++)
		if (strcmp(sorted[i]->name, sorted[i + 1]->name) == 0)
		{
			rc = mt_seterr(err, MT_ERR_CORRUPT, "invalid .pth state_dict: tensor \"%s\" appears twice",
						   shown(sorted[i]->name, strlen(sorted[i]->name), nb, sizeof(nb)));
			break;
		}
	mt_free(sorted);
	if (rc != MT_OK)
		return rc;
	out->data = mt_malloc(total ? total : 1);
	if (out->data == NULL)
		return nomem(err);
	out->data_len = total;
	for (size_t i = 0; i < n; i++)
	{
		pval	   *t = sd->u.seq.items[2 * i + 1];
		zentry	   *e = t->u.tensor.storage->u.storage.entry;
		mt_st_tensor *o = &out->st.tensors[i];
		size_t		numel = o->nbytes / (o->dtype == MT_I64 ? 8 : 4);

		if ((rc = zip_check_crc(u->zip, e, err)) != MT_OK)
			return rc;
		gather(t, u->zip->buf + e->data_off, out->data + o->offset, numel);
	}
	return MT_OK;
}

/* ---------------------------------------------------------------- public */

int
mt_pth_is_zip(const uint8_t *buf, size_t len)
{
	return len >= 4 && memcmp(buf, "PK\003\004", 4) == 0;
}

int
mt_pth_is_legacy(const uint8_t *buf, size_t len)
{
	static const uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
	0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

	return len >= sizeof(magic) && memcmp(buf, magic, sizeof(magic)) == 0;
}

void
mt_pth_free(mt_pth *p)
{
	if (p == NULL)
		return;
	mt_st_free(&p->st);
	mt_free(p->data);
	memset(p, 0, sizeof(*p));
}

int
mt_pth_parse(const uint8_t *buf, size_t len, mt_pth *out, mt_err *err)
{
	zipfile		z;
	unpickler	u;
	zentry	   *pkl = NULL;
	zentry	   *bo;
	pval	   *top = NULL;
	int			rc;
	char		nb[64];

	memset(out, 0, sizeof(*out));
	mt_clearerr(err);
	if (mt_pth_is_legacy(buf, len))
	{
		mt_seterr(err, MT_ERR_UNSUPPORTED,
				  "this is a legacy .pth file (torch.save before PyTorch 1.6, or _use_new_zipfile_serialization=False), which medtl does not read");
		mt_setdetail(err, "Re-save it with PyTorch 1.6 or later: torch.save(torch.load(old_path), new_path).");
		return MT_ERR_UNSUPPORTED;
	}
	if (!mt_pth_is_zip(buf, len))
		return mt_seterr(err, MT_ERR_CORRUPT, "invalid .pth file: it does not start with a zip header");
	if ((rc = zip_open(buf, len, &z, err)) != MT_OK)
		return rc;
	/* exactly one "<archive>/data.pkl" */
	for (size_t i = 0; i < z.n; i++)
	{
		zentry	   *e = &z.e[i];
		const char *slash = memchr(e->name, '/', e->name_len);

		if (slash != NULL && (size_t) (slash - e->name) + 1 + 8 == e->name_len &&
			memcmp(slash + 1, "data.pkl", 8) == 0)
		{
			if (pkl != NULL)
			{
				zip_free(&z);
				return mt_seterr(err, MT_ERR_CORRUPT, "invalid .pth archive: more than one data.pkl");
			}
			pkl = e;
		}
	}
	if (pkl == NULL)
	{
		zip_free(&z);
		return mt_seterr(err, MT_ERR_CORRUPT,
						 "invalid .pth archive: no <name>/data.pkl entry (not a torch.save file)");
	}
	memset(&u, 0, sizeof(u));
	u.zip = &z;
	u.prefix = pkl->name;
	u.prefix_len = pkl->name_len - 8;
	u.err = err;
	bo = zip_find(&z, u.prefix, u.prefix_len, "byteorder", 9);
	if (bo != NULL && !(bo->size == 6 && memcmp(buf + bo->data_off, "little", 6) == 0))
	{
		zip_free(&z);
		return mt_seterr(err, MT_ERR_UNSUPPORTED,
						 "the .pth file's byteorder record is not \"little\"; medtl reads little-endian checkpoints");
	}
	if ((rc = zip_check_crc(&z, pkl, err)) != MT_OK)
	{
		zip_free(&z);
		return rc;
	}
	u.s = buf + pkl->data_off;
	u.len = pkl->size;
	rc = unpickle(&u, &top);
	if (rc == MT_OK)
		rc = build_state_dict(&u, top, out, len, err);
	free_vals(&u);
	zip_free(&z);
	if (rc != MT_OK)
	{
		mt_pth_free(out);
		(void) nb;
		return rc;
	}
	return MT_OK;
}
