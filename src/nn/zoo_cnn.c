/*
 * zoo_cnn.c - DenseNet-121 and EfficientNet-B0 as in torchvision 0.14, with
 * its state_dict names and shapes.
 *
 * DenseNet's dense block concatenates every layer's 32 new channels onto
 * its input.  medtl builds that as a chain of two-input MT_NODE_CONCAT
 * nodes, c_k = concat(c_{k-1}, new_k): inference frees c_{k-1} once c_k and
 * layer k's norm1 have read it, so at most two concatenations are alive at
 * a time; training keeps only what backward reads (a batch-statistics
 * norm1 keeps its input, the concatenation, as torch does), and the
 * concatenation's own backward just splits the gradient.
 *
 * EfficientNet's stochastic depth (and the classifier's dropout) are
 * identities here, in inference and in training: medtl does not drop
 * residual branches at random (torch with those modules in eval()).
 */
#include "zoo_internal.h"

#include <stdio.h>

/* Global average pool of node in (N x 1 x 1 x C). */
static int
gap(builder *b, int in)
{
	mt_node		n = mt_node_init(MT_NODE_GAP, in);

	return mt_zb_node(b, &n);
}

/* Pooling node of the given kind. */
static int
pool(builder *b, mt_node_kind kind, int in, int k, int s, int p)
{
	mt_node		n = mt_node_init(kind, in);

	n.pool_k = k;
	n.pool_s = s;
	n.pool_p = p;
	return mt_zb_node(b, &n);
}

/* Channel concatenation of x (cx channels) and y (cy channels). */
static int
concat(builder *b, int x, int cx, int y, int cy)
{
	mt_node		n = mt_node_init(MT_NODE_CONCAT, x);

	n.in1 = y;
	n.cin = cx;
	n.cout = cx + cy;
	return mt_zb_node(b, &n);
}

/* torchvision's DenseNet-121: growth 32, blocks (6, 12, 24, 16), bn_size 4. */
void
mt_zoo_build_densenet121(builder *b, int num_classes)
{
	static const int blocks[4] = {6, 12, 24, 16};
	const int	growth = 32,
				bottleneck = 4 * 32;
	mt_node		inp = mt_node_init(MT_NODE_INPUT, -1);
	int			x = mt_zb_node(b, &inp);
	int			c = 64;
	char		p[MT_NAME_MAX];

	x = mt_zb_conv(b, "features.conv0", x, 3, 64, 7, 2, 3, 1, 0);
	x = mt_zb_act(b, mt_zb_bn(b, "features.norm0", x, 64), MT_ACT_RELU);
	x = pool(b, MT_NODE_MAXPOOL, x, 3, 2, 1);

	for (int blk = 0; blk < 4; blk++)
	{
		for (int l = 0; l < blocks[blk]; l++)
		{
			int			y;

			snprintf(p, sizeof(p), "features.denseblock%d.denselayer%d.norm1", blk + 1, l + 1);
			y = mt_zb_act(b, mt_zb_bn(b, p, x, c), MT_ACT_RELU);
			snprintf(p, sizeof(p), "features.denseblock%d.denselayer%d.conv1", blk + 1, l + 1);
			y = mt_zb_conv(b, p, y, c, bottleneck, 1, 1, 0, 1, 0);
			snprintf(p, sizeof(p), "features.denseblock%d.denselayer%d.norm2", blk + 1, l + 1);
			y = mt_zb_act(b, mt_zb_bn(b, p, y, bottleneck), MT_ACT_RELU);
			snprintf(p, sizeof(p), "features.denseblock%d.denselayer%d.conv2", blk + 1, l + 1);
			y = mt_zb_conv(b, p, y, bottleneck, growth, 3, 1, 1, 1, 0);
			x = concat(b, x, c, y, growth);
			c += growth;
		}
		if (blk < 3)
		{
			snprintf(p, sizeof(p), "features.transition%d.norm", blk + 1);
			x = mt_zb_act(b, mt_zb_bn(b, p, x, c), MT_ACT_RELU);
			snprintf(p, sizeof(p), "features.transition%d.conv", blk + 1);
			x = mt_zb_conv(b, p, x, c, c / 2, 1, 1, 0, 1, 0);
			x = pool(b, MT_NODE_AVGPOOL, x, 2, 2, 0);
			c /= 2;
		}
	}
	/* features.norm5, then F.relu and adaptive_avg_pool2d in forward() */
	x = mt_zb_act(b, mt_zb_bn(b, "features.norm5", x, c), MT_ACT_RELU);
	x = gap(b, x);
	b->m->features_node = x;
	b->m->feature_dim = c;
	b->m->logits_node = mt_zb_linear(b, "classifier", x, c, num_classes);
	b->m->head_init = MT_HEAD_INIT_ZERO_BIAS;
	b->m->conv_init_fan_in = 1;
}

/* Conv2dNormActivation: prefix.0 conv (padding (k-1)/2), prefix.1 BN, activation. */
static int
conv_bn_act(builder *b, const char *prefix, int in, int cin, int cout, int k,
			int stride, int groups, mt_act a)
{
	char		name[MT_NAME_MAX + 16];
	int			x;

	snprintf(name, sizeof(name), "%s.0", prefix);
	x = mt_zb_conv(b, name, in, cin, cout, k, stride, (k - 1) / 2, groups, 0);
	snprintf(name, sizeof(name), "%s.1", prefix);
	x = mt_zb_bn(b, name, x, cout);
	return a == MT_ACT_NONE ? x : mt_zb_act(b, x, a);
}

/*
 * torchvision's SqueezeExcitation on node x (c channels): avgpool, fc1 (1x1
 * conv to sq channels, bias), SiLU, fc2 (1x1 conv back to c, bias),
 * sigmoid, then x scaled channel-wise.
 */
static int
squeeze_excitation(builder *b, const char *prefix, int x, int c, int sq)
{
	char		name[MT_NAME_MAX + 16];
	mt_node		scale;
	int			s = gap(b, x);

	snprintf(name, sizeof(name), "%s.fc1", prefix);
	s = mt_zb_act(b, mt_zb_conv(b, name, s, c, sq, 1, 1, 0, 1, 1), MT_ACT_SILU);
	snprintf(name, sizeof(name), "%s.fc2", prefix);
	s = mt_zb_act(b, mt_zb_conv(b, name, s, sq, c, 1, 1, 0, 1, 1), MT_ACT_SIGMOID);
	scale = mt_node_init(MT_NODE_SCALE, x);
	scale.in1 = s;
	return mt_zb_node(b, &scale);
}

/* torchvision's EfficientNet-B0 (width and depth 1.0): features.0..8, classifier.1. */
void
mt_zoo_build_efficientnet_b0(builder *b, int num_classes)
{
	static const int cfg[7][5] = {	/* expand, kernel, stride, out, layers */
		{1, 3, 1, 16, 1}, {6, 3, 2, 24, 2}, {6, 5, 2, 40, 2}, {6, 3, 2, 80, 3},
		{6, 5, 1, 112, 3}, {6, 5, 2, 192, 4}, {6, 3, 1, 320, 1}
	};
	mt_node		inp = mt_node_init(MT_NODE_INPUT, -1);
	int			x = mt_zb_node(b, &inp);
	int			cin = 32;
	char		p[MT_NAME_MAX];

	x = conv_bn_act(b, "features.0", x, 3, 32, 3, 2, 1, MT_ACT_SILU);
	for (int s = 0; s < 7; s++)
		for (int r = 0; r < cfg[s][4]; r++)
		{
			int			t = cfg[s][0],
						k = cfg[s][1],
						cout = cfg[s][3];
			int			stride = r == 0 ? cfg[s][2] : 1;
			int			hidden = cin * t;
			int			y = x,
						j = 0;

			if (t != 1)
			{
				snprintf(p, sizeof(p), "features.%d.%d.block.%d", s + 1, r, j++);
				y = conv_bn_act(b, p, y, cin, hidden, 1, 1, 1, MT_ACT_SILU);
			}
			snprintf(p, sizeof(p), "features.%d.%d.block.%d", s + 1, r, j++);
			y = conv_bn_act(b, p, y, hidden, hidden, k, stride, hidden, MT_ACT_SILU);
			snprintf(p, sizeof(p), "features.%d.%d.block.%d", s + 1, r, j++);
			y = squeeze_excitation(b, p, y, hidden, cin / 4 > 1 ? cin / 4 : 1);
			snprintf(p, sizeof(p), "features.%d.%d.block.%d", s + 1, r, j++);
			y = conv_bn_act(b, p, y, hidden, cout, 1, 1, 1, MT_ACT_NONE);
			/* stochastic depth: identity (see the top of this file) */
			x = (stride == 1 && cin == cout) ? mt_zb_add(b, y, x) : y;
			cin = cout;
		}
	x = conv_bn_act(b, "features.8", x, cin, 1280, 1, 1, 1, MT_ACT_SILU);
	x = gap(b, x);
	b->m->features_node = x;
	b->m->feature_dim = 1280;
	b->m->logits_node = mt_zb_linear(b, "classifier.1", x, 1280, num_classes);
	b->m->head_init = MT_HEAD_INIT_UNIFORM_OUT;
}
