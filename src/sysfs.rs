// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/mm/upm/`: counters and tunables.
//!
//! The files and their meaning are documented in `Documentation/ABI/testing/sysfs-kernel-mm-upm`
//! (kernel patch) and in the README. Entry counts are kept exact as entries come and go; how
//! often merged pages are mapped is counted by the sweep, or on read for `CAP_SYS_ADMIN`;
//! activity counters are cumulative since the module was loaded.

use crate::{
    advise::Upm,
    domain::POLICIES,
    ffi::{
        sysfs::{Access, SysfsBuf, SysfsFile, SysfsHandler},
        task, upm,
    },
    stats::{Skip, STATS, TUNABLES},
};
use core::{
    fmt::Write,
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{c_str, prelude::*};

macro_rules! files {
    ($($name:ident $(= $access:ident)?),* $(,)?) => {
        /// The files, in the order of [`FILES`].
        #[derive(Clone, Copy)]
        #[expect(non_camel_case_types)]
        enum File { $($name),* }

        const ALL: &[File] = &[$(File::$name),*];

        const FILES: &[SysfsFile] = &[$(SysfsFile {
            name: c_str!(stringify!($name)),
            access: files!(@a $($access)?),
        }),*];
    };
    (@a) => { Access::Read };
    (@a $a:ident) => { Access::$a };
}

files! {
    pages_shared,
    pages_sharing,
    pages_unshared,
    stable_nodes,
    candidates,
    zero_pages,
    pages_scanned,
    pages_merged,
    pages_promoted,
    pages_zero_merged,
    pages_already_merged,
    pages_skipped,
    pages_skipped_not_present,
    pages_skipped_vma,
    pages_skipped_thp,
    pages_skipped_pinned,
    pages_skipped_busy,
    pages_skipped_other,
    hash_collisions,
    stable_pages_freed,
    sweep_passes,
    madvise_calls,
    unmerge_calls,
    domains = RootRead,
    run = ReadWrite,
    use_zero_pages = ReadWrite,
    split_thp = ReadWrite,
    sweep_millisecs = ReadWrite,
    fresh_frame = ReadWrite,
    domain_policy = ReadWrite,
    domain_cgroup_level = ReadWrite,
    domain_groups = RootReadWrite,
}

fn parse_bool(input: &str) -> Result<bool> {
    match input {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(EINVAL),
    }
}

fn store_bool(flag: &AtomicBool, input: &str) -> Result {
    flag.store(parse_bool(input)?, Ordering::Relaxed);
    Ok(())
}

impl SysfsHandler for Upm {
    const FILES: &'static [SysfsFile] = FILES;

    fn show(&self, index: usize, out: &mut SysfsBuf<'_>) -> Result {
        let file = *ALL.get(index).ok_or(EINVAL)?;
        if let File::domains = file {
            return self.show_domains(out);
        }
        if let File::domain_groups = file {
            return self.groups.show(out);
        }
        if let File::domain_policy = file {
            // All policies, the current one in brackets, as /sys/kernel/mm/transparent_hugepage.
            let current = TUNABLES.domain_policy.load(Ordering::Relaxed) as usize;
            for (i, (name, _)) in POLICIES.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                if i == current {
                    write!(out, "{sep}[{name}]")
                } else {
                    write!(out, "{sep}{name}")
                }
                .map_err(|_| EINVAL)?;
            }
            return writeln!(out).map_err(|_| EINVAL);
        }
        // An exact count walks the whole index under its lock: only for privileged readers.
        // Everyone else gets the mappings as of the last sweep pass.
        let counts = || {
            if task::is_admin() {
                self.index.counts()
            } else {
                self.index.cached_counts()
            }
        };
        let value: u64 = match file {
            File::pages_shared => counts().shared,
            File::pages_sharing => counts().sharing,
            File::pages_unshared => counts().unshared,
            File::stable_nodes => self.index.cached_counts().nodes,
            File::candidates => self.index.cached_counts().candidates,
            File::zero_pages => upm::zero_pages_mapped(),
            File::pages_scanned => STATS.pages_scanned.get(),
            File::pages_merged => STATS.pages_merged.get(),
            File::pages_promoted => STATS.pages_promoted.get(),
            File::pages_zero_merged => STATS.pages_zero_merged.get(),
            File::pages_already_merged => STATS.pages_already_merged.get(),
            File::pages_skipped => STATS.skipped_total(),
            File::pages_skipped_not_present => STATS.skipped(Skip::NotPresent),
            File::pages_skipped_vma => STATS.skipped(Skip::Vma),
            File::pages_skipped_thp => STATS.skipped(Skip::Large),
            File::pages_skipped_pinned => STATS.skipped(Skip::Pinned),
            File::pages_skipped_busy => STATS.skipped(Skip::Busy),
            File::pages_skipped_other => STATS.skipped(Skip::Other),
            File::hash_collisions => STATS.hash_collisions.get(),
            File::stable_pages_freed => STATS.stable_pages_freed.get(),
            File::sweep_passes => STATS.sweep_passes.get(),
            File::madvise_calls => STATS.madvise_calls.get(),
            File::unmerge_calls => STATS.unmerge_calls.get(),
            File::run => TUNABLES.run.load(Ordering::Relaxed).into(),
            File::use_zero_pages => TUNABLES.use_zero_pages.load(Ordering::Relaxed).into(),
            File::split_thp => TUNABLES.split_thp.load(Ordering::Relaxed).into(),
            File::fresh_frame => TUNABLES.fresh_frame.load(Ordering::Relaxed).into(),
            File::sweep_millisecs => TUNABLES.sweep_millisecs.load(Ordering::Relaxed).into(),
            File::domain_cgroup_level => {
                TUNABLES.domain_cgroup_level.load(Ordering::Relaxed).into()
            }
            File::domain_policy | File::domains | File::domain_groups => return Err(EINVAL),
        };
        writeln!(out, "{value}").map_err(|_| EINVAL)
    }

    fn store(&self, index: usize, input: &str) -> Result {
        match *ALL.get(index).ok_or(EINVAL)? {
            File::domain_groups => self.groups.store(input),
            file => store_tunable(file, input),
        }
    }
}

/// Sets the tunable `name` (a file that root writes) from its text: a module parameter given
/// at load time, checked as a write to its file is.
///
/// # Errors
///
/// `EINVAL` for a name that is no tunable or a value its file refuses.
pub(crate) fn set_tunable(name: &str, input: &str) -> Result {
    let index = FILES
        .iter()
        .position(|f| f.access == Access::ReadWrite && f.name.to_str() == Ok(name))
        .ok_or(EINVAL)?;
    store_tunable(ALL[index], input)
}

/// Stores a tunable from the text written to its file; counters cannot be written.
fn store_tunable(file: File, input: &str) -> Result {
    match file {
        File::run => store_bool(&TUNABLES.run, input),
        File::use_zero_pages => store_bool(&TUNABLES.use_zero_pages, input),
        File::split_thp => store_bool(&TUNABLES.split_thp, input),
        File::fresh_frame => store_bool(&TUNABLES.fresh_frame, input),
        File::sweep_millisecs => {
            let ms: u32 = input.parse().map_err(|_| EINVAL)?;
            // The sweep re-arms itself with this period: keep it sane.
            if !(10..=60_000).contains(&ms) {
                return Err(EINVAL);
            }
            TUNABLES.sweep_millisecs.store(ms, Ordering::Relaxed);
            Ok(())
        }
        // Takes effect for the next advice. Entries and merged pages of the old policy keep
        // their domain tags, which no tag of the new policy equals: nothing merges across
        // the old boundaries, and they age out as their pages change or go.
        File::domain_policy => {
            let policy = POLICIES
                .iter()
                .position(|(name, _)| *name == input)
                .ok_or(EINVAL)?;
            TUNABLES
                .domain_policy
                .store(policy as u32, Ordering::Relaxed);
            Ok(())
        }
        File::domain_cgroup_level => {
            let level: u32 = input.parse().map_err(|_| EINVAL)?;
            // cgroup v2 nests at most a few hundred levels deep in practice.
            if level > 255 {
                return Err(EINVAL);
            }
            TUNABLES.domain_cgroup_level.store(level, Ordering::Relaxed);
            Ok(())
        }
        _ => Err(EPERM),
    }
}

impl Upm {
    /// `domains`: one line per merge domain that has entries, root only (it names other
    /// tenants' domains). Domains that do not fit the page are left out.
    fn show_domains(&self, out: &mut SysfsBuf<'_>) -> Result {
        writeln!(
            out,
            "domain pages_shared pages_sharing pages_unshared stable_nodes candidates"
        )
        .map_err(|_| EINVAL)?;
        self.index.domain_counts(|domain, c| {
            // A line is well under this; never leave a partial one.
            if out.remaining() < 128 {
                return false;
            }
            let _ = writeln!(
                out,
                "{domain} {} {} {} {} {}",
                c.shared, c.sharing, c.unshared, c.nodes, c.candidates
            );
            true
        });
        Ok(())
    }
}
