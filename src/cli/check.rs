//! `oncekv check`: the checker's front end. It reads a history file through
//! [`crate::tools::check::check_file`] and writes the verdict (text or JSON) to the
//! output handed in; its exit status is the verdict's (0 valid, 1 invalid,
//! 2 unknown), [`EXIT_BAD_INPUT`] or bad usage ([`super::exit::CHECK`]). The
//! checking itself is `tools::check`'s; this file only parses arguments and prints.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::unread_is_fine;
use crate::tools::check::{CheckOptions, NullReads, check_file};

/// Arguments of `oncekv check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The history file (JSON lines, as the harness writes it).
    pub history: PathBuf,
    /// Give up (verdict unknown) after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub time_limit: f64,
    /// Print the verdict as JSON (results.json's `linearizable` and
    /// `exactly_once` objects) instead of text.
    #[arg(long)]
    pub json: bool,
    /// An ok read of null must see a missing key. Without it, as Knossos (so
    /// Maelstrom), a read of null is legal in any state.
    #[arg(long)]
    pub strict_null_reads: bool,
}

/// Exit status of `oncekv check` for an unreadable or malformed history (the
/// error names the line: times that go backwards, a completion whose `f` or
/// `key` differs from its invoke's, ...).
pub const EXIT_BAD_INPUT: i32 = super::exit::BAD_INPUT;

/// `oncekv check`: the verdict on `out`, as text or JSON; returns its exit status.
pub fn run(args: &CheckArgs, out: &mut dyn Write) -> io::Result<i32> {
    let Ok(time_limit) = Duration::try_from_secs_f64(args.time_limit) else {
        crate::stderr_line!("error: --time-limit must be a non-negative number of seconds");
        return Ok(super::exit::USAGE);
    };
    let null_reads = NullReads::from_strict_flag(args.strict_null_reads);
    let opts = CheckOptions {
        time_limit,
        null_reads,
    };
    let started = Instant::now();
    match check_file(&args.history, &opts) {
        Err(e) => {
            crate::stderr_line!("error: {e}");
            Ok(EXIT_BAD_INPUT)
        }
        Ok(report) => {
            let written = if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                )
            } else {
                write!(out, "{}", report.render()).and_then(|()| {
                    writeln!(
                        out,
                        "{} in {:.3} s",
                        report.valid().word(),
                        started.elapsed().as_secs_f64()
                    )
                })
            };
            unread_is_fine(written.and_then(|()| out.flush()))?;
            Ok(report.valid().exit_code())
        }
    }
}
