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

/*
 * The classifier head's weight tensor name ("fc.weight", "classifier.1.weight";
 * "segmentation_head.weight" for a U-Net).
 */
const char *mt_zoo_head_weight(const char *arch);

/*
 * Segmentation architectures (unet.c): a U-Net on a pretrained encoder,
 * "unet_resnet18", "unet_resnet34", "unet_mobilenet_v2" with bilinear
 * upsampling and the same with "_tconv" (ConvTranspose2d k 2 s 2).  Their
 * logits node is the segmentation head, n x H x W x num_classes at the
 * input's resolution (H, W multiples of 32); the features node the global
 * average pool of the deepest encoder feature.  The encoder's tensors are
 * its backbone's torchvision names (without the classifier) behind
 * MT_ZOO_ENCODER_PREFIX, so "conv1.weight" of a resnet18 backbone is
 * "encoder.conv1.weight" of a unet_resnet18.
 */
#define MT_ZOO_ENCODER_PREFIX "encoder."

/* Whether arch is a segmentation (U-Net) architecture. */
int			mt_zoo_is_segmentation(const char *arch);

/* The backbone arch of a segmentation arch ("resnet18"), NULL for others. */
const char *mt_zoo_encoder_arch(const char *arch);

/* Comma-separated list of known architectures, for error hints. */
const char *mt_zoo_list(void);

#endif
