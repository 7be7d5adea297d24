//! The channel over real sockets on loopback.

// A skipped test says why on stderr.
#![allow(clippy::print_stderr)]

mod support;

mod backpressure;
mod cluster;
mod delivery;
mod failures;
mod forged;
mod malformed;
mod modes;
mod order;
mod rpc;
mod truth;
