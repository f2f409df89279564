/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * UPM userspace interface: the one place that defines the advice values for C, C++ and
 * the repo's tests. Rust (upm crate) and Python (upm.py) read the values from here too;
 * tests check them against the kernel's exported uapi header.
 */
#ifndef UPM_USER_H
#define UPM_USER_H

#define UPM_MADV_MERGEABLE 104   /* MADV_UPM_MERGEABLE: merge identical pages now */
#define UPM_MADV_UNMERGEABLE 105 /* MADV_UPM_UNMERGEABLE: private copies again */

#define UPM_SYSFS_DIR "/sys/kernel/mm/upm"

#ifndef MADV_UPM_MERGEABLE
#define MADV_UPM_MERGEABLE UPM_MADV_MERGEABLE
#endif
#ifndef MADV_UPM_UNMERGEABLE
#define MADV_UPM_UNMERGEABLE UPM_MADV_UNMERGEABLE
#endif

#endif /* UPM_USER_H */
