/*
 * adapt.h - the thread count scoring uses when medtl.threads = 0: measured,
 * not assumed.
 *
 * A backend scoring alone runs fastest on every core; two backends that
 * score at once with every core each run several times slower than with
 * one thread each, because each OpenMP team spins at every layer's barrier
 * for a thread the other backend holds.  Nothing in the process tells the
 * two cases apart reliably (the machine's load average counts the whole
 * host, not the cores this server may use), so the controller times the
 * calls themselves: it keeps a smoothed cost per image at the count in use,
 * now and then runs one call at a neighbouring count (cores, cores / 2,
 * ..., 1), and moves when that was faster.  Probes come quickly after a
 * move or a sudden slowdown and back off (doubling the interval) while the
 * count in use stays the faster, so a steady state pays for about one
 * probe call a second (to each side when the count has two neighbours),
 * or one every 50 calls when calls are long (batches): a probe at a
 * slower count then costs about 2% of the time, not more.  The first
 * call at a count is not a measurement: it makes that count's oneDNN
 * primitives.
 *
 * Only scoring adapts (its results are the same bits at any count:
 * test_threads checks it); training keeps its count, so a seeded run
 * repeats.  Pure bookkeeping: the caller sets the threads and keeps time.
 */
#ifndef MT_ADAPT_H
#define MT_ADAPT_H

#define MT_ADAPT_MAX 8

/* probe intervals (seconds): right after a change, and at most */
#define MT_ADAPT_PROBE_MIN 0.125
#define MT_ADAPT_PROBE_MAX 1.0

typedef struct mt_adapt
{
	int			n;				/* candidate counts */
	int			cand[MT_ADAPT_MAX];	/* descending: cores, cores / 2, ..., 1 */
	double		cost[MT_ADAPT_MAX];	/* smoothed seconds per image; < 0: none yet */
	int			warm[MT_ADAPT_MAX];	/* a call has run at this count */
	int			cur;			/* the count in use (index) */
	int			inflight;		/* the index the last mt_adapt_begin gave */
	int			dir;			/* next probe: +1 fewer threads, -1 more */
	double		next_probe;		/* time of the next probe */
	double		interval;		/* the probe interval now */
	double		call;			/* smoothed seconds a call at cur; < 0: none yet */
	long		probes,			/* counters, for tests and reports */
				moves;
} mt_adapt;

/* Start with every core (cores >= 1). */
void		mt_adapt_init(mt_adapt *a, int cores);

/* The thread count for the next call at time now (seconds, monotonic). */
int			mt_adapt_begin(mt_adapt *a, double now);

/*
 * The call mt_adapt_begin gave a count for took seconds for images images
 * and ended at now.
 */
void		mt_adapt_end(mt_adapt *a, double seconds, int images, double now);

#endif
