/*
 * vit.h - the Vision Transformer of the model zoo (vit.c).
 */
#ifndef MT_VIT_H
#define MT_VIT_H

#include "../core/graph.h"

/* Build torchvision's vit_b_16 into an empty model; nonzero on table overflow. */
int			mt_vit_build(mt_model *m, int num_classes);

#endif
