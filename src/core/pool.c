/*
 * pool.c - worker threads for mt_parallel_for (see pool.h).
 *
 * One job at a time: the caller publishes it under the mutex, bumps a
 * generation counter and wakes the workers; worker i runs part i + 1 (the
 * caller runs part 0) and the last one to finish wakes the caller.  Workers
 * sleep on a condition variable between jobs, so an idle pool costs nothing.
 */
#include "pool.h"

#include <pthread.h>
#include <signal.h>

#define MT_POOL_MAX 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_start = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cv_done = PTHREAD_COND_INITIALIZER;
static int	n_threads = 1;		/* wanted, caller included */
static int	n_workers = 0;		/* started */
static unsigned long generation = 0;
static int	pending = 0;
static unsigned long start_gen[MT_POOL_MAX];	/* generation when worker i started */
static __thread int in_task = 0;

static struct
{
	mt_range_fn fn;
	void	   *arg;
	size_t		n;
	int			parts;
} job;

static void
run_part(int part, int parts, size_t n, mt_range_fn fn, void *arg)
{
	size_t		begin = n * (size_t) part / (size_t) parts;
	size_t		end = n * (size_t) (part + 1) / (size_t) parts;

	if (begin < end)
		fn(arg, begin, end);
}

static void *
worker_main(void *p)
{
	int			idx = (int) (size_t) p;
	unsigned long seen = 0;

	in_task = 1;
	pthread_mutex_lock(&mu);
	seen = start_gen[idx];
	for (;;)
	{
		mt_range_fn fn;
		void	   *arg;
		size_t		n;
		int			parts;

		while (generation == seen)
			pthread_cond_wait(&cv_start, &mu);
		seen = generation;
		fn = job.fn;
		arg = job.arg;
		n = job.n;
		parts = job.parts;
		pthread_mutex_unlock(&mu);

		if (idx + 1 < parts)
			run_part(idx + 1, parts, n, fn, arg);

		pthread_mutex_lock(&mu);
		if (--pending == 0)
			pthread_cond_signal(&cv_done);
	}
	return NULL;
}

/* Start workers up to want - 1 (mutex held); stops at the first failure. */
static void
start_workers(int want)
{
	sigset_t	all,
				old;

	if (want - 1 <= n_workers)
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	while (n_workers < want - 1)
	{
		pthread_t	t;
		pthread_attr_t attr;
		int			rc;

		start_gen[n_workers] = generation;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		rc = pthread_create(&t, &attr, worker_main, (void *) (size_t) n_workers);
		pthread_attr_destroy(&attr);
		if (rc != 0)
			break;
		n_workers++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void
mt_pool_set_threads(int n)
{
	n_threads = n < 1 ? 1 : (n > MT_POOL_MAX ? MT_POOL_MAX : n);
}

int
mt_pool_threads(void)
{
	return n_threads;
}

typedef void (*gomp_parallel_fn) (void (*) (void *), void *, unsigned, unsigned);
static gomp_parallel_fn gomp_parallel = NULL;
static int	(*omp_thread_num) (void);
static int	(*omp_num_threads) (void);

void
mt_pool_use_openmp(void *gp, int (*thread_num) (void), int (*num_threads) (void))
{
	gomp_parallel = gp != NULL && thread_num != NULL && num_threads != NULL ? (gomp_parallel_fn) gp : NULL;
	omp_thread_num = thread_num;
	omp_num_threads = num_threads;
}

typedef struct omp_job
{
	mt_range_fn fn;
	void	   *arg;
	size_t		n;
	int			parts;
} omp_job;

/* One OpenMP thread's share of a job: parts t, t + nt, ... */
static void
omp_body(void *p)
{
	omp_job    *j = p;
	int			t = omp_thread_num(),
				nt = omp_num_threads(),
				was = in_task;

	in_task = 1;
	for (int part = t; part < j->parts; part += nt > 0 ? nt : 1)
		run_part(part, j->parts, j->n, j->fn, j->arg);
	in_task = was;
}

void
mt_parallel_for(size_t n, size_t min_part, mt_range_fn fn, void *arg)
{
	int			parts;

	if (n == 0)
		return;
	if (min_part < 1)
		min_part = 1;
	parts = n_threads;
	if ((size_t) parts > n / min_part)
		parts = (int) (n / min_part);
	if (parts <= 1 || in_task)
	{
		fn(arg, 0, n);
		return;
	}
	if (gomp_parallel != NULL)
	{
		omp_job		j = {fn, arg, n, parts};
		sigset_t	all,
					old;

		/* threads libgomp starts here must not take the host's signals */
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		gomp_parallel(omp_body, &j, (unsigned) parts, 0);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return;
	}

	pthread_mutex_lock(&mu);
	start_workers(parts);
	if (parts > n_workers + 1)
		parts = n_workers + 1;
	if (parts <= 1)
	{
		pthread_mutex_unlock(&mu);
		fn(arg, 0, n);
		return;
	}
	job.fn = fn;
	job.arg = arg;
	job.n = n;
	job.parts = parts;
	pending = n_workers;
	generation++;
	pthread_cond_broadcast(&cv_start);
	pthread_mutex_unlock(&mu);

	in_task = 1;
	run_part(0, parts, n, fn, arg);
	in_task = 0;

	pthread_mutex_lock(&mu);
	while (pending > 0)
		pthread_cond_wait(&cv_done, &mu);
	pthread_mutex_unlock(&mu);
}
