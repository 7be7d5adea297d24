//! Maps on real channels over loopback sockets.

// Tests report figures (the state transfer's time) on stderr; indices are small.
#![allow(clippy::print_stderr, clippy::cast_possible_truncation)]

mod corpus;
mod lazy;
mod replicated;
mod support;
