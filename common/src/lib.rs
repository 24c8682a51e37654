//! Code shared by Strata's daemons and tools.
//!
//! For now this is the host daemon's configuration schema ([`config`]); the
//! frame codec, wire protocol and TLS setup join it as the pool arrives.

pub mod config;
