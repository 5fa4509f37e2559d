//! Command-line front ends that print their results: `oncekv client` ([`client`]) and
//! `oncekv cluster` ([`cluster`]). They use the TCP transport's public API
//! ([`crate::tcp::Client`], `tcp::serve`) and write to an output handed in by the
//! binary (`&mut dyn Write`), never to stdout themselves; nothing else in the
//! library imports them.

pub mod client;
pub mod cluster;
