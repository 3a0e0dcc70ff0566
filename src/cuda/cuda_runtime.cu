/*
 * cuda_runtime.cu - device probe, device memory with a per-process cap, the
 * lazily created cuBLAS handle and the error bookkeeping of the CUDA backend.
 */
#include "cuda/cuda_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C"
{

/* the probe's answer, computed once */
static int probe_rc = -1;
static mt_err probe_err;
static char device_name[384] = "none";

/*
 * device memory accounting: a host-side list of live allocations, in plain
 * malloc memory (it lives as long as the process, unlike the memory contexts
 * the engine's allocation hooks may use)
 */
typedef struct dev_block
{
	void	   *ptr;
	size_t		bytes;
	struct dev_block *next;
} dev_block;

static dev_block *blocks = NULL;
static size_t mem_used = 0;
static size_t mem_limit = 0;

static cublasHandle_t blas_handle = NULL;
static void *workspace = NULL;
static size_t workspace_bytes = 0;

/* first error of asynchronous work */
static int pending = 0;
static mt_err pending_err;

int
mt_cuda_built(void)
{
	return 1;
}

int
mt_cuda_status(cudaError_t e, const char *what, mt_err *err)
{
	mt_code		code;

	if (e == cudaSuccess)
		return MT_OK;
	switch (e)
	{
		case cudaErrorMemoryAllocation:
			code = MT_ERR_NOMEM;
			break;
		case cudaErrorNoDevice:
		case cudaErrorInsufficientDriver:
		case cudaErrorNoKernelImageForDevice:
			code = MT_ERR_UNSUPPORTED;
			break;
		case cudaErrorInvalidValue:
			code = MT_ERR_INVALID;
			break;
		default:
			code = MT_ERR_INTERNAL;
			break;
	}
	if (code == MT_ERR_NOMEM)
		mt_seterr(err, code, "out of device memory in %s", what);
	else
		mt_seterr(err, code, "CUDA error in %s: %s", what, cudaGetErrorString(e));
	mt_setdetail(err, "cudaError_t %d (%s).", (int) e, cudaGetErrorName(e));
	return code;
}

static const char *
blas_status_name(cublasStatus_t s)
{
	switch (s)
	{
		case CUBLAS_STATUS_NOT_INITIALIZED:
			return "CUBLAS_STATUS_NOT_INITIALIZED";
		case CUBLAS_STATUS_ALLOC_FAILED:
			return "CUBLAS_STATUS_ALLOC_FAILED";
		case CUBLAS_STATUS_INVALID_VALUE:
			return "CUBLAS_STATUS_INVALID_VALUE";
		case CUBLAS_STATUS_ARCH_MISMATCH:
			return "CUBLAS_STATUS_ARCH_MISMATCH";
		case CUBLAS_STATUS_MAPPING_ERROR:
			return "CUBLAS_STATUS_MAPPING_ERROR";
		case CUBLAS_STATUS_EXECUTION_FAILED:
			return "CUBLAS_STATUS_EXECUTION_FAILED";
		case CUBLAS_STATUS_INTERNAL_ERROR:
			return "CUBLAS_STATUS_INTERNAL_ERROR";
		case CUBLAS_STATUS_NOT_SUPPORTED:
			return "CUBLAS_STATUS_NOT_SUPPORTED";
		default:
			return "unknown cuBLAS status";
	}
}

int
mt_cublas_status(cublasStatus_t s, const char *what, mt_err *err)
{
	mt_code		code;

	if (s == CUBLAS_STATUS_SUCCESS)
		return MT_OK;
	code = s == CUBLAS_STATUS_ALLOC_FAILED ? MT_ERR_NOMEM :
		s == CUBLAS_STATUS_INVALID_VALUE ? MT_ERR_INVALID : MT_ERR_INTERNAL;
	if (code == MT_ERR_NOMEM)
		mt_seterr(err, code, "out of device memory in %s (cuBLAS)", what);
	else
		mt_seterr(err, code, "cuBLAS error in %s: %s", what, blas_status_name(s));
	mt_setdetail(err, "cublasStatus_t %d.", (int) s);
	return code;
}

void
mt_cuda_note_err(const mt_err *err)
{
	if (!pending && err != NULL && err->code != MT_OK)
	{
		pending_err = *err;
		pending = 1;
	}
}

void
mt_cuda_note(cudaError_t e, const char *what)
{
	mt_err		err;

	if (e == cudaSuccess || pending)
		return;
	mt_clearerr(&err);
	mt_cuda_status(e, what, &err);
	mt_cuda_note_err(&err);
}

void
mt_cuda_note_blas(cublasStatus_t s, const char *what)
{
	mt_err		err;

	if (s == CUBLAS_STATUS_SUCCESS || pending)
		return;
	mt_clearerr(&err);
	mt_cublas_status(s, what, &err);
	mt_cuda_note_err(&err);
}

int
mt_cuda_failed(void)
{
	return pending;
}

int
mt_cuda_available(mt_err *err)
{
	if (probe_rc < 0)
	{
		int			count = 0;
		cudaError_t e = cudaGetDeviceCount(&count);

		mt_clearerr(&probe_err);
		if (e != cudaSuccess || count <= 0)
		{
			probe_rc = mt_seterr(&probe_err, MT_ERR_UNSUPPORTED, "no CUDA device");
			if (e != cudaSuccess)
				mt_setdetail(&probe_err, "cudaGetDeviceCount: %s (%s).",
							 cudaGetErrorString(e), cudaGetErrorName(e));
			else
				mt_setdetail(&probe_err, "cudaGetDeviceCount found no device.");
			/* clear the runtime's sticky last error, if it keeps one */
			(void) cudaGetLastError();
		}
		else
		{
			cudaDeviceProp prop;

			e = cudaGetDeviceProperties(&prop, 0);
			if (e != cudaSuccess)
				probe_rc = mt_cuda_status(e, "cudaGetDeviceProperties", &probe_err);
			else if (prop.major < 9)
			{
				probe_rc = mt_seterr(&probe_err, MT_ERR_UNSUPPORTED,
									 "CUDA device \"%s\" (sm_%d%d) is older than sm_90",
									 prop.name, prop.major, prop.minor);
				mt_setdetail(&probe_err, "medtl's kernels are built for sm_90 and newer.");
			}
			else
			{
				snprintf(device_name, sizeof(device_name), "%.200s, sm_%d%d, %.1f GiB",
						 prop.name, prop.major, prop.minor,
						 (double) prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
				probe_rc = MT_OK;
			}
		}
	}
	if (probe_rc != MT_OK && err != NULL)
		*err = probe_err;
	return probe_rc;
}

const char *
mt_cuda_device_name(void)
{
	return device_name;
}

void
mt_cuda_set_mem_limit(size_t bytes)
{
	mem_limit = bytes;
}

size_t
mt_cuda_mem_limit(void)
{
	return mem_limit;
}

size_t
mt_cuda_mem_used(void)
{
	return mem_used;
}

int
mt_cuda_alloc(void **ptr, size_t bytes, mt_err *err)
{
	dev_block  *b;
	void	   *p = NULL;
	int			rc;

	*ptr = NULL;
	if ((rc = mt_cuda_available(err)) != MT_OK)
		return rc;
	if (bytes == 0)
		bytes = 1;
	if (mem_limit > 0 && (bytes > mem_limit || mem_used > mem_limit - bytes))
	{
		mt_seterr(err, MT_ERR_LIMIT, "device memory limit exceeded");
		mt_setdetail(err, "Allocating %zu bytes with %zu in use would exceed the limit of %zu bytes.",
					 bytes, mem_used, mem_limit);
		return MT_ERR_LIMIT;
	}
	b = (dev_block *) malloc(sizeof(dev_block));
	if (b == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory");
	if ((rc = mt_cuda_status(cudaMalloc(&p, bytes), "cudaMalloc", err)) != MT_OK)
	{
		free(b);
		(void) cudaGetLastError();
		if (rc == MT_ERR_NOMEM)
			mt_setdetail(err, "Allocating %zu bytes of device memory failed with %zu in use by medtl.",
						 bytes, mem_used);
		return rc;
	}
	b->ptr = p;
	b->bytes = bytes;
	b->next = blocks;
	blocks = b;
	mem_used += bytes;
	*ptr = p;
	return MT_OK;
}

void
mt_cuda_free(void *ptr)
{
	dev_block **pp;

	if (ptr == NULL)
		return;
	for (pp = &blocks; *pp != NULL; pp = &(*pp)->next)
		if ((*pp)->ptr == ptr)
		{
			dev_block  *b = *pp;

			*pp = b->next;
			mem_used -= b->bytes;
			free(b);
			mt_cuda_note(cudaFree(ptr), "cudaFree");
			return;
		}
	/* not ours: leave it alone rather than corrupt the accounting */
}

int
mt_cuda_zero(void *dptr, size_t bytes, mt_err *err)
{
	if (bytes == 0)
		return MT_OK;
	return mt_cuda_status(cudaMemsetAsync(dptr, 0, bytes, 0), "cudaMemsetAsync", err);
}

int
mt_cuda_upload(void *dst, const void *host_src, size_t bytes, mt_err *err)
{
	if (bytes == 0)
		return MT_OK;
	return mt_cuda_status(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice),
						  "cudaMemcpy (host to device)", err);
}

int
mt_cuda_download(void *host_dst, const void *src, size_t bytes, mt_err *err)
{
	int			rc;

	if (bytes == 0)
		return MT_OK;
	rc = mt_cuda_status(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost),
						"cudaMemcpy (device to host)", err);
	if (rc == MT_OK && pending)
		return mt_cuda_synchronize(err);
	return rc;
}

int
mt_cuda_copy(void *dst, const void *src, size_t bytes, mt_err *err)
{
	if (bytes == 0)
		return MT_OK;
	return mt_cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0),
						  "cudaMemcpyAsync (device to device)", err);
}

int
mt_cuda_synchronize(mt_err *err)
{
	mt_err		e2;
	int			rc;

	mt_clearerr(&e2);
	rc = mt_cuda_status(cudaDeviceSynchronize(), "cudaDeviceSynchronize", &e2);
	if (rc != MT_OK)
		mt_cuda_note_err(&e2);
	rc = mt_cuda_status(cudaGetLastError(), "a kernel launch", &e2);
	if (rc != MT_OK)
		mt_cuda_note_err(&e2);
	if (pending)
	{
		if (err != NULL)
			*err = pending_err;
		pending = 0;
		return pending_err.code;
	}
	return MT_OK;
}

cublasHandle_t
mt_cuda_blas(mt_err *err)
{
	if (blas_handle == NULL)
	{
		cublasHandle_t h = NULL;

		if (mt_cuda_available(err) != MT_OK)
			return NULL;
		if (mt_cublas_status(cublasCreate(&h), "cublasCreate", err) != MT_OK)
			return NULL;
		/*
		 * fp32 GEMMs in fp32 (the default math mode never lowers fp32 to
		 * TF32; set explicitly in case the library default changes)
		 */
		if (mt_cublas_status(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode", err) != MT_OK)
		{
			cublasDestroy(h);
			return NULL;
		}
		blas_handle = h;
	}
	return blas_handle;
}

void *
mt_cuda_workspace(size_t bytes, mt_err *err)
{
	if (bytes > workspace_bytes)
	{
		void	   *p = NULL;

		if (workspace != NULL)
		{
			/* queued kernels may still read the old one */
			mt_cuda_note(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
			mt_cuda_free(workspace);
			workspace = NULL;
			workspace_bytes = 0;
		}
		if (mt_cuda_alloc(&p, bytes, err) != MT_OK)
			return NULL;
		workspace = p;
		workspace_bytes = bytes;
	}
	return workspace;
}

void
mt_cuda_shutdown(void)
{
	if (blas_handle != NULL)
	{
		cublasDestroy(blas_handle);
		blas_handle = NULL;
	}
	if (workspace != NULL)
	{
		(void) cudaDeviceSynchronize();
		mt_cuda_free(workspace);
		workspace = NULL;
		workspace_bytes = 0;
	}
}

}								/* extern "C" */
