//! strata-pool as a process: mutual TLS, the NVLOG's durability across
//! kill -9, quota back-pressure, hostile requests, and stripes on device
//! drives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use strata_common::erasure;
use strata_common::fingerprint::Fingerprint;
use strata_common::pki::{ClusterDir, ADMIN_NAME};
use strata_common::tls;
use strata_common::wire::{code, DriveState, Request, Response, StripeEntry, VdiskTicket};
use strata_pool::client::PoolClient;
use strata_pool::process::{PoolCommand, PoolProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running strata-pool, killed with SIGKILL when dropped.
struct Pool {
    process: PoolProcess,
    addr: SocketAddr,
}

impl Pool {
    fn start(cluster: &Path, data: &Path, quota: &str, listen: &str) -> Pool {
        Pool::start_on(cluster, data, quota, listen, Vec::new())
    }

    /// Starts a pool on the drives `drives` (empty: the default ones).
    fn start_on(
        cluster: &Path,
        data: &Path,
        quota: &str,
        listen: &str,
        drives: Vec<PathBuf>,
    ) -> Pool {
        let command = PoolCommand {
            drives,
            program: PathBuf::from(env!("CARGO_BIN_EXE_strata-pool")),
            cluster_dir: cluster.to_path_buf(),
            data_dir: data.to_path_buf(),
            nvlog_quota: quota.to_string(),
            log: data.with_extension("log"),
            startup_timeout: Duration::from_secs(30),
        };
        let process = PoolProcess::start(command, listen).expect("start strata-pool");
        let addr = process.address();
        Pool { process, addr }
    }

    fn kill(&mut self) {
        self.process.kill().expect("kill strata-pool");
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    dir: ClusterDir,
}

fn cluster() -> Cluster {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cluster");
    let dir = ClusterDir::new(&root);
    dir.init().expect("init");
    dir.add_host("h1").expect("host");
    Cluster {
        data: tmp.path().join("data"),
        _dir: tmp,
        root,
        dir,
    }
}

fn host_tls(c: &Cluster, host: &str) -> Arc<ClientConfig> {
    tls::client_config(&c.dir, host).expect("client config")
}

/// A connection of `host` holding a new lease.
async fn leased(pool: &Pool, c: &Cluster, host: &str) -> PoolClient {
    let mut client = PoolClient::connect(pool.addr, host_tls(c, host))
        .await
        .expect("connect");
    client.open(0).await.expect("open a lease");
    client
}

/// Deterministic payload of record `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = 100 + (seq as usize * 7919) % 9000;
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}

#[tokio::test]
async fn append_replay_truncate_over_mutual_tls() {
    let c = cluster();
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    let mut client = leased(&pool, &c, "h1").await;
    for seq in 1..=20 {
        client.append(seq, payload(seq)).await.expect("append");
    }
    match client
        .call(&Request::Append {
            seq: 20,
            vdisks: Vec::new(),
            payload: vec![1],
        })
        .await
    {
        Ok(Response::Error { code: c, .. }) => assert_eq!(c, code::STALE_SEQUENCE),
        other => panic!("stale append answered {other:?}"),
    }
    let (records, last) = client.replay(5).await.expect("replay");
    assert_eq!(last, 20);
    assert_eq!(records.len(), 16);
    for (seq, bytes) in &records {
        assert_eq!(*bytes, payload(*seq), "record {seq}");
    }
    match client.call(&Request::Truncate { through_seq: 10 }).await {
        Ok(Response::Truncated { through_seq: 10 }) => {}
        other => panic!("truncate answered {other:?}"),
    }
    let (records, _) = client.replay(0).await.expect("replay");
    assert_eq!(records.first().map(|r| r.0), Some(11));
    // One record by its number; truncated and future ones are not found.
    match client.call(&Request::ReadRecord { seq: 14 }).await {
        Ok(Response::Record {
            seq: 14,
            payload: p,
        }) => assert_eq!(p, payload(14)),
        other => panic!("reading record 14 answered {other:?}"),
    }
    for seq in [10, 21] {
        assert_eq!(
            refusal(&mut client, Request::ReadRecord { seq }).await,
            code::NOT_FOUND,
            "record {seq}"
        );
    }
    match client.call(&Request::Status).await {
        Ok(Response::Status {
            used,
            truncated_through: 10,
            last_seq: 20,
            ..
        }) => {
            let expected: u64 = (11..=20).map(|s| 32 + payload(s).len() as u64).sum();
            assert_eq!(used, expected);
        }
        other => panic!("status answered {other:?}"),
    }
}

#[tokio::test]
async fn peers_without_a_valid_cluster_certificate_are_refused() {
    let c = cluster();
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");

    // Another cluster's CA, with a host of the same name.
    let other_tmp = tempfile::tempdir().expect("tempdir");
    let other = ClusterDir::new(other_tmp.path());
    other.init().expect("other init");
    other.add_host("h1").expect("other host");
    let foreign = tls::client_config_from(&c.dir, &other.host_cert("h1"), &other.host_key("h1"))
        .expect("foreign config");

    // A certificate of this cluster that expired yesterday.
    let now = time::OffsetDateTime::now_utc();
    c.dir
        .add_host_valid(
            "old",
            (
                now - time::Duration::days(30),
                now - time::Duration::days(1),
            ),
        )
        .expect("expired host");
    let expired = host_tls(&c, "old");

    let anonymous = tls::anonymous_client_config(&c.dir).expect("anonymous config");

    for (what, config) in [
        ("no certificate", anonymous),
        ("another CA's certificate", foreign),
        ("an expired certificate", expired),
    ] {
        // TLS 1.3 lets the client finish first; the refusal arrives as an
        // alert on the first read at the latest.
        let answered = match PoolClient::connect(pool.addr, config).await {
            Err(_) => false,
            Ok(mut client) => client.call(&Request::Status).await.is_ok(),
        };
        assert!(!answered, "{what}: the pool answered a request");
    }
    // Nothing was opened for either h1 impostor or the expired host.
    assert!(!c.data.join("nvlog").join("h1").exists());
    assert!(!c.data.join("nvlog").join("old").exists());

    // The genuine host still gets in.
    let mut client = leased(&pool, &c, "h1").await;
    client.append(1, payload(1)).await.expect("append");
}

#[tokio::test]
async fn acknowledged_appends_survive_kill_9_under_load() {
    let c = cluster();
    let mut pool = Pool::start(&c.root, &c.data, "1G", "127.0.0.1:0");
    let addr = pool.addr;
    let mut client = leased(&pool, &c, "h1").await;
    // Keep 32 appends in flight; kill the pool after 300 are acknowledged,
    // while the rest are on the wire or in a group commit.
    let mut acked = Vec::new();
    let mut next = 1u64;
    let mut in_flight = 0;
    let result: anyhow::Result<()> = async {
        loop {
            while in_flight < 32 {
                client
                    .send(&Request::Append {
                        seq: next,
                        vdisks: Vec::new(),
                        payload: payload(next),
                    })
                    .await?;
                next += 1;
                in_flight += 1;
            }
            match client.recv().await? {
                Response::Appended { seq } => acked.push(seq),
                other => anyhow::bail!("append answered {other:?}"),
            }
            in_flight -= 1;
            if acked.len() == 300 {
                pool.kill();
            }
        }
    }
    .await;
    assert!(result.is_err(), "the connection outlived the pool");
    assert!(acked.len() >= 300, "only {} acknowledged", acked.len());

    let pool = Pool::start(&c.root, &c.data, "1G", &addr.to_string());
    let mut client = leased(&pool, &c, "h1").await;
    let (records, last) = client.replay(0).await.expect("replay");
    let max_acked = acked.iter().copied().max().unwrap_or(0);
    assert!(last >= max_acked, "last {last} < acknowledged {max_acked}");
    // Records come back in order, each with its exact bytes, and include
    // every acknowledged one.
    for pair in records.windows(2) {
        assert!(pair[0].0 < pair[1].0);
    }
    for (seq, bytes) in &records {
        assert_eq!(*bytes, payload(*seq), "record {seq} changed");
    }
    let held: std::collections::HashSet<u64> = records.iter().map(|r| r.0).collect();
    for seq in &acked {
        assert!(held.contains(seq), "acknowledged record {seq} lost");
    }
    // The log continues where it stopped.
    client
        .append(last + 1, payload(last + 1))
        .await
        .expect("append after restart");
}

#[tokio::test]
async fn a_host_at_its_quota_waits_for_truncation() {
    let c = cluster();
    // Three 16 KiB records fit in 50 KiB; the fourth must wait.
    let pool = Pool::start(&c.root, &c.data, "50K", "127.0.0.1:0");
    let mut writer = leased(&pool, &c, "h1").await;
    let mut admin = PoolClient::connect(pool.addr, host_tls(&c, "h1"))
        .await
        .expect("connect");
    let record = vec![7u8; 16 << 10];
    for seq in 1..=4 {
        writer
            .send(&Request::Append {
                seq,
                vdisks: Vec::new(),
                payload: record.clone(),
            })
            .await
            .expect("send");
    }
    for seq in 1..=3 {
        assert_eq!(
            writer.recv().await.expect("ack"),
            Response::Appended { seq }
        );
    }
    match admin.call(&Request::Status).await.expect("status") {
        Response::Status {
            used,
            quota,
            last_seq,
            ..
        } => {
            assert_eq!(last_seq, 3, "the fourth append went past the quota");
            assert!(used <= quota);
        }
        other => panic!("status answered {other:?}"),
    }
    // The truncation that makes room comes on the same connection, behind
    // the waiting append: it must not be stuck behind it.
    writer
        .send(&Request::Truncate { through_seq: 2 })
        .await
        .expect("send truncate");
    assert_eq!(
        writer.recv().await.expect("ack"),
        Response::Appended { seq: 4 }
    );
    assert_eq!(
        writer.recv().await.expect("truncated"),
        Response::Truncated { through_seq: 2 }
    );
    // A record larger than the whole quota fails at once instead of waiting.
    match writer
        .call(&Request::Append {
            seq: 5,
            vdisks: Vec::new(),
            payload: vec![0; 64 << 10],
        })
        .await
        .expect("answer")
    {
        Response::Error { code: c, .. } => assert_eq!(c, code::TOO_LARGE),
        other => panic!("oversized append answered {other:?}"),
    }
}

#[tokio::test]
async fn hostile_frames_get_errors_and_never_stop_the_pool() {
    let c = cluster();
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    let connector = tokio_rustls::TlsConnector::from(host_tls(&c, "h1"));
    let name = rustls::pki_types::ServerName::try_from("strata-pool").expect("name");

    // Undecodable bodies: an error each, and the connection carries on.
    let tcp = tokio::net::TcpStream::connect(pool.addr)
        .await
        .expect("tcp");
    let mut s = connector.connect(name.clone(), tcp).await.expect("tls");
    for body in [vec![], vec![0x55], vec![1, 2, 3], vec![4, 0]] {
        s.write_all(&(body.len() as u32).to_le_bytes())
            .await
            .expect("write");
        s.write_all(&body).await.expect("write");
        let mut prefix = [0u8; 4];
        s.read_exact(&mut prefix).await.expect("read");
        let mut reply = vec![0u8; u32::from_le_bytes(prefix) as usize];
        s.read_exact(&mut reply).await.expect("read");
        match Response::decode(&reply) {
            Ok(Response::Error { code: c, .. }) => assert_eq!(c, code::BAD_REQUEST),
            other => panic!("{body:?} answered {other:?}"),
        }
    }
    // A hostile length: the connection is closed without reading 4 GiB.
    s.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty());

    // Garbage instead of a TLS handshake.
    let mut raw = tokio::net::TcpStream::connect(pool.addr)
        .await
        .expect("tcp");
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink).await;

    // The pool still serves.
    let mut client = leased(&pool, &c, "h1").await;
    client.append(1, payload(1)).await.expect("append");
}

/// The error code of a refused request.
async fn refusal(client: &mut PoolClient, request: Request) -> u16 {
    match client.call(&request).await {
        Ok(Response::Error { code: c, .. }) => c,
        other => panic!("{request:?} answered {other:?}"),
    }
}

#[tokio::test]
async fn a_new_lease_fences_every_connection_of_the_old_one() {
    let c = cluster();
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    // Without a lease, nothing that changes the host's state is taken.
    let mut bare = PoolClient::connect(pool.addr, host_tls(&c, "h1"))
        .await
        .expect("connect");
    let append = |seq: u64| Request::Append {
        seq,
        vdisks: Vec::new(),
        payload: payload(seq),
    };
    assert_eq!(refusal(&mut bare, append(1)).await, code::FENCED);

    let mut old = PoolClient::connect(pool.addr, host_tls(&c, "h1"))
        .await
        .expect("connect");
    let old_epoch = old.open(0).await.expect("open");
    for seq in 1..=3 {
        old.append(seq, payload(seq)).await.expect("append");
    }
    // A second connection may join the current lease (as the destager's
    // does).
    let mut joined = PoolClient::connect(pool.addr, host_tls(&c, "h1"))
        .await
        .expect("connect");
    assert_eq!(joined.open(old_epoch).await.expect("join"), old_epoch);

    // A new strata-host takes over.
    let mut new = leased(&pool, &c, "h1").await;
    let (records, last) = new.replay(0).await.expect("replay");
    assert_eq!(last, 3);
    assert_eq!(records.len(), 3);

    // Every connection of the old lease is refused whatever it tries.
    for client in [&mut old, &mut joined] {
        assert_eq!(refusal(client, append(4)).await, code::FENCED);
        assert_eq!(
            refusal(client, Request::Truncate { through_seq: 3 }).await,
            code::FENCED
        );
        assert_eq!(
            refusal(
                client,
                Request::Commit {
                    through_seq: 3,
                    state: b"stale".to_vec()
                }
            )
            .await,
            code::FENCED
        );
        assert_eq!(
            refusal(
                client,
                Request::ClaimVdisk {
                    name: "db".to_string()
                }
            )
            .await,
            code::FENCED
        );
        assert_eq!(
            refusal(
                client,
                Request::PutStripe {
                    k: 1,
                    data_len: 64,
                    chunks: vec![vec![1; 64]; 3],
                    entries: Vec::new()
                }
            )
            .await,
            code::FENCED
        );
        // Nor can it rejoin its old lease.
        assert_eq!(
            refusal(client, Request::Open { epoch: old_epoch }).await,
            code::FENCED
        );
    }
    // The new lease carries on from the log as the old one left it.
    new.append(4, payload(4))
        .await
        .expect("append under the new lease");
    match new.call(&Request::ClaimVdisk { name: "db".into() }).await {
        Ok(Response::Claimed {
            epoch: 1,
            adopt_from,
        }) if adopt_from.is_empty() => {}
        other => panic!("claim answered {other:?}"),
    }
    let (records, last) = new.replay(0).await.expect("replay");
    assert_eq!(last, 4);
    for (seq, bytes) in &records {
        assert_eq!(*bytes, payload(*seq), "record {seq}");
    }
}

/// An append of `seq` that changes vdisk `name` under its lease `epoch`.
fn vdisk_append(seq: u64, name: &str, epoch: u64) -> Request {
    Request::Append {
        seq,
        vdisks: vec![VdiskTicket {
            name: name.to_string(),
            epoch,
        }],
        payload: payload(seq),
    }
}

#[tokio::test]
async fn a_claim_takes_a_vdisk_over_and_fences_its_holder_for_it_alone() {
    let c = cluster();
    c.dir.add_host("h2").expect("host h2");
    c.dir.add_host("h3").expect("host h3");
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    let mut h1 = leased(&pool, &c, "h1").await;
    let claim = |name: &str| Request::ClaimVdisk {
        name: name.to_string(),
    };
    for name in ["db", "logs"] {
        match h1.call(&claim(name)).await {
            Ok(Response::Claimed {
                epoch: 1,
                adopt_from,
            }) if adopt_from.is_empty() => {}
            other => panic!("claim of {name} answered {other:?}"),
        }
    }
    // An append must hold every vdisk it names, under its epoch.
    match h1.call(&vdisk_append(1, "db", 2)).await {
        Ok(Response::Moved { vdisks }) => assert_eq!(vdisks, vec!["db"]),
        other => panic!("append under a wrong epoch answered {other:?}"),
    }
    match h1.call(&vdisk_append(1, "nobody-claimed-it", 1)).await {
        Ok(Response::Moved { vdisks }) => assert_eq!(vdisks, vec!["nobody-claimed-it"]),
        other => panic!("append of an unclaimed vdisk answered {other:?}"),
    }
    for seq in 1..=2 {
        match h1.call(&vdisk_append(seq, "db", 1)).await {
            Ok(Response::Appended { .. }) => {}
            other => panic!("append {seq} answered {other:?}"),
        }
    }
    // Nobody adopting from h1 may read its state.
    let mut h3 = leased(&pool, &c, "h3").await;
    let replay_h1 = Request::Replay {
        from_seq: 1,
        host: "h1".to_string(),
    };
    assert_eq!(refusal(&mut h3, replay_h1.clone()).await, code::MOVED);
    assert_eq!(
        refusal(
            &mut h3,
            Request::LoadCommit {
                host: "h1".to_string()
            }
        )
        .await,
        code::MOVED
    );

    // h2 takes db over: a new epoch, and h1 as the state to adopt.
    let mut h2 = leased(&pool, &c, "h2").await;
    match h2.call(&claim("db")).await {
        Ok(Response::Claimed {
            epoch: 2,
            adopt_from,
        }) => assert_eq!(adopt_from, "h1"),
        other => panic!("takeover answered {other:?}"),
    }
    // h1 can no longer change db, in an append alone or with logs; its
    // other vdisk carries on.
    match h1.call(&vdisk_append(3, "db", 1)).await {
        Ok(Response::Moved { vdisks }) => assert_eq!(vdisks, vec!["db"]),
        other => panic!("fenced append answered {other:?}"),
    }
    let both = Request::Append {
        seq: 3,
        vdisks: vec![
            VdiskTicket {
                name: "logs".to_string(),
                epoch: 1,
            },
            VdiskTicket {
                name: "db".to_string(),
                epoch: 1,
            },
        ],
        payload: payload(3),
    };
    match h1.call(&both).await {
        Ok(Response::Moved { vdisks }) => assert_eq!(vdisks, vec!["db"]),
        other => panic!("fenced append answered {other:?}"),
    }
    match h1.call(&vdisk_append(3, "logs", 1)).await {
        Ok(Response::Appended { seq: 3 }) => {}
        other => panic!("append of the vdisk h1 kept answered {other:?}"),
    }
    // h2 reads h1's log (every record h1 had when it was fenced, and the
    // later one of its other vdisk) while it adopts.
    h2.send(&replay_h1).await.expect("send");
    let mut seqs = Vec::new();
    loop {
        match h2.recv().await.expect("replay") {
            Response::Record { seq, payload: p } => {
                assert_eq!(p, payload(seq));
                seqs.push(seq);
            }
            Response::ReplayDone { last_seq } => {
                assert_eq!(last_seq, 3);
                break;
            }
            other => panic!("replay of h1 answered {other:?}"),
        }
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    match h2
        .call(&Request::Adopted {
            name: "db".to_string(),
            epoch: 2,
        })
        .await
    {
        Ok(Response::Claimed {
            epoch: 2,
            adopt_from,
        }) if adopt_from.is_empty() => {}
        other => panic!("adopted answered {other:?}"),
    }
    // Once adopted, h1's state is not h2's to read any more, and h2 may
    // change db.
    assert_eq!(refusal(&mut h2, replay_h1).await, code::MOVED);
    match h2.call(&vdisk_append(1, "db", 2)).await {
        Ok(Response::Appended { seq: 1 }) => {}
        other => panic!("the new holder's append answered {other:?}"),
    }
    // The pool remembers across a restart: h1 stays fenced for db.
    drop(pool);
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    let mut h1 = leased(&pool, &c, "h1").await;
    match h1.call(&vdisk_append(4, "db", 1)).await {
        Ok(Response::Moved { vdisks }) => assert_eq!(vdisks, vec!["db"]),
        other => panic!("fenced append after a restart answered {other:?}"),
    }
}

#[tokio::test]
async fn every_host_gets_the_datastore_keys_first_offered() {
    let c = cluster();
    c.dir.add_host("h2").expect("host h2");
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    let keys = |offer: &[u8]| Request::DatastoreKeys {
        datastore: "default".to_string(),
        offer: offer.to_vec(),
    };
    let mut bare = PoolClient::connect(pool.addr, host_tls(&c, "h1"))
        .await
        .expect("connect");
    assert_eq!(refusal(&mut bare, keys(b"first")).await, code::FENCED);
    let mut h1 = leased(&pool, &c, "h1").await;
    let mut h2 = leased(&pool, &c, "h2").await;
    for (client, offer) in [(&mut h1, b"first"), (&mut h2, b"other")] {
        match client.call(&keys(offer)).await {
            Ok(Response::Keys { key_file }) => assert_eq!(key_file, b"first"),
            other => panic!("keys answered {other:?}"),
        }
    }
}

#[tokio::test]
async fn only_the_administrator_may_fail_drives_rebuild_and_scrub() {
    let c = cluster();
    let pool = Pool::start(&c.root, &c.data, "64M", "127.0.0.1:0");
    let mut host = PoolClient::connect(pool.addr, host_tls(&c, "h1"))
        .await
        .expect("connect as a host");
    // A host may read the drives' state (its stripes' width follows it)...
    match host.call(&Request::DriveStatus).await {
        Ok(Response::Drives {
            max_data_chunks: 4,
            degraded_stripes: 0,
            drives,
        }) => assert_eq!(drives, vec![DriveState::InService; 6]),
        other => panic!("drive status answered {other:?}"),
    }
    // ... but not change them.
    for request in [
        Request::SetDrive {
            drive: 1,
            failed: true,
        },
        Request::Rebuild,
        Request::Scrub,
    ] {
        match host.call(&request).await {
            Ok(Response::Error { code: c, .. }) => assert_eq!(c, code::BAD_REQUEST),
            other => panic!("{request:?} from a host answered {other:?}"),
        }
    }
    let mut admin = PoolClient::connect(pool.addr, host_tls(&c, ADMIN_NAME))
        .await
        .expect("connect as the administrator");
    match admin
        .call(&Request::SetDrive {
            drive: 1,
            failed: true,
        })
        .await
    {
        Ok(Response::Drives {
            max_data_chunks: 3,
            drives,
            ..
        }) => assert_eq!(drives[1], DriveState::Failed),
        other => panic!("failing a drive answered {other:?}"),
    }
    match admin
        .call(&Request::SetDrive {
            drive: 6,
            failed: true,
        })
        .await
    {
        Ok(Response::Error { code: c, .. }) => assert_eq!(c, code::BAD_REQUEST),
        other => panic!("failing a drive the pool lacks answered {other:?}"),
    }
    match admin.call(&Request::Rebuild).await {
        Ok(Response::Rebuilt { stripes: 0 }) => {}
        other => panic!("rebuild of an empty pool answered {other:?}"),
    }
    match admin.call(&Request::Scrub).await {
        Ok(Response::Scrubbed {
            stripes: 0,
            bad_chunks: 0,
            ..
        }) => {}
        other => panic!("scrub of an empty pool answered {other:?}"),
    }
    // The administrator has no NVLOG: host requests are refused.
    match admin.call(&Request::Status).await {
        Ok(Response::Error { code: c, .. }) => assert_eq!(c, code::BAD_REQUEST),
        other => panic!("status from the administrator answered {other:?}"),
    }
}

/// Frame-like payloads of stripe `s`: `count` of them, of varied lengths.
fn stripe_frames(s: u64, count: u64) -> Vec<(Fingerprint, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let n = s * 1000 + i;
            let mut fp = [0u8; 32];
            fp[..8].copy_from_slice(&(n + 1).to_le_bytes());
            let len = 500 + (n as usize * 389) % 4000;
            let bytes = (0..len)
                .map(|j| (j as u64 ^ n.wrapping_mul(31)) as u8)
                .collect();
            (Fingerprint::from_bytes(fp), bytes)
        })
        .collect()
}

/// Stores `frames` as one 4 + 2 stripe the way a host destages them.
async fn put_stripe(client: &mut PoolClient, frames: &[(Fingerprint, Vec<u8>)]) {
    let mut data = Vec::new();
    let mut entries = Vec::new();
    for (fingerprint, bytes) in frames {
        entries.push(StripeEntry {
            fingerprint: *fingerprint,
            offset: data.len() as u32,
            len: bytes.len() as u32,
        });
        data.extend_from_slice(bytes);
    }
    let request = Request::PutStripe {
        k: 4,
        data_len: data.len() as u32,
        chunks: erasure::encode(&data, 4).expect("encode"),
        entries,
    };
    match client.call(&request).await {
        Ok(Response::StripeStored { .. }) => {}
        other => panic!("a stripe was answered with {other:?}"),
    }
}

/// Reads every frame of `frames` back and compares the bytes.
async fn check_frames(client: &mut PoolClient, frames: &[(Fingerprint, Vec<u8>)], what: &str) {
    let request = Request::GetFrames {
        fingerprints: frames.iter().map(|f| f.0).collect(),
    };
    match client.call(&request).await {
        Ok(Response::Frames { frames: got }) => {
            assert_eq!(got.len(), frames.len(), "{what}");
            for ((fp, want), got) in frames.iter().zip(got) {
                assert!(got == *want, "{what}: frame {fp} differs");
            }
        }
        other => panic!("{what}: a read was answered with {other:?}"),
    }
}

#[tokio::test]
async fn stripes_on_device_drives_survive_kill_9_and_two_wiped_drives() {
    let c = cluster();
    // Six sparse files stand in for block devices.
    let drives: Vec<PathBuf> = (0..6)
        .map(|i| {
            let path = c.root.with_file_name(format!("dev{i}"));
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(64 << 20))
                .expect("a device file");
            path
        })
        .collect();
    let mut pool = Pool::start_on(&c.root, &c.data, "64M", "127.0.0.1:0", drives.clone());
    let mut client = leased(&pool, &c, "h1").await;
    let first: Vec<_> = (0..5).flat_map(|s| stripe_frames(s, 40)).collect();
    for part in first.chunks(40) {
        put_stripe(&mut client, part).await;
    }
    check_frames(&mut client, &first, "before the kill").await;

    // After kill -9 the pool knows from its catalog which extents are in
    // use: new stripes land beside the old ones, never over them.
    pool.process
        .kill_and_restart()
        .expect("restarting strata-pool");
    let mut client = leased(&pool, &c, "h1").await;
    check_frames(&mut client, &first, "after the restart").await;
    let second: Vec<_> = (5..10).flat_map(|s| stripe_frames(s, 40)).collect();
    for part in second.chunks(40) {
        put_stripe(&mut client, part).await;
    }
    check_frames(&mut client, &first, "old stripes after new ones").await;
    check_frames(&mut client, &second, "new stripes").await;

    // Two drives lose everything past their label area.
    for wiped in [0, 3] {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&drives[wiped])
            .expect("open a device file");
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; 63 << 20], 1 << 20)
            .expect("wipe");
    }
    check_frames(&mut client, &first, "with two drives wiped").await;
    check_frames(&mut client, &second, "with two drives wiped").await;
}
