//! A host's connection to the pool: TLS with the host's certificate, then
//! [`Request`]s and [`Response`]s in order (see [`strata_common::wire`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use strata_common::pki::POOL_SERVER_NAME;
use strata_common::wire::{self, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// One connection to the pool.
pub struct PoolClient {
    rd: BufReader<ReadHalf<TlsStream<TcpStream>>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    pool: SocketAddr,
}

impl PoolClient {
    /// Connects to the pool at `pool` with `tls` (from
    /// [`strata_common::tls::client_config`]) and completes the handshake.
    pub async fn connect(pool: SocketAddr, tls: Arc<ClientConfig>) -> anyhow::Result<PoolClient> {
        let tcp = TcpStream::connect(pool)
            .await
            .with_context(|| format!("cannot connect to pool {pool}"))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(POOL_SERVER_NAME)?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with pool {pool}"))?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(PoolClient {
            rd: BufReader::new(rd),
            wr,
            pool,
        })
    }

    /// Sends `request` without waiting for its answer.
    pub async fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        self.wr
            .write_all(&request.encode())
            .await
            .with_context(|| format!("sending to pool {}", self.pool))?;
        self.wr.flush().await?;
        Ok(())
    }

    /// The next response.
    pub async fn recv(&mut self) -> anyhow::Result<Response> {
        let mut prefix = [0u8; 4];
        self.rd
            .read_exact(&mut prefix)
            .await
            .with_context(|| format!("reading from pool {}", self.pool))?;
        let len = wire::body_len(prefix)?;
        let mut body = vec![0u8; len];
        self.rd.read_exact(&mut body).await?;
        Response::decode(&body).map_err(|e| anyhow!("bad response from pool {}: {e}", self.pool))
    }

    /// Sends `request` and waits for its one response.
    pub async fn call(&mut self, request: &Request) -> anyhow::Result<Response> {
        self.send(request).await?;
        self.recv().await
    }

    /// Binds this connection to the host's lease `epoch` (0: take a new
    /// one, fencing every earlier holder) and returns the lease's epoch.
    pub async fn open(&mut self, epoch: u64) -> anyhow::Result<u64> {
        match self.call(&Request::Open { epoch }).await? {
            Response::Opened { epoch } => Ok(epoch),
            other => bail!("open lease {epoch}: pool {} answered {other:?}", self.pool),
        }
    }

    /// Appends record `seq`, which changes no vdisk, and waits until it is
    /// durable.
    pub async fn append(&mut self, seq: u64, payload: Vec<u8>) -> anyhow::Result<()> {
        let request = Request::Append {
            seq,
            vdisks: Vec::new(),
            payload,
        };
        match self.call(&request).await? {
            Response::Appended { seq: s } if s == seq => Ok(()),
            other => bail!("append {seq}: pool {} answered {other:?}", self.pool),
        }
    }

    /// Every record from `from_seq` on, and the last sequence number.
    pub async fn replay(&mut self, from_seq: u64) -> anyhow::Result<(Vec<(u64, Vec<u8>)>, u64)> {
        let mut records = Vec::new();
        let last_seq = self
            .replay_each(from_seq, |seq, payload| {
                records.push((seq, payload));
                Ok(())
            })
            .await?;
        Ok((records, last_seq))
    }

    /// Hands every record from `from_seq` on to `each` as it arrives (so a
    /// long log is never held whole) and returns the last sequence number.
    /// An error from `each` stops the replay and is returned.
    pub async fn replay_each(
        &mut self,
        from_seq: u64,
        mut each: impl FnMut(u64, Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let request = Request::Replay {
            from_seq,
            host: String::new(),
        };
        self.send(&request).await?;
        loop {
            match self.recv().await? {
                Response::Record { seq, payload } => each(seq, payload)?,
                Response::ReplayDone { last_seq } => return Ok(last_seq),
                other => bail!("replay: pool {} answered {other:?}", self.pool),
            }
        }
    }

    /// The pool's address.
    pub fn pool(&self) -> SocketAddr {
        self.pool
    }
}
