// SPDX-License-Identifier: GPL-2.0
/*
 * UPM's basic tests: merging and unmerging within and across processes, what must never
 * merge (shared, untouched, pinned, THP), bad input, process_madvise, a fatal signal during
 * a long advise, and every counter exactly. Run by upm_tests (runner.c).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdarg.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define N 128 /* pages per region: big enough to matter, small enough under KASAN */

/* ---- basic merging ---- */

static enum result test_merge_two_regions(void)
{
	char *a, *b;
	long pss_before, pss_after;

	CHECK(map_twins(&a, &b, N, 1) == 0, "mmap");
	pss_before = proc_kb("/proc/self/smaps_rollup", "Pss_Anon");
	CHECK(advise(a, N) == 0, "advise a");
	CHECK(advise(b, N) == 0, "advise b");
	pss_after = proc_kb("/proc/self/smaps_rollup", "Pss_Anon");
	CHECK(count_pfn_equal(a, b, N) == N, "all %d pages share frames, %zu do", N,
	      count_pfn_equal(a, b, N));
	CHECK(counter("pages_sharing") == N, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(counter("pages_shared") == N, "pages_shared %ld", counter("pages_shared"));
	CHECK(counter("pages_unshared") == 0, "pages_unshared %ld", counter("pages_unshared"));
	/* N frames mapped twice instead of 2N frames: the proportional set drops by N pages. */
	CHECK(pss_before - pss_after >= (long)(N * page_size / 1024) - 8, "Pss_Anon %ld -> %ld kB",
	      pss_before, pss_after);
	CHECK(check_pages(a, N, 1, 1) < 0 && check_pages(b, N, 1, 1) < 0, "contents intact");

	/* A write on either side stays private. */
	a[5 * page_size] ^= 0xff;
	CHECK(pfn_of(a + 5 * page_size) != pfn_of(b + 5 * page_size), "COW gave a private copy");
	CHECK(check_pages(b, N, 1, 1) < 0, "other side unchanged");
	a[5 * page_size] ^= 0xff;
	CHECK(check_pages(a, N, 1, 1) < 0, "writer sees its own write");
	CHECK(counter("pages_sharing") == N - 1, "pages_sharing %ld after COW",
	      counter("pages_sharing"));
	return PASS;
}

static enum result test_same_content_one_process(void)
{
	char *a = map_anon(N);
	long scanned = counter("pages_scanned");

	CHECK(a, "mmap");
	fill_pages(a, N, 7, 0); /* every page identical */
	CHECK(advise(a, N) == 0, "advise");
	CHECK(distinct_pfns(a, N) == 1, "one frame, got %zu", distinct_pfns(a, N));
	CHECK(counter("pages_shared") == 1, "pages_shared %ld", counter("pages_shared"));
	CHECK(counter("pages_sharing") == N - 1, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(counter("pages_scanned") - scanned == N, "scanned %ld",
	      counter("pages_scanned") - scanned);
	CHECK(check_pages(a, N, 7, 0) < 0, "contents");
	return PASS;
}

static enum result test_all_different(void)
{
	char *a = map_anon(N);
	long cands = counter("candidates"), already = counter("pages_already_merged");
	uint64_t before[N];

	CHECK(a, "mmap");
	fill_pages(a, N, 3, 1);
	for (size_t i = 0; i < N; i++)
		before[i] = pfn_of(a + i * page_size);
	CHECK(advise(a, N) == 0, "advise");
	/* No twin anywhere: every page stays the ordinary page it was. */
	for (size_t i = 0; i < N; i++)
		CHECK(pfn_of(a + i * page_size) == before[i], "page %zu moved", i);
	CHECK(proc_kb("/proc/self/smaps_rollup", "KSM") == 0, "KSM: %ld kB",
	      proc_kb("/proc/self/smaps_rollup", "KSM"));
	CHECK(counter("pages_unshared") == 0 && counter("stable_nodes") == 0,
	      "pages_unshared %ld, stable_nodes %ld", counter("pages_unshared"),
	      counter("stable_nodes"));
	CHECK(counter("candidates") - cands == N, "candidates +%ld", counter("candidates") - cands);
	CHECK(check_pages(a, N, 3, 1) < 0, "contents");
	/* Advising again replaces each page's candidate rather than adding one. */
	CHECK(advise(a, N) == 0, "re-advise");
	CHECK(counter("candidates") - cands == N, "candidates +%ld", counter("candidates") - cands);
	CHECK(counter("pages_already_merged") == already, "already merged +%ld",
	      counter("pages_already_merged") - already);
	return PASS;
}

static enum result test_zero_pages(void)
{
	char *a = map_anon(N);
	uint64_t zpfn = zero_pfn();
	long zero_before = counter("zero_pages");

	CHECK(a && zpfn, "mmap");
	memset(a, 0, N * page_size); /* faults in N private zero-filled pages */
	CHECK(pfn_of(a) != zpfn, "private before");
	CHECK(advise(a, N) == 0, "advise");
	for (size_t i = 0; i < N; i++)
		CHECK(pfn_of(a + i * page_size) == zpfn, "page %zu maps the zero page", i);
	CHECK(counter("zero_pages") - zero_before == N, "zero_pages +%ld",
	      counter("zero_pages") - zero_before);
	CHECK(counter("stable_nodes") == 0, "no stable node for zero pages");
	CHECK(unmerge(a, N) == 0, "unmerge");
	CHECK(pfn_of(a) != zpfn && pfn_of(a) != 0, "private after unmerge");
	CHECK(counter("zero_pages") == zero_before, "zero_pages back to %ld: %ld", zero_before,
	      counter("zero_pages"));
	for (size_t i = 0; i < N * page_size; i++)
		CHECK(a[i] == 0, "byte %zu zero", i);
	/* With the tunable off, zero pages become one stable page instead. */
	CHECK(set_tunable("use_zero_pages", 0) == 0, "tunable");
	CHECK(advise(a, N) == 0, "advise");
	set_tunable("use_zero_pages", 1);
	CHECK(pfn_of(a) != zpfn && distinct_pfns(a, N) == 1, "one stable zero-filled page");
	/* A write to the zero page's KSM mapping gets a private page. */
	a[0] = 1;
	CHECK(a[1] == 0 && a[page_size] == 0, "contents");
	return PASS;
}

static enum result test_unmerge(void)
{
	char *a, *b;

	CHECK(map_twins(&a, &b, N, 11) == 0, "mmap");
	CHECK(advise(a, N) == 0 && advise(b, N) == 0, "advise");
	CHECK(count_pfn_equal(a, b, N) == N, "merged");
	CHECK(unmerge(b, N) == 0, "unmerge b");
	CHECK(count_pfn_equal(a, b, N) == 0, "b private: %zu shared", count_pfn_equal(a, b, N));
	CHECK(check_pages(b, N, 11, 1) < 0 && check_pages(a, N, 11, 1) < 0, "contents");
	CHECK(counter("pages_sharing") == 0, "pages_sharing %ld", counter("pages_sharing"));
	CHECK(counter("pages_unshared") == N, "pages_unshared %ld", counter("pages_unshared"));
	CHECK(unmerge(a, N) == 0, "unmerge a");
	CHECK(distinct_pfns(a, N) == N, "a private");
	CHECK(wait_tree_empty() == 0, "stable nodes swept: %ld", counter("stable_nodes"));
	return PASS;
}

static enum result test_unmerge_after_dontneed(void)
{
	char *a, *b;

	CHECK(map_twins(&a, &b, N, 12) == 0, "mmap");
	CHECK(advise(a, N) == 0 && advise(b, N) == 0, "advise");
	CHECK(madvise(a, N / 2 * page_size, MADV_DONTNEED) == 0, "dontneed");
	CHECK(unmerge(a, N) == 0, "unmerge");
	CHECK(a[0] == 0 && a[N / 2 * page_size - 1] == 0, "dropped half reads zero");
	CHECK(!memcmp(a + N / 2 * page_size, b + N / 2 * page_size, N / 2 * page_size),
	      "kept half intact");
	CHECK(count_pfn_equal(a, b, N) == 0, "a private after unmerge");
	CHECK(check_pages(b, N, 12, 1) < 0, "other region intact");
	return PASS;
}

static enum result test_cross_process(void)
{
	uint64_t *pfns = map_shared(2 * N * sizeof(uint64_t));
	int go[2], ready[2];
	char *a = map_anon(N);
	pid_t pid;
	char c;

	CHECK(pfns && a && pipe(go) == 0 && pipe(ready) == 0, "setup");
	pid = fork();
	if (pid == 0) {
		char *b = map_anon(N);

		fill_pages(b, N, 21, 1);
		if (advise(b, N))
			_exit(2);
		for (size_t i = 0; i < N; i++)
			pfns[i] = pfn_of(b + i * page_size);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(3);
		/* Parent wrote to its copy: ours must be unchanged; then write ours. */
		if (check_pages(b, N, 21, 1) >= 0)
			_exit(4);
		memset(b, 0x5a, page_size);
		for (size_t i = 0; i < N; i++)
			pfns[N + i] = pfn_of(b + i * page_size);
		_exit(write(ready[1], "r", 1) == 1 ? 0 : 5);
	}
	fill_pages(a, N, 21, 1);
	CHECK(advise(a, N) == 0, "advise");
	CHECK(read(ready[0], &c, 1) == 1, "child ready");
	size_t same = 0;

	for (size_t i = 0; i < N; i++)
		same += pfn_of(a + i * page_size) == pfns[i];
	CHECK(same == N, "%zu of %d frames shared across processes", same, N);
	CHECK(counter("pages_sharing") == N, "pages_sharing %ld", counter("pages_sharing"));
	a[page_size] ^= 1;
	CHECK(write(go[1], "g", 1) == 1 && read(ready[0], &c, 1) == 1, "sync");
	CHECK(pfns[N] != pfn_of(a), "child's write made a private copy");
	CHECK(check_pages(a, 1, 21, 1) < 0, "parent page 0 unchanged by child write");
	CHECK(wait_exit(pid) == 0, "child checks");
	CHECK(counter("pages_sharing") == 0, "after child exit: sharing %ld",
	      counter("pages_sharing"));
	return PASS;
}

/* Threads that keep their process's mmap_lock contended until *stop. */
struct lock_hog {
	char *area; /* mlocked and munlocked in turn */
	size_t bytes;
	volatile int *stop;
};

static void *hog_mlock(void *arg)
{
	struct lock_hog *h = arg;

	while (!*h->stop) {
		/* Populates under mmap_lock (read); munlock walks the area under it (write). */
		if (mlock(h->area, h->bytes) == 0)
			munlock(h->area, h->bytes);
	}
	return NULL;
}

static void *hog_mmap(void *arg)
{
	struct lock_hog *h = arg;

	while (!*h->stop) {
		/* A writer waiting for mmap_lock makes every trylock of it fail. */
		void *p = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);

		if (p != MAP_FAILED)
			munmap(p, page_size);
	}
	return NULL;
}

/*
 * The candidates' process keeps its mmap_lock busy (two threads: mlock/munlock of 32 MiB,
 * mmap/munmap) while the parent advises their twins. An adviser never waits for another mm's
 * lock while holding its own, so these pairings fail at first; the end of the call pairs them
 * from the candidate's side, holding only that mm's lock. Every page is shared, none skipped.
 */
static enum result test_busy_candidates(void)
{
	struct { volatile uintptr_t addr; volatile int stop; } *shared = map_shared(page_size);
	int go[2], ready[2];
	char *a = map_anon(N);
	pid_t pid;
	char c;

	CHECK(shared && a && pipe(go) == 0 && pipe(ready) == 0, "setup");
	pid = fork();
	if (pid == 0) {
		struct lock_hog hog = { .bytes = 32 << 20, .stop = &shared->stop };
		char *b = map_anon(N);
		pthread_t t[2];

		hog.area = map_anon(hog.bytes / page_size);
		if (!b || !hog.area)
			_exit(2);
		fill_pages(b, N, 41, 1);
		if (advise(b, N)) /* candidates: no twin yet */
			_exit(3);
		shared->addr = (uintptr_t)b;
		if (pthread_create(&t[0], NULL, hog_mlock, &hog) ||
		    pthread_create(&t[1], NULL, hog_mmap, &hog))
			_exit(4);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(5);
		shared->stop = 1;
		pthread_join(t[0], NULL);
		pthread_join(t[1], NULL);
		_exit(check_pages(b, N, 41, 1) < 0 ? 0 : 6);
	}
	fill_pages(a, N, 41, 1);
	CHECK(read(ready[0], &c, 1) == 1, "child ready");
	usleep(100 * 1000); /* the hogs at work */

	long busy = counter("pages_skipped_busy"), merged = counter("pages_merged");
	int advised = advise(a, N);

	busy = counter("pages_skipped_busy") - busy;
	merged = counter("pages_merged") - merged;
	size_t same = 0;

	for (size_t i = 0; i < N; i++)
		same += pfn_of(a + i * page_size) == pfn_in(pid, shared->addr, i);
	CHECK(write(go[1], "g", 1) == 1 && wait_exit(pid) == 0, "child's pages intact");
	CHECK(advised == 0, "advise: %s", strerror(errno));
	CHECK(same == N && merged == N && busy == 0,
	      "%zu of %d pages shared with a busy process, %ld merged, %ld skipped as busy", same, N,
	      merged, busy);
	CHECK(check_pages(a, N, 41, 1) < 0, "contents");
	return PASS;
}

static enum result test_fork_child_writes(void)
{
	char *a, *b;
	pid_t pid;

	CHECK(map_twins(&a, &b, N, 41) == 0, "mmap");
	CHECK(advise(a, N) == 0 && advise(b, N) == 0, "advise");
	pid = fork();
	if (pid == 0) {
		/* Inherited merged pages: same frames, and writes break out privately. */
		if (count_pfn_equal(a, b, N) != N)
			_exit(2);
		memset(a, 0xee, N * page_size);
		_exit(check_pages(b, N, 41, 1) < 0 ? 0 : 3);
	}
	CHECK(wait_exit(pid) == 0, "child");
	CHECK(check_pages(a, N, 41, 1) < 0, "parent unaffected by the child's writes");
	CHECK(count_pfn_equal(a, b, N) == N, "parent still merged");
	/* And the other way: the parent writes while a child holds the merged pages. */
	int go[2];
	char c;

	CHECK(pipe(go) == 0, "pipe");
	pid = fork();
	if (pid == 0) {
		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(4);
		_exit(check_pages(a, N, 41, 1) < 0 && check_pages(b, N, 41, 1) < 0 &&
		      count_pfn_equal(a, b, N) == N ? 0 : 5);
	}
	close(go[0]);
	memset(a, 0xdd, N * page_size);
	CHECK(write(go[1], "g", 1) == 1, "release the child");
	close(go[1]);
	CHECK(wait_exit(pid) == 0, "child sees the merged contents after the parent's writes");
	CHECK(count_pfn_equal(a, b, N) == 0 && check_pages(b, N, 41, 1) < 0, "parent private");
	return PASS;
}

/*
 * A child forked after its parent merged: once the parent has exited, the child's inherited
 * merged pages are still counted as its own (ksm_merging_pages: an rmap item each, from the
 * fork) and rmap walks still find them, so they move with move_pages(2), as ksmd's scan
 * leaves a child of its own.
 */
struct outlive {
	volatile pid_t child;
	volatile int merged; /* the parent's twins share every frame */
};

static int outlive_child(char *a, char *b, pid_t parent)
{
	char path[64];
	long merging;

	while (getppid() == parent) /* reparented to the test process when the parent exits */
		usleep(10 * 1000);
	snprintf(path, sizeof(path), "/proc/%d/ksm_merging_pages", getpid());
	merging = read_long(path);
	if (merging != 2 * N) {
		fprintf(stderr, "    child: ksm_merging_pages %ld, %d inherited\n", merging, 2 * N);
		return 1;
	}
	if (move_set(a, b, N, !node_of(a)) != N) {
		fprintf(stderr, "    child: %zu of %d merged pages moved\n",
			move_set(a, b, N, !node_of(a)), N);
		return 2;
	}
	return count_pfn_equal(a, b, N) == N && check_pages(a, N, 43, 1) < 0 &&
			       check_pages(b, N, 43, 1) < 0 ? 0 : 3;
}

static int outlive_parent(void *arg)
{
	struct outlive *o = arg;
	pid_t pid, parent = getpid();
	char *a, *b;

	if (map_twins(&a, &b, N, 43) || advise(a, N) || advise(b, N))
		return 1;
	o->merged = count_pfn_equal(a, b, N) == N;
	/* Not the child's getppid(): the parent may have exited before the child first runs. */
	pid = fork();
	if (pid == 0)
		_exit(outlive_child(a, b, parent));
	o->child = pid;
	return pid < 0;
}

static enum result test_fork_child_outlives_parent(void)
{
	struct outlive *o = map_shared(sizeof(*o));

	CHECK(o, "shared map");
	CHECK(access("/sys/devices/system/node/node1", F_OK) == 0, "two NUMA nodes");
	CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
	CHECK(wait_exit(spawn(outlive_parent, o)) == 0 && o->merged && o->child > 0,
	      "the parent merged its twins and forked");
	CHECK(wait_exit(o->child) == 0,
	      "the child's inherited merged pages after the parent's exit (see above)");
	munmap(o, sizeof(*o));
	CHECK(wait_tree_empty() == 0, "UPM's index empties: %ld nodes", counter("stable_nodes"));
	return PASS;
}

static enum result test_prot_none_mem_write(void)
{
	char *a = map_anon(N), *b = map_anon(N);
	int fd = open("/proc/self/mem", O_RDWR);
	char x = 0x42;

	CHECK(a && b && fd >= 0, "setup");
	fill_pages(a, N, 51, 0);
	fill_pages(b, N, 51, 0);
	CHECK(advise(a, N) == 0 && advise(b, N) == 0, "advise");
	CHECK(mprotect(a, N * page_size, PROT_NONE) == 0, "mprotect");
	CHECK(pwrite(fd, &x, 1, (off_t)(uintptr_t)a) == 1, "write through /proc/self/mem");
	CHECK(mprotect(a, N * page_size, PROT_READ) == 0, "mprotect");
	CHECK(a[0] == 0x42, "write landed");
	CHECK(check_pages(b, N, 51, 0) < 0, "other mapping unchanged");
	CHECK(pfn_of(a) != pfn_of(b), "write broke sharing");
	close(fd);
	return PASS;
}

/* ---- what must not merge ---- */

static enum result test_not_merged_shared_and_untouched(void)
{
	char *s = mmap(NULL, N * page_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		       -1, 0);
	char *u = map_anon(N);
	long vma = counter("pages_skipped_vma");
	long np = counter("pages_skipped_not_present");
	long rss = rss_anon_kb();

	CHECK(s != MAP_FAILED && u, "mmap");
	fill_pages(s, N, 61, 0);
	CHECK(advise(s, N) == 0, "advise shared");
	CHECK(distinct_pfns(s, N) == N, "shmem pages untouched");
	CHECK(counter("pages_skipped_vma") - vma == N, "skipped vma %ld",
	      counter("pages_skipped_vma") - vma);
	/* Never-touched private pages: an empty VMA (no anon_vma) is skipped whole. */
	CHECK(advise(u, N) == 0, "advise untouched");
	u[0] = 1;
	CHECK(advise(u, N) == 0, "advise mostly untouched");
	CHECK(counter("pages_skipped_not_present") - np == N - 1, "not present %ld",
	      counter("pages_skipped_not_present") - np);
	CHECK(rss_anon_kb() - rss <= 8, "nothing faulted in: rss +%ld kB", rss_anon_kb() - rss);
	return PASS;
}

static enum result test_pinned_not_merged(void)
{
	struct io_uring_params params = { 0 };
	char *a, *b;
	struct iovec iov;
	long pinned = counter("pages_skipped_pinned");
	int fd;

	CHECK(map_twins(&a, &b, N, 71) == 0, "mmap");
	fd = syscall(__NR_io_uring_setup, 4, &params);
	SKIP_IF(fd < 0, "io_uring unavailable");
	iov.iov_base = a;
	iov.iov_len = N * page_size;
	CHECK(syscall(__NR_io_uring_register, fd, IORING_REGISTER_BUFFERS, &iov, 1) == 0,
	      "register buffers (pins the pages)");
	CHECK(advise(b, N) == 0 && advise(a, N) == 0, "advise");
	CHECK(count_pfn_equal(a, b, N) == 0, "pinned pages merged: %zu", count_pfn_equal(a, b, N));
	CHECK(counter("pages_skipped_pinned") - pinned == N, "skipped pinned %ld",
	      counter("pages_skipped_pinned") - pinned);
	close(fd); /* the ring's teardown, and the unpin, run asynchronously */
	for (int i = 0; i < 600 && count_pfn_equal(a, b, N) != N; i++) {
		usleep(100 * 1000);
		CHECK(advise(a, N) == 0, "advise after unpin");
	}
	CHECK(count_pfn_equal(a, b, N) == N, "merged once unpinned: %zu",
	      count_pfn_equal(a, b, N));
	return PASS;
}

static enum result test_thp(void)
{
	size_t huge = 2 << 20, pages = huge / page_size;
	char *raw = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	char *a = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	char *b = map_anon(pages);
	long skipped = counter("pages_skipped_thp");
	long anon_huge;

	CHECK(raw != MAP_FAILED && b, "mmap");
	CHECK(madvise(a, huge, MADV_HUGEPAGE) == 0, "MADV_HUGEPAGE");
	fill_pages(a, pages, 81, 1);
	fill_pages(b, pages, 81, 1);
	anon_huge = proc_kb("/proc/self/smaps_rollup", "AnonHugePages");
	SKIP_IF(anon_huge < 2048, "no THP was allocated");
	CHECK(set_tunable("split_thp", 0) == 0, "tunable");
	CHECK(advise(a, pages) == 0, "advise without split");
	CHECK(counter("pages_skipped_thp") - skipped == (long)pages, "skipped thp %ld",
	      counter("pages_skipped_thp") - skipped);
	CHECK(set_tunable("split_thp", 1) == 0, "tunable");
	CHECK(advise(b, pages) == 0 && advise(a, pages) == 0, "advise with split");
	CHECK(count_pfn_equal(a, b, pages) == pages, "merged after split: %zu",
	      count_pfn_equal(a, b, pages));
	CHECK(check_pages(a, pages, 81, 1) < 0, "contents");
	return PASS;
}

#define MTHP_DIR "/sys/kernel/mm/transparent_hugepage/hugepages-64kB/"

/* The bracketed choice of a THP "enabled" file ("always", "never"...), or -1. */
static int thp_choice(const char *path, char *out, size_t len)
{
	char buf[128] = "", *open_bracket, *close_bracket;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	open_bracket = strchr(buf, '[');
	close_bracket = open_bracket ? strchr(open_bracket, ']') : NULL;
	if (!close_bracket || (size_t)(close_bracket - open_bracket) > len)
		return -1;
	snprintf(out, len, "%.*s", (int)(close_bracket - open_bracket - 1), open_bracket + 1);
	return 0;
}

/* Multi-size THP: 64 KiB folios are left whole or split per split_thp, as PMD ones. */
static enum result test_mthp(void)
{
	size_t chunk = 64 << 10, pages = 64;
	char *raw = mmap(NULL, pages * page_size + chunk, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a = (char *)(((uintptr_t)raw + chunk - 1) & ~(chunk - 1)), *b = map_anon(pages);
	long folios = read_long(MTHP_DIR "stats/anon_fault_alloc");
	long skipped = counter("pages_skipped_thp");
	char was[16];

	CHECK(raw != MAP_FAILED && b, "mmap");
	CHECK(thp_choice(MTHP_DIR "enabled", was, sizeof(was)) == 0 && folios >= 0,
	      "64 KiB mTHP and its statistics (6.9+)");
	CHECK(write_str(MTHP_DIR "enabled", "always") == 0, "enable 64 KiB folios");
	fill_pages(a, pages, 83, 1);
	write_str(MTHP_DIR "enabled", was);
	folios = read_long(MTHP_DIR "stats/anon_fault_alloc") - folios;
	fill_pages(b, pages, 83, 1);
	CHECK(folios == (long)(pages * page_size / chunk), "%ld 64 KiB folios faulted in", folios);
	CHECK(set_tunable("split_thp", 0) == 0, "tunable");
	CHECK(advise(b, pages) == 0 && advise(a, pages) == 0, "advise without split");
	CHECK(counter("pages_skipped_thp") - skipped == (long)pages, "skipped thp %ld",
	      counter("pages_skipped_thp") - skipped);
	CHECK(count_pfn_equal(a, b, pages) == 0, "large folios left whole");
	CHECK(set_tunable("split_thp", 1) == 0, "tunable");
	CHECK(advise(a, pages) == 0, "advise with split");
	CHECK(count_pfn_equal(a, b, pages) == pages, "merged after split: %zu",
	      count_pfn_equal(a, b, pages));
	CHECK(check_pages(a, pages, 83, 1) < 0 && check_pages(b, pages, 83, 1) < 0, "contents");
	a[0] ^= 1;
	CHECK(page_intact(b, 0, 83) && pfn_of(a) != pfn_of(b), "copy-on-write");
	return PASS;
}

/* ---- bad input ---- */

static enum result test_bad_input(void)
{
	char *a = map_anon(4);

	CHECK(a, "mmap");
	fill_pages(a, 4, 91, 0);
	errno = 0;
	CHECK(madvise(a + 1, page_size, MADV_UPM_MERGEABLE) == -1 && errno == EINVAL, "unaligned");
	errno = 0;
	CHECK(madvise(a, (size_t)-page_size, MADV_UPM_MERGEABLE) == -1 && errno == EINVAL,
	      "length overflow");
	CHECK(madvise(a, 0, MADV_UPM_MERGEABLE) == 0, "zero length");
	errno = 0;
	CHECK(madvise(a, page_size, 106) == -1 && errno == EINVAL, "unknown advice");
	/* A hole in the middle: ENOMEM, and the mapped parts are merged all the same. */
	CHECK(munmap(a + page_size, page_size) == 0, "hole");
	errno = 0;
	CHECK(madvise(a, 4 * page_size, MADV_UPM_MERGEABLE) == -1 && errno == ENOMEM, "gap");
	CHECK(pfn_of(a) == pfn_of(a + 2 * page_size) && pfn_of(a) == pfn_of(a + 3 * page_size),
	      "mapped parts merged");
	errno = 0;
	CHECK(madvise(a, 4 * page_size, MADV_UPM_UNMERGEABLE) == -1 && errno == ENOMEM,
	      "unmerge gap");
	CHECK(pfn_of(a) != pfn_of(a + 2 * page_size), "mapped parts unmerged");
	return PASS;
}

/* ---- process_madvise ---- */

static int target_fill_wait(void *arg)
{
	char **where = arg;
	char *b = map_anon(N);

	fill_pages(b, N, 101, 0);
	*where = b;
	pause();
	return 0;
}

static enum result test_process_madvise(void)
{
	char **where = map_shared(page_size);
	pid_t pid = spawn(target_fill_wait, where);
	int pidfd, ret, err;
	struct iovec iov;

	CHECK(where, "mmap");
	for (int i = 0; i < 100 && !*where; i++)
		usleep(10000);
	CHECK(*where, "target ready");
	usleep(100000); /* let it finish filling */
	pidfd = syscall(SYS_pidfd_open, pid, 0);
	CHECK(pidfd >= 0, "pidfd_open");
	iov.iov_base = *where;
	iov.iov_len = N * page_size;

	/* Same user, but without CAP_SYS_NICE: EPERM. */
	pid_t unpriv = fork();

	if (unpriv == 0) {
		struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
		struct __user_cap_data_struct caps[2];

		if (syscall(SYS_capget, &hdr, caps))
			_exit(2);
		caps[0].effective &= ~(1u << CAP_SYS_NICE);
		caps[0].permitted &= ~(1u << CAP_SYS_NICE);
		if (syscall(SYS_capset, &hdr, caps))
			_exit(3);
		ret = syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_UPM_MERGEABLE, 0);
		_exit(ret == -1 && errno == EPERM ? 0 : 10 + errno);
	}
	ret = wait_exit(unpriv);
	CHECK(ret == 0, "no CAP_SYS_NICE: EPERM expected, child said %d", ret);
	/* Another user, without ptrace access to the target: EACCES from mm_access(). */
	unpriv = fork();
	if (unpriv == 0) {
		if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(2);
		ret = syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_UPM_MERGEABLE, 0);
		_exit(ret == -1 && errno == EACCES ? 0 : 10 + errno);
	}
	ret = wait_exit(unpriv);
	CHECK(ret == 0, "other user: EACCES expected, child said %d", ret);
	CHECK(counter("stable_nodes") == 0, "refused calls merged nothing");

	ret = syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_UPM_MERGEABLE, 0);
	CHECK(ret == (int)(N * page_size), "process_madvise returned %d", ret);
	CHECK(counter("pages_sharing") == N - 1, "target merged: sharing %ld",
	      counter("pages_sharing"));

	kill(pid, SIGKILL);
	wait_exit(pid);
	errno = 0;
	ret = syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_UPM_MERGEABLE, 0);
	err = errno;
	CHECK(ret == -1 && err == ESRCH, "exited target: ESRCH (got %d)", err);
	close(pidfd);
	return PASS;
}

/* ---- a fatal signal during a long advise ---- */

struct long_advise {
	size_t pages;
	int started;	/* pipe: written just before the long call */
};

static int advise_for_long(void *arg)
{
	struct long_advise *l = arg;
	char *a, *b;

	if (map_twins(&a, &b, l->pages, 461) || advise(a, l->pages) || write(l->started, "s", 1) != 1)
		return 1;
	advise(b, l->pages); /* pairs every page: seconds under KASAN; killed meanwhile */
	return 2;
}

/*
 * SIGKILL while madvise pairs a large range: the call notices the fatal signal between
 * batches, so the process dies once the batch of 512 pages it was pairing is done, with the
 * rest of the range not paired (how long that takes depends on the machine, and is only
 * printed); nothing leaks (the index empties once the pages are gone). A wait for a shard of
 * the index ends at the signal too, but only when the shard is busy: the batch bound is what
 * the walk itself guarantees.
 */
static enum result test_kill_during_advise(void)
{
	int started[2];
	struct long_advise l = { .pages = 16384 };
	long merged = counter("pages_merged"), at_kill, bound;
	pid_t pid;
	char c;
	double killed_at, secs;

	CHECK(pipe(started) == 0, "pipe");
	l.started = started[1];
	pid = spawn(advise_for_long, &l);
	CHECK(read(started[0], &c, 1) == 1, "child about to pair 64 MiB");
	/* Kill as soon as the pairing is under way. */
	while (counter("pages_merged") == merged)
		usleep(1000);
	killed_at = monotonic_seconds();
	CHECK(kill(pid, SIGKILL) == 0, "kill");
	/* The signal is pending from here: the call ends with the batch it is pairing. */
	at_kill = counter("pages_merged") - merged;
	bound = (at_kill / 512 + 1) * 512;
	CHECK(wait_exit(pid) == 128 + SIGKILL, "killed");
	secs = monotonic_seconds() - killed_at;
	merged = counter("pages_merged") - merged;
	fprintf(stderr, "    died %.3f s after SIGKILL, %ld of %zu pages merged (%ld when it was "
		"sent)\n", secs, merged, l.pages, at_kill);
	/* Killed at its first merge: a call that ignored the signal would merge every page. */
	CHECK(merged <= bound, "merged %ld pages, past the end of the batch of the kill (%ld)",
	      merged, bound);
	CHECK(wait_tree_empty() == 0, "index empties: %ld candidates %ld nodes",
	      counter("candidates"), counter("stable_nodes"));
	return PASS;
}

/* ---- unmerge of a range made inaccessible ---- */

/*
 * MADV_UPM_UNMERGEABLE on merged pages under PROT_NONE: the pages get private copies as
 * they would when accessible (the unmerge looks at every area), contents unchanged.
 */
static enum result test_unmerge_prot_none(void)
{
	char *a, *b;

	CHECK(map_twins(&a, &b, N, 471) == 0 && advise(a, N) == 0 && advise(b, N) == 0, "merged");
	CHECK(count_pfn_equal(a, b, N) == N, "shared");
	CHECK(mprotect(a, N * page_size, PROT_NONE) == 0, "PROT_NONE");
	CHECK(unmerge(a, N) == 0, "unmerge under PROT_NONE");
	CHECK(mprotect(a, N * page_size, PROT_READ | PROT_WRITE) == 0, "back to read-write");
	CHECK(count_pfn_equal(a, b, N) == 0, "%zu pages still shared", count_pfn_equal(a, b, N));
	CHECK(check_pages(a, N, 471, 1) < 0 && check_pages(b, N, 471, 1) < 0, "contents");
	return PASS;
}

/* ---- every cumulative counter, exactly ---- */

static const char *const cumulative[] = {
	"pages_scanned",	     "pages_merged",	     "pages_promoted",
	"pages_zero_merged",	     "pages_already_merged", "pages_skipped",
	"pages_skipped_not_present", "pages_skipped_vma",    "pages_skipped_thp",
	"pages_skipped_pinned",	     "pages_skipped_busy",   "pages_skipped_other",
	"hash_collisions",	     "stable_pages_freed",   "madvise_calls",
	"unmerge_calls",
};

/*
 * Checks that since `before` every cumulative counter moved by exactly what `expect` lists
 * ("name", delta pairs, NULL-terminated) and the others not at all; `before` is updated.
 */
static int counters_moved(const char *step, long before[], ...)
{
	long want[ARRAY_SIZE(cumulative)] = { 0 };
	int wrong = 0;
	const char *name;
	va_list ap;

	va_start(ap, before);
	while ((name = va_arg(ap, const char *))) {
		long delta = va_arg(ap, long);

		for (size_t i = 0; i < ARRAY_SIZE(cumulative); i++)
			if (!strcmp(name, cumulative[i]))
				want[i] = delta;
	}
	va_end(ap);
	for (size_t i = 0; i < ARRAY_SIZE(cumulative); i++) {
		long now = counter(cumulative[i]);

		if (now - before[i] != want[i]) {
			fprintf(stderr, "    %s: %s moved by %ld, expected %ld\n", step, cumulative[i],
				now - before[i], want[i]);
			wrong++;
		}
		before[i] = now;
	}
	return wrong;
}

/* The index's gauges (root reads them exact). */
static int gauges_are(const char *step, long candidates, long nodes, long shared, long sharing)
{
	long c = counter("candidates"), n = counter("stable_nodes");
	long sh = counter("pages_shared"), sg = counter("pages_sharing");

	if (c == candidates && n == nodes && sh == shared && sg == sharing)
		return 0;
	fprintf(stderr, "    %s: candidates %ld stable_nodes %ld pages_shared %ld pages_sharing %ld, "
		"expected %ld %ld %ld %ld\n", step, c, n, sh, sg, candidates, nodes, shared, sharing);
	return 1;
}

/*
 * A scripted sequence of advises whose outcome is known page by page: after each step every
 * cumulative counter must have moved by exactly the expected amount and the gauges must
 * hold exact values. Ground truth for the frames is checked alongside.
 */
static enum result test_counters_exact(void)
{
	long before[ARRAY_SIZE(cumulative)], n = N;
	char *a, *b, *c = map_anon(N), *z = map_anon(N), *h = map_anon(N), *sh = map_shared(N * page_size);

	CHECK(map_twins(&a, &b, N, 181) == 0 && c && z && h && sh, "setup");
	fill_pages(c, N, 181, 1);
	memset(z, 0, N * page_size); /* written: anonymous pages of zeroes */
	h[0] = 1;		     /* one page present, the rest never touched */
	fill_pages(sh, N, 181, 1);
	CHECK(set_tunable("use_zero_pages", 1) == 0, "use_zero_pages");
	for (size_t i = 0; i < ARRAY_SIZE(cumulative); i++)
		before[i] = counter(cumulative[i]);

	CHECK(advise(a, N) == 0, "advise a");
	CHECK(!counters_moved("first region", before, "pages_scanned", n, "madvise_calls", 1L,
			      NULL) && !gauges_are("first region", n, 0, 0, 0), "first region");
	CHECK(advise(b, N) == 0, "advise b");
	CHECK(count_pfn_equal(a, b, N) == N, "a and b share frames");
	CHECK(!counters_moved("twin region", before, "pages_scanned", n, "pages_promoted", n,
			      "pages_merged", n, "madvise_calls", 1L, NULL) &&
	      !gauges_are("twin region", 0, n, n, n), "twin region");
	CHECK(advise(c, N) == 0, "advise c");
	CHECK(count_pfn_equal(a, c, N) == N, "c shares a's frames");
	CHECK(!counters_moved("third copy", before, "pages_scanned", n, "pages_merged", n,
			      "madvise_calls", 1L, NULL) &&
	      !gauges_are("third copy", 0, n, n, 2 * n), "third copy");
	CHECK(advise(c, N) == 0, "advise c again");
	CHECK(!counters_moved("again", before, "pages_scanned", n, "pages_already_merged", n,
			      "madvise_calls", 1L, NULL), "advised again");
	CHECK(advise(z, N) == 0, "advise zeroes");
	CHECK(count_pfn_equal(z, z + page_size, N - 1) == N - 1 && pfn_of(z) == zero_pfn(),
	      "zero pages mapped");
	CHECK(!counters_moved("zeroes", before, "pages_scanned", n, "pages_zero_merged", n,
			      "madvise_calls", 1L, NULL), "zeroes");
	CHECK(counter("zero_pages") == n, "zero_pages %ld", counter("zero_pages"));
	CHECK(advise(h, N) == 0, "advise the sparse region");
	CHECK(!counters_moved("sparse", before, "pages_scanned", n, "pages_skipped_not_present",
			      n - 1, "pages_skipped", n - 1, "madvise_calls", 1L, NULL) &&
	      !gauges_are("sparse", 1, n, n, 2 * n), "sparse region");
	CHECK(advise(sh, N) == 0, "advise MAP_SHARED");
	CHECK(!counters_moved("shared mapping", before, "pages_skipped_vma", n, "pages_skipped", n,
			      "madvise_calls", 1L, NULL), "MAP_SHARED");
	CHECK(unmerge(c, N) == 0, "unmerge c");
	CHECK(count_pfn_equal(a, c, N) == 0 && check_pages(c, N, 181, 1) < 0, "c private again");
	CHECK(!counters_moved("unmerge", before, "unmerge_calls", 1L, NULL) &&
	      !gauges_are("unmerge", 1, n, n, n), "unmerge");
	munmap(a, N * page_size);
	munmap(b, N * page_size);
	munmap(h, N * page_size);
	CHECK(wait_tree_empty() == 0, "index empties");
	CHECK(!counters_moved("unmapped", before, "stable_pages_freed", n, NULL), "freed");
	munmap(c, N * page_size);
	munmap(z, N * page_size);
	munmap(sh, N * page_size);
	return PASS;
}

/* ---- areas ksmd owns ---- */

/*
 * Areas with VM_MERGEABLE (MADV_MERGEABLE, or prctl(PR_SET_MEMORY_MERGE) for a whole process)
 * belong to ksmd, whose rmap items would clash with UPM's: UPM skips them, and ksmd then
 * merges them as usual.
 */
static enum result test_ksm_areas_left_to_ksmd(void)
{
	long vma = counter("pages_skipped_vma");
	char *a, *b;

	CHECK(map_twins(&a, &b, N, 191) == 0, "setup");
	CHECK(madvise(a, N * page_size, MADV_MERGEABLE) == 0 &&
	      madvise(b, N * page_size, MADV_MERGEABLE) == 0, "MADV_MERGEABLE");
	CHECK(advise(a, N) == 0 && advise(b, N) == 0, "UPM advise");
	CHECK(count_pfn_equal(a, b, N) == 0, "UPM merged %zu pages of ksmd's areas",
	      count_pfn_equal(a, b, N));
	CHECK(counter("pages_skipped_vma") - vma == 2 * N, "skipped %ld",
	      counter("pages_skipped_vma") - vma);
	CHECK(counter("candidates") == 0, "candidates %ld", counter("candidates"));
	CHECK(check_pages(a, N, 191, 1) < 0 && check_pages(b, N, 191, 1) < 0, "contents");
	return PASS;
}

const struct test basic_tests[] = {
	{ "merge_two_regions", test_merge_two_regions, "identical regions share frames; COW" },
	{ "same_content_one_process", test_same_content_one_process, "N copies -> 1 frame" },
	{ "all_different", test_all_different, "distinct pages stay distinct; re-advise" },
	{ "zero_pages", test_zero_pages, "zero pages map the zero page; unmerge" },
	{ "unmerge", test_unmerge, "MADV_UPM_UNMERGEABLE restores private frames" },
	{ "unmerge_after_dontneed", test_unmerge_after_dontneed, "KSM functional test port" },
	{ "cross_process", test_cross_process, "two processes share; writes stay private" },
	{ "busy_candidates", test_busy_candidates, "twins in a process busy with its mmap_lock" },
	{ "fork_child_writes", test_fork_child_writes, "fork inherits merged pages" },
	{ "fork_child_outlives_parent", test_fork_child_outlives_parent,
	  "a child's inherited merged pages: its own items, movable after the parent exits" },
	{ "prot_none_mem_write", test_prot_none_mem_write, "write via /proc/self/mem COWs" },
	{ "not_merged_shared_untouched", test_not_merged_shared_and_untouched,
	  "MAP_SHARED skipped; nothing faulted in" },
	{ "pinned_not_merged", test_pinned_not_merged, "io_uring-pinned pages never merged" },
	{ "thp", test_thp, "THP skipped or split per split_thp" },
	{ "mthp", test_mthp, "64 KiB mTHP folios skipped or split per split_thp" },
	{ "bad_input", test_bad_input, "EINVAL/ENOMEM as madvise(2)" },
	{ "process_madvise", test_process_madvise, "advise another process; EPERM; ESRCH" },
	{ "kill_during_advise", test_kill_during_advise, "SIGKILL ends a long pairing early" },
	{ "unmerge_prot_none", test_unmerge_prot_none, "unmerge under PROT_NONE gives copies" },
	{ "counters_exact", test_counters_exact, "every cumulative counter and gauge, exactly" },
	{ "ksm_areas_left_to_ksmd", test_ksm_areas_left_to_ksmd, "VM_MERGEABLE areas skipped" },
};
const size_t basic_test_count = ARRAY_SIZE(basic_tests);
