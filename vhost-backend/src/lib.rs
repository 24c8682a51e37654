//! The part of strata-host that is a library: the parser of virtio-blk
//! requests, which the `strata-host` binary uses on every request and the
//! fuzz targets (`vhost-backend/fuzz`) exercise on their own.

pub mod request;
