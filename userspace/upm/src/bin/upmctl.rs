// SPDX-License-Identifier: GPL-2.0 OR MIT
//! upmctl: look at and steer UPM from the command line.
//!
//!   upmctl status [--json]          counters and tunables
//!   upmctl watch [--interval SECS] [--count N]   refreshing view of the counters
//!   upmctl advise --pid PID [--range START-END]   merge a running process's memory
//!   upmctl advise --cgroup PATH     every process of a cgroup (a container) and below
//!   upmctl unmerge --pid PID [--range START-END]  give it private copies again
//!   upmctl show --pid PID [--json]  how much of a process's memory is merged
//!   upmctl set KEY=VALUE            set a tunable
//!   upmctl metrics                  counters in Prometheus text format
//!   upmctl completions SHELL | manpage   shell completions, the manual page

use clap::{CommandFactory, Parser, Subcommand};
use std::{collections::BTreeMap, ops::Range, process::ExitCode, thread, time::Duration};
use upm::{Advice, Error};

/// Exit statuses, from sysexits.h.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_OSERR: u8 = 71;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

const EXIT_STATUS_HELP: &str = "\
Exit status (sysexits.h):
  0   success
  64  usage error (EX_USAGE): bad arguments, a range that madvise refuses or a tunable
      value the module refuses (EINVAL)
  65  part of the range is not mapped (EX_DATAERR); the mapped parts were processed
  66  no such process (EX_NOINPUT)
  69  UPM unavailable (EX_UNAVAILABLE): module not loaded or kernel not patched
  71  any other system error (EX_OSERR)
  77  permission denied (EX_NOPERM)
  78  a configuration line that does not parse or that the module refuses (EX_CONFIG)";

fn exit_status(e: &Error) -> u8 {
    match e {
        Error::InvalidRange | Error::InvalidTunable => EX_USAGE,
        Error::Unmapped => EX_DATAERR,
        Error::NoSuchProcess => EX_NOINPUT,
        Error::ModuleNotLoaded | Error::KernelNotPatched => EX_UNAVAILABLE,
        Error::PermissionDenied | Error::NeedsSysAdmin => EX_NOPERM,
        Error::Os(_) => EX_OSERR,
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
    },
    /// Give a process's merged pages private copies again.
    Unmerge {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_parser = parse_range, conflicts_with = "cgroup")]
        range: Option<Range<usize>>,
    },
    /// Set a tunable: KEY=VALUE (run, use_zero_pages, split_thp, sweep_millisecs,
    /// fresh_frame, domain_policy, domain_cgroup_level).
    Set {
        #[arg(value_parser = parse_setting)]
        setting: (String, String),
    },
    /// Set the tunables a file lists, one KEY=VALUE per line, # comments (the systemd unit
    /// runs this with /etc/upm/upm.conf once the module is loaded).
    ApplyConfig {
        /// The tunables file.
        file: std::path::PathBuf,
    },
    /// The counters in Prometheus text format (for node_exporter's textfile collector).
    Metrics,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), generated from these definitions.
    Manpage,
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
    /// A cgroup v2 directory, absolute or below /sys/fs/cgroup.
    #[arg(long)]
    cgroup: Option<std::path::PathBuf>,
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

fn json_object<'a>(fields: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let fields: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Prints the counters; with `previous`, also how each changed since then.
fn print_status(
    stats: &BTreeMap<String, u64>,
    previous: Option<&BTreeMap<String, u64>>,
    json: bool,
) {
    if json {
        println!(
            "{}",
            json_object(stats.iter().map(|(k, v)| (k.as_str(), *v)))
        );
        return;
    }
    let saved = stats.get("pages_sharing").copied().unwrap_or(0) * PAGE_KIB;
    println!("UPM: {saved} KiB saved by merging");
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
        print!("\x1b[2J\x1b[H");
        print_status(&stats, previous.as_ref(), false);
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

fn advise(target: Target, range: Option<Range<usize>>, advice: Advice) -> Result<(), Error> {
    if !upm::is_supported() {
        return Err(upm::why_unsupported());
    }
    let pids = match (target.pid, target.cgroup) {
        (Some(pid), _) => vec![pid],
        (None, Some(cgroup)) => upm::cgroup_pids(&cgroup)?,
        (None, None) => unreachable!("clap requires one target"),
    };
    let from_cgroup = pids.len() != 1 || target.pid.is_none();
    for pid in pids {
        match upm::advise_process(pid, range.clone().map(|r| vec![r]), advice) {
            Ok(bytes) => println!("pid {pid}: {} KiB advised", bytes / 1024),
            // A process of the cgroup may exit while the others are advised.
            Err(Error::NoSuchProcess) if from_cgroup => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Status { json } => {
            print_status(&upm::stats()?, None, json);
            Ok(())
        }
        Command::Watch { interval, count } => watch(interval, count),
        Command::Advise { target, range } => advise(target, range, Advice::Merge),
        Command::Unmerge { target, range } => advise(target, range, Advice::Unmerge),
        Command::Show { pid, json } => show(pid, json),
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
        Command::Metrics => {
            print!("{}", upm::prometheus_text(&upm::stats()?));
            Ok(())
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
        let message = e.to_string().replace('\\', "\\\\").replace('"', "\\\"");
        println!("{{\"error\": \"{message}\", \"exit_status\": {status}}}");
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
        Command::Status { json: true } | Command::Show { json: true, .. }
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}
