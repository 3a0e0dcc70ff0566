/*
 * test_adapt.c - scoring's thread-count controller (core/adapt.c) on
 * simulated machines: it must find the faster count alone, move to fewer
 * threads when another backend starts scoring (the spinning-barrier
 * slowdown), move back when that backend stops, and pay little for its
 * probes (time within a few percent of always picking the best count).
 * A count's first call (making its primitives) is slow and must not count.
 *
 *   make unittest && test/bin/test_adapt
 */
#include "core/adapt.h"
#include "mt_test.h"

#include <stdint.h>

/* seconds for one image at k threads in a phase (busy: another backend scores) */
typedef double (*cost_fn) (int k, int busy);

/* two cores: 2 threads 1.5x faster alone, 4x slower than 1 thread when busy */
static double
two_cores(int k, int busy)
{
	if (!busy)
		return k == 2 ? 2.0e-3 : 3.0e-3;
	return k == 2 ? 12.0e-3 : 3.2e-3;
}

/* sixteen cores, half of them taken when busy: 8 then beats 16 by far */
static double
sixteen_cores(int k, int busy)
{
	double		alone = 16.0e-3 / (k * (1.0 - 0.01 * k));

	if (busy && k > 8)
		return 6.0 * alone;
	return alone;
}

/* one core where a second thread never pays: 1 is best alone */
static double
one_best(int k, int busy)
{
	(void) busy;
	return k == 1 ? 2.5e-3 : 2.8e-3;
}

/* batches of 16 on two cores: calls of 100 ms and more */
static double
two_cores_batch(int k, int busy)
{
	if (!busy)
		return k == 2 ? 6.0e-3 : 11.0e-3;
	return k == 2 ? 30.0e-3 : 11.5e-3;
}

static uint32_t rng = 12345;

/* +-10% noise, deterministic */
static double
noisy(double t)
{
	rng = rng * 1664525u + 1013904223u;
	return t * (0.9 + 0.2 * (double) (rng >> 8) / (double) (1u << 24));
}

/*
 * Run calls of one image each from t0 to t1 with the machine busy or not;
 * a call's first use of a count costs 20 ms more.  Reports the time taken
 * against always using the best count, and the share of calls at the best
 * count after `settle` seconds.
 */
static double
phase(mt_adapt *a, cost_fn f, int cores, int busy, int images, double *now, double len,
	  double settle, int warmed[], double *share)
{
	double		t_start = *now,
				ideal = 0,
				best = 1e9;
	long		calls = 0,
				at_best = 0;
	int			kbest = 0;

	for (int k = cores; k >= 1; k = k > 1 ? k / 2 : 0)
		if (f(k, busy) < best)
		{
			best = f(k, busy);
			kbest = k;
		}
	while (*now - t_start < len)
	{
		int			k = mt_adapt_begin(a, *now);
		double		t = noisy(f(k, busy)) * images;

		if (!warmed[k])
		{
			warmed[k] = 1;
			t += 0.020;
		}
		*now += t;
		mt_adapt_end(a, t, images, *now);
		*now += 0.2e-3 * images;	/* decoding the next images */
		ideal += (best + 0.2e-3) * images;
		if (*now - t_start > settle)
		{
			calls++;
			at_best += k == kbest;
		}
	}
	*share = calls ? (double) at_best / calls : 0;
	return (*now - t_start) / ideal;
}

static void
scenario(const char *name, cost_fn f, int cores, int images, double len, double settle)
{
	mt_adapt	a;
	int			warmed[1025] = {0};
	double		now = 100.0,
				share,
				ratio;

	mt_adapt_init(&a, cores);
	for (int busy = 0, i = 0; i < 3; i++, busy = !busy)
	{
		long		probes = a.probes;

		ratio = phase(&a, f, cores, busy, images, &now, len, settle, warmed, &share);
		printf("  %s, %s: %.3f x the best count's time, %.1f%% of calls at the best count after %.1f s, %ld probes\n",
			   name, busy ? "busy" : "alone", ratio, 100.0 * share, settle, a.probes - probes);
		CHECK(share >= 0.95, "%s %s: only %.1f%% of calls at the best count", name,
			  busy ? "busy" : "alone", 100.0 * share);
		/* the warm-up calls (20 ms each) and the settling are in the time too */
		CHECK(ratio <= 1.06, "%s %s: %.3f x the best count's time", name,
			  busy ? "busy" : "alone", ratio);
	}
}

int
main(void)
{
	mt_adapt	a;

	mt_adapt_init(&a, 2);
	CHECK(a.n == 2 && a.cand[0] == 2 && a.cand[1] == 1, "candidates of 2 cores");
	mt_adapt_init(&a, 12);
	CHECK(a.n == 4 && a.cand[0] == 12 && a.cand[1] == 6 && a.cand[2] == 3 && a.cand[3] == 1,
		  "candidates of 12 cores: %d of them", a.n);
	mt_adapt_init(&a, 4096);
	CHECK(a.n == MT_ADAPT_MAX && a.cand[0] == 4096 && a.cand[MT_ADAPT_MAX - 1] == 1,
		  "candidates of 4096 cores end at 1");

	/* one core: always 1, never a probe */
	mt_adapt_init(&a, 1);
	for (int i = 0; i < 1000; i++)
	{
		CHECK(mt_adapt_begin(&a, i * 0.01) == 1, "one core gave another count");
		mt_adapt_end(&a, 0.005, 1, i * 0.01 + 0.005);
	}
	CHECK(a.probes == 0, "one core probed %ld times", a.probes);

	/* the first call at every core is slow (primitives): it must not move the count */
	mt_adapt_init(&a, 2);
	CHECK(mt_adapt_begin(&a, 0) == 2, "starts with every core");
	mt_adapt_end(&a, 1.0, 1, 1.0);
	for (int i = 0; i < 20; i++)
	{
		int			k = mt_adapt_begin(&a, 1.0 + i * 0.01);

		mt_adapt_end(&a, k == 2 ? 0.002 : (a.warm[1] ? 0.003 : 0.5), 1, 1.0 + i * 0.01 + 0.003);
	}
	CHECK(a.cand[a.cur] == 2 && a.moves == 0, "warm-up calls moved the count (%d threads, %ld moves)",
		  a.cand[a.cur], a.moves);

	scenario("2 cores", two_cores, 2, 1, 8.0, 1.5);
	scenario("16 cores", sixteen_cores, 16, 1, 8.0, 1.5);
	scenario("2 cores, 1 thread best", one_best, 2, 1, 8.0, 1.5);
	/* batches: calls of 0.1-0.5 s, so probes come every 50 calls at most */
	scenario("2 cores, batches of 16", two_cores_batch, 2, 16, 120.0, 15.0);
	return TEST_SUMMARY("adapt");
}
