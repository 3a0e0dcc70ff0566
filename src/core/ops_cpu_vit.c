/*
 * ops_cpu_vit.c - the CPU backend's transformer kernels: layer norm, exact
 * GELU, multi-head self-attention through sgemm, ViT token assembly, and the
 * bicubic resize of position embeddings; each with its backward.
 */
#include "ops_cpu_internal.h"
#include "blas.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Layer norm of each row (statistics in double). */
void
mt_cpu_layer_norm(size_t rows, int c, const float *x, const float *gamma,
				  const float *beta, float eps, float *y)
{
	for (size_t r = 0; r < rows; r++)
	{
		const float *xr = x + r * c;
		float	   *yr = y + r * c;
		double		mean = 0.0,
					var = 0.0;
		float		rstd;

		for (int j = 0; j < c; j++)
			mean += xr[j];
		mean /= c;
		for (int j = 0; j < c; j++)
			var += ((double) xr[j] - mean) * ((double) xr[j] - mean);
		var /= c;
		rstd = (float) (1.0 / sqrt(var + eps));
		for (int j = 0; j < c; j++)
			yr[j] = ((float) (xr[j] - mean)) * rstd * gamma[j] + beta[j];
	}
}

/*
 * Layer norm backward: with xhat = (x - mean) * rstd and g = dy * gamma,
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
 */
void
mt_cpu_layer_norm_backward(size_t rows, int c, const float *x, const float *dy,
						   const float *gamma, float eps, float *dx,
						   float *dgamma, float *dbeta)
{
	for (size_t r = 0; r < rows; r++)
	{
		const float *xr = x + r * c;
		const float *dyr = dy + r * c;
		double		mean = 0.0,
					var = 0.0,
					rstd,
					sg = 0.0,
					sgx = 0.0;

		for (int j = 0; j < c; j++)
			mean += xr[j];
		mean /= c;
		for (int j = 0; j < c; j++)
			var += ((double) xr[j] - mean) * ((double) xr[j] - mean);
		var /= c;
		rstd = 1.0 / sqrt(var + eps);
		for (int j = 0; j < c; j++)
		{
			double		xh = ((double) xr[j] - mean) * rstd;
			double		g = (double) dyr[j] * gamma[j];

			sg += g;
			sgx += g * xh;
			if (dgamma != NULL)
				dgamma[j] += (float) (dyr[j] * xh);
			if (dbeta != NULL)
				dbeta[j] += dyr[j];
		}
		if (dx != NULL)
		{
			float	   *dxr = dx + r * c;

			sg /= c;
			sgx /= c;
			for (int j = 0; j < c; j++)
			{
				double		xh = ((double) xr[j] - mean) * rstd;
				double		g = (double) dyr[j] * gamma[j];

				dxr[j] += (float) (rstd * (g - sg - xh * sgx));
			}
		}
	}
}

/* Exact GELU. */
void
mt_cpu_gelu(size_t len, const float *x, float *y)
{
	for (size_t i = 0; i < len; i++)
		y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float) M_SQRT1_2));
}

/* gelu'(x) = Phi(x) + x phi(x). */
void
mt_cpu_gelu_backward(size_t len, const float *x, const float *dy, float *dx)
{
	for (size_t i = 0; i < len; i++)
	{
		double		v = x[i];
		double		d = 0.5 * (1.0 + erf(v * M_SQRT1_2)) +
			v * exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);

		dx[i] += (float) (dy[i] * d);
	}
}

/* Row-wise softmax in place over t x t scores. */
static void
softmax_rows(int t, float *s)
{
	for (int i = 0; i < t; i++)
	{
		float	   *row = s + (size_t) i * t;
		float		mx = -FLT_MAX;
		double		sum = 0.0;
		float		inv;

		for (int j = 0; j < t; j++)
			mx = row[j] > mx ? row[j] : mx;
		for (int j = 0; j < t; j++)
		{
			row[j] = expf(row[j] - mx);
			sum += row[j];
		}
		inv = (float) (1.0 / sum);
		for (int j = 0; j < t; j++)
			row[j] *= inv;
	}
}

/* Attention probabilities of head j of one sequence: p = softmax(Q K^T * scale). */
static void
head_probs(int t, int d, int hd, int j, const float *qkv, float *p)
{
	float		scale = (float) (1.0 / sqrt((double) hd));

	mt_sgemm(0, 1, t, t, hd, scale, qkv + j * hd, 3 * d, qkv + d + j * hd, 3 * d,
			 0.0f, p, t);
	softmax_rows(t, p);
}

/* Multi-head self-attention (see ops.h). */
int
mt_cpu_attention(int n, int t, int d, int heads, const float *qkv, float *y,
				 mt_err *err)
{
	int			hd = d / heads;
	float	   *p;

	if (heads <= 0 || d % heads != 0)
		return mt_seterr(err, MT_ERR_INVALID, "%d channels do not split into %d heads", d, heads);
	if ((p = mt_malloc((size_t) t * t * sizeof(float))) == NULL)
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in attention");
	for (int s = 0; s < n; s++)
	{
		const float *q = qkv + (size_t) s * t * 3 * d;
		float	   *ys = y + (size_t) s * t * d;

		for (int j = 0; j < heads; j++)
		{
			head_probs(t, d, hd, j, q, p);
			mt_sgemm(0, 0, t, hd, t, 1.0f, p, t, q + 2 * d + j * hd, 3 * d,
					 0.0f, ys + j * hd, d);
		}
	}
	mt_free(p);
	return MT_OK;
}

/*
 * Attention backward per head, with P the probabilities and s the scale:
 * dV += P^T dY; dP = dY V^T; dS = P * (dP - rowsum(dP * P));
 * dQ += s dS K; dK += s dS^T Q.
 */
int
mt_cpu_attention_backward(int n, int t, int d, int heads, const float *qkv,
						  const float *dy, float *dqkv, mt_err *err)
{
	int			hd = d / heads;
	float		scale = (float) (1.0 / sqrt((double) hd));
	float	   *p,
			   *dp;

	if (heads <= 0 || d % heads != 0)
		return mt_seterr(err, MT_ERR_INVALID, "%d channels do not split into %d heads", d, heads);
	p = mt_malloc((size_t) t * t * sizeof(float));
	dp = mt_malloc((size_t) t * t * sizeof(float));
	if (p == NULL || dp == NULL)
	{
		mt_free(p);
		mt_free(dp);
		return mt_seterr(err, MT_ERR_NOMEM, "out of memory in attention backward");
	}
	for (int s = 0; s < n; s++)
	{
		const float *q = qkv + (size_t) s * t * 3 * d;
		const float *dys = dy + (size_t) s * t * d;
		float	   *dq = dqkv + (size_t) s * t * 3 * d;

		for (int j = 0; j < heads; j++)
		{
			const float *qj = q + j * hd,
					   *kj = q + d + j * hd,
					   *vj = q + 2 * d + j * hd;

			head_probs(t, d, hd, j, q, p);
			/* dV += P^T dY */
			mt_sgemm(1, 0, t, hd, t, 1.0f, p, t, dys + j * hd, d, 1.0f,
					 dq + 2 * d + j * hd, 3 * d);
			/* dP = dY V^T */
			mt_sgemm(0, 1, t, t, hd, 1.0f, dys + j * hd, d, vj, 3 * d, 0.0f, dp, t);
			for (int i = 0; i < t; i++)
			{
				float	   *pr = p + (size_t) i * t,
						   *dr = dp + (size_t) i * t;
				double		dot = 0.0;

				for (int k = 0; k < t; k++)
					dot += (double) pr[k] * dr[k];
				for (int k = 0; k < t; k++)
					dr[k] = pr[k] * (float) (dr[k] - dot);
			}
			/* dQ += s dS K, dK += s dS^T Q */
			mt_sgemm(0, 0, t, hd, t, scale, dp, t, kj, 3 * d, 1.0f, dq + j * hd, 3 * d);
			mt_sgemm(1, 0, t, hd, t, scale, dp, t, qj, 3 * d, 1.0f, dq + d + j * hd, 3 * d);
		}
	}
	mt_free(p);
	mt_free(dp);
	return MT_OK;
}

/* Row 0 of each sequence. */
void
mt_cpu_class_token(int n, int t, int d, const float *x, float *y)
{
	for (int s = 0; s < n; s++)
		memcpy(y + (size_t) s * d, x + (size_t) s * t * d, sizeof(float) * d);
}

void
mt_cpu_class_token_backward(int n, int t, int d, const float *dy, float *dx)
{
	for (int s = 0; s < n; s++)
	{
		float	   *d0 = dx + (size_t) s * t * d;

		for (int c = 0; c < d; c++)
			d0[c] += dy[(size_t) s * d + c];
	}
}

/* Class token and patches plus position embedding. */
void
mt_cpu_vit_tokens(int n, int p, int d, const float *patches, const float *cls,
				  const float *pos, float *y)
{
	for (int s = 0; s < n; s++)
	{
		float	   *ys = y + (size_t) s * (p + 1) * d;
		const float *ps = patches + (size_t) s * p * d;

		for (int c = 0; c < d; c++)
			ys[c] = cls[c] + pos[c];
		for (size_t i = 0; i < (size_t) p * d; i++)
			ys[d + i] = ps[i] + pos[d + i];
	}
}

void
mt_cpu_vit_tokens_backward(int n, int p, int d, const float *dy, float *dpatches,
						   float *dcls, float *dpos)
{
	for (int s = 0; s < n; s++)
	{
		const float *dys = dy + (size_t) s * (p + 1) * d;

		if (dcls != NULL)
			for (int c = 0; c < d; c++)
				dcls[c] += dys[c];
		if (dpos != NULL)
			for (size_t i = 0; i < (size_t) (p + 1) * d; i++)
				dpos[i] += dys[i];
		if (dpatches != NULL)
		{
			float	   *dps = dpatches + (size_t) s * p * d;

			for (size_t i = 0; i < (size_t) p * d; i++)
				dps[i] += dys[d + i];
		}
	}
}

/* torch's cubic convolution weights (A = -0.75) for fraction t. */
static void
cubic_weights(float t, float w[4])
{
	const float A = -0.75f;
	float		x;

	x = t + 1.0f;
	w[0] = ((A * x - 5.0f * A) * x + 8.0f * A) * x - 4.0f * A;
	x = t;
	w[1] = ((A + 2.0f) * x - (A + 3.0f)) * x * x + 1.0f;
	x = 1.0f - t;
	w[2] = ((A + 2.0f) * x - (A + 3.0f)) * x * x + 1.0f;
	x = 2.0f - t;
	w[3] = ((A * x - 5.0f * A) * x + 8.0f * A) * x - 4.0f * A;
}

/* Source taps (clamped) and weights of output position o, align_corners. */
static void
cubic_taps(int in, int out, int o, int idx[4], float w[4])
{
	float		scale = out > 1 ? (float) (in - 1) / (float) (out - 1) : 0.0f;
	float		real = scale * (float) o;
	int			i0 = (int) floorf(real);

	cubic_weights(real - (float) i0, w);
	for (int k = 0; k < 4; k++)
	{
		int			v = i0 - 1 + k;

		idx[k] = v < 0 ? 0 : (v > in - 1 ? in - 1 : v);
	}
}

/* Bicubic resize with align_corners (see ops.h). */
void
mt_bicubic_resize_ac(int ih, int iw, int oh, int ow, int c, const float *src, float *dst)
{
	if (ih == oh && iw == ow)
	{
		memcpy(dst, src, sizeof(float) * ih * iw * c);
		return;
	}
	for (int oy = 0; oy < oh; oy++)
	{
		int			iy[4],
					ix[4];
		float		wy[4],
					wx[4];

		cubic_taps(ih, oh, oy, iy, wy);
		for (int ox = 0; ox < ow; ox++)
		{
			float	   *o = dst + ((size_t) oy * ow + ox) * c;

			cubic_taps(iw, ow, ox, ix, wx);
			for (int ch = 0; ch < c; ch++)
			{
				float		acc = 0.0f;

				for (int a = 0; a < 4; a++)
				{
					const float *row = src + (size_t) iy[a] * iw * c;
					float		r = 0.0f;

					for (int b = 0; b < 4; b++)
						r += wx[b] * row[(size_t) ix[b] * c + ch];
					acc += wy[a] * r;
				}
				o[ch] = acc;
			}
		}
	}
}

/* The transpose of mt_bicubic_resize_ac, added into src_grad. */
void
mt_bicubic_resize_ac_adjoint(int ih, int iw, int oh, int ow, int c,
							 const float *dst_grad, float *src_grad)
{
	if (ih == oh && iw == ow)
	{
		for (size_t i = 0; i < (size_t) ih * iw * c; i++)
			src_grad[i] += dst_grad[i];
		return;
	}
	for (int oy = 0; oy < oh; oy++)
	{
		int			iy[4],
					ix[4];
		float		wy[4],
					wx[4];

		cubic_taps(ih, oh, oy, iy, wy);
		for (int ox = 0; ox < ow; ox++)
		{
			const float *g = dst_grad + ((size_t) oy * ow + ox) * c;

			cubic_taps(iw, ow, ox, ix, wx);
			for (int a = 0; a < 4; a++)
				for (int b = 0; b < 4; b++)
				{
					float		wgt = wy[a] * wx[b];
					float	   *s = src_grad + ((size_t) iy[a] * iw + ix[b]) * c;

					for (int ch = 0; ch < c; ch++)
						s[ch] += wgt * g[ch];
				}
		}
	}
}
