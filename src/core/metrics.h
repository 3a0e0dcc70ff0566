/*
 * metrics.h - evaluation metrics computed by the engine.
 */
#ifndef MT_METRICS_H
#define MT_METRICS_H

#include "mt_common.h"

/*
 * Exact area under the ROC curve of scores against positive flags (the
 * Mann-Whitney statistic; ties count one half).  Sorts scores and positive
 * in place (together).  Returns NaN unless both classes occur.
 */
double		mt_auc(double *scores, uint8_t *positive, size_t n);

/* Index of the largest of n values (the first on ties). */
static inline int
mt_argmax(const float *v, int n)
{
	int			best = 0;

	for (int i = 1; i < n; i++)
		if (v[i] > v[best])
			best = i;
	return best;
}

/* How many of n rows of k scores have their largest score at labels[i]. */
static inline int
mt_count_correct(const float *scores, const int *labels, int n, int k)
{
	int			correct = 0;

	for (int i = 0; i < n; i++)
		correct += mt_argmax(scores + (size_t) i * k, k) == labels[i];
	return correct;
}

#endif
