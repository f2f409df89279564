// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * libupm_preload.so: UPM for programs that cannot be changed.
 *
 *   LD_PRELOAD=/path/to/libupm_preload.so [UPM_PRELOAD_DELAY_MS=2000]
 *       [UPM_PRELOAD_INTERVAL_MS=0] [UPM_PRELOAD_VERBOSE=1] program ...
 *
 * At load time the library starts one thread. It sleeps for the delay, so the program can
 * finish its start-up (load a model, warm its heap), then advises every private anonymous
 * read-write mapping of the process (heap and anonymous mmaps, not stacks, file or shared
 * mappings) with MADV_UPM_MERGEABLE. With an interval it repeats, to merge what the program
 * allocated since. It stops for good when the kernel refuses the advice (no UPM).
 *
 * Without UPM (no kernel series or no module) no thread is started; with
 * UPM_PRELOAD_VERBOSE=1 one line says so, once per process tree (the first process sets
 * UPM_PRELOAD_UNAVAILABLE for the programs it executes). A verbose process that exits before
 * the delay says that it advised nothing (unless it leaves by _exit(), or closed stderr).
 *
 * Limits: the thread blocks every signal, so it never takes a signal meant for the program;
 * a child made by fork() has no such thread (execve() starts a new one, LD_PRELOAD being
 * inherited); statically linked programs ignore LD_PRELOAD; memory mapped after the last
 * round is not advised. While the thread lives (the delay, then one round unless an interval
 * is set) the process has two threads: Python 3.12 warns if it forks then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../include/upm.h"

static int verbose;
static long delay_ms;
static struct timespec started;
static volatile int rounds_done;

static long env_ms(const char *name, long fallback)
{
	const char *value = getenv(name);

	return value && *value ? strtol(value, NULL, 10) : fallback;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* One line of /proc/self/maps: is it a private anonymous read-write mapping? */
static int parse_anonymous(const char *line, unsigned long *start, unsigned long *end)
{
	char perms[5], name[256] = "";
	unsigned long inode;

	if (sscanf(line, "%lx-%lx %4s %*s %*s %lu %255[^\n]", start, end, perms, &inode, name) < 4)
		return 0;
	if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || inode != 0)
		return 0;
	return !name[0] || !strcmp(name, "[heap]") || !strncmp(name, "[anon:", 6);
}

/* Advises all private anonymous memory; returns the bytes advised, or -1 without UPM. */
static long advise_all(void)
{
	unsigned long start, end;
	char line[512];
	long bytes = 0;
	FILE *maps = fopen("/proc/self/maps", "re");

	if (!maps)
		return 0;
	while (fgets(line, sizeof(line), maps)) {
		if (!parse_anonymous(line, &start, &end))
			continue;
		if (upm_advise((void *)start, end - start) == 0) {
			bytes += end - start;
		} else if (errno == EINVAL) {
			bytes = -1; /* no UPM hook or module: nothing will ever merge */
			break;
		}
		/* ENOMEM: unmapped meanwhile; EAGAIN, EINTR: try again next round. */
	}
	fclose(maps);
	return bytes;
}

/* "pid N (comm)", for messages from processes of a wrapper chain. */
static const char *whoami(void)
{
	static char who[64];
	char comm[17] = "?";
	FILE *f = fopen("/proc/self/comm", "re");

	if (f) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
	}
	snprintf(who, sizeof(who), "pid %d (%s)", (int)getpid(), comm);
	return who;
}

static void *advise_thread(void *arg)
{
	long interval = env_ms("UPM_PRELOAD_INTERVAL_MS", 0);

	(void)arg;
	sleep_ms(delay_ms);
	for (;;) {
		long bytes = advise_all();

		rounds_done++;
		if (verbose && bytes < 0)
			fprintf(stderr, "upm_preload: %s: UPM refused the advice, giving up\n",
				whoami());
		else if (verbose)
			fprintf(stderr, "upm_preload: %s: %ld KiB advised\n", whoami(), bytes / 1024);
		if (bytes < 0 || interval <= 0)
			return NULL;
		sleep_ms(interval);
	}
}

__attribute__((constructor)) static void upm_preload_start(void)
{
	sigset_t all, old;
	pthread_attr_t attr;
	pthread_t thread;

	verbose = env_ms("UPM_PRELOAD_VERBOSE", 0) != 0;
	delay_ms = env_ms("UPM_PRELOAD_DELAY_MS", 2000);
	clock_gettime(CLOCK_MONOTONIC, &started);
	if (!upm_is_supported()) {
		/* Before main(), single-threaded: setenv() is safe here. */
		if (verbose && !getenv("UPM_PRELOAD_UNAVAILABLE"))
			fprintf(stderr, "upm_preload: %s: UPM not available, nothing will be advised "
				"(said once per process tree)\n", whoami());
		setenv("UPM_PRELOAD_UNAVAILABLE", "1", 1);
		return;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old); /* inherited by the new thread */
	if (pthread_attr_init(&attr) == 0) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&attr, 64 << 10);
		pthread_create(&thread, &attr, advise_thread, NULL);
		pthread_attr_destroy(&attr);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* A verbose program that ends before the delay hears why nothing was advised. */
__attribute__((destructor)) static void upm_preload_end(void)
{
	struct timespec now;

	if (!verbose || rounds_done || getenv("UPM_PRELOAD_UNAVAILABLE"))
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	fprintf(stderr, "upm_preload: %s exited after %ld ms, before UPM_PRELOAD_DELAY_MS=%ld: "
		"nothing advised\n", whoami(),
		(long)((now.tv_sec - started.tv_sec) * 1000 + (now.tv_nsec - started.tv_nsec) / 1000000),
		delay_ms);
}
