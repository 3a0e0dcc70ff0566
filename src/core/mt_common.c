/*
 * mt_common.c - errors, allocation hooks, checked size arithmetic.
 */
#include "mt_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mt_malloc_fn hook_malloc = malloc;
static mt_free_fn hook_free = free;
static mt_interrupt_fn hook_interrupt = NULL;

int
mt_seterr(mt_err *err, mt_code code, const char *fmt,...)
{
	va_list		ap;

	if (err == NULL)
		return code;
	err->code = code;
	err->detail[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

void
mt_setdetail(mt_err *err, const char *fmt,...)
{
	va_list		ap;

	if (err == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
	va_end(ap);
}

void
mt_clearerr(mt_err *err)
{
	if (err == NULL)
		return;
	err->code = MT_OK;
	err->msg[0] = '\0';
	err->detail[0] = '\0';
}

void
mt_set_allocator(mt_malloc_fn m, mt_free_fn f)
{
	hook_malloc = m ? m : malloc;
	hook_free = f ? f : free;
}

void *
mt_malloc(size_t size)
{
	return hook_malloc(size ? size : 1);
}

void *
mt_calloc(size_t n, size_t size)
{
	size_t		total;
	void	   *p;

	if (!mt_mul_size(n, size, &total))
		return NULL;
	p = mt_malloc(total);
	if (p != NULL)
		memset(p, 0, total);
	return p;
}

void
mt_free(void *ptr)
{
	if (ptr != NULL)
		hook_free(ptr);
}

char *
mt_strdup(const char *s)
{
	size_t		n = strlen(s) + 1;
	char	   *p = mt_malloc(n);

	if (p != NULL)
		memcpy(p, s, n);
	return p;
}

int
mt_mul_size(size_t a, size_t b, size_t *out)
{
	if (b != 0 && a > SIZE_MAX / b)
		return 0;
	*out = a * b;
	return 1;
}

int
mt_add_size(size_t a, size_t b, size_t *out)
{
	if (a > SIZE_MAX - b)
		return 0;
	*out = a + b;
	return 1;
}

void
mt_set_interrupt(mt_interrupt_fn fn)
{
	hook_interrupt = fn;
}

int
mt_interrupted(void)
{
	return hook_interrupt != NULL && hook_interrupt() != 0;
}

static int	precision = -1;		/* -1: not set, MEDTL_PRECISION decides */

void
mt_set_precision(mt_precision p)
{
	precision = p;
}

mt_precision
mt_get_precision(void)
{
	if (precision < 0)
	{
		const char *env = getenv("MEDTL_PRECISION");

		precision = env != NULL && strcmp(env, "bf16") == 0 ? MT_PREC_BF16 : MT_PREC_FP32;
	}
	return (mt_precision) precision;
}
