/*
 * safetensors.h - strict reader (and writer) of the safetensors format.
 * Engine code: no postgres.h, errors as mt_err.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON (an object
 * mapping tensor name -> {"dtype","shape","data_offsets"} plus an optional
 * "__metadata__" object of string -> string), then the data section.
 */
#ifndef MT_SAFETENSORS_H
#define MT_SAFETENSORS_H

#include "../core/mt_common.h"

#define MT_ST_MAX_DIMS 8
#define MT_ST_MAX_HEADER ((uint64_t) 100 * 1024 * 1024)

typedef enum mt_dtype
{
	MT_F32, MT_F16, MT_BF16, MT_F64, MT_I64, MT_I32, MT_I16, MT_I8, MT_U8, MT_BOOL
} mt_dtype;

typedef struct mt_st_tensor
{
	char	   *name;
	mt_dtype	dtype;
	int			ndim;
	int64_t		shape[MT_ST_MAX_DIMS];
	size_t		offset;			/* byte offset from the start of the buffer */
	size_t		nbytes;
} mt_st_tensor;

typedef struct mt_safetensors
{
	int			n_tensors;
	mt_st_tensor *tensors;		/* in the order of their data offsets */
	int			n_meta;
	char	  **meta_keys;
	char	  **meta_vals;
} mt_safetensors;

/*
 * Parse and validate: header length within the buffer and at most
 * MT_ST_MAX_HEADER, well-formed JSON (UTF-8, no duplicate keys), known
 * dtypes, non-negative shapes whose element count times the dtype size
 * equals the byte range, offsets in range, no overlap between tensors and no
 * bytes of the data section left uncovered.  Errors are MT_ERR_CORRUPT with
 * a message naming the tensor where there is one.  Tensors point into buf
 * (offsets only); buf must outlive the use of the offsets.
 */
int			mt_st_parse(const uint8_t *buf, size_t len, mt_safetensors *out,
						mt_err *err);
void		mt_st_free(mt_safetensors *st);
const mt_st_tensor *mt_st_find(const mt_safetensors *st, const char *name);
const char *mt_st_meta(const mt_safetensors *st, const char *key);	/* NULL if absent */
const char *mt_dtype_name(mt_dtype dt);	/* "F32", ... */
int			mt_dtype_size(mt_dtype dt);
int			mt_dtype_from_name(const char *s, mt_dtype *out);	/* 1 if known */

/*
 * Parse a JSON array of numbers such as "[0.485, 0.456, 0.406]" into out
 * (at most max values); returns the count or -1 if malformed.
 */
int			mt_json_float_array(const char *s, float *out, int max);

/*
 * Write n tensors (names[i], dtypes[i], shapes[i][0..ndims[i]), data in
 * datas[i] in the host's byte order, which must be little-endian) and
 * n_meta metadata strings as a safetensors file: a JSON header with the
 * metadata first, then the tensors in the given order, padded with spaces
 * to a multiple of 8 bytes, then the data.  *out is mt_malloc'd (free it
 * with mt_free).  Names must be non-empty, distinct, valid UTF-8 and not
 * "__metadata__"; datas[i] may be NULL only for a tensor of 0 bytes.
 * Errors: MT_ERR_INVALID for bad arguments, MT_ERR_LIMIT when too large,
 * MT_ERR_NOMEM.
 */
int			mt_st_serialize(int n, const char *const *names,
							const mt_dtype *dtypes, const int *ndims,
							const int64_t (*shapes)[MT_ST_MAX_DIMS],
							const void *const *datas, int n_meta,
							const char *const *meta_keys,
							const char *const *meta_vals,
							uint8_t **out, size_t *out_len, mt_err *err);

#endif
