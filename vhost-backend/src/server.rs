//! Serving one vdisk's socket: accept a frontend, run it until it goes away,
//! then accept the next one. A fresh backend and daemon serve each
//! connection, because a vhost-user session (SET_OWNER, features, rings)
//! cannot be restarted in place.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::VdiskBackend;
use crate::vdisk::Vdisk;

/// How long shutdown waits for the queues to complete their I/O.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// A vdisk's socket and the connection being served on it.
pub struct VdiskServer {
    vdisk: Arc<Vdisk>,
    socket: PathBuf,
    listener: Mutex<Option<Listener>>,
    current: Mutex<Option<Arc<VdiskBackend>>>,
    stopping: AtomicBool,
}

impl VdiskServer {
    /// Fails if another process listens on `socket`.
    pub fn check_socket_free(name: &str, socket: &Path) -> anyhow::Result<()> {
        if UnixStream::connect(socket).is_ok() {
            bail!(
                "vdisk {name}: socket {} is in use by another process",
                socket.display()
            );
        }
        Ok(())
    }

    /// Binds the vdisk's socket. Refuses a socket another process listens on.
    pub fn bind(vdisk: Arc<Vdisk>, socket: &Path) -> anyhow::Result<Self> {
        Self::check_socket_free(&vdisk.name, socket)?;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "vdisk {}: cannot create socket directory {}",
                    vdisk.name,
                    dir.display()
                )
            })?;
        }
        let listener = Listener::new(socket, true).map_err(|e| {
            anyhow::anyhow!(
                "vdisk {}: cannot listen on {}: {e}",
                vdisk.name,
                socket.display()
            )
        })?;
        Ok(VdiskServer {
            vdisk,
            socket: socket.to_path_buf(),
            listener: Mutex::new(Some(listener)),
            current: Mutex::new(None),
            stopping: AtomicBool::new(false),
        })
    }

    /// Serves frontends one after another until [`VdiskServer::shut_down`].
    pub fn run(&self) {
        let Some(mut listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            tracing::error!(vdisk = %self.vdisk.name, "server started twice");
            return;
        };
        while !self.stopping.load(Ordering::Acquire) {
            if let Err(e) = self.serve_one(&mut listener) {
                tracing::error!(vdisk = %self.vdisk.name, error = format!("{e:#}"), "connection ended with an error");
            }
        }
    }

    /// Accepts one frontend and serves it until it disconnects.
    fn serve_one(&self, listener: &mut Listener) -> anyhow::Result<()> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(
            VdiskBackend::new(self.vdisk.clone(), &mem).with_context(|| {
                format!("cannot set up the queues of vdisk {}", self.vdisk.name)
            })?,
        );
        let mut daemon = VhostUserDaemon::new(self.vdisk.name.clone(), backend.clone(), mem)
            .map_err(|e| anyhow::anyhow!("cannot create the vhost-user daemon: {e}"))?;
        backend
            .register_listeners(&daemon.get_epoll_handlers())
            .context("cannot watch I/O completions")?;
        *self.lock_current() = Some(backend.clone());

        daemon
            .start(listener)
            .map_err(|e| anyhow::anyhow!("cannot accept a frontend: {e}"))?;
        tracing::info!(vdisk = %self.vdisk.name, socket = %self.socket.display(), "frontend connected");
        let result = daemon.wait();
        // The frontend is gone: finish what it submitted before the rings go.
        backend.drain();
        *self.lock_current() = None;
        drop(daemon);
        match result {
            Ok(()) => {
                tracing::info!(vdisk = %self.vdisk.name, "frontend disconnected");
                Ok(())
            }
            Err(e) => {
                tracing::info!(vdisk = %self.vdisk.name, reason = %e, "frontend disconnected");
                Ok(())
            }
        }
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Arc<VdiskBackend>>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the requests the guest has made available, completes them and
    /// everything in flight, and stops taking requests.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        let backend = self.lock_current().clone();
        if let Some(backend) = backend {
            backend.shut_down(SHUTDOWN_DEADLINE);
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}
