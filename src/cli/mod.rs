//! Command-line front ends, one file per command family: [`node`] (`oncekv node`,
//! the default, and `oncekv serve`: a node process's start-up), [`client`]
//! (`oncekv client`), [`cluster`] (`oncekv cluster`), [`test`](mod@test) (`oncekv test` and
//! `oncekv demo`), [`check`] (`oncekv check`), [`sim`] (`oncekv sim`) and
//! [`completions`] (`oncekv completions`); [`exit`] holds the exit statuses of
//! them all. A front end parses what clap
//! has not (durations, seeds, output folders), calls the product (`tcp`,
//! `maelstrom`) or the tools, and writes its results to the output the binary
//! hands in (`&mut dyn Write`), never to stdout itself; errors and notes go to
//! stderr. No product logic lives here, and nothing else in the library imports
//! `cli`: it is the binary's, split out of `main.rs` so that `main.rs` only
//! dispatches.
//!
//! This file holds what the front ends share: logging set-up, a runtime for the
//! async commands, and the handling of a reader that went away (`| head -1`).

pub mod check;
pub mod client;
pub mod cluster;
pub mod completions;
pub mod exit;
pub mod node;
pub mod sim;
pub mod test;

use std::error::Error;
use std::io;

use crate::log_file::CappedLog;

/// The log filter when `ONCEKV_LOG` is unset or invalid: oncekv's own lines
/// from INFO (the node's story: elections, terms, leaders, membership,
/// snapshots, GC), other crates' from WARN, and openraft's only at ERROR. Its
/// WARNs are routine under faults (every RPC to an unreachable peer, every
/// heartbeat that missed its deadline: hundreds of lines per failover) and what
/// they would tell is in oncekv's own lines; `ONCEKV_LOG=warn,oncekv=info` shows
/// them again.
pub const DEFAULT_LOG_FILTER: &str = "warn,openraft=error,oncekv=info";

/// Sets up `tracing` for the process: to stderr (stdout carries only protocol
/// lines or a command's output), or to a TCP node's log file. The filter is
/// `ONCEKV_LOG` (`EnvFilter` syntax), [`DEFAULT_LOG_FILTER`] if unset or invalid.
pub fn init_logging(file: Option<CappedLog>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONCEKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match file {
        Some(f) => builder.with_writer(std::sync::Arc::new(f)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}

/// Runs `f` to completion on a new multi-threaded runtime (the async commands:
/// `client`, `cluster`, `bench-cluster`).
pub fn block_on<F: std::future::Future>(f: F) -> io::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Output nobody reads any more (a closed pipe) is not an error for a command
/// whose exit status is a verdict: the verdict stands.
pub(crate) fn unread_is_fine(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Whether `e`, or an error it was caused by, comes from writing to a closed pipe.
pub fn is_broken_pipe(e: &(dyn Error + 'static)) -> bool {
    std::iter::successors(Some(e), |&cause| cause.source()).any(|cause| {
        let io = cause.downcast_ref::<io::Error>().or_else(|| {
            match cause.downcast_ref::<crate::tcp::TcpError>() {
                Some(crate::tcp::TcpError::Io(e)) => Some(e),
                _ => None,
            }
        });
        io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::is_broken_pipe;
    use crate::tcp::TcpError;
    use anyhow::Context;
    use std::io;

    fn pipe() -> io::Error {
        io::Error::from(io::ErrorKind::BrokenPipe)
    }

    #[test]
    fn a_closed_pipe_is_found_however_it_is_wrapped() {
        let plain = anyhow::Error::from(pipe());
        assert!(is_broken_pipe(&*plain));
        let tcp = anyhow::Error::from(TcpError::Io(pipe()));
        assert!(is_broken_pipe(&*tcp));
        let in_context: anyhow::Result<()> = Err(pipe()).context("writing the banner");
        assert!(is_broken_pipe(&*in_context.unwrap_err()));
        let tcp_in_context: anyhow::Result<()> =
            Err(TcpError::Io(pipe())).context("writing the banner");
        assert!(is_broken_pipe(&*tcp_in_context.unwrap_err()));
    }

    #[test]
    fn other_errors_are_not_a_closed_pipe() {
        let refused = anyhow::Error::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(!is_broken_pipe(&*refused));
        let args = anyhow::Error::from(TcpError::Args("bad --peers".into()));
        assert!(!is_broken_pipe(&*args));
        assert!(!is_broken_pipe(&*anyhow::anyhow!("Broken pipe")));
    }
}
