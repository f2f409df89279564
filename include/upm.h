/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * UPM userspace interface: the one place that defines the advice values for C, C++ and
 * the repo's tests. Rust (upm crate) and Python (upm.py) read the values from here too;
 * tests check them against the kernel's exported uapi header.
 */
#ifndef UPM_USER_H
#define UPM_USER_H

/*
 * Provisional: upstream has assigned no numbers to these advices. They are the first free
 * ones after MADV_SOFT_OFFLINE (101) and 6.13's MADV_GUARD_INSTALL/REMOVE (102, 103), and
 * change if upstream takes them first; CHANGELOG.md says which releases use which.
 */
#define UPM_MADV_MERGEABLE 104   /* MADV_UPM_MERGEABLE: merge identical pages now */
#define UPM_MADV_UNMERGEABLE 105 /* MADV_UPM_UNMERGEABLE: private copies again */

#define UPM_SYSFS_DIR "/sys/kernel/mm/upm"

#ifndef MADV_UPM_MERGEABLE
#define MADV_UPM_MERGEABLE UPM_MADV_MERGEABLE
#endif
#ifndef MADV_UPM_UNMERGEABLE
#define MADV_UPM_UNMERGEABLE UPM_MADV_UNMERGEABLE
#endif

#if !defined(__KERNEL__) && !defined(UPM_NO_INLINE_HELPERS)
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>

/* Non-zero if the kernel has the UPM hook and the module is loaded. */
static inline int upm_is_supported(void)
{
	/* A zero-length call only validates the advice. */
	return madvise(NULL, 0, UPM_MADV_MERGEABLE) == 0 && access(UPM_SYSFS_DIR, F_OK) == 0;
}

/* Merge identical pages in [addr, addr + len) now; 0 or -1 with errno (see madvise(2)). */
static inline int upm_advise(void *addr, size_t len)
{
	return madvise(addr, len, UPM_MADV_MERGEABLE);
}

/* Give merged pages in [addr, addr + len) private copies again. */
static inline int upm_unmerge(void *addr, size_t len)
{
	return madvise(addr, len, UPM_MADV_UNMERGEABLE);
}
#endif

#endif /* UPM_USER_H */
