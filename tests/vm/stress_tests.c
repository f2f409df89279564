// SPDX-License-Identifier: GPL-2.0
/*
 * Randomized stress: processes in two merge domains advise, unmerge, write, fork, mremap and
 * mprotect shared and private pages at random (seeded: UPM_STRESS_SEED replays a run), every
 * read checked against a shadow copy; then a final advise must reach the expected sharing.
 * Run by upm_tests (runner.c).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

#define STRESS_PROCS 4
#define STRESS_THREADS 3
/* More than the module's 512-page mmap_lock batch: advises of a region cross a batch. */
#define STRESS_PAGES 544
#define STRESS_COMMON (STRESS_PAGES / 2) /* pages 0..STRESS_COMMON-1: the same everywhere */
#define STRESS_LOG 16

struct stress_report {
	volatile int stopped;	 /* threads joined */
	volatile int settle;	 /* parent: every process stopped, advise once more */
	volatile int advised;	 /* final advise done */
	volatile int snapshot;	 /* parent: every final advise done, read pagemap and smaps */
	volatile int ready;	 /* pfns published */
	volatile int release;	 /* parent read the pfns: exit */
	volatile long ops, bad, ksm_kb;
	uint64_t pfns[STRESS_THREADS * STRESS_PAGES];
};

static const char *const stress_ops[] = { "advise", "advise", "advise", "unmerge", "write",
					  "verify", "dontneed", "mprotect", "mremap", "fork",
					  "advise racing writes" };

struct stress_thread {
	int proc, id;
	uint64_t rng;
	char *region;		/* STRESS_PAGES pages, owned by this thread */
	char *shadow;		/* what the region must contain */
	const char *common;	/* the half that is the same everywhere */
	volatile int *stop;
	long ops, bad;
	/* The last operations, printed when one goes wrong: the seed replays each thread's
	 * operations, not their interleaving. */
	struct {
		int op;
		size_t first, n;
	} log[STRESS_LOG];
};

/* Counts a failed operation, naming it, its pages and the thread's last operations. */
static void stress_fail(struct stress_thread *t, const char *what, long page)
{
	fprintf(stderr, "    stress: process %d thread %d, op %ld: %s", t->proc, t->id,
		t->ops - 1, what);
	if (page >= 0)
		fprintf(stderr, " (page %ld)", page);
	fprintf(stderr, "; last ops, newest first:");
	for (long i = t->ops - 1, k = 0; i >= 0 && k < STRESS_LOG; i--, k++) {
		const typeof(t->log[0]) *l = &t->log[i % STRESS_LOG];

		fprintf(stderr, " %s[%zu+%zu]", stress_ops[l->op], l->first, l->n);
	}
	fprintf(stderr, "\n");
	t->bad++;
}

/* Checks pages first..first+n-1 against the shadow; reports the first that differs. */
static void verify_region(struct stress_thread *t, size_t first, size_t n, const char *during)
{
	for (size_t p = first; p < first + n; p++)
		if (memcmp(t->region + p * page_size, t->shadow + p * page_size, page_size)) {
			stress_fail(t, during, (long)p);
			return;
		}
}

static void stress_op(struct stress_thread *t, int op, size_t first, size_t n)
{
	size_t bytes = n * page_size;
	char *at = t->region + first * page_size;
	pid_t pid;
	char *moved;

	switch (op) {
	case 0: case 1: case 2:
		if (advise(at, n) && errno != EINTR)
			stress_fail(t, "advise failed", -1);
		break;
	case 3:
		if (unmerge(at, n))
			stress_fail(t, "unmerge failed", -1);
		break;
	case 4: { /* write one byte of the private half: region and shadow */
		size_t half = (STRESS_PAGES - STRESS_COMMON) * page_size;
		size_t off = STRESS_COMMON * page_size + xorshift64(&t->rng) % half;

		t->region[off]++;
		t->shadow[off]++;
		break;
	}
	case 5:
		verify_region(t, first, n, "contents differ from the shadow");
		break;
	case 6: /* drop pages: they read back as zeroes; refill the common half */
		madvise(at, bytes, MADV_DONTNEED);
		memset(t->shadow + first * page_size, 0, bytes);
		for (size_t p = first; p < first + n && p < STRESS_COMMON; p++) {
			memcpy(t->region + p * page_size, t->common + p * page_size, page_size);
			memcpy(t->shadow + p * page_size, t->common + p * page_size, page_size);
		}
		break;
	case 7: /* mprotect round trip */
		mprotect(at, bytes, PROT_READ);
		verify_region(t, first, n, "contents differ while read-only");
		mprotect(at, bytes, PROT_READ | PROT_WRITE);
		break;
	case 8: /* move the whole region elsewhere */
		moved = mmap(NULL, STRESS_PAGES * page_size, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (moved != MAP_FAILED)
			moved = mremap(t->region, STRESS_PAGES * page_size, STRESS_PAGES * page_size,
				       MREMAP_MAYMOVE | MREMAP_FIXED, moved);
		if (moved == MAP_FAILED)
			stress_fail(t, "mremap failed", -1);
		else
			t->region = moved;
		break;
	case 9: /* fork: the child sees the same contents, writes, exits */
		pid = fork();
		if (pid == 0) {
			int bad = memcmp(t->region, t->shadow, STRESS_PAGES * page_size) != 0;

			memset(t->region, 0x77, page_size);
			_exit(bad);
		}
		if (pid < 0 || wait_exit(pid) != 0)
			stress_fail(t, "fork child saw other contents", -1);
		break;
	case 10: { /* advise while another thread writes the same, twinned, pages */
		struct race r = { .a = at, .pages = first < STRESS_COMMON ?
				  (first + n < STRESS_COMMON ? n : STRESS_COMMON - first) : 0 };
		pthread_t writer;

		if (!r.pages || pthread_create(&writer, NULL, flip_words, &r)) {
			stress_op(t, 0, first, n);
			break;
		}
		if (advise(at, n) && errno != EINTR)
			stress_fail(t, "advise failed", -1);
		r.stop = 1;
		pthread_join(writer, NULL);
		if (r.lost)
			stress_fail(t, "a write racing the advise was lost", -1);
		verify_region(t, first, n, "contents differ after racing writes");
		break;
	}
	}
}

static void *stress_thread(void *arg)
{
	struct stress_thread *t = arg;

	while (!*t->stop) {
		size_t first = xorshift64(&t->rng) % STRESS_PAGES;
		size_t n = 1 + xorshift64(&t->rng) % (STRESS_PAGES - first);
		int op = xorshift64(&t->rng) % ARRAY_SIZE(stress_ops);

		t->log[t->ops++ % STRESS_LOG] = (typeof(t->log[0])){ op, first, n };
		stress_op(t, op, first, n);
	}
	verify_region(t, 0, STRESS_PAGES, "contents differ at the end");
	return NULL;
}

/* KSM-page mappings of this process in kB (smaps "KSM:", from folio_test_ksm()). */
static long ksm_kb_self(void)
{
	return proc_kb("/proc/self/smaps_rollup", "KSM");
}

static void stress_process(struct stress_report *r, int proc, uint64_t seed, int secs)
{
	struct stress_thread t[STRESS_THREADS];
	pthread_t th[STRESS_THREADS];
	volatile int stop = 0;
	char *common = malloc(STRESS_COMMON * page_size);

	fill_pages(common, STRESS_COMMON, 151, 1);

	for (int i = 0; i < STRESS_THREADS; i++) {
		t[i] = (struct stress_thread){ .proc = proc, .id = i, .rng = seed * 7919 + i + 1,
					       .stop = &stop, .common = common };
		t[i].region = map_anon(STRESS_PAGES);
		t[i].shadow = malloc(STRESS_PAGES * page_size);
		/* Half the pages are the same in every thread and process, half are not. */
		memcpy(t[i].region, common, STRESS_COMMON * page_size);
		fill_pages(t[i].region + STRESS_COMMON * page_size, STRESS_PAGES - STRESS_COMMON,
			   seed * 31 + i, 1);
		memcpy(t[i].shadow, t[i].region, STRESS_PAGES * page_size);
		pthread_create(&th[i], NULL, stress_thread, &t[i]);
	}
	sleep(secs);
	stop = 1;
	for (int i = 0; i < STRESS_THREADS; i++) {
		pthread_join(th[i], NULL);
		r->ops += t[i].ops;
	}
	/* Once nobody writes any more, a last advise must share the common half. */
	r->stopped = 1;
	while (!r->settle)
		usleep(10 * 1000);
	for (int i = 0; i < STRESS_THREADS; i++) {
		if (advise(t[i].region, STRESS_PAGES))
			stress_fail(&t[i], "final advise failed", -1);
		verify_region(&t[i], 0, STRESS_PAGES, "contents differ after the final advise");
		r->bad += t[i].bad;
	}
	/*
	 * Another process's advise may still pair with one of our pages (a candidate becomes
	 * its merged page): read the page tables once every process is done.
	 */
	r->advised = 1;
	while (!r->snapshot)
		usleep(10 * 1000);
	/*
	 * Lock the pages in memory (present ones only: MLOCK_ONFAULT faults nothing in, so no
	 * copy-on-write): reclaim must not swap merged pages out while the parent counts. Only
	 * now: mlock takes mmap_lock for writing, and an advise that finds our mm busy leaves
	 * our candidate for later.
	 */
	for (int i = 0; i < STRESS_THREADS; i++)
		if (mlock2(t[i].region, STRESS_PAGES * page_size, MLOCK_ONFAULT)) {
			fprintf(stderr, "    stress: mlock2: %s\n", strerror(errno));
			r->bad++;
		}
	for (int i = 0; i < STRESS_THREADS; i++)
		for (int p = 0; p < STRESS_PAGES; p++)
			r->pfns[i * STRESS_PAGES + p] = pfn_of(t[i].region + p * page_size);
	r->ksm_kb = ksm_kb_self();
	r->ready = 1;
	while (!r->release)
		usleep(10 * 1000);
	_exit(0);
}

static int cmp_pfn(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int stress_seconds(void)
{
	const char *env_secs = getenv("UPM_STRESS_SECS");

	return env_secs && *env_secs ? atoi(env_secs) : 60;
}

/* Two cgroups under the cgroup policy: the stress processes spread over two merge domains. */
#define STRESS_DOMAINS 2

/* /proc/vmstat's memory-moving counters, to say what the kernel did behind a test's back. */
#define VMSTAT_MAX 64
struct vmstat {
	int n;
	char name[VMSTAT_MAX][64];
	long value[VMSTAT_MAX];
};

static void vmstat_read(struct vmstat *v)
{
	static const char *const kinds[] = { "migrat", "swp", "steal", "compact_migrate", "numa",
					     "demote", "split", "ksm", "drop" };
	char name[64];
	long value;
	FILE *f = fopen("/proc/vmstat", "r");

	v->n = 0;
	while (f && v->n < VMSTAT_MAX && fscanf(f, "%63s %ld", name, &value) == 2)
		for (size_t k = 0; k < ARRAY_SIZE(kinds); k++)
			if (strstr(name, kinds[k])) {
				snprintf(v->name[v->n], sizeof(v->name[0]), "%s", name);
				v->value[v->n++] = value;
				break;
			}
	if (f)
		fclose(f);
}

static void vmstat_print_changes(const struct vmstat *before)
{
	struct vmstat now;

	vmstat_read(&now);
	fprintf(stderr, "    meanwhile:");
	for (int i = 0; i < before->n && i < now.n; i++)
		if (now.value[i] != before->value[i])
			fprintf(stderr, " %s %+ld", now.name[i], now.value[i] - before->value[i]);
	fprintf(stderr, "\n");
}

static int stress_domains_setup(void)
{
	char path[64];

	if (access("/sys/fs/cgroup/cgroup.procs", F_OK))
		return -1;
	for (int d = 0; d < STRESS_DOMAINS; d++) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/upm_stress%d", d);
		if (mkdir(path, 0755) && errno != EEXIST)
			return -1;
	}
	if (write_str(UPM_SYSFS_DIR "/domain_policy", "cgroup") ||
	    write_long(UPM_SYSFS_DIR "/domain_cgroup_level", 1))
		return -1;
	return 0;
}

static void stress_domains_teardown(void)
{
	char path[64];

	write_str(UPM_SYSFS_DIR "/domain_policy", "uid");
	for (int d = 0; d < STRESS_DOMAINS; d++) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/upm_stress%d", d);
		rmdir(path);
	}
}


struct pfn_domain {
	uint64_t pfn;
	int domain;
};

static int cmp_pfn_domain(const void *a, const void *b)
{
	const struct pfn_domain *x = a, *y = b;

	return x->pfn < y->pfn ? -1 : x->pfn > y->pfn;
}

/* Frames that processes of two different domains map (the zero page aside). */
static long frames_across_domains(struct stress_report *r, uint64_t zpfn)
{
	size_t per = STRESS_THREADS * STRESS_PAGES, n = 0;
	struct pfn_domain *all = calloc(STRESS_PROCS * per, sizeof(*all));
	long crossing = 0;

	if (!all)
		return -1;
	for (int p = 0; p < STRESS_PROCS; p++)
		for (size_t i = 0; i < per; i++)
			all[n++] = (struct pfn_domain){ r[p].pfns[i], p % STRESS_DOMAINS };
	qsort(all, n, sizeof(*all), cmp_pfn_domain);
	for (size_t i = 1; i < n; i++)
		crossing += all[i].pfn && all[i].pfn != zpfn && all[i].pfn == all[i - 1].pfn &&
			    all[i].domain != all[i - 1].domain;
	free(all);
	return crossing;
}

/*
 * After the final advise, each common page should be one frame per merge domain, mapped by
 * every thread of every process of that domain. Returns how many mappings are on another
 * frame than the domain's most common one (each such page failed to join its twins), naming
 * the first.
 */
static long common_pages_apart(struct stress_report *r)
{
	long apart = 0;

	for (int d = 0; d < STRESS_DOMAINS; d++)
		for (size_t page = 0; page < STRESS_COMMON; page++) {
			uint64_t pfns[STRESS_PROCS * STRESS_THREADS], frame = 0;
			int n = 0, best = 0;

			for (int p = d; p < STRESS_PROCS; p += STRESS_DOMAINS)
				for (int t = 0; t < STRESS_THREADS; t++)
					pfns[n++] = r[p].pfns[t * STRESS_PAGES + page];
			for (int i = 0; i < n; i++) {
				int same = 0;

				for (int j = 0; j < n; j++)
					same += pfns[j] == pfns[i];
				if (pfns[i] && same > best) {
					best = same;
					frame = pfns[i];
				}
			}
			if (best < n && !apart)
				fprintf(stderr, "    common page %zu: %d of domain %d's %d mappings on "
					"frame %#llx\n", page, best, d, n, (unsigned long long)frame);
			apart += n - best;
		}
	return apart;
}

static enum result test_stress(void)
{
	const char *env_seed = getenv("UPM_STRESS_SEED");
	int secs = stress_seconds();
	uint64_t seed = env_seed && *env_seed ? strtoull(env_seed, NULL, 0) : (uint64_t)time(NULL);
	struct stress_report *r = map_shared(STRESS_PROCS * sizeof(*r));
	size_t total = STRESS_PROCS * STRESS_THREADS * STRESS_PAGES;
	uint64_t *all = calloc(total, sizeof(*all)), zpfn = zero_pfn();
	long shared = 0, sharing = 0, unshared, ksm_mappings = 0, ops = 0, bad = 0;
	pid_t pids[STRESS_PROCS];

	fprintf(stderr, "    seed %llu, %d s (UPM_STRESS_SEED, UPM_STRESS_SECS)\n",
		(unsigned long long)seed, secs);
	CHECK(r && all, "alloc");
	CHECK(stress_domains_setup() == 0, "two cgroups as merge domains");
	for (int p = 0; p < STRESS_PROCS; p++) {
		pids[p] = fork();
		if (pids[p] == 0) {
			char cg[32];

			snprintf(cg, sizeof(cg), "upm_stress%d", p % STRESS_DOMAINS);
			if (join_cgroup(cg))
				r[p].bad++;
			stress_process(&r[p], p, seed + p, secs);
		}
	}
	for (int p = 0; p < STRESS_PROCS; p++)
		while (!r[p].stopped)
			usleep(50 * 1000);
	const char *names[] = { "pages_merged", "pages_promoted", "pages_already_merged",
				"pages_skipped_pinned", "pages_skipped_busy", "pages_skipped_other",
				"pages_skipped_not_present", "pages_zero_merged" };
	long at_settle[ARRAY_SIZE(names)];

	/*
	 * NUMA balancing (two nodes here) migrates pages in the background; a page caught under
	 * migration is in pagemap's view but not in smaps'. Hold it off while counting.
	 */
	long numa_balancing = read_long("/proc/sys/kernel/numa_balancing");
	/*
	 * Proactive compaction migrates merged pages too: a page half way through
	 * remove_migration_ptes() has only some of its mappings back, and a sysfs read then
	 * counts only those. Hold it off as well, and read the counts until they hold still.
	 */
	long proactiveness = read_long("/proc/sys/vm/compaction_proactiveness");
	long migrated = key_value("/proc/vmstat", "pgmigrate_success");

	write_long("/proc/sys/kernel/numa_balancing", 0);
	write_long("/proc/sys/vm/compaction_proactiveness", 0);
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		at_settle[i] = counter(names[i]);
	for (int p = 0; p < STRESS_PROCS; p++)
		r[p].settle = 1;
	for (int p = 0; p < STRESS_PROCS; p++)
		while (!r[p].advised)
			usleep(50 * 1000);
	struct vmstat at_snapshot;

	vmstat_read(&at_snapshot);
	for (int p = 0; p < STRESS_PROCS; p++)
		r[p].snapshot = 1;
	for (int p = 0; p < STRESS_PROCS; p++)
		while (!r[p].ready)
			usleep(50 * 1000);
	/* Everyone is stopped: the counters must describe exactly what pagemap shows. */
	for (int p = 0; p < STRESS_PROCS; p++) {
		memcpy(all + p * STRESS_THREADS * STRESS_PAGES, r[p].pfns, sizeof(r[p].pfns));
		ops += r[p].ops;
		bad += r[p].bad;
		ksm_mappings += r[p].ksm_kb * 1024 / (long)page_size;
	}
	qsort(all, total, sizeof(*all), cmp_pfn);
	for (size_t i = 0, j; i < total; i = j) {
		for (j = i + 1; j < total && all[j] == all[i]; j++)
			;
		/* Once fork children are gone, only merged pages are mapped twice. */
		if (!all[i] || all[i] == zpfn || j - i == 1)
			continue;
		shared++;
		sharing += j - i - 1;
	}
	/* Every KSM mapping is one of a shared page's or an unshared page's only one. */
	unshared = ksm_mappings - shared - sharing;
	/*
	 * Pages the final advise could not merge, and said why: extra references, busy twins, or
	 * not present (kswapd balancing a node may swap pages out at any time; UPM, as ksmd,
	 * merges only present pages, and one swapped in afterwards is a private copy).
	 */
	long refused = 0;

	fprintf(stderr, "    final advise:");
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		long delta = counter(names[i]) - at_settle[i];

		fprintf(stderr, " %s +%ld", names[i] + 6, delta);
		if (!strcmp(names[i], "pages_skipped_pinned") || !strcmp(names[i], "pages_skipped_busy") ||
		    !strcmp(names[i], "pages_skipped_not_present"))
			refused += delta;
	}
	fprintf(stderr, "\n");
	long k_shared = -1, k_sharing = -1, k_unshared = -1, readings = 0;

	for (long last[3] = { -2, -2, -2 }; readings < 20; readings++, usleep(50 * 1000)) {
		k_shared = counter("pages_shared");
		k_sharing = counter("pages_sharing");
		k_unshared = counter("pages_unshared");
		if (k_shared == last[0] && k_sharing == last[1] && k_unshared == last[2])
			break;
		if (readings)
			fprintf(stderr, "    sysfs moved while everyone was parked: shared %ld sharing "
				"%ld unshared %ld, then %ld %ld %ld (%ld pages migrated so far)\n",
				last[0], last[1], last[2], k_shared, k_sharing, k_unshared,
				key_value("/proc/vmstat", "pgmigrate_success") - migrated);
		last[0] = k_shared, last[1] = k_sharing, last[2] = k_unshared;
	}
	/* The processes' KSM mappings again, now that the counts were read: did anything move? */
	long ksm_mappings_now = 0;

	for (int p = 0; p < STRESS_PROCS; p++) {
		char path[64];

		snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pids[p]);
		ksm_mappings_now += proc_kb(path, "KSM") * 1024 / (long)page_size;
	}
	if (ksm_mappings_now != ksm_mappings) {
		fprintf(stderr, "    KSM mappings moved after the snapshot: %ld, then %ld\n",
			ksm_mappings, ksm_mappings_now);
		vmstat_print_changes(&at_snapshot);
	}
	long crossing = frames_across_domains(r, zpfn), apart = common_pages_apart(r);
	/* Each domain: STRESS_COMMON frames, each mapped by all its threads. */
	long expected_sharing = STRESS_DOMAINS * STRESS_COMMON *
				(STRESS_PROCS / STRESS_DOMAINS * STRESS_THREADS - 1);

	if (numa_balancing >= 0)
		write_long("/proc/sys/kernel/numa_balancing", numa_balancing);
	if (proactiveness >= 0)
		write_long("/proc/sys/vm/compaction_proactiveness", proactiveness);
	for (int p = 0; p < STRESS_PROCS; p++)
		r[p].release = 1;
	for (int p = 0; p < STRESS_PROCS; p++)
		wait_exit(pids[p]);
	stress_domains_teardown();
	fprintf(stderr, "    %ld operations; pagemap and smaps: shared %ld sharing %ld unshared %ld\n",
		ops, shared, sharing, unshared);
	CHECK(crossing == 0, "%ld frames mapped in two merge domains", crossing);
	CHECK(bad == 0, "%ld failed operations or content mismatches", bad);
	CHECK(ops > 100, "only %ld operations", ops);
	CHECK(readings < 20, "sysfs counts never held still with everyone parked");
	CHECK(k_shared == shared && k_sharing == sharing && k_unshared == unshared,
	      "sysfs shared %ld sharing %ld unshared %ld", k_shared, k_sharing, k_unshared);
	CHECK(apart <= refused, "%ld mappings of common pages apart from their twins, %ld pages "
	      "refused by the final advise", apart, refused);
	CHECK(sharing >= expected_sharing - refused, "sharing %ld, at least %ld expected", sharing,
	      expected_sharing - refused);
	CHECK(wait_tree_empty() == 0, "tree empty after exit: %ld", counter("stable_nodes"));
	return PASS;
}

/* Its length, and the checks after it, for which five minutes are plenty. */
static int stress_timeout(void)
{
	return stress_seconds() + 300;
}

const struct test stress_tests[] = {
	{ "stress", test_stress, "random advise/unmerge/write/fork/mremap/mprotect, seeded",
	  stress_timeout },
};
const size_t stress_test_count = ARRAY_SIZE(stress_tests);
