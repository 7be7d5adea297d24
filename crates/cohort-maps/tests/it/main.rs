//! Maps on real channels over loopback sockets.

mod lazy;
mod replicated;
mod support;
