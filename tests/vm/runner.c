// SPDX-License-Identifier: GPL-2.0
/*
 * The UPM VM test runner, run inside the debug-kernel VM as root with upm.ko loaded.
 *
 *   upm_tests [--list] [NAME...]
 *
 * Each test runs in its own child process, checks real outcomes (page contents against the
 * pattern they were filled with, pagemap frame numbers, RSS, sysfs counters) and leaves no
 * merged memory behind: every test starts by waiting for an empty stable tree, runs in a
 * fresh memory cgroup, and must give back what it took (check_given_back()); the runner puts
 * ksmd and the module's tunables back as they were after each one.
 *
 * The tests live in files by subject, each exporting only its table (harness.h); what they
 * share is in upm_lib.c. A test's verdict thus depends on its own file, upm_lib.c,
 * harness.h and this runner: what scripts/mutants.sh digests for a mutant's record.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
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

/*
 * What a test must give back besides the stable tree: the gauges of UPM's and KSM's sharing,
 * the memory charged to the cgroup it ran in, and the machine's anonymous pages.
 */
static const char *const gauges[] = {
	UPM_SYSFS_DIR "/pages_shared",	 UPM_SYSFS_DIR "/pages_sharing",
	UPM_SYSFS_DIR "/pages_unshared", UPM_SYSFS_DIR "/zero_pages",
	"/sys/kernel/mm/ksm/ksm_zero_pages", /* UPM's and ksmd's zero pages */
};
#define TEST_CGROUP "/sys/fs/cgroup/upm-suite-test"
/* Per-CPU vmstat deltas not yet folded into the global count (2 vCPUs). */
#define ANON_SLACK_PAGES 512
/*
 * Charges that trail the exit: swap entries wait in per-CPU swap-slot caches before they are
 * freed and uncharged, and an RCU grace period frees task structs and stacks. Less than the
 * 1 MiB that most tests merge.
 */
#define CGROUP_SLACK_BYTES (512 << 10)

struct baseline {
	long gauge[ARRAY_SIZE(gauges)];
	long anon_pages;
};

static void take_baseline(struct baseline *b)
{
	for (size_t i = 0; i < ARRAY_SIZE(gauges); i++)
		b->gauge[i] = read_long(gauges[i]);
	b->anon_pages = key_value("/proc/vmstat", "nr_anon_pages");
}

/* A fresh memory cgroup for the test; what the test moves elsewhere is not counted. */
static int make_test_cgroup(void)
{
	write_str("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
	rmdir(TEST_CGROUP);
	return mkdir(TEST_CGROUP, 0755) || access(TEST_CGROUP "/memory.current", F_OK) ? -1 : 0;
}

/* Bytes still charged to the test's cgroup, in memory or in swap. */
static long cgroup_charged(long *swapped)
{
	*swapped = read_long(TEST_CGROUP "/memory.swap.current");
	if (*swapped < 0)
		*swapped = 0;
	return read_long(TEST_CGROUP "/memory.current") + *swapped;
}

/*
 * After the test's exit: 0 if it gave everything back within 5 s, or -1 with what it kept.
 * memory.high = 0 drains the per-CPU charge caches and reclaims what can be reclaimed (with
 * no OOM kill, unlike memory.max): what is still charged then is held by someone.
 */
static int check_given_back(const struct baseline *before)
{
	struct baseline now;
	long charged = 0, swapped = 0;
	int kept = 1;

	write_long(TEST_CGROUP "/memory.high", 0);
	for (int i = 0; i < 100 && kept; i++) {
		if (i)
			usleep(50 * 1000);
		take_baseline(&now);
		charged = cgroup_charged(&swapped);
		kept = charged < 0 || charged > CGROUP_SLACK_BYTES ||
		       now.anon_pages - before->anon_pages > ANON_SLACK_PAGES;
		for (size_t g = 0; g < ARRAY_SIZE(gauges); g++)
			kept |= now.gauge[g] != before->gauge[g];
	}
	if (!kept)
		return 0;
	fprintf(stderr, "    not given back after the exit: %ld bytes charged to " TEST_CGROUP
		" (%ld in swap), nr_anon_pages %+ld\n", charged, swapped,
		now.anon_pages - before->anon_pages);
	for (size_t g = 0; g < ARRAY_SIZE(gauges); g++)
		if (now.gauge[g] != before->gauge[g])
			fprintf(stderr, "    %s: %ld, %ld before the test\n", gauges[g],
				now.gauge[g], before->gauge[g]);
	return -1;
}

/* CONFIG_FAULT_INJECTION (fail-nth is in procfs, whether debugfs is mounted or not). */
static int has_fault_injection(void)
{
	return access("/proc/thread-self/fail-nth", F_OK) == 0;
}

static enum result run_one(const struct test *t)
{
	struct baseline before;
	pid_t pid;
	int status;

	if (wait_tree_empty()) {
		fprintf(stderr, "    stable tree not empty before the test: %ld nodes\n",
			counter("stable_nodes"));
		return FAIL;
	}
	if (make_test_cgroup()) {
		fprintf(stderr, "    no memory cgroup for the test: %s\n", strerror(errno));
		return FAIL;
	}
	take_baseline(&before);
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		setpgid(0, 0); /* the test and every process it starts */
		if (write_long(TEST_CGROUP "/cgroup.procs", 0))
			_exit(FAIL);
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
	/*
	 * ksmd as it was: off, pages unmerged, default rate (the parity tests start it, and may
	 * leave it paused). run=2 also drops the stable nodes of processes that exited.
	 */
	write_long("/sys/kernel/mm/ksm/run", 2);
	write_long("/sys/kernel/mm/ksm/run", 0);
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
	if (WEXITSTATUS(status) == PASS && check_given_back(&before))
		return FAIL;
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
	/*
	 * Set by make test, whose kernels have every feature the tests use: a skip is a
	 * failure, but for a test that needs fault injection on a kernel without it (release).
	 */
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
		enum result r;
		double start;

		for (int a = 1; a < argc; a++)
			selected |= !strcmp(argv[a], t->name);
		if (!selected)
			continue;
		printf("RUN  %s\n", t->name);
		fflush(stdout);
		start = monotonic_seconds();
		r = run_one(t);
		/* Where a run's time goes: the slowest tests are sized by their premise. */
		fprintf(stderr, "    %.1f s\n", monotonic_seconds() - start);
		switch (r) {
		case PASS:
			printf("ok   %s\n", t->name);
			passed++;
			break;
		case SKIP:
			if (skip_fails && !(t->needs_fault_injection && !has_fault_injection())) {
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
	/* The last test's cgroup: its helpers may still be on their way out. */
	for (int i = 0; i < 100 && rmdir(TEST_CGROUP) && errno == EBUSY; i++)
		usleep(50 * 1000);
	printf("vm: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
