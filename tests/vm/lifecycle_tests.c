// SPDX-License-Identifier: GPL-2.0
/*
 * UPM tests of what happens to merged pages afterwards (the VMA lifecycle, userfaultfd,
 * module load order, memory-cgroup pressure) and of the mappings UPM must leave alone
 * (file-backed, hugetlb, PFN-mapped). Run by upm_tests, which owns the harness.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define N 128 /* pages per region, as in upm_tests.c */

/* Two identical regions, advised and checked to share every frame. */
static int merged_twins(char **a, char **b, size_t pages, uint64_t seed)
{
	if (map_twins(a, b, pages, seed) || advise(*a, pages) || advise(*b, pages))
		return -1;
	return count_pfn_equal(*a, *b, pages) == pages ? 0 : -1;
}

/* Pages of p whose pagemap entry carries the userfaultfd write-protect marker. */
static size_t uffd_wp_marked(const void *p, size_t pages)
{
	size_t n = 0;

	for (size_t i = 0; i < pages; i++)
		n += !!(pagemap_entry((const char *)p + i * page_size) & PM_UFFD_WP);
	return n;
}

/* ---- userfaultfd (ksm_functional_tests.c: test_unmerge_uffd_wp) ---- */

static enum result test_uffd_wp(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	struct uffdio_register reg = { 0 };
	struct uffdio_writeprotect wp = { 0 };
	char *a, *b;
	long vma;
	int uffd;

	CHECK(merged_twins(&a, &b, N, 201) == 0, "setup");
	uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	CHECK(uffd >= 0, "userfaultfd");
	CHECK(ioctl(uffd, UFFDIO_API, &api) == 0, "UFFDIO_API");
	reg.range.start = (uintptr_t)a;
	reg.range.len = N * page_size;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	CHECK(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "register");
	wp.range = reg.range;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	CHECK(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0, "write-protect");
	CHECK(uffd_wp_marked(a, N) == N, "marked %zu", uffd_wp_marked(a, N));

	/* Unmerging unshares; it must not raise a write-protect fault nobody serves. */
	alarm(60);
	CHECK(unmerge(a, N) == 0, "unmerge a write-protected range");
	alarm(0);
	CHECK(count_pfn_equal(a, b, N) == 0, "%zu pages still merged", count_pfn_equal(a, b, N));
	CHECK(check_pages(a, N, 201, 1) < 0 && check_pages(b, N, 201, 1) < 0, "contents");
	CHECK(uffd_wp_marked(a, N) == N, "markers kept: %zu", uffd_wp_marked(a, N));

	/* Merging would drop the per-pte marker: the area is skipped. */
	vma = counter("pages_skipped_vma");
	CHECK(advise(a, N) == 0, "advise a write-protected range");
	CHECK(counter("pages_skipped_vma") - vma == N, "skipped %ld",
	      counter("pages_skipped_vma") - vma);
	CHECK(count_pfn_equal(a, b, N) == 0, "merged %zu", count_pfn_equal(a, b, N));
	CHECK(uffd_wp_marked(a, N) == N, "markers kept: %zu", uffd_wp_marked(a, N));
	close(uffd);
	return PASS;
}

/* ---- VMA lifecycle on merged ranges ---- */

static enum result test_munmap_partial(void)
{
	char *a, *b;
	long q = N / 4;

	CHECK(merged_twins(&a, &b, N, 211) == 0, "setup");
	CHECK(munmap(a + q * page_size, q * page_size) == 0, "munmap a quarter");
	CHECK(counter("pages_sharing") == N - q, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(counter("pages_unshared") == q, "pages_unshared %ld", counter("pages_unshared"));
	CHECK((long)count_pfn_equal(a, b, q) + (long)count_pfn_equal(a + 2 * q * page_size,
							  b + 2 * q * page_size, N - 2 * q) ==
		      N - q,
	      "rest still merged");
	CHECK(check_pages(a, q, 211, 1) < 0 && check_pages(b, N, 211, 1) < 0, "contents");
	CHECK(munmap(a, N * page_size) == 0, "munmap the rest");
	CHECK(counter("pages_sharing") == 0, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(check_pages(b, N, 211, 1) < 0, "survivor's contents");
	CHECK(munmap(b, N * page_size) == 0, "munmap the last mapping");
	CHECK(wait_tree_empty() == 0, "stable pages freed while the process lives: %ld",
	      counter("stable_nodes"));
	return PASS;
}

static enum result test_mremap_grow(void)
{
	char *a, *b, *g;
	long np = counter("pages_skipped_not_present");

	CHECK(merged_twins(&a, &b, N, 221) == 0, "setup");
	/* A mapping right after a (ours, or one already there) forces the grown one to move. */
	CHECK(mmap(a + N * page_size, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS |
			   MAP_FIXED_NOREPLACE, -1, 0) != MAP_FAILED || errno == EEXIST, "blocker");
	g = mremap(a, N * page_size, 2 * N * page_size, MREMAP_MAYMOVE);
	CHECK(g != MAP_FAILED && g != a, "mremap grow (moved)");
	CHECK(count_pfn_equal(g, b, N) == N, "merged pages moved: %zu", count_pfn_equal(g, b, N));
	CHECK(counter("pages_sharing") == N, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(check_pages(g, N, 221, 1) < 0, "moved contents");
	CHECK(advise(g, 2 * N) == 0, "advise the grown range");
	CHECK(counter("pages_skipped_not_present") - np == N, "new tail not faulted: %ld",
	      counter("pages_skipped_not_present") - np);
	for (size_t i = N * page_size; i < 2 * N * page_size; i++)
		CHECK(g[i] == 0, "tail reads zero at %zu", i);
	g[3 * page_size] ^= 0x80;
	CHECK(check_pages(b, N, 221, 1) < 0, "write after the move is private");
	CHECK(counter("pages_sharing") == N - 1, "pages_sharing %ld", counter("pages_sharing"));
	return PASS;
}

static enum result test_mprotect_roundtrip(void)
{
	char *a, *b, *c = map_anon(N);

	CHECK(c && merged_twins(&a, &b, N, 231) == 0, "setup");
	CHECK(mprotect(a, N * page_size, PROT_READ) == 0, "read-only");
	CHECK(count_pfn_equal(a, b, N) == N && check_pages(a, N, 231, 1) < 0, "read-only");
	CHECK(mprotect(a, N * page_size, PROT_NONE) == 0, "PROT_NONE");
	CHECK(count_pfn_equal(a, b, N) == N, "PROT_NONE keeps the frames");
	CHECK(mprotect(a, N * page_size, PROT_READ | PROT_WRITE) == 0, "read-write again");
	CHECK(count_pfn_equal(a, b, N) == N && check_pages(a, N, 231, 1) < 0, "back");
	/* Writable again, but the merged pages must still be write-protected. */
	memset(a, 0x11, page_size);
	CHECK(check_pages(b, N, 231, 1) < 0, "write after the round trip leaked");
	CHECK(counter("pages_sharing") == N - 1, "pages_sharing %ld", counter("pages_sharing"));
	/* A read-only range merges too. */
	fill_pages(c, N, 231, 1);
	CHECK(mprotect(c, N * page_size, PROT_READ) == 0 && advise(c, N) == 0, "advise r/o");
	CHECK(count_pfn_equal(b, c, N) == N, "read-only range merged: %zu",
	      count_pfn_equal(b, c, N));
	return PASS;
}

static enum result test_mlock(void)
{
	char *a, *b;

	CHECK(merged_twins(&a, &b, N, 261) == 0, "setup");
	/* mlock() populates a writable private range for writing, which breaks COW. */
	CHECK(mlock(a, N * page_size) == 0, "mlock");
	CHECK(count_pfn_equal(a, b, N) == 0, "mlock unshared: %zu still merged",
	      count_pfn_equal(a, b, N));
	CHECK(check_pages(a, N, 261, 1) < 0 && check_pages(b, N, 261, 1) < 0, "contents");
	/* Locked pages merge like KSM merges them, and stay locked. */
	CHECK(advise(a, N) == 0, "advise a locked range");
	CHECK(count_pfn_equal(a, b, N) == N, "merged %zu", count_pfn_equal(a, b, N));
	CHECK(proc_kb("/proc/self/status", "VmLck") == (long)(N * page_size / 1024), "VmLck %ld",
	      proc_kb("/proc/self/status", "VmLck"));
	CHECK(munlock(a, N * page_size) == 0, "munlock");
	a[0] ^= 1;
	CHECK(check_pages(b, N, 261, 1) < 0, "COW after munlock");
	return PASS;
}

static enum result test_fork_exec(void)
{
	char *a, *b;
	pid_t pid;

	CHECK(merged_twins(&a, &b, N, 271) == 0, "setup");
	pid = fork();
	if (pid == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	CHECK(wait_exit(pid) == 0, "child exec");
	CHECK(counter("pages_sharing") == N, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(count_pfn_equal(a, b, N) == N, "still merged");
	CHECK(check_pages(a, N, 271, 1) < 0 && check_pages(b, N, 271, 1) < 0, "contents");
	return PASS;
}

/* ---- a fork that fails half way ---- */

#define FAILSLAB "/sys/kernel/debug/failslab/"
#define VMA_CACHE "/sys/kernel/slab/vm_area_struct/"

/* The failslab settings the test changes, saved to be put back as they were. */
static const char *const failslab_files[] = {
	FAILSLAB "probability", FAILSLAB "interval",	 FAILSLAB "times",
	FAILSLAB "space",	FAILSLAB "verbose",	 FAILSLAB "task-filter",
	FAILSLAB "cache-filter", FAILSLAB "ignore-gfp-wait", VMA_CACHE "failslab",
};

/* Probability first, so that nothing fails while the others go back. */
static void failslab_restore(char saved[][SETTING_MAX])
{
	write_long("/proc/self/make-it-fail", 0);
	restore_settings(failslab_files, ARRAY_SIZE(failslab_files), saved);
}

/* Index (from 1) of the VMA holding addr among this process's VMAs, and how many there are. */
static int vma_index(const void *addr, int *count)
{
	char line[512];
	int i = 0, found = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (strstr(line, "[vsyscall]") || sscanf(line, "%lx-%lx", &lo, &hi) != 2)
			continue;
		i++;
		if ((uintptr_t)addr >= lo && (uintptr_t)addr < hi)
			found = i;
	}
	fclose(f);
	*count = i;
	return found;
}

/*
 * fork() with the allocation of the child's nth VMA failing, for this task only: the copy of
 * the mm_struct is made, dup_mmap() fails with ENOMEM at that VMA and the half-made child is
 * torn down. Returns 0 when the fork failed so, having used the one failure it was given.
 */
static int fork_failing_at_vma(long nth)
{
	long object_size = read_long(VMA_CACHE "object_size");
	int failed, err;
	pid_t pid;

	/* failslab fails the allocation that finds `space` no larger than its size. */
	if (object_size <= 0 || write_long(FAILSLAB "probability", 0) ||
	    write_long(VMA_CACHE "failslab", 1) || write_str(FAILSLAB "cache-filter", "Y") ||
	    write_str(FAILSLAB "task-filter", "Y") || write_str(FAILSLAB "ignore-gfp-wait", "N") ||
	    write_long(FAILSLAB "verbose", 0) || write_long(FAILSLAB "interval", 1) ||
	    write_long(FAILSLAB "space", nth * object_size - 1) ||
	    write_long(FAILSLAB "times", 1) || write_long("/proc/self/make-it-fail", 1) ||
	    write_long(FAILSLAB "probability", 100)) {
		fprintf(stderr, "    failslab setup failed\n");
		return -1;
	}
	pid = fork();
	err = errno;
	if (pid == 0)
		_exit(0);
	write_long(FAILSLAB "probability", 0);
	write_long("/proc/self/make-it-fail", 0);
	failed = pid < 0 && err == ENOMEM && read_long(FAILSLAB "times") == 0;
	if (pid > 0)
		wait_exit(pid);
	if (!failed)
		fprintf(stderr, "    fork failing at VMA %ld: pid %d errno %d, failures left %ld\n",
			nth, pid, err, read_long(FAILSLAB "times"));
	return failed ? 0 : -1;
}

/*
 * A process with merged pages whose fork fails in dup_mmap(): at its first VMA (nothing
 * copied), just after the merged areas (their page tables copied, then torn down) and at its
 * last. Its own merged pages keep their rmap items, so they still migrate (MPOL_MF_MOVE_ALL:
 * every mapping is moved) and unmerge, and a fork that succeeds afterwards shares them.
 * Before the fix the child's teardown freed the parent's rmap items (KASAN: use-after-free).
 */
static enum result fork_fails_body(char *a, char *b)
{
	int ia, ib, count, node;
	long nth[3];
	pid_t pid;

	ia = vma_index(a, &count);
	ib = vma_index(b, &count);
	CHECK(ia > 0 && ib > 0, "the twins' VMAs in /proc/self/maps");
	nth[0] = 1;
	nth[1] = (ia > ib ? ia : ib) + 1 < count ? (ia > ib ? ia : ib) + 1 : count;
	nth[2] = count;
	/* The mm's own count of its merged pages: the failed child's teardown must not touch it. */
	long merging = read_long("/proc/self/ksm_merging_pages");

	for (int i = 0; i < 3; i++) {
		CHECK(fork_failing_at_vma(nth[i]) == 0, "fork failing at VMA %ld of %d", nth[i],
		      count);
		CHECK(read_long("/proc/self/ksm_merging_pages") == merging,
		      "ksm_merging_pages %ld after the fork failing at VMA %ld, %ld before",
		      read_long("/proc/self/ksm_merging_pages"), nth[i], merging);
	}
	CHECK(count_pfn_equal(a, b, N) == N, "still shared after the failed forks");
	node = !node_of(a);
	CHECK(move_set(a, b, N, node) == N, "merged pages moved to node %d: %zu of %d", node,
	      move_set(a, b, N, node), N);
	CHECK(count_pfn_equal(a, b, N) == N && check_pages(a, N, 281, 1) < 0 &&
		      check_pages(b, N, 281, 1) < 0,
	      "shared and intact after the move");
	pid = fork();
	if (pid == 0)
		_exit(count_pfn_equal(a, b, N) == N && check_pages(a, N, 281, 1) < 0 ? 0 : 1);
	CHECK(wait_exit(pid) == 0, "a fork that succeeds shares the merged pages");
	CHECK(unmerge(a, N) == 0 && unmerge(b, N) == 0, "unmerge");
	CHECK(count_pfn_equal(a, b, N) == 0, "%zu pages still shared", count_pfn_equal(a, b, N));
	CHECK(check_pages(a, N, 281, 1) < 0 && check_pages(b, N, 281, 1) < 0, "contents");
	return PASS;
}

static enum result test_fork_fails_after_merge(void)
{
	char saved[ARRAY_SIZE(failslab_files)][SETTING_MAX];
	char *a, *b;
	enum result r;

	SKIP_IF(access(FAILSLAB "task-filter", F_OK) || access(VMA_CACHE "failslab", F_OK),
		"no failslab with a cache filter");
	CHECK(access("/sys/devices/system/node/node1", F_OK) == 0, "two NUMA nodes");
	CHECK(merged_twins(&a, &b, N, 281) == 0, "setup");
	save_settings(failslab_files, ARRAY_SIZE(failslab_files), saved);
	r = fork_fails_body(a, b);
	failslab_restore(saved);
	return r;
}

/* ---- every allocation of advise, unmerge, mremap and fork failing in turn ---- */

#define FAIL_PAGE_ALLOC "/sys/kernel/debug/fail_page_alloc/"
#define FI_PAGES 4
#define FI_SEED 307
#define FI_MAX_POINTS 4000

/*
 * /proc/thread-self/fail-nth makes the nth fault-injection point this thread passes fail:
 * every slab allocation and page allocation, once these settings let sleeping allocations
 * fail too (and nothing is printed for them).
 */
static const char *const fail_nth_files[] = {
	FAILSLAB "ignore-gfp-wait",	    FAILSLAB "cache-filter",
	FAILSLAB "verbose",		    FAIL_PAGE_ALLOC "ignore-gfp-wait",
	FAIL_PAGE_ALLOC "ignore-gfp-highmem", FAIL_PAGE_ALLOC "min-order",
	FAIL_PAGE_ALLOC "verbose",
};
static const char *const fail_nth_values[] = { "N", "N", "0", "N", "N", "0", "0" };

/* Three copies of the same contents; the armed call works on a. */
struct fi_state {
	char *a, *b, *c, *spare; /* spare: where mremap moves a */
	char *left;		 /* what MREMAP_DONTUNMAP left mapped at a */
	pid_t sharer;		 /* a child sharing every frame by fork */
	long ret;		 /* the armed call's result: 0 (or a pid) or -errno */
};

struct fi_op {
	const char *name;
	int (*setup)(struct fi_state *s);
	long (*act)(struct fi_state *s);
	int (*done)(struct fi_state *s);    /* the call's work is complete */
	int (*outcome)(struct fi_state *s); /* after the call and a retry without faults: 0 */
	int hint; /* may succeed with its work undone (advice: a page is left as it was) */
};

static int fi_candidate(struct fi_state *s)
{
	return advise(s->b, FI_PAGES);
}

static int fi_merged(struct fi_state *s)
{
	return advise(s->a, FI_PAGES) || advise(s->b, FI_PAGES) ||
	       count_pfn_equal(s->a, s->b, FI_PAGES) != FI_PAGES;
}

static int fi_node(struct fi_state *s)
{
	return advise(s->b, FI_PAGES) || advise(s->c, FI_PAGES) ||
	       count_pfn_equal(s->b, s->c, FI_PAGES) != FI_PAGES;
}

/* b is a candidate, and a child shares a's and b's frames until it is killed. */
static int fi_fork_shared(struct fi_state *s)
{
	if (advise(s->b, FI_PAGES))
		return -1;
	s->sharer = fork();
	if (s->sharer == 0) {
		for (;;)
			pause();
	}
	return s->sharer < 0;
}

static long fi_advise(struct fi_state *s)
{
	return advise(s->a, FI_PAGES) ? -errno : 0;
}

static long fi_unmerge(struct fi_state *s)
{
	return unmerge(s->a, FI_PAGES) ? -errno : 0;
}

static long fi_mremap(struct fi_state *s)
{
	void *p = mremap(s->a, FI_PAGES * page_size, FI_PAGES * page_size,
			 MREMAP_MAYMOVE | MREMAP_FIXED, s->spare);

	return p == MAP_FAILED ? -errno : 0;
}

static long fi_mremap_dontunmap(struct fi_state *s)
{
	void *p = mremap(s->a, FI_PAGES * page_size, FI_PAGES * page_size,
			 MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, s->spare);

	if (p == MAP_FAILED)
		return -errno;
	s->left = s->a;
	return 0;
}

static long fi_fork(struct fi_state *s)
{
	pid_t pid = fork();

	if (pid == 0)
		_exit(check_pages(s->a, FI_PAGES, FI_SEED, 1) < 0 &&
		      count_pfn_equal(s->a, s->b, FI_PAGES) == FI_PAGES ? 0 : 1);
	return pid < 0 ? -errno : pid;
}

static int fi_all_shared(struct fi_state *s)
{
	return count_pfn_equal(s->a, s->b, FI_PAGES) == FI_PAGES;
}

static int fi_none_shared(struct fi_state *s)
{
	return count_pfn_equal(s->a, s->b, FI_PAGES) == 0;
}

static int fi_returned(struct fi_state *s)
{
	return s->ret >= 0;
}

/* Merged after advising again. */
static int fi_shared(struct fi_state *s)
{
	return advise(s->a, FI_PAGES) || count_pfn_equal(s->a, s->b, FI_PAGES) != FI_PAGES;
}

/* Unmerged after unmerging again. */
static int fi_unshared(struct fi_state *s)
{
	return unmerge(s->a, FI_PAGES) || count_pfn_equal(s->a, s->b, FI_PAGES) != 0;
}

/* Wherever a is now, its pages still share b's frames, and rmap walks find them all. */
static int fi_moved(struct fi_state *s)
{
	if (s->ret == 0) {
		s->a = s->spare;
		s->spare = NULL; /* unmapped with a */
	}
	return count_pfn_equal(s->a, s->b, FI_PAGES) != FI_PAGES ||
	       move_set(s->a, s->b, FI_PAGES, !node_of(s->a)) != FI_PAGES;
}

static int fi_forked(struct fi_state *s)
{
	if (s->ret > 0 && wait_exit((pid_t)s->ret))
		return -1;
	return count_pfn_equal(s->a, s->b, FI_PAGES) != FI_PAGES ||
	       move_set(s->a, s->b, FI_PAGES, !node_of(s->a)) != FI_PAGES;
}

static const struct fi_op fi_ops[] = {
	{ "advise (pair with a candidate)", fi_candidate, fi_advise, fi_all_shared, fi_shared, 1 },
	{ "advise (merge into a node)", fi_node, fi_advise, fi_all_shared, fi_shared, 1 },
	{ "advise (frames a child shares)", fi_fork_shared, fi_advise, fi_all_shared, fi_shared, 1 },
	{ "unmerge", fi_merged, fi_unmerge, fi_none_shared, fi_unshared },
	{ "mremap (move)", fi_merged, fi_mremap, fi_returned, fi_moved },
	{ "mremap (MREMAP_DONTUNMAP)", fi_merged, fi_mremap_dontunmap, fi_returned, fi_moved },
	{ "fork", fi_merged, fi_fork, fi_returned, fi_forked },
};

static void fi_unmap(struct fi_state *s)
{
	char **maps[] = { &s->a, &s->b, &s->c, &s->spare, &s->left };

	for (size_t i = 0; i < ARRAY_SIZE(maps); i++)
		if (*maps[i])
			munmap(*maps[i], FI_PAGES * page_size);
	if (s->sharer > 0) {
		kill(s->sharer, SIGKILL);
		wait_exit(s->sharer);
	}
}

/*
 * One call of @op with its nth injection point failing. Returns 1 if the failure was
 * injected and everything checked out, 0 if the call passed fewer than n points (the sweep
 * is over), -1 on a failed check.
 */
static int fi_one(const struct fi_op *op, int fd, long nth, long *failed_calls,
		  long *undone_calls)
{
	struct fi_state s = { map_anon(FI_PAGES), map_anon(FI_PAGES), map_anon(FI_PAGES),
			      map_anon(FI_PAGES) };
	char arm[24], left[24] = { 0 };
	int injected, len = snprintf(arm, sizeof(arm), "%ld", nth), r = -1;

	if (!s.a || !s.b || !s.c || !s.spare)
		goto out;
	fill_pages(s.a, FI_PAGES, FI_SEED, 1);
	fill_pages(s.b, FI_PAGES, FI_SEED, 1);
	fill_pages(s.c, FI_PAGES, FI_SEED, 1);
	if (op->setup(&s)) {
		fprintf(stderr, "    %s, point %ld: setup failed\n", op->name, nth);
		goto out;
	}
	/* Nothing but the call between arming and reading back. */
	if (pwrite(fd, arm, len, 0) != len)
		goto out;
	s.ret = op->act(&s);
	if (pread(fd, left, sizeof(left) - 1, 0) <= 0 || pwrite(fd, "0", 1, 0) != 1)
		goto out;
	injected = atol(left) == 0;
	if (s.ret < 0 && s.ret != -ENOMEM && s.ret != -EAGAIN) {
		fprintf(stderr, "    %s, point %ld: errno %ld\n", op->name, nth, -s.ret);
		goto out;
	}
	*failed_calls += s.ret < 0;
	if (s.ret >= 0 && !op->done(&s)) {
		/* Success with the work undone is silent data loss but for advice. */
		if (!op->hint) {
			fprintf(stderr, "    %s, point %ld: succeeded, work undone\n", op->name, nth);
			goto out;
		}
		++*undone_calls;
	}
	if (check_pages(s.b, FI_PAGES, FI_SEED, 1) >= 0 ||
	    check_pages(s.c, FI_PAGES, FI_SEED, 1) >= 0 ||
	    check_pages(s.ret == 0 && s.spare && op->outcome == fi_moved ? s.spare : s.a,
			FI_PAGES, FI_SEED, 1) >= 0) {
		fprintf(stderr, "    %s, point %ld: contents changed\n", op->name, nth);
		goto out;
	}
	if (op->outcome(&s)) {
		fprintf(stderr, "    %s, point %ld (call returned %ld): wrong outcome after a retry\n",
			op->name, nth, s.ret);
		goto out;
	}
	r = injected;
out:
	fi_unmap(&s);
	return r;
}

/*
 * Each allocation on the path of advise, unmerge, mremap and fork fails in turn (the
 * kernel's fault injection, fail-nth: slab and page allocations, the module's included),
 * under KASAN and lockdep: the call fails with ENOMEM or EAGAIN, or succeeds without that
 * allocation; nothing else changes, a retry reaches the outcome, and the harness finds no
 * splat and no leak.
 */
static enum result test_fault_injection(void)
{
	char saved[ARRAY_SIZE(fail_nth_files)][SETTING_MAX];
	enum result r = PASS;
	int fd;

	SKIP_IF(access(FAIL_PAGE_ALLOC "min-order", F_OK) || access(FAILSLAB "verbose", F_OK),
		"no failslab or fail_page_alloc");
	CHECK(access("/sys/devices/system/node/node1", F_OK) == 0, "two NUMA nodes");
	fd = open("/proc/thread-self/fail-nth", O_RDWR);
	CHECK(fd >= 0, "fail-nth");
	save_settings(fail_nth_files, ARRAY_SIZE(fail_nth_files), saved);
	for (size_t i = 0; i < ARRAY_SIZE(fail_nth_files); i++)
		if (write_str(fail_nth_files[i], fail_nth_values[i]))
			r = FAIL;
	for (size_t i = 0; r == PASS && i < ARRAY_SIZE(fi_ops); i++) {
		long nth, failed_calls = 0, undone_calls = 0;
		int one = 1;

		for (nth = 1; nth <= FI_MAX_POINTS; nth++) {
			one = fi_one(&fi_ops[i], fd, nth, &failed_calls, &undone_calls);
			if (one != 1)
				break;
		}
		fprintf(stderr,
			"    %s: %ld injection points: %ld calls failed (ENOMEM/EAGAIN), %ld "
			"succeeded with pages left as they were\n",
			fi_ops[i].name, nth - 1, failed_calls, undone_calls);
		/* Premise: the path allocates, and some failures had an effect. */
		if (one != 0 || nth < 3 || failed_calls + undone_calls == 0)
			r = FAIL;
	}
	restore_settings(fail_nth_files, ARRAY_SIZE(fail_nth_files), saved);
	close(fd);
	CHECK(r == PASS, "see above");
	CHECK(wait_tree_empty() == 0, "UPM's index empties: %ld nodes", counter("stable_nodes"));
	return r;
}

/* ---- cross-process ---- */

static enum result test_partially_identical(void)
{
	uint64_t *pfns = map_shared(N * sizeof(uint64_t));
	char *a = map_anon(N);
	int ready[2];
	pid_t pid;
	char c;

	CHECK(pfns && a && pipe(ready) == 0, "setup");
	pid = fork();
	if (pid == 0) {
		char *b = map_anon(N);

		/* The first half is common, the second half is this process's own. */
		fill_pages(b, N / 2, 281, 1);
		fill_pages(b + N / 2 * page_size, N / 2, 283, 1);
		if (advise(b, N))
			_exit(2);
		for (size_t i = 0; i < N; i++)
			pfns[i] = pfn_of(b + i * page_size);
		if (write(ready[1], "r", 1) != 1)
			_exit(3);
		pause();
	}
	fill_pages(a, N / 2, 281, 1);
	fill_pages(a + N / 2 * page_size, N / 2, 282, 1);
	CHECK(read(ready[0], &c, 1) == 1, "child ready");
	CHECK(advise(a, N) == 0, "advise");
	size_t same = 0;

	for (size_t i = 0; i < N; i++)
		same += pfn_of(a + i * page_size) == pfns[i];
	CHECK(same == N / 2, "%zu frames shared, expected %d", same, N / 2);
	CHECK(counter("pages_sharing") == N / 2, "pages_sharing %ld", counter("pages_sharing"));
	/* The other process exits; this one keeps using the merged pages. */
	kill(pid, SIGKILL);
	wait_exit(pid);
	CHECK(counter("pages_sharing") == 0, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(check_pages(a, N / 2, 281, 1) < 0 &&
		      check_pages(a + N / 2 * page_size, N / 2, 282, 1) < 0,
	      "contents after the other exited");
	return PASS;
}

struct waiter {
	uint64_t *pfns; /* shared with the parent: the child's frame numbers */
	int go, ready;	/* pipe ends: parent -> child, child -> parent */
};

/* A process that fills its memory before the module is loaded and advises after. */
static int fill_before_load(void *arg)
{
	struct waiter *w = arg;
	char *b = map_anon(N);
	char c;

	fill_pages(b, N, 291, 1);
	if (advise(b, N) == 0 || errno != EINVAL)
		return 2;
	if (write(w->ready, "r", 1) != 1 || read(w->go, &c, 1) != 1)
		return 3;
	if (advise(b, N))
		return 4;
	for (size_t i = 0; i < N; i++)
		w->pfns[i] = pfn_of(b + i * page_size);
	if (write(w->ready, "r", 1) != 1 || read(w->go, &c, 1) != 1)
		return 5;
	return check_pages(b, N, 291, 1) < 0 ? 0 : 6;
}

static enum result test_started_before_load(void)
{
	int go[2], ready[2];
	struct waiter w;
	char *a = map_anon(N);
	pid_t pid;
	char c;

	CHECK(a && pipe(go) == 0 && pipe(ready) == 0, "setup");
	w = (struct waiter){ .pfns = map_shared(N * sizeof(uint64_t)), .go = go[0],
			     .ready = ready[1] };
	CHECK(w.pfns, "shared map");
	CHECK(module_unload() == 0, "rmmod");
	pid = spawn(fill_before_load, &w);
	fill_pages(a, N, 291, 1);
	CHECK(read(ready[0], &c, 1) == 1, "child filled its memory without the module");
	CHECK(module_load() == 0, "insmod");
	CHECK(write(go[1], "g", 1) == 1 && read(ready[0], &c, 1) == 1, "child advised");
	CHECK(advise(a, N) == 0, "advise");
	size_t same = 0;

	for (size_t i = 0; i < N; i++)
		same += pfn_of(a + i * page_size) == w.pfns[i];
	CHECK(same == N, "%zu of %d frames shared", same, N);
	CHECK(write(go[1], "g", 1) == 1 && wait_exit(pid) == 0, "child checks");
	return PASS;
}

/* ---- writes racing with the merge ---- */

/*
 * The kernel's debugfs knob that holds every UPM merge in its windows (patch 0014), and the
 * windows it counts: per merge path, those held and those in which a page was written.
 */
#define WINDOWS "/sys/kernel/debug/upm/"
#define WINDOW_DELAY_US 2000
enum { WINDOW_PATHS = 3, WINDOWS_PER_PATH = 2 };

static const char *const window_path[WINDOW_PATHS] = { "pair", "stable", "zero" };
static const char *const window_name[WINDOWS_PER_PATH] = { "before_wrprotect", "before_map" };

struct windows {
	long held[WINDOW_PATHS][WINDOWS_PER_PATH], written[WINDOW_PATHS][WINDOWS_PER_PATH];
};

static int read_windows(struct windows *w)
{
	FILE *f = fopen(WINDOWS "windows", "r");
	char path[16], window[32];
	long held, written;
	int found = 0;

	if (!f)
		return -1;
	while (fscanf(f, "%15s %31s held %ld written %ld", path, window, &held, &written) == 4)
		for (int p = 0; p < WINDOW_PATHS; p++)
			for (int i = 0; i < WINDOWS_PER_PATH; i++)
				if (!strcmp(path, window_path[p]) && !strcmp(window, window_name[i])) {
					w->held[p][i] = held;
					w->written[p][i] = written;
					found++;
				}
	fclose(f);
	return found == WINDOW_PATHS * WINDOWS_PER_PATH ? 0 : -1;
}

/* The fewest windows written through on any path since @before. */
static long fewest_written(const struct windows *before)
{
	struct windows now;
	long fewest = LONG_MAX;

	if (read_windows(&now))
		return -1;
	for (int p = 0; p < WINDOW_PATHS; p++)
		for (int i = 0; i < WINDOWS_PER_PATH; i++)
			if (now.written[p][i] - before->written[p][i] < fewest)
				fewest = now.written[p][i] - before->written[p][i];
	return fewest;
}

/*
 * Two writers race the merges: one over pages against their twins (pairs, then stable
 * pages), one over pages of zeroes (word 0 flips between 0 and a sequence number) against the
 * zero page. Where the kernel can widen the windows of a merge (fault injection's debugfs),
 * every merge is held 2 ms in each, and the writers write each page every 8 ms: rounds go on
 * until a write landed in each window of each path a few times, and every other round unmerges
 * the pairs so that the next one pairs again.
 * Elsewhere the writes land where chance puts them, for 10 s.
 */
static enum result test_racing_writes(void)
{
	struct race r = { .pages = 64 }, z = { .pages = 64 };
	long merged = counter("pages_merged"), collisions = counter("hash_collisions"), calls = 0;
	long zero_merged = counter("pages_zero_merged"), advise_failed = 0, fewest = 0;
	int widened = access(WINDOWS "window_delay_us", F_OK) == 0;
	pthread_t writer, zero_writer;
	struct windows before, after;
	time_t start, end;
	char *b;

	z.a = map_anon(z.pages);
	CHECK(z.a && map_twins(&r.a, &b, r.pages, 351) == 0, "setup");
	memset(z.a, 0, z.pages * page_size);
	CHECK(advise(b, r.pages) == 0, "advise the twin: candidates to pair with");
	CHECK(!widened || read_windows(&before) == 0, "read " WINDOWS "windows");
	/* Each page written every 8 ms, so some merges also win. */
	if (widened)
		r.pace_ns = z.pace_ns = 8000000 / r.pages;
	CHECK(pthread_create(&writer, NULL, flip_words, &r) == 0, "writer");
	if (pthread_create(&zero_writer, NULL, flip_words, &z)) {
		r.stop = 1;
		pthread_join(writer, NULL);
		CHECK(0, "zero-page writer");
	}
	if (widened && write_long(WINDOWS "window_delay_us", WINDOW_DELAY_US))
		advise_failed = -1;
	start = time(NULL);
	end = start + (widened ? 60 : 10);
	for (; advise_failed == 0 && !r.lost && !z.lost && time(NULL) < end; calls++) {
		/* Pairs with b's candidates, then merges what was written since into their pages. */
		advise_failed += advise(r.a, r.pages) != 0 || advise(r.a, r.pages) != 0 ||
				 advise(z.a, z.pages) != 0;
		if (!widened)
			continue;
		fewest = fewest_written(&before);
		if (fewest >= 3 && time(NULL) >= start + 5)
			break;
		if (calls % 2) /* the next round pairs again; the one after meets stable pages */
			advise_failed += unmerge(r.a, r.pages) != 0 || unmerge(b, r.pages) != 0 ||
					 advise(b, r.pages) != 0;
	}
	if (widened && write_long(WINDOWS "window_delay_us", 0))
		advise_failed++;
	r.stop = z.stop = 1;
	pthread_join(writer, NULL);
	pthread_join(zero_writer, NULL);
	collisions = counter("hash_collisions") - collisions;
	zero_merged = counter("pages_zero_merged") - zero_merged;
	fprintf(stderr, "    %ld rounds in %ld s, %ld + %ld writes, %ld merges, %ld zero pages, "
		"%ld compares failed\n", calls, (long)(time(NULL) - start), r.writes, z.writes,
		counter("pages_merged") - merged, zero_merged, collisions);
	CHECK(advise_failed == 0, "%ld advise calls failed (or the delay could not be set)",
	      advise_failed);
	CHECK(r.lost == 0, "%ld of %ld writes lost", r.lost, r.writes);
	CHECK(z.lost == 0, "%ld of %ld writes to zeroed pages lost", z.lost, z.writes);
	CHECK(counter("pages_merged") - merged > 0, "no merge raced with the writer");
	CHECK(zero_merged > 0, "no zero-page merge raced with the writer");
	for (size_t i = 0; i < z.pages * page_size; i++)
		CHECK(z.a[i] == 0, "zeroed pages read back %d at %zu", z.a[i], i);
	/* The window this test exists for: a write after hashing, caught by the compare. */
	CHECK(collisions > 0, "no write landed between hash and write-protect");
	CHECK(check_pages(r.a, r.pages, 351, 1) < 0 && check_pages(b, r.pages, 351, 1) < 0,
	      "contents");
	if (widened) {
		/* The premise, per path and window: writes landed there, on purpose. */
		CHECK(read_windows(&after) == 0, "read " WINDOWS "windows");
		for (int p = 0; p < WINDOW_PATHS; p++)
			for (int i = 0; i < WINDOWS_PER_PATH; i++) {
				long held = after.held[p][i] - before.held[p][i];
				long written = after.written[p][i] - before.written[p][i];

				fprintf(stderr, "    %s %s: %ld windows held, %ld written\n",
					window_path[p], window_name[i], held, written);
				CHECK(written > 0, "no write landed in %s's window %s (%ld held)",
				      window_path[p], window_name[i], held);
			}
	}
	return PASS;
}

/* ---- what must not merge ---- */

static enum result test_file_backed(void)
{
	char path[2][32] = { "/tmp/upm-file-XXXXXX", "/tmp/upm-file-XXXXXX" };
	char *src = map_anon(N), *f[2];
	long vma = counter("pages_skipped_vma"), other;

	CHECK(src, "mmap");
	fill_pages(src, N, 301, 1);
	for (int i = 0; i < 2; i++) {
		int fd = mkstemp(path[i]);

		CHECK(fd >= 0, "mkstemp");
		unlink(path[i]);
		CHECK(write(fd, src, N * page_size) == (ssize_t)(N * page_size), "write file");
		f[i] = mmap(NULL, N * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		CHECK(f[i] != MAP_FAILED, "mmap file");
		CHECK(check_pages(f[i], N, 301, 1) < 0, "read the file (page cache faulted in)");
		close(fd);
	}
	/* Only page cache mapped: no anonymous page, nothing to merge. */
	CHECK(advise(f[0], N) == 0 && advise(f[1], N) == 0, "advise");
	CHECK(count_pfn_equal(f[0], f[1], N) == 0, "page cache merged");
	CHECK(counter("pages_skipped_vma") - vma == 2 * N, "skipped %ld",
	      counter("pages_skipped_vma") - vma);
	/* Written pages become private anonymous copies, which merge; the rest stays. */
	for (int i = 0; i < 2; i++)
		for (size_t p = 0; p < N / 2; p++)
			((volatile char *)f[i])[p * page_size] ^= 0;
	other = counter("pages_skipped_other");
	CHECK(advise(f[0], N) == 0 && advise(f[1], N) == 0, "advise");
	CHECK(count_pfn_equal(f[0], f[1], N / 2) == N / 2, "anonymous copies merged: %zu",
	      count_pfn_equal(f[0], f[1], N / 2));
	CHECK(count_pfn_equal(f[0] + N / 2 * page_size, f[1] + N / 2 * page_size, N / 2) == 0,
	      "page cache merged");
	CHECK(counter("pages_skipped_other") - other == N, "file pages skipped %ld",
	      counter("pages_skipped_other") - other);
	CHECK(check_pages(f[0], N, 301, 1) < 0 && check_pages(f[1], N, 301, 1) < 0, "contents");
	return PASS;
}

static enum result hugetlb_body(void)
{
	size_t huge = 2 << 20, pages = huge / page_size;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB;
	char *a = mmap(NULL, huge, PROT_READ | PROT_WRITE, flags, -1, 0);
	char *b = mmap(NULL, huge, PROT_READ | PROT_WRITE, flags, -1, 0);
	long vma = counter("pages_skipped_vma");

	CHECK(a != MAP_FAILED && b != MAP_FAILED, "hugetlb mmap");
	fill_pages(a, pages, 311, 1);
	fill_pages(b, pages, 311, 1);
	CHECK(advise(a, pages) == 0 && advise(b, pages) == 0, "advise");
	CHECK(counter("pages_skipped_vma") - vma == 2 * (long)pages, "skipped %ld",
	      counter("pages_skipped_vma") - vma);
	CHECK(pfn_of(a) && pfn_of(a) != pfn_of(b), "hugetlb pages merged");
	CHECK(check_pages(a, pages, 311, 1) < 0 && check_pages(b, pages, 311, 1) < 0,
	      "contents");
	munmap(a, huge);
	munmap(b, huge);
	return PASS;
}

static enum result test_hugetlb(void)
{
	const char *knob = "/proc/sys/vm/nr_hugepages";
	long saved = read_long(knob), now;
	enum result r;

	CHECK(write_long(knob, saved + 2) == 0, "reserve huge pages");
	now = read_long(knob);
	r = now >= saved + 2 ? hugetlb_body() : SKIP;
	write_long(knob, saved);
	SKIP_IF(r == SKIP, "no free 2 MiB pages");
	return r;
}

static enum result test_pfnmap(void)
{
	int fd = open("/dev/mem", O_RDWR | O_CLOEXEC);
	size_t pages = 16;
	char *t = map_anon(pages), *m;
	long vma;

	CHECK(fd >= 0 && t, "open /dev/mem (CONFIG_DEVMEM)");
	/* A private /dev/mem mapping is VM_IO | VM_PFNMAP; writes give anonymous copies. */
	m = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(m != MAP_FAILED, "mmap /dev/mem");
	fill_pages(m, pages, 321, 1);
	fill_pages(t, pages, 321, 1);
	CHECK(advise(t, pages) == 0, "advise twin");
	vma = counter("pages_skipped_vma");
	CHECK(advise(m, pages) == 0, "advise PFN mapping");
	CHECK(counter("pages_skipped_vma") - vma == (long)pages, "skipped %ld",
	      counter("pages_skipped_vma") - vma);
	CHECK(count_pfn_equal(m, t, pages) == 0, "PFN-mapped COW pages merged");
	CHECK(check_pages(m, pages, 321, 1) < 0, "contents");
	munmap(m, pages * page_size);
	close(fd);
	return PASS;
}

/* ---- memory pressure ---- */

#define CG_NAME "upm-test"
#define CG_DIR "/sys/fs/cgroup/" CG_NAME
#define SHARER_PAGES 2048 /* 8 MiB each */

struct pressure {
	int ready, go;
	int failed_calls, last_errno; /* advise calls that failed under the limit */
};

/* Fills 8 MiB of common contents 1 MiB at a time, merging as it goes; checks it twice. */
static int sharer(void *arg)
{
	struct pressure *p = arg;
	char *b;

	if (join_cgroup(CG_NAME))
		return 2;
	b = map_anon(SHARER_PAGES);
	/*
	 * Small pages only: under the limit a huge page left whole as a candidate often cannot be
	 * split when its twin comes (reclaim holds references), a case the thp tests cover.
	 */
	if (!b || madvise(b, SHARER_PAGES * page_size, MADV_NOHUGEPAGE))
		return 3;
	for (size_t off = 0; off < SHARER_PAGES; off += 256) {
		fill_pages(b + off * page_size, 256, 331 + off, 1);
		/* May fail under the limit (the caller gets the error): contents matter. */
		if (advise(b + off * page_size, 256)) {
			p->last_errno = errno;
			__atomic_add_fetch(&p->failed_calls, 1, __ATOMIC_SEQ_CST);
		}
	}
	__atomic_add_fetch(&p->ready, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&p->go, __ATOMIC_SEQ_CST))
		usleep(10 * 1000);
	for (size_t off = 0; off < SHARER_PAGES; off += 256)
		if (check_pages(b + off * page_size, 256, 331 + off, 1) >= 0)
			return 4;
	return 0;
}

/* Distinct pages, far more than the cgroup allows: the OOM killer's target. */
static int hog(void *arg)
{
	size_t pages = 64 << 20 >> 12;
	char *h;

	(void)arg;
	if (join_cgroup(CG_NAME) || write_str("/proc/self/oom_score_adj", "1000"))
		return 2;
	h = map_anon(pages);
	if (!h)
		return 3;
	fill_pages(h, pages, 341, 1);
	return 5; /* survived: the limit did not hold */
}

static enum result pressure_body(void)
{
	struct pressure *p = map_shared(sizeof(*p));
	pid_t pids[4], hog_pid;
	int survivors = 0, status;
	const char *skips[] = { "pages_skipped_busy", "pages_skipped_pinned",
				"pages_skipped_other", "pages_skipped_not_present",
				"pages_skipped_thp" };
	const char *all[] = { "pages_scanned", "pages_merged", "pages_promoted",
			      "pages_already_merged", "hash_collisions", "stable_pages_freed",
			      "pages_zero_merged" };
	long skipped = 0, before[ARRAY_SIZE(all)];

	for (size_t i = 0; i < ARRAY_SIZE(skips); i++)
		skipped -= counter(skips[i]);
	for (size_t i = 0; i < ARRAY_SIZE(all); i++)
		before[i] = counter(all[i]);
	CHECK(p, "shared map");
	CHECK(write_long(CG_DIR "/memory.max", 16 << 20) == 0, "memory.max = 16 MiB");
	CHECK(write_long(CG_DIR "/memory.swap.max", 0) == 0 || errno == ENOENT, "no swap");
	for (int i = 0; i < 4; i++)
		pids[i] = spawn(sharer, p);
	for (int i = 0; i < 1200 && __atomic_load_n(&p->ready, __ATOMIC_SEQ_CST) < 4; i++)
		usleep(100 * 1000);
	CHECK(p->ready == 4, "only %d of 4 sharers filled 8 MiB each in a 16 MiB cgroup",
	      p->ready);
	/*
	 * Under the limit a page can be caught unmapped (reclaim, migration) or busy, each
	 * counted as skipped, and an advise call can fail (its caller got the error; up to all of
	 * its 256 pages unmerged). Every other page must be shared, and the bulk must be.
	 */
	for (size_t i = 0; i < ARRAY_SIZE(skips); i++)
		skipped += counter(skips[i]);
	long explained = skipped + 256L * p->failed_calls, sharing = counter("pages_sharing");

	fprintf(stderr, "    pages_sharing %ld of %d; %ld pages skipped, %d advise calls failed "
		"(last errno %d);", sharing, 3 * SHARER_PAGES, skipped, p->failed_calls,
		p->last_errno);
	for (size_t i = 0; i < ARRAY_SIZE(all); i++)
		fprintf(stderr, " %s +%ld", all[i] + (all[i][0] == 'p' ? 6 : 0),
			counter(all[i]) - before[i]);
	fprintf(stderr, "\n");
	CHECK(sharing + explained >= 3 * SHARER_PAGES && sharing >= 3 * SHARER_PAGES / 2,
	      "%ld pages not shared for no reason counted (candidates left %ld)",
	      3 * SHARER_PAGES - sharing - explained, counter("candidates"));
	hog_pid = spawn(hog, NULL);
	CHECK(waitpid(hog_pid, &status, 0) == hog_pid, "wait hog");
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "hog not OOM-killed (%#x)",
	      status);
	__atomic_store_n(&p->go, 1, __ATOMIC_SEQ_CST);
	for (int i = 0; i < 4; i++) {
		int rc = wait_exit(pids[i]);

		CHECK(rc == 0 || rc == 128 + SIGKILL, "sharer %d: %d (4: contents changed)", i, rc);
		survivors += rc == 0;
	}
	CHECK(survivors == 4, "the OOM killer took %d sharers, not the hog", 4 - survivors);
	CHECK(key_value(CG_DIR "/memory.events", "oom_kill") >= 1, "oom_kill events %ld",
	      key_value(CG_DIR "/memory.events", "oom_kill"));
	return PASS;
}

static enum result test_memcg_pressure(void)
{
	const char *control = "/sys/fs/cgroup/cgroup.subtree_control";
	char enabled[256] = "";
	int mounted = 0, fd;
	enum result r;

	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK)) {
		CHECK(mount("none", "/sys/fs/cgroup", "cgroup2", 0, NULL) == 0, "mount cgroup2");
		mounted = 1;
	}
	fd = open(control, O_RDONLY);
	CHECK(fd >= 0 && read(fd, enabled, sizeof(enabled) - 1) >= 0, "read %s", control);
	close(fd);
	CHECK(write_str(control, "+memory") == 0, "enable the memory controller");
	CHECK(mkdir(CG_DIR, 0755) == 0, "mkdir " CG_DIR);
	r = pressure_body();
	/* Leave the system as it was: no test cgroup, controller and mount as before. */
	for (int i = 0; i < 100 && rmdir(CG_DIR) && errno == EBUSY; i++)
		usleep(50 * 1000);
	if (!strstr(enabled, "memory"))
		write_str(control, "-memory");
	if (mounted)
		umount("/sys/fs/cgroup");
	return r;
}

/*
 * rmmod while a reader holds a sysfs file open: the file is gone for it (ENODEV), not a call
 * into freed module code, also when CONFIG_DEBUG_KOBJECT_RELEASE delays the kobject's
 * release; and the directory comes back at once with the next insmod.
 */
static enum result test_rmmod_open_sysfs(void)
{
	char buf[64];
	int fd = open(UPM_SYSFS_DIR "/pages_sharing", O_RDONLY);
	int wfd = open(UPM_SYSFS_DIR "/sweep_millisecs", O_WRONLY);
	ssize_t n, w;
	int read_err, write_err;

	CHECK(fd >= 0 && wfd >= 0, "open");
	CHECK(pread(fd, buf, sizeof(buf), 0) > 0, "read before rmmod");
	CHECK(module_unload() == 0, "rmmod with sysfs files open");
	errno = 0;
	n = pread(fd, buf, sizeof(buf), 0);
	read_err = errno;
	errno = 0;
	w = pwrite(wfd, "1000", 4, 0);
	write_err = errno;
	close(fd);
	close(wfd);
	CHECK(module_load() == 0, "insmod right after");
	CHECK(n < 0 && read_err == ENODEV, "read after rmmod: %zd, errno %d", n, read_err);
	CHECK(w < 0 && write_err == ENODEV, "write after rmmod: %zd, errno %d", w, write_err);
	CHECK(counter("pages_sharing") == 0, "the new directory reads");
	return PASS;
}

/*
 * A live process that unmaps advised memory leaves no candidates behind: the sweep drops
 * those whose area is gone, so the index does not grow with a runtime's frees.
 */
static enum result test_munmap_drops_candidates(void)
{
	const size_t n = 256;
	long before = counter("candidates");
	char *p = map_anon(n), *keep = map_anon(1);
	long after_advise;

	CHECK(p && keep, "map");
	fill_pages(p, n, 71, 1);
	fill_pages(keep, 1, 72, 1);
	CHECK(advise(p, n) == 0 && advise(keep, 1) == 0, "advise");
	after_advise = counter("candidates");
	CHECK(after_advise == before + (long)n + 1, "candidates %ld -> %ld", before, after_advise);
	CHECK(munmap(p, n * page_size) == 0, "munmap");
	/* The second pass began after the munmap: it saw the candidates' area gone. */
	CHECK(wait_sweep_passes(2) == 0, "sweep");
	CHECK(counter("candidates") == before + 1,
	      "%ld candidates two sweep passes after munmap (the mapped one must stay)",
	      counter("candidates"));
	return PASS;
}

const struct test lifecycle_tests[] = {
	{ "munmap_drops_candidates", test_munmap_drops_candidates,
	  "unmapped candidates of a live process are swept" },
	{ "rmmod_open_sysfs", test_rmmod_open_sysfs, "rmmod with sysfs files open: ENODEV" },
	{ "uffd_wp", test_uffd_wp, "unmerge under uffd-wp; wp areas not merged" },
	{ "munmap_partial", test_munmap_partial, "partial and whole munmap of merged pages" },
	{ "mremap_grow", test_mremap_grow, "merged pages move with a growing mapping" },
	{ "mprotect_roundtrip", test_mprotect_roundtrip, "r/o, PROT_NONE and back: still COW" },
	{ "mlock", test_mlock, "mlock breaks COW; locked pages merge again" },
	{ "fork_exec", test_fork_exec, "fork + exec leaves the parent's pages merged" },
	{ "fork_fails_after_merge", test_fork_fails_after_merge,
	  "a fork failing in dup_mmap leaves the parent's merged pages whole",
	  .needs_fault_injection = 1 },
	{ "fault_injection", test_fault_injection,
	  "each allocation of advise, unmerge, mremap, fork failing in turn: errno, no damage",
	  .needs_fault_injection = 1 },
	{ "partially_identical", test_partially_identical, "half shared; the other exits" },
	{ "racing_writes", test_racing_writes, "no write lost to a concurrent merge" },
	{ "started_before_load", test_started_before_load, "memory filled before insmod" },
	{ "file_backed", test_file_backed, "page cache never merged; COW copies are" },
	{ "hugetlb", test_hugetlb, "hugetlb pages skipped" },
	{ "pfnmap", test_pfnmap, "COW pages in a VM_PFNMAP mapping skipped" },
	{ "memcg_pressure", test_memcg_pressure, "16 MiB memcg, OOM kill; survivors intact" },
};
const size_t lifecycle_test_count = ARRAY_SIZE(lifecycle_tests);
