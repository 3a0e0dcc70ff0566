/*
 * vit.c - torchvision 0.14's vit_b_16 (VisionTransformer with patch 16,
 * 12 layers, 12 heads, hidden 768, MLP 3072, image_size 224), with its
 * state_dict names, shapes and order:
 *
 *   class_token [1, 1, 768]
 *   conv_proj.{weight [768, 3, 16, 16], bias}
 *   encoder.pos_embedding [1, 197, 768]
 *   encoder.layers.encoder_layer_{0..11}.
 *       ln_1.{weight, bias}
 *       self_attention.in_proj_weight [2304, 768], in_proj_bias [2304]
 *       self_attention.out_proj.{weight [768, 768], bias}
 *       ln_2.{weight, bias}
 *       mlp.0.{weight [3072, 768], bias}     (then GELU)
 *       mlp.3.{weight [768, 3072], bias}
 *   encoder.ln.{weight, bias}
 *   heads.head.{weight [classes, 768], bias}
 *
 * Graph: conv_proj -> TOKENS (flatten the 14x14 grid row by row, prepend
 * the class token, add the position embedding) -> 12 pre-norm blocks
 *   x = x + out_proj(attention(in_proj(ln_1(x))))
 *   x = x + mlp.3(gelu(mlp.0(ln_2(x))))
 * -> the class token -> encoder.ln -> heads.head.  torchvision applies
 * encoder.ln to every token and then takes the class token; layer norm
 * works on each token alone, so taking the class token first gives the same
 * numbers and saves the work on the others.  Dropouts are 0 in vit_b_16.
 * Features (medtl.embed) are the class token after encoder.ln, the input of
 * heads.head.
 */
#include "vit.h"
#include "zoo_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define VIT_PATCH 16
#define VIT_GRID 14				/* image_size 224 / patch 16 */
#define VIT_LAYERS 12
#define VIT_HEADS 12
#define VIT_DIM 768
#define VIT_MLP 3072
#define VIT_LN_EPS 1e-6f

/* LayerNorm "prefix.{weight,bias}" over DIM channels. */
static int
layer_norm(builder *b, const char *prefix, int in)
{
	mt_node		n = mt_node_init(MT_NODE_LAYERNORM, in);
	char		name[MT_NAME_MAX];

	n.eps = VIT_LN_EPS;
	snprintf(name, sizeof(name), "%s.weight", prefix);
	n.p_weight = mt_zb_param(b, name, 1, VIT_DIM, 0, 0, 0);
	snprintf(name, sizeof(name), "%s.bias", prefix);
	n.p_bias = mt_zb_param(b, name, 1, VIT_DIM, 0, 0, 0);
	return mt_zb_node(b, &n);
}

/* A per-token linear layer with weight and bias tensors named wname, bname. */
static int
token_linear(builder *b, const char *wname, const char *bname, int in, int fin, int fout,
			 mt_init_kind init_w, mt_init_kind init_b, float b_std)
{
	mt_node		n = mt_node_init(MT_NODE_TOKEN_LINEAR, in);

	n.in_features = fin;
	n.out_features = fout;
	n.p_weight = mt_zb_param(b, wname, 2, fout, fin, 0, 0);
	n.p_bias = mt_zb_param(b, bname, 1, fout, 0, 0, 0);
	n.init_w = init_w;
	n.init_b = init_b;
	n.init_b_std = b_std;
	return mt_zb_node(b, &n);
}

/* One EncoderBlock "encoder.layers.encoder_layer_<i>". */
static int
encoder_block(builder *b, int i, int x)
{
	char		p[MT_NAME_MAX],
				w[MT_NAME_MAX],
				bs[MT_NAME_MAX];
	mt_node		n;
	int			y,
				h;

	snprintf(p, sizeof(p), "encoder.layers.encoder_layer_%d.ln_1", i);
	y = layer_norm(b, p, x);
	/* nn.MultiheadAttention: xavier_uniform in_proj, zero biases */
	snprintf(w, sizeof(w), "encoder.layers.encoder_layer_%d.self_attention.in_proj_weight", i);
	snprintf(bs, sizeof(bs), "encoder.layers.encoder_layer_%d.self_attention.in_proj_bias", i);
	y = token_linear(b, w, bs, y, VIT_DIM, 3 * VIT_DIM, MT_INIT_XAVIER_UNIFORM, MT_INIT_ZERO, 0);
	n = mt_node_init(MT_NODE_ATTENTION, y);
	n.heads = VIT_HEADS;
	y = mt_zb_node(b, &n);
	snprintf(w, sizeof(w), "encoder.layers.encoder_layer_%d.self_attention.out_proj.weight", i);
	snprintf(bs, sizeof(bs), "encoder.layers.encoder_layer_%d.self_attention.out_proj.bias", i);
	y = token_linear(b, w, bs, y, VIT_DIM, VIT_DIM, MT_INIT_LINEAR_UNIFORM, MT_INIT_ZERO, 0);
	n = mt_node_init(MT_NODE_ADD, y);
	n.in1 = x;
	x = mt_zb_node(b, &n);

	snprintf(p, sizeof(p), "encoder.layers.encoder_layer_%d.ln_2", i);
	y = layer_norm(b, p, x);
	/* MLPBlock: xavier_uniform weights, normal(std 1e-6) biases */
	snprintf(w, sizeof(w), "encoder.layers.encoder_layer_%d.mlp.0.weight", i);
	snprintf(bs, sizeof(bs), "encoder.layers.encoder_layer_%d.mlp.0.bias", i);
	h = token_linear(b, w, bs, y, VIT_DIM, VIT_MLP, MT_INIT_XAVIER_UNIFORM, MT_INIT_NORMAL, 1e-6f);
	n = mt_node_init(MT_NODE_GELU, h);
	h = mt_zb_node(b, &n);
	snprintf(w, sizeof(w), "encoder.layers.encoder_layer_%d.mlp.3.weight", i);
	snprintf(bs, sizeof(bs), "encoder.layers.encoder_layer_%d.mlp.3.bias", i);
	h = token_linear(b, w, bs, h, VIT_MLP, VIT_DIM, MT_INIT_XAVIER_UNIFORM, MT_INIT_NORMAL, 1e-6f);
	n = mt_node_init(MT_NODE_ADD, x);
	n.in1 = h;
	return mt_zb_node(b, &n);
}

/* Build vit_b_16 into m (see the top of this file); 0 on success. */
int
mt_vit_build(mt_model *m, int num_classes)
{
	builder		b = {m, 0};
	mt_node		n = mt_node_init(MT_NODE_INPUT, -1);
	int			x,
				cls;
	char		name[MT_NAME_MAX];

	x = mt_zb_node(&b, &n);
	cls = mt_zb_param(&b, "class_token", 3, 1, 1, VIT_DIM, 0);

	/* conv_proj: 16x16 stride 16; trunc_normal(std sqrt(1 / fan_in)) */
	n = mt_node_init(MT_NODE_CONV, x);
	n.cin = 3;
	n.cout = VIT_DIM;
	n.kh = n.kw = VIT_PATCH;
	n.sh = n.sw = VIT_PATCH;
	n.p_weight = mt_zb_param(&b, "conv_proj.weight", 4, VIT_DIM, 3, VIT_PATCH, VIT_PATCH);
	n.p_bias = mt_zb_param(&b, "conv_proj.bias", 1, VIT_DIM, 0, 0, 0);
	n.init_w = MT_INIT_NORMAL;
	n.init_w_std = (float) sqrt(1.0 / (3 * VIT_PATCH * VIT_PATCH));
	n.init_b = MT_INIT_ZERO;
	x = mt_zb_node(&b, &n);

	/* class token (zeros) and position embedding (normal, std 0.02) */
	n = mt_node_init(MT_NODE_TOKENS, x);
	n.patch = VIT_PATCH;
	n.pos_grid = VIT_GRID;
	n.p_weight = cls;
	n.p_bias = mt_zb_param(&b, "encoder.pos_embedding", 3, 1, VIT_GRID * VIT_GRID + 1, VIT_DIM, 0);
	n.init_w = MT_INIT_ZERO;
	n.init_b = MT_INIT_NORMAL;
	n.init_b_std = 0.02f;
	x = mt_zb_node(&b, &n);

	for (int i = 0; i < VIT_LAYERS; i++)
		x = encoder_block(&b, i, x);

	n = mt_node_init(MT_NODE_CLASS_TOKEN, x);
	x = mt_zb_node(&b, &n);
	x = layer_norm(&b, "encoder.ln", x);
	m->features_node = x;
	m->feature_dim = VIT_DIM;

	n = mt_node_init(MT_NODE_LINEAR, x);
	n.in_features = VIT_DIM;
	n.out_features = num_classes;
	snprintf(name, sizeof(name), "heads.head.weight");
	n.p_weight = mt_zb_param(&b, name, 2, num_classes, VIT_DIM, 0, 0);
	n.p_bias = mt_zb_param(&b, "heads.head.bias", 1, num_classes, 0, 0, 0);
	m->logits_node = mt_zb_node(&b, &n);
	m->head_init = MT_HEAD_INIT_ZERO;	/* torchvision zeroes heads.head */
	return b.failed;
}
