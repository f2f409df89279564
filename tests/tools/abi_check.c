// SPDX-License-Identifier: GPL-2.0
/* Fails to build, or fails at run time, if include/upm.h disagrees with the kernel's uapi. */
#include <linux/mman.h> /* from the patched kernel's headers_install */
#include <stdio.h>

#define UPM_NO_INLINE_HELPERS /* only the values: no libc headers beside the uapi ones */
#include "../include/upm.h"

_Static_assert(MADV_UPM_MERGEABLE == UPM_MADV_MERGEABLE, "MADV_UPM_MERGEABLE");
_Static_assert(MADV_UPM_UNMERGEABLE == UPM_MADV_UNMERGEABLE, "MADV_UPM_UNMERGEABLE");

int main(void)
{
	printf("abi: MADV_UPM_MERGEABLE=%d MADV_UPM_UNMERGEABLE=%d match the kernel uapi\n",
	       MADV_UPM_MERGEABLE, MADV_UPM_UNMERGEABLE);
	return 0;
}
