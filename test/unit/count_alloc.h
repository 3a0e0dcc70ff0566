/*
 * count_alloc.h - a counting allocator for mt_set_allocator that can be
 * told to fail: the unit tests' check that every allocation failure gives
 * MT_ERR_NOMEM and leaks nothing.  Shared by test_image.c, test_mask.c,
 * test_pth.c and test_safetensors.c.
 *
 *   mt_set_allocator(count_malloc, count_free);
 *   fail_after = k;    (k more allocations succeed, then NULL; -1: never)
 *   ... live_allocs == 0 afterwards: nothing leaked
 */
#ifndef MT_COUNT_ALLOC_H
#define MT_COUNT_ALLOC_H

#include <stdlib.h>

static long live_allocs = 0;	/* count_malloc'd blocks not yet freed */
static long total_allocs = 0;	/* count_malloc calls that succeeded */
static long fail_after = -1;	/* >= 0: that many more succeed, then NULL */

/* Allocation hook that counts blocks and can be told to fail. */
static inline void *
count_malloc(size_t size)
{
	void	   *p;

	if (fail_after == 0)
		return NULL;
	if (fail_after > 0)
		fail_after--;
	p = malloc(size);
	if (p != NULL)
	{
		live_allocs++;
		total_allocs++;
	}
	return p;
}

/* Free hook matching count_malloc. */
static inline void
count_free(void *p)
{
	if (p != NULL)
		live_allocs--;
	free(p);
}

#endif
