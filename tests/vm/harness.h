/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A small kselftest-style harness for the UPM VM tests: named tests, each run in its own
 * child process, and a last line "N passed, M failed, K skipped".
 */
#ifndef UPM_HARNESS_H
#define UPM_HARNESS_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

enum result { PASS, FAIL, SKIP };

struct test {
	const char *name;
	enum result (*fn)(void);
	const char *what;
	int (*timeout)(void); /* seconds it may take; NULL: 300 */
	/* It may skip on a kernel without fault injection (failslab, fail_page_alloc). */
	int needs_fault_injection;
};

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "    %s:%d: check failed: %s: ", __FILE__, \
				__LINE__, #cond);                               \
			fprintf(stderr, __VA_ARGS__);                           \
			fprintf(stderr, " (errno %d %s)\n", errno,              \
				strerror(errno));                               \
			return FAIL;                                            \
		}                                                               \
	} while (0)

#define SKIP_IF(cond, why)                                         \
	do {                                                       \
		if (cond) {                                        \
			fprintf(stderr, "    skipped: %s\n", why); \
			return SKIP;                               \
		}                                                  \
	} while (0)

/* upm_lib.c */
extern size_t page_size;
void *map_anon(size_t pages);
void fill_pages(void *p, size_t pages, uint64_t seed, int distinct);
void fill_page(void *page, size_t i, uint64_t seed);
int map_twins(char **a, char **b, size_t pages, uint64_t seed);
int check_pages(const void *p, size_t pages, uint64_t seed, int distinct);
int page_intact(const void *base, size_t i, uint64_t seed);
/* move_pages(2)'s flag: move every mapping's pages (numaif.h needs libnuma's headers) */
#define MPOL_MF_MOVE_ALL (1 << 2)
/* /proc/self/pagemap entry bits */
#define PM_PFN_MASK ((1ull << 55) - 1)
#define PM_UFFD_WP (1ull << 57)
#define PM_PRESENT (1ull << 63)
uint64_t pagemap_entry(const void *addr);
uint64_t pfn_of(const void *addr);
uint64_t pfn_in(pid_t pid, uintptr_t addr, size_t i);
#define PM_SWAP (1ull << 62)
int pagemap_in(pid_t pid, uintptr_t addr, size_t pages, uint64_t *entries);
int pfns_in(pid_t pid, uintptr_t addr, size_t pages, uint64_t *frames);
int join_cgroup(const char *cg);
uint64_t zero_pfn(void);
size_t count_pfn_equal(const void *a, const void *b, size_t pages);
size_t distinct_pfns(const void *p, size_t pages);
long read_long(const char *path);
long counter(const char *name);
int write_str(const char *path, const char *s);
int write_long(const char *path, long value);
/* Settings a test changes, saved from and put back into each file of a list. */
#define SETTING_MAX 32
void save_settings(const char *const *files, size_t count, char (*saved)[SETTING_MAX]);
void restore_settings(const char *const *files, size_t count, char (*saved)[SETTING_MAX]);
int set_tunable(const char *name, long value);
int wait_tree_empty(void);
int wait_sweep_passes(long passes);
int advise(void *p, size_t pages);
int unmerge(void *p, size_t pages);
long proc_kb(const char *path, const char *key);
long key_value(const char *path, const char *key);
long rss_anon_kb(void);
int module_loaded(void);
int module_unload(void);
int module_load(void);
pid_t spawn(int (*fn)(void *), void *arg);
/* CLOCK_MONOTONIC in seconds: for elapsed times and deadlines. */
double monotonic_seconds(void);
int wait_exit(pid_t pid);
void *map_shared(size_t bytes);
#define XXH_PRIME64_1 0x9E3779B185EBCA87ull
#define XXH_PRIME64_2 0xC2B2AE3D27D4EB4Full
static inline uint64_t rotl64(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}
void xxh64_lanes(const uint64_t *p, size_t stripes, uint64_t v[4]);
uint64_t xxh64_page(const uint64_t *p);

/* A writer racing merges (upm_lib.c): see flip_words(). */
struct race {
	char *a;
	size_t pages;
	long pace_ns; /* a write every pace_ns, or as fast as it can */
	volatile int stop;
	long writes, lost;
};

void *flip_words(void *arg);

int node_of(void *p);
size_t move_set(char *base, char *twin, size_t pages, int node);
uint64_t xorshift64(uint64_t *state);

/*
 * The tests, one table per file. A test file exports nothing else: what tests share is in
 * upm_lib.c (scripts/mutants.sh digests a test by its file, the library and runner.c).
 */
extern const struct test basic_tests[];	/* upm_tests.c */
extern const size_t basic_test_count;
extern const struct test scale_tests[];	/* scale_tests.c */
extern const size_t scale_test_count;
extern const struct test module_tests[];	/* module_tests.c */
extern const size_t module_test_count;
extern const struct test stress_tests[];	/* stress_tests.c */
extern const size_t stress_test_count;

/* lifecycle_tests.c */
extern const struct test lifecycle_tests[];
extern const size_t lifecycle_test_count;

/* ksm_parity_tests.c */
extern const struct test parity_tests[];
extern const size_t parity_test_count;

/* domain_tests.c */
extern const struct test domain_tests[];
extern const size_t domain_test_count;

#endif /* UPM_HARNESS_H */
