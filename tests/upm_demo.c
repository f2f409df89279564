// SPDX-License-Identifier: GPL-2.0
/*
 * UPM demo: several "function instances" each load the same model weights (pseudo-random,
 * fixed seed) plus private per-request buffers, then advise their weights with
 * MADV_UPM_MERGEABLE. Prints the instances' proportional memory (PSS) and the UPM counters
 * before and after, the time of each madvise, and checks every instance's contents.
 *
 *   upm_demo [instances] [weights MiB] [private MiB]      (default 4 32 4)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

struct shared {
	volatile int phase;	/* 1: loaded, 2: advise, 3: advised, 4: verify, 5: exit */
	volatile int done[64];
	volatile double advise_ms[64];
	volatile int bad[64];
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long pss_anon_kb(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pid);
	return proc_kb(path, "Pss_Anon");
}

static void wait_phase(struct shared *s, int id, int phase, int n)
{
	for (;;) {
		int all = 1;

		for (int i = 0; i < n; i++)
			all &= s->done[i] >= phase;
		if (id < 0 ? all : s->phase >= phase)
			return;
		usleep(10 * 1000);
	}
}

static void instance(struct shared *s, int id, size_t weight_pages, size_t private_pages)
{
	char *weights = map_anon(weight_pages), *priv = map_anon(private_pages);

	fill_pages(weights, weight_pages, 2023, 1);	 /* same model in every instance */
	fill_pages(priv, private_pages, 5000 + id, 1); /* per-request state, all distinct */
	s->done[id] = 1;
	wait_phase(s, id, 2, 0);
	double t0 = now_ms();
	int ret = advise(weights, weight_pages);

	s->advise_ms[id] = now_ms() - t0;
	s->bad[id] = ret != 0;
	s->done[id] = 3;
	wait_phase(s, id, 4, 0);
	s->bad[id] |= check_pages(weights, weight_pages, 2023, 1) >= 0;
	s->bad[id] |= check_pages(priv, private_pages, 5000 + id, 1) >= 0;
	s->done[id] = 4;
	wait_phase(s, id, 5, 0);
	_exit(0);
}

static void print_counters(const char *when)
{
	printf("  %-7s pages_shared=%ld pages_sharing=%ld pages_unshared=%ld zero_pages=%ld\n",
	       when, counter("pages_shared"), counter("pages_sharing"), counter("pages_unshared"),
	       counter("zero_pages"));
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 4;
	size_t weights_mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 32;
	size_t private_mib = argc > 3 ? strtoul(argv[3], NULL, 10) : 4;
	size_t wp = weights_mib << 20 >> 12, pp = private_mib << 20 >> 12;
	struct shared *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pids[64];
	long before = 0, after = 0;
	int bad = 0;

	if (n < 1 || n > 64 || s == MAP_FAILED || !module_loaded()) {
		fprintf(stderr, "usage: upm_demo [1..64 instances] [weights MiB] [private MiB]; "
				"needs upm.ko loaded\n");
		return 2;
	}
	printf("UPM demo: %d instances, each %zu MiB of identical model weights + %zu MiB "
	       "private\n", n, weights_mib, private_mib);
	print_counters("before");
	for (int i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			instance(s, i, wp, pp);
	}
	wait_phase(s, -1, 1, n);
	for (int i = 0; i < n; i++)
		before += pss_anon_kb(pids[i]);
	s->phase = 2;
	wait_phase(s, -1, 3, n);
	for (int i = 0; i < n; i++)
		after += pss_anon_kb(pids[i]);
	long sharing = counter("pages_sharing");

	print_counters("after");
	for (int i = 0; i < n; i++)
		printf("  instance %2d: madvise(%zu MiB) took %.1f ms\n", i, weights_mib,
		       s->advise_ms[i]);
	s->phase = 4;
	wait_phase(s, -1, 4, n);
	for (int i = 0; i < n; i++)
		bad += s->bad[i];
	s->phase = 5;
	for (int i = 0; i < n; i++)
		waitpid(pids[i], NULL, 0);

	printf("  anonymous memory of the instances (sum of Pss_Anon): %.1f MiB -> %.1f MiB "
	       "(%.0f%% less)\n", before / 1024.0, after / 1024.0,
	       before > 0 ? 100.0 * (before - after) / before : 0.0);
	printf("  contents verified in every instance: %s\n", bad ? "NO" : "yes");
	long expect = (long)(n - 1) * (long)wp;

	printf("  pages_sharing after advise: %ld (expected %d x %zu = %ld)\n", sharing, n - 1, wp,
	       expect);
	bad += sharing != expect;
	return bad ? 1 : 0;
}
