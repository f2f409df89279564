// SPDX-License-Identifier: GPL-2.0
/*
 * UPM tests, run inside the debug-kernel VM as root with upm.ko loaded.
 *
 *   upm_tests [--list] [NAME...]
 *
 * Each test runs in its own child process, checks real outcomes (page contents against the
 * pattern they were filled with, pagemap frame numbers, RSS, sysfs counters) and leaves no
 * merged memory behind: every test starts by waiting for an empty stable tree.
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

#define MANY_MAX 128

/* What each of many processes reports: its advise result and where its pages are. */
struct many {
	volatile int advised[MANY_MAX]; /* 1 + errno of madvise, 0 until it returned */
	volatile uintptr_t addr[MANY_MAX];
};

static struct many *many;

static int child_fill_advise_wait(void *arg)
{
	int i = (int)(long)arg;
	char *b = map_anon(N);

	if (!b)
		return 2;
	fill_pages(b, N, 31, 1);
	many->addr[i] = (uintptr_t)b;
	many->advised[i] = 1 + (advise(b, N) ? errno : 0);
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

/* n processes advise the same pages at once: one frame for all, every copy intact. */
static enum result processes_share(int n)
{
	pid_t pids[MANY_MAX];
	long saved;
	size_t same = 0;
	int advised = 0, intact = 0;

	many = map_shared(sizeof(*many));
	CHECK(many && n <= MANY_MAX, "shared map");
	for (int i = 0; i < n; i++)
		pids[i] = spawn(child_fill_advise_wait, (void *)(long)i);
	for (int i = 0; i < 2400 && advised < n; i++, usleep(100 * 1000))
		for (int p = advised = 0; p < n; p++)
			advised += many->advised[p] != 0;
	saved = counter("pages_sharing");
	/* Every process advised without error, maps the same frames and reads its own data. */
	for (int p = 0; p < n; p++) {
		advised -= many->advised[p] != 1;
		intact += contents_in(pids[p], many->addr[p], N, 31) < 0;
		for (size_t i = 0; i < N; i++) {
			uint64_t f = pfn_in(pids[p], many->addr[p], i);

			same += f && f == pfn_in(pids[0], many->addr[0], i);
		}
	}
	for (int i = 0; i < n; i++)
		kill(pids[i], SIGKILL);
	for (int i = 0; i < n; i++)
		wait_exit(pids[i]);
	CHECK(advised == n, "%d of %d processes advised without error", advised, n);
	CHECK(same == (size_t)n * N, "%zu of %d pages map process 0's frames", same, n * N);
	CHECK(intact == n, "%d of %d processes read their contents intact", intact, n);
	CHECK(saved == (long)(n - 1) * N, "%d processes x %d pages: pages_sharing %ld", n, N,
	      saved);
	CHECK(wait_tree_empty() == 0, "tree empty after exit: %ld", counter("stable_nodes"));
	CHECK(counter("pages_shared") == 0 && counter("pages_sharing") == 0 &&
		      counter("pages_unshared") == 0, "state counters 0");
	return PASS;
}

static enum result test_sixteen_processes(void)
{
	return processes_share(16);
}

static enum result test_many_processes(void)
{
	return processes_share(MANY_MAX);
}

/*
 * A GiB-scale range in one call: two 1 GiB twins with every 8th page present (128 MiB each;
 * the debug VM is too slow to fill more), each advised whole. Present pages all merge, the
 * others are counted as not present, and the contents survive an unmerge of the whole range.
 */
static enum result test_gib_range(void)
{
	size_t pages = (1ul << 30) / page_size, stride = 8, present = pages / stride;
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

/* ---- module lifecycle ---- */

static enum result test_no_module_einval(void)
{
	char *a = map_anon(2);

	CHECK(a, "mmap");
	fill_pages(a, 2, 111, 0);
	CHECK(module_unload() == 0, "rmmod");
	errno = 0;
	CHECK(advise(a, 2) == -1 && errno == EINVAL, "no module: EINVAL");
	errno = 0;
	CHECK(unmerge(a, 2) == -1 && errno == EINVAL, "no module: EINVAL for unmerge");
	CHECK(module_load() == 0, "insmod");
	CHECK(advise(a, 2) == 0, "module back: works");
	CHECK(pfn_of(a) == pfn_of(a + page_size), "merged");
	return PASS;
}

static enum result test_rmmod_keeps_contents(void)
{
	char *a, *b;

	CHECK(map_twins(&a, &b, N, 121) == 0, "mmap");
	CHECK(advise(a, N) == 0 && advise(b, N) == 0, "advise");
	CHECK(module_unload() == 0, "rmmod");
	CHECK(count_pfn_equal(a, b, N) == N, "still merged without the module");
	CHECK(check_pages(a, N, 121, 1) < 0 && check_pages(b, N, 121, 1) < 0, "contents");
	a[0] ^= 1;
	CHECK(check_pages(b, N, 121, 1) < 0, "COW without the module");
	a[0] ^= 1;
	/* Still real KSM pages: they migrate without the module. */
	CHECK(move_set(b, b, N, node_of(b) == 0 ? 1 : 0) == N, "migrated without the module");
	CHECK(count_pfn_equal(a, b, N) == N - 1, "still merged after migration: %zu",
	      count_pfn_equal(a, b, N));
	CHECK(module_load() == 0, "insmod");
	long already = counter("pages_already_merged");

	CHECK(advise(b, N) == 0, "advise after reload");
	/* b[0] stays a KSM page, mapped once since a's write. */
	CHECK(counter("pages_already_merged") - already == N, "recognised as merged");
	CHECK(counter("stable_nodes") == N, "indexed again: %ld", counter("stable_nodes"));
	CHECK(check_pages(a, N, 121, 1) < 0 && check_pages(b, N, 121, 1) < 0, "contents");
	/* A third copy merges into the pages merged before the reload. */
	char *c = map_anon(N);

	CHECK(c, "mmap");
	fill_pages(c, N, 121, 1);
	CHECK(advise(c, N) == 0, "advise a third copy");
	CHECK(count_pfn_equal(b, c, N) == N, "third copy shares the old frames: %zu",
	      count_pfn_equal(b, c, N));
	CHECK(unmerge(b, N) == 0, "unmerge pages merged by the previous load");
	CHECK(count_pfn_equal(a, b, N) == 0, "private");
	return PASS;
}

struct churn {
	volatile int stop;
	long calls, ok, einval, other;
};

static void *advise_loop(void *arg)
{
	struct churn *c = arg;
	char *a = map_anon(16);

	while (!c->stop) {
		fill_pages(a, 16, 131, 0);
		int ret = advise(a, 16);

		__atomic_add_fetch(&c->calls, 1, __ATOMIC_RELAXED);
		if (ret == 0)
			__atomic_add_fetch(&c->ok, 1, __ATOMIC_RELAXED);
		else if (errno == EINVAL)
			__atomic_add_fetch(&c->einval, 1, __ATOMIC_RELAXED);
		else
			__atomic_add_fetch(&c->other, 1, __ATOMIC_RELAXED);
		if (check_pages(a, 16, 131, 0) >= 0)
			__atomic_add_fetch(&c->other, 1000000, __ATOMIC_RELAXED);
		a[0] = 0; /* break one page out each round */
	}
	munmap(a, 16 * page_size);
	return NULL;
}

static enum result test_rmmod_during_madvise(void)
{
	struct churn c = { 0 };
	pthread_t t[3];
	int cycles = 0;

	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, advise_loop, &c);
	for (int i = 0; i < 15; i++) {
		usleep(50 * 1000);
		if (module_unload() == 0)
			cycles++;
		usleep(20 * 1000);
		if (!module_loaded())
			CHECK(module_load() == 0, "insmod");
	}
	c.stop = 1;
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	if (!module_loaded())
		CHECK(module_load() == 0, "insmod");
	fprintf(stderr, "    %d unload cycles, %ld calls: %ld ok, %ld EINVAL\n", cycles, c.calls,
		c.ok, c.einval);
	CHECK(cycles >= 5, "module cycled %d times", cycles);
	CHECK(c.other == 0, "only 0 or EINVAL, contents intact: %ld bad", c.other);
	CHECK(c.ok > 0 && c.einval > 0, "both outcomes seen");
	return PASS;
}

static enum result test_run_tunable(void)
{
	char *a = map_anon(N);
	long calls = counter("madvise_calls");

	CHECK(a, "mmap");
	fill_pages(a, N, 141, 0);
	CHECK(set_tunable("run", 0) == 0, "run=0");
	CHECK(advise(a, N) == 0, "accepted");
	CHECK(distinct_pfns(a, N) == N, "nothing merged with run=0");
	CHECK(set_tunable("run", 1) == 0, "run=1");
	CHECK(advise(a, N) == 0, "advise");
	CHECK(distinct_pfns(a, N) == 1, "merged with run=1");
	CHECK(counter("madvise_calls") - calls == 2, "calls counted");
	errno = 0;
	CHECK(set_tunable("run", 2) == -1 && errno == EINVAL, "bad value rejected");
	return PASS;
}

/* ---- randomized stress ---- */

#define STRESS_PROCS 4
#define STRESS_THREADS 3
/* More than the module's 512-page mmap_lock batch: advises of a region cross a batch. */
#define STRESS_PAGES 544
#define STRESS_COMMON (STRESS_PAGES / 2) /* pages 0..STRESS_COMMON-1: the same everywhere */
#define STRESS_LOG 16

struct stress_report {
	volatile int stopped;	 /* threads joined */
	volatile int settle;	 /* parent: every process stopped, advise once more */
	volatile int advised;	 /* final advise done */
	volatile int snapshot;	 /* parent: every final advise done, read pagemap and smaps */
	volatile int ready;	 /* pfns published */
	volatile int release;	 /* parent read the pfns: exit */
	volatile long ops, bad, ksm_kb;
	uint64_t pfns[STRESS_THREADS * STRESS_PAGES];
};

static const char *const stress_ops[] = { "advise", "advise", "advise", "unmerge", "write",
					  "verify", "dontneed", "mprotect", "mremap", "fork",
					  "advise racing writes" };

struct stress_thread {
	int proc, id;
	uint64_t rng;
	char *region;		/* STRESS_PAGES pages, owned by this thread */
	char *shadow;		/* what the region must contain */
	const char *common;	/* the half that is the same everywhere */
	volatile int *stop;
	long ops, bad;
	/* The last operations, printed when one goes wrong: the seed replays each thread's
	 * operations, not their interleaving. */
	struct {
		int op;
		size_t first, n;
	} log[STRESS_LOG];
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Counts a failed operation, naming it, its pages and the thread's last operations. */
static void stress_fail(struct stress_thread *t, const char *what, long page)
{
	fprintf(stderr, "    stress: process %d thread %d, op %ld: %s", t->proc, t->id,
		t->ops - 1, what);
	if (page >= 0)
		fprintf(stderr, " (page %ld)", page);
	fprintf(stderr, "; last ops, newest first:");
	for (long i = t->ops - 1, k = 0; i >= 0 && k < STRESS_LOG; i--, k++) {
		const typeof(t->log[0]) *l = &t->log[i % STRESS_LOG];

		fprintf(stderr, " %s[%zu+%zu]", stress_ops[l->op], l->first, l->n);
	}
	fprintf(stderr, "\n");
	t->bad++;
}

/* Checks pages first..first+n-1 against the shadow; reports the first that differs. */
static void verify_region(struct stress_thread *t, size_t first, size_t n, const char *during)
{
	for (size_t p = first; p < first + n; p++)
		if (memcmp(t->region + p * page_size, t->shadow + p * page_size, page_size)) {
			stress_fail(t, during, (long)p);
			return;
		}
}

static void stress_op(struct stress_thread *t, int op, size_t first, size_t n)
{
	size_t bytes = n * page_size;
	char *at = t->region + first * page_size;
	pid_t pid;
	char *moved;

	switch (op) {
	case 0: case 1: case 2:
		if (advise(at, n) && errno != EINTR)
			stress_fail(t, "advise failed", -1);
		break;
	case 3:
		if (unmerge(at, n))
			stress_fail(t, "unmerge failed", -1);
		break;
	case 4: { /* write one byte of the private half: region and shadow */
		size_t half = (STRESS_PAGES - STRESS_COMMON) * page_size;
		size_t off = STRESS_COMMON * page_size + rnd(&t->rng) % half;

		t->region[off]++;
		t->shadow[off]++;
		break;
	}
	case 5:
		verify_region(t, first, n, "contents differ from the shadow");
		break;
	case 6: /* drop pages: they read back as zeroes; refill the common half */
		madvise(at, bytes, MADV_DONTNEED);
		memset(t->shadow + first * page_size, 0, bytes);
		for (size_t p = first; p < first + n && p < STRESS_COMMON; p++) {
			memcpy(t->region + p * page_size, t->common + p * page_size, page_size);
			memcpy(t->shadow + p * page_size, t->common + p * page_size, page_size);
		}
		break;
	case 7: /* mprotect round trip */
		mprotect(at, bytes, PROT_READ);
		verify_region(t, first, n, "contents differ while read-only");
		mprotect(at, bytes, PROT_READ | PROT_WRITE);
		break;
	case 8: /* move the whole region elsewhere */
		moved = mmap(NULL, STRESS_PAGES * page_size, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (moved != MAP_FAILED)
			moved = mremap(t->region, STRESS_PAGES * page_size, STRESS_PAGES * page_size,
				       MREMAP_MAYMOVE | MREMAP_FIXED, moved);
		if (moved == MAP_FAILED)
			stress_fail(t, "mremap failed", -1);
		else
			t->region = moved;
		break;
	case 9: /* fork: the child sees the same contents, writes, exits */
		pid = fork();
		if (pid == 0) {
			int bad = memcmp(t->region, t->shadow, STRESS_PAGES * page_size) != 0;

			memset(t->region, 0x77, page_size);
			_exit(bad);
		}
		if (pid < 0 || wait_exit(pid) != 0)
			stress_fail(t, "fork child saw other contents", -1);
		break;
	case 10: { /* advise while another thread writes the same, twinned, pages */
		struct race r = { .a = at, .pages = first < STRESS_COMMON ?
				  (first + n < STRESS_COMMON ? n : STRESS_COMMON - first) : 0 };
		pthread_t writer;

		if (!r.pages || pthread_create(&writer, NULL, flip_words, &r)) {
			stress_op(t, 0, first, n);
			break;
		}
		if (advise(at, n) && errno != EINTR)
			stress_fail(t, "advise failed", -1);
		r.stop = 1;
		pthread_join(writer, NULL);
		if (r.lost)
			stress_fail(t, "a write racing the advise was lost", -1);
		verify_region(t, first, n, "contents differ after racing writes");
		break;
	}
	}
}

static void *stress_thread(void *arg)
{
	struct stress_thread *t = arg;

	while (!*t->stop) {
		size_t first = rnd(&t->rng) % STRESS_PAGES;
		size_t n = 1 + rnd(&t->rng) % (STRESS_PAGES - first);
		int op = rnd(&t->rng) % ARRAY_SIZE(stress_ops);

		t->log[t->ops++ % STRESS_LOG] = (typeof(t->log[0])){ op, first, n };
		stress_op(t, op, first, n);
	}
	verify_region(t, 0, STRESS_PAGES, "contents differ at the end");
	return NULL;
}

/* KSM-page mappings of this process in kB (smaps "KSM:", from folio_test_ksm()). */
static long ksm_kb_self(void)
{
	return proc_kb("/proc/self/smaps_rollup", "KSM");
}

static void stress_process(struct stress_report *r, int proc, uint64_t seed, int secs)
{
	struct stress_thread t[STRESS_THREADS];
	pthread_t th[STRESS_THREADS];
	volatile int stop = 0;
	char *common = malloc(STRESS_COMMON * page_size);

	fill_pages(common, STRESS_COMMON, 151, 1);

	for (int i = 0; i < STRESS_THREADS; i++) {
		t[i] = (struct stress_thread){ .proc = proc, .id = i, .rng = seed * 7919 + i + 1,
					       .stop = &stop, .common = common };
		t[i].region = map_anon(STRESS_PAGES);
		t[i].shadow = malloc(STRESS_PAGES * page_size);
		/* Half the pages are the same in every thread and process, half are not. */
		memcpy(t[i].region, common, STRESS_COMMON * page_size);
		fill_pages(t[i].region + STRESS_COMMON * page_size, STRESS_PAGES - STRESS_COMMON,
			   seed * 31 + i, 1);
		memcpy(t[i].shadow, t[i].region, STRESS_PAGES * page_size);
		pthread_create(&th[i], NULL, stress_thread, &t[i]);
	}
	sleep(secs);
	stop = 1;
	for (int i = 0; i < STRESS_THREADS; i++) {
		pthread_join(th[i], NULL);
		r->ops += t[i].ops;
	}
	/* Once nobody writes any more, a last advise must share the common half. */
	r->stopped = 1;
	while (!r->settle)
		usleep(10 * 1000);
	for (int i = 0; i < STRESS_THREADS; i++) {
		if (advise(t[i].region, STRESS_PAGES))
			stress_fail(&t[i], "final advise failed", -1);
		verify_region(&t[i], 0, STRESS_PAGES, "contents differ after the final advise");
		r->bad += t[i].bad;
	}
	/*
	 * Another process's advise may still pair with one of our pages (a candidate becomes
	 * its merged page): read the page tables once every process is done.
	 */
	r->advised = 1;
	while (!r->snapshot)
		usleep(10 * 1000);
	/*
	 * Lock the pages in memory (present ones only: MLOCK_ONFAULT faults nothing in, so no
	 * copy-on-write): reclaim must not swap merged pages out while the parent counts. Only
	 * now: mlock takes mmap_lock for writing, and an advise that finds our mm busy leaves
	 * our candidate for later.
	 */
	for (int i = 0; i < STRESS_THREADS; i++)
		if (mlock2(t[i].region, STRESS_PAGES * page_size, MLOCK_ONFAULT)) {
			fprintf(stderr, "    stress: mlock2: %s\n", strerror(errno));
			r->bad++;
		}
	for (int i = 0; i < STRESS_THREADS; i++)
		for (int p = 0; p < STRESS_PAGES; p++)
			r->pfns[i * STRESS_PAGES + p] = pfn_of(t[i].region + p * page_size);
	r->ksm_kb = ksm_kb_self();
	r->ready = 1;
	while (!r->release)
		usleep(10 * 1000);
	_exit(0);
}

static int cmp_pfn(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int stress_seconds(void)
{
	const char *env_secs = getenv("UPM_STRESS_SECS");

	return env_secs && *env_secs ? atoi(env_secs) : 60;
}

/* Two cgroups under the cgroup policy: the stress processes spread over two merge domains. */
#define STRESS_DOMAINS 2

/* /proc/vmstat's memory-moving counters, to say what the kernel did behind a test's back. */
#define VMSTAT_MAX 64
struct vmstat {
	int n;
	char name[VMSTAT_MAX][64];
	long value[VMSTAT_MAX];
};

static void vmstat_read(struct vmstat *v)
{
	static const char *const kinds[] = { "migrat", "swp", "steal", "compact_migrate", "numa",
					     "demote", "split", "ksm", "drop" };
	char name[64];
	long value;
	FILE *f = fopen("/proc/vmstat", "r");

	v->n = 0;
	while (f && v->n < VMSTAT_MAX && fscanf(f, "%63s %ld", name, &value) == 2)
		for (size_t k = 0; k < ARRAY_SIZE(kinds); k++)
			if (strstr(name, kinds[k])) {
				snprintf(v->name[v->n], sizeof(v->name[0]), "%s", name);
				v->value[v->n++] = value;
				break;
			}
	if (f)
		fclose(f);
}

static void vmstat_print_changes(const struct vmstat *before)
{
	struct vmstat now;

	vmstat_read(&now);
	fprintf(stderr, "    meanwhile:");
	for (int i = 0; i < before->n && i < now.n; i++)
		if (now.value[i] != before->value[i])
			fprintf(stderr, " %s %+ld", now.name[i], now.value[i] - before->value[i]);
	fprintf(stderr, "\n");
}

static int stress_domains_setup(void)
{
	char path[64];

	if (access("/sys/fs/cgroup/cgroup.procs", F_OK))
		return -1;
	for (int d = 0; d < STRESS_DOMAINS; d++) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/upm_stress%d", d);
		if (mkdir(path, 0755) && errno != EEXIST)
			return -1;
	}
	if (write_str(UPM_SYSFS_DIR "/domain_policy", "cgroup") ||
	    write_long(UPM_SYSFS_DIR "/domain_cgroup_level", 1))
		return -1;
	return 0;
}

static void stress_domains_teardown(void)
{
	char path[64];

	write_str(UPM_SYSFS_DIR "/domain_policy", "uid");
	for (int d = 0; d < STRESS_DOMAINS; d++) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/upm_stress%d", d);
		rmdir(path);
	}
}


struct pfn_domain {
	uint64_t pfn;
	int domain;
};

static int cmp_pfn_domain(const void *a, const void *b)
{
	const struct pfn_domain *x = a, *y = b;

	return x->pfn < y->pfn ? -1 : x->pfn > y->pfn;
}

/* Frames that processes of two different domains map (the zero page aside). */
static long frames_across_domains(struct stress_report *r, uint64_t zpfn)
{
	size_t per = STRESS_THREADS * STRESS_PAGES, n = 0;
	struct pfn_domain *all = calloc(STRESS_PROCS * per, sizeof(*all));
	long crossing = 0;

	if (!all)
		return -1;
	for (int p = 0; p < STRESS_PROCS; p++)
		for (size_t i = 0; i < per; i++)
			all[n++] = (struct pfn_domain){ r[p].pfns[i], p % STRESS_DOMAINS };
	qsort(all, n, sizeof(*all), cmp_pfn_domain);
	for (size_t i = 1; i < n; i++)
		crossing += all[i].pfn && all[i].pfn != zpfn && all[i].pfn == all[i - 1].pfn &&
			    all[i].domain != all[i - 1].domain;
	free(all);
	return crossing;
}

/*
 * After the final advise, each common page should be one frame per merge domain, mapped by
 * every thread of every process of that domain. Returns how many mappings are on another
 * frame than the domain's most common one (each such page failed to join its twins), naming
 * the first.
 */
static long common_pages_apart(struct stress_report *r)
{
	long apart = 0;

	for (int d = 0; d < STRESS_DOMAINS; d++)
		for (size_t page = 0; page < STRESS_COMMON; page++) {
			uint64_t pfns[STRESS_PROCS * STRESS_THREADS], frame = 0;
			int n = 0, best = 0;

			for (int p = d; p < STRESS_PROCS; p += STRESS_DOMAINS)
				for (int t = 0; t < STRESS_THREADS; t++)
					pfns[n++] = r[p].pfns[t * STRESS_PAGES + page];
			for (int i = 0; i < n; i++) {
				int same = 0;

				for (int j = 0; j < n; j++)
					same += pfns[j] == pfns[i];
				if (pfns[i] && same > best) {
					best = same;
					frame = pfns[i];
				}
			}
			if (best < n && !apart)
				fprintf(stderr, "    common page %zu: %d of domain %d's %d mappings on "
					"frame %#llx\n", page, best, d, n, (unsigned long long)frame);
			apart += n - best;
		}
	return apart;
}

static enum result test_stress(void)
{
	const char *env_seed = getenv("UPM_STRESS_SEED");
	int secs = stress_seconds();
	uint64_t seed = env_seed && *env_seed ? strtoull(env_seed, NULL, 0) : (uint64_t)time(NULL);
	struct stress_report *r = map_shared(STRESS_PROCS * sizeof(*r));
	size_t total = STRESS_PROCS * STRESS_THREADS * STRESS_PAGES;
	uint64_t *all = calloc(total, sizeof(*all)), zpfn = zero_pfn();
	long shared = 0, sharing = 0, unshared, ksm_mappings = 0, ops = 0, bad = 0;
	pid_t pids[STRESS_PROCS];

	fprintf(stderr, "    seed %llu, %d s (UPM_STRESS_SEED, UPM_STRESS_SECS)\n",
		(unsigned long long)seed, secs);
	CHECK(r && all, "alloc");
	CHECK(stress_domains_setup() == 0, "two cgroups as merge domains");
	for (int p = 0; p < STRESS_PROCS; p++) {
		pids[p] = fork();
		if (pids[p] == 0) {
			char cg[32];

			snprintf(cg, sizeof(cg), "upm_stress%d", p % STRESS_DOMAINS);
			if (join_cgroup(cg))
				r[p].bad++;
			stress_process(&r[p], p, seed + p, secs);
		}
	}
	for (int p = 0; p < STRESS_PROCS; p++)
		while (!r[p].stopped)
			usleep(50 * 1000);
	const char *names[] = { "pages_merged", "pages_promoted", "pages_already_merged",
				"pages_skipped_pinned", "pages_skipped_busy", "pages_skipped_other",
				"pages_skipped_not_present", "pages_zero_merged" };
	long at_settle[ARRAY_SIZE(names)];

	/*
	 * NUMA balancing (two nodes here) migrates pages in the background; a page caught under
	 * migration is in pagemap's view but not in smaps'. Hold it off while counting.
	 */
	long numa_balancing = read_long("/proc/sys/kernel/numa_balancing");
	/*
	 * Proactive compaction migrates merged pages too: a page half way through
	 * remove_migration_ptes() has only some of its mappings back, and a sysfs read then
	 * counts only those. Hold it off as well, and read the counts until they hold still.
	 */
	long proactiveness = read_long("/proc/sys/vm/compaction_proactiveness");
	long migrated = key_value("/proc/vmstat", "pgmigrate_success");

	write_long("/proc/sys/kernel/numa_balancing", 0);
	write_long("/proc/sys/vm/compaction_proactiveness", 0);
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		at_settle[i] = counter(names[i]);
	for (int p = 0; p < STRESS_PROCS; p++)
		r[p].settle = 1;
	for (int p = 0; p < STRESS_PROCS; p++)
		while (!r[p].advised)
			usleep(50 * 1000);
	struct vmstat at_snapshot;

	vmstat_read(&at_snapshot);
	for (int p = 0; p < STRESS_PROCS; p++)
		r[p].snapshot = 1;
	for (int p = 0; p < STRESS_PROCS; p++)
		while (!r[p].ready)
			usleep(50 * 1000);
	/* Everyone is stopped: the counters must describe exactly what pagemap shows. */
	for (int p = 0; p < STRESS_PROCS; p++) {
		memcpy(all + p * STRESS_THREADS * STRESS_PAGES, r[p].pfns, sizeof(r[p].pfns));
		ops += r[p].ops;
		bad += r[p].bad;
		ksm_mappings += r[p].ksm_kb * 1024 / (long)page_size;
	}
	qsort(all, total, sizeof(*all), cmp_pfn);
	for (size_t i = 0, j; i < total; i = j) {
		for (j = i + 1; j < total && all[j] == all[i]; j++)
			;
		/* Once fork children are gone, only merged pages are mapped twice. */
		if (!all[i] || all[i] == zpfn || j - i == 1)
			continue;
		shared++;
		sharing += j - i - 1;
	}
	/* Every KSM mapping is one of a shared page's or an unshared page's only one. */
	unshared = ksm_mappings - shared - sharing;
	/* Pages the final advise could not merge, and said why (extra references, busy twins). */
	long refused = 0;

	fprintf(stderr, "    final advise:");
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		long delta = counter(names[i]) - at_settle[i];

		fprintf(stderr, " %s +%ld", names[i] + 6, delta);
		if (!strcmp(names[i], "pages_skipped_pinned") || !strcmp(names[i], "pages_skipped_busy"))
			refused += delta;
	}
	fprintf(stderr, "\n");
	long k_shared = -1, k_sharing = -1, k_unshared = -1, readings = 0;

	for (long last[3] = { -2, -2, -2 }; readings < 20; readings++, usleep(50 * 1000)) {
		k_shared = counter("pages_shared");
		k_sharing = counter("pages_sharing");
		k_unshared = counter("pages_unshared");
		if (k_shared == last[0] && k_sharing == last[1] && k_unshared == last[2])
			break;
		if (readings)
			fprintf(stderr, "    sysfs moved while everyone was parked: shared %ld sharing "
				"%ld unshared %ld, then %ld %ld %ld (%ld pages migrated so far)\n",
				last[0], last[1], last[2], k_shared, k_sharing, k_unshared,
				key_value("/proc/vmstat", "pgmigrate_success") - migrated);
		last[0] = k_shared, last[1] = k_sharing, last[2] = k_unshared;
	}
	/* The processes' KSM mappings again, now that the counts were read: did anything move? */
	long ksm_mappings_now = 0;

	for (int p = 0; p < STRESS_PROCS; p++) {
		char path[64];

		snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pids[p]);
		ksm_mappings_now += proc_kb(path, "KSM") * 1024 / (long)page_size;
	}
	if (ksm_mappings_now != ksm_mappings) {
		fprintf(stderr, "    KSM mappings moved after the snapshot: %ld, then %ld\n",
			ksm_mappings, ksm_mappings_now);
		vmstat_print_changes(&at_snapshot);
	}
	long crossing = frames_across_domains(r, zpfn), apart = common_pages_apart(r);
	/* Each domain: STRESS_COMMON frames, each mapped by all its threads. */
	long expected_sharing = STRESS_DOMAINS * STRESS_COMMON *
				(STRESS_PROCS / STRESS_DOMAINS * STRESS_THREADS - 1);

	if (numa_balancing >= 0)
		write_long("/proc/sys/kernel/numa_balancing", numa_balancing);
	if (proactiveness >= 0)
		write_long("/proc/sys/vm/compaction_proactiveness", proactiveness);
	for (int p = 0; p < STRESS_PROCS; p++)
		r[p].release = 1;
	for (int p = 0; p < STRESS_PROCS; p++)
		wait_exit(pids[p]);
	stress_domains_teardown();
	fprintf(stderr, "    %ld operations; pagemap and smaps: shared %ld sharing %ld unshared %ld\n",
		ops, shared, sharing, unshared);
	CHECK(crossing == 0, "%ld frames mapped in two merge domains", crossing);
	CHECK(bad == 0, "%ld failed operations or content mismatches", bad);
	CHECK(ops > 100, "only %ld operations", ops);
	CHECK(readings < 20, "sysfs counts never held still with everyone parked");
	CHECK(k_shared == shared && k_sharing == sharing && k_unshared == unshared,
	      "sysfs shared %ld sharing %ld unshared %ld", k_shared, k_sharing, k_unshared);
	CHECK(apart <= refused, "%ld mappings of common pages apart from their twins, %ld pages "
	      "refused by the final advise", apart, refused);
	CHECK(sharing >= expected_sharing - refused, "sharing %ld, at least %ld expected", sharing,
	      expected_sharing - refused);
	CHECK(wait_tree_empty() == 0, "tree empty after exit: %ld", counter("stable_nodes"));
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
 * batches, so the process dies with most of the range not paired (how long that takes depends
 * on the machine, and is only printed); nothing leaks (the index empties once the pages are
 * gone).
 */
static enum result test_kill_during_advise(void)
{
	int started[2];
	struct long_advise l = { .pages = 16384 };
	long merged = counter("pages_merged");
	struct timespec t0, t1;
	pid_t pid;
	char c;
	double secs;

	CHECK(pipe(started) == 0, "pipe");
	l.started = started[1];
	pid = spawn(advise_for_long, &l);
	CHECK(read(started[0], &c, 1) == 1, "child about to pair 64 MiB");
	/* Kill as soon as the pairing is under way. */
	while (counter("pages_merged") == merged)
		usleep(1000);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK(kill(pid, SIGKILL) == 0, "kill");
	CHECK(wait_exit(pid) == 128 + SIGKILL, "killed");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	merged = counter("pages_merged") - merged;
	fprintf(stderr, "    died %.3f s after SIGKILL, %ld of %zu pages merged\n", secs, merged,
		l.pages);
	/* Killed at its first merge: a call that ignored the signal would merge every page. */
	CHECK(merged < (long)l.pages, "the advise ran to its end before the signal was seen");
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

static const struct test tests[] = {
	{ "merge_two_regions", test_merge_two_regions, "identical regions share frames; COW" },
	{ "same_content_one_process", test_same_content_one_process, "N copies -> 1 frame" },
	{ "all_different", test_all_different, "distinct pages stay distinct; re-advise" },
	{ "zero_pages", test_zero_pages, "zero pages map the zero page; unmerge" },
	{ "unmerge", test_unmerge, "MADV_UPM_UNMERGEABLE restores private frames" },
	{ "unmerge_after_dontneed", test_unmerge_after_dontneed, "KSM functional test port" },
	{ "cross_process", test_cross_process, "two processes share; writes stay private" },
	{ "busy_candidates", test_busy_candidates, "twins in a process busy with its mmap_lock" },
	{ "sixteen_processes", test_sixteen_processes, "16 processes; counters 0 after exit" },
	{ "many_processes", test_many_processes, "128 processes share one set of frames" },
	{ "gib_range", test_gib_range, "1 GiB ranges, every 8th page present: merged, intact" },
	{ "fork_child_writes", test_fork_child_writes, "fork inherits merged pages" },
	{ "prot_none_mem_write", test_prot_none_mem_write, "write via /proc/self/mem COWs" },
	{ "not_merged_shared_untouched", test_not_merged_shared_and_untouched,
	  "MAP_SHARED skipped; nothing faulted in" },
	{ "pinned_not_merged", test_pinned_not_merged, "io_uring-pinned pages never merged" },
	{ "thp", test_thp, "THP skipped or split per split_thp" },
	{ "mthp", test_mthp, "64 KiB mTHP folios skipped or split per split_thp" },
	{ "bad_input", test_bad_input, "EINVAL/ENOMEM as madvise(2)" },
	{ "process_madvise", test_process_madvise, "advise another process; EPERM; ESRCH" },
	{ "run_tunable", test_run_tunable, "run=0 accepts and merges nothing" },
	{ "no_module_einval", test_no_module_einval, "EINVAL without the module" },
	{ "rmmod_keeps_contents", test_rmmod_keeps_contents, "rmmod/insmod with merged pages" },
	{ "rmmod_during_madvise", test_rmmod_during_madvise, "unload races with madvise" },
	{ "kill_during_advise", test_kill_during_advise, "SIGKILL ends a long pairing early" },
	{ "unmerge_prot_none", test_unmerge_prot_none, "unmerge under PROT_NONE gives copies" },
	{ "counters_exact", test_counters_exact, "every cumulative counter and gauge, exactly" },
	{ "ksm_areas_left_to_ksmd", test_ksm_areas_left_to_ksmd, "VM_MERGEABLE areas skipped" },
	{ "stress", test_stress, "random advise/unmerge/write/fork/mremap/mprotect, seeded" },
};

/* Seconds a test may take: every test needs well under a minute, stress its length more. */
static int test_timeout(const struct test *t)
{
	if (t->fn == test_stress)
		return stress_seconds() + 300;
	return t->fn == test_gib_range ? 600 : 300; /* 2 GiB of address space, filled 1/8 */
}

static enum result run_one(const struct test *t)
{
	pid_t pid;
	int status;

	if (wait_tree_empty()) {
		fprintf(stderr, "    stable tree not empty before the test: %ld nodes\n",
			counter("stable_nodes"));
		return FAIL;
	}
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		setpgid(0, 0); /* the test and every process it starts */
		_exit(t->fn());
	}
	setpgid(pid, pid);
	/* A hung test fails alone instead of holding the whole run. */
	for (time_t deadline = time(NULL) + test_timeout(t);;) {
		pid_t done = waitpid(pid, &status, WNOHANG);

		if (done == pid)
			break;
		if (done < 0)
			return FAIL;
		if (time(NULL) > deadline) {
			kill(-pid, SIGKILL);
			fprintf(stderr, "    timed out after %d s\n", test_timeout(t));
			/* A test stuck in the kernel may never die: do not wait for it forever. */
			for (int i = 0; i < 1500 && waitpid(pid, &status, WNOHANG) != pid; i++)
				usleep(20 * 1000);
			return FAIL;
		}
		usleep(20 * 1000);
	}
	kill(-pid, SIGKILL); /* helpers a failed test left behind */
	/* ksmd as it was: off, pages unmerged, default rate (the parity tests start it). */
	if (read_long("/sys/kernel/mm/ksm/run") != 0) {
		write_long("/sys/kernel/mm/ksm/run", 2);
		write_long("/sys/kernel/mm/ksm/run", 0);
	}
	write_long("/sys/kernel/mm/ksm/pages_to_scan", 100);
	write_long("/sys/kernel/mm/ksm/sleep_millisecs", 20);
	/* Tunables as the module's defaults, for a test that failed half-way. */
	write_long(UPM_SYSFS_DIR "/run", 1);
	write_long(UPM_SYSFS_DIR "/use_zero_pages", 1);
	write_long(UPM_SYSFS_DIR "/split_thp", 1);
	write_str(UPM_SYSFS_DIR "/domain_policy", "uid");
	write_long(UPM_SYSFS_DIR "/domain_cgroup_level", 1);
	write_long(UPM_SYSFS_DIR "/fresh_frame", 0);
	if (!module_loaded()) {
		/* A test that unloads the module failed half-way: put it back for the next. */
		fprintf(stderr, "    left the module unloaded; loading it again\n");
		if (module_load())
			fprintf(stderr, "    insmod failed: %s\n", strerror(errno));
		return FAIL;
	}
	if (!WIFEXITED(status)) {
		fprintf(stderr, "    killed by signal %d\n", WTERMSIG(status));
		return FAIL;
	}
	if (WEXITSTATUS(status) == PASS && wait_tree_empty()) {
		fprintf(stderr, "    left %ld stable nodes behind after exit\n",
			counter("stable_nodes"));
		return FAIL;
	}
	return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0, skipped = 0;
	const struct {
		const struct test *tests;
		size_t count;
	} groups[] = {
		{ tests, ARRAY_SIZE(tests) },
		{ lifecycle_tests, lifecycle_test_count },
		{ parity_tests, parity_test_count },
		{ domain_tests, domain_test_count },
	};
	size_t n = 0;
	const struct test **all;
	/* Set by make test, whose kernel has every feature the tests use: a skip is a failure. */
	int skip_fails = getenv("UPM_SKIP_IS_FAILURE") != NULL;

	for (size_t g = 0; g < ARRAY_SIZE(groups); g++)
		n += groups[g].count;
	all = calloc(n, sizeof(*all));
	n = 0;
	for (size_t g = 0; g < ARRAY_SIZE(groups); g++)
		for (size_t i = 0; i < groups[g].count; i++)
			all[n++] = &groups[g].tests[i];
	page_size = sysconf(_SC_PAGESIZE);
	if (argc > 1 && !strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < n; i++)
			printf("%-30s %s\n", all[i]->name, all[i]->what);
		return 0;
	}
	if (!module_loaded()) {
		fprintf(stderr, "upm module not loaded\n");
		return 2;
	}
	for (size_t i = 0; i < n; i++) {
		const struct test *t = all[i];
		int selected = argc == 1;
		struct timespec t0, t1;
		enum result r;

		for (int a = 1; a < argc; a++)
			selected |= !strcmp(argv[a], t->name);
		if (!selected)
			continue;
		printf("RUN  %s\n", t->name);
		fflush(stdout);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		r = run_one(t);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		/* Where a run's time goes: the slowest tests are sized by their premise. */
		fprintf(stderr, "    %.1f s\n",
			t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9);
		switch (r) {
		case PASS:
			printf("ok   %s\n", t->name);
			passed++;
			break;
		case SKIP:
			if (skip_fails) {
				printf("FAIL %s: skipped on a kernel that has the feature\n", t->name);
				failed++;
				break;
			}
			printf("skip %s\n", t->name);
			skipped++;
			break;
		default:
			printf("FAIL %s\n", t->name);
			failed++;
		}
		fflush(stdout);
	}
	for (int a = 1; a < argc; a++) {
		int known = 0;

		for (size_t i = 0; i < n; i++)
			known |= !strcmp(argv[a], all[i]->name);
		if (!known) {
			printf("FAIL %s: no such test\n", argv[a]);
			failed++;
		}
	}
	printf("vm: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
