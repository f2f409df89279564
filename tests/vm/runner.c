// SPDX-License-Identifier: GPL-2.0
/*
 * The UPM VM test runner, run inside the debug-kernel VM as root with upm.ko loaded.
 *
 *   upm_tests [--list] [NAME...]
 *
 * Each test runs in its own child process, checks real outcomes (page contents against the
 * pattern they were filled with, pagemap frame numbers, RSS, sysfs counters) and leaves no
 * merged memory behind: every test starts by waiting for an empty stable tree, and the
 * runner puts ksmd and the module's tunables back as they were after each one.
 *
 * The tests live in files by subject, each exporting only its table (harness.h); what they
 * share is in upm_lib.c. A test's verdict thus depends on its own file, upm_lib.c,
 * harness.h and this runner: what scripts/mutants.sh digests for a mutant's record.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

/* Seconds a test may take: every test needs well under a minute, stress its length more. */
static int test_timeout(const struct test *t)
{
	return t->timeout ? t->timeout() : 300;
}

static enum result run_one(const struct test *t)
{
	pid_t pid;
	int status;

	if (wait_tree_empty()) {
		fprintf(stderr, "    stable tree not empty before the test: %ld nodes\n",
			counter("stable_nodes"));
		return FAIL;
	}
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		setpgid(0, 0); /* the test and every process it starts */
		_exit(t->fn());
	}
	setpgid(pid, pid);
	/* A hung test fails alone instead of holding the whole run. */
	for (time_t deadline = time(NULL) + test_timeout(t);;) {
		pid_t done = waitpid(pid, &status, WNOHANG);

		if (done == pid)
			break;
		if (done < 0)
			return FAIL;
		if (time(NULL) > deadline) {
			kill(-pid, SIGKILL);
			fprintf(stderr, "    timed out after %d s\n", test_timeout(t));
			/* A test stuck in the kernel may never die: do not wait for it forever. */
			for (int i = 0; i < 1500 && waitpid(pid, &status, WNOHANG) != pid; i++)
				usleep(20 * 1000);
			return FAIL;
		}
		usleep(20 * 1000);
	}
	kill(-pid, SIGKILL); /* helpers a failed test left behind */
	/* ksmd as it was: off, pages unmerged, default rate (the parity tests start it). */
	if (read_long("/sys/kernel/mm/ksm/run") != 0) {
		write_long("/sys/kernel/mm/ksm/run", 2);
		write_long("/sys/kernel/mm/ksm/run", 0);
	}
	write_long("/sys/kernel/mm/ksm/pages_to_scan", 100);
	write_long("/sys/kernel/mm/ksm/sleep_millisecs", 20);
	/* Tunables as the module's defaults, for a test that failed half-way. */
	write_long(UPM_SYSFS_DIR "/run", 1);
	write_long(UPM_SYSFS_DIR "/use_zero_pages", 1);
	write_long(UPM_SYSFS_DIR "/split_thp", 1);
	write_str(UPM_SYSFS_DIR "/domain_policy", "uid");
	write_long(UPM_SYSFS_DIR "/domain_cgroup_level", 1);
	write_long(UPM_SYSFS_DIR "/fresh_frame", 0);
	if (!module_loaded()) {
		/* A test that unloads the module failed half-way: put it back for the next. */
		fprintf(stderr, "    left the module unloaded; loading it again\n");
		if (module_load())
			fprintf(stderr, "    insmod failed: %s\n", strerror(errno));
		return FAIL;
	}
	if (!WIFEXITED(status)) {
		fprintf(stderr, "    killed by signal %d\n", WTERMSIG(status));
		return FAIL;
	}
	if (WEXITSTATUS(status) == PASS && wait_tree_empty()) {
		fprintf(stderr, "    left %ld stable nodes behind after exit\n",
			counter("stable_nodes"));
		return FAIL;
	}
	return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0, skipped = 0;
	const struct {
		const struct test *tests;
		size_t count;
	} groups[] = {
		{ basic_tests, basic_test_count },
		{ scale_tests, scale_test_count },
		{ module_tests, module_test_count },
		{ lifecycle_tests, lifecycle_test_count },
		{ parity_tests, parity_test_count },
		{ domain_tests, domain_test_count },
		{ stress_tests, stress_test_count },
	};
	size_t n = 0;
	const struct test **all;
	/* Set by make test, whose kernel has every feature the tests use: a skip is a failure. */
	int skip_fails = getenv("UPM_SKIP_IS_FAILURE") != NULL;

	for (size_t g = 0; g < ARRAY_SIZE(groups); g++)
		n += groups[g].count;
	all = calloc(n, sizeof(*all));
	n = 0;
	for (size_t g = 0; g < ARRAY_SIZE(groups); g++)
		for (size_t i = 0; i < groups[g].count; i++)
			all[n++] = &groups[g].tests[i];
	page_size = sysconf(_SC_PAGESIZE);
	if (argc > 1 && !strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < n; i++)
			printf("%-30s %s\n", all[i]->name, all[i]->what);
		return 0;
	}
	if (!module_loaded()) {
		fprintf(stderr, "upm module not loaded\n");
		return 2;
	}
	for (size_t i = 0; i < n; i++) {
		const struct test *t = all[i];
		int selected = argc == 1;
		struct timespec t0, t1;
		enum result r;

		for (int a = 1; a < argc; a++)
			selected |= !strcmp(argv[a], t->name);
		if (!selected)
			continue;
		printf("RUN  %s\n", t->name);
		fflush(stdout);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		r = run_one(t);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		/* Where a run's time goes: the slowest tests are sized by their premise. */
		fprintf(stderr, "    %.1f s\n",
			t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9);
		switch (r) {
		case PASS:
			printf("ok   %s\n", t->name);
			passed++;
			break;
		case SKIP:
			if (skip_fails) {
				printf("FAIL %s: skipped on a kernel that has the feature\n", t->name);
				failed++;
				break;
			}
			printf("skip %s\n", t->name);
			skipped++;
			break;
		default:
			printf("FAIL %s\n", t->name);
			failed++;
		}
		fflush(stdout);
	}
	for (int a = 1; a < argc; a++) {
		int known = 0;

		for (size_t i = 0; i < n; i++)
			known |= !strcmp(argv[a], all[i]->name);
		if (!known) {
			printf("FAIL %s: no such test\n", argv[a]);
			failed++;
		}
	}
	printf("vm: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
