/*
 * zoo_internal.h - the model builder shared by the zoo's files (zoo.c,
 * zoo_cnn.c, vit.c).  Not an API.
 */
#ifndef MT_ZOO_INTERNAL_H
#define MT_ZOO_INTERNAL_H

#include "zoo.h"

/* Builder state: the model and a sticky failure flag (table overflow). */
typedef struct builder
{
	mt_model   *m;
	int			failed;
} builder;

/*
 * Layers with torchvision's parameter names; each returns the new node's
 * index (and sets b->failed when a table is full).
 */
/* Conv2d "prefix.weight" [cout, cin/groups, k, k] (+ "prefix.bias"). */
int			mt_zb_conv(builder *b, const char *prefix, int in, int cin, int cout,
					   int k, int stride, int pad, int groups, int bias);
/* BatchNorm2d "prefix.{weight,bias,running_mean,running_var,num_batches_tracked}". */
int			mt_zb_bn(builder *b, const char *prefix, int in, int c);
int			mt_zb_act(builder *b, int in, mt_act kind);
int			mt_zb_add(builder *b, int x, int y);
/* Linear "prefix.weight" [fout, fin], "prefix.bias" [fout]. */
int			mt_zb_linear(builder *b, const char *prefix, int in, int fin, int fout);
/* Any other node, as given. */
int			mt_zb_node(builder *b, const mt_node *n);
/* A parameter of up to four dimensions (unused ones ignored past ndim). */
int			mt_zb_param(builder *b, const char *name, int ndim, int64_t d0, int64_t d1,
						int64_t d2, int64_t d3);

/*
 * A backbone without its classifier, as a U-Net encoder: skip[0..3] are
 * the feature nodes at strides 2, 4, 8, 16 (skip_c their channels), out
 * the deepest one at stride 32 (out_c channels).
 */
typedef struct mt_encoder
{
	int			skip[4],
				skip_c[4];
	int			out,
				out_c;
} mt_encoder;

/*
 * zoo.c: the encoders, with torchvision's tensor names behind prefix ("" for
 * the classifiers, "encoder." in a U-Net).  depth: 18, 34 or 50.
 */
void		mt_zoo_resnet_encoder(builder *b, const char *prefix, int depth, mt_encoder *e);
void		mt_zoo_mobilenet_v2_encoder(builder *b, const char *prefix, mt_encoder *e);

/* unet.c: a U-Net for a segmentation arch (mt_zoo_is_segmentation). */
void		mt_zoo_build_unet(builder *b, const char *arch, int num_classes);

/* zoo_cnn.c */
void		mt_zoo_build_densenet121(builder *b, int num_classes);
void		mt_zoo_build_efficientnet_b0(builder *b, int num_classes);

#endif
