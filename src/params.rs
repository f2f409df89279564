// SPDX-License-Identifier: GPL-2.0

//! Module parameters: every tunable of `/sys/kernel/mm/upm/` set at load time
//! (`insmod upm.ko domain_policy=cgroup`, or `options upm ...` in modprobe.d), so that the
//! module merges under the intended policy from its first advice, with no window between the
//! load and a later write to sysfs. Each value is checked as a write to its file is; a refused
//! one fails the load with that errno (`EINVAL`).

use crate::{
    ffi::param::{module_info, module_params, ParamHandler},
    sysfs,
};
use kernel::prelude::*;

/// The module's parameters, stored by the code that stores sysfs writes.
struct Tunables;

impl ParamHandler for Tunables {
    fn set(name: &str, value: &str) -> Result {
        sysfs::set_tunable(name, value)
    }
}

module_params! {
    Tunables;
    run: "merge on MADV_UPM_MERGEABLE (1, the default) or accept it and merge nothing (0)",
    use_zero_pages: "replace all-zero pages by the shared zero page (0 or 1, default 1)",
    split_thp: "split a huge page whose pages have twins (0 or 1, default 1)",
    sweep_millisecs: "period of the orphan sweep, 10 to 60000 ms (default 1000)",
    fresh_frame: "a new merged page is a fresh copy, not the adviser's frame (0 or 1, default 0)",
    domain_policy: "what merge domains are named after: global, uid (default), userns, cgroup, group",
    domain_cgroup_level: "for domain_policy=cgroup, the depth of the naming ancestor (default 1)",
}

// The release this module belongs to (CHANGELOG.md): `modinfo upm`, /sys/module/upm/version.
module_info!(version, "0.1.0");
