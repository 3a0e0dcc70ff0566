/*
 * unet.c - U-Net on a pretrained encoder, as segmentation_models_pytorch's
 * Unet (decoder_channels (256, 128, 64, 32, 16), batch norm, no attention).
 *
 * The encoder is a zoo backbone without its classifier (zoo.c), its
 * tensors named as the backbone's behind "encoder.", so a registered
 * backbone's weights copy over name for name.  It yields features at
 * strides 2, 4, 8, 16 and 32.  Decoder block i (0..4) doubles the previous
 * output (bilinear, align_corners=False; or for the _tconv variants a
 * ConvTranspose2d(c, c, 2, stride 2) with bias), concatenates the
 * encoder's feature of the same stride after it (block 4, at stride 1,
 * has none), then runs conv3x3-BN-ReLU twice:
 *
 *   decoder.blocks.{i}.up.{weight,bias}              (_tconv only)
 *   decoder.blocks.{i}.conv1.0.weight                3x3, padding 1, no bias
 *   decoder.blocks.{i}.conv1.1.{weight,bias,running_mean,running_var,num_batches_tracked}
 *   decoder.blocks.{i}.conv2.0.weight, decoder.blocks.{i}.conv2.1.*
 *   segmentation_head.{weight,bias}                  3x3, padding 1, 16 -> classes
 *
 * The head's output, n x H x W x classes at the input's resolution, is the
 * logits node; the features node (what embed() returns) is the global
 * average pool of the deepest encoder feature.
 */
#include "zoo_internal.h"

#include <stdio.h>
#include <string.h>

static const struct
{
	const char *arch;
	const char *encoder;
	int			tconv;
}			unets[] = {
	{"unet_resnet18", "resnet18", 0},
	{"unet_resnet34", "resnet34", 0},
	{"unet_mobilenet_v2", "mobilenet_v2", 0},
	{"unet_resnet18_tconv", "resnet18", 1},
	{"unet_resnet34_tconv", "resnet34", 1},
	{"unet_mobilenet_v2_tconv", "mobilenet_v2", 1},
};

/* The table entry of arch, or -1. */
static int
unet_index(const char *arch)
{
	if (arch == NULL)
		return -1;
	for (int i = 0; i < (int) (sizeof(unets) / sizeof(unets[0])); i++)
		if (strcmp(unets[i].arch, arch) == 0)
			return i;
	return -1;
}

int
mt_zoo_is_segmentation(const char *arch)
{
	return unet_index(arch) >= 0;
}

const char *
mt_zoo_encoder_arch(const char *arch)
{
	int			i = unet_index(arch);

	return i >= 0 ? unets[i].encoder : NULL;
}

/* Conv3x3 (padding 1, no bias) - BN - ReLU as "prefix.0", "prefix.1". */
static int
conv3x3_bn_relu(builder *b, const char *prefix, int in, int cin, int cout)
{
	char		name[MT_NAME_MAX + 16];
	int			x;

	snprintf(name, sizeof(name), "%s.0", prefix);
	x = mt_zb_conv(b, name, in, cin, cout, 3, 1, 1, 1, 0);
	snprintf(name, sizeof(name), "%s.1", prefix);
	x = mt_zb_bn(b, name, x, cout);
	return mt_zb_act(b, x, MT_ACT_RELU);
}

/* Twice the size of node in (c channels): bilinear, or a 2x2 stride-2 transposed conv. */
static int
upsample(builder *b, const char *prefix, int in, int c, int tconv)
{
	char		name[MT_NAME_MAX + 16];
	mt_node		n;

	if (!tconv)
	{
		n = mt_node_init(MT_NODE_UPSAMPLE, in);
		n.scale_factor = 2;
		return mt_zb_node(b, &n);
	}
	n = mt_node_init(MT_NODE_CONV_TRANSPOSE, in);
	n.cin = n.cout = c;
	n.kh = n.kw = 2;
	n.sh = n.sw = 2;
	snprintf(name, sizeof(name), "%s.weight", prefix);
	n.p_weight = mt_zb_param(b, name, 4, c, c, 2, 2);
	snprintf(name, sizeof(name), "%s.bias", prefix);
	n.p_bias = mt_zb_param(b, name, 1, c, 0, 0, 0);
	return mt_zb_node(b, &n);
}

/* A U-Net for arch (known to mt_zoo_is_segmentation). */
void
mt_zoo_build_unet(builder *b, const char *arch, int num_classes)
{
	static const int dec[5] = {256, 128, 64, 32, 16};
	int			u = unet_index(arch);
	const char *enc;
	mt_encoder	e;
	mt_node		gap;
	int			x,
				c;
	char		p[MT_NAME_MAX];

	if (u < 0)
	{
		b->failed = 1;
		return;
	}
	enc = unets[u].encoder;
	memset(&e, 0, sizeof(e));
	if (strcmp(enc, "mobilenet_v2") == 0)
		mt_zoo_mobilenet_v2_encoder(b, MT_ZOO_ENCODER_PREFIX, &e);
	else
		mt_zoo_resnet_encoder(b, MT_ZOO_ENCODER_PREFIX, strcmp(enc, "resnet18") == 0 ? 18 : 34, &e);

	gap = mt_node_init(MT_NODE_GAP, e.out);
	b->m->features_node = mt_zb_node(b, &gap);
	b->m->feature_dim = e.out_c;

	x = e.out;
	c = e.out_c;
	for (int i = 0; i < 5; i++)
	{
		snprintf(p, sizeof(p), "decoder.blocks.%d.up", i);
		x = upsample(b, p, x, c, unets[u].tconv);
		if (i < 4)
		{
			/* the upsampled channels first, then the skip (torch.cat([x, skip], 1)) */
			mt_node		cat = mt_node_init(MT_NODE_CONCAT, x);
			int			skip = 3 - i;

			cat.in1 = e.skip[skip];
			cat.cin = c;
			cat.cout = c + e.skip_c[skip];
			x = mt_zb_node(b, &cat);
			c = cat.cout;
		}
		snprintf(p, sizeof(p), "decoder.blocks.%d.conv1", i);
		x = conv3x3_bn_relu(b, p, x, c, dec[i]);
		snprintf(p, sizeof(p), "decoder.blocks.%d.conv2", i);
		x = conv3x3_bn_relu(b, p, x, dec[i], dec[i]);
		c = dec[i];
	}
	x = mt_zb_conv(b, "segmentation_head", x, c, num_classes, 3, 1, 1, 1, 1);
	if (x >= 0)
		b->m->nodes[x].init_w = MT_INIT_XAVIER_UNIFORM;	/* smp's initialize_head */
	b->m->logits_node = x;
	b->m->backbone_prefix = MT_ZOO_ENCODER_PREFIX;
}
