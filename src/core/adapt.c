/*
 * adapt.c - scoring's thread count, chosen by timing calls (adapt.h).
 */
#include "adapt.h"

void
mt_adapt_init(mt_adapt *a, int cores)
{
	int			c = cores > 0 ? cores : 1;

	a->n = 0;
	/* cores, cores / 2, ..., 1: a step changes the time by a visible factor */
	while (a->n < MT_ADAPT_MAX)
	{
		a->cand[a->n] = c;
		a->cost[a->n] = -1.0;
		a->warm[a->n] = 0;
		a->n++;
		if (c == 1)
			break;
		c /= 2;
	}
	a->cand[a->n - 1] = 1;		/* past MT_ADAPT_MAX halvings: end at 1 */
	a->cur = 0;
	a->inflight = 0;
	a->dir = 1;
	a->next_probe = -1.0;		/* set by the first measured call */
	a->interval = MT_ADAPT_PROBE_MIN;
	a->call = -1.0;
	a->probes = 0;
	a->moves = 0;
}

int
mt_adapt_begin(mt_adapt *a, double now)
{
	int			j;

	a->inflight = a->cur;
	if (a->n < 2 || a->next_probe < 0 || now < a->next_probe)
		return a->cand[a->cur];
	/* a neighbour: the same direction as last time when there is one */
	j = a->cur + a->dir;
	if (j < 0 || j >= a->n)
	{
		a->dir = -a->dir;
		j = a->cur + a->dir;
	}
	a->inflight = j;
	a->probes++;
	return a->cand[j];
}

/* The shortest probe interval: MT_ADAPT_PROBE_MIN, or four calls when they are long. */
static double
min_interval(const mt_adapt *a)
{
	return 4 * a->call > MT_ADAPT_PROBE_MIN ? 4 * a->call : MT_ADAPT_PROBE_MIN;
}

void
mt_adapt_end(mt_adapt *a, double seconds, int images, double now)
{
	int			i = a->inflight;
	double		per,
				before;

	if (images < 1 || !(seconds >= 0))
		return;
	per = seconds / images;
	if (!a->warm[i])
	{
		/* the count's first call made its primitives: not a measurement */
		a->warm[i] = 1;
		return;
	}
	if (i == a->cur)
	{
		before = a->cost[i];
		a->cost[i] = before < 0 ? per : 0.75 * before + 0.25 * per;
		a->call = a->call < 0 ? seconds : 0.75 * a->call + 0.25 * seconds;
		if (a->next_probe < 0)
			a->next_probe = now + a->interval;
		/* suddenly much slower (another backend started): look around now */
		if (before > 0 && per > 2.0 * before)
		{
			a->interval = min_interval(a);
			a->next_probe = now;
		}
		return;
	}
	/*
	 * a probe (only after a measured call at cur, so cost[cur] is set): its
	 * one fresh figure against the count in use
	 */
	a->cost[i] = per;
	if (per < 0.95 * a->cost[a->cur])
	{
		a->cur = i;
		a->moves++;
		a->interval = min_interval(a);	/* and on in the same direction */
	}
	else
	{
		double		cap = MT_ADAPT_PROBE_MAX;

		/* with a neighbour on each side, each is still probed as often */
		if (a->cur > 0 && a->cur < a->n - 1)
			cap /= 2;
		/* a long call (a batch) is probed less often: a probe's cost stays ~2% */
		if (cap < 50 * a->call)
			cap = 50 * a->call;
		a->dir = -a->dir;
		a->interval *= 2.0;
		if (a->interval > cap)
			a->interval = cap;
		if (a->interval < min_interval(a))
			a->interval = min_interval(a);
	}
	a->next_probe = now + a->interval;
}
