// SPDX-License-Identifier: GPL-2.0
/*
 * UPM at scale: many processes advising the same pages at once, a range changed by other
 * threads while it is advised and unmerged, and GiB ranges in one call. Each is sized so that
 * its premise holds under the debug kernel in TCG, not larger. Run by upm_tests (runner.c).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define N 128 /* pages per region, as in upm_tests.c */

#define MANY_MAX 128

/*
 * Pages each of the advisers at once holds: whole huge pages, so that splits race, and four
 * of them, so that on the release kernel too every call lasts until the last has started
 * (with one, 8 advisers on 2 vCPUs did not overlap there: the last started 12 ms late).
 */
#define AT_ONCE_PAGES 2048

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
		/* Asleep until one wake-up starts them all: no poller takes a vCPU meanwhile. */
		while (!many->go)
			syscall(SYS_futex, &many->go, FUTEX_WAIT, 0, NULL, NULL, 0);
	}
	many->start[i] = monotonic_seconds();
	many->advised[i] = 1 + (advise(b, pages) ? errno : 0);
	many->end[i] = monotonic_seconds();
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
	double first_start = 1e300, last_start = 0, first_end = 1e300;
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
	syscall(SYS_futex, &many->go, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
	for (int i = 0; i < 2400 && advised < n; i++, usleep(100 * 1000))
		for (int p = advised = 0; p < n; p++)
			advised += many->advised[p] != 0;
	saved = counter("pages_sharing");
	/* Every process advised without error, maps the same frames and reads its own data. */
	CHECK(pfns_in(pids[0], many->addr[0], pages, first) == 0, "process 0's pagemap");
	for (int p = 0; p < n; p++) {
		advised -= many->advised[p] != 1;
		intact += contents_in(pids[p], many->addr[p], pages, 31) < 0;
		first_start = many->start[p] < first_start ? many->start[p] : first_start;
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
	      "the %d calls overlap: last started %.3f s after the first returned (the first "
	      "returned %.3f s after the first start)", n, last_start - first_end,
	      first_end - first_start);
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

/*
 * One range, many hands: one thread advises a range of four mmap_lock batches, one unmerges
 * it, one reads it, and one changes parts of it that cross batch boundaries (munmap and map
 * again, mremap away and back, mprotect, MADV_DONTNEED, in turn), under KASAN and lockdep,
 * for at least CHURN_SECS and until each kind of change took its pages away CHURN_INSIDE
 * times between two batches of an advise call and of an unmerge call (the premise; a change
 * waits for the walk's batch to end, so under KASAN in TCG one comes every few seconds, and
 * CHURN_MAX_SECS bounds the wait). The contents are 64 kinds of page,
 * each 32 times, so every advise merges. Every read is checked. Then the range, advised once
 * more, maps one frame per kind, and unmerged, one per page.
 */
#define CHURN_PAGES 2048
#define CHURN_KINDS 64
#define CHURN_CHUNK 64
#define CHURN_SECS 10
#define CHURN_MAX_SECS 150
#define CHURN_INSIDE 2
#define CHURN_READS 200

enum churn_op { CHURN_REMAP, CHURN_MREMAP, CHURN_MPROTECT, CHURN_DONTNEED, CHURN_OPS };

static const char *const churn_names[] = { "munmap", "mremap", "mprotect", "dontneed" };

struct churn {
	char *range;
	char *scratch;			/* CHURN_CHUNK pages reserved for a chunk moved away */
	int mem;			/* /proc/self/mem: a read of a hole fails, never faults */
	const char *kinds;		/* CHURN_KINDS pages: what page i holds is kind i % 64 */
	volatile int stop;
	/* Odd while a call runs: a change between two equal odd values ran inside one call. */
	volatile unsigned long advise_seq, unmerge_seq;
	/* Odd while the changer works on [busy_lo, busy_hi): readers skip those pages. */
	volatile unsigned long busy_gen;
	volatile size_t busy_lo, busy_hi;
	long advise_calls, unmerge_calls, reads, bad_errno, bad_pages;
	long inside_advise[CHURN_OPS], inside_unmerge[CHURN_OPS], changes[CHURN_OPS];
};

static int churn_page_ok(const struct churn *c, const char *copy, size_t i)
{
	return memcmp(copy, c->kinds + (i % CHURN_KINDS) * page_size, page_size) == 0;
}

static void churn_fill(struct churn *c, size_t lo, size_t hi)
{
	for (size_t i = lo; i < hi; i++)
		memcpy(c->range + i * page_size, c->kinds + (i % CHURN_KINDS) * page_size,
		       page_size);
}

/* Calls madvise(advice) on the whole range until stopped; only ENOMEM (a hole) is allowed. */
static void *churn_walk(struct churn *c, int advice, volatile unsigned long *seq, long *calls)
{
	while (!c->stop) {
		int ret;

		__atomic_add_fetch(seq, 1, __ATOMIC_SEQ_CST);
		ret = madvise(c->range, CHURN_PAGES * page_size, advice);
		__atomic_add_fetch(seq, 1, __ATOMIC_SEQ_CST);
		if (ret && errno != ENOMEM) {
			fprintf(stderr, "    %s: errno %d\n", advice == MADV_UPM_MERGEABLE ?
				"advise" : "unmerge", errno);
			__atomic_add_fetch(&c->bad_errno, 1, __ATOMIC_SEQ_CST);
		}
		(*calls)++;
	}
	return NULL;
}

static void *churn_advise(void *arg)
{
	struct churn *c = arg;

	return churn_walk(c, MADV_UPM_MERGEABLE, &c->advise_seq, &c->advise_calls);
}

static void *churn_unmerge(void *arg)
{
	struct churn *c = arg;

	return churn_walk(c, MADV_UPM_UNMERGEABLE, &c->unmerge_seq, &c->unmerge_calls);
}

/*
 * Reads random pages that the changer is not working on, each checked. Through
 * /proc/self/mem: a page the changer starts on during the read may be unmapped, and the read
 * then fails instead of faulting; it is not counted, since the changer began meanwhile.
 */
static void *churn_read(void *arg)
{
	struct churn *c = arg;
	char *copy = malloc(page_size);
	uint64_t rng = 0x5eed;

	while (copy && !c->stop) {
		size_t i = xorshift64(&rng) % CHURN_PAGES;
		unsigned long gen = __atomic_load_n(&c->busy_gen, __ATOMIC_SEQ_CST);
		ssize_t got;

		if ((gen & 1) && i >= c->busy_lo && i < c->busy_hi)
			continue;
		got = pread(c->mem, copy, page_size, (off_t)(uintptr_t)(c->range + i * page_size));
		if (__atomic_load_n(&c->busy_gen, __ATOMIC_SEQ_CST) != gen)
			continue;
		c->reads++;
		if (got != (ssize_t)page_size || !churn_page_ok(c, copy, i)) {
			fprintf(stderr, "    page %zu read wrong while the range churned\n", i);
			c->bad_pages++;
		}
	}
	free(copy);
	return NULL;
}

/*
 * The first step of a change: the one that takes the pages away from where the walk looks
 * (unmaps, moves, write-protects or drops them). Counts it as inside an advise or an unmerge
 * call if that call was running before it and still running after it returned: the step then
 * ran between two batches of the call.
 */
#define CHURN_STEP(c, op, call)                                                         \
	({                                                                              \
		unsigned long a0 = __atomic_load_n(&(c)->advise_seq, __ATOMIC_SEQ_CST);  \
		unsigned long u0 = __atomic_load_n(&(c)->unmerge_seq, __ATOMIC_SEQ_CST); \
		long r = (long)(call);                                                  \
		(c)->inside_advise[op] +=                                               \
			(a0 & 1) && a0 == __atomic_load_n(&(c)->advise_seq, __ATOMIC_SEQ_CST); \
		(c)->inside_unmerge[op] +=                                              \
			(u0 & 1) && u0 == __atomic_load_n(&(c)->unmerge_seq, __ATOMIC_SEQ_CST); \
		r;                                                                      \
	})

/* One change of pages [lo, hi); false if a call failed. The pages hold their kinds after. */
static int churn_change(struct churn *c, enum churn_op op, size_t lo, size_t hi)
{
	char *p = c->range + lo * page_size, *moved;
	size_t len = (hi - lo) * page_size;

	switch (op) {
	case CHURN_REMAP:
		if (CHURN_STEP(c, op, munmap(p, len)))
			return 0;
		/* 64 pages: too small a mapping for a huge page. */
		if (mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			 -1, 0) != p)
			return 0;
		churn_fill(c, lo, hi);
		return 1;
	case CHURN_MREMAP:
		/* Into the scratch reservation and back; then the reservation is made again. */
		moved = (char *)CHURN_STEP(c, op, mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
							 c->scratch));
		if (moved != c->scratch)
			return 0;
		if (mremap(moved, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p) != p)
			return 0;
		return mmap(c->scratch, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			    0) == c->scratch;
	case CHURN_MPROTECT:
		if (CHURN_STEP(c, op, mprotect(p, len, PROT_READ)))
			return 0;
		return mprotect(p, len, PROT_READ | PROT_WRITE) == 0;
	case CHURN_DONTNEED:
		if (CHURN_STEP(c, op, madvise(p, len, MADV_DONTNEED)))
			return 0;
		churn_fill(c, lo, hi);
		return 1;
	default:
		return 0;
	}
}

/*
 * Whether each kind of change took its pages away inside both kinds of call often enough,
 * and the reader checked enough pages meanwhile.
 */
static int churn_premise(const struct churn *c)
{
	if (c->reads < CHURN_READS)
		return 0;
	for (int op = 0; op < CHURN_OPS; op++)
		if (c->inside_advise[op] < CHURN_INSIDE || c->inside_unmerge[op] < CHURN_INSIDE)
			return 0;
	return 1;
}

static enum result test_range_churn(void)
{
	size_t len = CHURN_PAGES * page_size;
	struct churn c = { 0 };
	pthread_t advise_t, unmerge_t, read_t;
	uint64_t rng = 0xc0ffee;
	long merged = counter("pages_merged"), bad_changes = 0, bad_after = 0, total = 0;
	time_t start;

	c.range = map_anon(CHURN_PAGES);
	c.kinds = map_anon(CHURN_KINDS);
	c.scratch = mmap(NULL, CHURN_CHUNK * page_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	c.mem = open("/proc/self/mem", O_RDONLY);
	CHECK(c.range && c.kinds && c.scratch != MAP_FAILED && c.mem >= 0, "map %d pages",
	      CHURN_PAGES);
	/* Small pages only: this is about the walk meeting changes, not about huge pages. */
	CHECK(madvise(c.range, len, MADV_NOHUGEPAGE) == 0, "no huge pages");
	fill_pages((char *)c.kinds, CHURN_KINDS, 91, 1);
	churn_fill(&c, 0, CHURN_PAGES);
	CHECK(pthread_create(&advise_t, NULL, churn_advise, &c) == 0 &&
	      pthread_create(&unmerge_t, NULL, churn_unmerge, &c) == 0 &&
	      pthread_create(&read_t, NULL, churn_read, &c) == 0, "threads");
	for (start = time(NULL); time(NULL) < start + CHURN_MAX_SECS; total++) {
		enum churn_op op = total % CHURN_OPS;
		/*
		 * Parts on one grid, half a part off the batches' (so that some straddle a batch
		 * boundary): each part is a whole VMA or inside one, as mremap() needs.
		 */
		size_t lo = CHURN_CHUNK / 2 +
			    CHURN_CHUNK * (xorshift64(&rng) % (CHURN_PAGES / CHURN_CHUNK - 1));
		size_t hi = lo + CHURN_CHUNK;

		if (churn_premise(&c) && time(NULL) >= start + CHURN_SECS)
			break;
		c.busy_lo = lo;
		c.busy_hi = hi;
		__atomic_add_fetch(&c.busy_gen, 1, __ATOMIC_SEQ_CST);
		if (!churn_change(&c, op, lo, hi)) {
			fprintf(stderr, "    %s of pages %zu-%zu failed: errno %d\n", churn_names[op],
				lo, hi, errno);
			bad_changes++;
		}
		for (size_t i = lo; i < hi; i++)
			bad_changes += !churn_page_ok(&c, c.range + i * page_size, i);
		__atomic_add_fetch(&c.busy_gen, 1, __ATOMIC_SEQ_CST);
		c.changes[op]++;
	}
	c.stop = 1;
	pthread_join(advise_t, NULL);
	pthread_join(unmerge_t, NULL);
	pthread_join(read_t, NULL);
	fprintf(stderr, "    %ld s: %ld advise and %ld unmerge calls, %ld checked reads; changes "
		"inside an advise / an unmerge / in all:", (long)(time(NULL) - start),
		c.advise_calls, c.unmerge_calls, c.reads);
	for (int op = 0; op < CHURN_OPS; op++)
		fprintf(stderr, " %s %ld/%ld/%ld", churn_names[op], c.inside_advise[op],
			c.inside_unmerge[op], c.changes[op]);
	fprintf(stderr, "\n");
	CHECK(c.bad_errno == 0 && bad_changes == 0 && c.bad_pages == 0,
	      "%ld calls with an errno other than ENOMEM, %ld failed or wrong changes, %ld wrong "
	      "reads", c.bad_errno, bad_changes, c.bad_pages);
	for (int op = 0; op < CHURN_OPS; op++)
		CHECK(c.inside_advise[op] >= CHURN_INSIDE && c.inside_unmerge[op] >= CHURN_INSIDE,
		      "premise: %d of each change inside an advise and an unmerge in %d s: %s %ld "
		      "and %ld", CHURN_INSIDE, CHURN_MAX_SECS, churn_names[op], c.inside_advise[op],
		      c.inside_unmerge[op]);
	CHECK(c.reads >= CHURN_READS, "premise: pages read while the range churned (%ld)",
	      c.reads);
	CHECK(counter("pages_merged") > merged, "merges while the range churned");
	/* Settled: one frame per kind, then one per page again, every page intact. */
	CHECK(advise(c.range, CHURN_PAGES) == 0, "advise after the churn");
	CHECK(distinct_pfns(c.range, CHURN_PAGES) == CHURN_KINDS, "%zu frames for %d kinds",
	      distinct_pfns(c.range, CHURN_PAGES), CHURN_KINDS);
	CHECK(unmerge(c.range, CHURN_PAGES) == 0, "unmerge after the churn");
	CHECK(distinct_pfns(c.range, CHURN_PAGES) == CHURN_PAGES, "%zu frames for %d pages",
	      distinct_pfns(c.range, CHURN_PAGES), CHURN_PAGES);
	for (size_t i = 0; i < CHURN_PAGES; i++)
		bad_after += !churn_page_ok(&c, c.range + i * page_size, i);
	CHECK(bad_after == 0, "%ld pages wrong after the churn", bad_after);
	munmap(c.range, len);
	munmap((char *)c.kinds, CHURN_KINDS * page_size);
	munmap(c.scratch, CHURN_CHUNK * page_size);
	close(c.mem);
	CHECK(wait_tree_empty() == 0, "index empty after unmap: %ld candidates, %ld nodes",
	      counter("candidates"), counter("stable_nodes"));
	return PASS;
}

/* Pages of [p, p + pages) that are part of a transparent huge page (KPF_THP), or -1. */
static long thp_pages(const char *p, size_t pages)
{
	int fd = open("/proc/kpageflags", O_RDONLY);
	long n = 0;

	if (fd < 0)
		return -1;
	for (size_t i = 0; i < pages; i++) {
		uint64_t pfn = pfn_of(p + i * page_size), flags = 0;

		if (pfn && pread(fd, &flags, sizeof(flags), pfn * 8) == sizeof(flags))
			n += !!(flags & (1ULL << 22)); /* KPF_THP */
	}
	close(fd);
	return n;
}

/* Flips the last byte of each page: the page changes, its huge page stays whole. */
static void touch_last_bytes(char *p, size_t pages)
{
	for (size_t i = 0; i < pages; i++)
		p[(i + 1) * page_size - 1] ^= 1;
}

/*
 * Huge pages are split only for a twin a full compare found, as KSM does: a huge page whose
 * pages meet candidates of their hash that changed since they were advised stays whole, and
 * so does the candidates' huge page. Once the candidates hold those contents again, both are
 * split and merge.
 */
static enum result test_thp_stale_twin(void)
{
	size_t pages = AT_ONCE_PAGES;
	char *a = huge_aligned(pages), *b = huge_aligned(pages);
	long collisions = counter("hash_collisions");

	CHECK(a && b, "mmap");
	fill_pages(a, pages, 91, 1);
	fill_pages(b, pages, 91, 1);
	SKIP_IF(thp_pages(a, pages) != (long)pages || thp_pages(b, pages) != (long)pages,
		"no THP was allocated");
	CHECK(advise(a, pages) == 0 && thp_pages(a, pages) == (long)pages,
	      "a huge page with no twin split: %ld pages left", thp_pages(a, pages));
	touch_last_bytes(a, pages); /* every candidate of a is stale from now on */
	CHECK(advise(b, pages) == 0, "advise b");
	CHECK(thp_pages(b, pages) == (long)pages && thp_pages(a, pages) == (long)pages,
	      "split for stale candidates: %ld of b's, %ld of a's pages still huge",
	      thp_pages(b, pages), thp_pages(a, pages));
	CHECK(counter("hash_collisions") - collisions == (long)pages,
	      "each stale candidate compared once: %ld", counter("hash_collisions") - collisions);
	CHECK(count_pfn_equal(a, b, pages) == 0, "merged with stale candidates");
	touch_last_bytes(a, pages); /* a is b's twin again */
	CHECK(advise(a, pages) == 0, "advise a again");
	CHECK(count_pfn_equal(a, b, pages) == pages, "merged once twins: %zu of %zu",
	      count_pfn_equal(a, b, pages), pages);
	CHECK(thp_pages(a, pages) == 0 && thp_pages(b, pages) == 0, "huge after merging");
	CHECK(check_pages(a, pages, 91, 1) < 0 && check_pages(b, pages, 91, 1) < 0, "contents");
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);
	CHECK(wait_tree_empty() == 0, "index empty after unmap: %ld candidates, %ld nodes",
	      counter("candidates"), counter("stable_nodes"));
	return PASS;
}

const struct test scale_tests[] = {
	{ "sixteen_processes", test_sixteen_processes, "16 processes; counters 0 after exit" },
	{ "many_processes", test_many_processes, "128 processes share one set of frames" },
	{ "advisers_at_once", test_advisers_at_once,
	  "8 processes advise four huge pages of the same contents together: one frame set" },
	{ "gib_range", test_gib_range, "1 GiB ranges, every 64th page present: merged, intact" },
	{ "thp_stale_twin", test_thp_stale_twin,
	  "a huge page meeting changed candidates stays whole, theirs too; split once twins" },
	{ "range_churn", test_range_churn,
	  "munmap, mremap, mprotect, DONTNEED inside advise and unmerge calls: every read right" },
};
const size_t scale_test_count = ARRAY_SIZE(scale_tests);
