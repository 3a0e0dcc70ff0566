/*
 * blas.c - lazy OpenBLAS loading with a CPU-feature-based kernel choice.
 *
 * Debian's OpenBLAS 0.3.21 does not recognise some recent CPUs and then runs
 * an old kernel set several times slower than the CPU allows.  OpenBLAS reads
 * OPENBLAS_CORETYPE once, when the library is loaded, so medtl does not link
 * it: the first GEMM dlopen()s it after setting the variable from CPUID.
 */
#include "blas.h"
#include "onednn.h"
#include "pool.h"

#include <cpuid.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*sgemm_fn) (int order, int ta, int tb, int m, int n, int k,
						  float alpha, const float *a, int lda,
						  const float *b, int ldb, float beta,
						  float *c, int ldc);
typedef void (*sgemv_fn) (int order, int ta, int m, int n, float alpha,
						  const float *a, int lda, const float *x, int incx,
						  float beta, float *y, int incy);
typedef void (*set_threads_fn) (int n);
typedef int (*get_threads_fn) (void);
typedef char *(*get_str_fn) (void);

static void *blas_handle = NULL;
static sgemm_fn blas_sgemm = NULL;
static sgemv_fn blas_sgemv = NULL;
static set_threads_fn blas_set_threads = NULL;
static get_threads_fn blas_get_threads = NULL;
static get_str_fn blas_corename = NULL;
static get_str_fn blas_getconfig = NULL;
static char blas_path[256] = "";
static char blas_requested[256] = "";
static char cpu_features[256] = "";
static int	blas_init_rc = -1;
static mt_err blas_init_err;

#define CBLAS_ROW_MAJOR 101
#define CBLAS_NO_TRANS 111
#define CBLAS_TRANS 112

/* Does the OS save the AVX (and with avx512, the ZMM) state?  Checks XCR0. */
static int
os_saves_state(unsigned mask)
{
	unsigned	eax,
				ebx,
				ecx,
				edx;
	unsigned	lo,
				hi;

	if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27)))
		return 0;				/* no OSXSAVE */
	__asm__ volatile ("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	(void) hi;
	return (lo & mask) == mask;
}

/* Fill cpu_features and return the OpenBLAS core name that suits the CPU. */
static const char *
detect_core(void)
{
	unsigned	eax = 0,
				ebx = 0,
				ecx = 0,
				edx = 0;
	unsigned	ebx7 = 0,
				ecx7 = 0,
				edx7 = 0,
				eax71 = 0;
	int			fma,
				avx2,
				avx512f,
				avx512bw,
				avx512dq,
				avx512vl,
				avx512bf16,
				amx;
	int			ymm_ok = os_saves_state(0x6);
	int			zmm_ok = os_saves_state(0xe6);

	__get_cpuid(1, &eax, &ebx, &ecx, &edx);
	fma = (ecx >> 12) & 1;
	if (__get_cpuid_max(0, NULL) >= 7)
	{
		__cpuid_count(7, 0, eax, ebx7, ecx7, edx7);
		__cpuid_count(7, 1, eax71, ebx, ecx, edx);
	}
	avx2 = (ebx7 >> 5) & 1;
	avx512f = (ebx7 >> 16) & 1;
	avx512dq = (ebx7 >> 17) & 1;
	avx512bw = (ebx7 >> 30) & 1;
	avx512vl = (ebx7 >> 31) & 1;
	avx512bf16 = (eax71 >> 5) & 1;
	amx = (edx7 >> 22) & 1;

	snprintf(cpu_features, sizeof(cpu_features), "%s%s%s%s%s%s%s%s",
			 fma ? "fma " : "", avx2 ? "avx2 " : "",
			 avx512f ? "avx512f " : "", avx512dq ? "avx512dq " : "",
			 avx512bw ? "avx512bw " : "", avx512vl ? "avx512vl " : "",
			 avx512bf16 ? "avx512_bf16 " : "", amx ? "amx_bf16 " : "");
	if (cpu_features[0] != '\0')
		cpu_features[strlen(cpu_features) - 1] = '\0';

	if (zmm_ok && avx512f && avx512dq && avx512bw && avx512vl)
		return avx512bf16 ? "Cooperlake" : "SkylakeX";
	if (ymm_ok && avx2 && fma)
		return "Haswell";
	return NULL;				/* leave it to OpenBLAS */
}

/* Candidate file names of the OpenBLAS shared library, most specific first. */
static const char *const blas_candidates[] = {
	"libopenblas.so.0",
	"/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
	"/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
	"/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
	"libopenblas.so",
	NULL
};

int
mt_blas_init(const char *core, mt_err *err)
{
	const char *chosen;
	const char *envcore;
	const char *envpath;
	int			i;

	if (blas_init_rc >= 0)
	{
		if (blas_init_rc != MT_OK && err != NULL)
			*err = blas_init_err;
		return blas_init_rc;
	}

	chosen = detect_core();
	envcore = getenv("OPENBLAS_CORETYPE");
	if (core == NULL || strcmp(core, "auto") == 0)
	{
		if (chosen != NULL)
		{
			snprintf(blas_requested, sizeof(blas_requested),
					 "%s (auto, from CPU features%s%s)", chosen,
					 envcore ? "; overrides OPENBLAS_CORETYPE=" : "",
					 envcore ? envcore : "");
			setenv("OPENBLAS_CORETYPE", chosen, 1);
		}
		else
			snprintf(blas_requested, sizeof(blas_requested),
					 "OpenBLAS detection (auto: no AVX2/AVX-512 found)");
	}
	else if (strcmp(core, "env") == 0)
		snprintf(blas_requested, sizeof(blas_requested), "%s (environment)",
				 envcore ? envcore : "OpenBLAS detection");
	else
	{
		snprintf(blas_requested, sizeof(blas_requested), "%s (medtl.blas_core)", core);
		setenv("OPENBLAS_CORETYPE", core, 1);
	}

	/*
	 * OpenBLAS's idle threads wait for the next call by calling sched_yield
	 * for up to 2^28 cycles (about 0.1 s), so one GEMM per batch (a
	 * classifier head) kept a core's worth of threads yielding through every
	 * convolution after it: a fifth of MobileNetV2's CPU time at batch 16
	 * went to the scheduler.  2^4 cycles makes them sleep at once; read when
	 * the library loads, which is now; a value the user set wins.
	 */
	setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);

	/* MEDTL_OPENBLAS=/path/libopenblas.so.0 names the library (and only it) */
	envpath = getenv("MEDTL_OPENBLAS");
	if (envpath != NULL && envpath[0] != '\0')
	{
		blas_handle = dlopen(envpath, RTLD_NOW | RTLD_LOCAL);
		if (blas_handle != NULL)
			snprintf(blas_path, sizeof(blas_path), "%s", envpath);
	}
	else
		for (i = 0; blas_candidates[i] != NULL && blas_handle == NULL; i++)
		{
			blas_handle = dlopen(blas_candidates[i], RTLD_NOW | RTLD_LOCAL);
			if (blas_handle != NULL)
				snprintf(blas_path, sizeof(blas_path), "%s", blas_candidates[i]);
		}
	if (blas_handle == NULL)
	{
		blas_init_rc = mt_seterr(&blas_init_err, MT_ERR_INTERNAL,
								 "could not load OpenBLAS");
		mt_setdetail(&blas_init_err, "dlopen(\"%s\") failed: %s.",
					 envpath != NULL && envpath[0] != '\0' ? envpath : "libopenblas.so.0",
					 dlerror());
	}
	else
	{
		blas_sgemm = (sgemm_fn) dlsym(blas_handle, "cblas_sgemm");
		blas_sgemv = (sgemv_fn) dlsym(blas_handle, "cblas_sgemv");
		blas_set_threads = (set_threads_fn) dlsym(blas_handle, "openblas_set_num_threads");
		blas_get_threads = (get_threads_fn) dlsym(blas_handle, "openblas_get_num_threads");
		blas_corename = (get_str_fn) dlsym(blas_handle, "openblas_get_corename");
		blas_getconfig = (get_str_fn) dlsym(blas_handle, "openblas_get_config");
		if (blas_sgemm == NULL)
			blas_init_rc = mt_seterr(&blas_init_err, MT_ERR_INTERNAL,
									 "the BLAS library %s has no cblas_sgemm", blas_path);
		else
			blas_init_rc = MT_OK;
	}
	if (blas_init_rc != MT_OK && err != NULL)
		*err = blas_init_err;
	return blas_init_rc;
}

int
mt_blas_loaded(void)
{
	return blas_init_rc == MT_OK;
}

void
mt_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
		 const float *a, int lda, const float *b, int ldb,
		 float beta, float *c, int ldc)
{
	if (m <= 0 || n <= 0)
		return;
	if (blas_sgemm == NULL)
	{
		mt_sgemm_ref(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
		return;
	}
	blas_sgemm(CBLAS_ROW_MAJOR, trans_a ? CBLAS_TRANS : CBLAS_NO_TRANS,
			   trans_b ? CBLAS_TRANS : CBLAS_NO_TRANS, m, n, k, alpha,
			   a, lda, b, ldb, beta, c, ldc);
}

/*
 * y = W x for a row-major out x in matrix W: a linear layer on one input.
 * cblas_sgemm with one row repacks all of W into its panels on every call
 * (OpenBLAS's sgemm_incopy was 7% of a batch-1 MobileNetV2 scoring);
 * sgemv reads W once.
 */
void
mt_sgemv_rows(int out, int in, const float *w, const float *x, float *y)
{
	if (out <= 0)
		return;
	if (blas_sgemv == NULL)
	{
		mt_sgemm(0, 1, 1, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
		return;
	}
	blas_sgemv(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
}

void
mt_sgemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
			 const float *a, int lda, const float *b, int ldb,
			 float beta, float *c, int ldc)
{
	for (int i = 0; i < m; i++)
		for (int j = 0; j < n; j++)
		{
			double		s = 0.0;

			for (int p = 0; p < k; p++)
			{
				float		av = trans_a ? a[(size_t) p * lda + i] : a[(size_t) i * lda + p];
				float		bv = trans_b ? b[(size_t) j * ldb + p] : b[(size_t) p * ldb + j];

				s += (double) av * bv;
			}
			c[(size_t) i * ldc + j] = (float) (alpha * s +
											   (beta == 0.0f ? 0.0 : (double) beta * c[(size_t) i * ldc + j]));
		}
}

void
mt_blas_set_threads(int n)
{
	mt_pool_set_threads(n);
	mt_onednn_set_threads(n);
	if (blas_set_threads != NULL && n > 0)
		blas_set_threads(n);
}

int
mt_blas_threads(void)
{
	return blas_get_threads != NULL ? blas_get_threads() : 1;
}

const char *
mt_blas_library(void)
{
	return blas_handle != NULL ? blas_path : "none";
}

const char *
mt_blas_corename(void)
{
	return blas_corename != NULL ? blas_corename() : "reference C";
}

const char *
mt_blas_core_requested(void)
{
	return blas_requested;
}

const char *
mt_blas_config(void)
{
	return blas_getconfig != NULL ? blas_getconfig() : "";
}

const char *
mt_cpu_features(void)
{
	if (cpu_features[0] == '\0')
		(void) detect_core();
	return cpu_features;
}

int
mt_cpu_count(void)
{
	long		n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int) n : 1;
}
