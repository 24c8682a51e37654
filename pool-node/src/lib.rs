//! Strata's pool node: the durable tier hosts write through.
//!
//! Today it serves each host's NVLOG ([`nvlog`]) over mutually
//! authenticated TLS ([`server`]); [`client`] is the host's side.

pub mod client;
pub mod nvlog;
pub mod server;
