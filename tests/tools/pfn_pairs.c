// SPDX-License-Identifier: GPL-2.0
/*
 * Independent check for the userspace tests: how many of PAGES page pairs (A + i, B + i)
 * of process PID (B of process PID_B, if given) are mapped to the same frame, read from
 * /proc/PID/pagemap.
 *
 *   pfn_pairs PID A B PAGES [PID_B]   (A and B in hexadecimal, as dup_holder prints them)
 *
 * With PFN_PAIRS_APART=1 in the environment, each pair on different frames is listed on
 * stderr with both frames' /proc/kpageflags (for a failing test's report).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static uint64_t pfn(int fd, uintptr_t addr)
{
	uint64_t entry = 0;

	if (pread(fd, &entry, sizeof(entry), (off_t)(addr / 4096 * sizeof(entry))) !=
	    sizeof(entry))
		return 0;
	return entry >> 63 ? entry & ((1ull << 55) - 1) : 0;
}

static uint64_t kpageflags(uint64_t pfn)
{
	static int fd = -2;
	uint64_t flags = 0;

	if (fd == -2)
		fd = open("/proc/kpageflags", O_RDONLY);
	if (fd < 0 || pread(fd, &flags, sizeof(flags), (off_t)(pfn * sizeof(flags))) !=
	    sizeof(flags))
		return 0;
	return flags;
}

int main(int argc, char **argv)
{
	int list_apart = getenv("PFN_PAIRS_APART") != NULL;
	char path[64];
	uintptr_t a, b;
	size_t pages, same = 0;
	int fd, fd_b;

	if (argc != 5 && argc != 6)
		return 2;
	snprintf(path, sizeof(path), "/proc/%s/pagemap", argv[1]);
	fd = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "/proc/%s/pagemap", argv[argc == 6 ? 5 : 1]);
	fd_b = open(path, O_RDONLY);
	if (fd < 0 || fd_b < 0) {
		perror(path);
		return 1;
	}
	a = strtoull(argv[2], NULL, 16);
	b = strtoull(argv[3], NULL, 16);
	pages = strtoull(argv[4], NULL, 10);
	for (size_t i = 0; i < pages; i++) {
		uint64_t pa = pfn(fd, a + i * 4096), pb = pfn(fd_b, b + i * 4096);

		same += pa && pa == pb;
		if (list_apart && !(pa && pa == pb))
			fprintf(stderr, "page %zu: frame %#llx flags %#llx, frame %#llx flags %#llx\n", i,
				(unsigned long long)pa, (unsigned long long)kpageflags(pa),
				(unsigned long long)pb, (unsigned long long)kpageflags(pb));
	}
	printf("%zu\n", same);
	return 0;
}
