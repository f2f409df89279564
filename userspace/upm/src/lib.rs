// SPDX-License-Identifier: GPL-2.0 OR MIT
//! UPM from userspace: advise memory of this process or of another one for synchronous
//! merging, undo it, and read what is shared.
//!
//! ```no_run
//! let weights = vec![0u8; 64 << 20];
//! if upm::is_supported() {
//!     upm::advise(upm::page_range(weights.as_ptr() as usize, weights.len()))?;
//! }
//! # Ok::<(), upm::Error>(())
//! ```

use std::{
    collections::BTreeMap,
    fs, io,
    ops::Range,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

include!(concat!(env!("OUT_DIR"), "/advice.rs"));

/// Where the module's counters and tunables live.
pub const SYSFS_DIR: &str = "/sys/kernel/mm/upm";

/// Where the cgroup v2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why a UPM call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel carries the UPM series but the module is not loaded (`EINVAL`).
    #[error("UPM module not loaded (insmod upm.ko)")]
    ModuleNotLoaded,
    /// The kernel does not carry the UPM series (`EINVAL`).
    #[error("kernel not patched for UPM (no upm_register_ops in /proc/kallsyms)")]
    KernelNotPatched,
    /// Bad arguments: unaligned or overflowing range (`EINVAL` with the module loaded).
    #[error("invalid range (unaligned or overflowing)")]
    InvalidRange,
    /// Part of the range is not mapped; the mapped parts were processed (`ENOMEM`).
    #[error("part of the range is not mapped (the mapped parts were processed)")]
    Unmapped,
    /// Not allowed: `CAP_SYS_NICE` or ptrace access to the target is missing.
    #[error("permission denied (needs CAP_SYS_NICE and ptrace access)")]
    PermissionDenied,
    /// Frame numbers and page flags are hidden without `CAP_SYS_ADMIN` (for [`scan_pages()`]).
    #[error(
        "frame numbers and page flags need CAP_SYS_ADMIN (/proc/PID/pagemap, /proc/kpageflags)"
    )]
    NeedsSysAdmin,
    /// No such tunable, or a value the module refuses (for [`set_tunable()`]).
    #[error("no such tunable, or a value it does not take")]
    InvalidTunable,
    /// The process does not exist (any more).
    #[error("no such process")]
    NoSuchProcess,
    /// Line `line` (from 1) of a configuration file is not `KEY=VALUE`, or names a tunable
    /// or value the module refuses (for [`apply_config()`]).
    #[error("configuration line {line}: not KEY=VALUE, or a tunable or value the module refuses")]
    InvalidConfig { line: usize },
    /// Input that is not what it must be (for upmctl: the OCI container state a hook reads).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Any other system error.
    #[error("{0}")]
    Os(io::Error),
}

/// Result of UPM calls.
pub type Result<T> = std::result::Result<T, Error>;

fn last_error() -> Error {
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) if !Path::new(SYSFS_DIR).exists() => why_unsupported(),
        Some(libc::EINVAL) => Error::InvalidRange,
        Some(libc::ENOMEM) => Error::Unmapped,
        Some(libc::EPERM) | Some(libc::EACCES) => Error::PermissionDenied,
        Some(libc::ESRCH) => Error::NoSuchProcess,
        _ => Error::Os(err),
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// The whole pages inside `[start, start + len)`.
pub fn page_range(start: usize, len: usize) -> Range<usize> {
    let page = page_size();
    let first = start.div_ceil(page) * page;
    let last = (start + len) / page * page;
    first..last.max(first)
}

/// Whether the kernel accepts the UPM advices: patched kernel and module loaded.
pub fn is_supported() -> bool {
    // SAFETY: A zero-length madvise touches no memory; it only validates the advice, which
    // the kernel accepts only while a UPM module is registered.
    let accepted = unsafe { libc::madvise(std::ptr::null_mut(), 0, MADV_UPM_MERGEABLE) == 0 };
    accepted && Path::new(SYSFS_DIR).exists()
}

/// Whether the running kernel carries the UPM series, module loaded or not: `None` if
/// `/proc/kallsyms` cannot be read.
pub fn kernel_is_patched() -> Option<bool> {
    fs::read_to_string("/proc/kallsyms")
        .ok()
        .map(|symbols| kallsyms_has_upm(&symbols))
}

fn kallsyms_has_upm(symbols: &str) -> bool {
    symbols
        .lines()
        .any(|line| line.ends_with(" upm_register_ops"))
}

/// Why UPM is not available (when [`is_supported()`] is false): no module, or no UPM kernel.
pub fn why_unsupported() -> Error {
    match kernel_is_patched() {
        Some(false) => Error::KernelNotPatched,
        _ => Error::ModuleNotLoaded,
    }
}

/// A UPM advice. Typed, so that no caller can send another advice by accident: with a plain
/// number, 4 (`MADV_DONTNEED`) would discard the target's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_UPM_MERGEABLE`: merge identical pages.
    Merge,
    /// `MADV_UPM_UNMERGEABLE`: give merged pages private copies again.
    Unmerge,
}

impl Advice {
    /// The advice number the kernel expects.
    pub fn value(self) -> i32 {
        match self {
            Advice::Merge => MADV_UPM_MERGEABLE,
            Advice::Unmerge => MADV_UPM_UNMERGEABLE,
        }
    }
}

fn madvise(range: Range<usize>, advice: Advice) -> Result<()> {
    // SAFETY: the UPM advices never change the contents of memory, so any range is safe; the
    // kernel validates it.
    let ret = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.len(),
            advice.value(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// Merges identical pages in `range` of this process (`MADV_UPM_MERGEABLE`).
pub fn advise(range: Range<usize>) -> Result<()> {
    madvise(range, Advice::Merge)
}

/// Gives the merged pages in `range` of this process private copies again.
pub fn unmerge(range: Range<usize>) -> Result<()> {
    madvise(range, Advice::Unmerge)
}

/// A process's private anonymous mappings (heap, anonymous mmaps) that are readable and
/// writable; stacks, vdso/vvar, guard pages and shared or file mappings are left out.
pub fn anonymous_ranges(pid: i32) -> Result<Vec<Range<usize>>> {
    Ok(mappings(pid)?
        .into_iter()
        .filter(Mapping::is_private_anonymous_rw)
        .map(|m| m.range)
        .collect())
}

/// One line of `/proc/PID/maps`.
struct Mapping {
    range: Range<usize>,
    /// `rwxp`-style permissions; the last letter is `p` (private) or `s` (shared).
    perms: String,
    inode: String,
    /// Path or pseudo-name (`[heap]`, `[stack]`...), empty for anonymous memory.
    name: String,
}

impl Mapping {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let (addresses, perms) = (fields.next()?, fields.next()?);
        let (_offset, _dev, inode) = (fields.next()?, fields.next()?, fields.next()?);
        let (start, end) = addresses.split_once('-')?;
        Some(Self {
            range: usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?,
            perms: perms.to_string(),
            inode: inode.to_string(),
            name: fields.collect::<Vec<_>>().join(" "),
        })
    }

    fn is_private(&self) -> bool {
        self.perms.ends_with('p')
    }

    /// Scanned by [`scan_pages()`]: see [`private_ranges()`].
    fn is_scanned(&self) -> bool {
        self.is_private() && !self.perms.starts_with("---") && self.name != "[vsyscall]"
    }

    /// Heap and anonymous mmaps, readable and writable: not stacks, vdso/vvar, guard pages,
    /// shared or file mappings.
    fn is_private_anonymous_rw(&self) -> bool {
        let eligible_name =
            self.name.is_empty() || self.name == "[heap]" || self.name.starts_with("[anon:");
        self.perms.starts_with("rw") && self.is_private() && self.inode == "0" && eligible_name
    }
}

fn mappings(pid: i32) -> Result<Vec<Mapping>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).map_err(proc_error)?;
    Ok(maps.lines().filter_map(Mapping::parse).collect())
}

/// Advises `ranges` (all private anonymous mappings when `None`) of process `pid` with
/// `process_madvise(2)`; returns the bytes advised. A named range that is partly unmapped
/// fails with [`Error::Unmapped`] after its mapped parts were processed, as madvise does.
pub fn advise_process(
    pid: i32,
    ranges: Option<Vec<Range<usize>>>,
    advice: Advice,
) -> Result<usize> {
    // Ranges read from the maps may vanish before they are advised; ranges the caller named
    // must be mapped, and madvise's ENOMEM reaches the caller.
    let from_maps = ranges.is_none();
    let ranges = match ranges {
        Some(r) => r,
        None => anonymous_ranges(pid)?,
    };
    // SAFETY: pidfd_open takes plain integers.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        return Err(last_error());
    }
    // SAFETY: `raw` is a descriptor just opened, owned by nothing else: closed on drop.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut done = 0;
    let mut result = Ok(());
    for range in &ranges {
        let iov = libc::iovec {
            iov_base: range.start as *mut libc::c_void,
            iov_len: range.len(),
        };
        // SAFETY: `iov` is one valid iovec; the kernel only reads it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd.as_raw_fd(),
                &iov,
                1,
                advice.value(),
                0,
            )
        };
        if ret < 0 {
            match last_error() {
                // A mapping that went away meanwhile is not an error for a whole-process advise.
                Error::Unmapped if from_maps => continue,
                e => {
                    result = Err(e);
                    break;
                }
            }
        }
        done += ret.max(0) as usize;
    }
    result.map(|()| done)
}

/// The module's numeric counters and tunables. Files that hold text (`domain_policy`) or that
/// the caller may not read (the root-only `domains`) are left out.
pub fn stats() -> Result<BTreeMap<String, u64>> {
    let dir = fs::read_dir(SYSFS_DIR).map_err(|_| why_unsupported())?;
    let mut stats = BTreeMap::new();
    for entry in dir {
        let entry = entry.map_err(Error::Os)?;
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Ok(v) = text.trim().parse() {
            stats.insert(entry.file_name().to_string_lossy().into_owned(), v);
        }
    }
    Ok(stats)
}

/// The processes of cgroup v2 directory `cgroup` (absolute, or relative to /sys/fs/cgroup)
/// and of its descendants, as in their `cgroup.procs` files.
pub fn cgroup_pids(cgroup: &Path) -> Result<Vec<i32>> {
    let dir = Path::new(CGROUP_ROOT).join(cgroup);
    let mut pids = Vec::new();
    let mut pending = vec![dir];
    while let Some(dir) = pending.pop() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).map_err(proc_error)?;
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        for entry in fs::read_dir(&dir).map_err(proc_error)? {
            let entry = entry.map_err(Error::Os)?;
            if entry.file_type().map_err(Error::Os)?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(pids)
}

/// The cgroup v2 directory of process `pid` (under /sys/fs/cgroup), as [`cgroup_pids()`] takes
/// it: the container a runtime started it in.
pub fn cgroup_of(pid: i32) -> Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(proc_error)?;
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| Error::InvalidInput(format!("process {pid} is in no cgroup v2")))?;
    Ok(Path::new(CGROUP_ROOT).join(path.trim().trim_start_matches('/')))
}

/// Sets tunable `name` (`run`, `use_zero_pages`, `domain_policy`...) to `value`.
pub fn set_tunable(name: &str, value: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::InvalidTunable);
    }
    if !Path::new(SYSFS_DIR).exists() {
        return Err(why_unsupported());
    }
    let path = Path::new(SYSFS_DIR).join(name);
    if !path.exists() {
        return Err(Error::InvalidTunable);
    }
    fs::write(&path, value).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => Error::InvalidTunable,
        Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied,
        _ => Error::Os(e),
    })
}

/// The `KEY=VALUE` settings of a tunables file such as `/etc/upm/upm.conf`, with their line
/// numbers. Blank lines and `#` comments are skipped; spaces around keys and values are not
/// significant.
pub fn parse_config(text: &str) -> Result<Vec<(usize, String, String)>> {
    let mut settings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or(Error::InvalidConfig { line: i + 1 })?;
        settings.push((i + 1, key.to_string(), value.to_string()));
    }
    Ok(settings)
}

/// Sets every tunable of a tunables file (see [`parse_config()`]), in file order. Nothing is
/// set when a line does not parse; a setting the module refuses stops there (the lines before
/// it stay set) and names its line. Returns how many tunables were set.
pub fn apply_config(text: &str) -> Result<usize> {
    let settings = parse_config(text)?;
    for (line, key, value) in &settings {
        set_tunable(key, value).map_err(|e| match e {
            Error::InvalidTunable => Error::InvalidConfig { line: *line },
            e => e,
        })?;
    }
    Ok(settings.len())
}

/// Cumulative counters, as opposed to gauges (what is merged now) and tunables: for metrics.
pub const CUMULATIVE_COUNTERS: &[&str] = &[
    "pages_scanned",
    "pages_merged",
    "pages_promoted",
    "pages_zero_merged",
    "pages_already_merged",
    "pages_skipped",
    "pages_skipped_not_present",
    "pages_skipped_vma",
    "pages_skipped_thp",
    "pages_skipped_pinned",
    "pages_skipped_busy",
    "pages_skipped_other",
    "hash_collisions",
    "stable_pages_freed",
    "madvise_calls",
    "unmerge_calls",
];

/// The counters in Prometheus' text exposition format, for node_exporter's textfile
/// collector: cumulative counters as `upm_NAME_total` (type counter), the rest as gauges.
pub fn prometheus_text(stats: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    for (name, value) in stats {
        let (metric, kind) = if CUMULATIVE_COUNTERS.contains(&name.as_str()) {
            (format!("upm_{name}_total"), "counter")
        } else {
            (format!("upm_{name}"), "gauge")
        };
        out += &format!("# HELP {metric} /sys/kernel/mm/upm/{name}\n");
        out += &format!("# TYPE {metric} {kind}\n{metric} {value}\n");
    }
    out
}

/// How much of a process's anonymous memory is merged, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessUsage {
    /// Resident anonymous memory, in KiB.
    pub anon_kib: u64,
    /// Of which mapped KSM pages (merged by UPM or KSM), in KiB.
    pub merged_kib: u64,
    /// Proportional share of anonymous memory (merged pages divided among sharers), in KiB.
    pub pss_anon_kib: u64,
}

/// Reads `/proc/PID/smaps_rollup`.
pub fn process_usage(pid: i32) -> Result<ProcessUsage> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).map_err(proc_error)?;
    let mut usage = ProcessUsage::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        match key {
            "Anonymous:" => usage.anon_kib = value,
            "KSM:" => usage.merged_kib = value,
            "Pss_Anon:" => usage.pss_anon_kib = value,
            _ => {}
        }
    }
    Ok(usage)
}

/// What a process's page tables and the kernel's page flags say about its private mappings.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageScan {
    /// Present pages in the private mappings that were scanned.
    pub present: u64,
    /// Of which KSM pages, merged by UPM (or by ksmd): `KPF_KSM` in `/proc/kpageflags`.
    pub merged: u64,
    /// The distinct frames behind `merged`.
    pub merged_frames: u64,
    /// Mappings of the shared zero page: merged all-zero pages, or pages only ever read.
    pub zero: u64,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;
const KPF_KSM: u64 = 1 << 21;
const KPF_ZERO_PAGE: u64 = 1 << 24;

/// Private mappings worth scanning: everything but shared and inaccessible (`---p`)
/// mappings, which hold no merged pages or are address-space reservations, and the
/// `[vsyscall]` page, which lies outside the user address space that pagemap covers.
fn private_ranges(pid: i32) -> Result<Vec<Range<usize>>> {
    Ok(mappings(pid)?
        .into_iter()
        .filter(Mapping::is_scanned)
        .map(|m| m.range)
        .collect())
}

fn proc_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::NoSuchProcess,
        io::ErrorKind::PermissionDenied => Error::PermissionDenied,
        _ => match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess,
            Some(libc::EPERM) => Error::PermissionDenied,
            _ => Error::Os(e),
        },
    }
}

/// Counts the merged pages of process `pid` from `/proc/PID/pagemap` and `/proc/kpageflags`.
///
/// Needs `CAP_SYS_ADMIN` (without it the kernel hides frame numbers). Kernels since 6.10
/// report `KPF_KSM` for every anonymous page unless they carry upstream commit 81401cebfc15;
/// the UPM kernel series backports it to 6.12.
pub fn scan_pages(pid: i32) -> Result<PageScan> {
    use std::{collections::HashSet, os::unix::fs::FileExt};

    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap")).map_err(proc_error)?;
    let kpageflags = fs::File::open("/proc/kpageflags").map_err(|e| match proc_error(e) {
        Error::PermissionDenied => Error::NeedsSysAdmin,
        e => e,
    })?;
    let page = page_size() as u64;
    let mut scan = PageScan::default();
    let mut frames = HashSet::new();
    let mut entries = vec![0u8; 8 * 512];
    for range in private_ranges(pid)? {
        let (mut vpn, end) = (range.start as u64 / page, range.end as u64 / page);
        while vpn < end {
            let n = (end - vpn).min(512) as usize;
            let buf = &mut entries[..8 * n];
            pagemap.read_exact_at(buf, vpn * 8).map_err(proc_error)?;
            for entry in buf.chunks_exact(8) {
                let entry = u64::from_ne_bytes(entry.try_into().unwrap());
                if entry & PM_PRESENT == 0 {
                    continue;
                }
                let pfn = entry & PM_PFN_MASK;
                if pfn == 0 {
                    // Present but no frame number: the kernel hid it from us.
                    return Err(Error::NeedsSysAdmin);
                }
                let mut flags = [0u8; 8];
                kpageflags
                    .read_exact_at(&mut flags, pfn * 8)
                    .map_err(proc_error)?;
                let flags = u64::from_ne_bytes(flags);
                scan.present += 1;
                if flags & KPF_KSM != 0 {
                    scan.merged += 1;
                    frames.insert(pfn);
                } else if flags & KPF_ZERO_PAGE != 0 {
                    scan.zero += 1;
                }
            }
            vpn += n as u64;
        }
    }
    scan.merged_frames = frames.len() as u64;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_comments_and_errors() {
        let text = "# UPM tunables\n\nsplit_thp = 0  # keep THPs whole\ndomain_policy=cgroup\n";
        let settings = parse_config(text).unwrap();
        assert_eq!(
            settings,
            vec![
                (3, "split_thp".to_string(), "0".to_string()),
                (4, "domain_policy".to_string(), "cgroup".to_string()),
            ]
        );
        assert!(matches!(
            parse_config("run=1\nrun\n"),
            Err(Error::InvalidConfig { line: 2 })
        ));
        assert!(matches!(
            parse_config("run=\n"),
            Err(Error::InvalidConfig { line: 1 })
        ));
        // Nothing is set when a line does not parse, so no module is needed to see this.
        assert!(matches!(
            apply_config("nonexistent_tunable=1\nbroken\n"),
            Err(Error::InvalidConfig { line: 2 })
        ));
    }

    #[test]
    fn prometheus_types_counters_and_gauges() {
        let stats = BTreeMap::from([("pages_merged".to_string(), 7), ("pages_sharing".into(), 3)]);
        let text = prometheus_text(&stats);
        assert!(text.contains("# TYPE upm_pages_merged_total counter\nupm_pages_merged_total 7\n"));
        assert!(text.contains("# TYPE upm_pages_sharing gauge\nupm_pages_sharing 3\n"));
    }

    #[test]
    fn tunable_names_stay_in_the_sysfs_directory() {
        for name in ["", "../ksm/run", ".hidden", "a/b"] {
            assert!(
                matches!(set_tunable(name, "1"), Err(Error::InvalidTunable)),
                "{name}"
            );
        }
    }

    fn parse_anonymous(line: &str) -> Option<Range<usize>> {
        Mapping::parse(line)
            .filter(Mapping::is_private_anonymous_rw)
            .map(|m| m.range)
    }

    #[test]
    fn parses_only_private_anonymous_rw_mappings() {
        assert_eq!(
            parse_anonymous("7f00-8000 rw-p 00000000 00:00 0 "),
            Some(0x7f00..0x8000)
        );
        assert_eq!(
            parse_anonymous("1000-2000 rw-p 00000000 00:00 0 [heap]"),
            Some(0x1000..0x2000)
        );
        assert_eq!(
            parse_anonymous("1000-2000 rw-p 00000000 00:00 0 [stack]"),
            None
        );
        assert_eq!(
            parse_anonymous("1000-2000 rw-s 00000000 00:01 5 /dev/zero"),
            None
        );
        assert_eq!(parse_anonymous("1000-2000 r--p 00000000 00:00 0 "), None);
        assert_eq!(
            parse_anonymous("1000-2000 rw-p 00001000 08:01 42 /usr/lib/x.so"),
            None
        );
    }

    #[test]
    fn scans_private_accessible_mappings() {
        let scanned = |line| Mapping::parse(line).is_some_and(|m| m.is_scanned());
        assert!(scanned("7f00-8000 rw-p 00000000 00:00 0 "));
        assert!(scanned("1000-2000 r--p 00001000 08:01 42 /usr/lib/x.so"));
        assert!(!scanned("1000-2000 ---p 00000000 00:00 0 "));
        assert!(!scanned("1000-2000 rw-s 00000000 00:01 5 /dev/zero"));
        assert!(!scanned(
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]"
        ));
    }

    #[test]
    fn finds_the_upm_hook_in_kallsyms() {
        let patched = "ffffffff81001000 T _stext\nffffffff812a4b30 T upm_register_ops\n";
        let ksymtab_only = "ffffffff82001000 r __ksymtab_upm_register_ops\n";
        assert!(kallsyms_has_upm(patched));
        assert!(!kallsyms_has_upm(ksymtab_only));
        assert!(!kallsyms_has_upm("ffffffff81001000 T _stext\n"));
    }

    #[test]
    fn page_range_keeps_whole_pages() {
        let p = page_size();
        assert_eq!(page_range(p + 1, 3 * p), 2 * p..4 * p);
        assert_eq!(page_range(p, 10), p..p);
    }

    #[test]
    fn advice_values_come_from_the_header() {
        assert_eq!((MADV_UPM_MERGEABLE, MADV_UPM_UNMERGEABLE), (104, 105));
    }

    #[test]
    fn advice_names_only_the_upm_advices() {
        assert_eq!(Advice::Merge.value(), MADV_UPM_MERGEABLE);
        assert_eq!(Advice::Unmerge.value(), MADV_UPM_UNMERGEABLE);
    }
}
