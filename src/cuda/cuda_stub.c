/*
 * cuda_stub.c - the C API of cuda.h in a build without CUDA: the probe says
 * so and every other call fails with the same message.
 */
#include "cuda/cuda.h"

#include <stddef.h>

#define NO_CUDA(err) mt_seterr((err), MT_ERR_UNSUPPORTED, "medtl was built without CUDA")

int
mt_cuda_built(void)
{
	return 0;
}

int
mt_cuda_available(mt_err *err)
{
	return NO_CUDA(err);
}

const char *
mt_cuda_device_name(void)
{
	return "none (medtl was built without CUDA)";
}

void
mt_cuda_set_mem_limit(size_t bytes)
{
}

size_t
mt_cuda_mem_limit(void)
{
	return 0;
}

size_t
mt_cuda_mem_used(void)
{
	return 0;
}

int
mt_cuda_alloc(void **ptr, size_t bytes, mt_err *err)
{
	if (ptr != NULL)
		*ptr = NULL;
	return NO_CUDA(err);
}

void
mt_cuda_free(void *ptr)
{
}

int
mt_cuda_zero(void *dptr, size_t bytes, mt_err *err)
{
	return NO_CUDA(err);
}

int
mt_cuda_upload(void *dst, const void *host_src, size_t bytes, mt_err *err)
{
	return NO_CUDA(err);
}

int
mt_cuda_download(void *host_dst, const void *src, size_t bytes, mt_err *err)
{
	return NO_CUDA(err);
}

int
mt_cuda_copy(void *dst, const void *src, size_t bytes, mt_err *err)
{
	return NO_CUDA(err);
}

int
mt_cuda_synchronize(mt_err *err)
{
	return NO_CUDA(err);
}

void
mt_cuda_set_im2col_limit(size_t bytes)
{
}

void
mt_cuda_shutdown(void)
{
}
