//! Cross-process wake-ups for the SQLite queue. SQLite has no LISTEN/NOTIFY: a worker in another
//! process than the one that enqueued used to learn of new work only from its next poll (1 s;
//! p50 529 ms from enqueue to start at 500 jobs/s, issue 21). Here every open queue on a database
//! file binds a doorbell — a Unix datagram socket in `<database>.doorbells/` — and whoever makes
//! work available rings every doorbell there with one byte. An idle worker sleeps in `recv`:
//! nothing polls.
//!
//! Datagrams are fire-and-forget: a full socket buffer means its owner is already woken, a bell
//! whose owner died (connection refused) is removed. The list of bells is read again at most
//! every [`PEERS_FRESH_FOR`], so a process that opens the queue later is rung after at most that
//! long (until then its own poll covers it). Workers still poll as a safety net.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use crate::backend::Wakeup;

/// How long a read of the doorbell directory is trusted.
const PEERS_FRESH_FOR: Duration = Duration::from_secs(1);

pub(super) struct Doorbells {
    dir: PathBuf,
    own: PathBuf,
    sender: StdDatagram,
    peers: Mutex<Peers>,
    listener: tokio::task::JoinHandle<()>,
}

struct Peers {
    read_at: Option<Instant>,
    paths: Vec<PathBuf>,
}

impl Doorbells {
    /// Binds this queue's doorbell next to `database` and wakes `notify` whenever it rings.
    pub(super) fn open(database: &Path, notify: Arc<Wakeup>) -> std::io::Result<Doorbells> {
        let mut dir = database.as_os_str().to_owned();
        dir.push(".doorbells");
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        // Only the database's owner may ring (or read who listens).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let own = dir.join(format!("{}-{:08x}", std::process::id(), rand::random::<u32>()));
        let socket = UnixDatagram::bind(&own)?;
        let listener = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            loop {
                match socket.recv(&mut buf).await {
                    Ok(_) => notify.wake(),
                    Err(e) => {
                        tracing::debug!(error = %e, "doorbell receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let sender = StdDatagram::unbound()?;
        sender.set_nonblocking(true)?;
        Ok(Doorbells {
            dir,
            own,
            sender,
            peers: Mutex::new(Peers {
                read_at: None,
                paths: Vec::new(),
            }),
            listener,
        })
    }

    /// Rings every other open queue's doorbell on this database.
    pub(super) fn ring(&self) {
        let mut peers = self.peers.lock().expect("doorbell peers");
        if peers.read_at.is_none_or(|at| at.elapsed() >= PEERS_FRESH_FOR) {
            peers.paths = match std::fs::read_dir(&self.dir) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p != &self.own)
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, dir = %self.dir.display(), "cannot list the doorbells");
                    Vec::new()
                }
            };
            peers.read_at = Some(Instant::now());
        }
        peers.paths.retain(|peer| match self.sender.send_to(&[1], peer) {
            Ok(_) => true,
            // Its buffer is full of rings it has not read yet: it is awake already.
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            // Its process is gone (or the file is not a bell): clear it away.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
                let _ = std::fs::remove_file(peer);
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, peer = %peer.display(), "cannot ring a doorbell");
                true
            }
        });
    }
}

impl Drop for Doorbells {
    fn drop(&mut self) {
        self.listener.abort();
        let _ = std::fs::remove_file(&self.own);
    }
}
