/*
 * pth.h - reader of PyTorch checkpoints as torch.save writes them since
 * PyTorch 1.6 (a zip archive holding data.pkl and one entry per storage).
 * Engine code: no postgres.h, errors as mt_err.
 *
 * Nothing in the file is executed: data.pkl is read by a restricted
 * unpickler that knows the few opcodes a state_dict needs and an allow-list
 * of globals (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
 * torch._utils._rebuild_parameter, the float/half/bfloat16/double/long
 * storage types); anything else is refused with an error naming it.
 */
#ifndef MT_PTH_H
#define MT_PTH_H

#include "../core/mt_common.h"
#include "safetensors.h"

/* Limits against hostile files. */
#define MT_PTH_MAX_ENTRIES	(1 << 20)	/* zip entries */
#define MT_PTH_MAX_STACK	(1 << 22)	/* unpickler stack items */
#define MT_PTH_MAX_MARKS	256			/* nested MARKs */
#define MT_PTH_MAX_TENSORS	(1 << 16)

/*
 * A parsed checkpoint: its state_dict as safetensors-like tensors whose
 * offsets point into data, where every tensor has been gathered into a
 * contiguous row-major copy, float16/bfloat16/float64 converted to F32 and
 * integer storages kept as I64.  The state_dict is the top-level dict, or
 * the dict under "state_dict", "model" or "model_state_dict" of a training
 * checkpoint; a "module." prefix on every name (DataParallel) is removed.
 */
typedef struct mt_pth
{
	mt_safetensors st;			/* n_meta is 0 */
	uint8_t    *data;
	size_t		data_len;
	int			stripped_prefix;	/* 1 if "module." was removed */
	char		wrapper[32];	/* "" or the checkpoint key holding the state_dict */
} mt_pth;

/* 1 if buf starts like a zip archive ("PK\3\4"). */
int			mt_pth_is_zip(const uint8_t *buf, size_t len);

/* 1 if buf starts like a pre-1.6 (legacy, non-zip) torch.save file. */
int			mt_pth_is_legacy(const uint8_t *buf, size_t len);

/*
 * Parse a checkpoint.  Errors: MT_ERR_CORRUPT for a malformed archive or
 * pickle (with the entry, offset or tensor named), MT_ERR_UNSUPPORTED for a
 * valid file medtl does not read (compressed entries, big-endian data, a
 * forbidden global or opcode), MT_ERR_LIMIT, MT_ERR_NOMEM.
 */
int			mt_pth_parse(const uint8_t *buf, size_t len, mt_pth *out, mt_err *err);
void		mt_pth_free(mt_pth *p);

#endif
