//! Strata's pool node: the durable tier hosts write through.
//!
//! It serves each host's NVLOG ([`nvlog`]) and the erasure-coded stripes
//! of the drive pool ([`stripes`] over [`drives`], found through the redb
//! [`catalog`]) over mutually authenticated TLS ([`server`]), and which
//! host holds each vdisk ([`vdisk_leases`]); [`client`]
//! is the host's side; [`process`] runs a pool node as a child process
//! for harnesses.

pub mod catalog;
pub mod client;
pub mod drives;
pub mod nvlog;
pub mod process;
pub mod server;
pub mod stripes;
pub mod vdisk_leases;
