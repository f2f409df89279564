//! upmctl: look at and steer UPM from the command line.
//!
//!   upmctl status [--json]          counters and tunables
//!   upmctl watch [--interval SECS]  refreshing view of the counters
//!   upmctl advise --pid PID [--range START-END]   merge a running process's memory
//!   upmctl unmerge --pid PID [--range START-END]  give it private copies again
//!   upmctl show --pid PID           how much of a process's memory is merged

use clap::{Parser, Subcommand};
use std::{ops::Range, process::ExitCode, thread, time::Duration};
use upm::{Error, MADV_UPM_MERGEABLE, MADV_UPM_UNMERGEABLE};

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
    /// Print the counters every few seconds until interrupted.
    Watch {
        #[arg(long, default_value_t = 2)]
        interval: u64,
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
    /// Show how much of a process's anonymous memory is merged.
    Show {
        #[arg(long)]
        pid: i32,
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

fn print_status(json: bool) -> Result<(), Error> {
    let stats = upm::stats()?;
    if json {
        let fields: Vec<String> = stats.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        println!("{{{}}}", fields.join(", "));
    } else {
        let page_kib = 4;
        let saved = stats.get("pages_sharing").copied().unwrap_or(0) * page_kib;
        println!("UPM: {} KiB saved by merging", saved);
        for (k, v) in &stats {
            println!("  {k:<28} {v}");
        }
    }
    Ok(())
}

fn advise(pid: i32, range: Option<Range<usize>>, advice: i32) -> Result<(), Error> {
    if !upm::is_supported() {
        return Err(Error::NotSupported);
    }
    let bytes = upm::advise_process(pid, range.map(|r| vec![r]), advice)?;
    println!("pid {pid}: {} KiB advised", bytes / 1024);
    Ok(())
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Status { json } => print_status(json),
        Command::Watch { interval } => loop {
            print!("\x1b[2J\x1b[H");
            print_status(false)?;
            thread::sleep(Duration::from_secs(interval.max(1)));
        },
        Command::Advise { pid, range } => advise(pid, range, MADV_UPM_MERGEABLE),
        Command::Unmerge { pid, range } => advise(pid, range, MADV_UPM_UNMERGEABLE),
        Command::Show { pid } => {
            let usage = upm::process_usage(pid)?;
            println!(
                "pid {pid}: anonymous {} KiB, merged {} KiB ({:.0}%), proportional {} KiB",
                usage.anon_kib,
                usage.merged_kib,
                100.0 * usage.merged_kib as f64 / usage.anon_kib.max(1) as f64,
                usage.pss_anon_kib
            );
            Ok(())
        }
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
