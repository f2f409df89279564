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
    fs,
    io::{self, Write},
    ops::Range,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use procfs::{
    process::{MMPermissions, MMapPath, MemoryMap, MemoryPageFlags, PageInfo, Pfn, Process},
    KPageFlags, PhysicalPageFlags, ProcError,
};

include!(concat!(env!("OUT_DIR"), "/advice.rs"));

/// Where the module's counters and tunables live.
pub const SYSFS_DIR: &str = "/sys/kernel/mm/upm";

/// Where the cgroup v2 hierarchy is usually mounted; [`cgroup_root()`] tells where it is.
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
    /// No such cgroup v2 directory (for [`cgroup_pids()`]).
    #[error("no such cgroup: {}", .0.display())]
    NoSuchCgroup(PathBuf),
    /// No cgroup v2 hierarchy is mounted (none in `/proc/self/mountinfo`).
    #[error("no cgroup v2 hierarchy is mounted")]
    NoCgroup2,
    /// The kernel ran out of memory for the work (`ENOMEM` while the whole range is mapped):
    /// unmerging needs a private copy of every merged page. `done` bytes of the ranges were
    /// processed, `left` were not, or only in part.
    #[error("out of memory: {} KiB not done, or only in part ({} KiB done)", .left / 1024, .done / 1024)]
    OutOfMemory { done: usize, left: usize },
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
    ranges_where(&process(pid)?, is_private_anonymous_rw)
}

/// Heap and anonymous mmaps (named ones too), readable and writable: not stacks,
/// vdso/vvar, guard pages, shared or file mappings.
fn is_private_anonymous_rw(map: &MemoryMap) -> bool {
    let eligible_name = match &map.pathname {
        MMapPath::Anonymous | MMapPath::Heap => true,
        MMapPath::Other(name) => name.starts_with("anon:"),
        _ => false,
    };
    map.perms
        .contains(MMPermissions::READ | MMPermissions::WRITE | MMPermissions::PRIVATE)
        && map.inode == 0
        && eligible_name
}

/// Scanned by [`scan_pages()`]: private mappings but inaccessible (`---p`) ones, which are
/// address-space reservations, and the `[vsyscall]` page, which lies outside the user
/// address space that pagemap covers. Shared mappings hold no merged pages.
fn is_scanned(map: &MemoryMap) -> bool {
    let accessible = MMPermissions::READ | MMPermissions::WRITE | MMPermissions::EXECUTE;
    map.perms.contains(MMPermissions::PRIVATE)
        && map.perms.intersects(accessible)
        && map.pathname != MMapPath::Vsyscall
}

fn address_range(map: &MemoryMap) -> Range<usize> {
    map.address.0 as usize..map.address.1 as usize
}

/// `/proc/PID` of process `pid`, opened once for the files read from it.
fn process(pid: i32) -> Result<Process> {
    Process::new(pid).map_err(procfs_error)
}

/// The ranges of the process's mappings that `keep` accepts, from `/proc/PID/maps`.
fn ranges_where(process: &Process, keep: fn(&MemoryMap) -> bool) -> Result<Vec<Range<usize>>> {
    let maps = process.maps().map_err(procfs_error)?;
    Ok(maps.iter().filter(|m| keep(m)).map(address_range).collect())
}

/// Advises `ranges` (all private anonymous mappings when `None`) of process `pid` with
/// `process_madvise(2)`; returns the bytes advised. A named range that is partly unmapped
/// fails with [`Error::Unmapped`] after its mapped parts were processed, as madvise does; a
/// range the kernel had no memory for (unmerging makes private copies) fails with
/// [`Error::OutOfMemory`], saying how much was done. Both come as `ENOMEM`: the process's
/// maps tell them apart.
pub fn advise_process(
    pid: i32,
    ranges: Option<Vec<Range<usize>>>,
    advice: Advice,
) -> Result<usize> {
    let target = process(pid)?;
    // Ranges read from the maps may vanish before they are advised; ranges the caller named
    // must be mapped, and madvise's ENOMEM reaches the caller.
    let from_maps = ranges.is_none();
    let ranges = match ranges {
        Some(r) => r,
        None => ranges_where(&target, is_private_anonymous_rw)?,
    };
    // SAFETY: pidfd_open takes plain integers.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        return Err(last_error());
    }
    // SAFETY: `raw` is a descriptor just opened, owned by nothing else: closed on drop.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut done = 0;
    for (i, range) in ranges.iter().enumerate() {
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
        if ret >= 0 {
            done += ret as usize;
            continue;
        }
        match last_error() {
            Error::Unmapped if is_mapped(&target, range)? => {
                let left = ranges[i..].iter().map(|r| r.len()).sum();
                return Err(Error::OutOfMemory { done, left });
            }
            // A mapping that went away meanwhile is not an error for a whole-process advise.
            Error::Unmapped if from_maps => continue,
            e => return Err(e),
        }
    }
    Ok(done)
}

/// Whether every page of `range` is mapped in the process, from its `/proc/PID/maps`.
fn is_mapped(process: &Process, range: &Range<usize>) -> Result<bool> {
    let maps = process.maps().map_err(procfs_error)?;
    Ok(covers(maps.iter().map(address_range), range))
}

/// Whether `mapped` (sorted, as in a maps file) covers `range` without a gap.
fn covers(mapped: impl Iterator<Item = Range<usize>>, range: &Range<usize>) -> bool {
    let mut next = range.start;
    for m in mapped {
        if m.start > next {
            break;
        }
        next = next.max(m.end);
        if next >= range.end {
            return true;
        }
    }
    next >= range.end
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

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`: a `cgroup2`
/// mount of the hierarchy's root, else the first `cgroup2` mount ([`CGROUP_ROOT`] on most
/// systems, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(Error::Os)?;
    cgroup2_mount(&mountinfo).ok_or(Error::NoCgroup2)
}

fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    // "36 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw": the root within the
    // filesystem and the mount point are fields 4 and 5, the type follows " - ".
    let mounts: Vec<(&str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split_whitespace().skip(3);
            Some((
                fields.next()?,
                PathBuf::from(unescape_mountinfo(fields.next()?)),
            ))
        })
        .collect();
    let root = mounts
        .iter()
        .position(|(root, _)| *root == "/")
        .unwrap_or(0);
    mounts.into_iter().nth(root).map(|(_, path)| path)
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The processes of cgroup v2 directory `cgroup` (absolute, or relative to the hierarchy's
/// mount point, see [`cgroup_root()`]) and of its descendants, as in their `cgroup.procs`
/// files. A descendant removed during the walk is skipped.
pub fn cgroup_pids(cgroup: &Path) -> Result<Vec<i32>> {
    let top = cgroup_root()?.join(cgroup);
    if !top.join("cgroup.procs").is_file() {
        return Err(Error::NoSuchCgroup(top));
    }
    let mut pids = Vec::new();
    let mut pending = vec![top.clone()];
    while let Some(dir) = pending.pop() {
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound && dir != top;
        let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(procs) => procs,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(cgroup_error(e, &dir)),
        };
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(cgroup_error(e, &dir)),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Ok(pids)
}

fn cgroup_error(e: io::Error, dir: &Path) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::NoSuchCgroup(dir.to_path_buf()),
        io::ErrorKind::PermissionDenied => Error::PermissionDenied,
        _ => Error::Os(e),
    }
}

/// The cgroup v2 directory of process `pid` (under [`cgroup_root()`]), as [`cgroup_pids()`]
/// takes it: the container a runtime started it in.
pub fn cgroup_of(pid: i32) -> Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(proc_error)?;
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| Error::InvalidInput(format!("process {pid} is in no cgroup v2")))?;
    Ok(cgroup_root()?.join(path.trim().trim_start_matches('/')))
}

/// The merge-domain policy in force (`uid`, `cgroup`...), the bracketed one of the module's
/// `domain_policy` file.
pub fn domain_policy() -> Result<String> {
    let text = fs::read_to_string(Path::new(SYSFS_DIR).join("domain_policy"))
        .map_err(|_| why_unsupported())?;
    bracketed(&text)
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidInput(format!("domain_policy: {}", text.trim())))
}

fn bracketed(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

/// One merge domain of the module's `domains` file (root only): what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// As the module names it: `uid:1000`, `cgroup:2:1234` (level and cgroup id),
    /// `userns:4026531837`, `global:0`.
    pub name: String,
    /// What the name stands for, where it can be found: a user name, a cgroup directory.
    pub resolved: Option<String>,
    pub pages_shared: u64,
    pub pages_sharing: u64,
    pub pages_unshared: u64,
    pub stable_nodes: u64,
    pub candidates: u64,
}

/// The merge domains that hold pages, from the module's `domains` file (needs root), with
/// cgroup ids resolved to directories under [`cgroup_root()`] and uids to user names.
pub fn domains() -> Result<Vec<Domain>> {
    let text =
        fs::read_to_string(Path::new(SYSFS_DIR).join("domains")).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => Error::PermissionDenied,
            _ => why_unsupported(),
        })?;
    let mut domains = parse_domains(&text)?;
    let cgroups = cgroup_root()
        .map(|root| cgroup_dirs_by_id(&root))
        .unwrap_or_default();
    let users = fs::read_to_string("/etc/passwd").unwrap_or_default();
    for d in &mut domains {
        d.resolved = match d.name.split(':').collect::<Vec<_>>()[..] {
            ["cgroup", _, id] | ["group", "cgroup", id] => id
                .parse()
                .ok()
                .and_then(|id: u64| cgroups.get(&id))
                .map(|p| p.display().to_string()),
            ["uid", uid] => users
                .lines()
                .find(|l| l.split(':').nth(2) == Some(uid))
                .and_then(|l| l.split(':').next())
                .map(str::to_string),
            _ => None,
        };
    }
    Ok(domains)
}

fn parse_domains(text: &str) -> Result<Vec<Domain>> {
    let bad = |line: &str| Error::InvalidInput(format!("domains: {line}"));
    text.lines()
        .skip(1) // the header
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next().ok_or_else(|| bad(line))?.to_string();
            let mut n = || -> Result<u64> {
                f.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad(line))
            };
            Ok(Domain {
                name,
                resolved: None,
                pages_shared: n()?,
                pages_sharing: n()?,
                pages_unshared: n()?,
                stable_nodes: n()?,
                candidates: n()?,
            })
        })
        .collect()
}

/// Every directory of the cgroup v2 hierarchy at `root`, by cgroup id (the inode number, as
/// the kernel's cgroup_id() gives it, in the bits the module keeps of it).
fn cgroup_dirs_by_id(root: &Path) -> BTreeMap<u64, PathBuf> {
    use std::os::unix::fs::MetadataExt;
    const ID_BITS: u32 = 52;
    let mut dirs = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(meta) = fs::metadata(&dir) {
            dirs.insert(meta.ino() & ((1 << ID_BITS) - 1), dir.clone());
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    dirs
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
    "sweep_passes",
    "madvise_calls",
    "unmerge_calls",
];

/// The prefix of the per-reason skip counters: one metric with a `reason` label.
const SKIPPED_PREFIX: &str = "pages_skipped_";

/// The counters in Prometheus' text exposition format, for node_exporter's textfile
/// collector, as exporters write them: `upm_up 1`; cumulative counters as `upm_NAME_total`
/// (type counter), the skip counters as one `upm_pages_skipped_total{reason="..."}` (their
/// sum, `pages_skipped`, is left to the query); the rest as gauges, and the memory merging
/// saves now in bytes (`upm_saved_bytes`: KSM's `pages_sharing` times the page size).
pub fn prometheus_text(stats: &BTreeMap<String, u64>) -> String {
    let mut out = prometheus_up(true);
    let skipped: Vec<_> = stats
        .iter()
        .filter_map(|(name, value)| Some((name.strip_prefix(SKIPPED_PREFIX)?, value)))
        .collect();
    if !skipped.is_empty() {
        out += "# HELP upm_pages_skipped_total /sys/kernel/mm/upm/pages_skipped_REASON\n\
                # TYPE upm_pages_skipped_total counter\n";
        for (reason, value) in skipped {
            out += &format!("upm_pages_skipped_total{{reason=\"{reason}\"}} {value}\n");
        }
    }
    for (name, value) in stats {
        if name.starts_with(SKIPPED_PREFIX) || name == "pages_skipped" {
            continue;
        }
        let (metric, kind) = if CUMULATIVE_COUNTERS.contains(&name.as_str()) {
            (format!("upm_{name}_total"), "counter")
        } else {
            (format!("upm_{name}"), "gauge")
        };
        out += &format!("# HELP {metric} /sys/kernel/mm/upm/{name}\n");
        out += &format!("# TYPE {metric} {kind}\n{metric} {value}\n");
    }
    if let Some(sharing) = stats.get("pages_sharing") {
        out += &format!(
            "# HELP upm_saved_bytes Memory merging saves now: pages_sharing times the page size\n\
             # TYPE upm_saved_bytes gauge\n\
             upm_saved_bytes {}\n",
            sharing * page_size() as u64
        );
    }
    out
}

/// `upm_up`: 1 when the module's counters could be read, 0 when not (the module is not
/// loaded, the kernel is not patched), so that a textfile still says which.
pub fn prometheus_up(up: bool) -> String {
    format!(
        "# HELP upm_up Whether the UPM module's counters could be read\n\
         # TYPE upm_up gauge\n\
         upm_up {}\n",
        u8::from(up)
    )
}

/// The merge-domain policy as a Prometheus info metric, to follow [`prometheus_text()`].
pub fn prometheus_policy(policy: &str) -> String {
    format!(
        "# HELP upm_domain_policy_info /sys/kernel/mm/upm/domain_policy\n\
         # TYPE upm_domain_policy_info gauge\n\
         upm_domain_policy_info{{policy=\"{policy}\"}} 1\n"
    )
}

/// Per merge domain (root reads them: they name other tenants), to follow
/// [`prometheus_text()`]: what each domain shares and saves, labelled with the module's name
/// of the domain and what it resolves to (a cgroup directory, a user name).
pub fn prometheus_domains(domains: &[Domain]) -> String {
    // Label values escape backslash, double quote and newline (the text format's rule).
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    type Family = (&'static str, &'static str, fn(&Domain) -> u64);
    let families: [Family; 3] = [
        (
            "upm_domain_pages_sharing",
            "Mappings that share a merged page, per merge domain",
            |d| d.pages_sharing,
        ),
        (
            "upm_domain_saved_bytes",
            "Memory merging saves per merge domain: its pages_sharing times the page size",
            |d| d.pages_sharing * page_size() as u64,
        ),
        (
            "upm_domain_candidates",
            "Advised pages waiting for a twin, per merge domain",
            |d| d.candidates,
        ),
    ];
    let mut out = String::new();
    if domains.is_empty() {
        return out;
    }
    for (metric, help, value) in families {
        out += &format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n");
        for d in domains {
            out += &format!(
                "{metric}{{domain=\"{}\",name=\"{}\"}} {}\n",
                escape(&d.name),
                escape(d.resolved.as_deref().unwrap_or("")),
                value(d)
            );
        }
    }
    out
}

/// The largest merge group number the module takes (`domain_groups`: 52 bits).
pub const MAX_GROUP: u64 = (1 << 52) - 1;

/// The merge group of the instances of `function` in Kubernetes namespace `namespace`, for
/// `domain_policy=group`: a number from both names (FNV-1a, cut to 52 bits, never 0), so that
/// one function's pods share and nothing is shared across namespaces or functions.
pub fn group_number(namespace: &str, function: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // The NUL keeps ("a", "bc") and ("ab", "c") apart: names never contain one.
    for byte in namespace.bytes().chain([0]).chain(function.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash & MAX_GROUP).max(1)
}

/// Puts the cgroup v2 directory `cgroup` (and every cgroup below it without a group of its
/// own) in merge group `group` (0: in none), through the module's `domain_groups` (root).
pub fn assign_group(cgroup: &Path, group: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let id = fs::metadata(cgroup)
        .map_err(|_| Error::NoSuchCgroup(cgroup.to_path_buf()))?
        .ino();
    fs::write(
        Path::new(SYSFS_DIR).join("domain_groups"),
        format!("{id} {group}\n"),
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied,
        Some(libc::ENOENT) => why_unsupported(),
        _ => Error::Os(e),
    })
}

/// Takes cgroups that no longer exist out of their groups (the module keeps at most 65536):
/// returns how many. The node agent calls it before it assigns a group.
pub fn prune_groups() -> Result<usize> {
    let text = fs::read_to_string(Path::new(SYSFS_DIR).join("domain_groups"))
        .map_err(|_| why_unsupported())?;
    let alive = cgroup_root()
        .map(|root| cgroup_dirs_by_id(&root))
        .unwrap_or_default();
    let mut pruned = 0;
    for id in text
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
    {
        if !alive.contains_key(&id) {
            fs::write(
                Path::new(SYSFS_DIR).join("domain_groups"),
                format!("{id} 0\n"),
            )
            .map_err(Error::Os)?;
            pruned += 1;
        }
    }
    Ok(pruned)
}

/// Where the OCI hook counts what it did with each container, since boot (`/run` is a tmpfs):
/// one line per outcome and reason, `OUTCOME REASON COUNT`.
pub const HOOK_OUTCOMES: &str = "/run/upm/hook-outcomes";

/// The `reason` label of an error: why a container was not advised.
pub fn error_reason(e: &Error) -> &'static str {
    match e {
        Error::ModuleNotLoaded => "module_not_loaded",
        Error::KernelNotPatched => "kernel_not_patched",
        Error::InvalidRange | Error::InvalidTunable | Error::InvalidConfig { .. } => "usage",
        Error::Unmapped => "unmapped",
        Error::PermissionDenied | Error::NeedsSysAdmin => "permission_denied",
        Error::NoSuchProcess => "no_such_process",
        Error::NoSuchCgroup(_) | Error::NoCgroup2 => "no_such_cgroup",
        Error::OutOfMemory { .. } => "out_of_memory",
        Error::InvalidInput(_) => "invalid_input",
        Error::Os(_) => "os_error",
    }
}

/// Adds one to the count of `outcome` with `reason` in the file at `path` (see
/// [`HOOK_OUTCOMES`]), creating it and its directory. Hooks of containers that start
/// together count under an exclusive `flock(2)` of `PATH.lock`; the file itself is replaced
/// atomically, so readers never lock.
pub fn count_outcome(path: &Path, outcome: &str, reason: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::Os)?;
    }
    let lock = fs::File::create(path.with_extension("lock")).map_err(Error::Os)?;
    // SAFETY: `lock` is an open file for the whole call; flock() takes no pointers.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::Os(io::Error::last_os_error()));
    }
    let mut counts = outcome_counts(path)?;
    match counts
        .iter_mut()
        .find(|(o, r, _)| o == outcome && r == reason)
    {
        Some((_, _, n)) => *n += 1,
        None => counts.push((outcome.to_string(), reason.to_string(), 1)),
    }
    let text: String = counts
        .iter()
        .map(|(o, r, n)| format!("{o} {r} {n}\n"))
        .collect();
    write_atomically(path, &text)
    // The lock is released when `lock` is closed.
}

/// The counts in the file at `path` (see [`HOOK_OUTCOMES`]); none if there is no file.
/// Lines that are not `OUTCOME REASON COUNT` are left out.
pub fn outcome_counts(path: &Path) -> Result<Vec<(String, String, u64)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Os(e)),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let [outcome, reason, count] = line.split(' ').collect::<Vec<_>>()[..] else {
                return None;
            };
            let label =
                |f: &str| !f.is_empty() && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if !label(outcome) || !label(reason) {
                return None;
            }
            Some((outcome.to_string(), reason.to_string(), count.parse().ok()?))
        })
        .collect())
}

/// The hook's counts as `upm_hook_containers_total{outcome="...",reason="..."}`, to follow
/// [`prometheus_text()`] or [`prometheus_up()`]: nothing when the hook never ran.
pub fn prometheus_outcomes(counts: &[(String, String, u64)]) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let mut out = "# HELP upm_hook_containers_total Containers the OCI hook handled since boot, \
                   by outcome and reason\n\
                   # TYPE upm_hook_containers_total counter\n"
        .to_string();
    for (outcome, reason, count) in counts {
        out += &format!(
            "upm_hook_containers_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {count}\n"
        );
    }
    out
}

/// Writes `text` to `path` as node_exporter's textfile collector needs it: whole or not at
/// all. The text goes to a hidden temporary file in the same directory (the collector reads
/// only `*.prom`), is synced, then renamed over `path`.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or(Error::Os(io::ErrorKind::InvalidInput.into()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed.map_err(Error::Os)
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
    let rollup = process(pid)?.smaps_rollup().map_err(procfs_error)?;
    let Some(totals) = rollup.memory_map_rollup.iter().next() else {
        return Ok(ProcessUsage::default());
    };
    // procfs gives the figures in bytes.
    let kib = |key: &str| totals.extension.map.get(key).copied().unwrap_or(0) / 1024;
    Ok(ProcessUsage {
        anon_kib: kib("Anonymous"),
        merged_kib: kib("KSM"),
        pss_anon_kib: kib("Pss_Anon"),
    })
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

fn procfs_error(e: ProcError) -> Error {
    match e {
        ProcError::NotFound(_) => Error::NoSuchProcess,
        ProcError::PermissionDenied(_) => Error::PermissionDenied,
        ProcError::Io(e, _) => proc_error(e),
        e => Error::Os(io::Error::other(e)),
    }
}

/// Frames whose flags one read of `/proc/kpageflags` returns: procfs reads through an
/// 8 KiB buffer, which a seek to the next frame throws away.
const KPAGEFLAGS_WINDOW: u64 = 1024;

/// Calls `each` with the page flags of every frame of `frames` (sorted, repeats allowed),
/// reading `/proc/kpageflags` once per window of nearby frames.
fn for_each_frame_flags(
    kpageflags: &mut KPageFlags,
    frames: &[u64],
    mut each: impl FnMut(u64, PhysicalPageFlags),
) -> Result<()> {
    let mut rest = frames;
    while let Some(&first) = rest.first() {
        let in_window = rest.partition_point(|&pfn| pfn < first + KPAGEFLAGS_WINDOW);
        let last = rest[in_window - 1];
        let flags = kpageflags
            .get_range_info(Pfn(first), Pfn(last + 1))
            .map_err(procfs_error)?;
        for &pfn in &rest[..in_window] {
            each(pfn, flags[(pfn - first) as usize]);
        }
        rest = &rest[in_window..];
    }
    Ok(())
}

/// Counts the merged pages of process `pid` from `/proc/PID/pagemap` and `/proc/kpageflags`.
///
/// Needs `CAP_SYS_ADMIN` (without it the kernel hides frame numbers). Kernels since 6.10
/// report `KPF_KSM` for every anonymous page unless they carry upstream commit 81401cebfc15;
/// the UPM kernel series backports it to 6.12.
pub fn scan_pages(pid: i32) -> Result<PageScan> {
    use std::collections::HashSet;

    let process = process(pid)?;
    let mut pagemap = process.pagemap().map_err(procfs_error)?;
    let mut kpageflags = KPageFlags::new().map_err(|e| match procfs_error(e) {
        Error::PermissionDenied => Error::NeedsSysAdmin,
        e => e,
    })?;
    let page = page_size();
    let mut scan = PageScan::default();
    let mut merged_frames = HashSet::new();
    let mut frames = Vec::with_capacity(512);
    for range in ranges_where(&process, is_scanned)? {
        let (mut vpn, end) = (range.start / page, range.end / page);
        while vpn < end {
            let batch = (end - vpn).min(512);
            frames.clear();
            for info in pagemap
                .get_range_info(vpn..vpn + batch)
                .map_err(procfs_error)?
            {
                let PageInfo::MemoryPage(entry) = info else {
                    continue; // swapped out
                };
                if !entry.contains(MemoryPageFlags::PRESENT) {
                    continue;
                }
                match entry.get_page_frame_number() {
                    // Present but no frame number: the kernel hid it from us.
                    Pfn(0) => return Err(Error::NeedsSysAdmin),
                    Pfn(pfn) => frames.push(pfn),
                }
            }
            frames.sort_unstable();
            for_each_frame_flags(&mut kpageflags, &frames, |pfn, flags| {
                scan.present += 1;
                if flags.contains(PhysicalPageFlags::KSM) {
                    scan.merged += 1;
                    merged_frames.insert(pfn);
                } else if flags.contains(PhysicalPageFlags::ZERO_PAGE) {
                    scan.zero += 1;
                }
            })?;
            vpn += batch;
        }
    }
    scan.merged_frames = merged_frames.len() as u64;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_domains_labels_and_escapes() {
        let domain = |name: &str, resolved: Option<&str>, sharing| Domain {
            name: name.into(),
            resolved: resolved.map(String::from),
            pages_shared: 1,
            pages_sharing: sharing,
            pages_unshared: 0,
            stable_nodes: 1,
            candidates: 3,
        };
        assert_eq!(prometheus_domains(&[]), "");
        let text = prometheus_domains(&[
            domain("cgroup:2:77", Some("/kubepods/a\"b"), 5),
            domain("uid:0", None, 0),
        ]);
        assert!(text.contains("# TYPE upm_domain_pages_sharing gauge\n"));
        assert!(text.contains(
            "upm_domain_pages_sharing{domain=\"cgroup:2:77\",name=\"/kubepods/a\\\"b\"} 5\n"
        ));
        assert!(text.contains(&format!(
            "upm_domain_saved_bytes{{domain=\"cgroup:2:77\",name=\"/kubepods/a\\\"b\"}} {}\n",
            5 * page_size()
        )));
        assert!(text.contains("upm_domain_candidates{domain=\"uid:0\",name=\"\"} 3\n"));
    }

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
        let stats = BTreeMap::from([
            ("pages_merged".to_string(), 7),
            ("pages_sharing".into(), 3),
            ("pages_skipped".into(), 5),
            ("pages_skipped_busy".into(), 1),
            ("pages_skipped_not_present".into(), 4),
        ]);
        let text = prometheus_text(&stats);
        assert!(text.starts_with("# HELP upm_up "));
        assert!(text.contains("# TYPE upm_up gauge\nupm_up 1\n"));
        assert!(text.contains("# TYPE upm_pages_merged_total counter\nupm_pages_merged_total 7\n"));
        assert!(text.contains("# TYPE upm_pages_sharing gauge\nupm_pages_sharing 3\n"));
        assert!(text.contains(
            "# TYPE upm_pages_skipped_total counter\n\
             upm_pages_skipped_total{reason=\"busy\"} 1\n\
             upm_pages_skipped_total{reason=\"not_present\"} 4\n"
        ));
        // One family per name: no unlabelled sum beside the labelled series.
        assert_eq!(text.matches("# TYPE upm_pages_skipped_total ").count(), 1);
        assert!(!text.contains("upm_pages_skipped_total 5"));
        let saved = format!("upm_saved_bytes {}\n", 3 * page_size());
        assert!(text.contains(&saved));
        assert_eq!(prometheus_up(false).lines().last(), Some("upm_up 0"));
    }

    #[test]
    fn textfile_written_whole_and_alone() {
        let dir = std::env::temp_dir().join(format!("upm-textfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upm.prom");
        fs::write(&path, "old\n").unwrap();
        write_atomically(&path, "upm_up 1\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "upm_up 1\n");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["upm.prom"], "no temporary file left behind");
        // A directory that does not exist: an error, and nothing written.
        assert!(write_atomically(&dir.join("none/upm.prom"), "x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hook_outcomes_counted_by_concurrent_hooks() {
        let dir = std::env::temp_dir().join(format!("upm-outcomes-{}", std::process::id()));
        let path = dir.join("run/hook-outcomes");
        assert_eq!(
            outcome_counts(&path).unwrap(),
            [],
            "no file: nothing counted"
        );
        assert_eq!(prometheus_outcomes(&[]), "");
        // Hooks of containers that start together: 4 threads, 25 counts each.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        count_outcome(&path, "advised", "ok").unwrap();
                    }
                });
            }
        });
        let reason = error_reason(&Error::ModuleNotLoaded);
        count_outcome(&path, "failed", reason).unwrap();
        let counts = outcome_counts(&path).unwrap();
        let own = |o: &str, r: &str, n| (o.to_string(), r.to_string(), n);
        assert_eq!(
            counts,
            [
                own("advised", "ok", 100),
                own("failed", "module_not_loaded", 1)
            ]
        );
        assert_eq!(
            prometheus_outcomes(&counts).lines().nth(3),
            Some("upm_hook_containers_total{outcome=\"failed\",reason=\"module_not_loaded\"} 1")
        );
        // A line that is not OUTCOME REASON COUNT is left out, not misread.
        fs::write(
            &path,
            "advised ok 3\nbroken\nfailed Bad\"label 1\nfailed os_error x\n",
        )
        .unwrap();
        assert_eq!(outcome_counts(&path).unwrap(), [own("advised", "ok", 3)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let bind_first = "30 1 0:26 /kubepods /mnt/pods rw - cgroup2 cgroup2 rw\n\
                          31 1 0:26 / /my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(bind_first), Some("/my cgroups".into()));
        assert_eq!(cgroup2_mount("22 1 0:20 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn tells_unmapped_from_mapped() {
        let maps = || [0x1000..0x3000, 0x3000..0x4000, 0x8000..0x9000].into_iter();
        assert!(covers(maps(), &(0x1000..0x4000)));
        assert!(covers(maps(), &(0x2000..0x3000)));
        assert!(!covers(maps(), &(0x3000..0x5000)));
        assert!(!covers(maps(), &(0x0..0x2000)));
        assert!(covers(maps(), &(0x8000..0x9000)));
    }

    #[test]
    fn reads_policy_and_domains() {
        assert_eq!(bracketed("global uid userns [cgroup]\n"), Some("cgroup"));
        assert_eq!(bracketed("global uid\n"), None);
        let text = "domain pages_shared pages_sharing pages_unshared stable_nodes candidates\n\
                    uid:1000 3 5 1 4 7\ncgroup:2:1234 0 0 0 0 2\n";
        let domains = parse_domains(text).unwrap();
        assert_eq!(domains.len(), 2);
        assert_eq!(
            (domains[0].name.as_str(), domains[0].pages_sharing),
            ("uid:1000", 5)
        );
        assert_eq!(
            (domains[1].name.as_str(), domains[1].candidates),
            ("cgroup:2:1234", 2)
        );
        assert!(parse_domains("header\nuid:1 1 2\n").is_err());
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

    /// One line of `/proc/PID/maps`, parsed as [`ranges_where()`] parses the file.
    fn parse(line: &str) -> Option<MemoryMap> {
        use procfs::FromBufRead;
        let maps = procfs::process::MemoryMaps::from_buf_read(format!("{line}\n").as_bytes());
        maps.ok()?.into_iter().next()
    }

    fn parse_anonymous(line: &str) -> Option<Range<usize>> {
        parse(line)
            .filter(is_private_anonymous_rw)
            .map(|m| address_range(&m))
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
            parse_anonymous("1000-2000 rw-p 00000000 00:00 0 [anon:weights]"),
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
        let scanned = |line| parse(line).is_some_and(|m| is_scanned(&m));
        assert!(scanned("7f00-8000 rw-p 00000000 00:00 0 "));
        assert!(scanned("1000-2000 r--p 00001000 08:01 42 /usr/lib/x.so"));
        assert!(!scanned("1000-2000 ---p 00000000 00:00 0 "));
        assert!(!scanned("1000-2000 rw-s 00000000 00:01 5 /dev/zero"));
        assert!(!scanned(
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]"
        ));
    }

    #[test]
    fn frame_flags_read_a_window_at_a_time() {
        // A kpageflags file whose entry for frame f is f * 3, so that each flag is checkable.
        let dir = std::env::temp_dir().join(format!("upm-kpageflags-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let entries: Vec<u8> = (0..5000u64).flat_map(|f| (f * 3).to_ne_bytes()).collect();
        fs::write(dir.join("kpageflags"), entries).unwrap();
        let mut kpageflags = KPageFlags::from_custom_root(&dir).unwrap();

        // Repeats, a window boundary (0 and 1023 in one read, 1024 in the next) and a gap.
        let frames = [0, 7, 7, 1023, 1024, 4999];
        let mut seen = Vec::new();
        for_each_frame_flags(&mut kpageflags, &frames, |pfn, flags| {
            seen.push((pfn, flags.bits()))
        })
        .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let expected: Vec<_> = frames.iter().map(|&f| (f, f * 3)).collect();
        assert_eq!(seen, expected);
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
