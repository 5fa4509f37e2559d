//! The `test` object of `results.json`: every parameter of the run, as resolved,
//! and the `oncekv test` command line that runs it again (Jepsen keeps the whole
//! test map beside its results for the same reason).
//!
//! Data only: the harness fills it in (`tools::harness::store`).

use serde::{Deserialize, Serialize};

/// Every parameter of one `oncekv test` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestParams {
    /// The test's name, as Maelstrom names it: the workload (`lin-kv`).
    pub name: String,
    /// The workload (`lin-kv`, `exactly-once`).
    pub workload: String,
    /// The node binary, as given.
    pub bin: String,
    /// Arguments passed to every node process.
    pub args: Vec<String>,
    /// The node ids, in `init`'s order.
    pub nodes: Vec<String>,
    /// Workers.
    pub concurrency: usize,
    /// Requests per second across all workers.
    pub rate: f64,
    /// Seconds of op issuing.
    pub time_limit_s: f64,
    /// Mean node-to-node latency in ms.
    pub latency_ms: u64,
    /// Its distribution (`constant`, `uniform`, `exponential`).
    pub latency_dist: String,
    /// Faults (`partition`, `kill`, ...); empty for none.
    pub nemesis: Vec<String>,
    /// Mean seconds between nemesis operations.
    pub nemesis_interval_s: f64,
    /// Probability a node-to-node message is lost.
    pub p_loss: f64,
    /// Probability a node-to-node message is delivered twice.
    pub p_dup: f64,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// `--availability`: the fraction of ok ops required, if any.
    #[serde(default)]
    pub availability: Option<f64>,
    /// `--strict-null-reads`: ok reads of null judged strictly.
    #[serde(default)]
    pub strict_null_reads: bool,
    /// `--strict-protocol`: any protocol violation makes the run invalid.
    #[serde(default)]
    pub strict_protocol: bool,
    /// `--read-on-bad-lines`: nodes were read on after a bad stdout line.
    #[serde(default)]
    pub read_on_bad_lines: bool,
    /// When the run started, UTC (`2026-12-02T07:15:44Z`).
    pub started: String,
    /// The working directory the run was started in (relative `bin` and `args`
    /// are relative to it).
    pub cwd: String,
    /// The command that runs the same test again, one argument per element.
    pub command: Vec<String>,
    /// The same, quoted for a POSIX shell.
    pub command_line: String,
}

/// Quotes `words` for a POSIX shell: a word of only safe characters as it is,
/// any other in single quotes.
pub fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        let words = ["oncekv", "--bin", "my node", "it's", ""].map(String::from);
        assert_eq!(shell_line(&words), r#"oncekv --bin 'my node' 'it'\''s' ''"#);
    }
}
