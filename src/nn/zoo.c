/*
 * zoo.c - MobileNetV2 and ResNet-18/34/50 as in torchvision 0.14, the
 * builder helpers (zoo_internal.h) and the table of architectures
 * (DenseNet-121 and EfficientNet-B0 in zoo_cnn.c, ViT-B/16 in vit.c).
 */
#include "zoo.h"
#include "zoo_internal.h"
#include "vit.h"

#include <stdio.h>
#include <string.h>

static int
add_param(builder *b, const char *name, int ndim, int64_t d0, int64_t d1,
		  int64_t d2, int64_t d3)
{
	int64_t		shape[4] = {d0, d1, d2, d3};
	int			i = mt_model_add_param(b->m, name, ndim, shape, 0);

	if (i < 0)
		b->failed = 1;
	return i;
}

static int
add_node(builder *b, const mt_node *n)
{
	int			i = mt_model_add_node(b->m, n);

	if (i < 0)
		b->failed = 1;
	return i;
}

/* Conv2d "prefix.weight" [cout, cin/groups, k, k] (+ "prefix.bias"). */
static int
conv(builder *b, const char *prefix, int in, int cin, int cout, int k,
	 int stride, int pad, int groups, int bias)
{
	mt_node		n = mt_node_init(MT_NODE_CONV, in);
	char		name[MT_NAME_MAX];

	n.cin = cin;
	n.cout = cout;
	n.kh = n.kw = k;
	n.sh = n.sw = stride;
	n.pad_h = n.pad_w = pad;
	n.groups = groups;
	snprintf(name, sizeof(name), "%s.weight", prefix);
	n.p_weight = add_param(b, name, 4, cout, cin / groups, k, k);
	if (bias)
	{
		snprintf(name, sizeof(name), "%s.bias", prefix);
		n.p_bias = add_param(b, name, 1, cout, 0, 0, 0);
	}
	return add_node(b, &n);
}

/* BatchNorm2d "prefix.{weight,bias,running_mean,running_var,num_batches_tracked}". */
static int
bn(builder *b, const char *prefix, int in, int c)
{
	mt_node		n = mt_node_init(MT_NODE_BN, in);
	char		name[MT_NAME_MAX];
	int64_t		none[1] = {0};

	snprintf(name, sizeof(name), "%s.weight", prefix);
	n.p_bn_weight = add_param(b, name, 1, c, 0, 0, 0);
	snprintf(name, sizeof(name), "%s.bias", prefix);
	n.p_bn_bias = add_param(b, name, 1, c, 0, 0, 0);
	snprintf(name, sizeof(name), "%s.running_mean", prefix);
	n.p_bn_mean = add_param(b, name, 1, c, 0, 0, 0);
	snprintf(name, sizeof(name), "%s.running_var", prefix);
	n.p_bn_var = add_param(b, name, 1, c, 0, 0, 0);
	snprintf(name, sizeof(name), "%s.num_batches_tracked", prefix);
	if (mt_model_add_param(b->m, name, 0, none, 1) < 0)
		b->failed = 1;
	return add_node(b, &n);
}

static int
act(builder *b, int in, mt_act kind)
{
	mt_node		n = mt_node_init(MT_NODE_ACT, in);

	n.act = kind;
	return add_node(b, &n);
}

static int
add(builder *b, int x, int y)
{
	mt_node		n = mt_node_init(MT_NODE_ADD, x);

	n.in1 = y;
	return add_node(b, &n);
}

static int
linear(builder *b, const char *prefix, int in, int fin, int fout)
{
	mt_node		n = mt_node_init(MT_NODE_LINEAR, in);
	char		name[MT_NAME_MAX];

	n.in_features = fin;
	n.out_features = fout;
	snprintf(name, sizeof(name), "%s.weight", prefix);
	n.p_weight = add_param(b, name, 2, fout, fin, 0, 0);
	snprintf(name, sizeof(name), "%s.bias", prefix);
	n.p_bias = add_param(b, name, 1, fout, 0, 0, 0);
	return add_node(b, &n);
}

/* Conv + BN + activation, torchvision's Conv2dNormActivation: prefix.0, prefix.1. */
static int
conv_bn_act(builder *b, const char *prefix, int in, int cin, int cout, int k,
			int stride, int groups, mt_act a)
{
	char		name[MT_NAME_MAX + 16];
	int			x;

	snprintf(name, sizeof(name), "%s.0", prefix);
	x = conv(b, name, in, cin, cout, k, stride, (k - 1) / 2, groups, 0);
	snprintf(name, sizeof(name), "%s.1", prefix);
	x = bn(b, name, x, cout);
	return a == MT_ACT_NONE ? x : act(b, x, a);
}

/*
 * torchvision's MobileNetV2 (width 1.0) features.0..18 with tensor names
 * prefixed by prefix ("" or "encoder."); e gets the outputs of features.1,
 * .3, .6, .13 (strides 2..16) and .18 (stride 32, 1280 channels).
 */
void
mt_zoo_mobilenet_v2_encoder(builder *b, const char *prefix, mt_encoder *e)
{
	static const int cfg[7][4] = {	/* t, c, n, s */
		{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
		{6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}
	};
	mt_node		inp = mt_node_init(MT_NODE_INPUT, -1);
	int			x = add_node(b, &inp);
	int			cin = 32;
	int			idx = 1;
	int			k = 0;
	char		p[MT_NAME_MAX];

	snprintf(p, sizeof(p), "%sfeatures.0", prefix);
	x = conv_bn_act(b, p, x, 3, 32, 3, 2, 1, MT_ACT_RELU6);
	for (int s = 0; s < 7; s++)
		for (int r = 0; r < cfg[s][2]; r++, idx++)
		{
			int			t = cfg[s][0],
						cout = cfg[s][1];
			int			stride = r == 0 ? cfg[s][3] : 1;
			int			hidden = cin * t;
			int			y = x,
						j = 0;

			if (t != 1)
			{
				snprintf(p, sizeof(p), "%sfeatures.%d.conv.%d", prefix, idx, j++);
				y = conv_bn_act(b, p, y, cin, hidden, 1, 1, 1, MT_ACT_RELU6);
			}
			snprintf(p, sizeof(p), "%sfeatures.%d.conv.%d", prefix, idx, j++);
			y = conv_bn_act(b, p, y, hidden, hidden, 3, stride, hidden, MT_ACT_RELU6);
			snprintf(p, sizeof(p), "%sfeatures.%d.conv.%d", prefix, idx, j++);
			y = conv(b, p, y, hidden, cout, 1, 1, 0, 1, 0);
			snprintf(p, sizeof(p), "%sfeatures.%d.conv.%d", prefix, idx, j++);
			y = bn(b, p, y, cout);
			x = (stride == 1 && cin == cout) ? add(b, x, y) : y;
			cin = cout;
			if (idx == 1 || idx == 3 || idx == 6 || idx == 13)
			{
				e->skip[k] = x;
				e->skip_c[k++] = cout;
			}
		}
	snprintf(p, sizeof(p), "%sfeatures.18", prefix);
	e->out = conv_bn_act(b, p, x, cin, 1280, 1, 1, 1, MT_ACT_RELU6);
	e->out_c = 1280;
}

/* torchvision's MobileNetV2 (width 1.0): features.0..18, classifier.1. */
static void
build_mobilenet_v2(builder *b, int num_classes)
{
	mt_encoder	e;
	mt_node		gap;
	int			x;

	mt_zoo_mobilenet_v2_encoder(b, "", &e);
	gap = mt_node_init(MT_NODE_GAP, e.out);
	x = add_node(b, &gap);
	b->m->features_node = x;
	b->m->feature_dim = e.out_c;
	b->m->logits_node = linear(b, "classifier.1", x, e.out_c, num_classes);
}

/*
 * torchvision's ResNet-18, -34 (BasicBlock) or -50 (Bottleneck) without
 * avgpool and fc, tensor names prefixed by prefix; e gets the ReLU after
 * bn1 (stride 2) and layer1..3 (strides 4..16), and layer4 (stride 32).
 */
void
mt_zoo_resnet_encoder(builder *b, const char *prefix, int depth, mt_encoder *e)
{
	static const int r18[4] = {2, 2, 2, 2};
	static const int r34[4] = {3, 4, 6, 3};
	const int  *blocks = depth == 18 ? r18 : r34;
	int			bottleneck = depth == 50;
	mt_node		inp = mt_node_init(MT_NODE_INPUT, -1);
	mt_node		pool = mt_node_init(MT_NODE_MAXPOOL, -1);
	int			expansion = bottleneck ? 4 : 1;
	int			x = add_node(b, &inp);
	int			cin = 64;
	char		p[MT_NAME_MAX];

	snprintf(p, sizeof(p), "%sconv1", prefix);
	x = conv(b, p, x, 3, 64, 7, 2, 3, 1, 0);
	snprintf(p, sizeof(p), "%sbn1", prefix);
	x = bn(b, p, x, 64);
	x = act(b, x, MT_ACT_RELU);
	e->skip[0] = x;
	e->skip_c[0] = 64;
	pool.in0 = x;
	pool.pool_k = 3;
	pool.pool_s = 2;
	pool.pool_p = 1;
	x = add_node(b, &pool);

	for (int l = 0; l < 4; l++)
	{
		int			width = 64 << l;

		for (int r = 0; r < blocks[l]; r++)
		{
			int			stride = (r == 0 && l > 0) ? 2 : 1;
			int			cout = width * expansion;
			int			identity = x,
						y;

			if (bottleneck)
			{
				snprintf(p, sizeof(p), "%slayer%d.%d.conv1", prefix, l + 1, r);
				y = conv(b, p, x, cin, width, 1, 1, 0, 1, 0);
				snprintf(p, sizeof(p), "%slayer%d.%d.bn1", prefix, l + 1, r);
				y = act(b, bn(b, p, y, width), MT_ACT_RELU);
				snprintf(p, sizeof(p), "%slayer%d.%d.conv2", prefix, l + 1, r);
				y = conv(b, p, y, width, width, 3, stride, 1, 1, 0);
				snprintf(p, sizeof(p), "%slayer%d.%d.bn2", prefix, l + 1, r);
				y = act(b, bn(b, p, y, width), MT_ACT_RELU);
				snprintf(p, sizeof(p), "%slayer%d.%d.conv3", prefix, l + 1, r);
				y = conv(b, p, y, width, cout, 1, 1, 0, 1, 0);
				snprintf(p, sizeof(p), "%slayer%d.%d.bn3", prefix, l + 1, r);
				y = bn(b, p, y, cout);
			}
			else
			{
				snprintf(p, sizeof(p), "%slayer%d.%d.conv1", prefix, l + 1, r);
				y = conv(b, p, x, cin, width, 3, stride, 1, 1, 0);
				snprintf(p, sizeof(p), "%slayer%d.%d.bn1", prefix, l + 1, r);
				y = act(b, bn(b, p, y, width), MT_ACT_RELU);
				snprintf(p, sizeof(p), "%slayer%d.%d.conv2", prefix, l + 1, r);
				y = conv(b, p, y, width, width, 3, 1, 1, 1, 0);
				snprintf(p, sizeof(p), "%slayer%d.%d.bn2", prefix, l + 1, r);
				y = bn(b, p, y, width);
			}
			if (stride != 1 || cin != cout)
			{
				snprintf(p, sizeof(p), "%slayer%d.%d.downsample.0", prefix, l + 1, r);
				identity = conv(b, p, x, cin, cout, 1, stride, 0, 1, 0);
				snprintf(p, sizeof(p), "%slayer%d.%d.downsample.1", prefix, l + 1, r);
				identity = bn(b, p, identity, cout);
			}
			x = act(b, add(b, y, identity), MT_ACT_RELU);
			cin = cout;
		}
		if (l < 3)
		{
			e->skip[l + 1] = x;
			e->skip_c[l + 1] = cin;
		}
	}
	e->out = x;
	e->out_c = cin;
}

/* torchvision's ResNet with BasicBlock (18, 34) or Bottleneck (50). */
static void
build_resnet(builder *b, int depth, int num_classes)
{
	mt_encoder	e;
	mt_node		gap;
	int			x;

	mt_zoo_resnet_encoder(b, "", depth, &e);
	gap = mt_node_init(MT_NODE_GAP, e.out);
	x = add_node(b, &gap);
	b->m->features_node = x;
	b->m->feature_dim = e.out_c;
	b->m->logits_node = linear(b, "fc", x, e.out_c, num_classes);
}

static const struct
{
	const char *arch;
	const char *head;
}			zoo[] = {
	{"mobilenet_v2", "classifier.1.weight"},
	{"resnet18", "fc.weight"},
	{"resnet34", "fc.weight"},
	{"resnet50", "fc.weight"},
	{"vit_b_16", "heads.head.weight"},
	{"densenet121", "classifier.weight"},
	{"efficientnet_b0", "classifier.1.weight"},
	/* U-Nets (unet.c): the head is a 3x3 convolution */
	{"unet_resnet18", "segmentation_head.weight"},
	{"unet_resnet34", "segmentation_head.weight"},
	{"unet_mobilenet_v2", "segmentation_head.weight"},
	{"unet_resnet18_tconv", "segmentation_head.weight"},
	{"unet_resnet34_tconv", "segmentation_head.weight"},
	{"unet_mobilenet_v2_tconv", "segmentation_head.weight"},
};

int
mt_zoo_known(const char *arch)
{
	return mt_zoo_head_weight(arch) != NULL;
}

const char *
mt_zoo_head_weight(const char *arch)
{
	for (size_t i = 0; i < sizeof(zoo) / sizeof(zoo[0]); i++)
		if (strcmp(zoo[i].arch, arch) == 0)
			return zoo[i].head;
	return NULL;
}

const char *
mt_zoo_list(void)
{
	return "mobilenet_v2, resnet18, resnet34, resnet50, densenet121, efficientnet_b0, vit_b_16, "
		"unet_resnet18, unet_resnet34, unet_mobilenet_v2 (and each with _tconv)";
}

/* Whether arch takes an h x w input: the graph's shapes for it. */
int
mt_zoo_check_input(const char *arch, int h, int w, mt_err *err)
{
	mt_model   *m;
	mt_shape3  *shp;
	size_t		scratch;
	int			rc;

	/* the decoder concatenates each upsampled map with the encoder's of that stride */
	if (mt_zoo_is_segmentation(arch) && (h <= 0 || w <= 0 || h % 32 != 0 || w % 32 != 0))
	{
		mt_seterr(err, MT_ERR_INVALID, "%s needs an input whose height and width are multiples of 32, not %dx%d",
				  arch, h, w);
		mt_setdetail(err, "Its encoder halves the size five times and the decoder doubles it back.");
		return MT_ERR_INVALID;
	}
	if ((m = mt_zoo_build(arch, 2, 0, err)) == NULL)
		return err->code;
	if ((shp = mt_calloc(m->n_nodes, sizeof(mt_shape3))) == NULL)
	{
		mt_model_free(m);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory checking an input size");
	}
	rc = mt_model_shapes(m, h, w, shp, &scratch, err);
	if (rc == MT_ERR_SHAPE)
		rc = err->code = MT_ERR_INVALID;
	mt_free(shp);
	mt_model_free(m);
	return rc;
}

mt_model *
mt_zoo_build(const char *arch, int num_classes, int padding_same, mt_err *err)
{
	builder		b;

	if (!mt_zoo_known(arch))
	{
		mt_seterr(err, MT_ERR_INVALID, "unknown architecture \"%s\"", arch);
		mt_setdetail(err, "Known architectures: %s.", mt_zoo_list());
		return NULL;
	}
	if (num_classes < 1 || num_classes > 100000)
	{
		mt_seterr(err, MT_ERR_INVALID, "number of classes must be between 1 and 100000, not %d",
				  num_classes);
		return NULL;
	}
	b.failed = 0;
	b.m = mt_model_alloc(arch, 1024, 2048, err);
	if (b.m == NULL)
		return NULL;
	b.m->num_classes = num_classes;
	b.m->padding_same = padding_same;
	if (strcmp(arch, "mobilenet_v2") == 0)
	{
		build_mobilenet_v2(&b, num_classes);
		b.m->head_init = MT_HEAD_INIT_NORMAL;	/* torchvision: normal(0, 0.01) */
	}
	else if (strcmp(arch, "resnet18") == 0)
		build_resnet(&b, 18, num_classes);
	else if (strcmp(arch, "resnet34") == 0)
		build_resnet(&b, 34, num_classes);
	else if (mt_zoo_is_segmentation(arch))
		mt_zoo_build_unet(&b, arch, num_classes);
	else if (strcmp(arch, "vit_b_16") == 0)
		b.failed = mt_vit_build(b.m, num_classes);
	else if (strcmp(arch, "densenet121") == 0)
		mt_zoo_build_densenet121(&b, num_classes);
	else if (strcmp(arch, "efficientnet_b0") == 0)
		mt_zoo_build_efficientnet_b0(&b, num_classes);
	else
		build_resnet(&b, 50, num_classes);
	if (b.failed)
	{
		mt_model_free(b.m);
		mt_seterr(err, MT_ERR_INTERNAL, "model table overflow building %s", arch);
		return NULL;
	}
	return b.m;
}

/* The builder helpers for the other zoo files (zoo_internal.h). */
int
mt_zb_conv(builder *b, const char *prefix, int in, int cin, int cout, int k,
		   int stride, int pad, int groups, int bias)
{
	return conv(b, prefix, in, cin, cout, k, stride, pad, groups, bias);
}

int
mt_zb_bn(builder *b, const char *prefix, int in, int c)
{
	return bn(b, prefix, in, c);
}

int
mt_zb_act(builder *b, int in, mt_act kind)
{
	return act(b, in, kind);
}

int
mt_zb_add(builder *b, int x, int y)
{
	return add(b, x, y);
}

int
mt_zb_linear(builder *b, const char *prefix, int in, int fin, int fout)
{
	return linear(b, prefix, in, fin, fout);
}

int
mt_zb_node(builder *b, const mt_node *n)
{
	return add_node(b, n);
}

int
mt_zb_param(builder *b, const char *name, int ndim, int64_t d0, int64_t d1,
			int64_t d2, int64_t d3)
{
	return add_param(b, name, ndim, d0, d1, d2, d3);
}
