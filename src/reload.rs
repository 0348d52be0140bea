//! Live reload: the watcher behind `watch()`.
//!
//! # What a reload does
//!
//! - **What is watched.** The *parent directories* of the certificate, key,
//!   roots and CRL files (non-recursive), never the files: an atomic rename,
//!   an editor's save-and-replace and a Kubernetes Secret volume (where
//!   `tls.crt` is a symlink into `..data/`, and `..data` is itself swapped to a
//!   new timestamped directory) all show up as events there. A poll (every
//!   30 s by default) re-reads the files anyway, for file systems that send no
//!   events (NFS, some container mounts), and re-arms the directory watches.
//!   Files that are symlinks into other directories have those watched too.
//! - **When.** After an event, meshtls waits for the debounce (100 ms by
//!   default) to pass with no further event, so a certificate written before
//!   its key is read once both are there. A set that fails validation right
//!   after a burst is retried once more after another debounce before it is
//!   reported, so a key and certificate that disagree for a moment are not an
//!   error.
//! - **All or nothing.** Every file is read and the whole set validated (PEM,
//!   key matches certificate, validity, CRLs, chain) before the swap. Bytes
//!   identical to the serving set make no new generation. A bad, partial or
//!   missing set is reported (`Event::ReloadFailed`, `tracing` error) and the
//!   previous generation keeps serving; it is retried on the next event and
//!   on every poll.
//! - **Open connections** keep the keys they negotiated when only the
//!   service's own certificate changes. A handshake in flight is judged
//!   again when it completes if the policy changed meanwhile (see the table).
//! - **Resumption.** Verdicts and session keys belong to the policy (roots,
//!   CRLs, allow-list): when those change, earlier sessions no longer resume
//!   and peers go through a full handshake under the new policy. When only
//!   the service's own certificate changes, resumption survives (a resumed
//!   peer keeps seeing the certificate stored with its session). Whatever
//!   the path, a resumed peer is admitted only if a full handshake with its
//!   chain would be admitted now; the table below says where each path
//!   stands.
//! - **Revoking a connected peer.** A CRL update refuses the peer's *new*
//!   connections, full or resumed, and closes its open ones made through the
//!   acceptor, the connector, axum or tonic: every tracked connection is
//!   judged again at each policy change (and when its verdict runs out), and
//!   one whose peer a fresh handshake would refuse (revoked, removed from
//!   the allow-list, no longer chaining to a trusted root, its CA's key
//!   rotated away, ...) is closed after the grace period
//!   ([`live_connection_grace`](crate::Builder::live_connection_grace),
//!   default 10 s), with [`Event::ConnectionClosed`](crate::Event::ConnectionClosed)
//!   and a count in [`Stats`](crate::Stats). Reads and writes on it then fail
//!   with the reason. Every refusal closes except the *kept* reasons: a stale
//!   CRL or a certificate no CRL covers (a CRL publisher's outage must not
//!   cut every connection; new handshakes are refused meanwhile), and the
//!   peer's expiry unless [`close_at_peer_expiry`](crate::Builder::close_at_peer_expiry)
//!   was asked for. A peer kept for one of those is still closed for any
//!   other: an expired peer that is then revoked is closed as revoked.
//!   [`keep_live_connections`](crate::Builder::keep_live_connections) turns
//!   closing off. Connections on a bare config (reqwest, axum-server) are
//!   the application's: meshtls never sees them.
//! - **Lifetime.** The watcher runs on one thread named `meshtls-reload`,
//!   and the sweeper that closes live connections on one named
//!   `meshtls-sweep` (started with the first tracked connection), both
//!   independent of any tokio runtime: a runtime that ends (a start-up
//!   check, an admin runtime) stops neither. Both stop when the last
//!   `ServerTls`/`ClientTls` handle *and* the last clone of its rustls
//!   config are dropped. If either panics (a bug), it is restarted and says
//!   so: [`Event::TaskRestarted`](crate::Event::TaskRestarted) and
//!   [`Stats::task_restarts`](crate::Stats::task_restarts).
//!
//! # What each path guarantees
//!
//! A *policy change* is a reload that changes roots or CRLs, or a new
//! allow-list: it starts a new policy epoch. *Time* is a CRL passing its
//! nextUpdate or a peer certificate passing its notAfter, with no new files.
//! The table is about handshakes; what happens to open connections is
//! above (closed on the first three paths, untouched on bare configs).
//!
//! | path | revocation, CA removal, allow-list change | CRL past nextUpdate, peer past notAfter |
//! |---|---|---|
//! | [`Acceptor`](crate::Acceptor) / [`Connector`](crate::Connector), and the axum and tonic integrations | every handshake, full or resumed, is admitted only by the current epoch's judgment; one that straddles the change (peer judged before it, finished after) is judged again under the new policy | enforced at that moment, on full and resumed handshakes |
//! | bare server config ([`ServerTls::config`](crate::ServerTls::config): axum-server, tonic's own TLS, hyper-rustls) | full handshakes judged; every session judged when its ticket (or cache entry) is sealed and again when it is opened. **Window:** a handshake whose client certificate was judged before the change and whose Finished arrives after completes (like a connection opened before the change), but no session is sealed for it | enforced at that moment: no ticket is opened after the verdict runs out |
//! | bare client config ([`ClientTls::config`](crate::ClientTls::config): reqwest, hyper-rustls) | full handshakes judged; a ticket is stored only for a server name that passed the full judgment in the current epoch. **Window:** when several servers answer to one name, a ticket that one of them sends late (after a change that refuses it, once another server of that name has passed) is stored and can resume to it, until used, until the next policy change, or until the passing server's verdict runs out | a stored ticket is dropped when the verdict of the server of its name that passed last runs out |
//!
//! The windows come from rustls: a session hook sees no connection, the
//! server cannot take back a handshake the client has finished, and a
//! client's stored ticket does not say which server sent it. The
//! [`Connector`](crate::Connector) re-judges the chain of every resumed
//! server, so it has no window; use it (or `Resumption::Disabled`) where
//! several servers share a name and revocation must bite at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::error::Error;
use crate::live::Live;
use crate::side::Side;

/// How often the certificate's expiry is re-checked.
const EXPIRY_TICK: Duration = Duration::from_secs(60);
/// How long a burst of events may postpone a reload, in debounce periods.
const MAX_DEFER: u32 = 20;

/// The watcher's knobs.
#[derive(Clone, Debug)]
pub(crate) struct WatchSettings {
    pub(crate) debounce: Duration,
    pub(crate) poll: Option<Duration>,
    pub(crate) wait: Option<Duration>,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            poll: Some(Duration::from_secs(30)),
            wait: None,
        }
    }
}

enum Msg {
    Changed,
    Stop,
}

/// Stops the watcher thread when dropped (with the live state it serves).
pub(crate) struct WatchGuard {
    tx: mpsc::Sender<Msg>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        // The thread may already be gone; then there is nothing to stop.
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Tries `attempt` until it succeeds or `settings.wait` runs out. Only
/// material problems are waited on; a configuration error fails at once.
pub(crate) fn wait_until_valid<T>(
    settings: &WatchSettings,
    mut attempt: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let Some(wait) = settings.wait else {
        return attempt();
    };
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) => {
                let waited = start.elapsed();
                if waited >= wait {
                    return Err(Error::NotReady {
                        waited,
                        last: Box::new(e),
                    });
                }
                tracing::info!(error = %e, "waiting for TLS files");
                thread::sleep((wait - waited).min(Duration::from_millis(200)));
            }
        }
    }
}

/// The directory to watch for a file: its parent, or `.` for a bare name.
fn watch_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether a file-system event can mean new content. Reads (our own
/// included) are not; a close after writing is.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts watching the files of `live`; a no-op when none are files.
pub(crate) fn start<S: Side>(live: &Arc<Live<S>>, settings: &WatchSettings) -> Result<(), Error> {
    let dirs: BTreeSet<PathBuf> = live.files().iter().map(|f| watch_dir(f)).collect();
    if dirs.is_empty() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(event) => is_change(&event.kind),
            // An overflow or a backend error: re-read to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = events.send(Msg::Changed);
        }
    })
    .map_err(|e| Error::Watch {
        path: dirs.iter().next().cloned().unwrap_or_default(),
        source: Arc::new(e),
    })?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| Error::Watch {
                path: dir.clone(),
                source: Arc::new(e),
            })?;
    }
    let mut task = Task {
        live: Arc::downgrade(live),
        rx,
        watcher,
        dirs,
        settings: settings.clone(),
    };
    // Files that are symlinks into other directories: watch where they point
    // too, for writers that change the target in place.
    task.follow_links();
    thread::Builder::new()
        .name("meshtls-reload".into())
        .spawn(move || task.supervised())
        .map_err(|e| Error::Watch {
            path: PathBuf::from("."),
            source: Arc::new(e),
        })?;
    live.hold(WatchGuard { tx });
    Ok(())
}

struct Task<S: Side> {
    live: Weak<Live<S>>,
    rx: mpsc::Receiver<Msg>,
    watcher: RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    settings: WatchSettings,
}

/// A reload waiting for the debounce to pass.
struct Pending {
    due: Instant,
    first_event: Instant,
    /// The set already failed once quietly; the next failure is reported.
    retried: bool,
}

impl<S: Side> Task<S> {
    /// Runs the watcher; a panic is reported and the watcher starts over
    /// (with its watches and settings), so reloading never stops silently.
    fn supervised(mut self) {
        let mut failures: u32 = 0;
        loop {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
            let Err(panic) = run else {
                return;
            };
            let Some(live) = self.live.upgrade() else {
                return;
            };
            live.observer()
                .task_restarted("watcher", crate::error::panic_message(&*panic));
            drop(live);
            failures = failures.saturating_add(1);
            thread::sleep(Duration::from_millis(50).saturating_mul(1 << failures.min(8)));
            self.rearm();
        }
    }

    fn run(&mut self) {
        let debounce = self.settings.debounce;
        let poll = self.settings.poll;
        let now = Instant::now();
        let mut next_poll = poll.map(|p| now + p);
        // The first expiry check waits a moment, so that whoever subscribes
        // right after `watch()` returns hears it.
        let mut next_expiry = now + debounce;
        let mut pending: Option<Pending> = None;
        loop {
            let mut due = next_expiry;
            if let Some(t) = next_poll {
                due = due.min(t);
            }
            if let Some(p) = &pending {
                due = due.min(p.due);
            }
            match self
                .rx
                .recv_timeout(due.saturating_duration_since(Instant::now()))
            {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Msg::Changed) => {
                    let now = Instant::now();
                    pending = Some(match pending {
                        // Another event inside the window pushes the reload
                        // back, but never beyond MAX_DEFER windows.
                        Some(p) => Pending {
                            due: (now + debounce).min(p.first_event + debounce * MAX_DEFER),
                            ..p
                        },
                        None => Pending {
                            due: now + debounce,
                            first_event: now,
                            retried: false,
                        },
                    });
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let Some(live) = self.live.upgrade() else {
                return;
            };
            let now = Instant::now();
            if let Some(p) = pending.take_if(|p| now >= p.due) {
                if p.retried {
                    let _ = live.reload();
                } else if live.try_reload().is_err() {
                    // Maybe a rotation half-done: look again once before reporting.
                    pending = Some(Pending {
                        due: now + debounce,
                        first_event: now,
                        retried: true,
                    });
                }
            }
            if next_poll.is_some_and(|t| now >= t) {
                next_poll = poll.map(|p| now + p);
                self.rearm();
                let _ = live.reload();
            }
            if now >= next_expiry {
                next_expiry = now + EXPIRY_TICK;
                live.check_expiry();
            }
        }
    }

    /// Watches the directories again: a directory that was deleted and
    /// re-created (a volume remounted) lost its watch.
    fn rearm(&mut self) {
        for dir in &self.dirs {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory (yet)");
            }
        }
        self.follow_links();
    }

    /// Also watches the directories that the files resolve to, where those
    /// differ. Best effort: the poll covers what this misses.
    fn follow_links(&mut self) {
        let Some(live) = self.live.upgrade() else {
            return;
        };
        let targets: BTreeSet<PathBuf> = live
            .files()
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .map(|f| watch_dir(&f))
            .filter(|d| !self.dirs.contains(d))
            .collect();
        for dir in targets {
            let _ = self.watcher.watch(&dir, RecursiveMode::NonRecursive);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_dir_of_bare_name_is_cwd() {
        assert_eq!(watch_dir(Path::new("tls.crt")), PathBuf::from("."));
        assert_eq!(
            watch_dir(Path::new("/etc/tls/tls.crt")),
            PathBuf::from("/etc/tls")
        );
    }

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Remove(
            notify::event::RemoveKind::File
        )));
    }
}
