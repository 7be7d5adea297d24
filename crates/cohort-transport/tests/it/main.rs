//! Transport over real sockets on loopback.

// A skipped test says why on stderr.
#![allow(clippy::print_stderr)]

mod support;

mod basics;
mod hostile;
mod multicast;
mod replay;
mod runs;
