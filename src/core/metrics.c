/*
 * metrics.c - exact AUC.
 */
#include "metrics.h"

#include <math.h>

/* Sort (scores, positive) together by score: heap sort, no allocation. */
static void
sift_down(double *s, uint8_t *p, size_t start, size_t end)
{
	size_t		root = start;

	while (2 * root + 1 < end)
	{
		size_t		child = 2 * root + 1;
		double		ts;
		uint8_t		tp;

		if (child + 1 < end && s[child] < s[child + 1])
			child++;
		if (s[root] >= s[child])
			return;
		ts = s[root];
		s[root] = s[child];
		s[child] = ts;
		tp = p[root];
		p[root] = p[child];
		p[child] = tp;
		root = child;
	}
}

static void
sort_pairs(double *s, uint8_t *p, size_t n)
{
	if (n < 2)
		return;
	for (size_t i = n / 2; i-- > 0;)
		sift_down(s, p, i, n);
	for (size_t end = n - 1; end > 0; end--)
	{
		double		ts = s[0];
		uint8_t		tp = p[0];

		s[0] = s[end];
		s[end] = ts;
		p[0] = p[end];
		p[end] = tp;
		sift_down(s, p, 0, end);
	}
}

double
mt_auc(double *scores, uint8_t *positive, size_t n)
{
	double		rank_sum = 0.0;
	double		npos = 0,
				nneg;
	size_t		i = 0;

	sort_pairs(scores, positive, n);
	while (i < n)
	{
		size_t		j = i;
		double		pos_in_tie = 0;

		while (j < n && scores[j] == scores[i])
			pos_in_tie += positive[j++] != 0;
		rank_sum += (double) (i + 1 + j) / 2.0 * pos_in_tie;	/* average of ranks i+1..j */
		npos += pos_in_tie;
		i = j;
	}
	nneg = (double) n - npos;
	if (npos == 0 || nneg == 0)
		return NAN;
	return (rank_sum - npos * (npos + 1) / 2.0) / (npos * nneg);
}
