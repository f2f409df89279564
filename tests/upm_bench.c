// SPDX-License-Identifier: GPL-2.0
/*
 * UPM against KSM, in the same VM and the same run: how long until two 64 MiB regions of
 * identical pages share their frames.
 *
 *   upm_bench [MiB]         (default 64)
 *
 * UPM: one madvise(MADV_UPM_MERGEABLE) per region; the time of the second call is the
 * merge (the first promotes its pages to stable pages). KSM: MADV_MERGEABLE on both regions,
 * ksmd unthrottled (pages_to_scan 10000, sleep_millisecs 0) and at its defaults (100 pages
 * per 20 ms); the time until pages_sharing reaches the expected count. Frames are verified
 * with pagemap in both cases.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../include/upm.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long ksm_read(const char *name)
{
	char path[128], buf[64] = "";
	int fd;

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0)
		buf[0] = 0;
	if (fd >= 0)
		close(fd);
	return strtol(buf, NULL, 10);
}

static int ksm_write(const char *name, long value)
{
	char path[128];

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	return write_long(path, value);
}

/* Seconds until KSM shares `pages` pages, or -1 after `limit` seconds. */
static double ksm_time(size_t pages, long to_scan, long sleep_ms, double limit)
{
	char *a = map_anon(pages), *b = map_anon(pages);
	double t0, t = -1;

	fill_pages(a, pages, 4242, 1);
	fill_pages(b, pages, 4242, 1);
	ksm_write("pages_to_scan", to_scan);
	ksm_write("sleep_millisecs", sleep_ms);
	madvise(a, pages * page_size, MADV_MERGEABLE);
	madvise(b, pages * page_size, MADV_MERGEABLE);
	t0 = now_s();
	ksm_write("run", 1);
	while (now_s() - t0 < limit) {
		if (ksm_read("pages_sharing") >= (long)pages) {
			t = now_s() - t0;
			break;
		}
		usleep(5 * 1000);
	}
	ksm_write("run", 0);
	if (t >= 0 && count_pfn_equal(a, b, pages) != pages)
		t = -2;
	ksm_write("run", 2); /* unmerge everything KSM merged */
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);
	ksm_write("run", 0);
	return t;
}

/* One write to every page, undone untimed; returns the time of the writes. */
static double write_pass(char *p, size_t pages)
{
	double t0 = now_s(), t;

	for (size_t i = 0; i < pages; i++)
		p[i * page_size] ^= 1;
	t = now_s() - t0;
	for (size_t i = 0; i < pages; i++)
		p[i * page_size] ^= 1;
	return t;
}

/*
 * Microseconds per MADV_UPM_MERGEABLE call of `bytes` each, over 4 MiB of unique, freshly
 * written pages: what a runtime pays for small advises, under the current domain policy.
 */
static double small_advise_us(size_t bytes)
{
	size_t pages = 1024, step = bytes / page_size, calls = pages / step;
	char *p = map_anon(pages);
	double t;

	if (!p)
		return -1;
	fill_pages(p, pages, 777 + bytes, 1);
	t = now_s();
	for (size_t i = 0; i < pages; i += step)
		if (advise(p + i * page_size, step))
			return -1;
	t = now_s() - t;
	munmap(p, pages * page_size);
	return t * 1e6 / calls;
}

/*
 * Seconds to advise `b` when `a`, advised already, has the same contents (`seed`): the pairing
 * call. Checks that every page merged, then unmaps both and waits for the index to empty;
 * -1 on any failure.
 */
static double time_second_advise(char *a, char *b, size_t pages, uint64_t seed)
{
	double t = now_s();

	if (advise(b, pages))
		return -1;
	t = now_s() - t;
	if (count_pfn_equal(a, b, pages) != pages || check_pages(b, pages, seed, 1) >= 0) {
		fprintf(stderr, "UPM did not merge every page (fresh_frame=%ld)\n",
			counter("fresh_frame"));
		return -1;
	}
	munmap(a, pages * page_size);
	munmap(b, pages * page_size);
	return wait_tree_empty() ? -1 : t;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	size_t pages = mib << 20 >> 12;
	char *a = map_anon(pages), *b = map_anon(pages);
	double t0, t_first, t_second, t_ksm_fast, t_ksm_default, t_write_advised, t_write_plain;

	if (!a || !b || !module_loaded() || ksm_read("run") != 0) {
		fprintf(stderr, "needs memory, upm.ko loaded and ksmd stopped\n");
		return 2;
	}
	fill_pages(a, pages, 4242, 1);
	fill_pages(b, pages, 4242, 1);
	t0 = now_s();
	if (advise(a, pages))
		return 1;
	t_first = now_s() - t0;
	/* What a runtime pays for advising memory with no twin: its next write to each page. */
	t_write_advised = write_pass(a, pages);
	t_write_plain = write_pass(b, pages);
	t_second = time_second_advise(a, b, pages, 4242);
	if (t_second < 0)
		return 1;

	/* The same pairing with fresh_frame=1: each merged page is copied to a new frame. */
	double t_fresh;

	a = map_anon(pages);
	b = map_anon(pages);
	if (!a || !b)
		return 2;
	fill_pages(a, pages, 4343, 1);
	fill_pages(b, pages, 4343, 1);
	set_tunable("fresh_frame", 1);
	t_fresh = advise(a, pages) ? -1 : time_second_advise(a, b, pages, 4343);
	set_tunable("fresh_frame", 0);
	if (t_fresh < 0)
		return 1;

	/* Small advises, and what each merge domain policy adds to a call. */
	static const char *const policies[] = { "uid", "global", "userns", "cgroup" };
	double small[ARRAY_SIZE(policies)][2];

	for (size_t i = 0; i < ARRAY_SIZE(policies); i++) {
		write_str(UPM_SYSFS_DIR "/domain_policy", policies[i]);
		small[i][0] = small_advise_us(4096);
		small[i][1] = small_advise_us(65536);
	}
	write_str(UPM_SYSFS_DIR "/domain_policy", "uid");
	if (wait_tree_empty())
		return 1;

	t_ksm_fast = ksm_time(pages, 10000, 0, 120);
	t_ksm_default = ksm_time(pages, 100, 20, 60);

	printf("merge of %zu MiB of duplicate pages (two regions of %zu pages):\n", mib, pages);
	printf("  UPM  madvise, first region (candidates only):    %8.3f s (%.0f MiB/s)\n",
	       t_first, mib / t_first);
	printf("  UPM  madvise, second region (pair and merge):    %8.3f s (%.0f MiB/s)\n",
	       t_second, mib / t_second);
	printf("  UPM  second region with fresh_frame=1:           %8.3f s (%.0f MiB/s, %+.0f%%)\n",
	       t_fresh, mib / t_fresh, 100 * (t_fresh - t_second) / t_second);
	printf("  first write to each page after the first advise: %8.3f s (unadvised: %.3f s)\n",
	       t_write_advised, t_write_plain);
	printf("  KSM  unthrottled (10000 pages, 0 ms):            %8.3f s (%.0f MiB/s)%s\n",
	       t_ksm_fast, t_ksm_fast > 0 ? 2 * mib / t_ksm_fast : 0,
	       t_ksm_fast < 0 ? " (did not finish)" : "");
	if (t_ksm_default < 0)
		printf("  KSM  defaults (100 pages / 20 ms):               not done after 60 s\n");
	else
		printf("  KSM  defaults (100 pages / 20 ms):               %8.3f s\n", t_ksm_default);
	if (t_ksm_fast > 0)
		printf("  UPM (both calls) is %.1fx faster than unthrottled KSM\n",
		       t_ksm_fast / (t_first + t_second));
	printf("small advises of unique pages, per call (domain policy):\n");
	for (size_t i = 0; i < ARRAY_SIZE(policies); i++)
		printf("  %-6s  4 KiB: %7.1f us   64 KiB: %7.1f us\n", policies[i], small[i][0],
		       small[i][1]);
	return 0;
}
