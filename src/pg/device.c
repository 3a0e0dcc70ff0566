/*
 * device.c - where inference and training run: medtl.device (cpu, cuda, auto) and
 * medtl.device_memory_mb.
 *
 * Nothing here runs in _PG_init or the postmaster: the CUDA runtime is first
 * touched when a backend scores with medtl.device = cuda or auto (or asks
 * runtime_info), so no forked process inherits a CUDA context.  Parallel
 * workers always score on the CPU (several workers sharing one device, each
 * with its own context and copy of the weights, would mostly compete for
 * it).  Training follows medtl.device too (train.c: train_device), except
 * runs with a moving average of the weights (ema), which stay on the CPU.
 *
 * medtl.device = cuda without a usable device is an ERROR with SQLSTATE
 * 0A000 (feature_not_supported), raised when a model is first used, not at
 * SET time: the setting may be made before a device is needed, and the
 * backend stays usable (SET medtl.device = cpu).  Out of device memory is
 * 53200 (out_of_memory), over medtl.device_memory_mb 54000
 * (program_limit_exceeded); see medtl_forward (model.c).
 */
#include "medtl_pg.h"

#include "access/parallel.h"

#include "cuda/cuda.h"

/* The device, or NULL with *err set (no device, or medtl.device = cpu). */
static const mt_backend *
usable_device(mt_err *err)
{
	mt_clearerr(err);
	if (mt_cuda_available(err) != MT_OK)
		return NULL;
#ifdef MEDTL_CUDA
	return &mt_cuda_backend;
#else
	/* the stub never reports a device */
	mt_seterr(err, MT_ERR_UNSUPPORTED, "medtl was built without CUDA");
	return NULL;
#endif
}

const mt_backend *
medtl_inference_device(void)
{
	const mt_backend *be;
	mt_err		err;

	if (medtl_device == MEDTL_DEVICE_CPU || IsParallelWorker())
		return NULL;
	be = usable_device(&err);
	if (be == NULL)
	{
		if (medtl_device == MEDTL_DEVICE_AUTO)
			return NULL;
		if (!mt_cuda_built())
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("medtl.device is \"cuda\" but medtl was built without CUDA"),
					 errhint("SET medtl.device = cpu, or auto to use a device only when there is one; the GPU backend is built with make WITH_CUDA=1.")));
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("medtl.device is \"cuda\" but no CUDA device can be used"),
				 errdetail("%s%s%s", err.msg, err.detail[0] ? ": " : ".", err.detail),
				 errhint("SET medtl.device = cpu, or auto to use a device only when there is one.")));
	}
	mt_cuda_set_mem_limit((size_t) medtl_device_memory_mb << 20);
	return be;
}

const char *
medtl_device_in_use(void)
{
	mt_err		err;

	if (medtl_device == MEDTL_DEVICE_CPU || IsParallelWorker())
		return "cpu";
	if (usable_device(&err) != NULL)
		return "cuda";
	return medtl_device == MEDTL_DEVICE_AUTO ? "cpu" : "unavailable";
}
