/*
 * metrics.c - metric aggregates usable with GROUP BY: medtl.auc(score,
 * positive) computes the exact area under the ROC curve (the Mann-Whitney
 * statistic, ties counted one half).
 */
#include "medtl_pg.h"

#include <math.h>

#include "fmgr.h"
#include "utils/memutils.h"

typedef struct ScorePair
{
	double		score;
	bool		positive;
} ScorePair;

typedef struct AucState
{
	int64		n;
	int64		cap;
	ScorePair  *pairs;
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
		st->pairs = MemoryContextAllocHuge(aggcxt, sizeof(ScorePair) * st->cap);
	}
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_POINTER(st);
	score = PG_GETARG_FLOAT8(1);
	if (isnan(score))
		PG_RETURN_POINTER(st);
	if (st->n == st->cap)
	{
		st->cap *= 2;
		st->pairs = repalloc_huge(st->pairs, sizeof(ScorePair) * st->cap);
	}
	st->pairs[st->n].score = score;
	st->pairs[st->n].positive = PG_GETARG_BOOL(2);
	st->n++;
	PG_RETURN_POINTER(st);
}

static int
cmp_score(const void *a, const void *b)
{
	double		x = ((const ScorePair *) a)->score;
	double		y = ((const ScorePair *) b)->score;

	return (x > y) - (x < y);
}

/* Final: rank-sum AUC with average ranks for ties; NULL without both classes. */
PG_FUNCTION_INFO_V1(medtl_auc_final);
Datum
medtl_auc_final(PG_FUNCTION_ARGS)
{
	AucState   *st = PG_ARGISNULL(0) ? NULL : (AucState *) PG_GETARG_POINTER(0);
	double		rank_sum = 0.0;
	int64		npos = 0,
				nneg;
	int64		i = 0;

	if (st == NULL || st->n == 0)
		PG_RETURN_NULL();
	qsort(st->pairs, st->n, sizeof(ScorePair), cmp_score);
	while (i < st->n)
	{
		int64		j = i;
		int64		pos_in_tie = 0;
		double		avg_rank;

		while (j < st->n && st->pairs[j].score == st->pairs[i].score)
		{
			pos_in_tie += st->pairs[j].positive;
			j++;
		}
		avg_rank = (double) (i + 1 + j) / 2.0;	/* ranks i+1 .. j */
		rank_sum += avg_rank * pos_in_tie;
		npos += pos_in_tie;
		i = j;
	}
	nneg = st->n - npos;
	if (npos == 0 || nneg == 0)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8((rank_sum - (double) npos * (npos + 1) / 2.0) / ((double) npos * nneg));
}
