// SPDX-License-Identifier: GPL-2.0
/*
 * An unmodified program for the upmctl tests: holds two identical copies of MiB mebibytes
 * of pseudo-random data and never advises anything itself. On SIGTERM it checks both copies
 * and exits 0 if they are intact. READY_FILE gets "PID A B PAGES" (the copies' addresses in
 * hexadecimal) once both copies are filled.
 *
 *   dup_holder MiB READY_FILE
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	size_t pages = (argc > 1 ? strtoul(argv[1], NULL, 10) : 8) << 20 >> 12;
	char *a = map_anon(pages), *b = map_anon(pages);
	FILE *ready;
	char tmp[4096];

	if (!a || !b || argc < 3)
		return 2;
	fill_pages(a, pages, 777, 1);
	fill_pages(b, pages, 777, 1);
	signal(SIGTERM, on_term);
	/* Written under another name and renamed: readers never see half a line. */
	snprintf(tmp, sizeof(tmp), "%s.tmp", argv[2]);
	ready = fopen(tmp, "w");
	if (!ready)
		return 2;
	fprintf(ready, "%d %lx %lx %zu\n", getpid(), (unsigned long)a, (unsigned long)b, pages);
	if (fclose(ready) || rename(tmp, argv[2]))
		return 2;
	while (!stop)
		pause();
	return check_pages(a, pages, 777, 1) < 0 && check_pages(b, pages, 777, 1) < 0 ? 0 : 1;
}
