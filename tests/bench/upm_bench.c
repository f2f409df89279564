// SPDX-License-Identifier: GPL-2.0
/*
 * UPM against KSM and against the least work any merger must do, in the same VM and the same
 * run (make bench, release kernel).
 *
 *   upm_bench [MiB] [JSON]     (default 256 MiB per adviser; JSON: where to write the figures)
 *   upm_bench pair [MiB]       only the throughput pairing at 100% duplicates, for profiling
 *   upm_bench small [calls]    only 64 KiB advises of unique pages, 64 per round, for profiling
 *   upm_bench twins [GiB]      only one pair of twin regions of that size, advised and checked
 *
 * Sections, each printed as it finishes and written to JSON at the end:
 * - throughput: two processes hold the same R MiB of pseudo-random pages (0%, 50% or 100% of
 *   the second one's pages have a twin in the first); each calls madvise once. The same data,
 *   in the same boot, merged by ksmd (MADV_MERGEABLE, 10000 pages per pass, no sleep), and the
 *   floor: a userspace xxh64 of every page of both copies plus a compare of each pair whose
 *   hashes match, the least reading a correct merger must do. Frames are checked with pagemap.
 * - KSM at its defaults (100 pages / 20 ms) on the 100% data: time to fully merged.
 * - advise cost when nothing merges, and loops of small advises under each domain policy;
 *   fresh_frame=1 against the default.
 * - copy-on-write: first write to a merged page against a first write to a page shared by fork.
 * - scaling: 1, 2 and 4 advisers in separate processes on distinct data, and 1 GiB and 4 GiB
 *   ranges (skipped when the VM lacks the memory).
 * - slab memory per candidate and per merged page, the module's (kmalloc) and the kernel's
 *   (rmap items, nodes), next to KSM's for the same pages; JSON pairs are [module, kernel].
 * Speed never fails the run: only a wrong merge (frames, contents) does.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define KSM_FAST_PAGES 10000
/* How long ksmd at its defaults and with its advisor may take to merge everything. */
#define KSM_FULL_MERGE_LIMIT_S 180

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long ksm_read(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	return read_long(path);
}

static int ksm_write(const char *name, long value)
{
	char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	return write_long(path, value);
}

/*
 * Bytes in use in the slab caches, split between the module's own allocations (the Rust
 * index: kmalloc caches) and the kernel's structures for merged pages (KSM's rmap items and
 * stable nodes, UPM's nodes, the xarray of each mm's items). Exact per cache only when the
 * guest boots with slab_nomerge (make bench does), else named caches may alias kmalloc ones.
 */
struct slab_use {
	long module, kernel;
};

static struct slab_use slab_use(void)
{
	static const char *const kernel_caches[] = { "ksm_rmap_item", "ksm_stable_node",
						     "upm_node", "radix_tree_node" };
	struct slab_use use = { 0, 0 };
	char line[512], name[64];
	long active, objsize;
	FILE *f = fopen("/proc/slabinfo", "r");

	if (!f)
		return (struct slab_use){ -1, -1 };
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%63s %ld %*d %ld", name, &active, &objsize) != 3)
			continue;
		if (!strncmp(name, "kmalloc-", 8))
			use.module += active * objsize;
		for (size_t i = 0; i < ARRAY_SIZE(kernel_caches); i++)
			if (!strcmp(name, kernel_caches[i]))
				use.kernel += active * objsize;
	}
	fclose(f);
	return use;
}

static struct slab_use slab_since(struct slab_use before)
{
	struct slab_use now = slab_use();

	return (struct slab_use){ now.module - before.module, now.kernel - before.kernel };
}

/* Frame numbers of `pages` pages at `addr` in process `pid` (0: this one); 0 where absent. */
static int read_pfns(pid_t pid, uintptr_t addr, size_t pages, uint64_t *pfns)
{
	char path[64];
	size_t bytes = pages * sizeof(*pfns);
	ssize_t got;
	int fd;

	snprintf(path, sizeof(path), pid ? "/proc/%d/pagemap" : "/proc/self/pagemap", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	got = pread(fd, pfns, bytes, (off_t)(addr / page_size * sizeof(*pfns)));
	close(fd);
	if (got != (ssize_t)bytes)
		return -1;
	for (size_t i = 0; i < pages; i++)
		pfns[i] = pfns[i] & PM_PRESENT ? pfns[i] & PM_PFN_MASK : 0;
	return 0;
}

/* How many pages i map the same frame at a in pid_a and at b in pid_b; -1 on error. */
static long shared_frames(pid_t pid_a, uintptr_t a, pid_t pid_b, uintptr_t b, size_t pages)
{
	uint64_t *fa = calloc(pages, 8), *fb = calloc(pages, 8);
	long n = -1;

	if (fa && fb && !read_pfns(pid_a, a, pages, fa) && !read_pfns(pid_b, b, pages, fb)) {
		n = 0;
		for (size_t i = 0; i < pages; i++)
			n += fa[i] && fa[i] == fb[i];
	}
	free(fa);
	free(fb);
	return n;
}

/* The index empties once the sweep has seen every freed page: it may take a while for GiBs. */
static int wait_index_empty(double limit)
{
	double t0 = now_s();

	while (counter("stable_nodes") || counter("candidates")) {
		if (now_s() - t0 > limit)
			return -1;
		usleep(20 * 1000);
	}
	return 0;
}

/* Whether page i of the second region has a twin in the first, for `dup` percent of pages. */
static int has_twin(size_t i, int dup)
{
	return (i * 37 + 11) % 100 < (size_t)dup;
}

static void fill_mix(char *p, size_t pages, uint64_t seed, int dup)
{
	for (size_t i = 0; i < pages; i++)
		fill_page(p + i * page_size, i, has_twin(i, dup) ? seed : seed + 1);
}

static int check_mix(const char *p, size_t pages, uint64_t seed, int dup)
{
	uint64_t expect[4096 / 8];

	for (size_t i = 0; i < pages; i++) {
		fill_page(expect, i, has_twin(i, dup) ? seed : seed + 1);
		if (memcmp(expect, p + i * page_size, page_size))
			return -1;
	}
	return 0;
}

/*
 * A process holding one region, driven over pipes: 'u' advises it with UPM and replies with
 * the seconds taken (-1 on error), 'k' advises it with MADV_MERGEABLE, 'c' checks its contents,
 * 'q' ends it (its siblings hold copies of its pipes, so it cannot wait for end of file).
 */
struct holder {
	pid_t pid;
	int cmd, reply;
	uintptr_t addr;
	size_t pages;
};

static void holder_main(int cmd, int reply, size_t pages, uint64_t seed, int dup)
{
	char *p = map_anon(pages);
	uintptr_t addr = (uintptr_t)p;
	double t;
	char c;

	if (!p)
		_exit(1);
	fill_mix(p, pages, seed, dup);
	if (write(reply, &addr, sizeof(addr)) != sizeof(addr))
		_exit(1);
	while (read(cmd, &c, 1) == 1 && c != 'q') {
		t = now_s();
		if (c == 'u')
			t = advise(p, pages) ? -1 : now_s() - t;
		else if (c == 'k')
			t = madvise(p, pages * page_size, MADV_MERGEABLE) ? -1 : 0;
		else if (c == 'c')
			t = check_mix(p, pages, seed, dup) ? -1 : 0;
		if (write(reply, &t, sizeof(t)) != sizeof(t))
			_exit(1);
	}
	_exit(0);
}

static int holder_start(struct holder *h, size_t pages, uint64_t seed, int dup)
{
	int to[2], from[2];

	if (pipe(to) || pipe(from))
		return -1;
	h->pid = fork();
	if (h->pid == 0) {
		close(to[1]);
		close(from[0]);
		holder_main(to[0], from[1], pages, seed, dup);
	}
	close(to[0]);
	close(from[1]);
	h->cmd = to[1];
	h->reply = from[0];
	h->pages = pages;
	return read(h->reply, &h->addr, sizeof(h->addr)) == sizeof(h->addr) ? 0 : -1;
}

static double holder_ask(struct holder *h, char c)
{
	double t = -1;

	if (write(h->cmd, &c, 1) != 1 || read(h->reply, &t, sizeof(t)) != sizeof(t))
		return -1;
	return t;
}

static void holder_stop(struct holder *h)
{
	char quit = 'q';

	if (write(h->cmd, &quit, 1) != 1)
		kill(h->pid, SIGKILL);
	close(h->cmd);
	close(h->reply);
	wait_exit(h->pid);
}

struct throughput {
	int dup;
	size_t expect;
	double upm_first, upm_second, ksm, floor;
	struct slab_use upm_candidates, upm_merged, ksm_merged;
};

/* UPM on the two holders: first and second advise, frames and contents checked. */
static int run_upm(struct throughput *r, size_t pages, uint64_t seed)
{
	struct holder a, b;
	struct slab_use slab0;
	long shared;
	int ret = -1;

	if (holder_start(&a, pages, seed, 100) || holder_start(&b, pages, seed, r->dup))
		return -1;
	slab0 = slab_use();
	r->upm_first = holder_ask(&a, 'u');
	r->upm_candidates = slab_since(slab0);
	r->upm_second = holder_ask(&b, 'u');
	r->upm_merged = slab_since(slab0);
	shared = shared_frames(a.pid, a.addr, b.pid, b.addr, pages);
	if (r->upm_first < 0 || r->upm_second < 0)
		fprintf(stderr, "UPM madvise failed\n");
	else if (shared != (long)r->expect)
		fprintf(stderr, "UPM shares %ld frames, expected %zu\n", shared, r->expect);
	else if (holder_ask(&a, 'c') || holder_ask(&b, 'c'))
		fprintf(stderr, "UPM changed the contents of a page\n");
	else
		ret = 0;
	holder_stop(&a);
	holder_stop(&b);
	return wait_index_empty(60) ? -1 : ret;
}

/*
 * Seconds until ksmd has merged `expect` pages of the two holders (for 0% duplicates: two full
 * scans, the least ksmd needs before it could merge anything), or -1 after `limit` seconds.
 */
static double ksm_merge(struct holder *a, struct holder *b, size_t expect, long to_scan,
			long sleep_ms, double limit, struct slab_use *slab_used)
{
	long scans = ksm_read("full_scans"), shared;
	struct slab_use slab0 = slab_use();
	double t0, t = -1;

	if (holder_ask(a, 'k') || holder_ask(b, 'k'))
		return -1;
	if (to_scan) /* 0: the scan-time advisor sets it (and refuses writes) */
		ksm_write("pages_to_scan", to_scan);
	ksm_write("sleep_millisecs", sleep_ms);
	t0 = now_s();
	ksm_write("run", 1);
	while (now_s() - t0 < limit) {
		if (expect ? ksm_read("pages_sharing") >= (long)expect :
			     ksm_read("full_scans") >= scans + 2) {
			t = now_s() - t0;
			break;
		}
		usleep(2 * 1000);
	}
	ksm_write("run", 0);
	if (slab_used)
		*slab_used = slab_since(slab0);
	shared = shared_frames(a->pid, a->addr, b->pid, b->addr, a->pages);
	if (t >= 0 && (shared != (long)expect || holder_ask(a, 'c') || holder_ask(b, 'c'))) {
		fprintf(stderr, "KSM shares %ld frames, expected %zu\n", shared, expect);
		t = -2;
	}
	ksm_write("run", 2); /* unmerge everything ksmd merged */
	return t;
}

static double run_ksm(size_t pages, uint64_t seed, int dup, size_t expect, long to_scan,
		      long sleep_ms, double limit, struct slab_use *slab_used)
{
	struct holder a, b;
	double t;

	if (holder_start(&a, pages, seed, 100) || holder_start(&b, pages, seed, dup))
		return -1;
	t = ksm_merge(&a, &b, expect, to_scan, sleep_ms, limit, slab_used);
	holder_stop(&a);
	holder_stop(&b);
	ksm_write("run", 0);
	return t;
}

/* A page compare a word at a time, as the kernel's memcmp does: no SIMD. */
static int words_differ(const void *a, const void *b, size_t len)
{
	const uint64_t *x = a, *y = b;

	for (size_t i = 0; i < len / 8; i++)
		if (x[i] != y[i])
			return 1;
	return 0;
}

/*
 * The floor: hash every page of both copies, compare each pair whose hashes match, with
 * `compare`. Under software emulation glibc's vector memcmp ran 10x slower than the hash, a
 * cost of the emulator and not of the work, so the floor is the faster of it and a word loop.
 */
static double run_floor_with(size_t pages, uint64_t seed, int dup, size_t expect,
			     int (*compare)(const void *, const void *, size_t))
{
	char *a = map_anon(pages), *b = map_anon(pages);
	uint64_t *ha = calloc(pages, 8), *hb = calloc(pages, 8);
	size_t equal = 0;
	double t;

	if (!a || !b || !ha || !hb)
		return -1;
	fill_mix(a, pages, seed, 100);
	fill_mix(b, pages, seed, dup);
	t = now_s();
	for (size_t i = 0; i < pages; i++)
		ha[i] = xxh64_page((const uint64_t *)(a + i * page_size));
	for (size_t i = 0; i < pages; i++) {
		hb[i] = xxh64_page((const uint64_t *)(b + i * page_size));
		equal += hb[i] == ha[i] && !compare(a + i * page_size, b + i * page_size, page_size);
	}
	t = now_s() - t;
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);
	free(ha);
	free(hb);
	return equal == expect ? t : -1;
}

static double run_floor(size_t pages, uint64_t seed, int dup, size_t expect)
{
	double libc = run_floor_with(pages, seed, dup, expect, memcmp);
	double words = run_floor_with(pages, seed, dup, expect, words_differ);

	return libc < 0 || words < 0 ? -1 : libc < words ? libc : words;
}

/* Seconds for one write to every page (undone untimed). */
static double write_pass(char *p, size_t pages)
{
	double t0 = now_s(), t;

	for (size_t i = 0; i < pages; i++)
		p[i * page_size] ^= 1;
	t = now_s() - t0;
	for (size_t i = 0; i < pages; i++)
		p[i * page_size] ^= 1;
	return t;
}

/* Microseconds per MADV_UPM_MERGEABLE call of `bytes` each, over 4 MiB of unique pages. */
static double small_advise_us(size_t bytes, uint64_t seed)
{
	size_t pages = 1024, step = bytes / page_size, calls = pages / step;
	char *p = map_anon(pages);
	double t;

	if (!p)
		return -1;
	fill_pages(p, pages, seed, 1);
	t = now_s();
	for (size_t i = 0; i < pages; i += step)
		if (advise(p + i * page_size, step))
			return -1;
	t = now_s() - t;
	munmap(p, pages * page_size);
	return t * 1e6 / calls;
}

/* Seconds to advise `a` then its twin `b` (in `first`, `second`); every page must merge. */
static int advise_twins(char *a, char *b, size_t pages, uint64_t seed, double *first,
			double *second)
{
	long busy = counter("pages_skipped_busy"), skipped = counter("pages_skipped");
	long not_present = counter("pages_skipped_not_present");
	double t = now_s();
	long shared;

	if (advise(a, pages))
		return -1;
	*first = now_s() - t;
	t = now_s();
	if (advise(b, pages))
		return -1;
	*second = now_s() - t;
	shared = shared_frames(0, (uintptr_t)a, 0, (uintptr_t)b, pages);
	if (shared != (long)pages || check_pages(b, pages, seed, 1) >= 0) {
		fprintf(stderr,
			"UPM did not merge every page (fresh_frame=%ld): %ld of %zu shared, "
			"skipped +%ld (not present +%ld, busy +%ld), swap used %ld kB, NUMA balancing %ld\n",
			counter("fresh_frame"), shared, pages, counter("pages_skipped") - skipped,
			counter("pages_skipped_not_present") - not_present,
			counter("pages_skipped_busy") - busy,
			proc_kb("/proc/meminfo", "SwapTotal") - proc_kb("/proc/meminfo", "SwapFree"),
			read_long("/proc/sys/kernel/numa_balancing"));
		return -1;
	}
	return 0;
}

/* One pair of twin regions of `pages` pages, advised and merged; unmapped before returning. */
static int twin_pair(size_t pages, uint64_t seed, double *first, double *second)
{
	char *a, *b;
	int ret;

	if (map_twins(&a, &b, pages, seed))
		return -1;
	ret = advise_twins(a, b, pages, seed, first, second);
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);
	return wait_index_empty(120) ? -1 : ret;
}

struct cow {
	double merged_us, fork_us, plain_us, advised_unique_us;
};

/* Microseconds per first write: to a merged page, to a fork-shared page, to an unshared one. */
static int run_cow(size_t pages, struct cow *r)
{
	char *a, *b, *c;
	double first, second;
	int go[2];
	pid_t child;

	if (map_twins(&a, &b, pages, 5151) || advise_twins(a, b, pages, 5151, &first, &second))
		return -1;
	r->merged_us = write_pass(b, pages) * 1e6 / pages;
	if (check_pages(a, pages, 5151, 1) >= 0 || check_pages(b, pages, 5151, 1) >= 0)
		return -1;
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);

	c = map_anon(pages);
	if (!c || pipe(go))
		return -1;
	fill_pages(c, pages, 5252, 1);
	r->plain_us = write_pass(c, pages) * 1e6 / pages;
	child = fork();
	if (child == 0) {
		char x;

		close(go[1]);
		_exit(read(go[0], &x, 1) < 0);
	}
	close(go[0]);
	r->fork_us = write_pass(c, pages) * 1e6 / pages;
	close(go[1]);
	wait_exit(child);
	munmap(c, pages * page_size);

	/* Pages advised with no twin are left as they were: their first write costs nothing. */
	c = map_anon(pages);
	if (!c)
		return -1;
	fill_pages(c, pages, 5353, 1);
	if (advise(c, pages))
		return -1;
	r->advised_unique_us = write_pass(c, pages) * 1e6 / pages;
	munmap(c, pages * page_size);
	return wait_index_empty(60);
}

/*
 * Scaling: N processes advise at the same moment. The same weights: every process holds the
 * same contents, as instances of one function do, and advises them once. Own twins: each
 * process merges twin regions of contents of its own. A domain each: the twins of every
 * process hold the same contents, but each process runs under a uid of its own, so that under
 * the default domain policy they share nothing and nothing merges across them.
 */
enum scale_mode { SAME_WEIGHTS, OWN_TWINS, OWN_DOMAINS, SCALE_MODES };

static const char *const scale_modes[] = { "the same weights", "their own twins",
					   "a domain each" };

/* What one scaling adviser is given. */
struct scaler {
	size_t pages;
	enum scale_mode mode;
	int index, ready, go, done, quit, quit_w;
};

/* Where one adviser's regions are, as it reports them to the parent. */
struct scaler_regions {
	int index;
	uintptr_t a, b;
};

/* Pages of each of an adviser's regions: the weights whole, or each of two twins. */
static size_t region_pages(enum scale_mode mode, size_t pages)
{
	return mode == SAME_WEIGHTS ? pages : pages / 2;
}

static uint64_t scaler_seed(const struct scaler *s)
{
	return s->mode == OWN_TWINS ? 6000 + s->index : 6000;
}

static int scaler_main(void *arg)
{
	struct scaler *s = arg;
	struct scaler_regions at = { s->index, 0, 0 };
	size_t pages = region_pages(s->mode, s->pages);
	uint64_t seed = scaler_seed(s);
	char *a, *b = NULL, x = 'f';
	int ok;

	/* The parent's end: the read below ends when the parent closes its own. */
	close(s->quit_w);
	if (s->mode == OWN_DOMAINS && setuid(3000 + s->index))
		return 1;
	if (s->mode == SAME_WEIGHTS) {
		a = map_anon(pages);
		if (!a)
			return 1;
		fill_pages(a, pages, seed, 1);
	} else if (map_twins(&a, &b, pages, seed)) {
		return 1;
	}
	at.a = (uintptr_t)a;
	at.b = (uintptr_t)b;
	if (write(s->ready, &at, sizeof(at)) != sizeof(at) || read(s->go, &x, 1) != 1)
		return 1;
	ok = !advise(a, pages) && (!b || !advise(b, pages));
	/* Every copy still holds its contents, whatever was merged. */
	ok = ok && check_pages(a, pages, seed, 1) < 0 && (!b || check_pages(b, pages, seed, 1) < 0);
	x = ok ? 'k' : 'f';
	if (write(s->done, &x, 1) != 1)
		return 1;
	/* Stay until the parent has read the frames. */
	while (read(s->quit, &x, 1) > 0)
		;
	return ok ? 0 : 1;
}

/*
 * Whether the advisers' regions ended as merging should leave them: the same weights all on
 * one frame per page; each process's twins on one frame per page; and, with a domain each,
 * nothing shared across processes.
 */
static int scaling_merged(int n, enum scale_mode mode, size_t pages, const pid_t *pids,
			  const struct scaler_regions *at)
{
	size_t region = region_pages(mode, pages);
	uint64_t *all = mode == SAME_WEIGHTS ? calloc(n * region, sizeof(*all)) : NULL;
	long apart = 0, across = 0;
	int bad = mode == SAME_WEIGHTS && !all;

	/* The same weights: every adviser's page j on adviser 0's frame. */
	for (int i = 0; all && !bad && i < n; i++)
		bad = read_pfns(pids[i], at[i].a, region, all + i * region);
	for (size_t j = 0; all && !bad && j < region; j++)
		for (int i = 1; i < n; i++)
			if (!all[j] || all[i * region + j] != all[j]) {
				apart++;
				break;
			}
	free(all);
	for (int i = 0; !bad && mode != SAME_WEIGHTS && i < n; i++) {
		long twins = shared_frames(pids[i], at[i].a, pids[i], at[i].b, region);
		long shared = i ? shared_frames(pids[0], at[0].a, pids[i], at[i].a, region) : 0;

		bad = twins < 0 || shared < 0;
		apart += (long)region - twins;
		across += shared;
	}
	if (bad || apart || across) {
		fprintf(stderr,
			"%d advisers of %s: %ld of %zu pages not on their twins' frame, %ld shared "
			"across processes (skipped busy %ld, not present %ld, other %ld)%s\n",
			n, scale_modes[mode], apart, region, across, counter("pages_skipped_busy"),
			counter("pages_skipped_not_present"), counter("pages_skipped_other"),
			bad ? ", pagemap unreadable" : "");
		return -1;
	}
	return 0;
}

/* Wall-clock seconds until all `n` advisers returned from merging `pages` pages each. */
static double run_scaling(int n, enum scale_mode mode, size_t pages)
{
	int ready[2], go[2], done[2], quit[2], failed = 0;
	struct scaler_regions at[16];
	pid_t pids[16];
	double t;
	char x;

	if (n > 16 || pipe(ready) || pipe(go) || pipe(done) || pipe(quit))
		return -1;
	for (int i = 0; i < n; i++) {
		struct scaler s = { pages, mode, i, ready[1], go[0], done[1], quit[0], quit[1] };

		pids[i] = spawn(scaler_main, &s);
	}
	close(quit[0]);
	/* Each adviser says where its regions are once they are written, in any order. */
	for (int i = 0; !failed && i < n; i++) {
		struct scaler_regions r;

		if (read(ready[0], &r, sizeof(r)) != sizeof(r) || r.index < 0 || r.index >= n)
			failed = 1;
		else
			at[r.index] = r;
	}
	t = now_s();
	for (int i = 0; !failed && i < n; i++)
		if (write(go[1], "g", 1) != 1)
			failed = 1;
	for (int i = 0; !failed && i < n; i++)
		if (read(done[0], &x, 1) != 1 || x != 'k')
			failed = 1;
	t = now_s() - t;
	failed = failed || scaling_merged(n, mode, pages, pids, at);
	close(quit[1]);
	close(go[1]);
	for (int i = 0; i < n; i++)
		failed |= wait_exit(pids[i]);
	close(ready[0]);
	close(ready[1]);
	close(go[0]);
	close(done[0]);
	close(done[1]);
	return failed || wait_index_empty(120) ? -1 : t;
}

/*
 * Everyone else's tail latency: while advisers merge, two bystanders that share nothing with
 * them run on the same machine. One touches 16 pages of its own memory and makes a small
 * system call, then sleeps 1 ms (a process waking for its own work); the other advises one
 * page of new unique data (a function advising as it starts). Each records the time of every
 * iteration's work, not of its sleep. Measured with nothing else running, while 16 processes
 * advise 128 MiB each of the same weights (2 GiB in all), and while ksmd, unthrottled, merges
 * the same 16 processes' weights: each bystander's p99 against its own quiet p99.
 */
#define WATCH_MAX (1 << 20)
#define WATCH_ADVISERS 16
#define WATCH_MIB 128

enum bystander_kind { TOUCHER, SMALL_ADVISER, BYSTANDERS };

static const char *const bystander_names[] = { "touches its memory, getppid()",
					       "advises 4 KiB of unique data" };

/* Shared with the bystanders: the stop flag and each one's iteration times. */
struct watch {
	volatile int stop, started[BYSTANDERS];
	size_t n[BYSTANDERS];
	float us[BYSTANDERS][WATCH_MAX];
};

enum watch_scene { QUIET, UPM_MERGING, KSM_MERGING, SCENES };

static const char *const scene_names[] = { "quiet", "UPM, 16 advisers", "KSM unthrottled" };

struct watch_kind {
	struct watch *w;
	enum bystander_kind kind;
};

static int bystander_main(void *arg)
{
	const struct watch_kind *k = arg;
	struct watch *w = k->w;
	size_t touch = 16, pages = 4096, at = 0;
	char *mem = map_anon(pages);
	uint64_t round = 0;

	if (!mem)
		return 1;
	memset(mem, 1, pages * page_size);
	w->started[k->kind] = 1;
	while (!w->stop && w->n[k->kind] < WATCH_MAX) {
		double t;

		usleep(1000);
		t = now_s();
		if (k->kind == TOUCHER) {
			for (size_t i = 0; i < touch; i++, at = (at + 1) % pages)
				mem[at * page_size] += 1;
			if (getppid() < 0)
				return 1;
		} else {
			fill_page(mem, round, 0xb157a + getpid());
			round++;
			if (advise(mem, 1))
				return 1;
		}
		w->us[k->kind][w->n[k->kind]++] = (float)((now_s() - t) * 1e6);
	}
	return 0;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x > y) - (x < y);
}

/* Starts both bystanders; returns once each is in its loop. */
static int watch_start(struct watch *w, pid_t *pids)
{
	static struct watch_kind kinds[BYSTANDERS];

	memset(w, 0, offsetof(struct watch, us));
	for (int k = 0; k < BYSTANDERS; k++) {
		kinds[k] = (struct watch_kind){ w, k };
		pids[k] = spawn(bystander_main, &kinds[k]);
	}
	for (int i = 0; i < 10000 && !(w->started[TOUCHER] && w->started[SMALL_ADVISER]); i++)
		usleep(1000);
	return w->started[TOUCHER] && w->started[SMALL_ADVISER] ? 0 : -1;
}

/* Stops the bystanders; p50 and p99 of each one's iterations, in microseconds. */
static int watch_stop(struct watch *w, const pid_t *pids, double pct[BYSTANDERS][2])
{
	int failed = 0;

	w->stop = 1;
	for (int k = 0; k < BYSTANDERS; k++) {
		size_t n = w->n[k];

		failed |= wait_exit(pids[k]);
		if (n < 100)
			return -1;
		qsort(w->us[k], n, sizeof(float), cmp_float);
		pct[k][0] = w->us[k][n / 2];
		pct[k][1] = w->us[k][n * 99 / 100];
	}
	return failed ? -1 : 0;
}

/* The 16 processes holding the same weights; all advised by UPM or by ksmd. */
static int watch_merging(struct watch *w, enum watch_scene scene, double pct[BYSTANDERS][2],
			 double *seconds)
{
	size_t pages = (size_t)WATCH_MIB << 20 >> 12, expect = (WATCH_ADVISERS - 1) * pages;
	struct holder h[WATCH_ADVISERS];
	pid_t pids[BYSTANDERS];
	int started = 0, failed = 0;
	double t, reply;

	for (; started < WATCH_ADVISERS; started++)
		if (holder_start(&h[started], pages, 8080, 100))
			break;
	if (started < WATCH_ADVISERS || watch_start(w, pids)) {
		while (started--)
			holder_stop(&h[started]);
		return -1;
	}
	t = now_s();
	if (scene == QUIET) {
		sleep(5);
	} else if (scene == UPM_MERGING) {
		char c = 'u';

		/* All at once: every holder gets its command before any reply is read. */
		for (int i = 0; i < WATCH_ADVISERS; i++)
			failed |= write(h[i].cmd, &c, 1) != 1;
		for (int i = 0; i < WATCH_ADVISERS; i++)
			failed |= read(h[i].reply, &reply, sizeof(reply)) != sizeof(reply) ||
				  reply < 0;
		failed |= shared_frames(h[0].pid, h[0].addr, h[WATCH_ADVISERS - 1].pid,
					h[WATCH_ADVISERS - 1].addr, pages) != (long)pages;
	} else {
		for (int i = 0; i < WATCH_ADVISERS; i++)
			failed |= holder_ask(&h[i], 'k') != 0;
		ksm_write("pages_to_scan", KSM_FAST_PAGES);
		ksm_write("sleep_millisecs", 0);
		ksm_write("run", 1);
		while (!failed && ksm_read("pages_sharing") < (long)expect && now_s() - t < 600)
			usleep(10 * 1000);
		failed |= ksm_read("pages_sharing") < (long)expect;
	}
	*seconds = now_s() - t;
	if (watch_stop(w, pids, pct))
		failed = 1;
	if (scene == KSM_MERGING) {
		ksm_write("run", 2);
		ksm_write("run", 0);
	}
	for (int i = 0; i < started; i++)
		holder_stop(&h[i]);
	return failed || wait_index_empty(120) ? -1 : 0;
}

static double mib_s(double mib, double t)
{
	return t > 0 ? mib / t : 0;
}

static const int dups[] = { 0, 50, 100 };
static const char *const policies[] = { "uid", "global", "userns", "cgroup" };
static const int scale_n[] = { 1, 2, 4, 8, 16 };
static const int large_gib[] = { 1, 4 };

/* Everything one run measures: printed section by section, written to JSON at the end. */
static struct results {
	size_t mib, pages;
	struct throughput tp[ARRAY_SIZE(dups)];
	double ksm_default, ksm_advisor, plain[2], fresh[2];
	double small[ARRAY_SIZE(policies)][2];
	struct cow cow;
	double scale[ARRAY_SIZE(scale_n)][SCALE_MODES];
	double large[ARRAY_SIZE(large_gib)][2];
	double bystander[SCENES][BYSTANDERS][2], bystander_s[SCENES];
} res;

static int bench_throughput(void)
{
	size_t mib = res.mib, pages = res.pages;

	printf("\nthroughput: two processes, one madvise each; MiB/s over both copies (2 x %zu MiB)\n",
	       mib);
	printf("  dup  UPM first  UPM second  UPM both   KSM(10000/0ms)  floor   UPM/KSM UPM/floor\n");
	for (size_t d = 0; d < ARRAY_SIZE(dups); d++) {
		struct throughput *r = &res.tp[d];
		double both;

		r->dup = dups[d];
		for (size_t i = 0; i < pages; i++)
			r->expect += has_twin(i, r->dup);
		if (run_upm(r, pages, 100 + d))
			return -1;
		r->ksm = run_ksm(pages, 100 + d, r->dup, r->expect, KSM_FAST_PAGES, 0, 300,
				 &r->ksm_merged);
		r->floor = run_floor(pages, 100 + d, r->dup, r->expect);
		if (r->ksm < 0 || r->floor < 0) {
			fprintf(stderr, "KSM (%.3f) or the floor (%.3f) failed\n", r->ksm, r->floor);
			return -1;
		}
		both = r->upm_first + r->upm_second;
		printf("  %3d%% %7.0f    %7.0f    %7.0f    %7.0f        %7.0f  %6.2fx  %6.2fx\n",
		       r->dup, mib_s(mib, r->upm_first), mib_s(mib, r->upm_second),
		       mib_s(2 * mib, both), mib_s(2 * mib, r->ksm), mib_s(2 * mib, r->floor),
		       r->ksm / both, r->floor / both);
	}
	return 0;
}

/* ksmd's time to fully merged at 100% duplicates, or -1 past `limit` seconds: KSM's way. */
static double ksm_full_merge(long to_scan, double limit)
{
	return run_ksm(res.pages, 100 + ARRAY_SIZE(dups) - 1, 100, res.pages, to_scan, 20, limit,
		       NULL);
}

/* Prints how ksmd, set up as `how`, compares with UPM's `upm` seconds. */
static void print_against_upm(const char *how, double ksm, double limit, double upm)
{
	const char *over = ksm < 0 ? "> " : "";

	ksm = ksm < 0 ? limit : ksm;
	printf("  KSM %s: %s%.1f s: UPM %s%.0fx faster\n", how, over, ksm, over, ksm / upm);
}

static int bench_ksm_default(void)
{
	const struct throughput *full = &res.tp[ARRAY_SIZE(dups) - 1];
	double upm = full->upm_first + full->upm_second, limit = KSM_FULL_MERGE_LIMIT_S;
	char how[96];

	res.ksm_default = ksm_full_merge(100, limit);
	printf("\ntime to fully merged, 100%% duplicates: UPM %.3f s\n", upm);
	print_against_upm("at its defaults (100 pages / 20 ms)", res.ksm_default, limit, upm);
	/* ksmd's own answer to slow merging: the advisor sizes each scan to its target time. */
	if (write_str("/sys/kernel/mm/ksm/advisor_mode", "scan-time"))
		return -1;
	res.ksm_advisor = ksm_full_merge(0, limit);
	if (write_str("/sys/kernel/mm/ksm/advisor_mode", "none"))
		return -1;
	snprintf(how, sizeof(how), "with advisor_mode=scan-time (target %ld s per scan)",
		 ksm_read("advisor_target_scan_time"));
	print_against_upm(how, res.ksm_advisor, limit, upm);
	return 0;
}

static int bench_fresh_frame(void)
{
	size_t pages = res.pages / 4;
	int ret;

	if (twin_pair(pages, 4343, &res.plain[0], &res.plain[1]))
		return -1;
	set_tunable("fresh_frame", 1);
	ret = twin_pair(pages, 4343, &res.fresh[0], &res.fresh[1]);
	set_tunable("fresh_frame", 0);
	printf("\nsecond advise of %zu MiB with fresh_frame=1: %.3f s against %.3f s (%+.0f%%)\n",
	       res.mib / 4, res.fresh[1], res.plain[1],
	       100 * (res.fresh[1] - res.plain[1]) / res.plain[1]);
	return ret;
}

static int bench_small_advises(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(policies); i++) {
		write_str(UPM_SYSFS_DIR "/domain_policy", policies[i]);
		res.small[i][0] = small_advise_us(4096, 777 + 4096);
		res.small[i][1] = small_advise_us(65536, 777 + 65536);
	}
	write_str(UPM_SYSFS_DIR "/domain_policy", "uid");
	printf("small advises of unique pages, per call (domain policy):\n");
	for (size_t i = 0; i < ARRAY_SIZE(policies); i++)
		printf("  %-6s  4 KiB: %7.1f us   64 KiB: %7.1f us\n", policies[i], res.small[i][0],
		       res.small[i][1]);
	return wait_index_empty(60);
}

static int bench_cow(void)
{
	struct cow *c = &res.cow;

	if (run_cow(4096, c))
		return -1;
	printf("\nfirst write per page: merged page %.2f us, fork-shared page %.2f us (%.2fx), "
	       "unshared %.2f us, advised with no twin %.2f us\n",
	       c->merged_us, c->fork_us, c->merged_us / c->fork_us, c->plain_us,
	       c->advised_unique_us);
	return 0;
}

/* N advisers at the same moment, in each mode; `pages` pages advised by each. */
static int scaling_table(size_t pages)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	printf("\nscaling: N processes each advising %zu MiB at the same moment, %ld vCPUs: time "
	       "until the last call returned, MiB/s in all, x N = 1 (goal: 0.8 x min(N, vCPUs))\n",
	       pages >> 8, cpus);
	printf("   N  goal ");
	for (int m = 0; m < SCALE_MODES; m++)
		printf("  %-28s", scale_modes[m]);
	printf("\n");
	for (size_t i = 0; i < ARRAY_SIZE(scale_n); i++) {
		int n = scale_n[i];

		printf("  %2d  %4.2fx", n, 0.8 * (n < cpus ? n : cpus));
		for (int m = 0; m < SCALE_MODES; m++) {
			double t = run_scaling(n, m, pages), *one = &res.scale[0][m];
			double rate = mib_s((double)n * (pages >> 8), t);

			res.scale[i][m] = t;
			if (t < 0) {
				printf("\n");
				return -1;
			}
			printf("  %7.3f s %5.0f MiB/s %5.2fx ", t, rate,
			       rate / mib_s((double)(pages >> 8), *one));
		}
		printf("\n");
	}
	return 0;
}

static int bench_scaling(void)
{
	if (scaling_table(res.pages / 2))
		return -1;
	printf("large ranges, one process, twin regions of:\n");
	for (size_t i = 0; i < ARRAY_SIZE(large_gib); i++) {
		size_t pages = (size_t)large_gib[i] << 30 >> 12;
		long avail = proc_kb("/proc/meminfo", "MemAvailable");
		double *t = res.large[i], gib_mib = 1024.0 * large_gib[i];

		t[0] = t[1] = -1;
		if (avail < (long)(2 * (pages * 4) + (512 << 10))) {
			printf("  %d GiB: skipped, MemAvailable %ld MiB\n", large_gib[i], avail >> 10);
			continue;
		}
		if (twin_pair(pages, 7000 + i, &t[0], &t[1]))
			return -1;
		printf("  %d GiB: first %.3f s (%.0f MiB/s), second %.3f s (%.0f MiB/s)\n",
		       large_gib[i], t[0], mib_s(gib_mib, t[0]), t[1], mib_s(gib_mib, t[1]));
	}
	return 0;
}

static int bench_bystanders(void)
{
	struct watch *w = map_shared(sizeof(*w));
	double (*pct)[BYSTANDERS][2] = res.bystander;

	if (!w)
		return -1;
	printf("\nbystanders: p50 / p99 of one iteration's work (us), and p99 against quiet; %d "
	       "processes merge %d MiB each of the same weights\n", WATCH_ADVISERS, WATCH_MIB);
	printf("  %-20s %-9s", "", "seconds");
	for (int k = 0; k < BYSTANDERS; k++)
		printf("  %-38s", bystander_names[k]);
	printf("\n");
	for (int scene = 0; scene < SCENES; scene++) {
		if (watch_merging(w, scene, pct[scene], &res.bystander_s[scene])) {
			fprintf(stderr, "bystanders: %s failed\n", scene_names[scene]);
			return -1;
		}
		printf("  %-20s %7.1f  ", scene_names[scene], res.bystander_s[scene]);
		for (int k = 0; k < BYSTANDERS; k++)
			printf("  %8.0f / %8.0f  (%5.2fx)         ", pct[scene][k][0], pct[scene][k][1],
			       pct[scene][k][1] / pct[QUIET][k][1]);
		printf("\n");
	}
	printf("  goals: the toucher's p99 within 1.2x of quiet; the small adviser's under 1000 us\n");
	munmap(w, sizeof(*w));
	return 0;
}

/* Bytes per page of a slab measurement over the throughput run's pages. */
static double per_page(long bytes)
{
	return (double)bytes / res.pages;
}

static void print_slab(void)
{
	const struct throughput *full = &res.tp[ARRAY_SIZE(dups) - 1];

	printf("\nslab memory per page, 100%% duplicates (module: kmalloc caches; kernel: rmap "
	       "items, stable and UPM nodes, xarrays):\n");
	printf("  UPM candidate:                    module %6.1f B, kernel %6.1f B\n",
	       per_page(full->upm_candidates.module), per_page(full->upm_candidates.kernel));
	printf("  UPM merged page (two mappings):   module %6.1f B, kernel %6.1f B\n",
	       per_page(full->upm_merged.module), per_page(full->upm_merged.kernel));
	printf("  KSM merged page (two mappings):   ksmd   %6.1f B, kernel %6.1f B\n",
	       per_page(full->ksm_merged.module), per_page(full->ksm_merged.kernel));
}

/* "name": {"key": value or [values], ...} for `n` keys of `width` values each. */
static void json_by_count(FILE *f, const char *name, const int *keys, const double *values,
			  size_t n, size_t width)
{
	fprintf(f, "  \"%s\": {", name);
	for (size_t i = 0; i < n; i++) {
		fprintf(f, "%s\"%d\": %s", i ? ", " : "", keys[i], width > 1 ? "[" : "");
		for (size_t w = 0; w < width; w++)
			fprintf(f, "%s%.4f", w ? ", " : "", values[i * width + w]);
		fprintf(f, "%s", width > 1 ? "]" : "");
	}
	fprintf(f, "},\n");
}

static int write_json(const char *path)
{
	const struct throughput *full = &res.tp[ARRAY_SIZE(dups) - 1];
	size_t mib = res.mib;
	time_t now = time(NULL);
	struct utsname un;
	char date[32];
	FILE *f = fopen(path, "w");

	if (!f)
		return -1;
	uname(&un);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", gmtime(&now));
	fprintf(f, "{\n  \"date\": \"%s\", \"commit\": \"%s\", \"kernel\": \"%s\", \"vcpus\": %ld,\n",
		date, getenv("UPM_COMMIT") ?: "unknown", un.release, sysconf(_SC_NPROCESSORS_ONLN));
	fprintf(f, "  \"mib\": %zu,\n  \"throughput\": [\n", mib);
	for (size_t d = 0; d < ARRAY_SIZE(dups); d++) {
		const struct throughput *r = &res.tp[d];

		fprintf(f,
			"    {\"dup_percent\": %d, \"upm_first_s\": %.4f, \"upm_second_s\": %.4f, "
			"\"ksm_s\": %.4f, \"floor_s\": %.4f, \"upm_mib_s\": %.1f, \"ksm_mib_s\": %.1f, "
			"\"floor_mib_s\": %.1f}%s\n",
			r->dup, r->upm_first, r->upm_second, r->ksm, r->floor,
			mib_s(2 * mib, r->upm_first + r->upm_second), mib_s(2 * mib, r->ksm),
			mib_s(2 * mib, r->floor), d + 1 < ARRAY_SIZE(dups) ? "," : "");
	}
	fprintf(f, "  ],\n  \"ksm_default_s\": %.3f,\n  \"ksm_advisor_s\": %.3f,\n",
		res.ksm_default, res.ksm_advisor);
	fprintf(f, "  \"ksm_limit_s\": %d,\n", KSM_FULL_MERGE_LIMIT_S);
	fprintf(f, "  \"fresh_frame_second_s\": %.4f, \"default_second_s\": %.4f,\n", res.fresh[1],
		res.plain[1]);
	fprintf(f, "  \"small_advise_us\": {");
	for (size_t i = 0; i < ARRAY_SIZE(policies); i++)
		fprintf(f, "%s\"%s\": [%.1f, %.1f]", i ? ", " : "", policies[i], res.small[i][0],
			res.small[i][1]);
	fprintf(f, "},\n");
	fprintf(f,
		"  \"cow_us\": {\"merged\": %.3f, \"fork\": %.3f, \"unshared\": %.3f, "
		"\"advised_unique\": %.3f},\n",
		res.cow.merged_us, res.cow.fork_us, res.cow.plain_us, res.cow.advised_unique_us);
	json_by_count(f, "scaling_s", scale_n, &res.scale[0][0], ARRAY_SIZE(scale_n), SCALE_MODES);
	json_by_count(f, "large_s", large_gib, &res.large[0][0], ARRAY_SIZE(large_gib), 2);
	fprintf(f, "  \"bystanders_us\": {");
	for (int scene = 0; scene < SCENES; scene++)
		fprintf(f, "%s\"%s\": {\"seconds\": %.1f, \"toucher_p50_p99\": [%.0f, %.0f], "
			"\"small_adviser_p50_p99\": [%.0f, %.0f]}", scene ? ", " : "",
			scene_names[scene], res.bystander_s[scene], res.bystander[scene][TOUCHER][0],
			res.bystander[scene][TOUCHER][1], res.bystander[scene][SMALL_ADVISER][0],
			res.bystander[scene][SMALL_ADVISER][1]);
	fprintf(f, "},\n");
	fprintf(f,
		"  \"slab_bytes_per_page\": {\"upm_candidate\": [%.1f, %.1f], "
		"\"upm_merged\": [%.1f, %.1f], \"ksm_merged\": [%.1f, %.1f]}\n}\n",
		per_page(full->upm_candidates.module), per_page(full->upm_candidates.kernel),
		per_page(full->upm_merged.module), per_page(full->upm_merged.kernel),
		per_page(full->ksm_merged.module), per_page(full->ksm_merged.kernel));
	return fclose(f) ? -1 : 0;
}

/* The pairing alone, for `perf record` (tests/bench/profile.sh). */
static int pair_only(size_t mib)
{
	struct throughput r = { .dup = 100, .expect = mib << 20 >> 12 };

	if (run_upm(&r, r.expect, 4545))
		return 1;
	printf("first advise %.3f s, second %.3f s (%zu MiB each)\n", r.upm_first, r.upm_second,
	       mib);
	return 0;
}

/* Small advises of unique pages alone, for `perf record` (tests/bench/profile.sh small). */
static int small_only(long rounds)
{
	double us = 0;

	/*
	 * A new seed each round: contents advised and unmapped a round before would still have
	 * candidates until the sweep, and a huge page with a stale twin is split.
	 */
	for (long i = 0; i < rounds; i++)
		us += small_advise_us(65536, 90001 + i);
	printf("64 KiB advises of unique pages: %.1f us per call (%ld rounds of 64)\n", us / rounds,
	       rounds);
	return 0;
}

int main(int argc, char **argv)
{
	static int (*const sections[])(void) = { bench_throughput, bench_ksm_default,
						 bench_fresh_frame, bench_small_advises,
						 bench_cow, bench_scaling, bench_bystanders };

	if (argc > 1 && !strcmp(argv[1], "pair"))
		return pair_only(argc > 2 ? strtoul(argv[2], NULL, 10) : 64);
	if (argc > 1 && !strcmp(argv[1], "twins")) {
		double first, second;
		size_t pages = (argc > 2 ? strtoul(argv[2], NULL, 10) : 4) << 30 >> 12;

		if (twin_pair(pages, 4646, &first, &second))
			return 1;
		printf("twins of %zu pages: first %.3f s, second %.3f s, all merged\n", pages, first,
		       second);
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "scaling")) {
		setvbuf(stdout, NULL, _IOLBF, 0);
		return scaling_table((argc > 2 ? strtoul(argv[2], NULL, 10) : 128) << 20 >> 12) ? 1 : 0;
	}
	if (argc > 1 && !strcmp(argv[1], "bystanders")) {
		setvbuf(stdout, NULL, _IOLBF, 0);
		return bench_bystanders() ? 1 : 0;
	}
	if (argc > 1 && !strcmp(argv[1], "small"))
		return small_only(argc > 2 ? strtol(argv[2], NULL, 10) : 100);
	res.mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	res.pages = res.mib << 20 >> 12;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!module_loaded() || ksm_read("run") != 0) {
		fprintf(stderr, "needs upm.ko loaded and ksmd stopped\n");
		return 2;
	}
	printf("UPM benchmark, %zu MiB per adviser (%zu pages), kernel and VM of this run\n",
	       res.mib, res.pages);
	for (size_t i = 0; i < ARRAY_SIZE(sections); i++)
		if (sections[i]())
			return 1;
	print_slab();
	return argc > 2 && write_json(argv[2]) ? 1 : 0;
}
