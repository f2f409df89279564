// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Where a C runtime calls UPM: once its start-up has built what every instance holds the
 * same (here 16 MiB of "model weights" from a fixed seed), before the first request.
 *
 *   cc -O2 -I include -o handler examples/handler.c && ./handler
 *
 * Prints "ready PID ADDRESS PAGES" and serves "requests" (lines on stdin) until EOF.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "upm.h"

#define WEIGHTS_BYTES (16u << 20)

int main(void)
{
	/* Page-aligned, private and anonymous: what UPM merges (malloc'd memory is too). */
	float *weights = mmap(NULL, WEIGHTS_BYTES, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t state = 42;
	char line[256];

	if (weights == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < WEIGHTS_BYTES / sizeof(float); i++) {
		state = state * 6364136223846793005ull + 1442695040888963407ull;
		weights[i] = (float)(state >> 40) / (float)(1 << 24) - 0.5f;
	}

	/* Start-up done: merge the weights with every other instance's. */
	if (upm_advise(weights, WEIGHTS_BYTES) && errno != EINVAL)
		perror("upm_advise"); /* EINVAL: no UPM here, run unmerged */

	printf("ready %d %lx %u\n", getpid(), (unsigned long)weights, WEIGHTS_BYTES / 4096);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		double sum = 0;

		for (size_t i = 0; i < WEIGHTS_BYTES / sizeof(float); i += 1024)
			sum += weights[i];
		printf("%s -> %.6f\n", strtok(line, "\n") ?: "", sum);
		fflush(stdout);
	}
	return 0;
}
