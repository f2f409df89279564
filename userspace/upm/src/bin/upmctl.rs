// SPDX-License-Identifier: GPL-2.0 OR MIT
//! upmctl: look at and steer UPM from the command line.
//!
//!   upmctl status [--json]          counters and tunables
//!   upmctl watch [--interval SECS] [--count N]   refreshing view of the counters
//!   upmctl advise --pid PID [--range START-END]   merge a running process's memory
//!   upmctl advise --cgroup PATH     every process of a cgroup (a container) and below
//!   upmctl unmerge --pid PID [--range START-END] [--delay SECS]  private copies again
//!   upmctl show --pid PID [--json]  how much of a process's memory is merged
//!   upmctl domains [--json]         the merge domains that hold pages, named (root)
//!   upmctl set KEY=VALUE            set a tunable
//!   upmctl metrics [--textfile PATH]  counters in Prometheus text format
//!   upmctl hook [--delay SECS]      OCI poststart hook: advise an annotated container
//!   upmctl completions SHELL | manpage   shell completions, the manual page

use clap::{CommandFactory, Parser, Subcommand};
use std::{
    collections::BTreeMap,
    io::Read,
    ops::Range,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    thread,
    time::Duration,
};
use upm::{Advice, Error};

/// Exit statuses, from sysexits.h.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_OSERR: u8 = 71;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

const EXIT_STATUS_HELP: &str = "\
Exit status (sysexits.h):
  0   success
  64  usage error (EX_USAGE): bad arguments, a range that madvise refuses or a tunable
      value the module refuses (EINVAL)
  65  part of the range is not mapped (EX_DATAERR); the mapped parts were processed; or
      the container state a hook reads is not valid
  66  no such process or cgroup (EX_NOINPUT)
  69  UPM unavailable (EX_UNAVAILABLE): module not loaded or kernel not patched
  71  any other system error (EX_OSERR), no cgroup v2 hierarchy among them
  75  out of memory (EX_TEMPFAIL): the bytes not done are printed; try again later
  77  permission denied (EX_NOPERM)
  78  a configuration line that does not parse or that the module refuses (EX_CONFIG)
With --cgroup every process is advised even when some fail; each failure is printed, and the
status is the first failure's.";

fn exit_status(e: &Error) -> u8 {
    match e {
        Error::InvalidRange | Error::InvalidTunable => EX_USAGE,
        Error::Unmapped | Error::InvalidInput(_) => EX_DATAERR,
        Error::NoSuchProcess | Error::NoSuchCgroup(_) => EX_NOINPUT,
        Error::ModuleNotLoaded | Error::KernelNotPatched => EX_UNAVAILABLE,
        Error::PermissionDenied | Error::NeedsSysAdmin => EX_NOPERM,
        Error::OutOfMemory { .. } => EX_TEMPFAIL,
        Error::Os(_) | Error::NoCgroup2 => EX_OSERR,
        Error::InvalidConfig { .. } => EX_CONFIG,
    }
}

#[derive(Parser)]
#[command(
    name = "upmctl",
    version,
    about = "Inspect and steer UPM (user-guided page merging)",
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the module's counters and tunables.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the counters every few seconds, with the change since the last refresh.
    Watch {
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Merge identical pages of a running process (all private anonymous memory by default).
    Advise {
        #[command(flatten)]
        target: Target,
        /// START-END, hexadecimal addresses as in /proc/PID/maps (with --pid only).
        #[arg(long, value_parser = parse_range, conflicts_with = "cgroup")]
        range: Option<Range<usize>>,
        /// Wait this many seconds first (a function's cold start).
        #[arg(long, default_value_t = 0)]
        delay: u64,
        /// The container this advice is for (set by `hook`): the outcome also goes to syslog
        /// and is counted for `metrics`.
        #[arg(long, hide = true)]
        container: Option<String>,
    },
    /// Give a process's merged pages private copies again.
    Unmerge {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_parser = parse_range, conflicts_with = "cgroup")]
        range: Option<Range<usize>>,
        /// Wait this many seconds first.
        #[arg(long, default_value_t = 0)]
        delay: u64,
    },
    /// Set a tunable: KEY=VALUE (run, use_zero_pages, split_thp, sweep_millisecs,
    /// fresh_frame, domain_policy, domain_cgroup_level).
    Set {
        #[arg(value_parser = parse_setting)]
        setting: (String, String),
    },
    /// Set the tunables a file lists, one KEY=VALUE per line, # comments (the values the
    /// module starts with are its parameters: /etc/modprobe.d/upm.conf).
    ApplyConfig {
        /// The tunables file.
        file: PathBuf,
    },
    /// The counters in Prometheus text format (for node_exporter's textfile collector), and
    /// what the hook did with containers.
    Metrics {
        /// Write the text to this file atomically (a node_exporter textfile directory's
        /// `upm.prom`), not to stdout.
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
    },
    /// OCI poststart hook (runc, crun; CRI-O and Podman through hooks.d): reads the container
    /// state on stdin and, if the container is annotated io.upm.merge=true, advises every
    /// process of its cgroup. With a delay it returns at once and a detached upmctl advises
    /// once the delay has passed. Every decision and outcome goes to syslog (the journal),
    /// with the container's id, and each outcome is counted in /run/upm/hook-outcomes, which
    /// `metrics` exports as upm_hook_containers_total{outcome,reason}.
    Hook {
        /// Seconds to wait before advising; the annotation io.upm.delay overrides it.
        #[arg(long, default_value_t = 0)]
        delay: u64,
        /// The longest delay an annotation may ask for: more is cut to this.
        #[arg(long, default_value_t = 300)]
        max_delay: u64,
        /// Advise only pods of these Kubernetes namespaces (comma-separated; the pod's
        /// io.kubernetes.pod.namespace or io.kubernetes.cri.sandbox-namespace annotation).
        /// The host's hooks.d file sets it, so a tenant's annotation alone is not enough.
        #[arg(long, value_delimiter = ',')]
        namespaces: Option<Vec<String>>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), generated from these definitions.
    Manpage,
    /// The merge domains that hold pages, with what each shares: cgroup ids resolved to
    /// directories, uids to user names (root only: it names other tenants).
    Domains {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show how much of a process's memory is merged (pagemap and kernel page flags).
    Show {
        #[arg(long)]
        pid: i32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// One process, or every process of a cgroup and its descendants (a container).
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    #[arg(long)]
    pid: Option<i32>,
    /// A cgroup v2 directory, absolute or below the hierarchy's mount point (from
    /// /proc/self/mountinfo; /sys/fs/cgroup on most systems).
    #[arg(long)]
    cgroup: Option<std::path::PathBuf>,
}

impl Target {
    fn cgroup(cgroup: std::path::PathBuf) -> Self {
        Self {
            pid: None,
            cgroup: Some(cgroup),
        }
    }
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

fn parse_range(s: &str) -> Result<Range<usize>, String> {
    let (a, b) = s.split_once('-').ok_or("expected START-END")?;
    let parse = |x: &str| {
        usize::from_str_radix(x.trim_start_matches("0x"), 16).map_err(|e| format!("{x}: {e}"))
    };
    let (start, end) = (parse(a)?, parse(b)?);
    if start >= end {
        return Err("START must be below END".into());
    }
    Ok(start..end)
}

const PAGE_KIB: u64 = 4;

fn json_object<'a>(fields: impl IntoIterator<Item = (&'a str, u64)>) -> serde_json::Value {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
        .collect()
}

/// Prints the counters and the domain policy; with `previous`, also how each counter changed
/// since then.
fn print_status(
    stats: &BTreeMap<String, u64>,
    policy: &str,
    previous: Option<&BTreeMap<String, u64>>,
    json: bool,
) {
    if json {
        let mut object = json_object(stats.iter().map(|(k, v)| (k.as_str(), *v)));
        object["domain_policy"] = policy.into();
        println!("{object}");
        return;
    }
    let saved = stats.get("pages_sharing").copied().unwrap_or(0) * PAGE_KIB;
    println!("UPM: {saved} KiB saved by merging; merge domains by {policy}");
    for (k, v) in stats {
        match previous.and_then(|p| p.get(k)) {
            Some(&old) if old != *v => println!("  {k:<28} {v} ({:+})", *v as i64 - old as i64),
            _ => println!("  {k:<28} {v}"),
        }
    }
}

fn watch(interval: u64, count: Option<u64>) -> Result<(), Error> {
    let mut previous = None;
    for round in 1.. {
        let stats = upm::stats()?;
        let policy = upm::domain_policy()?;
        print!("\x1b[2J\x1b[H");
        print_status(&stats, &policy, previous.as_ref(), false);
        if count.is_some_and(|n| round >= n) {
            return Ok(());
        }
        previous = Some(stats);
        thread::sleep(Duration::from_secs(interval.max(1)));
    }
    Ok(())
}

/// What `show` prints: the smaps figures, which the process's owner may read, and the
/// frame-level scan, which needs `CAP_SYS_ADMIN` (`None` without it).
fn show(pid: i32, json: bool) -> Result<(), Error> {
    let usage = upm::process_usage(pid)?;
    let scan = match upm::scan_pages(pid) {
        Ok(scan) => Some(scan),
        Err(Error::NeedsSysAdmin) => None,
        Err(e) => return Err(e),
    };
    if json {
        let mut fields = vec![("pid", pid as u64)];
        if let Some(scan) = &scan {
            fields.extend([
                ("present_pages", scan.present),
                ("merged_pages", scan.merged),
                ("merged_frames", scan.merged_frames),
                ("zero_pages", scan.zero),
            ]);
        }
        fields.extend([
            ("anon_kib", usage.anon_kib),
            ("ksm_kib", usage.merged_kib),
            ("pss_anon_kib", usage.pss_anon_kib),
        ]);
        println!("{}", json_object(fields));
        return Ok(());
    }
    match &scan {
        Some(scan) => println!(
            "pid {pid}: {} of {} KiB of private memory merged ({:.0}%), into {} KiB of frames; \
             zero-page mappings {} KiB",
            scan.merged * PAGE_KIB,
            scan.present * PAGE_KIB,
            100.0 * scan.merged as f64 / scan.present.max(1) as f64,
            scan.merged_frames * PAGE_KIB,
            scan.zero * PAGE_KIB
        ),
        None => println!("pid {pid}: {} (smaps figures only)", Error::NeedsSysAdmin),
    }
    println!(
        "  smaps: anonymous {} KiB, KSM {} KiB, Pss_Anon {} KiB",
        usage.anon_kib, usage.merged_kib, usage.pss_anon_kib
    );
    Ok(())
}

/// `advise --container ID`: advises as `advise` does, and records the outcome (see [`record`]).
fn advise_container(id: &str, target: Target, delay: u64) -> Result<(), Error> {
    let outcome = advise(target, None, delay, Advice::Merge).map(|()| Handled::Advised);
    record(id, &outcome);
    outcome.map(drop)
}

fn advise(
    target: Target,
    range: Option<Range<usize>>,
    delay: u64,
    advice: Advice,
) -> Result<(), Error> {
    if !upm::is_supported() {
        return Err(upm::why_unsupported());
    }
    thread::sleep(Duration::from_secs(delay));
    let cgroup = match (target.pid, target.cgroup) {
        (Some(pid), _) => {
            let bytes = upm::advise_process(pid, range.map(|r| vec![r]), advice)?;
            println!("pid {pid}: {} KiB advised", bytes / 1024);
            return Ok(());
        }
        (None, Some(cgroup)) => cgroup,
        (None, None) => unreachable!("clap requires one target"),
    };
    let pids = upm::cgroup_pids(&cgroup)?;
    // One process that cannot be advised does not stop the others: each failure is printed,
    // and the first one decides the exit status.
    let mut failures = Vec::new();
    let total = pids.len();
    for pid in pids {
        match upm::advise_process(pid, None, advice) {
            Ok(bytes) => println!("pid {pid}: {} KiB advised", bytes / 1024),
            // A process of the cgroup may exit while the others are advised.
            Err(Error::NoSuchProcess) => continue,
            Err(e) => {
                eprintln!("upmctl: pid {pid}: {e}");
                failures.push(e);
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    eprintln!(
        "upmctl: {} of {total} processes of {} not advised",
        failures.len(),
        cgroup.display()
    );
    Err(failures.swap_remove(0))
}

/// `domains`: the module's merge domains, named.
fn domains(json: bool) -> Result<(), Error> {
    let domains = upm::domains()?;
    if json {
        let list: Vec<_> = domains
            .iter()
            .map(|d| {
                let mut object = json_object([
                    ("pages_shared", d.pages_shared),
                    ("pages_sharing", d.pages_sharing),
                    ("pages_unshared", d.pages_unshared),
                    ("stable_nodes", d.stable_nodes),
                    ("candidates", d.candidates),
                ]);
                object["domain"] = d.name.as_str().into();
                object["resolved"] = d.resolved.as_deref().into();
                object
            })
            .collect();
        println!("{}", serde_json::Value::from(list));
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:>10} {:>10}  what",
        "domain", "shared", "sharing", "candidates"
    );
    for d in domains {
        println!(
            "{:<24} {:>10} {:>10} {:>10}  {}",
            d.name,
            d.pages_shared,
            d.pages_sharing,
            d.candidates,
            d.resolved.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// The annotation that opts a container in: the hook leaves every other container alone.
const MERGE_ANNOTATION: &str = "io.upm.merge";
/// The annotation that sets the hook's delay, in seconds.
const DELAY_ANNOTATION: &str = "io.upm.delay";
/// The annotations that name a container's Kubernetes namespace (CRI-O's, containerd's).
const NAMESPACE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.pod.namespace",
    "io.kubernetes.cri.sandbox-namespace",
];

/// The annotation that names the function a container is an instance of, for
/// `domain_policy=group`: its instances in one Kubernetes namespace share, nothing else does.
const GROUP_ANNOTATION: &str = "io.upm.group";

/// The merge group of a container under `domain_policy=group`: its namespace (none outside
/// Kubernetes) and its function (the group annotation, else "default").
fn hook_group(state: &serde_json::Value) -> u64 {
    let annotations = &state["annotations"];
    let namespace = NAMESPACE_ANNOTATIONS
        .iter()
        .find_map(|a| annotations[*a].as_str())
        .unwrap_or("");
    let function = annotations[GROUP_ANNOTATION].as_str().unwrap_or("default");
    upm::group_number(namespace, function)
}

/// What the host allows the hook to do (its hooks.d arguments), whatever a container asks.
struct HookPolicy {
    default_delay: u64,
    max_delay: u64,
    namespaces: Option<Vec<String>>,
}

/// What the hook does with one container.
#[derive(Debug, PartialEq)]
enum HookPlan {
    /// Not annotated io.upm.merge=true: left alone.
    NotAnnotated,
    /// Annotated, in a namespace the host does not allow (None: the container has none).
    NamespaceNotAllowed(Option<String>),
    /// Advise the container's processes after `delay` seconds; `asked` is the annotation's
    /// delay when it was cut to the maximum.
    Advise {
        pid: i32,
        delay: u64,
        asked: Option<u64>,
    },
}

/// What became of one container.
enum Handled {
    /// Its processes were advised.
    Advised,
    /// A detached upmctl advises it later, and records what became of it.
    Detached,
    /// Left alone, for this reason (the `reason` label of its count).
    LeftAlone(&'static str),
}

/// What the hook needs from the OCI container state: whether to advise, which cgroup, when.
fn hook_plan(state: &serde_json::Value, policy: &HookPolicy) -> Result<HookPlan, Error> {
    let annotations = &state["annotations"];
    if annotations[MERGE_ANNOTATION].as_str() != Some("true") {
        return Ok(HookPlan::NotAnnotated);
    }
    if let Some(allowed) = &policy.namespaces {
        let namespace = NAMESPACE_ANNOTATIONS
            .iter()
            .find_map(|a| annotations[*a].as_str());
        if !namespace.is_some_and(|ns| allowed.iter().any(|a| a == ns)) {
            return Ok(HookPlan::NamespaceNotAllowed(namespace.map(String::from)));
        }
    }
    let pid = state["pid"]
        .as_i64()
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| Error::InvalidInput("container state: no pid".into()))?;
    let delay = match annotations[DELAY_ANNOTATION].as_str() {
        Some(delay) => delay
            .parse()
            .map_err(|_| Error::InvalidInput(format!("{DELAY_ANNOTATION}={delay}")))?,
        None => policy.default_delay,
    };
    Ok(HookPlan::Advise {
        pid,
        delay: delay.min(policy.max_delay),
        asked: (delay > policy.max_delay).then_some(delay),
    })
}

/// A line in syslog (the journal where systemd runs), as `upmctl[PID]`.
fn syslog(priority: libc::c_int, message: &str) {
    let Ok(message) = std::ffi::CString::new(message) else {
        return;
    };
    // SAFETY: Both strings are NUL-terminated and outlive the calls; "%s" takes one string.
    unsafe {
        libc::openlog(c"upmctl".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
        libc::syslog(priority, c"%s".as_ptr(), message.as_ptr());
    }
}

/// Logs what became of container `id` to syslog and counts it in [`upm::HOOK_OUTCOMES`],
/// which `upmctl metrics` exports.
fn record(id: &str, outcome: &Result<Handled, Error>) {
    let (label, reason) = match outcome {
        Ok(Handled::Advised) => {
            syslog(libc::LOG_INFO, &format!("container {id}: advised"));
            ("advised", "ok")
        }
        Ok(Handled::Detached) => return,
        Ok(Handled::LeftAlone(reason)) => ("left_alone", *reason),
        Err(e) => {
            syslog(libc::LOG_ERR, &format!("container {id}: not advised: {e}"));
            ("failed", upm::error_reason(e))
        }
    };
    if let Err(e) = upm::count_outcome(Path::new(upm::HOOK_OUTCOMES), label, reason) {
        let path = upm::HOOK_OUTCOMES;
        syslog(
            libc::LOG_WARNING,
            &format!("container {id}: not counted in {path}: {e}"),
        );
    }
}

fn hook(policy: &HookPolicy) -> Result<(), Error> {
    let mut state = String::new();
    std::io::stdin()
        .read_to_string(&mut state)
        .map_err(Error::Os)?;
    let outcome = serde_json::from_str::<serde_json::Value>(&state)
        .map_err(|e| Error::InvalidInput(format!("container state: {e}")));
    let id = match &outcome {
        Ok(state) => state["id"].as_str().unwrap_or("(no id)").to_string(),
        Err(_) => "(no state)".to_string(),
    };
    let outcome = outcome.and_then(|state| hook_container(&id, &state, policy));
    record(&id, &outcome);
    outcome.map(drop)
}

fn hook_container(
    id: &str,
    state: &serde_json::Value,
    policy: &HookPolicy,
) -> Result<Handled, Error> {
    let (pid, delay) = match hook_plan(state, policy)? {
        HookPlan::NotAnnotated => return Ok(Handled::LeftAlone("not_annotated")),
        HookPlan::NamespaceNotAllowed(namespace) => {
            let namespace = namespace.as_deref().unwrap_or("(none)");
            syslog(
                libc::LOG_NOTICE,
                &format!("container {id}: not advised: namespace {namespace} not allowed"),
            );
            return Ok(Handled::LeftAlone("namespace_not_allowed"));
        }
        HookPlan::Advise { pid, delay, asked } => {
            if let Some(asked) = asked {
                syslog(
                    libc::LOG_NOTICE,
                    &format!("container {id}: {DELAY_ANNOTATION}={asked} cut to {delay} s"),
                );
            }
            (pid, delay)
        }
    };
    let cgroup = upm::cgroup_of(pid)?;
    if cgroup == upm::cgroup_root()? {
        // The root cgroup holds every process of the host, not a container.
        return Err(Error::InvalidInput(format!(
            "container process {pid} has no cgroup of its own"
        )));
    }
    if upm::domain_policy()? == "group" {
        // The container's domain is known before anything in it advises.
        let pruned = upm::prune_groups()?;
        let group = hook_group(state);
        upm::assign_group(&cgroup, group)?;
        syslog(
            libc::LOG_INFO,
            &format!("container {id}: in merge group {group} ({pruned} stale cgroups pruned)"),
        );
    }
    if delay == 0 {
        return advise(Target::cgroup(cgroup), None, 0, Advice::Merge).map(|()| Handled::Advised);
    }
    // The runtime waits for its hooks (and for their output pipes): detach; the detached
    // upmctl records the outcome, and lives at most the delay plus the advice.
    std::process::Command::new(std::env::current_exe().map_err(Error::Os)?)
        .arg("advise")
        .arg("--cgroup")
        .arg(&cgroup)
        .arg("--delay")
        .arg(delay.to_string())
        .arg("--container")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(Error::Os)?;
    syslog(
        libc::LOG_INFO,
        &format!(
            "container {id}: advising cgroup {} in {delay} s",
            cgroup.display()
        ),
    );
    Ok(Handled::Detached)
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Status { json } => {
            print_status(&upm::stats()?, &upm::domain_policy()?, None, json);
            Ok(())
        }
        Command::Watch { interval, count } => watch(interval, count),
        Command::Advise {
            target,
            range: _,
            delay,
            container: Some(id),
        } => advise_container(&id, target, delay),
        Command::Advise {
            target,
            range,
            delay,
            container: None,
        } => advise(target, range, delay, Advice::Merge),
        Command::Unmerge {
            target,
            range,
            delay,
        } => advise(target, range, delay, Advice::Unmerge),
        Command::Hook {
            delay,
            max_delay,
            namespaces,
        } => hook(&HookPolicy {
            default_delay: delay,
            max_delay,
            namespaces,
        }),
        Command::Show { pid, json } => show(pid, json),
        Command::Domains { json } => domains(json),
        Command::Set {
            setting: (key, value),
        } => upm::set_tunable(&key, &value),
        Command::ApplyConfig { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::Os(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", file.display()),
                ))
            })?;
            let n = upm::apply_config(&text)?;
            eprintln!("upmctl: {n} tunables set from {}", file.display());
            Ok(())
        }
        Command::Metrics { textfile } => {
            // Without the module the text still says so (upm_up 0), and the exit status too.
            let (text, outcome) = match upm::stats().and_then(|s| Ok((s, upm::domain_policy()?))) {
                Ok((stats, policy)) => (
                    upm::prometheus_text(&stats)
                        + &upm::prometheus_policy(&policy)
                        // Per domain only for root, which may read them: nothing otherwise.
                        + &upm::domains()
                            .map(|d| upm::prometheus_domains(&d))
                            .unwrap_or_default(),
                    Ok(()),
                ),
                Err(e) => (upm::prometheus_up(false), Err(e)),
            };
            // What the hook did, module or not: "no module" is one of its reasons.
            let hooked = upm::outcome_counts(Path::new(upm::HOOK_OUTCOMES)).unwrap_or_default();
            let text = text + &upm::prometheus_outcomes(&hooked);
            match textfile {
                Some(path) => upm::write_atomically(&path, &text)?,
                None => print!("{text}"),
            }
            outcome
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "upmctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(Error::Os),
    }
}

/// Reports `e` on stderr, and as a JSON object on stdout when JSON output was asked for.
fn report(e: &Error, json: bool) -> ExitCode {
    let status = exit_status(e);
    if json {
        let error = serde_json::json!({ "error": e.to_string(), "exit_status": status });
        println!("{error}");
    }
    eprintln!("upmctl: {e}");
    ExitCode::from(status)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage_error { EX_USAGE } else { 0 });
        }
    };
    let json = matches!(
        cli.command,
        Command::Status { json: true }
            | Command::Show { json: true, .. }
            | Command::Domains { json: true }
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(state: &str, policy: &HookPolicy) -> Result<HookPlan, Error> {
        hook_plan(&serde_json::from_str(state).unwrap(), policy)
    }

    const POLICY: HookPolicy = HookPolicy {
        default_delay: 5,
        max_delay: 300,
        namespaces: None,
    };

    #[test]
    fn hook_leaves_containers_without_the_annotation_alone() {
        let state = r#"{"ociVersion": "1.0.2", "id": "c", "status": "running", "pid": 42}"#;
        assert_eq!(plan(state, &POLICY).unwrap(), HookPlan::NotAnnotated);
        let off = r#"{"pid": 42, "annotations": {"io.upm.merge": "false"}}"#;
        assert_eq!(plan(off, &POLICY).unwrap(), HookPlan::NotAnnotated);
    }

    #[test]
    fn hook_takes_pid_and_delay() {
        let on = r#"{"pid": 42, "annotations": {"io.upm.merge": "true"}}"#;
        let advise = |delay, asked| HookPlan::Advise {
            pid: 42,
            delay,
            asked,
        };
        assert_eq!(plan(on, &POLICY).unwrap(), advise(5, None));
        let delayed =
            r#"{"pid": 42, "annotations": {"io.upm.merge": "true", "io.upm.delay": "9"}}"#;
        assert_eq!(plan(delayed, &POLICY).unwrap(), advise(9, None));
    }

    #[test]
    fn hook_cuts_a_tenant_delay_to_the_host_maximum() {
        let long = r#"{"pid": 42, "annotations": {"io.upm.merge": "true",
            "io.upm.delay": "99999999999"}}"#;
        assert_eq!(
            plan(long, &POLICY).unwrap(),
            HookPlan::Advise {
                pid: 42,
                delay: 300,
                asked: Some(99999999999)
            }
        );
    }

    #[test]
    fn hook_advises_only_namespaces_the_host_allows() {
        let policy = HookPolicy {
            namespaces: Some(vec!["fn-a".into(), "fn-b".into()]),
            ..POLICY
        };
        let pod = |annotation: &str, ns: &str| {
            format!(
                r#"{{"pid": 42, "annotations": {{"io.upm.merge": "true", "{annotation}": "{ns}"}}}}"#
            )
        };
        for annotation in NAMESPACE_ANNOTATIONS {
            assert!(matches!(
                plan(&pod(annotation, "fn-b"), &policy).unwrap(),
                HookPlan::Advise { pid: 42, .. }
            ));
            assert_eq!(
                plan(&pod(annotation, "tenant-x"), &policy).unwrap(),
                HookPlan::NamespaceNotAllowed(Some("tenant-x".into()))
            );
        }
        let no_namespace = r#"{"pid": 42, "annotations": {"io.upm.merge": "true"}}"#;
        assert_eq!(
            plan(no_namespace, &policy).unwrap(),
            HookPlan::NamespaceNotAllowed(None)
        );
    }

    #[test]
    fn hook_groups_instances_of_one_function_in_one_namespace() {
        let pod = |ns: &str, function: Option<&str>| {
            let function =
                function.map_or(String::new(), |f| format!(r#", "io.upm.group": "{f}""#));
            serde_json::from_str(&format!(
                r#"{{"pid": 42, "annotations": {{"io.kubernetes.pod.namespace": "{ns}"{function}}}}}"#
            ))
            .unwrap()
        };
        let group = |ns, function| hook_group(&pod(ns, function));
        assert_eq!(group("ns1", Some("resnet")), group("ns1", Some("resnet")));
        assert_ne!(group("ns1", Some("resnet")), group("ns2", Some("resnet")));
        assert_ne!(group("ns1", Some("resnet")), group("ns1", Some("bert")));
        assert_eq!(group("ns1", None), group("ns1", Some("default")));
        assert_ne!(upm::group_number("a", "bc"), upm::group_number("ab", "c"));
        assert!((1..=upm::MAX_GROUP).contains(&group("ns1", None)));
    }

    #[test]
    fn hook_refuses_bad_state() {
        for state in [
            r#"{"annotations": {"io.upm.merge": "true"}}"#,
            r#"{"pid": 0, "annotations": {"io.upm.merge": "true"}}"#,
            r#"{"pid": 42, "annotations": {"io.upm.merge": "true", "io.upm.delay": "soon"}}"#,
        ] {
            let plan = plan(state, &POLICY);
            assert!(matches!(plan, Err(Error::InvalidInput(_))), "{state}");
        }
    }
}
