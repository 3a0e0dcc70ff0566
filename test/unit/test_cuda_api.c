/*
 * test_cuda_api.c - the C API of src/cuda/cuda.h as the default build (no
 * CUDA) provides it: every call fails cleanly with "medtl was built without
 * CUDA" and never touches its pointers; the CPU backend has no memory
 * entries.  (The CUDA build's API is exercised by test/bin/cuda_ops_check,
 * see test/cuda_build_check.sh and test/gpu_check.sh.)
 *
 *   make unittest && test/bin/test_cuda_api
 */
#include "core/ops.h"
#include "cuda/cuda.h"
#include "mt_test.h"

#include <string.h>

int
main(int argc, char **argv)
{
	mt_err		err;
	void	   *p = (void *) &err;
	float		host[4] = {1, 2, 3, 4};

	(void) argc;
	(void) argv;
	CHECK(mt_cuda_built() == 0, "built without CUDA");

	mt_clearerr(&err);
	CHECK(mt_cuda_available(&err) == MT_ERR_UNSUPPORTED, "probe code %d", err.code);
	CHECK(err.code == MT_ERR_UNSUPPORTED && strcmp(err.msg, "medtl was built without CUDA") == 0,
		  "probe message \"%s\"", err.msg);
	CHECK(mt_cuda_available(NULL) == MT_ERR_UNSUPPORTED, "probe with a NULL err");

	mt_clearerr(&err);
	CHECK(mt_cuda_alloc(&p, 64, &err) == MT_ERR_UNSUPPORTED && p == NULL,
		  "alloc fails and clears the pointer (%s)", err.msg);
	CHECK(strstr(err.msg, "without CUDA") != NULL, "alloc message \"%s\"", err.msg);
	mt_cuda_free(NULL);
	mt_clearerr(&err);
	CHECK(mt_cuda_upload(host, host, sizeof(host), &err) == MT_ERR_UNSUPPORTED, "upload refused");
	CHECK(mt_cuda_download(host, host, sizeof(host), &err) == MT_ERR_UNSUPPORTED, "download refused");
	CHECK(mt_cuda_copy(host, host, sizeof(host), &err) == MT_ERR_UNSUPPORTED, "copy refused");
	CHECK(mt_cuda_zero(host, sizeof(host), &err) == MT_ERR_UNSUPPORTED, "zero refused");
	CHECK(host[0] == 1 && host[3] == 4, "host memory untouched");
	CHECK(mt_cuda_synchronize(&err) == MT_ERR_UNSUPPORTED, "synchronize refused");
	mt_cuda_set_mem_limit(1 << 20);
	CHECK(mt_cuda_mem_used() == 0, "no device memory in use");
	CHECK(strstr(mt_cuda_device_name(), "without CUDA") != NULL, "device name \"%s\"",
		  mt_cuda_device_name());
	mt_cuda_shutdown();

	/* the CPU backend's tensors are host memory: no memory entries */
	CHECK(mt_cpu_backend.mem_alloc == NULL && mt_cpu_backend.mem_free == NULL &&
		  mt_cpu_backend.mem_zero == NULL && mt_cpu_backend.upload == NULL &&
		  mt_cpu_backend.download == NULL && mt_cpu_backend.synchronize == NULL,
		  "CPU backend memory entries are NULL");
	CHECK(mt_cpu_backend.conv2d != NULL && mt_cpu_backend.adam_update != NULL,
		  "CPU backend compute entries set");
	return TEST_SUMMARY("cuda_api");
}
