// SPDX-License-Identifier: GPL-2.0
/*
 * Independent check for the userspace tests: how many of PAGES page pairs (A + i, B + i)
 * of process PID (B of process PID_B, if given) are mapped to the same frame, read from
 * /proc/PID/pagemap.
 *
 *   pfn_pairs PID A B PAGES [PID_B]   (A and B in hexadecimal, as dup_holder prints them)
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

int main(int argc, char **argv)
{
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
		uint64_t pa = pfn(fd, a + i * 4096);

		same += pa && pa == pfn(fd_b, b + i * 4096);
	}
	printf("%zu\n", same);
	return 0;
}
