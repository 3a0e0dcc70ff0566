/* CPU emulation of the CUDA runtime subset medtl uses (test/cuda_emu; testing only) */
#ifndef EMU_CUDA_BF16_H
#define EMU_CUDA_BF16_H
#include <cstdint>
#include <cstring>
#include <cmath>
/* bfloat16: the upper 16 bits of a float32, rounded to nearest even (NaN kept quiet) */
struct __nv_bfloat16 { uint16_t x; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
	uint32_t u;
	__nv_bfloat16 b;
	memcpy(&u, &f, 4);
	if (std::isnan(f))
		b.x = (uint16_t) ((u >> 16) | 0x40);
	else
		b.x = (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
	return b;
}
static inline float __bfloat162float(__nv_bfloat16 b)
{
	uint32_t u = (uint32_t) b.x << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b)
{
	__nv_bfloat162 r;
	r.x = __float2bfloat16_rn(a);
	r.y = __float2bfloat16_rn(b);
	return r;
}
#endif
