//! Maps on real channels over loopback sockets.

mod corpus;
mod lazy;
mod replicated;
mod support;
