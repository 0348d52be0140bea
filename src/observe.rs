//! What happened: [`Event`]s on a broadcast channel, counters in [`Stats`],
//! and the same facts on `tracing`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::error::{Error, RejectReason, fmt_time};

/// Facts about one certificate, as reloads and expiry events report them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertFacts {
    /// The subject, e.g. `CN=billing`.
    pub subject: String,
    /// The serial number, colon-separated hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl fmt::Display for CertFacts {
    /// `CN=billing, serial 3a:..., valid 2026-12-01T00:00:00Z to 2026-12-02T00:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = if self.subject.is_empty() {
            "(no subject)"
        } else {
            &self.subject
        };
        write!(
            f,
            "{subject}, serial {}, valid {} to {}",
            self.serial,
            fmt_time(self.not_before),
            fmt_time(self.not_after)
        )
    }
}

impl CertFacts {
    /// The moment after which less than `fraction` of the lifetime is left.
    pub(crate) fn warn_at(&self, fraction: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - life.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

/// Something meshtls did or saw; see `subscribe()` on the server and client.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A new generation is serving.
    Reloaded {
        /// Its number (the first is 1).
        generation: u64,
        /// The service's own leaf certificate in it.
        leaf: CertFacts,
        /// The trust roots in it.
        roots: Vec<CertFacts>,
        /// Whether trust material or the allow-list changed, which ends
        /// resumption of earlier sessions.
        policy_changed: bool,
    },
    /// A new set of material was refused; the previous generation keeps serving.
    ReloadFailed {
        /// Why.
        error: Error,
        /// The generation still serving.
        serving: u64,
    },
    /// The service's certificate has less than the configured share of its
    /// lifetime left.
    Expiring {
        /// The certificate.
        leaf: CertFacts,
        /// Time left.
        remaining: Duration,
    },
    /// The service's certificate has expired and was not replaced.
    Expired {
        /// The certificate.
        leaf: CertFacts,
    },
    /// A handshake was refused.
    Rejected {
        /// The class of failure.
        reason: RejectReason,
        /// The specifics: the peer, the certificate, the rule.
        detail: String,
    },
    /// The connection to the SPIFFE Workload API (the agent) was lost, or a
    /// response was not usable: the last good SVID keeps serving, and the
    /// connection is tried again with backoff.
    WorkloadApiLost {
        /// What happened.
        detail: String,
    },
    /// The SPIFFE Workload API answers again.
    WorkloadApiBack,
    /// A request on an admitted connection was refused by route or service
    /// rules (`ServerTls::require_peer`, features `axum` and `tonic`):
    /// the caller is not among those the route admits.
    RequestRefused {
        /// The class of refusal (`NotAllowed`).
        reason: RejectReason,
        /// The route or service (escaped, bounded) and the caller.
        detail: String,
    },
    /// A live connection was closed because the policy no longer admits its
    /// peer (revoked, removed from the allow-list, its CA no longer
    /// trusted, ...; expired, with `close_at_peer_expiry`), after the grace
    /// period.
    ConnectionClosed {
        /// Why the peer is no longer admitted.
        reason: RejectReason,
        /// The specifics: the peer, the certificate, the rule.
        detail: String,
    },
    /// A background task (the sweeper that closes live connections, the
    /// file watcher) panicked and was restarted. Enforcement goes on; the
    /// panic is a bug in meshtls: please report it.
    TaskRestarted {
        /// Which task: `sweeper`, `watcher` or `workload-api`.
        task: &'static str,
        /// What the panic said.
        detail: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reloaded {
                generation,
                leaf,
                policy_changed,
                ..
            } => write!(
                f,
                "generation {generation} serving: certificate serial {} valid until {}{}",
                leaf.serial,
                fmt_time(leaf.not_after),
                if *policy_changed {
                    " (trust or allow-list changed: earlier sessions will not resume)"
                } else {
                    ""
                }
            ),
            Self::ReloadFailed { error, serving } => {
                write!(
                    f,
                    "reload refused, generation {serving} keeps serving: {error}"
                )
            }
            Self::Expiring { leaf, remaining } => write!(
                f,
                "certificate serial {} expires at {} ({}s left)",
                leaf.serial,
                fmt_time(leaf.not_after),
                remaining.as_secs()
            ),
            Self::Expired { leaf } => write!(
                f,
                "certificate serial {} expired at {} and has not been replaced",
                leaf.serial,
                fmt_time(leaf.not_after)
            ),
            Self::Rejected { reason, detail } => write!(f, "handshake refused: {reason}: {detail}"),
            Self::WorkloadApiLost { detail } => write!(
                f,
                "SPIFFE Workload API lost (the last good SVID keeps serving): {detail}"
            ),
            Self::WorkloadApiBack => f.write_str("SPIFFE Workload API back"),
            Self::RequestRefused { reason, detail } => {
                write!(f, "request refused: {reason}: {detail}")
            }
            Self::ConnectionClosed { reason, detail } => {
                write!(f, "live connection closed: {reason}: {detail}")
            }
            Self::TaskRestarted { task, detail } => {
                write!(f, "meshtls {task} panicked and was restarted: {detail}")
            }
        }
    }
}

/// A snapshot of the counters operators alert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Handshakes completed and admitted (through the acceptor/connector).
    pub handshakes_ok: u64,
    /// Handshakes refused, by reason (only reasons seen, in a fixed order).
    pub rejected: Vec<(RejectReason, u64)>,
    /// Reloads that produced a new generation.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// The generation serving.
    pub generation: u64,
    /// When the serving generation was built.
    pub last_reload: Option<SystemTime>,
    /// When the serving certificate expires.
    pub certificate_not_after: Option<SystemTime>,
    /// Connections made through the acceptor, connector or an integration
    /// that are open now.
    pub live_connections: u64,
    /// Live connections closed because the policy stopped admitting their
    /// peer, by reason (only reasons seen).
    pub connections_closed: Vec<(RejectReason, u64)>,
    /// Background tasks restarted after a panic (each also an
    /// [`Event::TaskRestarted`]); anything but 0 is a bug to report.
    pub task_restarts: u64,
    /// The server turned session resumption off when it was built: this
    /// build's rustls stores sessions in a way meshtls cannot read (the
    /// session-format tripwire; also logged at ERROR and the gauge
    /// `meshtls_resumption_off`). Every handshake is then a full one.
    pub resumption_off: bool,
    /// Times the connection to the SPIFFE Workload API was lost (each also
    /// an [`Event::WorkloadApiLost`]).
    pub workload_api_lost: u64,
    /// Requests on admitted connections refused by route or service rules
    /// (`ServerTls::require_peer`, features `axum` and `tonic`; each
    /// also an [`Event::RequestRefused`]).
    pub requests_refused: u64,
}

impl Stats {
    /// Refusals for one reason.
    #[must_use]
    pub fn rejected_for(&self, reason: RejectReason) -> u64 {
        self.rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Live connections closed for one reason.
    #[must_use]
    pub fn closed_for(&self, reason: RejectReason) -> u64 {
        self.connections_closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Events and counters of one server or client.
pub(crate) struct Observer {
    side: &'static str,
    tx: broadcast::Sender<Event>,
    handshakes_ok: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    closed: [AtomicU64; RejectReason::ALL.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    generation: AtomicU64,
    last_reload: AtomicU64,
    not_after: AtomicU64,
    task_restarts: AtomicU64,
    resumption_off: AtomicBool,
    requests_refused: AtomicU64,
    workload_api_lost: AtomicU64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Observer {
    pub(crate) fn new(side: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        describe();
        Self {
            side,
            tx: broadcast::channel(256).0,
            handshakes_ok: AtomicU64::new(0),
            rejected: Default::default(),
            closed: Default::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_reload: AtomicU64::new(0),
            not_after: AtomicU64::new(0),
            task_restarts: AtomicU64::new(0),
            resumption_off: AtomicBool::new(false),
            requests_refused: AtomicU64::new(0),
            workload_api_lost: AtomicU64::new(0),
        }
    }

    /// "server" or "client".
    pub(crate) fn side(&self) -> &'static str {
        self.side
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    fn send(&self, event: Event) {
        // No subscribers is fine: events are also on tracing.
        let _ = self.tx.send(event);
    }

    pub(crate) fn admitted(&self) {
        self.handshakes_ok.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_handshakes_total", "side" => self.side, "result" => "admitted", "reason" => "none").increment(1);
    }

    /// An admitted handshake through the acceptor or connector, and how long
    /// it took.
    pub(crate) fn handshake_time(&self, resumed: bool, took: Duration) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("meshtls_handshake_duration_seconds", "side" => self.side, "kind" => if resumed { "resumed" } else { "full" })
            .record(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = (resumed, took);
    }

    pub(crate) fn rejected(&self, reason: RejectReason, detail: String) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_handshakes_total", "side" => self.side, "result" => "refused", "reason" => reason.as_str()).increment(1);
        tracing::warn!(side = self.side, reason = reason.as_str(), %detail, "mTLS handshake refused: {reason}");
        self.send(Event::Rejected { reason, detail });
    }

    /// A request refused after the handshake by route or service rules
    /// (`RequirePeer`): its own event and counter, beside the handshakes'.
    #[cfg_attr(not(any(feature = "axum", feature = "tonic")), allow(dead_code))]
    pub(crate) fn refused_request(&self, reason: RejectReason, detail: String) {
        self.requests_refused.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_requests_refused_total", "side" => self.side, "reason" => reason.as_str()).increment(1);
        tracing::warn!(side = self.side, reason = reason.as_str(), %detail, "request refused: {reason}");
        self.send(Event::RequestRefused { reason, detail });
    }

    /// The Workload API connection was lost (or a response was unusable).
    #[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
    pub(crate) fn workload_api_lost(&self, detail: String) {
        // What the agent said (a status message) is its text, not ours.
        let detail = crate::error::untrusted(&detail);
        self.workload_api_lost.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("meshtls_workload_api_connected", "side" => self.side).set(0.0);
        tracing::warn!(side = self.side, %detail, "SPIFFE Workload API lost; the last good SVID keeps serving");
        self.send(Event::WorkloadApiLost { detail });
    }

    /// The Workload API answers (again).
    #[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
    pub(crate) fn workload_api_up(&self, again: bool) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("meshtls_workload_api_connected", "side" => self.side).set(1.0);
        if again {
            tracing::info!(side = self.side, "SPIFFE Workload API back");
            self.send(Event::WorkloadApiBack);
        }
    }

    /// The server's resumption is off because this build's rustls stores
    /// sessions in a way meshtls cannot read (the session-format tripwire).
    pub(crate) fn resumption_off(&self, why: &str) {
        self.resumption_off.store(true, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("meshtls_resumption_off", "side" => self.side).set(1.0);
        tracing::error!(
            side = self.side,
            %why,
            "meshtls turned session resumption off: this build's rustls stores sessions in a way meshtls cannot read, so a resumed client could not be judged (every handshake is a full one; please report the rustls version)"
        );
    }

    pub(crate) fn connection_closed(&self, reason: RejectReason, detail: String) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_connections_closed_total", "side" => self.side, "reason" => reason.as_str()).increment(1);
        tracing::warn!(side = self.side, reason = reason.as_str(), %detail, "live mTLS connection closed: {reason}");
        self.send(Event::ConnectionClosed { reason, detail });
    }

    /// A background task panicked; it is being restarted.
    pub(crate) fn task_restarted(&self, task: &'static str, detail: String) {
        self.task_restarts.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_task_restarts_total", "side" => self.side, "task" => task)
            .increment(1);
        tracing::error!(side = self.side, task, %detail, "meshtls background task panicked and was restarted (a bug: please report it)");
        self.send(Event::TaskRestarted { task, detail });
    }

    /// A reload found nothing new.
    pub(crate) fn unchanged(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_reloads_total", "side" => self.side, "result" => "unchanged")
            .increment(1);
    }

    pub(crate) fn reloaded(
        &self,
        generation: u64,
        leaf: &CertFacts,
        roots: &[CertFacts],
        crl_next_update: Option<u64>,
        policy_changed: bool,
    ) {
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            let side = self.side;
            metrics::counter!("meshtls_reloads_total", "side" => side, "result" => "applied")
                .increment(1);
            metrics::gauge!("meshtls_generation", "side" => side).set(generation as f64);
            let expiry = |role: &'static str, at: u64| {
                metrics::gauge!("meshtls_certificate_expiration_timestamp_seconds", "side" => side, "role" => role)
                    .set(at as f64);
            };
            expiry("identity", unix(leaf.not_after));
            metrics::gauge!("meshtls_certificate_issued_timestamp_seconds", "side" => side, "role" => "identity")
                .set(unix(leaf.not_before) as f64);
            if let Some(first) = roots.iter().map(|r| unix(r.not_after)).min() {
                expiry("root", first);
            }
            if let Some(next) = crl_next_update {
                expiry("crl_next_update", next);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = crl_next_update;
        self.generation.store(generation, Ordering::Relaxed);
        self.last_reload
            .store(unix(SystemTime::now()), Ordering::Relaxed);
        self.not_after
            .store(unix(leaf.not_after), Ordering::Relaxed);
        let event = Event::Reloaded {
            generation,
            leaf: leaf.clone(),
            roots: roots.to_vec(),
            policy_changed,
        };
        tracing::info!(
            side = self.side,
            generation,
            serial = %leaf.serial,
            not_after = %fmt_time(leaf.not_after),
            policy_changed,
            "meshtls {event}"
        );
        self.send(event);
    }

    pub(crate) fn reload_failed(&self, error: Error) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("meshtls_reloads_total", "side" => self.side, "result" => "rejected")
            .increment(1);
        let serving = self.generation.load(Ordering::Relaxed);
        tracing::error!(side = self.side, serving, %error, "meshtls reload refused; the previous generation keeps serving");
        self.send(Event::ReloadFailed { error, serving });
    }

    pub(crate) fn expiring(&self, leaf: &CertFacts, remaining: Duration) {
        tracing::warn!(side = self.side, serial = %leaf.serial, not_after = %fmt_time(leaf.not_after), "certificate expires soon");
        self.send(Event::Expiring {
            leaf: leaf.clone(),
            remaining,
        });
    }

    pub(crate) fn expired(&self, leaf: &CertFacts) {
        tracing::error!(side = self.side, serial = %leaf.serial, not_after = %fmt_time(leaf.not_after), "certificate expired and was not replaced");
        self.send(Event::Expired { leaf: leaf.clone() });
    }

    pub(crate) fn stats(&self) -> Stats {
        let at = |v: u64| (v > 0).then(|| UNIX_EPOCH + Duration::from_secs(v));
        Stats {
            handshakes_ok: self.handshakes_ok.load(Ordering::Relaxed),
            rejected: by_reason(&self.rejected),
            connections_closed: by_reason(&self.closed),
            live_connections: 0,
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            generation: self.generation.load(Ordering::Relaxed),
            last_reload: at(self.last_reload.load(Ordering::Relaxed)),
            certificate_not_after: at(self.not_after.load(Ordering::Relaxed)),
            task_restarts: self.task_restarts.load(Ordering::Relaxed),
            resumption_off: self.resumption_off.load(Ordering::Relaxed),
            requests_refused: self.requests_refused.load(Ordering::Relaxed),
            workload_api_lost: self.workload_api_lost.load(Ordering::Relaxed),
        }
    }
}

/// The non-zero counters of `counts`, with their reasons.
fn by_reason(counts: &[AtomicU64; RejectReason::ALL.len()]) -> Vec<(RejectReason, u64)> {
    RejectReason::ALL
        .iter()
        .zip(counts)
        .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The metrics' help texts, given once per process.
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "meshtls_handshakes_total",
            "mTLS handshakes through the acceptor or connector, by result and refusal reason"
        );
        describe_histogram!(
            "meshtls_handshake_duration_seconds",
            Unit::Seconds,
            "Time from the first byte to the admitted peer, full or resumed handshakes"
        );
        describe_counter!(
            "meshtls_reloads_total",
            "Reloads of certificates, trust bundles, CRLs or the allow-list, by result"
        );
        describe_gauge!("meshtls_generation", "The generation of material serving");
        describe_gauge!(
            "meshtls_certificate_expiration_timestamp_seconds",
            Unit::Seconds,
            "When the serving identity, the earliest trust root and the earliest CRL nextUpdate expire (Unix time)"
        );
        describe_gauge!(
            "meshtls_certificate_issued_timestamp_seconds",
            Unit::Seconds,
            "Start of validity (notBefore) of the serving identity (Unix time)"
        );
        describe_gauge!(
            "meshtls_live_connections",
            "Connections made through the acceptor, connector or an integration that are open"
        );
        describe_counter!(
            "meshtls_task_restarts_total",
            "Background tasks (sweeper, watcher) restarted after a panic: a bug to report"
        );
        describe_counter!(
            "meshtls_connections_closed_total",
            "Live connections closed because the policy stopped admitting their peer, by reason"
        );
    });
}
