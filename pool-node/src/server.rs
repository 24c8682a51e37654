//! The pool's TLS server: accepts hosts with a certificate of the cluster
//! CA, names each by its certificate, and serves its NVLOG requests.
//!
//! Each host's log has one writer thread that owns the [`Nvlog`] and
//! group-commits whatever appends are queued when it wakes (one write, one
//! fdatasync), then acknowledges them. Connections read requests in order
//! and hand responses, in the same order, to a writer task, so a host can
//! keep up to [`wire::MAX_IN_FLIGHT`] requests in flight. Quota: each
//! connection's appends pass, in order, through an appender task that
//! reserves their bytes against the host's quota and waits while it is
//! full, so a host near its quota slows down instead of failing; other
//! requests (a truncation that frees room, above all) go straight on.
//!
//! Leases: a connection may change its host's state only after
//! [`Request::Open`] bound it to the host's current lease. Taking a new
//! lease goes through the log's writer thread, in order with the appends:
//! every append queued before it is durable before it, and every append
//! after it that carries an older epoch is refused, so a strata-host that
//! took over replays a log its fenced predecessor can no longer extend.
//! Commits and vdisk claims check the epoch in their catalog transaction.
//!
//! Vdisk leases: an append names the vdisks it changes, each with the
//! epoch of the host's lease of that vdisk, and is refused whole
//! ([`Response::Moved`]) unless the host still holds every one. A claim of
//! a vdisk another host holds runs in that host's log writer thread, in
//! order with its appends, and takes the vdisk over ([`VdiskLeases`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use strata_common::pki::ADMIN_NAME;
use strata_common::wire::{self, code, Request, Response, VdiskTicket};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::catalog::NamespaceError;
use crate::drives::Drives;
use crate::nvlog::{record_bytes, Nvlog};
use crate::stripes::{DriveReport, StripeError, StripeStore};
use crate::vdisk_leases::VdiskLeases;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most appends one group commit takes.
const MAX_GROUP: usize = 512;
/// Most drive-pool requests (stripes, frame reads) served at once.
const MAX_STRIPE_REQUESTS: usize = 4;
/// How many times a vdisk claim looks again when the vdisk changed hands
/// while it was being claimed.
const CLAIM_ATTEMPTS: usize = 4;

/// What the pool serves from.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Where the NVLOGs (one directory per host under `nvlog/`) and the
    /// catalog live.
    pub data_dir: PathBuf,
    /// Bytes of un-truncated records each host may hold.
    pub nvlog_quota: u64,
    /// The drive directories; empty for six under `data_dir/drives`.
    pub drives: Vec<PathBuf>,
}

/// One request to a host log's writer thread.
enum LogOp {
    Append {
        seq: u64,
        epoch: u64,
        vdisks: Vec<VdiskTicket>,
        payload: Vec<u8>,
        done: oneshot::Sender<Response>,
    },
    /// A claim of a vdisk this log's host holds (or, when nobody holds it,
    /// the claimant's own log).
    Claim {
        claimant: String,
        epoch: u64,
        vdisk: String,
        expected: Option<String>,
        done: oneshot::Sender<Response>,
    },
    Truncate {
        through_seq: u64,
        epoch: u64,
        done: oneshot::Sender<Response>,
    },
    TakeLease {
        done: oneshot::Sender<Response>,
    },
    Replay {
        from_seq: u64,
        out: mpsc::Sender<Response>,
    },
    Read {
        seq: u64,
        done: oneshot::Sender<Response>,
    },
    Status {
        done: oneshot::Sender<Response>,
    },
}

/// One host's NVLOG as the server sees it: its writer thread, quota and
/// lease.
struct HostLog {
    host: String,
    ops: std_mpsc::Sender<LogOp>,
    /// The epoch of the host's current lease (0: none yet), set by the
    /// writer thread once a new lease is durable in the catalog.
    epoch: AtomicU64,
    quota: u64,
    reserved: Mutex<u64>,
    room: Notify,
}

impl HostLog {
    /// Opens host `host`'s log and starts its writer thread.
    fn open(
        settings: &PoolSettings,
        host: &str,
        stripes: Arc<StripeStore>,
        leases: Arc<VdiskLeases>,
    ) -> anyhow::Result<Arc<HostLog>> {
        let dir = settings.data_dir.join("nvlog").join(host);
        let log = Nvlog::open(&dir)?;
        let epoch = stripes.catalog().lease_epoch(host)?;
        tracing::info!(
            host,
            records_bytes = log.used(),
            last_seq = log.last_seq(),
            truncated_through = log.truncated_through(),
            epoch,
            "NVLOG opened"
        );
        let (tx, rx) = std_mpsc::channel();
        let host_log = Arc::new(HostLog {
            host: host.to_string(),
            ops: tx,
            epoch: AtomicU64::new(epoch),
            quota: settings.nvlog_quota,
            reserved: Mutex::new(log.used()),
            room: Notify::new(),
        });
        let weak = Arc::downgrade(&host_log);
        std::thread::Builder::new()
            .name(format!("nvlog-{host}"))
            .spawn(move || run_writer(log, rx, weak, &stripes, &leases))?;
        Ok(host_log)
    }

    /// Waits until `bytes` fit in the quota, and takes them.
    async fn reserve(&self, bytes: u64) {
        loop {
            let notified = self.room.notified();
            {
                let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
                if *reserved + bytes <= self.quota {
                    *reserved += bytes;
                    return;
                }
            }
            tracing::debug!(host = %self.host, bytes, "NVLOG quota reached: append waits for truncation");
            notified.await;
        }
    }

    /// Gives `bytes` back to the quota.
    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        *reserved = reserved.saturating_sub(bytes);
        drop(reserved);
        self.room.notify_waiters();
    }

    /// Refuses a change made under `epoch` unless it is the current lease.
    fn check_lease(&self, epoch: Option<u64>) -> Result<u64, Response> {
        let current = self.epoch.load(Ordering::Acquire);
        match epoch {
            Some(e) if e == current => Ok(e),
            _ => Err(fenced(&self.host, epoch, current)),
        }
    }

    fn send(&self, op: LogOp) -> Result<(), Response> {
        self.ops.send(op).map_err(|_| Response::Error {
            code: code::STORAGE,
            message: format!("NVLOG of host {} is not running", self.host),
        })
    }
}

/// The answer to a request made under `held` (`None`: no lease opened)
/// while `current` is the host's lease.
fn fenced(host: &str, held: Option<u64>, current: u64) -> Response {
    let message = match held {
        None => format!("host {host}: open a lease before changing the host's state"),
        Some(held) => format!(
            "host {host}: lease epoch {held} is fenced: epoch {current} took over (another strata-host serves this host's vdisks)"
        ),
    };
    Response::Error {
        code: code::FENCED,
        message,
    }
}

/// The writer thread of one host's log.
fn run_writer(
    mut log: Nvlog,
    ops: std_mpsc::Receiver<LogOp>,
    host: std::sync::Weak<HostLog>,
    stripes: &StripeStore,
    leases: &VdiskLeases,
) {
    let mut pending: Option<LogOp> = None;
    loop {
        let op = match pending.take() {
            Some(op) => op,
            None => match ops.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        match op {
            LogOp::Append {
                seq,
                epoch,
                vdisks,
                payload,
                done,
            } => {
                let mut group = vec![GroupAppend {
                    seq,
                    epoch,
                    vdisks,
                    payload,
                    done,
                }];
                while group.len() < MAX_GROUP {
                    match ops.try_recv() {
                        Ok(LogOp::Append {
                            seq,
                            epoch,
                            vdisks,
                            payload,
                            done,
                        }) => group.push(GroupAppend {
                            seq,
                            epoch,
                            vdisks,
                            payload,
                            done,
                        }),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut log, group, &host, leases);
            }
            LogOp::Claim {
                claimant,
                epoch,
                vdisk,
                expected,
                done,
            } => {
                let claimed =
                    stripes
                        .catalog()
                        .claim_vdisk(&claimant, epoch, &vdisk, expected.as_deref());
                let response = match claimed {
                    Ok(holder) => {
                        if let Some(source) = &holder.adopt_from {
                            tracing::info!(vdisk, host = %claimant, epoch = holder.epoch, from = %source,
                                "vdisk taken over: its earlier holder is fenced for it");
                        }
                        leases.set(&vdisk, holder.clone());
                        Response::Claimed {
                            epoch: holder.epoch,
                            adopt_from: holder.adopt_from.unwrap_or_default(),
                        }
                    }
                    Err(e) => namespace_error(&claimant, &format!("claiming vdisk {vdisk:?}"), e),
                };
                let _ = done.send(response);
            }
            LogOp::TakeLease { done } => {
                // Every connection that sends ops holds the host log.
                let Some(h) = host.upgrade() else { return };
                let response = match stripes.catalog().take_lease(&h.host) {
                    Ok(epoch) => {
                        h.epoch.store(epoch, Ordering::Release);
                        tracing::info!(host = %h.host, epoch, "new lease: earlier ones are fenced");
                        Response::Opened { epoch }
                    }
                    Err(e) => {
                        tracing::error!(host = %h.host, error = %format!("{e:#}"), "cannot record a new lease");
                        Response::Error {
                            code: code::STORAGE,
                            message: format!("cannot record a new lease: {e:#}"),
                        }
                    }
                };
                let _ = done.send(response);
            }
            LogOp::Truncate {
                through_seq,
                epoch,
                done,
            } => {
                let Some(h) = host.upgrade() else { return };
                if let Err(refused) = h.check_lease(Some(epoch)) {
                    let _ = done.send(refused);
                    continue;
                }
                drop(h);
                let response = match log.truncate(through_seq) {
                    Ok(freed) => {
                        if let Some(h) = host.upgrade() {
                            h.release(freed);
                        }
                        Response::Truncated { through_seq }
                    }
                    Err(e) => storage_error(&e),
                };
                let _ = done.send(response);
            }
            LogOp::Replay { from_seq, out } => {
                let result = log.replay(from_seq, |seq, payload| {
                    out.blocking_send(Response::Record { seq, payload }).is_ok()
                });
                let last = match result {
                    Ok(()) => Response::ReplayDone {
                        last_seq: log.last_seq(),
                    },
                    Err(e) => storage_error(&e),
                };
                let _ = out.blocking_send(last);
            }
            LogOp::Read { seq, done } => {
                let response = match log.read(seq) {
                    Ok(Some(payload)) => Response::Record { seq, payload },
                    Ok(None) => Response::Error {
                        code: code::NOT_FOUND,
                        message: format!(
                            "the NVLOG does not hold record {seq} (truncated through {}, last {})",
                            log.truncated_through(),
                            log.last_seq()
                        ),
                    },
                    Err(e) => storage_error(&e),
                };
                let _ = done.send(response);
            }
            LogOp::Status { done } => {
                let quota = host.upgrade().map_or(0, |h| h.quota);
                let _ = done.send(Response::Status {
                    used: log.used(),
                    quota,
                    truncated_through: log.truncated_through(),
                    last_seq: log.last_seq(),
                });
            }
        }
    }
}

/// One append of a group commit.
struct GroupAppend {
    seq: u64,
    epoch: u64,
    vdisks: Vec<VdiskTicket>,
    payload: Vec<u8>,
    done: oneshot::Sender<Response>,
}

/// Makes a group of appends durable together and answers each; appends
/// under a fenced lease, naming a vdisk the host no longer holds, or whose
/// sequence number is not above the one before fail alone.
fn commit_group(
    log: &mut Nvlog,
    group: Vec<GroupAppend>,
    host: &std::sync::Weak<HostLog>,
    leases: &VdiskLeases,
) {
    let Some(host) = host.upgrade() else { return };
    let mut last = log.last_seq();
    let verdicts: Vec<Result<(), Response>> = group
        .iter()
        .map(|append| {
            let seq = append.seq;
            host.check_lease(Some(append.epoch))?;
            // Before the vdisks: a record resent after a lost connection
            // may have been durable before its vdisk moved.
            if seq <= last {
                return Err(Response::Error {
                    code: code::STALE_SEQUENCE,
                    message: format!("sequence {seq} is not above the last appended"),
                });
            }
            let moved = leases.not_held(&host.host, &append.vdisks);
            if !moved.is_empty() {
                tracing::warn!(host = %host.host, seq, vdisks = ?moved,
                    "append refused: it names vdisks another host took over");
                return Err(Response::Moved { vdisks: moved });
            }
            last = seq;
            Ok(())
        })
        .collect();
    let batch: Vec<(u64, &[u8])> = group
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| verdict.is_ok())
        .map(|(append, _)| (append.seq, append.payload.as_slice()))
        .collect();
    let result = log.append_batch(&batch);
    drop(batch);
    let mut unused = 0;
    let mut answers = Vec::with_capacity(group.len());
    for (append, verdict) in group.into_iter().zip(verdicts) {
        let GroupAppend {
            seq, payload, done, ..
        } = append;
        let response = match (&result, verdict) {
            (Ok(()), Ok(())) => Response::Appended { seq },
            (Err(e), Ok(())) => storage_error(e),
            (_, Err(refused)) => refused,
        };
        if !matches!(response, Response::Appended { .. }) {
            unused += record_bytes(payload.len());
        }
        answers.push((done, response));
    }
    host.release(unused);
    for (done, response) in answers {
        let _ = done.send(response);
    }
}

fn storage_error(e: &crate::nvlog::NvlogError) -> Response {
    tracing::error!(error = %e, "NVLOG storage error");
    Response::Error {
        code: code::STORAGE,
        message: e.to_string(),
    }
}

/// What a connection's response writer sends next, in request order.
enum Pending {
    Ready(Response),
    Later(oneshot::Receiver<Response>),
    Stream(mpsc::Receiver<Response>),
}

/// The running server.
pub struct PoolServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: PoolSettings,
    logs: Mutex<HashMap<String, Arc<HostLog>>>,
    stripes: Arc<StripeStore>,
    leases: Arc<VdiskLeases>,
    /// Bounds the drive-pool requests being served at once (each may hold
    /// a stripe of several MiB); a connection waits for a permit before it
    /// reads its next request.
    stripe_permits: Arc<Semaphore>,
}

impl PoolServer {
    /// Binds `listen` with the TLS configuration `tls`.
    pub async fn bind(
        listen: SocketAddr,
        tls: Arc<ServerConfig>,
        settings: PoolSettings,
    ) -> anyhow::Result<Arc<PoolServer>> {
        let drives = if settings.drives.is_empty() {
            Drives::default_paths(&settings.data_dir)
        } else {
            settings.drives.clone()
        };
        let stripes = Arc::new(StripeStore::open(&settings.data_dir, drives)?);
        let leases = Arc::new(VdiskLeases::load(stripes.catalog())?);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        Ok(Arc::new(PoolServer {
            listener,
            acceptor: TlsAcceptor::from(tls),
            settings,
            logs: Mutex::new(HashMap::new()),
            stripes,
            leases,
            stripe_permits: Arc::new(Semaphore::new(MAX_STRIPE_REQUESTS)),
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            tokio::spawn(async move { server.serve(tcp, peer).await });
        }
    }

    fn host_log(&self, host: &str) -> anyhow::Result<Arc<HostLog>> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = logs.get(host) {
            return Ok(log.clone());
        }
        let log = HostLog::open(
            &self.settings,
            host,
            self.stripes.clone(),
            self.leases.clone(),
        )?;
        logs.insert(host.to_string(), log.clone());
        Ok(log)
    }

    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let host = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(strata_common::tls::host_name_of);
        let Some(host) = host else {
            tracing::warn!(%peer, "client certificate names no valid host; closing");
            return;
        };
        if host == ADMIN_NAME {
            self.serve_admin(stream, peer).await;
            return;
        }
        // The first connection of a host replays its NVLOG from disk:
        // blocking work, kept off the other connections' worker.
        let log = match tokio::task::block_in_place(|| self.host_log(&host)) {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(%peer, host, error = %e, "cannot open the host's NVLOG");
                return;
            }
        };
        tracing::info!(%peer, host, "host connected");
        let (mut rd, wr) = tokio::io::split(stream);
        let (ptx, prx) = mpsc::channel(wire::MAX_IN_FLIGHT);
        let writer = tokio::spawn(write_responses(wr, prx));
        let (atx, arx) = mpsc::channel(wire::MAX_IN_FLIGHT);
        let appender = tokio::spawn(run_appender(log.clone(), arx));
        // The lease this connection acts under, once it opened one.
        let mut lease: Option<u64> = None;
        loop {
            let pending = match read_request(&mut rd).await {
                Ok(None) => break,
                Ok(Some(Ok(Request::Open { epoch }))) => {
                    let response = open_lease(&log, epoch).await;
                    if let Response::Opened { epoch } = response {
                        lease = Some(epoch);
                    }
                    Pending::Ready(response)
                }
                Ok(Some(Ok(request))) => handle(&log, lease, &atx, self, request).await,
                Ok(Some(Err(e))) => {
                    tracing::warn!(%peer, host, error = %e, "bad request");
                    Pending::Ready(Response::Error {
                        code: code::BAD_REQUEST,
                        message: e.to_string(),
                    })
                }
                Err(e) => {
                    tracing::warn!(%peer, host, error = %e, "connection dropped");
                    break;
                }
            };
            if ptx.send(pending).await.is_err() {
                break;
            }
        }
        drop(atx);
        drop(ptx);
        let _ = appender.await;
        let _ = writer.await;
        tracing::info!(%peer, host, "host disconnected");
    }
}

impl PoolServer {
    /// Serves an administrator: drive requests, one at a time, in order.
    async fn serve_admin<S>(&self, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tracing::info!(%peer, "administrator connected");
        let (mut rd, mut wr) = tokio::io::split(stream);
        loop {
            let response = match read_request(&mut rd).await {
                Ok(None) => break,
                Ok(Some(Ok(request))) => {
                    let stripes = self.stripes.clone();
                    tokio::task::spawn_blocking(move || serve_admin_request(&stripes, request))
                        .await
                        .unwrap_or_else(|e| Response::Error {
                            code: code::STORAGE,
                            message: format!("the request's task failed: {e}"),
                        })
                }
                Ok(Some(Err(e))) => Response::Error {
                    code: code::BAD_REQUEST,
                    message: e.to_string(),
                },
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "administrator connection dropped");
                    break;
                }
            };
            if wr.write_all(&response.encode()).await.is_err() {
                break;
            }
        }
        tracing::info!(%peer, "administrator disconnected");
    }
}

/// Answers an administrator's request (blocking: drive and catalog I/O).
fn serve_admin_request(stripes: &StripeStore, request: Request) -> Response {
    let answer = match request {
        Request::DriveStatus => stripes.drive_report(),
        Request::SetDrive { drive, failed } => stripes.set_drive(usize::from(drive), failed),
        Request::Rebuild => {
            return match stripes.rebuild() {
                Ok(stripes) => Response::Rebuilt { stripes },
                Err(e) => stripe_error("rebuild", e),
            }
        }
        Request::Scrub => {
            return match stripes.scrub() {
                Ok(report) => Response::Scrubbed {
                    stripes: report.stripes,
                    chunks: report.chunks,
                    bad_chunks: report.bad_chunks,
                    repaired: report.repaired,
                    unreadable: report.unreadable,
                },
                Err(e) => stripe_error("scrub", e),
            }
        }
        other => {
            return Response::Error {
                code: code::BAD_REQUEST,
                message: format!("not an administrator's request: {other:?}"),
            }
        }
    };
    match answer {
        Ok(report) => drives_response(report),
        Err(e) => stripe_error("drive request", e),
    }
}

fn drives_response(report: DriveReport) -> Response {
    Response::Drives {
        max_data_chunks: report.max_data_chunks as u8,
        degraded_stripes: report.degraded_stripes,
        drives: report.drives,
    }
}

/// The error response for a failed drive-pool operation, logged.
fn stripe_error(what: &str, e: StripeError) -> Response {
    tracing::error!(error = %e, "{what} failed");
    let code = match e {
        StripeError::Bad(_) => code::BAD_REQUEST,
        StripeError::Unavailable { .. } => code::UNAVAILABLE,
        StripeError::Storage(_) => code::STORAGE,
    };
    Response::Error {
        code,
        message: format!("{what}: {e:#}"),
    }
}

/// One connection's appends, in order: each waits for room in the quota,
/// then goes to the log's writer thread.
async fn run_appender(log: Arc<HostLog>, mut appends: mpsc::Receiver<LogOp>) {
    while let Some(op) = appends.recv().await {
        if let LogOp::Append { payload, .. } = &op {
            log.reserve(record_bytes(payload.len())).await;
        }
        if let Err(refused) = log.send(op) {
            // The writer thread is gone; its senders are dropped with the
            // op, so each waiting response reports the loss.
            tracing::error!(host = %log.host, ?refused, "NVLOG writer stopped");
            return;
        }
    }
}

/// Binds a connection to lease `epoch` of `log`'s host, or to a new one
/// (epoch 0).
async fn open_lease(log: &HostLog, epoch: u64) -> Response {
    if epoch != 0 {
        return match log.check_lease(Some(epoch)) {
            Ok(epoch) => Response::Opened { epoch },
            Err(refused) => refused,
        };
    }
    let (done, answer) = oneshot::channel();
    if let Err(e) = log.send(LogOp::TakeLease { done }) {
        return e;
    }
    answer.await.unwrap_or_else(|_| Response::Error {
        code: code::STORAGE,
        message: format!("NVLOG of host {} stopped", log.host),
    })
}

/// Turns one request into its pending response.
async fn handle(
    log: &Arc<HostLog>,
    lease: Option<u64>,
    appender: &mpsc::Sender<LogOp>,
    server: &PoolServer,
    request: Request,
) -> Pending {
    // Requests that change the host's state need the current lease.
    let epoch = match &request {
        Request::Append { .. }
        | Request::Truncate { .. }
        | Request::PutStripe { .. }
        | Request::Commit { .. }
        | Request::ClaimVdisk { .. }
        | Request::Adopted { .. }
        | Request::DatastoreKeys { .. } => match log.check_lease(lease) {
            Ok(epoch) => epoch,
            Err(refused) => return Pending::Ready(refused),
        },
        _ => 0,
    };
    let (tx, rx) = oneshot::channel();
    let op = match request {
        Request::ClaimVdisk { name } => {
            return Pending::Ready(claim_vdisk(server, log, epoch, name).await);
        }
        Request::Lookup { .. }
        | Request::PutStripe { .. }
        | Request::GetFrames { .. }
        | Request::Commit { .. }
        | Request::Adopted { .. }
        | Request::DatastoreKeys { .. }
        | Request::LoadCommit { .. }
        | Request::DriveStatus
        | Request::SetDrive { .. }
        | Request::Rebuild
        | Request::Scrub
        | Request::Open { .. } => {
            let Ok(permit) = server.stripe_permits.clone().acquire_owned().await else {
                return Pending::Ready(Response::Error {
                    code: code::STORAGE,
                    message: "the pool is shutting down".to_string(),
                });
            };
            let stripes = server.stripes.clone();
            let leases = server.leases.clone();
            let host = log.host.clone();
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(serve_pool_request(&stripes, &leases, &host, epoch, request));
                drop(permit);
            });
            return Pending::Later(rx);
        }
        Request::Append {
            seq,
            vdisks,
            payload,
        } => {
            let bytes = record_bytes(payload.len());
            if bytes > log.quota {
                return Pending::Ready(Response::Error {
                    code: code::TOO_LARGE,
                    message: format!(
                        "append of {bytes} bytes exceeds the NVLOG quota of {} bytes",
                        log.quota
                    ),
                });
            }
            let op = LogOp::Append {
                seq,
                epoch,
                vdisks,
                payload,
                done: tx,
            };
            return match appender.send(op).await {
                Ok(()) => Pending::Later(rx),
                Err(_) => Pending::Ready(Response::Error {
                    code: code::STORAGE,
                    message: format!("NVLOG of host {} is not running", log.host),
                }),
            };
        }
        Request::Truncate { through_seq } => LogOp::Truncate {
            through_seq,
            epoch,
            done: tx,
        },
        Request::Status => LogOp::Status { done: tx },
        Request::ReadRecord { seq } => LogOp::Read { seq, done: tx },
        Request::Replay { from_seq, host } => {
            let source = match log_to_read(server, log, &host) {
                Ok(source) => source,
                Err(refused) => return Pending::Ready(refused),
            };
            let (out, records) = mpsc::channel(64);
            return match source.send(LogOp::Replay { from_seq, out }) {
                Ok(()) => Pending::Stream(records),
                Err(e) => Pending::Ready(e),
            };
        }
    };
    match log.send(op) {
        Ok(()) => Pending::Later(rx),
        Err(e) => Pending::Ready(e),
    }
}

/// The log a replay of `whose` log (empty: the asking host's own) reads:
/// another host's only while the asking host adopts a vdisk from it.
fn log_to_read(
    server: &PoolServer,
    log: &Arc<HostLog>,
    whose: &str,
) -> Result<Arc<HostLog>, Response> {
    if whose.is_empty() || whose == log.host {
        return Ok(log.clone());
    }
    may_read_state_of(&server.leases, &log.host, whose)?;
    tokio::task::block_in_place(|| server.host_log(whose)).map_err(|e| {
        tracing::error!(host = %log.host, source = whose, error = %format!("{e:#}"), "cannot open a host's NVLOG to adopt from");
        Response::Error {
            code: code::STORAGE,
            message: format!("cannot open the NVLOG of host {whose}: {e:#}"),
        }
    })
}

/// Refuses `host` a read of `source`'s commit or log unless it is adopting
/// a vdisk from it.
fn may_read_state_of(leases: &VdiskLeases, host: &str, source: &str) -> Result<(), Response> {
    if leases.adopting_from(host, source) {
        return Ok(());
    }
    tracing::warn!(
        host,
        source,
        "refused a read of another host's state: no vdisk is being adopted from it"
    );
    Err(Response::Error {
        code: code::MOVED,
        message: format!(
            "host {host} adopts no vdisk from host {source}: its state is not {host}'s to read"
        ),
    })
}

/// Claims vdisk `name` for `log`'s host under its lease `epoch`. The claim
/// runs in the log writer thread of the host that holds the vdisk (its
/// own when nobody does), so a takeover is in order with the previous
/// holder's appends; if the vdisk changed hands meanwhile, it looks again.
async fn claim_vdisk(
    server: &PoolServer,
    log: &Arc<HostLog>,
    epoch: u64,
    name: String,
) -> Response {
    for _ in 0..CLAIM_ATTEMPTS {
        let expected = server.leases.get(&name).map(|h| h.host);
        let writer = match expected.as_deref() {
            Some(holder) if holder != log.host => {
                match tokio::task::block_in_place(|| server.host_log(holder)) {
                    Ok(writer) => writer,
                    Err(e) => {
                        return Response::Error {
                            code: code::STORAGE,
                            message: format!("cannot open the NVLOG of host {holder}, which holds vdisk {name:?}: {e:#}"),
                        }
                    }
                }
            }
            _ => log.clone(),
        };
        let (done, answer) = oneshot::channel();
        let op = LogOp::Claim {
            claimant: log.host.clone(),
            epoch,
            vdisk: name.clone(),
            expected,
            done,
        };
        if let Err(e) = writer.send(op) {
            return e;
        }
        match answer.await {
            Ok(Response::Error {
                code: code::CHANGED,
                ..
            }) => continue,
            Ok(response) => return response,
            Err(_) => {
                return Response::Error {
                    code: code::STORAGE,
                    message: format!("NVLOG of host {} stopped", writer.host),
                }
            }
        }
    }
    Response::Error {
        code: code::STORAGE,
        message: format!("vdisk {name:?} kept changing hands; claim it again"),
    }
}

/// Answers a request about the drive pool or the host's committed state
/// (blocking: drive and catalog I/O); `epoch` is the connection's lease,
/// checked again by the catalog for commits, adoptions and keys.
fn serve_pool_request(
    stripes: &StripeStore,
    leases: &VdiskLeases,
    host: &str,
    epoch: u64,
    request: Request,
) -> Response {
    let failed = |code: u16, what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(host, error = %e, "{what} failed");
        Response::Error {
            code,
            message: format!("{what}: {e}"),
        }
    };
    match request {
        Request::Lookup { fingerprints } => match stripes.lookup(&fingerprints) {
            Ok(have) => Response::Have { have },
            Err(e) => failed(code::STORAGE, "lookup", &format!("{e:#}")),
        },
        Request::PutStripe {
            k,
            data_len,
            chunks,
            entries,
        } => match stripes.put_stripe(usize::from(k), data_len as usize, &chunks, &entries) {
            Ok(stripe) => Response::StripeStored { stripe },
            Err(e) => stripe_error("storing a stripe", e),
        },
        Request::GetFrames { fingerprints } => match stripes.get_frames(&fingerprints) {
            Ok(frames) => Response::Frames { frames },
            Err(e) => stripe_error("reading frames", e),
        },
        Request::Commit { through_seq, state } => {
            match stripes.catalog().commit(host, epoch, through_seq, &state) {
                Ok(()) => Response::Committed { through_seq },
                Err(e) => namespace_error(host, "commit", e),
            }
        }
        Request::Adopted {
            name,
            epoch: vdisk_epoch,
        } => match stripes.catalog().adopted(host, epoch, &name, vdisk_epoch) {
            Ok(holder) => {
                tracing::info!(host, vdisk = name, epoch = vdisk_epoch, "vdisk adopted");
                leases.set(&name, holder.clone());
                Response::Claimed {
                    epoch: holder.epoch,
                    adopt_from: String::new(),
                }
            }
            Err(e) => namespace_error(host, &format!("adopting vdisk {name:?}"), e),
        },
        Request::DatastoreKeys { datastore, offer } => {
            match stripes
                .catalog()
                .share_keys(host, epoch, &datastore, &offer)
            {
                Ok(key_file) => Response::Keys { key_file },
                Err(e) => namespace_error(host, &format!("keys of datastore {datastore:?}"), e),
            }
        }
        Request::LoadCommit { host: whose } => {
            let whose = if whose.is_empty() {
                host.to_string()
            } else {
                whose
            };
            if whose != host {
                if let Err(refused) = may_read_state_of(leases, host, &whose) {
                    return refused;
                }
            }
            match stripes.catalog().load_commit(&whose) {
                Ok(commit) => {
                    let (through_seq, state) = commit.unwrap_or_default();
                    Response::Commit { through_seq, state }
                }
                Err(e) => failed(code::STORAGE, "loading the commit", &format!("{e:#}")),
            }
        }
        Request::DriveStatus => match stripes.drive_report() {
            Ok(report) => drives_response(report),
            Err(e) => stripe_error("drive status", e),
        },
        other => Response::Error {
            code: code::BAD_REQUEST,
            message: format!("not a host's request (administrators only?): {other:?}"),
        },
    }
}

/// The error response for a refused commit or claim, logged.
fn namespace_error(host: &str, what: &str, e: NamespaceError) -> Response {
    let code = match e {
        NamespaceError::Fenced { .. } => code::FENCED,
        NamespaceError::Moved { .. } => code::MOVED,
        NamespaceError::Changed { .. } => code::CHANGED,
        NamespaceError::Storage(_) => code::STORAGE,
    };
    tracing::warn!(host, error = %format!("{e:#}"), "{what} refused");
    Response::Error {
        code,
        message: format!("{what}: {e:#}"),
    }
}

/// Reads one request frame: `None` at a clean end of stream, an inner
/// error for a frame that does not decode (the stream stays usable), an
/// outer one when the stream is broken or a length is hostile.
async fn read_request<R: AsyncReadExt + Unpin>(
    rd: &mut R,
) -> std::io::Result<Option<Result<Request, wire::WireError>>> {
    let mut prefix = [0u8; 4];
    match rd.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = wire::body_len(prefix).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(Some(Request::decode(&body)))
}

async fn write_responses<W: AsyncWriteExt + Unpin>(wr: W, mut pending: mpsc::Receiver<Pending>) {
    let mut wr = BufWriter::new(wr);
    let lost = || Response::Error {
        code: code::STORAGE,
        message: "the NVLOG writer stopped before answering".to_string(),
    };
    while let Some(p) = pending.recv().await {
        let sent = match p {
            Pending::Ready(r) => wr.write_all(&r.encode()).await,
            Pending::Later(rx) => {
                if pending.is_empty() {
                    // About to wait: let the client see what is done.
                    if wr.flush().await.is_err() {
                        return;
                    }
                }
                let r = rx.await.unwrap_or_else(|_| lost());
                wr.write_all(&r.encode()).await
            }
            Pending::Stream(mut rx) => {
                let mut result = Ok(());
                while let Some(r) = rx.recv().await {
                    result = wr.write_all(&r.encode()).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if sent.is_err() || (pending.is_empty() && wr.flush().await.is_err()) {
            return;
        }
    }
    let _ = wr.shutdown().await;
}
