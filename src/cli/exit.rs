//! Exit statuses: one scheme for every subcommand, and each subcommand's part of
//! it as the text its `--help` ends with. The README's table ("Exit status") says
//! the same; `tests/cli_exit_codes.rs` runs a case for each row.
//!
//! The scheme: 0 success; 1 a definite "no" (an invalid history, a failed seed, a
//! definite error reply, an unhealthy endpoint, a command that failed after its
//! arguments were accepted); 2 no definite answer (verdict unknown, no reply
//! before the deadline); 3 an input file that cannot be read (`check`); 254 bad
//! usage, refused before anything was done; 255 a run that ended without a
//! verdict. 0, 1, 2, 254 and 255 are Maelstrom's (and Jepsen's) codes for
//! `test`, so a script written for `maelstrom test` reads `oncekv test` the same.

/// Success: an ok reply, a valid history, every seed passed, a clean stop.
pub const OK: i32 = 0;
/// A definite "no": invalid, a definite error reply, a failed seed or start.
pub const FAILED: i32 = 1;
/// No definite answer: the verdict is unknown, or no reply came before the deadline.
pub const UNKNOWN: i32 = 2;
/// `check`: the history cannot be read or is malformed.
pub const BAD_INPUT: i32 = 3;
/// Bad usage (a flag or argument refused): nothing was done.
pub const USAGE: i32 = 254;
/// The run ended without a verdict (a node crashed, an I/O error).
pub const NO_VERDICT: i32 = 255;

/// `oncekv client`'s `--help` footer.
pub const CLIENT: &str = "\
Exit status:
  0    ok: an ok reply (status, members: a node answered; health: every endpoint is healthy)
  1    a definite error reply (or the final 1000, 1001); health: an endpoint is unhealthy
  2    no definite answer before --deadline: the operation may or may not have happened
  254  bad usage (a flag, argument, --peers or ONCEKV_PEERS refused); nothing was sent";

/// `oncekv check`'s `--help` footer.
pub const CHECK: &str = "\
Exit status:
  0    valid
  1    invalid
  2    unknown (the search gave up at --time-limit)
  3    the history cannot be read or is malformed (the error names the line)
  254  bad usage
  255  no verdict (an error while checking or printing)";

/// `oncekv test`'s `--help` footer.
pub const TEST: &str = "\
Exit status (Maelstrom's and Jepsen's codes):
  0    valid
  1    invalid
  2    unknown
  254  bad usage (a flag refused)
  255  no verdict: the test did not run to the end (a node crashed or never answered init)";

/// `oncekv demo`'s `--help` footer.
pub const DEMO: &str = "\
Exit status (the worse of the two workloads):
  0    valid
  1    invalid
  2    unknown
  254  bad usage
  255  no verdict: the test did not run to the end";

/// `oncekv sim`'s `--help` footer.
pub const SIM: &str = "\
Exit status:
  0    every seed passed
  1    a seed failed (printed with the command that replays it)
  254  bad usage
  255  no verdict: the simulator itself failed";

/// `oncekv serve`'s `--help` footer.
pub const SERVE: &str = "\
Exit status:
  0    stopped by Ctrl-C or SIGTERM, every accepted request answered
  1    did not start (an address in use, a damaged or foreign data dir, ...) or
       stopped on an error (a failed log write)
  254  bad usage (a flag, --id, --listen, --peers or --data-dir refused before anything
       was created)";

/// `oncekv cluster`'s `--help` footer.
pub const CLUSTER: &str = "\
Exit status:
  0    stopped by Ctrl-C or SIGTERM (or its output's reader went away)
  1    refused to start (a port taken, a node dir in use, ...), a node did not
       start, or every node exited
  254  bad usage (a flag refused)";

/// `oncekv bench`'s and `oncekv bench-cluster`'s `--help` footer.
pub const BENCH: &str = "\
Exit status:
  0    measured and printed
  1    the benchmark failed (the error says why)
  254  bad usage (a flag refused)";

/// `oncekv completions`'s `--help` footer.
pub const COMPLETIONS: &str = "\
Exit status:
  0    the script was printed
  254  bad usage (an unknown shell)";

/// `oncekv node`'s `--help` footer.
pub const NODE: &str = "\
Exit status:
  0    stdin closed and every accepted request was answered
  1    a bad ONCEKV_* setting, or stopped on an error (a failed log write)
  254  bad usage";
