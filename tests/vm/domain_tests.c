// SPDX-License-Identifier: GPL-2.0
/*
 * Merge domains and abuse resistance: pages merge only within one domain (uid by default,
 * or user namespace, cgroup subtree, or the whole machine), a process cannot learn through
 * pagemap or the counters that another domain holds its contents, and pages built to collide
 * under an unkeyed xxh64 neither merge nor cost more than other pages.
 *
 * Each "member" is a child process that joins a cgroup, a new user namespace or a uid, maps
 * DN pages of the same contents, advises them and reports how many of them pagemap shows as
 * exclusively mapped (bit 56, readable without privilege). The parent, root, reads every
 * member's frames from /proc/PID/pagemap.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define DN 16
#define POLICY_FILE "/sys/kernel/mm/upm/domain_policy"
#define LEVEL_FILE "/sys/kernel/mm/upm/domain_cgroup_level"
#define PM_EXCLUSIVE (1ull << 56)
#define CG_ROOT "/sys/fs/cgroup"

struct spec {
	uid_t uid;		/* 0: stay root */
	int new_userns;
	const char *cgroup;	/* below CG_ROOT, or NULL */
	uint64_t seed;		/* contents */
	int no_advise;		/* only map and fill: someone else advises */
	volatile int *gate;	/* if set, advise only once it is non-zero */
	/* Once advised, the member leaves its domain this way (its candidates stay behind). */
	uid_t uid_after;
	int userns_after;
	const char *cgroup_after;
};

struct member {
	pid_t pid;
	uintptr_t addr;
	size_t exclusive;	/* pages pagemap shows exclusively mapped after advising */
	int err;
};

struct report {
	uintptr_t addr;
	size_t exclusive;
	int err;
};

static void member_main(const struct spec *s, int report_fd)
{
	struct report r = { 0 };
	char *p;

	if (s->cgroup && join_cgroup(s->cgroup))
		r.err = 10;
	else if (s->new_userns && unshare(CLONE_NEWUSER))
		r.err = 11;
	else if (s->uid && setresuid(s->uid, s->uid, s->uid))
		r.err = 12;
	/* A uid change makes the process undumpable, which hides its own pagemap from it. */
	prctl(PR_SET_DUMPABLE, 1);
	p = map_anon(DN);
	if (!r.err && !p)
		r.err = 13;
	if (!r.err) {
		fill_pages(p, DN, s->seed, 1);
		while (s->gate && !*s->gate)
			usleep(1000);
		if (!s->no_advise && advise(p, DN))
			r.err = 14;
	}
	if (!r.err && s->uid_after && setresuid(s->uid_after, s->uid_after, s->uid_after))
		r.err = 15;
	if (!r.err && s->userns_after && unshare(CLONE_NEWUSER))
		r.err = 16;
	if (!r.err && s->cgroup_after && join_cgroup(s->cgroup_after))
		r.err = 17;
	prctl(PR_SET_DUMPABLE, 1);
	r.addr = (uintptr_t)p;
	for (size_t i = 0; !r.err && i < DN; i++)
		r.exclusive += !!(pagemap_entry(p + i * page_size) & PM_EXCLUSIVE);
	if (write(report_fd, &r, sizeof(r)) != sizeof(r))
		_exit(1);
	pause(); /* until stop() kills it */
	_exit(0);
}

/* Starts a member; its report (once it has advised) comes through *report_fd. */
static int launch(struct member *m, const struct spec *s, int *report_fd)
{
	int report[2];

	if (pipe(report))
		return -1;
	fflush(NULL);
	m->pid = fork();
	if (m->pid < 0)
		return -1;
	if (m->pid == 0) {
		close(report[0]);
		member_main(s, report[1]);
	}
	close(report[1]);
	*report_fd = report[0];
	return 0;
}

/* Reads a launched member's report. */
static int collect(struct member *m, int report_fd)
{
	struct report r;

	if (read(report_fd, &r, sizeof(r)) != sizeof(r))
		r.err = 20;
	close(report_fd);
	m->addr = r.addr;
	m->exclusive = r.exclusive;
	m->err = r.err;
	return r.err ? -1 : 0;
}

/* Starts a member and waits until it has advised its pages. */
static int start(struct member *m, const struct spec *s)
{
	int report_fd;

	return launch(m, s, &report_fd) ? -1 : collect(m, report_fd);
}

static void stop(struct member *m)
{
	if (m->pid <= 0)
		return;
	kill(m->pid, SIGKILL);
	waitpid(m->pid, NULL, 0);
	m->pid = 0;
}

static uint64_t frame_of(const struct member *m, size_t i)
{
	return pfn_in(m->pid, m->addr, i);
}

/* Pages of `a` that map the same frame as the same page of `b`. */
static size_t shared(const struct member *a, const struct member *b)
{
	size_t n = 0;

	for (size_t i = 0; i < DN; i++) {
		uint64_t fa = frame_of(a, i);

		n += fa && fa == frame_of(b, i);
	}
	return n;
}

static int set_policy(const char *policy)
{
	return write_str(POLICY_FILE, policy);
}

/* The current policy: the bracketed word of domain_policy. */
static int policy_is(const char *policy)
{
	char buf[128] = "", want[40];
	int fd = open(POLICY_FILE, O_RDONLY);

	if (fd < 0)
		return 0;
	(void)!read(fd, buf, sizeof(buf) - 1);
	close(fd);
	snprintf(want, sizeof(want), "[%s]", policy);
	return strstr(buf, want) != NULL;
}

/* Whether /sys/kernel/mm/upm/domains has `line`. */
static int domains_has(const char *line)
{
	char buf[4096] = "";
	int fd = open(UPM_SYSFS_DIR "/domains", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

	if (fd >= 0)
		close(fd);
	if (n <= 0 || !strstr(buf, line)) {
		fprintf(stderr, "    domains has no \"%s\":\n%s", line, n > 0 ? buf : "(unreadable)\n");
		return 0;
	}
	return 1;
}

static void stop_all(struct member *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		stop(&m[i]);
}

/*
 * The default policy is uid: the second uid-1001 process shares with the first, the uid-1002
 * one with neither, and the first uid-1001 adviser learns nothing about uid 1002's page:
 * pagemap still shows its pages exclusively mapped and pages_sharing did not move.
 */
static enum result test_domain_default_uid(void)
{
	struct member m[3] = { 0 };
	long sharing_before;

	CHECK(policy_is("uid"), "default domain_policy is uid");
	CHECK(start(&m[0], &(struct spec){ .uid = 1002, .seed = 61 }) == 0, "uid 1002: %d",
	      m[0].err);
	sharing_before = counter("pages_sharing");
	CHECK(start(&m[1], &(struct spec){ .uid = 1001, .seed = 61 }) == 0, "uid 1001: %d",
	      m[1].err);
	CHECK(m[1].exclusive == DN, "uid 1001 sees %zu of %d pages exclusive: another uid's twin leaks",
	      m[1].exclusive, DN);
	CHECK(counter("pages_sharing") == sharing_before, "pages_sharing moved %ld -> %ld",
	      sharing_before, counter("pages_sharing"));
	CHECK(start(&m[2], &(struct spec){ .uid = 1001, .seed = 61 }) == 0, "uid 1001 again");
	CHECK(m[2].exclusive == 0, "same uid: %zu pages still exclusive", m[2].exclusive);
	CHECK(shared(&m[1], &m[2]) == DN, "same uid shares %zu of %d", shared(&m[1], &m[2]), DN);
	CHECK(shared(&m[0], &m[1]) == 0 && shared(&m[0], &m[2]) == 0,
	      "uid 1002 shares a frame with uid 1001");
	CHECK(counter("pages_sharing") == sharing_before + DN, "pages_sharing %ld",
	      counter("pages_sharing"));
	/* Per-domain counters, for root only: shared, sharing, unshared, nodes, candidates. */
	CHECK(domains_has("uid:1001 16 16 0 16 0") && domains_has("uid:1002 0 0 0 0 16"),
	      "domains file");
	struct stat st;

	CHECK(stat(UPM_SYSFS_DIR "/domains", &st) == 0 && (st.st_mode & 0777) == 0400,
	      "domains is root-only: %o", st.st_mode & 0777);
	stop_all(m, 3);
	return PASS;
}

/*
 * A frame shared by fork across a domain boundary: root fills M and its twin T and forks a
 * child that switches to uid 1001 and keeps M's frames; then root advises M and T. The
 * child's mapping must not join the merge (it would share a frame with T, root's page):
 * the pair merges into a fresh copy, and the child keeps its ordinary frames and has no rmap
 * items (ksm_merging_pages 0). In one domain, the child's mapping joins (prefork_server).
 */
static enum result test_domain_fork_sharer(void)
{
	volatile int *step = map_shared(sizeof(*step));
	char *m = map_anon(DN), *t = map_anon(DN);
	uint64_t child_pfns[DN];
	size_t pair = 0, joined = 0;
	long merging = -1;
	int advised = -1;
	char path[64];
	pid_t child;

	CHECK(step && m && t, "setup");
	CHECK(policy_is("uid"), "default domain_policy is uid");
	fill_pages(m, DN, 67, 1);
	fill_pages(t, DN, 67, 1);
	child = fork();
	if (child == 0) {
		if (setresuid(1001, 1001, 1001))
			_exit(1);
		*step = 1;
		while (*step < 2)
			usleep(10 * 1000);
		_exit(check_pages(m, DN, 67, 1) < 0 ? 0 : 2);
	}
	while (*step < 1 && waitpid(child, NULL, WNOHANG) == 0)
		usleep(10 * 1000);
	if (*step == 1) {
		advised = advise(m, DN) || advise(t, DN);
		pair = count_pfn_equal(m, t, DN);
		if (pfns_in(child, (uintptr_t)m, DN, child_pfns) == 0)
			for (size_t i = 0; i < DN; i++)
				joined += child_pfns[i] == pfn_of(m + i * page_size);
		snprintf(path, sizeof(path), "/proc/%d/ksm_merging_pages", child);
		merging = read_long(path);
	}
	*step = 2;
	CHECK(wait_exit(child) == 0 && advised == 0, "uid 1001 child, or the advice, failed");
	CHECK(pair == DN, "root's pair merged: %zu of %d", pair, DN);
	CHECK(joined == 0 && merging == 0,
	      "uid 1001's mapping joined root's merge: %zu of %d frames, ksm_merging_pages %ld",
	      joined, DN, merging);
	munmap(m, DN * page_size);
	munmap(t, DN * page_size);
	CHECK(wait_tree_empty() == 0, "UPM's index empties: %ld nodes", counter("stable_nodes"));
	return PASS;
}

/* global: any process with any process, the oracle included. */
static enum result test_domain_global(void)
{
	struct member m[2] = { 0 };
	enum result r = FAIL;

	CHECK(set_policy("global") == 0 && policy_is("global"), "set global");
	if (start(&m[0], &(struct spec){ .uid = 1002, .seed = 62 }) ||
	    start(&m[1], &(struct spec){ .uid = 1001, .seed = 62 }))
		fprintf(stderr, "    members failed: %d %d\n", m[0].err, m[1].err);
	else if (shared(&m[0], &m[1]) != DN || m[1].exclusive != 0)
		fprintf(stderr, "    global: %zu shared, %zu exclusive\n", shared(&m[0], &m[1]),
			m[1].exclusive);
	else
		r = PASS;
	stop_all(m, 2);
	CHECK(set_policy("uid") == 0, "restore uid");
	return r;
}

/* userns: processes of one user namespace share whatever their uids; two namespaces do not. */
static enum result test_domain_userns(void)
{
	struct member m[4] = { 0 };
	enum result r = FAIL;

	CHECK(set_policy("userns") == 0, "set userns");
	if (start(&m[0], &(struct spec){ .new_userns = 1, .seed = 63 }) ||
	    start(&m[1], &(struct spec){ .new_userns = 1, .seed = 63 }) ||
	    start(&m[2], &(struct spec){ .uid = 1001, .seed = 63 }) ||
	    start(&m[3], &(struct spec){ .uid = 1002, .seed = 63 }))
		fprintf(stderr, "    members failed: %d %d %d %d\n", m[0].err, m[1].err, m[2].err,
			m[3].err);
	else if (shared(&m[0], &m[1]) || shared(&m[0], &m[2]) || shared(&m[1], &m[3]))
		fprintf(stderr, "    a frame is shared across user namespaces\n");
	else if (shared(&m[2], &m[3]) != DN)
		fprintf(stderr, "    one namespace, two uids: %zu of %d shared\n",
			shared(&m[2], &m[3]), DN);
	else
		r = PASS;
	stop_all(m, 4);
	CHECK(set_policy("uid") == 0, "restore uid");
	return r;
}

static int make_cgroups(void)
{
	static const char *const dirs[] = { "upm_pool", "upm_pool/a", "upm_pool/b", "upm_other" };

	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		char path[128];

		snprintf(path, sizeof(path), CG_ROOT "/%s", dirs[i]);
		if (mkdir(path, 0755) && errno != EEXIST)
			return -1;
	}
	return 0;
}

static void remove_cgroups(void)
{
	rmdir(CG_ROOT "/upm_pool/a");
	rmdir(CG_ROOT "/upm_pool/b");
	rmdir(CG_ROOT "/upm_pool");
	rmdir(CG_ROOT "/upm_other");
}

/*
 * cgroup: sibling cgroups under one parent share at the parent's depth (1) and not at their
 * own (2); a cgroup outside the parent never shares.
 */
static enum result test_domain_cgroup(void)
{
	struct member m[5] = { 0 };
	enum result r = FAIL;

	SKIP_IF(access(CG_ROOT "/cgroup.procs", F_OK), "no cgroup v2 hierarchy");
	CHECK(make_cgroups() == 0, "mkdir cgroups");
	CHECK(set_policy("cgroup") == 0 && write_long(LEVEL_FILE, 1) == 0, "cgroup, level 1");
	if (start(&m[0], &(struct spec){ .cgroup = "upm_pool/a", .seed = 64 }) ||
	    start(&m[1], &(struct spec){ .cgroup = "upm_other", .seed = 64 }) ||
	    start(&m[2], &(struct spec){ .cgroup = "upm_pool/b", .seed = 64 })) {
		fprintf(stderr, "    members failed\n");
		goto out;
	}
	if (shared(&m[0], &m[2]) != DN || shared(&m[0], &m[1]) || m[1].exclusive != DN) {
		fprintf(stderr, "    level 1: siblings share %zu, other shares %zu\n",
			shared(&m[0], &m[2]), shared(&m[0], &m[1]));
		goto out;
	}
	if (write_long(LEVEL_FILE, 2)) {
		fprintf(stderr, "    level 2 refused\n");
		goto out;
	}
	if (start(&m[3], &(struct spec){ .cgroup = "upm_pool/a", .seed = 65 }) ||
	    start(&m[4], &(struct spec){ .cgroup = "upm_pool/b", .seed = 65 })) {
		fprintf(stderr, "    members failed\n");
		goto out;
	}
	if (shared(&m[3], &m[4]) || m[4].exclusive != DN) {
		fprintf(stderr, "    level 2: siblings share %zu frames\n", shared(&m[3], &m[4]));
		goto out;
	}
	r = PASS;
out:
	stop_all(m, 5);
	write_long(LEVEL_FILE, 1);
	set_policy("uid");
	remove_cgroups();
	return r;
}

/*
 * A process that leaves its domain after advising (setuid, a move to another cgroup, a new
 * user namespace) leaves its candidates behind in the old domain's index: a twin advised
 * there must not pair with them, the process belongs to another domain now. A second twin
 * in the old domain still pairs with the first: the contents merge, only not across.
 */
static enum result test_domain_change_after_advise(void)
{
	const struct {
		const char *policy;
		struct spec leaver, twin;
	} cases[] = {
		{ "uid", { .seed = 70, .uid_after = 1001 }, { .seed = 70 } },
		{ "cgroup",
		  { .cgroup = "upm_pool/a", .cgroup_after = "upm_other", .seed = 71 },
		  { .cgroup = "upm_pool/b", .seed = 71 } },
		{ "userns", { .seed = 72, .userns_after = 1 }, { .seed = 72 } },
	};
	enum result r = PASS;

	SKIP_IF(access(CG_ROOT "/cgroup.procs", F_OK), "no cgroup v2 hierarchy");
	CHECK(make_cgroups() == 0, "mkdir cgroups");
	CHECK(write_long(LEVEL_FILE, 1) == 0, "cgroup level 1");
	for (size_t i = 0; r == PASS && i < ARRAY_SIZE(cases); i++) {
		struct member m[3] = { 0 };
		size_t across, within;

		if (set_policy(cases[i].policy) || start(&m[0], &cases[i].leaver) ||
		    start(&m[1], &cases[i].twin) || start(&m[2], &cases[i].twin)) {
			fprintf(stderr, "    %s: members failed: %d %d %d\n", cases[i].policy,
				m[0].err, m[1].err, m[2].err);
			r = FAIL;
		} else {
			across = shared(&m[0], &m[1]) + shared(&m[0], &m[2]);
			within = shared(&m[1], &m[2]);
			fprintf(stderr, "    %s: the leaver shares %zu frames, the twins %zu of %d\n",
				cases[i].policy, across, within, DN);
			if (across || within != DN)
				r = FAIL;
		}
		stop_all(m, 3);
	}
	set_policy("uid");
	remove_cgroups();
	return r;
}

/* The owner of uid 1001's pages and its uid-1002 child, stepped through shared memory. */
struct adopt {
	volatile uintptr_t pages;
	volatile pid_t child;
	volatile int step; /* 1: owner advised; 2: fork!; 3: child is uid 1002; 4: advise!; 5: done */
	volatile int failed;
};

static void adopt_wait(struct adopt *a, int step)
{
	for (int i = 0; i < 3000 && a->step < step && !a->failed; i++)
		usleep(10 * 1000);
}

/* Effective uid 1001 (saved uid 0, so that the child can become 1002). */
static int adopt_owner(void *arg)
{
	struct adopt *a = arg;
	char *m = map_anon(DN);
	pid_t child;

	if (!m || setresuid(-1, 1001, 0))
		return a->failed = 1;
	fill_pages(m, DN, 73, 1);
	if (advise(m, DN))
		return a->failed = 2;
	a->pages = (uintptr_t)m;
	a->step = 1;
	adopt_wait(a, 2);
	child = fork();
	if (child == 0) {
		/* Root again for a moment (the saved uid), then uid 1002 for good. */
		if (setresuid(-1, 0, -1) || setresuid(1002, 1002, 1002))
			_exit(a->failed = 3);
		a->step = 3;
		adopt_wait(a, 4);
		if (advise(m, DN))
			_exit(a->failed = 4);
		a->step = 5;
		pause();
		_exit(0);
	}
	a->child = child;
	pause();
	return 0;
}

/*
 * A reloaded module indexes a merged page again (adopts its node) only when the adviser is in
 * the node's domain. uid 1001's pages merge; their owner forks a child that becomes uid 1002
 * and still maps them; after a reload the child advises them: uid 1002's domain must not
 * adopt the node, or uid 1002's next twin would land on uid 1001's frames.
 */
static enum result test_domain_adopt_after_reload(void)
{
	struct adopt *a = map_shared(sizeof(*a));
	struct member twin = { 0 }, other = { 0 };
	pid_t owner;
	enum result r = FAIL;

	CHECK(a && policy_is("uid"), "uid policy");
	owner = spawn(adopt_owner, a);
	adopt_wait(a, 1);
	if (a->step < 1 || start(&twin, &(struct spec){ .uid = 1001, .seed = 73 })) {
		fprintf(stderr, "    the uid-1001 owner or its twin failed: %d\n", a->failed);
		goto out;
	}
	a->step = 2;
	adopt_wait(a, 3);
	for (int i = 0; i < 100 && a->child <= 0; i++)
		usleep(10 * 1000);
	/* premise: uid 1001's pages merged, and the uid-1002 child maps the same frames */
	if (a->step < 3 ||
	    shared(&twin, &(struct member){ .pid = a->child, .addr = a->pages }) != DN) {
		fprintf(stderr, "    the child does not map uid 1001's merged pages: %d\n",
			a->failed);
		goto out;
	}
	if (module_unload() || module_load()) {
		fprintf(stderr, "    reload failed\n");
		goto out;
	}
	a->step = 4;
	adopt_wait(a, 5);
	if (a->step < 5 || start(&other, &(struct spec){ .uid = 1002, .seed = 73 })) {
		fprintf(stderr, "    uid 1002's advice failed: %d\n", a->failed);
		goto out;
	}
	fprintf(stderr, "    after the reload: uid 1002's twin shares %zu of %d frames with uid 1001\n",
		shared(&other, &twin), DN);
	if (shared(&other, &twin) == 0)
		r = PASS;
out:
	stop(&twin);
	stop(&other);
	if (a->child > 0)
		kill(a->child, SIGKILL);
	kill(owner, SIGKILL);
	waitpid(owner, NULL, 0);
	/* Reaped here if it was handed to this process (a subreaper); else init reaps it. */
	if (a->child > 0)
		waitpid(a->child, NULL, 0);
	if (!module_loaded())
		CHECK(module_load() == 0, "insmod");
	return r;
}

/*
 * A policy change takes effect for the next advice and never merges across the old
 * boundaries: a page merged under uid is no twin for a page advised under global.
 */
static enum result test_domain_policy_change(void)
{
	struct member m[4] = { 0 };
	enum result r = FAIL;

	if (start(&m[0], &(struct spec){ .uid = 1001, .seed = 66 }) ||
	    start(&m[1], &(struct spec){ .uid = 1001, .seed = 66 }) || shared(&m[0], &m[1]) != DN) {
		fprintf(stderr, "    uid 1001 pair did not merge\n");
		goto out;
	}
	if (set_policy("global"))
		goto out;
	if (start(&m[2], &(struct spec){ .uid = 1002, .seed = 66 }) ||
	    start(&m[3], &(struct spec){ .uid = 1003, .seed = 66 })) {
		fprintf(stderr, "    members failed\n");
		goto out;
	}
	if (shared(&m[2], &m[0]) || shared(&m[3], &m[0])) {
		fprintf(stderr, "    merged into a page of the old uid domain\n");
		goto out;
	}
	if (shared(&m[2], &m[3]) != DN) {
		fprintf(stderr, "    global pair shares %zu of %d\n", shared(&m[2], &m[3]), DN);
		goto out;
	}
	r = PASS;
out:
	stop_all(m, 4);
	CHECK(set_policy("uid") == 0, "restore uid");
	return r;
}

/*
 * process_madvise() advises the target in the target's domain, not the caller's: root's own
 * twin and another uid's stay apart, a later adviser of the target's uid shares with it.
 */
static enum result test_domain_process_madvise(void)
{
	struct member m[3] = { 0 };
	char *own = map_anon(DN);
	enum result r = FAIL;
	struct iovec iov;
	int pidfd;

	CHECK(own, "map");
	fill_pages(own, DN, 67, 1);
	CHECK(advise(own, DN) == 0, "root advises its copy");
	if (start(&m[0], &(struct spec){ .uid = 1001, .seed = 67 }) ||
	    start(&m[1], &(struct spec){ .uid = 1002, .seed = 67, .no_advise = 1 })) {
		fprintf(stderr, "    members failed\n");
		goto out;
	}
	pidfd = syscall(SYS_pidfd_open, m[1].pid, 0);
	iov = (struct iovec){ (void *)m[1].addr, DN * page_size };
	if (pidfd < 0 || syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_UPM_MERGEABLE, 0) !=
				 (long)(DN * page_size)) {
		fprintf(stderr, "    process_madvise failed: %s\n", strerror(errno));
		goto out;
	}
	close(pidfd);
	size_t with_root = 0;

	for (size_t i = 0; i < DN; i++)
		with_root += frame_of(&m[1], i) == pfn_of(own + i * page_size);
	if (with_root || shared(&m[0], &m[1])) {
		fprintf(stderr, "    target shares %zu with root, %zu with uid 1001\n", with_root,
			shared(&m[0], &m[1]));
		goto out;
	}
	if (start(&m[2], &(struct spec){ .uid = 1002, .seed = 67 }) || shared(&m[1], &m[2]) != DN) {
		fprintf(stderr, "    uid 1002 adviser shares %zu of %d with the target\n",
			shared(&m[1], &m[2]), DN);
		goto out;
	}
	r = PASS;
out:
	stop_all(m, 3);
	munmap(own, DN * page_size);
	return r;
}

/* ---- group: the node agent names the cgroups that may share ---- */

#define GROUPS_FILE UPM_SYSFS_DIR "/domain_groups"
#define KUBE "upm_kubepods"

/*
 * Pods as the kubelet lays them out (cgroupfs driver): Guaranteed pods right below the root,
 * Burstable and BestEffort ones a level deeper, each container a cgroup in its pod. Two
 * namespaces with two functions each: a function's instances are pods of any QoS class, put
 * in one group through their pod's cgroup; one pod is in no group.
 */
static const struct {
	const char *pod;
	long group; /* 0: none */
} kube_pods[] = {
	{ KUBE "/podg1", 101 },		       { KUBE "/burstable/podb1", 101 }, /* ns1, f1 */
	{ KUBE "/besteffort/pode1", 102 },     { KUBE "/burstable/podb3", 102 }, /* ns1, f2 */
	{ KUBE "/podg2", 201 },		       { KUBE "/besteffort/pode2", 201 }, /* ns2, f1 */
	{ KUBE "/burstable/podb2", 202 },      { KUBE "/besteffort/pode3", 202 }, /* ns2, f2 */
	{ KUBE "/burstable/podu", 0 },
};
#define KUBE_PODS ARRAY_SIZE(kube_pods)

/* The cgroup id of a cgroup v2 directory below CG_ROOT: its inode number; 0 if none. */
static uint64_t cgroup_id_of(const char *cg)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), CG_ROOT "/%s", cg);
	return stat(path, &st) ? 0 : (uint64_t)st.st_ino;
}

static int assign_group(const char *cg, long group)
{
	char line[64];

	snprintf(line, sizeof(line), "%llu %ld", (unsigned long long)cgroup_id_of(cg), group);
	return write_str(GROUPS_FILE, line);
}

static void kube_teardown(void)
{
	static const char *const levels[] = { KUBE "/burstable", KUBE "/besteffort", KUBE };
	char path[160];

	for (size_t i = 0; i < KUBE_PODS; i++) {
		if (kube_pods[i].group)
			assign_group(kube_pods[i].pod, 0);
		snprintf(path, sizeof(path), CG_ROOT "/%s/ctr", kube_pods[i].pod);
		rmdir(path);
		snprintf(path, sizeof(path), CG_ROOT "/%s", kube_pods[i].pod);
		rmdir(path);
	}
	for (size_t i = 0; i < ARRAY_SIZE(levels); i++) {
		snprintf(path, sizeof(path), CG_ROOT "/%s", levels[i]);
		rmdir(path);
	}
}

static int kube_setup(void)
{
	static const char *const levels[] = { KUBE, KUBE "/burstable", KUBE "/besteffort" };
	char path[160];

	for (size_t i = 0; i < ARRAY_SIZE(levels); i++) {
		snprintf(path, sizeof(path), CG_ROOT "/%s", levels[i]);
		if (mkdir(path, 0755) && errno != EEXIST)
			return -1;
	}
	for (size_t i = 0; i < KUBE_PODS; i++) {
		snprintf(path, sizeof(path), CG_ROOT "/%s", kube_pods[i].pod);
		if (mkdir(path, 0755) && errno != EEXIST)
			return -1;
		snprintf(path, sizeof(path), CG_ROOT "/%s/ctr", kube_pods[i].pod);
		if (mkdir(path, 0755) && errno != EEXIST)
			return -1;
		/* The pod's domain is known before its first advice. */
		if (kube_pods[i].group && assign_group(kube_pods[i].pod, kube_pods[i].group))
			return -1;
	}
	return 0;
}

/*
 * group: pods in the kubelet's layout, one process per container holding the same pages, all
 * advising at once. Frames are shared exactly within each function's group, whatever the
 * pods' depth, never across groups (namespaces, functions) and never with the pod in no
 * group; domain_groups refuses what it cannot hold.
 */
static enum result test_domain_groups_kubelet(void)
{
	struct member m[KUBE_PODS] = { 0 };
	volatile int *gate = map_shared(sizeof(*gate));
	int fds[KUBE_PODS];
	char cg[KUBE_PODS][64], line[64];
	size_t wrong = 0, pairs = 0;
	enum result r = FAIL;

	SKIP_IF(access(CG_ROOT "/cgroup.procs", F_OK), "no cgroup v2 hierarchy");
	CHECK(gate, "shared map");
	/* Refused: cgroup id 0, a group beyond 52 bits, not two numbers. */
	CHECK(write_str(GROUPS_FILE, "0 5") && errno == EINVAL, "cgroup id 0: %s", strerror(errno));
	CHECK(write_str(GROUPS_FILE, "1 4503599627370496") && errno == EINVAL,
	      "group 2^52: %s", strerror(errno));
	CHECK(write_str(GROUPS_FILE, "1") && errno == EINVAL, "one field: %s", strerror(errno));
	if (kube_setup() || set_policy("group")) {
		fprintf(stderr, "    cgroups or groups refused: %s\n", strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < KUBE_PODS; i++) {
		snprintf(cg[i], sizeof(cg[i]), "%s/ctr", kube_pods[i].pod);
		if (launch(&m[i], &(struct spec){ .cgroup = cg[i], .seed = 80, .gate = gate },
			   &fds[i])) {
			fprintf(stderr, "    member %zu failed\n", i);
			goto out;
		}
	}
	*gate = 1;
	for (size_t i = 0; i < KUBE_PODS; i++)
		if (collect(&m[i], fds[i])) {
			fprintf(stderr, "    member %zu: error %d\n", i, m[i].err);
			goto out;
		}
	for (size_t i = 0; i < KUBE_PODS; i++)
		for (size_t j = i + 1; j < KUBE_PODS; j++) {
			int same = kube_pods[i].group && kube_pods[i].group == kube_pods[j].group;
			size_t n = shared(&m[i], &m[j]);

			pairs++;
			if (n != (same ? DN : 0)) {
				fprintf(stderr, "    %s and %s share %zu of %d frames\n",
					kube_pods[i].pod, kube_pods[j].pod, n, DN);
				wrong++;
			}
		}
	fprintf(stderr, "    %zu pairs of pods, %zu as their groups say\n", pairs, pairs - wrong);
	snprintf(line, sizeof(line), "group:cgroup:%llu ",
		 (unsigned long long)cgroup_id_of(cg[KUBE_PODS - 1]));
	if (!wrong && m[KUBE_PODS - 1].exclusive == DN && domains_has("group:101 ") &&
	    domains_has("group:202 ") && domains_has(line))
		r = PASS;
out:
	stop_all(m, KUBE_PODS);
	set_policy("uid");
	kube_teardown();
	return r;
}

/*
 * fresh_frame: a new merged page is a fresh copy, so neither adviser chooses the frame the
 * other maps; the copy is a KSM page like any other (contents, copy-on-write, counters).
 */
static enum result test_fresh_frame(void)
{
	char *a = map_anon(DN), *b = map_anon(DN);
	uint64_t before_a[DN], before_b[DN];
	size_t fresh = 0, shared_now = 0;
	enum result r = FAIL;

	CHECK(a && b, "map");
	CHECK(set_tunable("fresh_frame", 1) == 0, "fresh_frame=1");
	fill_pages(a, DN, 68, 1);
	fill_pages(b, DN, 68, 1);
	for (size_t i = 0; i < DN; i++) {
		before_a[i] = pfn_of(a + i * page_size);
		before_b[i] = pfn_of(b + i * page_size);
	}
	if (advise(a, DN) || advise(b, DN)) {
		fprintf(stderr, "    advise failed\n");
		goto out;
	}
	for (size_t i = 0; i < DN; i++) {
		uint64_t now_a = pfn_of(a + i * page_size);

		shared_now += now_a && now_a == pfn_of(b + i * page_size);
		fresh += now_a != before_a[i] && now_a != before_b[i];
	}
	if (shared_now != DN || fresh != DN) {
		fprintf(stderr, "    %zu of %d shared, %zu on a fresh frame\n", shared_now, DN, fresh);
		goto out;
	}
	if (check_pages(a, DN, 68, 1) >= 0 || check_pages(b, DN, 68, 1) >= 0 ||
	    counter("pages_sharing") != DN) {
		fprintf(stderr, "    contents or pages_sharing (%ld) wrong\n", counter("pages_sharing"));
		goto out;
	}
	a[0] ^= 1;
	if (pfn_of(a) == pfn_of(b) || check_pages(b, 1, 68, 1) >= 0) {
		fprintf(stderr, "    a write reached the other mapping\n");
		goto out;
	}
	r = PASS;
out:
	set_tunable("fresh_frame", 0);
	munmap(a, DN * page_size);
	munmap(b, DN * page_size);
	return r;
}

static uint64_t inverse(uint64_t x)
{
	uint64_t inv = x; /* Newton's iteration; x is odd */

	for (int i = 0; i < 6; i++)
		inv *= 2 - x * inv;
	return inv;
}

/*
 * Makes `page` (random contents) collide with `target` under xxh64 seed 0: solve its last
 * stripe so that the four lanes end equal, the length being equal too.
 */
static void collide(uint64_t *page, const uint64_t *target)
{
	size_t words = page_size / 8, stripes = words / 4;
	uint64_t want[4], have[4];

	xxh64_lanes(target, stripes, want);
	xxh64_lanes(page, stripes - 1, have);
	for (int l = 0; l < 4; l++)
		page[words - 4 + l] = (rotl64(want[l] * inverse(XXH_PRIME64_1), 64 - 31) - have[l]) *
				      inverse(XXH_PRIME64_2);
}

/*
 * Seconds to advise `pages` fresh pages, random or made to collide with `target`, best of
 * three. Every round has its own contents (`seed`), so no page meets a stale entry of an
 * earlier round.
 */
static double advise_time(size_t pages, const uint64_t *target, uint64_t seed, long *merged)
{
	double best = 1e9;

	for (int round = 0; round < 3; round++) {
		char *p = map_anon(pages);
		double t;

		if (!p)
			return -1;
		fill_pages(p, pages, seed + round, 1);
		if (target)
			for (size_t i = 0; i < pages; i++)
				collide((uint64_t *)(p + i * page_size), target);
		*merged -= counter("pages_merged");
		t = monotonic_seconds();
		if (advise(p, pages))
			return -1;
		t = monotonic_seconds() - t;
		*merged += counter("pages_merged");
		/* Unmerging drops the candidates: every round starts from the same index. */
		if (unmerge(p, pages))
			return -1;
		munmap(p, pages * page_size);
		best = t < best ? t : best;
	}
	return best;
}

/*
 * Pages built to share one hash under unkeyed xxh64 are distinct pages to UPM: none merges,
 * none costs a compare (hash_collisions does not move: the index is keyed with a secret),
 * and advising them costs what advising random pages costs, growing linearly with their
 * number.
 */
static enum result test_hash_flood(void)
{
	const size_t k = 4096;
	uint64_t *target = malloc(page_size);
	long merged = 0, collisions = counter("hash_collisions");
	double random_pages, colliding, colliding_quarter;
	char *probe = map_anon(2);

	CHECK(target && probe, "setup");
	/* The model is xxh64 itself: a known value (python3-xxhash, seed 0). */
	for (size_t i = 0; i < page_size / 8; i++)
		target[i] = i * 0x9e3779b97f4a7c15ull;
	CHECK(xxh64_page(target) == 0xd26bb82eeee9458aull, "xxh64 model: %llx",
	      (unsigned long long)xxh64_page(target));
	fill_pages(target, 1, 99, 1);
	/* The construction works: two different pages with the target's xxh64. */
	fill_pages(probe, 2, 98, 1);
	collide((uint64_t *)probe, target);
	collide((uint64_t *)(probe + page_size), target);
	CHECK(xxh64_page((uint64_t *)probe) == xxh64_page(target) &&
	      xxh64_page((uint64_t *)(probe + page_size)) == xxh64_page(target) &&
	      memcmp(probe, probe + page_size, page_size), "colliding pages built");
	random_pages = advise_time(k, NULL, 100, &merged);
	colliding = advise_time(k, target, 200, &merged);
	colliding_quarter = advise_time(k / 4, target, 300, &merged);
	fprintf(stderr, "    advise %zu pages: random %.4f s, colliding %.4f s; %zu: %.4f s\n", k,
		random_pages, colliding, k / 4, colliding_quarter);
	CHECK(random_pages > 0 && colliding > 0 && colliding_quarter > 0, "advise");
	CHECK(merged == 0, "%ld distinct pages merged", merged);
	CHECK(counter("hash_collisions") == collisions,
	      "hash_collisions %ld -> %ld: crafted pages reached the compare", collisions,
	      counter("hash_collisions"));
	CHECK(colliding < 3 * random_pages + 0.01, "colliding pages cost %.1fx random ones",
	      colliding / random_pages);
	CHECK(colliding < 8 * colliding_quarter + 0.01, "4x the colliding pages cost %.1fx",
	      colliding / colliding_quarter);
	free(target);
	return PASS;
}

const struct test domain_tests[] = {
	{ "domain_default_uid", test_domain_default_uid,
	  "default uid domains: no sharing, no pagemap/counter oracle across uids" },
	{ "domain_fork_sharer", test_domain_fork_sharer,
	  "a fork child in another uid keeps its frame when its parent merges it" },
	{ "domain_global", test_domain_global, "global: any two processes share" },
	{ "domain_userns", test_domain_userns, "userns: share within a user namespace only" },
	{ "domain_cgroup", test_domain_cgroup, "cgroup: siblings share at the parent's depth" },
	{ "domain_process_madvise", test_domain_process_madvise,
	  "process_madvise advises the target in the target's domain" },
	{ "domain_change_after_advise", test_domain_change_after_advise,
	  "a process that leaves its domain after advising never pairs across" },
	{ "domain_adopt_after_reload", test_domain_adopt_after_reload,
	  "a reloaded module adopts a merged page only in its node's domain" },
	{ "domain_policy_change", test_domain_policy_change,
	  "a policy change never merges across the old domains" },
	{ "domain_groups_kubelet", test_domain_groups_kubelet,
	  "group: pods in the kubelet's layout share exactly within their function's group" },
	{ "fresh_frame", test_fresh_frame, "fresh_frame=1: merged pages live on a new frame" },
	{ "hash_flood", test_hash_flood,
	  "pages colliding under unkeyed xxh64: no merge, no compare, linear cost" },
};

const size_t domain_test_count = ARRAY_SIZE(domain_tests);
