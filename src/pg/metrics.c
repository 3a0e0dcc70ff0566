/*
 * metrics.c - metric aggregates usable with GROUP BY: medtl.auc(score,
 * positive) computes the exact area under the ROC curve (the Mann-Whitney
 * statistic, ties counted one half).
 */
#include "medtl_pg.h"

#include <math.h>

#include "fmgr.h"
#include "utils/memutils.h"

#include "core/metrics.h"

typedef struct AucState
{
	int64		n;
	int64		cap;
	double	   *scores;
	uint8	   *positive;
} AucState;

/* Transition: remember (score, positive); NULLs and NaN scores are skipped. */
PG_FUNCTION_INFO_V1(medtl_auc_accum);
Datum
medtl_auc_accum(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	AucState   *st;
	double		score;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "medtl_auc_accum called in non-aggregate context");
	st = PG_ARGISNULL(0) ? NULL : (AucState *) PG_GETARG_POINTER(0);
	if (st == NULL)
	{
		st = MemoryContextAllocZero(aggcxt, sizeof(AucState));
		st->cap = 256;
		st->scores = MemoryContextAllocHuge(aggcxt, sizeof(double) * st->cap);
		st->positive = MemoryContextAllocHuge(aggcxt, st->cap);
	}
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_POINTER(st);
	score = PG_GETARG_FLOAT8(1);
	if (isnan(score))
		PG_RETURN_POINTER(st);
	if (st->n == st->cap)
	{
		st->cap *= 2;
		st->scores = repalloc_huge(st->scores, sizeof(double) * st->cap);
		st->positive = repalloc_huge(st->positive, st->cap);
	}
	st->scores[st->n] = score;
	st->positive[st->n] = PG_GETARG_BOOL(2);
	st->n++;
	PG_RETURN_POINTER(st);
}

/* Final: rank-sum AUC with average ranks for ties; NULL without both classes. */
PG_FUNCTION_INFO_V1(medtl_auc_final);
Datum
medtl_auc_final(PG_FUNCTION_ARGS)
{
	AucState   *st = PG_ARGISNULL(0) ? NULL : (AucState *) PG_GETARG_POINTER(0);
	double		auc;

	if (st == NULL || st->n == 0)
		PG_RETURN_NULL();
	auc = mt_auc(st->scores, st->positive, st->n);
	if (isnan(auc))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(auc);
}
