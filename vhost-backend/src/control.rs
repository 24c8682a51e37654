//! The control socket: a unix socket on which strata-host answers one-line
//! commands with one JSON document, for `strata-host status` and the CLI
//! to come.
//!
//! Protocol: the client connects and sends one line (`status\n`); the
//! server answers with one JSON document followed by a newline and closes
//! the connection. A command it does not know gets `{"error": "..."}`.
//!
//! Clients are untrusted as far as the I/O path is concerned: each
//! connection is served on its own short-lived thread (at most
//! [`MAX_CONNECTIONS`] at once, more are told the server is busy), reads
//! time out after [`CLIENT_TIMEOUT`], a command line is at most
//! [`MAX_LINE`] bytes, and only one status walk runs at a time. Nothing a
//! client does reaches the queue threads except the brief, bounded lock
//! holds of the status walk (see `status.rs`).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::flash::FlashStore;
use crate::status;

/// Longest command line accepted, newline excluded.
pub const MAX_LINE: usize = 1024;
/// How long a client may take to send its command, or to take the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more get a "busy" error.
pub const MAX_CONNECTIONS: usize = 8;
/// How long `strata-host status` waits for the answer (a status walk of a
/// very large store takes a while).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the acceptor rests after a failed accept (such as running out
/// of file descriptors) before trying again, so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest part of an unknown command echoed back in the error.
const ECHO_LEN: usize = 64;

/// What the connection threads share.
struct Shared {
    store: Arc<FlashStore>,
    /// Names of the vdisks this daemon serves.
    served: Vec<String>,
    stopping: AtomicBool,
    connections: AtomicUsize,
    /// Held while a status walk runs: one at a time.
    walk: Mutex<()>,
}

/// The control socket and its acceptor thread.
pub struct ControlServer {
    socket: PathBuf,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl ControlServer {
    /// Fails if another process (another strata-host) listens on `socket`,
    /// or if something other than a socket is there. A stale socket file,
    /// which nobody listens on, is fine: [`ControlServer::start`] replaces it.
    pub fn check_socket_free(socket: &Path) -> anyhow::Result<()> {
        let Ok(meta) = fs::symlink_metadata(socket) else {
            return Ok(());
        };
        if !meta.file_type().is_socket() {
            bail!(
                "control socket {} exists and is not a socket",
                socket.display()
            );
        }
        if UnixStream::connect(socket).is_ok() {
            bail!(
                "control socket {} is in use by another process (is another strata-host running?)",
                socket.display()
            );
        }
        Ok(())
    }

    /// Binds `socket` (replacing a stale socket file, refusing a live one),
    /// makes it accessible to its owner only, and starts serving `store`'s
    /// status on a thread of its own. `served` names the vdisks this daemon
    /// serves.
    pub fn start(
        socket: &Path,
        store: Arc<FlashStore>,
        served: Vec<String>,
    ) -> anyhow::Result<ControlServer> {
        Self::check_socket_free(socket)?;
        if fs::symlink_metadata(socket).is_ok() {
            fs::remove_file(socket).with_context(|| {
                format!("cannot remove stale control socket {}", socket.display())
            })?;
            tracing::info!(socket = %socket.display(), "removed a stale control socket");
        }
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| {
                format!("cannot create control socket directory {}", dir.display())
            })?;
        }
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on control socket {}", socket.display()))?;
        let server = ControlServer {
            socket: socket.to_path_buf(),
            shared: Arc::new(Shared {
                store,
                served,
                stopping: AtomicBool::new(false),
                connections: AtomicUsize::new(0),
                walk: Mutex::new(()),
            }),
            acceptor: Mutex::new(None),
        };
        // From here on, dropping `server` removes the socket file.
        fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).with_context(|| {
            format!(
                "cannot restrict access to control socket {}",
                socket.display()
            )
        })?;
        let shared = server.shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &shared))
            .context("cannot start the control socket thread")?;
        *server.acceptor.lock().unwrap_or_else(|p| p.into_inner()) = Some(acceptor);
        tracing::info!(socket = %socket.display(), "control socket listening");
        Ok(server)
    }

    /// Stops accepting, cancels a status walk in progress, and removes the
    /// socket file. Connections being answered finish on their own threads
    /// (bounded by [`CLIENT_TIMEOUT`]). Idempotent.
    pub fn shut_down(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(acceptor) = acceptor {
            // Wake the blocking accept; it sees `stopping` and returns. If it
            // cannot be woken, leave it: joining would wait forever.
            match UnixStream::connect(&self.socket) {
                Ok(_) => {
                    if acceptor.join().is_err() {
                        tracing::error!("the control socket thread panicked");
                    }
                }
                Err(e) => {
                    tracing::warn!(socket = %self.socket.display(), error = %e, "cannot wake the control socket thread")
                }
            }
        }
        match fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove the control socket")
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Accepts connections until shutdown, each served on its own thread.
fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "control socket: too many connections, refusing one"
            );
            // A short reply into a fresh socket's buffer does not block;
            // non-blocking makes sure of it.
            let mut stream = stream;
            let _ = stream.set_nonblocking(true);
            let _ = stream.write_all(error_reply("busy: too many control connections").as_bytes());
            continue;
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                let stream = serve_connection(&conn_shared, stream);
                // Released before the connection closes, so a client that
                // has seen its answer end can always connect again.
                conn_shared.connections.fetch_sub(1, Ordering::AcqRel);
                drop(stream);
            });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "control socket: cannot start a connection thread");
        }
    }
}

/// Why no command could be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// More than [`MAX_LINE`] bytes without a newline.
    #[error("command line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The connection failed or timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads one command and answers it; returns the connection for the
/// caller to close.
fn serve_connection(shared: &Shared, stream: UnixStream) -> UnixStream {
    if let Err(e) = stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
    {
        tracing::warn!(error = %e, "control socket: cannot set timeouts; dropping the connection");
        return stream;
    }
    let reply = match read_command(&stream) {
        Ok(None) => {
            tracing::debug!("control socket: client closed without a command");
            return stream;
        }
        Ok(Some(line)) => answer(shared, &line),
        Err(ReadError::TooLong) => {
            tracing::debug!(limit = MAX_LINE, "control socket: command line too long");
            error_reply(&ReadError::TooLong.to_string())
        }
        Err(ReadError::Io(e)) => {
            tracing::debug!(error = %e, "control socket: cannot read a command");
            return stream;
        }
    };
    let mut stream = stream;
    if let Err(e) = stream
        .write_all(reply.as_bytes())
        .and_then(|()| stream.flush())
    {
        tracing::debug!(error = %e, "control socket: cannot send the answer");
    }
    stream
}

/// Reads up to and excluding the first newline. `None` if the client closed
/// without sending anything; a final line without a newline counts.
fn read_command(stream: &UnixStream) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    BufReader::new(stream)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(ReadError::TooLong);
    } else if line.is_empty() {
        return Ok(None);
    }
    Ok(Some(line))
}

/// The answer to one command line, newline-terminated.
fn answer(shared: &Shared, line: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(line) else {
        tracing::debug!("control socket: command is not UTF-8");
        return error_reply("command is not UTF-8");
    };
    match text.trim() {
        "status" => status_reply(shared),
        "" => error_reply("empty command; known commands: status"),
        other => {
            let shown: String = other.chars().take(ECHO_LEN).collect();
            tracing::debug!(command = %shown, "control socket: unknown command");
            error_reply(&format!(
                "unknown command {shown:?}; known commands: status"
            ))
        }
    }
}

/// The status document, or an error document.
fn status_reply(shared: &Shared) -> String {
    let _walk = shared.walk.lock().unwrap_or_else(|p| p.into_inner());
    match status::collect(&shared.store, &shared.served, &shared.stopping) {
        Ok(status) => match serde_json::to_string_pretty(&status) {
            Ok(mut json) => {
                json.push('\n');
                json
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot encode the status");
                error_reply(&format!("cannot encode the status: {e}"))
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "control socket: status failed");
            error_reply(&e.to_string())
        }
    }
}

/// `{"error": message}` and a newline.
fn error_reply(message: &str) -> String {
    let mut reply = serde_json::json!({ "error": message }).to_string();
    reply.push('\n');
    reply
}

/// Client side: sends `command` to the control socket at `socket` and
/// returns the answer (one JSON document).
pub fn request(socket: &Path, command: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to control socket {} (is strata-host running with strata vdisks?)",
            socket.display()
        )
    })?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(REQUEST_TIMEOUT)))
        .context("cannot set control socket timeouts")?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .with_context(|| format!("cannot send to control socket {}", socket.display()))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("no answer on control socket {}", socket.display()))?;
    if answer.trim().is_empty() {
        bail!(
            "control socket {} closed without an answer",
            socket.display()
        );
    }
    Ok(answer)
}
