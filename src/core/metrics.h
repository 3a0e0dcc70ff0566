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

#endif
