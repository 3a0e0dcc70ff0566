/*
 * rng.h - the engine's deterministic random numbers: xoshiro256** seeded
 * through splitmix64.  One seed drives every random choice of a run
 * (initialisation, shuffling, augmentation), so a run repeats exactly.
 */
#ifndef MT_RNG_H
#define MT_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct mt_rng
{
	uint64_t	s[4];
} mt_rng;

static inline uint64_t
mt_splitmix64(uint64_t *x)
{
	uint64_t	z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Seed a generator; different streams of one seed differ. */
static inline void
mt_rng_seed(mt_rng *r, uint64_t seed, uint64_t stream)
{
	uint64_t	x = seed ^ (stream * 0xd1b54a32d192ed03ULL);

	for (int i = 0; i < 4; i++)
		r->s[i] = mt_splitmix64(&x);
}

static inline uint64_t
mt_rng_next(mt_rng *r)
{
	uint64_t   *s = r->s;
	uint64_t	result = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
	uint64_t	t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = (s[3] << 45) | (s[3] >> 19);
	return result;
}

/* Uniform in [0, 1). */
static inline double
mt_rng_uniform(mt_rng *r)
{
	return (mt_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n). */
static inline uint64_t
mt_rng_below(mt_rng *r, uint64_t n)
{
	return n ? (uint64_t) (mt_rng_uniform(r) * (double) n) % n : 0;
}

/* Standard normal (Box-Muller). */
static inline double
mt_rng_normal(mt_rng *r)
{
	double		u1 = mt_rng_uniform(r),
				u2 = mt_rng_uniform(r);

	if (u1 < 1e-300)
		u1 = 1e-300;
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
