//! upmctl: look at and steer UPM from the command line.
//!
//!   upmctl status [--json]          counters and tunables
//!   upmctl watch [--interval SECS] [--count N]   refreshing view of the counters
//!   upmctl advise --pid PID [--range START-END]   merge a running process's memory
//!   upmctl unmerge --pid PID [--range START-END]  give it private copies again
//!   upmctl show --pid PID [--json]  how much of a process's memory is merged

use clap::{Parser, Subcommand};
use std::{collections::BTreeMap, ops::Range, process::ExitCode, thread, time::Duration};
use upm::{Advice, Error};

#[derive(Parser)]
#[command(version, about = "Inspect and steer UPM (user-guided page merging)")]
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
        #[arg(long)]
        pid: i32,
        /// START-END, hexadecimal addresses as in /proc/PID/maps.
        #[arg(long, value_parser = parse_range)]
        range: Option<Range<usize>>,
    },
    /// Give a process's merged pages private copies again.
    Unmerge {
        #[arg(long)]
        pid: i32,
        #[arg(long, value_parser = parse_range)]
        range: Option<Range<usize>>,
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

fn show(pid: i32, json: bool) -> Result<(), Error> {
    let usage = upm::process_usage(pid)?;
    let scan = upm::scan_pages(pid)?;
    if json {
        println!(
            "{}",
            json_object([
                ("pid", pid as u64),
                ("present_pages", scan.present),
                ("merged_pages", scan.merged),
                ("merged_frames", scan.merged_frames),
                ("zero_pages", scan.zero),
                ("anon_kib", usage.anon_kib),
                ("ksm_kib", usage.merged_kib),
                ("pss_anon_kib", usage.pss_anon_kib),
            ])
        );
        return Ok(());
    }
    println!(
        "pid {pid}: {} of {} KiB of private memory merged ({:.0}%), into {} KiB of frames",
        scan.merged * PAGE_KIB,
        scan.present * PAGE_KIB,
        100.0 * scan.merged as f64 / scan.present.max(1) as f64,
        scan.merged_frames * PAGE_KIB
    );
    println!(
        "  zero-page mappings {} KiB; smaps: anonymous {} KiB, KSM {} KiB, Pss_Anon {} KiB",
        scan.zero * PAGE_KIB,
        usage.anon_kib,
        usage.merged_kib,
        usage.pss_anon_kib
    );
    Ok(())
}

fn advise(pid: i32, range: Option<Range<usize>>, advice: Advice) -> Result<(), Error> {
    if !upm::is_supported() {
        return Err(upm::why_unsupported());
    }
    let bytes = upm::advise_process(pid, range.map(|r| vec![r]), advice)?;
    println!("pid {pid}: {} KiB advised", bytes / 1024);
    Ok(())
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Status { json } => {
            print_status(&upm::stats()?, None, json);
            Ok(())
        }
        Command::Watch { interval, count } => watch(interval, count),
        Command::Advise { pid, range } => advise(pid, range, Advice::Merge),
        Command::Unmerge { pid, range } => advise(pid, range, Advice::Unmerge),
        Command::Show { pid, json } => show(pid, json),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upmctl: {e}");
            ExitCode::FAILURE
        }
    }
}
