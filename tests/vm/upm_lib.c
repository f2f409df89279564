// SPDX-License-Identifier: GPL-2.0
/* Helpers shared by the UPM tests: memory patterns, pagemap, sysfs counters, module. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

size_t page_size = 4096;

void *map_anon(size_t pages)
{
	void *p = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static uint64_t splitmix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Page i gets pseudo-random contents from seed (and from i when distinct). */
static void pattern(uint64_t *dst, size_t i, uint64_t seed, int distinct)
{
	uint64_t state = seed * 1000003 + (distinct ? i + 1 : 0);

	for (size_t w = 0; w < page_size / 8; w++)
		dst[w] = splitmix(&state);
}

void fill_pages(void *p, size_t pages, uint64_t seed, int distinct)
{
	for (size_t i = 0; i < pages; i++)
		pattern((uint64_t *)((char *)p + i * page_size), i, seed, distinct);
}

/* Page i of a distinct-pages region filled with seed, written at `page`. */
void fill_page(void *page, size_t i, uint64_t seed)
{
	pattern(page, i, seed, 1);
}

/* Two fresh regions of `pages` pages with the same distinct-per-page contents. */
int map_twins(char **a, char **b, size_t pages, uint64_t seed)
{
	*a = map_anon(pages);
	*b = map_anon(pages);
	if (!*a || !*b)
		return -1;
	fill_pages(*a, pages, seed, 1);
	fill_pages(*b, pages, seed, 1);
	return 0;
}

/* Whether page i of the region at base holds what fill_pages(base, ..., seed, distinct) wrote. */
static int page_matches(const void *base, size_t i, uint64_t seed, int distinct)
{
	uint64_t expect[4096 / 8];

	pattern(expect, i, seed, distinct);
	return !memcmp(expect, (const char *)base + i * page_size, page_size);
}

/* Returns the index of the first page that differs from its pattern, or -1. */
int check_pages(const void *p, size_t pages, uint64_t seed, int distinct)
{
	for (size_t i = 0; i < pages; i++)
		if (!page_matches(p, i, seed, distinct))
			return (int)i;
	return -1;
}

/* The raw /proc/self/pagemap entry of addr (0 if unreadable). */
uint64_t pagemap_entry(const void *addr)
{
	static int fd = -1;
	static pid_t owner;
	uint64_t entry = 0;

	/* An fd opened before fork() still reads the parent's page tables. */
	if (fd < 0 || owner != getpid()) {
		if (fd >= 0)
			close(fd);
		fd = open("/proc/self/pagemap", O_RDONLY);
		owner = getpid();
	}
	if (pread(fd, &entry, sizeof(entry),
		  (off_t)((uintptr_t)addr / page_size * sizeof(entry))) != sizeof(entry))
		return 0;
	return entry;
}

/* Whether page i of a region filled with fill_pages(seed, distinct=1) still holds its pattern. */
int page_intact(const void *base, size_t i, uint64_t seed)
{
	return page_matches(base, i, seed, 1);
}

uint64_t pfn_of(const void *addr)
{
	uint64_t entry = pagemap_entry(addr);

	if (!(entry & PM_PRESENT))
		return 0;
	return entry & PM_PFN_MASK;
}

/* Moves the calling process into cgroup v2 group `cg` (a path below /sys/fs/cgroup). */
int join_cgroup(const char *cg)
{
	char path[256];

	snprintf(path, sizeof(path), "/sys/fs/cgroup/%s/cgroup.procs", cg);
	return write_long(path, getpid());
}

/* The frame of page `i` of `addr` in process `pid` (root reads frame numbers), 0 if none. */
uint64_t pfn_in(pid_t pid, uintptr_t addr, size_t i)
{
	char path[64];
	uint64_t entry = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	if (pread(fd, &entry, sizeof(entry), (off_t)((addr / page_size + i) * sizeof(entry))) !=
	    sizeof(entry))
		entry = 0;
	close(fd);
	return entry & PM_PRESENT ? entry & PM_PFN_MASK : 0;
}

/* The frames of `pages` pages at `addr` in process `pid` (0: not present), in one read. */
/* Raw pagemap entries of @pages pages of another process from @addr. */
int pagemap_in(pid_t pid, uintptr_t addr, size_t pages, uint64_t *entries)
{
	char path[64];
	ssize_t want = pages * sizeof(*entries), got;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	got = pread(fd, entries, want, (off_t)(addr / page_size * sizeof(*entries)));
	close(fd);
	return got == want ? 0 : -1;
}

int pfns_in(pid_t pid, uintptr_t addr, size_t pages, uint64_t *frames)
{
	if (pagemap_in(pid, addr, pages, frames))
		return -1;
	for (size_t i = 0; i < pages; i++)
		frames[i] = frames[i] & PM_PRESENT ? frames[i] & PM_PFN_MASK : 0;
	return 0;
}

/* The frame of the shared zero page, as a read fault maps it. */
uint64_t zero_pfn(void)
{
	volatile char *p = map_anon(1);
	uint64_t pfn;

	if (!p)
		return 0;
	(void)p[0];
	pfn = pfn_of((const void *)p);
	munmap((void *)p, page_size);
	return pfn;
}

size_t count_pfn_equal(const void *a, const void *b, size_t pages)
{
	size_t n = 0;

	for (size_t i = 0; i < pages; i++) {
		uint64_t pa = pfn_of((const char *)a + i * page_size);

		if (pa && pa == pfn_of((const char *)b + i * page_size))
			n++;
	}
	return n;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

size_t distinct_pfns(const void *p, size_t pages)
{
	uint64_t *pfns = calloc(pages, sizeof(*pfns));
	size_t n = 0;

	for (size_t i = 0; i < pages; i++)
		pfns[i] = pfn_of((const char *)p + i * page_size);
	qsort(pfns, pages, sizeof(*pfns), cmp_u64);
	for (size_t i = 0; i < pages; i++)
		if (pfns[i] && (i == 0 || pfns[i] != pfns[i - 1]))
			n++;
	free(pfns);
	return n;
}

/* The number a sysfs or procfs file holds, or -1. */
long read_long(const char *path)
{
	char buf[64] = "";
	int fd = open(path, O_RDONLY);
	ssize_t len;

	if (fd < 0)
		return -1;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return len > 0 ? strtol(buf, NULL, 10) : -1;
}

long counter(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), UPM_SYSFS_DIR "/%s", name);
	return read_long(path);
}

int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	ssize_t len = strlen(s), ret;

	if (fd < 0)
		return -1;
	ret = write(fd, s, len);
	close(fd);
	return ret == len ? 0 : -1;
}

int write_long(const char *path, long value)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%ld\n", value);
	return write_str(path, buf);
}

/* First line of each file, "" where it cannot be read (and is then left alone). */
void save_settings(const char *const *files, size_t count, char (*saved)[SETTING_MAX])
{
	for (size_t i = 0; i < count; i++) {
		FILE *f = fopen(files[i], "r");

		saved[i][0] = 0;
		if (f && fgets(saved[i], SETTING_MAX, f))
			saved[i][strcspn(saved[i], "\n")] = 0;
		if (f)
			fclose(f);
	}
}

/* Writes each saved setting back, in the list's order. */
void restore_settings(const char *const *files, size_t count, char (*saved)[SETTING_MAX])
{
	for (size_t i = 0; i < count; i++)
		if (saved[i][0])
			write_str(files[i], saved[i]);
}

int set_tunable(const char *name, long value)
{
	char path[256];

	snprintf(path, sizeof(path), UPM_SYSFS_DIR "/%s", name);
	return write_long(path, value);
}

/* Waits until the sweep has dropped every freed stable page and every dead candidate. */
/*
 * Waits until the index is empty, or until two complete passes of the module's sweep have
 * ended since the call (the second began after the call, so it saw every entry that was
 * stale by then) and entries are left: then -1. The sweep's speed does not matter; the time
 * bound is only a guard against a sweep that stopped running.
 */
int wait_tree_empty(void)
{
	long passes = counter("sweep_passes");
	time_t hang_guard = time(NULL) + 300;

	while (time(NULL) < hang_guard) {
		long done = counter("sweep_passes") - passes;

		if (counter("stable_nodes") == 0 && counter("candidates") == 0)
			return 0;
		if (passes < 0 || done >= 2)
			return -1;
		usleep(20 * 1000);
	}
	fprintf(stderr, "    the sweep made no two passes in 300 s\n");
	return -1;
}

/* Waits for `passes` complete passes of the module's sweep from now; -1 if they do not come. */
int wait_sweep_passes(long passes)
{
	long target = counter("sweep_passes") + passes;
	time_t hang_guard = time(NULL) + 300;

	while (counter("sweep_passes") < target) {
		if (time(NULL) > hang_guard || passes < 0) {
			fprintf(stderr, "    the sweep made no %ld passes in 300 s\n", passes);
			return -1;
		}
		usleep(20 * 1000);
	}
	return 0;
}

int advise(void *p, size_t pages)
{
	return madvise(p, pages * page_size, MADV_UPM_MERGEABLE);
}

int unmerge(void *p, size_t pages)
{
	return madvise(p, pages * page_size, MADV_UPM_UNMERGEABLE);
}

/* The number after "key" on a "key value" line (cgroup event files), or -1. */
long key_value(const char *path, const char *key)
{
	char line[256], name[64];
	long value = -1, v;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%63s %ld", name, &v) == 2 && !strcmp(name, key)) {
			value = v;
			break;
		}
	fclose(f);
	return value;
}

/* The value of a "Key: N kB" line of a /proc file such as status or smaps_rollup. */
long proc_kb(const char *path, const char *key)
{
	char line[256], format[64];
	long kb = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	snprintf(format, sizeof(format), "%s: %%ld kB", key);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, format, &kb) == 1)
			break;
	fclose(f);
	return kb;
}

long rss_anon_kb(void)
{
	return proc_kb("/proc/self/status", "RssAnon");
}

int module_loaded(void)
{
	return access(UPM_SYSFS_DIR, F_OK) == 0;
}

int module_unload(void)
{
	/* A madvise in flight holds the module: retry while it is busy. */
	for (int i = 0; i < 200; i++) {
		if (syscall(SYS_delete_module, "upm", O_NONBLOCK) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EBUSY)
			return -1;
		usleep(10 * 1000);
	}
	return -1;
}

int module_load(void)
{
	const char *path = getenv("UPM_MODULE");
	int fd, ret;

	if (!path)
		return -1;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ret = syscall(SYS_finit_module, fd, "", 0);
	close(fd);
	return ret;
}

/* Seconds on CLOCK_MONOTONIC: what every test and the runner time with. */
double monotonic_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Fork a child that runs fn(arg) and exits with its result. */
pid_t spawn(int (*fn)(void *), void *arg)
{
	pid_t pid = fork();

	if (pid == 0)
		_exit(fn(arg));
	return pid;
}

int wait_exit(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* A region shared between test processes, for reporting frame numbers. */
void *map_shared(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* xxh64 as lib/xxhash.c computes it, for the hash-collision test and the benchmark floor. */
#define P1 XXH_PRIME64_1
#define P2 XXH_PRIME64_2

static uint64_t xxh_round(uint64_t acc, uint64_t input)
{
	return rotl64(acc + input * P2, 31) * P1;
}

/* The four lanes after the first `stripes` 32-byte stripes of `p`, with seed 0. */
void xxh64_lanes(const uint64_t *p, size_t stripes, uint64_t v[4])
{
	v[0] = P1 + P2;
	v[1] = P2;
	v[2] = 0;
	v[3] = -P1;
	for (size_t s = 0; s < stripes; s++)
		for (int l = 0; l < 4; l++)
			v[l] = xxh_round(v[l], p[4 * s + l]);
}

/* xxh64 with seed 0 of a whole page, finished as lib/xxhash.c does (no tail: 4096 = 128 x 32). */
uint64_t xxh64_page(const uint64_t *p)
{
	static const uint64_t P3 = 0x165667B19E3779F9ull, P4 = 0x85EBCA77C2B2AE63ull;
	uint64_t v[4], h;

	xxh64_lanes(p, page_size / 32, v);
	h = rotl64(v[0], 1) + rotl64(v[1], 7) + rotl64(v[2], 12) + rotl64(v[3], 18);
	for (int l = 0; l < 4; l++)
		h = (h ^ xxh_round(0, v[l])) * P1 + P4;
	h += page_size;
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

/*
 * Round after round, word 0 of each page alternates between its pattern value (the page then
 * equals its stable twin and may merge) and a fresh sequence number, and each round first
 * checks that the page still holds what the last round wrote. A merge that replaced a page
 * on stale contents (hashed before a write, not compared after the write-protect) would
 * lose that write.
 */
void *flip_words(void *arg)
{
	struct race *r = arg;
	uint64_t *orig = calloc(r->pages, sizeof(*orig));
	uint64_t *last = calloc(r->pages, sizeof(*last)), seq = 0;

	for (size_t i = 0; i < r->pages; i++)
		orig[i] = last[i] = *(uint64_t *)(r->a + i * page_size);
	do { /* one round at least, however short the advise it races */
		for (size_t i = 0; i < r->pages; i++) {
			volatile uint64_t *w = (volatile uint64_t *)(r->a + i * page_size);

			r->lost += *w != last[i];
			last[i] = last[i] == orig[i] ? ++seq | 1ull << 63 : orig[i];
			*w = last[i];
			r->writes++;
			/* Paced by the clock in the vDSO: no system call flushes the TLB. */
			if (r->pace_ns)
				for (double t = monotonic_seconds();
				     monotonic_seconds() - t < r->pace_ns / 1e9;)
					;
		}
	} while (!r->stop);
	for (size_t i = 0; i < r->pages; i++)
		*(uint64_t *)(r->a + i * page_size) = orig[i];
	free(orig);
	free(last);
	return NULL;
}

/* The NUMA node of the page at p, or -1. */
int node_of(void *p)
{
	void *pages[1] = { p };
	int status = -1;

	if (syscall(SYS_move_pages, 0, 1, pages, NULL, &status, 0))
		return -1;
	return status;
}

/* Moves every page of a region to @node; returns how many pages of @twin now sit there. */
size_t move_set(char *base, char *twin, size_t pages, int node)
{
	void *addrs[pages];
	int nodes[pages], status[pages];
	size_t moved = 0;

	for (size_t i = 0; i < pages; i++) {
		addrs[i] = base + i * page_size;
		nodes[i] = node;
	}
	/* A page that is busy at that moment (-EBUSY, -EAGAIN) is retried, as migration does. */
	for (int tries = 0; tries < 5; tries++) {
		syscall(SYS_move_pages, 0, pages, addrs, nodes, status, MPOL_MF_MOVE_ALL);
		moved = 0;
		for (size_t i = 0; i < pages; i++)
			moved += node_of(twin + i * page_size) == node;
		if (moved == pages)
			break;
		usleep(100 * 1000);
	}
	return moved;
}

/* A xorshift64 step: the tests' seeded pseudo-random numbers (never 0 from a nonzero seed). */
uint64_t xorshift64(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}
