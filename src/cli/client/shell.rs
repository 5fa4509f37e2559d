//! `oncekv client shell`: an interactive loop over one session. It opens the
//! session, numbers each write, cas and add itself (seq 1, 2, ...), prints each
//! reply with its seq, and closes the session when it ends (`quit`, or the end of
//! stdin). `retry` sends the last request again **with the same seq**: the
//! session table answers it from its cache, and it does not run again, which is
//! exactly-once at work (an `add` retried returns the same total and the counter
//! moves once).
//!
//! Reads commands from stdin line by line, a terminal or not (a script piped in
//! works the same; the prompt is shown only on a terminal).
//!
//! A reply is marked `(from the session cache)` when it answers a retry of a seq
//! that had already got a definite answer: such a seq has run (or was refused
//! definitely), and the state machine answers a seq that ran from its cache
//! (docs/sessions.md, rule 3). The node does not mark its replies, so a retry the
//! client makes on its own (after a lost reply) is not marked.

use std::io::{IsTerminal, Write};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{check_wide_integers, json_arg, no_reply_text, output_failed, reply_fits, write_line};
use crate::cli::exit;
use crate::protocol::Reply;
use crate::tcp::{Client, ClientError};

/// The shell's `help`.
const HELP: &str = "\
commands (keys and values are JSON if they parse, else strings):
  read KEY              linearizable read (no seq)
  write KEY VALUE       VALUE is the rest of the line
  cas KEY FROM TO       compare-and-set
  add KEY DELTA         add an integer to a counter
  retry                 send the last request again with the same seq
  help                  this text
  quit                  close the session and leave (also: exit, end of input)";

/// The last request sent: its body (without session fields), its seq (none for a
/// read) and the definite reply it got, if it got one.
struct Last {
    body: Value,
    text: String,
    seq: Option<u64>,
    reply: Option<Reply>,
}

/// Runs the shell on stdin; returns the exit status: 0 once it ended and closed
/// its session, 2 if it could not open one (no definite answer), 1 if opening it
/// was refused.
pub async fn run(client: &mut Client, out: &mut dyn Write) -> i32 {
    let id = match client.open_session().await {
        Ok(id) => id,
        Err(e @ ClientError::Deadline { .. }) => {
            crate::stderr_line!("error: cannot open a session: {e}");
            return exit::UNKNOWN;
        }
        Err(e) => {
            crate::stderr_line!("error: cannot open a session: {e}");
            return exit::FAILED;
        }
    };
    let tty = std::io::stdin().is_terminal();
    let opened = format!(
        "session {id} opened at {}; its requests are numbered from seq 1. Type help for the commands.",
        client.target()
    );
    if let Err(e) = write_line(out, opened) {
        close(client, &id, None).await;
        return output_failed(e, exit::OK);
    }
    // Read as bytes: a line that is not UTF-8 is reported and skipped, not the
    // end of the shell.
    let mut lines = BufReader::new(tokio::io::stdin()).split(b'\n');
    let mut last: Option<Last> = None;
    loop {
        if tty {
            let _ = write!(out, "oncekv> ").and_then(|()| out.flush());
        }
        let line = match lines.next_segment().await {
            Ok(Some(bytes)) => match String::from_utf8(bytes) {
                Ok(line) => line,
                Err(e) => {
                    crate::stderr_line!(
                        "error: a line that is not UTF-8 (byte {}), skipped",
                        e.utf8_error().valid_up_to()
                    );
                    continue;
                }
            },
            Ok(None) => break,
            Err(e) => {
                crate::stderr_line!("error: reading stdin: {e}");
                break;
            }
        };
        let line = line.trim();
        let written = match line.split_whitespace().next() {
            None => Ok(()),
            Some("quit" | "exit") => break,
            Some("help") => write_line(out, HELP),
            Some("retry") => match last.as_mut() {
                None => {
                    crate::stderr_line!("error: nothing to retry yet");
                    Ok(())
                }
                Some(last) => retry(client, &id, last, out).await,
            },
            Some(_) => match parse(line) {
                Err(e) => {
                    crate::stderr_line!("error: {e} (type help for the commands)");
                    Ok(())
                }
                Ok(body) => {
                    let sent = send(client, body, line.to_string(), out).await;
                    match sent {
                        Ok(l) => {
                            last = Some(l);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            },
        };
        if let Err(e) = written {
            close(client, &id, None).await;
            return output_failed(e, exit::OK);
        }
    }
    close(client, &id, Some(out)).await;
    exit::OK
}

/// One command line as a request body, or why not.
fn parse(line: &str) -> Result<Value, String> {
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args: Vec<&str> = rest.split_whitespace().collect();
    let body = match (cmd, args.as_slice()) {
        ("read", [key]) => json!({"type": "read", "key": json_arg(key)}),
        ("write", [key, _, ..]) => {
            let value = rest.trim_start()[key.len()..].trim();
            check_wide_integers(&[key, value])?;
            return Ok(json!({"type": "write", "key": json_arg(key), "value": json_arg(value)}));
        }
        ("cas", [key, from, to]) => {
            check_wide_integers(&[key, from, to])?;
            json!({"type": "cas", "key": json_arg(key), "from": json_arg(from), "to": json_arg(to)})
        }
        ("add", [key, delta]) => {
            let delta: i64 = delta
                .parse()
                .map_err(|e| format!("add: the delta {delta:?} is not a 64-bit integer: {e}"))?;
            json!({"type": "add", "key": json_arg(key), "delta": delta})
        }
        ("read" | "write" | "cas" | "add", _) => {
            return Err(format!("{cmd}: wrong number of arguments"));
        }
        _ => return Err(format!("unknown command {cmd:?}")),
    };
    check_wide_integers(&[args[0]])?;
    Ok(body)
}

/// Sends a new request (a mutation under the next seq) and prints its reply.
async fn send(
    client: &mut Client,
    body: Value,
    text: String,
    out: &mut dyn Write,
) -> std::io::Result<Last> {
    let is_read = body["type"] == "read";
    let seq = if is_read {
        None
    } else {
        client.session().map(|(_, seq)| seq)
    };
    let result = if is_read {
        client.request(body.clone()).await
    } else {
        client.mutate(body.clone()).await
    };
    let mut last = Last {
        body,
        text,
        seq,
        reply: None,
    };
    let tag = seq.map_or_else(|| "[read]".to_string(), |s| format!("[seq {s}]"));
    match result {
        Ok(reply) => {
            write_line(out, format!("{tag} {reply}"))?;
            last.reply = Some(reply);
        }
        Err(e) => {
            let hint = if matches!(e, ClientError::Usage(_)) {
                " (not sent: it did not run)"
            } else if seq.is_some() {
                " (it may or may not have run; type retry to send it again with the same seq)"
            } else {
                ""
            };
            write_line(out, format!("{tag} {}{hint}", no_reply_text(&e)))?;
        }
    }
    Ok(last)
}

/// Sends the last request again, a mutation with its own seq, and prints the reply.
async fn retry(
    client: &mut Client,
    id: &str,
    last: &mut Last,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let Some(seq) = last.seq else {
        let result = client.request(last.body.clone()).await;
        let line = match result {
            Ok(reply) => format!("[read, again] {reply}"),
            Err(e) => format!("[read, again] {}", no_reply_text(&e)),
        };
        return write_line(out, line);
    };
    let next = client.session().map_or(seq + 1, |(_, n)| n);
    client.set_session(id.to_string(), seq);
    let result = client.mutate(last.body.clone()).await;
    client.set_session(id.to_string(), next);
    let tag = format!("[seq {seq}, retried: {}]", last.text);
    let line = match result {
        Ok(reply) => {
            let kind = last.body["type"].as_str().unwrap_or_default();
            let note = match &last.reply {
                Some(first) if *first == reply => {
                    "  (from the session cache: seq ".to_string()
                        + &seq.to_string()
                        + " already ran; it did not run again)"
                }
                _ if !reply_fits(kind, &reply) => {
                    "  (another request's cached reply: it did not run)".to_string()
                }
                _ => String::new(),
            };
            let line = format!("{tag} {reply}{note}");
            last.reply.get_or_insert(reply);
            line
        }
        Err(e) => format!("{tag} {}", no_reply_text(&e)),
    };
    write_line(out, line)
}

/// Closes the session; says so on `out` when given, else on stderr if it fails.
async fn close(client: &mut Client, id: &str, out: Option<&mut dyn Write>) {
    let said = match client.close_session().await {
        Ok(Reply::CloseSessionOk) => format!("session {id} closed"),
        Ok(other) => format!("closing session {id}: {other}"),
        Err(e) => format!("session {id} may still be open (it expires when idle): {e}"),
    };
    match out {
        Some(out) => {
            let _ = write_line(out, said);
        }
        None => crate::stderr_line!("{said}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn commands_parse_into_requests() {
        assert_eq!(
            parse("read x").unwrap(),
            json!({"type": "read", "key": "x"})
        );
        assert_eq!(
            parse("write k {\"a\": [1, 2]}").unwrap(),
            json!({"type": "write", "key": "k", "value": {"a": [1, 2]}})
        );
        assert_eq!(
            parse("write k hello world").unwrap(),
            json!({"type": "write", "key": "k", "value": "hello world"})
        );
        assert_eq!(
            parse("cas 1 2 3").unwrap(),
            json!({"type": "cas", "key": 1, "from": 2, "to": 3})
        );
        assert_eq!(
            parse("add hits -4").unwrap(),
            json!({"type": "add", "key": "hits", "delta": -4})
        );
        for bad in [
            "add k 1.5",
            "add k",
            "read",
            "cas a b",
            "write k",
            "frobnicate x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("write k 123456789012345678901234567890").is_err());
    }
}
