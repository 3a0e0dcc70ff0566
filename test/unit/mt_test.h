/* mt_test.h - a tiny unit-test harness: CHECK macros and a summary line. */
#ifndef MT_TEST_H
#define MT_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <math.h>

static int	mt_test_passed __attribute__((unused)) = 0;
static int	mt_test_failed __attribute__((unused)) = 0;

#define CHECK(cond, ...) do { \
	if (cond) mt_test_passed++; \
	else { mt_test_failed++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
		fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

#define CHECK_NEAR(a, b, tol, what) do { \
	double _a = (a), _b = (b); \
	CHECK(fabs(_a - _b) <= (tol), "%s: %g vs %g (tol %g)", (what), _a, _b, (double) (tol)); \
} while (0)

/* Read a whole file with malloc; NULL if it cannot be read. */
static inline uint8_t *
mt_test_read_file(const char *path, size_t *len)
{
	FILE	   *f = fopen(path, "rb");
	uint8_t    *buf;
	long		n;

	*len = 0;
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = n >= 0 ? malloc(n > 0 ? (size_t) n : 1) : NULL;
	if (buf == NULL || fread(buf, 1, (size_t) n, f) != (size_t) n)
	{
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	*len = (size_t) n;
	return buf;
}

/* Prints "<suite>: N passed, N failed" and returns the exit status. */
#define TEST_SUMMARY(suite) \
	(printf("%s: %d passed, %d failed\n", (suite), mt_test_passed, mt_test_failed), \
	 mt_test_failed ? 1 : 0)

#endif
