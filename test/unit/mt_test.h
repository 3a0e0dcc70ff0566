/* mt_test.h - a tiny unit-test harness: CHECK macros and a summary line. */
#ifndef MT_TEST_H
#define MT_TEST_H

#include <stdio.h>
#include <math.h>

static int	mt_test_passed = 0;
static int	mt_test_failed = 0;

#define CHECK(cond, ...) do { \
	if (cond) mt_test_passed++; \
	else { mt_test_failed++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
		fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

#define CHECK_NEAR(a, b, tol, what) do { \
	double _a = (a), _b = (b); \
	CHECK(fabs(_a - _b) <= (tol), "%s: %g vs %g (tol %g)", (what), _a, _b, (double) (tol)); \
} while (0)

/* Prints "<suite>: N passed, N failed" and returns the exit status. */
#define TEST_SUMMARY(suite) \
	(printf("%s: %d passed, %d failed\n", (suite), mt_test_passed, mt_test_failed), \
	 mt_test_failed ? 1 : 0)

#endif
