//! The host's link to the pool node: its NVLOG, written before a write is
//! acknowledged and replayed when a host starts.
//!
//! The link is synchronous for its one caller, the flash store's flusher:
//! [`PoolLink::append`] returns once the pool has made the batch durable.
//! A lost connection (the pool restarting, a network blip) is not an error:
//! the link reconnects, asks the pool how far its log got, and sends again
//! only what the pool does not hold, so the guest sees a slow write, never a
//! failed one. Only an answer the pool gives on purpose (a sequence clash,
//! a batch it will never take, a lease another strata-host took over)
//! fails the append.
//!
//! Leases: the store's first link takes the host's lease
//! ([`PoolLink::take_lease`]) before it replays anything, which fences every
//! earlier strata-host of this host; the store's other links join that lease
//! ([`PoolLink::join`]), and every reconnection rejoins it. Once a newer
//! strata-host takes over, the pool refuses this one's appends, truncations
//! and commits, and the link reports [`Fenced`] instead of retrying.
//!
//! Vdisk leases: a claim ([`PoolLink::claim_vdisk`]) gives this host the
//! vdisk's lease, taking it from another host if need be, and every append
//! names the vdisks it changes under their lease epochs; once another host
//! claims one of them, the pool refuses such an append and the link
//! reports [`Moved`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::ClientConfig;
use strata_common::config::PoolSettings;
use strata_common::pki::ClusterDir;
use strata_common::wire::{code, Request, Response, VdiskTicket};
use strata_pool::client::PoolClient;
use tokio::runtime::Runtime;

/// First wait before reconnecting to the pool; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an append waiting for the pool checks whether to give up.
const ABANDON_CHECK: Duration = Duration::from_millis(200);

/// This strata-host's lease was taken over by a newer one: nothing it
/// sends can change the host's state any more.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool} fenced host {host}: another strata-host took over its vdisks ({message})")]
pub struct Fenced {
    /// The pool.
    pub pool: SocketAddr,
    /// This host's name.
    pub host: String,
    /// What the pool said.
    pub message: String,
}

/// Another host took over vdisks an append changes: the pool refused the
/// append whole.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool} refused an append of host {host}: vdisks {vdisks:?} moved to another host")]
pub struct Moved {
    /// The pool.
    pub pool: SocketAddr,
    /// This host's name.
    pub host: String,
    /// The vdisks this host no longer holds.
    pub vdisks: Vec<String>,
    /// The refused record's payload, to send again without their updates.
    pub payload: Vec<u8>,
}

/// This host's lease of a vdisk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiskClaim {
    /// The lease's epoch, which appends changing the vdisk name.
    pub epoch: u64,
    /// The host whose state holds the vdisk's content, to adopt before
    /// serving it; `None` when this host's own state has it.
    pub adopt_from: Option<String>,
}

/// The pool answered a request with an error (other than fencing).
#[derive(Debug, thiserror::Error)]
#[error("pool {pool} refused a request of host {host} (code {code}): {message}")]
pub struct Refused {
    /// The pool.
    pub pool: SocketAddr,
    /// This host's name.
    pub host: String,
    /// The error code ([`strata_common::wire::code`]).
    pub code: u16,
    /// What the pool said.
    pub message: String,
}

/// An open connection to the pool's NVLOG for this host.
pub struct PoolLink {
    runtime: Runtime,
    tls: Arc<ClientConfig>,
    config: PoolSettings,
    client: Option<PoolClient>,
    /// The host's lease this link acts under (0: none taken yet).
    epoch: u64,
    /// The sequence number the next record gets.
    next_seq: u64,
}

impl PoolLink {
    /// Connects to the pool (failing at once if it cannot: a host should not
    /// start without its log).
    pub fn connect(config: &PoolSettings) -> anyhow::Result<PoolLink> {
        let cluster = ClusterDir::new(&config.cluster_dir);
        let tls =
            strata_common::tls::client_config(&cluster, &config.host_name).with_context(|| {
                format!(
                    "host {} in cluster directory {}",
                    config.host_name,
                    config.cluster_dir.display()
                )
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the pool link's runtime")?;
        let client = runtime
            .block_on(PoolClient::connect(config.address, tls.clone()))
            .with_context(|| format!("host {}", config.host_name))?;
        Ok(PoolLink {
            runtime,
            tls,
            config: config.clone(),
            client: Some(client),
            epoch: 0,
            next_seq: 1,
        })
    }

    /// Takes a new lease of this host at the pool, fencing every earlier
    /// strata-host that served it, and returns its epoch. Call before the
    /// log is replayed: from here on only this lease can extend it.
    pub fn take_lease(&mut self) -> anyhow::Result<u64> {
        let epoch = self.open_lease(0)?;
        tracing::info!(pool = %self.config.address, host = %self.config.host_name, epoch,
            "took the host's lease");
        Ok(epoch)
    }

    /// Another link of this host, on its own connection, under this link's
    /// lease.
    pub fn join(&self) -> anyhow::Result<PoolLink> {
        let mut link = PoolLink::connect(&self.config)?;
        if self.epoch != 0 {
            link.open_lease(self.epoch)?;
        }
        Ok(link)
    }

    /// Binds the current connection to lease `epoch` (0: a new one).
    fn open_lease(&mut self, epoch: u64) -> anyhow::Result<u64> {
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| anyhow!("not connected to pool {}", self.config.address))?;
        let response = self
            .runtime
            .block_on(client.call(&Request::Open { epoch }))?;
        match response {
            Response::Opened { epoch } => {
                self.epoch = epoch;
                Ok(epoch)
            }
            Response::Error {
                code: code::FENCED,
                message,
            } => Err(self.fenced(message).into()),
            other => Err(anyhow!(
                "pool {} answered a lease request of host {} with {other:?}",
                self.config.address,
                self.config.host_name
            )),
        }
    }

    fn fenced(&self, message: String) -> Fenced {
        Fenced {
            pool: self.config.address,
            host: self.config.host_name.clone(),
            message,
        }
    }

    /// Connects again if the connection was lost, bound to this link's
    /// lease if it holds one.
    fn ensure_connected(&mut self) -> anyhow::Result<()> {
        if self.client.is_some() {
            return Ok(());
        }
        let client = self
            .runtime
            .block_on(PoolClient::connect(self.config.address, self.tls.clone()))?;
        self.client = Some(client);
        if self.epoch != 0 {
            if let Err(e) = self.open_lease(self.epoch) {
                self.client = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The connection, which [`PoolLink::ensure_connected`] made.
    fn client(
        client: &mut Option<PoolClient>,
        pool: SocketAddr,
    ) -> anyhow::Result<&mut PoolClient> {
        client
            .as_mut()
            .ok_or_else(|| anyhow!("not connected to pool {pool}"))
    }

    /// The pool's address.
    pub fn address(&self) -> SocketAddr {
        self.config.address
    }

    /// This host's name at the pool.
    pub fn host_name(&self) -> &str {
        &self.config.host_name
    }

    /// Hands every record of this host's NVLOG from `from_seq` on to
    /// `each`, oldest first, and sets the next append's sequence number
    /// after the last.
    pub fn replay(
        &mut self,
        from_seq: u64,
        each: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let last_seq = self.replay_log(None, from_seq, each)?;
        self.next_seq = last_seq + 1;
        Ok(())
    }

    /// Hands every record of host `source`'s NVLOG from `from_seq` on to
    /// `each`, oldest first (the pool allows it while this host adopts a
    /// vdisk from `source`), and returns the log's last sequence number.
    pub fn replay_of(
        &mut self,
        source: &str,
        from_seq: u64,
        each: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        self.replay_log(Some(source), from_seq, each)
    }

    fn replay_log(
        &mut self,
        source: Option<&str>,
        from_seq: u64,
        mut each: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let host = source.unwrap_or(&self.config.host_name).to_string();
        let mut client = self
            .client
            .take()
            .ok_or_else(|| anyhow!("not connected to pool {}", self.config.address))?;
        // Each record is handled outside the runtime: `each` may itself
        // ask the pool for map nodes over another link.
        let request = Request::Replay {
            from_seq,
            host: source.unwrap_or("").to_string(),
        };
        self.runtime
            .block_on(client.send(&request))
            .with_context(|| format!("replaying the NVLOG of host {host}"))?;
        loop {
            let response = self
                .runtime
                .block_on(client.recv())
                .with_context(|| format!("replaying the NVLOG of host {host}"))?;
            match response {
                Response::Record { seq, payload } => each(seq, &payload)?,
                Response::ReplayDone { last_seq } => {
                    self.client = Some(client);
                    return Ok(last_seq);
                }
                Response::Error {
                    code: code::FENCED,
                    message,
                } => {
                    self.client = Some(client);
                    return Err(self.fenced(message).into());
                }
                other => {
                    return Err(anyhow!(
                        "pool {} answered a replay of host {host} with {other:?}",
                        self.config.address
                    ))
                }
            }
        }
    }

    /// The sequence number of the last record appended (0 if none).
    pub fn last_appended(&self) -> u64 {
        self.next_seq - 1
    }

    /// Sends a request that is safe to repeat and returns the pool's
    /// answer, reconnecting after a lost connection until `abandon` says
    /// to stop. An answer of [`Response::Error`] is returned as an error.
    pub fn call(
        &mut self,
        request: &Request,
        abandon: &dyn Fn() -> bool,
    ) -> anyhow::Result<Response> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = self.ensure_connected().and_then(|()| {
                let client = Self::client(&mut self.client, self.config.address)?;
                self.runtime.block_on(client.call(request))
            });
            match attempt {
                Ok(Response::Error {
                    code: code::FENCED,
                    message,
                }) => return Err(self.fenced(message).into()),
                Ok(Response::Error { code, message }) => {
                    return Err(Refused {
                        pool: self.config.address,
                        host: self.config.host_name.clone(),
                        code,
                        message,
                    }
                    .into())
                }
                Ok(response) => return Ok(response),
                Err(e) if e.downcast_ref::<Fenced>().is_some() => return Err(e),
                Err(e) => {
                    self.client = None;
                    if abandon() {
                        return Err(e.context(format!(
                            "pool {} unreachable for host {}",
                            self.config.address, self.config.host_name
                        )));
                    }
                    tracing::warn!(pool = %self.config.address, host = %self.config.host_name,
                        error = format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64,
                        "pool request not answered; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Takes vdisk `name`'s lease at the pool: this host serves it from
    /// now on. If another host held it, that host is fenced for it, and
    /// the claim names the host whose state to adopt.
    pub fn claim_vdisk(&mut self, name: &str) -> anyhow::Result<VdiskClaim> {
        let request = Request::ClaimVdisk {
            name: name.to_string(),
        };
        self.vdisk_lease_answer(name, &request)
    }

    /// Tells the pool that this host's own log now holds vdisk `name`'s
    /// adopted state (under the vdisk lease `epoch`).
    pub fn adopted(&mut self, name: &str, epoch: u64) -> anyhow::Result<()> {
        let request = Request::Adopted {
            name: name.to_string(),
            epoch,
        };
        self.vdisk_lease_answer(name, &request).map(drop)
    }

    fn vdisk_lease_answer(&mut self, name: &str, request: &Request) -> anyhow::Result<VdiskClaim> {
        match self.call(request, &|| true)? {
            Response::Claimed { epoch, adopt_from } => Ok(VdiskClaim {
                epoch,
                adopt_from: (!adopt_from.is_empty()).then_some(adopt_from),
            }),
            other => Err(anyhow!(
                "pool {} answered a lease request of vdisk {name} with {other:?}",
                self.config.address
            )),
        }
    }

    /// The key file of datastore `datastore` every host of the pool uses:
    /// the one the pool keeps, or `offer`, which it keeps from now on.
    pub fn datastore_keys(&mut self, datastore: &str, offer: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let request = Request::DatastoreKeys {
            datastore: datastore.to_string(),
            offer,
        };
        match self.call(&request, &|| true)? {
            Response::Keys { key_file } => Ok(key_file),
            other => Err(anyhow!(
                "pool {} answered a request for the keys of datastore {datastore} with {other:?}",
                self.config.address
            )),
        }
    }

    /// The host's last committed state: the NVLOG record it covers and its
    /// bytes; `None` if the host never committed.
    pub fn load_commit(&mut self) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        self.load_commit_from(String::new())
    }

    /// Host `source`'s last committed state (the pool allows it while this
    /// host adopts a vdisk from `source`).
    pub fn load_commit_of(&mut self, source: &str) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        self.load_commit_from(source.to_string())
    }

    fn load_commit_from(&mut self, host: String) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        match self.call(&Request::LoadCommit { host }, &|| true)? {
            Response::Commit { through_seq: 0, .. } => Ok(None),
            Response::Commit { through_seq, state } => Ok(Some((through_seq, state))),
            other => Err(anyhow!(
                "pool {} answered a commit load with {other:?}",
                self.config.address
            )),
        }
    }

    /// Appends `payload`, which changes `vdisks`, as the next record and
    /// returns once the pool made it durable. Reconnects as often as
    /// needed; gives up only when the pool refuses the record (with
    /// [`Moved`] when other hosts took over some of `vdisks`), or when
    /// `abandon` says the caller no longer waits (the store is stopping).
    pub fn append(
        &mut self,
        payload: Vec<u8>,
        vdisks: Vec<VdiskTicket>,
        abandon: &dyn Fn() -> bool,
    ) -> anyhow::Result<()> {
        let seq = self.next_seq;
        let request = Request::Append {
            seq,
            vdisks,
            payload,
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.try_append(seq, &request, abandon) {
                Ok(Attempt::Durable) => {
                    self.next_seq = seq + 1;
                    return Ok(());
                }
                Ok(Attempt::Refused(reason)) => return Err(reason),
                Ok(Attempt::Moved(vdisks)) => {
                    let payload = match request {
                        Request::Append { payload, .. } => payload,
                        _ => Vec::new(),
                    };
                    return Err(Moved {
                        pool: self.config.address,
                        host: self.config.host_name.clone(),
                        vdisks,
                        payload,
                    }
                    .into());
                }
                Err(reason) if reason.downcast_ref::<Fenced>().is_some() => return Err(reason),
                Ok(Attempt::Retry(reason)) | Err(reason) => {
                    self.client = None;
                    if abandon() {
                        return Err(reason.context("the store is stopping"));
                    }
                    tracing::warn!(pool = %self.config.address, host = %self.config.host_name, seq,
                        error = format!("{reason:#}"), retry_in_ms = backoff.as_millis() as u64,
                        "NVLOG append not acknowledged; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One try at making record `seq` durable, on the current connection or
    /// a new one.
    fn try_append(
        &mut self,
        seq: u64,
        request: &Request,
        abandon: &dyn Fn() -> bool,
    ) -> anyhow::Result<Attempt> {
        // The record may have become durable before the connection broke.
        // It is sent again: the pool answers a sequence number it already
        // holds with STALE_SEQUENCE, which after a reconnection means the
        // record is ours and durable, because the pool refuses an append
        // of a fenced lease before it looks at its sequence number (asking
        // the log's last number instead could count a successor's record).
        let reconnected = self.client.is_none();
        if reconnected {
            self.ensure_connected()?;
            tracing::info!(pool = %self.config.address, host = %self.config.host_name, "reconnected to the pool");
        }
        let client = Self::client(&mut self.client, self.config.address)?;
        // The pool may hold an append for long (its quota is full until a
        // destage frees room): look at `abandon` while waiting.
        let response = self.runtime.block_on(async {
            let call = client.call(request);
            tokio::pin!(call);
            loop {
                match tokio::time::timeout(ABANDON_CHECK, &mut call).await {
                    Ok(response) => return response,
                    Err(_) if abandon() => {
                        return Err(anyhow!("gave up waiting for the pool's answer"))
                    }
                    Err(_) => {}
                }
            }
        })?;
        Ok(match response {
            Response::Appended { seq: s } if s == seq => Attempt::Durable,
            Response::Moved { vdisks } => Attempt::Moved(vdisks),
            Response::Error {
                code: code::STORAGE,
                message,
            } => Attempt::Retry(anyhow!("pool storage error: {message}")),
            Response::Error {
                code: code::FENCED,
                message,
            } => Attempt::Refused(self.fenced(message).into()),
            Response::Error {
                code: code::STALE_SEQUENCE,
                ..
            } if reconnected => Attempt::Durable,
            Response::Error {
                code: code::STALE_SEQUENCE,
                message,
            } => Attempt::Refused(anyhow!(
                "pool {} refused NVLOG record {seq} of host {}: {message} (is another strata-host using this host's identity?)",
                self.config.address,
                self.config.host_name
            )),
            other => Attempt::Refused(anyhow!(
                "pool {} answered NVLOG record {seq} of host {} with {other:?}",
                self.config.address,
                self.config.host_name
            )),
        })
    }
}

/// How one try at an append ended.
enum Attempt {
    /// The record is durable.
    Durable,
    /// Try again on a new connection.
    Retry(anyhow::Error),
    /// The pool will never take it.
    Refused(anyhow::Error),
    /// Other hosts took over these vdisks the record changes.
    Moved(Vec<String>),
}
