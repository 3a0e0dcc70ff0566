/*
 * ops_cpu_cnn.c - CPU kernels for DenseNet and EfficientNet: channel
 * concatenation, channel-wise scaling (squeeze-and-excitation) and the
 * backward passes of both, and activation gradients from the activation's
 * input (SiLU).  Every backward kernel adds into its outputs, except
 * act_backward_input, which overwrites as act_backward does.
 */
#include "ops_cpu_internal.h"

#include <string.h>

/* y[r] = a[r] ++ b[r] over rows positions. */
void
mt_cpu_concat(size_t rows, int ca, int cb, const float *a, const float *b,
			  float *y)
{
	size_t		c = (size_t) ca + cb;

	for (size_t r = 0; r < rows; r++)
	{
		memcpy(y + r * c, a + r * ca, sizeof(float) * ca);
		memcpy(y + r * c + ca, b + r * cb, sizeof(float) * cb);
	}
}

/* da += dy's first ca channels, db += the remaining cb. */
void
mt_cpu_concat_backward(size_t rows, int ca, int cb, const float *dy,
					   float *da, float *db)
{
	size_t		c = (size_t) ca + cb;

	for (size_t r = 0; r < rows; r++)
	{
		const float *g = dy + r * c;

		if (da != NULL)
			for (int j = 0; j < ca; j++)
				da[r * ca + j] += g[j];
		if (db != NULL)
			for (int j = 0; j < cb; j++)
				db[r * cb + j] += g[ca + j];
	}
}

/* y[i, p, :] = x[i, p, :] * s[i, :]. */
void
mt_cpu_scale_channels(int n, size_t hw, int c, const float *x, const float *s,
					  float *y)
{
	for (int i = 0; i < n; i++)
	{
		const float *si = s + (size_t) i * c;

		for (size_t p = 0; p < hw; p++)
		{
			size_t		o = ((size_t) i * hw + p) * c;

			for (int j = 0; j < c; j++)
				y[o + j] = x[o + j] * si[j];
		}
	}
}

/* dx += dy * s; ds[i, c] += sum over positions of dy * x (in double). */
void
mt_cpu_scale_channels_backward(int n, size_t hw, int c, const float *x,
							   const float *s, const float *dy, float *dx,
							   float *ds)
{
	for (int i = 0; i < n; i++)
	{
		const float *si = s + (size_t) i * c;

		if (dx != NULL)
			for (size_t p = 0; p < hw; p++)
			{
				size_t		o = ((size_t) i * hw + p) * c;

				for (int j = 0; j < c; j++)
					dx[o + j] += dy[o + j] * si[j];
			}
		if (ds != NULL)
			for (int j = 0; j < c; j++)
			{
				double		acc = 0.0;

				for (size_t p = 0; p < hw; p++)
				{
					size_t		o = ((size_t) i * hw + p) * c + j;

					acc += (double) dy[o] * x[o];
				}
				ds[(size_t) i * c + j] += (float) acc;
			}
	}
}

/* dx = dy * act'(x) from the activation's input x, on the calling thread. */
void
mt_cpu_act_backward_input_serial(size_t len, const float *x, const float *dy,
								 mt_act act, float *dx)
{
	for (size_t i = 0; i < len; i++)
	{
		float		v = x[i],
					d;

		switch (act)
		{
			case MT_ACT_RELU:
				d = v > 0.0f ? 1.0f : 0.0f;
				break;
			case MT_ACT_RELU6:
				d = (v > 0.0f && v < 6.0f) ? 1.0f : 0.0f;
				break;
			case MT_ACT_SILU:
				{
					/* d/dx x s(x) = s (1 + x (1 - s)) */
					float		s = mt_cpu_sigmoid(v);

					d = s * (1.0f + v * (1.0f - s));
					break;
				}
			case MT_ACT_SIGMOID:
				{
					float		s = mt_cpu_sigmoid(v);

					d = s * (1.0f - s);
					break;
				}
			default:
				d = 1.0f;
				break;
		}
		dx[i] = dy[i] * d;
	}
}
