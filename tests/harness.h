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

enum result { PASS, FAIL, SKIP };

struct test {
	const char *name;
	enum result (*fn)(void);
	const char *what;
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
int map_twins(char **a, char **b, size_t pages, uint64_t seed);
int check_pages(const void *p, size_t pages, uint64_t seed, int distinct);
uint64_t pfn_of(const void *addr);
uint64_t zero_pfn(void);
size_t count_pfn_equal(const void *a, const void *b, size_t pages);
size_t distinct_pfns(const void *p, size_t pages);
long counter(const char *name);
int write_long(const char *path, long value);
int set_tunable(const char *name, long value);
int wait_tree_empty(void);
int advise(void *p, size_t pages);
int unmerge(void *p, size_t pages);
long proc_kb(const char *path, const char *key);
long rss_anon_kb(void);
int module_loaded(void);
int module_unload(void);
int module_load(void);

#endif /* UPM_HARNESS_H */
