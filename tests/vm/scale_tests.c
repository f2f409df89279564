// SPDX-License-Identifier: GPL-2.0
/*
 * UPM at scale: many processes advising the same pages at once, and GiB ranges in one call.
 * Each is sized so that its premise holds under the debug kernel in TCG, not larger. Run by
 * upm_tests (runner.c).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define N 128 /* pages per region, as in upm_tests.c */

#define MANY_MAX 128

/* Pages each of the advisers at once holds: a whole huge page, so that splits race. */
#define AT_ONCE_PAGES 512

/* What each of many processes reports: its advise result and where its pages are. */
struct many {
	volatile int advised[MANY_MAX]; /* 1 + errno of madvise, 0 until it returned */
	volatile uintptr_t addr[MANY_MAX];
	/* For advisers at once: ready count, the start signal, and when each call ran. */
	volatile int ready, go;
	volatile double start[MANY_MAX], end[MANY_MAX];
	size_t pages;
	int at_once;
};

static struct many *many;

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* `pages` pages at a huge-page boundary, for THP (the child exits without unmapping). */
static char *huge_aligned(size_t pages)
{
	size_t huge = 2ul << 20;
	char *raw = mmap(NULL, pages * page_size + huge, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *p = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));

	if (raw == MAP_FAILED)
		return NULL;
	madvise(p, pages * page_size, MADV_HUGEPAGE);
	return p;
}

static int child_fill_advise_wait(void *arg)
{
	int i = (int)(long)arg;
	size_t pages = many->pages;
	char *b = many->at_once ? huge_aligned(pages) : map_anon(pages);

	if (!b)
		return 2;
	fill_pages(b, pages, 31, 1);
	many->addr[i] = (uintptr_t)b;
	if (many->at_once) {
		__atomic_add_fetch(&many->ready, 1, __ATOMIC_SEQ_CST);
		while (!many->go)
			usleep(50);
	}
	many->start[i] = mono_s();
	many->advised[i] = 1 + (advise(b, pages) ? errno : 0);
	many->end[i] = mono_s();
	pause(); /* killed by the parent */
	return 0;
}

/* The contents of `pages` pages at `addr` in process `pid`, checked as check_pages(). */
static int contents_in(pid_t pid, uintptr_t addr, size_t pages, uint64_t seed)
{
	char path[64];
	char *buf = malloc(pages * page_size);
	int fd, bad = -2;

	snprintf(path, sizeof(path), "/proc/%d/mem", pid);
	fd = open(path, O_RDONLY);
	if (buf && fd >= 0 &&
	    pread(fd, buf, pages * page_size, (off_t)addr) == (ssize_t)(pages * page_size))
		bad = check_pages(buf, pages, seed, 1);
	if (fd >= 0)
		close(fd);
	free(buf);
	return bad;
}

/*
 * n processes advise the same pages: one frame for all, every copy intact. With `at_once`,
 * they start together and each holds a huge page's worth: the calls overlap (checked), so
 * advisers pair with, split and join each other's pages while they walk their own.
 */
static enum result processes_share(int n, int at_once)
{
	size_t pages = at_once ? AT_ONCE_PAGES : N;
	long skipped = counter("pages_skipped");
	pid_t pids[MANY_MAX];
	uint64_t first[AT_ONCE_PAGES], frames[AT_ONCE_PAGES];
	double last_start = 0, first_end = 1e300;
	long saved;
	size_t same = 0;
	int advised = 0, intact = 0;

	many = map_shared(sizeof(*many));
	CHECK(many && n <= MANY_MAX, "shared map");
	many->pages = pages;
	many->at_once = at_once;
	for (int i = 0; i < n; i++)
		pids[i] = spawn(child_fill_advise_wait, (void *)(long)i);
	for (int i = 0; at_once && i < 2400 && many->ready < n; i++)
		usleep(10 * 1000);
	many->go = 1;
	for (int i = 0; i < 2400 && advised < n; i++, usleep(100 * 1000))
		for (int p = advised = 0; p < n; p++)
			advised += many->advised[p] != 0;
	saved = counter("pages_sharing");
	/* Every process advised without error, maps the same frames and reads its own data. */
	CHECK(pfns_in(pids[0], many->addr[0], pages, first) == 0, "process 0's pagemap");
	for (int p = 0; p < n; p++) {
		advised -= many->advised[p] != 1;
		intact += contents_in(pids[p], many->addr[p], pages, 31) < 0;
		last_start = many->start[p] > last_start ? many->start[p] : last_start;
		first_end = many->end[p] < first_end ? many->end[p] : first_end;
		if (pfns_in(pids[p], many->addr[p], pages, frames))
			continue;
		for (size_t i = 0; i < pages; i++)
			same += frames[i] && frames[i] == first[i];
	}
	for (int i = 0; i < n; i++)
		kill(pids[i], SIGKILL);
	for (int i = 0; i < n; i++)
		wait_exit(pids[i]);
	CHECK(advised == n, "%d of %d processes advised without error", advised, n);
	/* The premise: every call was running while every other was. */
	CHECK(!at_once || last_start < first_end,
	      "the %d calls overlap: last started %.3f s after the first returned", n,
	      last_start - first_end);
	CHECK(same == (size_t)n * pages, "%zu of %zu pages map process 0's frames", same,
	      (size_t)n * pages);
	CHECK(intact == n, "%d of %d processes read their contents intact", intact, n);
	CHECK(saved == (long)((n - 1) * pages), "%d processes x %zu pages: pages_sharing %ld", n,
	      pages, saved);
	CHECK(counter("pages_skipped") == skipped, "pages skipped +%ld (busy %ld, not present %ld)",
	      counter("pages_skipped") - skipped, counter("pages_skipped_busy"),
	      counter("pages_skipped_not_present"));
	CHECK(wait_tree_empty() == 0, "tree empty after exit: %ld", counter("stable_nodes"));
	CHECK(counter("pages_shared") == 0 && counter("pages_sharing") == 0 &&
		      counter("pages_unshared") == 0, "state counters 0");
	return PASS;
}

static enum result test_sixteen_processes(void)
{
	return processes_share(16, 0);
}

static enum result test_many_processes(void)
{
	return processes_share(MANY_MAX, 0);
}

static enum result test_advisers_at_once(void)
{
	return processes_share(8, 1);
}

/*
 * A GiB-scale range in one call: two 1 GiB twins, each advised whole, so that each call
 * walks 512 of the module's 512-page mmap_lock batches. Every 64th page is present (4096
 * pages, 16 MiB each: what the range's size is about is the walk, and filling more only
 * costs time under KASAN). Present pages all merge, the others are counted as not present,
 * and the contents survive an unmerge of the whole range.
 */
static enum result test_gib_range(void)
{
	size_t pages = (1ul << 30) / page_size, stride = 64, present = pages / stride;
	char *a = map_anon(pages), *b = map_anon(pages);
	long merged = counter("pages_merged"), absent = counter("pages_skipped_not_present");
	size_t same = 0, intact = 0;

	CHECK(a && b, "map 2 x 1 GiB");
	CHECK(madvise(a, pages * page_size, MADV_NOHUGEPAGE) == 0 &&
	      madvise(b, pages * page_size, MADV_NOHUGEPAGE) == 0, "small pages only");
	for (size_t i = 0; i < pages; i += stride) {
		fill_page(a + i * page_size, i, 61);
		fill_page(b + i * page_size, i, 61);
	}
	CHECK(advise(a, pages) == 0 && advise(b, pages) == 0, "advise 1 GiB twice");
	for (size_t i = 0; i < pages; i += stride) {
		uint64_t f = pfn_of(a + i * page_size);

		same += f && f == pfn_of(b + i * page_size);
	}
	CHECK(same == present, "%zu of %zu present pages share a frame", same, present);
	CHECK(counter("pages_merged") - merged == (long)present &&
	      counter("pages_skipped_not_present") - absent == 2 * (long)(pages - present),
	      "merged +%ld, not present +%ld", counter("pages_merged") - merged,
	      counter("pages_skipped_not_present") - absent);
	CHECK(unmerge(a, pages) == 0, "unmerge 1 GiB");
	for (size_t i = 0; i < pages; i += stride)
		intact += page_intact(a, i, 61) && page_intact(b, i, 61) &&
			  pfn_of(a + i * page_size) != pfn_of(b + i * page_size);
	CHECK(intact == present, "%zu of %zu pages intact and private after unmerge", intact,
	      present);
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);
	return PASS;
}

const struct test scale_tests[] = {
	{ "sixteen_processes", test_sixteen_processes, "16 processes; counters 0 after exit" },
	{ "many_processes", test_many_processes, "128 processes share one set of frames" },
	{ "advisers_at_once", test_advisers_at_once,
	  "8 processes advise a huge page of the same contents together: one set of frames" },
	{ "gib_range", test_gib_range, "1 GiB ranges, every 64th page present: merged, intact" },
};
const size_t scale_test_count = ARRAY_SIZE(scale_tests);
