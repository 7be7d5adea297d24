//! Real sockets on loopback: several membership services in one process.

// A skipped test says why on stderr.
#![allow(clippy::print_stderr)]

mod dns;
mod multicast;
mod recovery;
mod support;
