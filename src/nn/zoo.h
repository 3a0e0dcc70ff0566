/*
 * zoo.h - the model zoo: architectures built from core layers with
 * torchvision's state_dict names and shapes.
 */
#ifndef MT_ZOO_H
#define MT_ZOO_H

#include "../core/graph.h"

/* Build an architecture with a head of num_classes outputs (weights unset). */
mt_model   *mt_zoo_build(const char *arch, int num_classes, int padding_same, mt_err *err);

/*
 * Whether arch takes an input of h x w (e.g. vit_b_16 needs multiples of
 * 16): MT_OK, or MT_ERR_INVALID / MT_ERR_LIMIT saying why not.
 */
int			mt_zoo_check_input(const char *arch, int h, int w, mt_err *err);

/* Whether arch is known. */
int			mt_zoo_known(const char *arch);

/* The classifier head's weight tensor name ("fc.weight", "classifier.1.weight"). */
const char *mt_zoo_head_weight(const char *arch);

/* Comma-separated list of known architectures, for error hints. */
const char *mt_zoo_list(void);

#endif
