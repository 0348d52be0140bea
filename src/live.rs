//! The generation a config serves from, and how the next one is built and
//! swapped in.
//!
//! A generation is all-or-nothing: material is read and validated as a whole
//! before the swap, so a reader sees either the old set or the new one.
//! Verdicts and session state (ticket keys, caches) belong to a *policy
//! epoch*: they are kept when only the service's own certificate changes and
//! replaced when roots, CRLs or the allow-list change.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;

use crate::allow::Allow;
use crate::clock::Clock;
use crate::error::{ConfigError, Error};
use crate::judge::{Admitted, Epoch, NameCheck, Options, Presented, Refusal, RevocationScope};
use crate::material::{Material, Role, Sources, peer_key_usage};
use crate::observe::Observer;
use crate::policy::Policy;
use crate::session::Resumption;
use crate::side::{Client, Server, Side};
use crate::track::{Closing, Guard, Tracker};

/// One immutable generation of one side.
pub(crate) struct Generation<S: Side> {
    pub(crate) number: u64,
    pub(crate) material: Arc<Material>,
    /// The policy epoch: what judges peers, and the verdicts reached.
    pub(crate) epoch: Arc<Epoch>,
    /// Session state of the same epoch, this side's.
    pub(crate) sessions: Arc<S::Sessions>,
    /// 0: nothing said; 1: `Expiring` sent; 2: `Expired` sent.
    expiry_state: AtomicU8,
}

/// The outcome of a reload that did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The files are byte-for-byte what the serving generation was built from.
    Unchanged {
        /// The generation still serving.
        generation: u64,
    },
    /// A new generation is serving.
    Swapped {
        /// Its number.
        generation: u64,
        /// Whether trust material or the allow-list changed (sessions reset).
        policy_changed: bool,
    },
}

/// Settings fixed for the life of a config.
pub(crate) struct Fixed {
    /// Where each part is read from; an update replaces parts.
    pub(crate) sources: ArcSwap<Sources>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) scope: RevocationScope,
    pub(crate) resumption: Resumption,
    pub(crate) legacy_cn: bool,
    /// Warn when less than this share of the lifetime is left.
    pub(crate) expiry_warning: f64,
    /// What happens to live connections the policy stops admitting.
    pub(crate) closing: Closing,
    /// What every verdict reads the time from.
    pub(crate) clock: Clock,
}

impl Fixed {
    /// Validates a set of inputs read from `sources`, as of now, for a
    /// service on the `role` side.
    fn validate(
        &self,
        role: Role,
        sources: &Sources,
        inputs: crate::material::Inputs,
    ) -> Result<Material, Error> {
        Material::validate(
            sources,
            inputs,
            role,
            &self.provider,
            self.scope,
            self.clock.now(),
        )
    }
}

/// The live state shared by a config's resolver, verifier, session store,
/// the acceptor or connector, and the watcher.
pub(crate) struct Live<S: Side> {
    current: ArcSwap<Generation<S>>,
    fixed: Fixed,
    /// What only this side keeps.
    only: S::Only,
    options: Options,
    observer: Arc<Observer>,
    /// The connections made with this state, judged again when the policy
    /// changes.
    tracker: Tracker,
    /// Serializes rebuilds so generation numbers and epochs stay ordered.
    rebuild: Mutex<()>,
    /// Whatever must stop when the last user of this state goes away (the
    /// watcher's guard).
    held: Mutex<Vec<Box<dyn Any + Send + Sync>>>,
    /// Tests: the next sweep panics.
    #[cfg(test)]
    fault: std::sync::atomic::AtomicBool,
}

impl<S: Side> std::fmt::Debug for Live<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("side", &self.observer.side())
            .field("generation", &self.current().number)
            .finish_non_exhaustive()
    }
}

impl<S: Side> Live<S> {
    /// Builds the first generation; fails if the material is not valid.
    pub(crate) fn new(
        fixed: Fixed,
        only: S::Only,
        policy: Policy,
        observer: Observer,
    ) -> Result<Arc<Self>, Error> {
        let material = Arc::new(Self::load(&fixed)?);
        let first = Generation {
            number: 1,
            epoch: Arc::new(Epoch::new(1, material.trust.clone(), Arc::new(policy))),
            material,
            sessions: Arc::new(S::fresh_sessions(fixed.resumption, 1)?),
            expiry_state: AtomicU8::new(0),
        };
        observer.reloaded(
            1,
            &first.material.leaf,
            &first.material.trust.roots,
            first.material.trust.crl_next_update(),
            true,
        );
        let options = Options {
            usage: peer_key_usage(S::ROLE),
            algs: fixed.provider.signature_verification_algorithms.all,
            name_check: if S::judges_dialled_name(&only) {
                NameCheck::ServerName
            } else {
                NameCheck::AllowList
            },
        };
        let live = Arc::new(Self {
            current: ArcSwap::from_pointee(first),
            tracker: Tracker::new(fixed.closing, observer.side()),
            fixed,
            only,
            options,
            observer: Arc::new(observer),
            rebuild: Mutex::new(()),
            held: Mutex::new(Vec::new()),
            #[cfg(test)]
            fault: std::sync::atomic::AtomicBool::new(false),
        });
        // Nobody can have subscribed yet: log now; the watcher (or the next
        // reload) sends the event.
        let leaf = &live.current().material.leaf;
        if live.fixed.clock.now() >= leaf.warn_at(live.fixed.expiry_warning) {
            tracing::warn!(serial = %leaf.serial, not_after = %crate::error::fmt_time(leaf.not_after), "certificate expires soon");
        }
        Ok(live)
    }

    fn load(fixed: &Fixed) -> Result<Material, Error> {
        let sources = fixed.sources.load();
        fixed.validate(S::ROLE, &sources, sources.read()?)
    }

    /// Keeps `value` alive as long as this state (and drops it with it).
    pub(crate) fn hold(&self, value: impl Any + Send + Sync) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(value));
    }

    /// This side's events and counters.
    pub(crate) fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// The counters, with the live connections counted now.
    pub(crate) fn stats(&self) -> crate::observe::Stats {
        let mut stats = self.observer.stats();
        stats.live_connections = self.tracker.live();
        stats
    }

    /// The clock every verdict reads, as rustls asks for it.
    pub(crate) fn rustls_time(&self) -> Arc<dyn rustls::time_provider::TimeProvider> {
        Arc::new(crate::clock::RustlsTime(self.fixed.clock.clone()))
    }

    /// Now, by the config's clock (Unix seconds).
    pub(crate) fn now_unix(&self) -> u64 {
        self.fixed.clock.unix().as_secs()
    }

    /// Compiles rules with this config's settings (CN rules only if the
    /// builder allowed them).
    pub(crate) fn compile(&self, rules: Vec<Allow>) -> Result<Policy, crate::error::RuleError> {
        Policy::compile(rules, self.fixed.legacy_cn)
    }

    /// What a connection's socket keeps for closing it (nothing when live
    /// connections are kept).
    pub(crate) fn socket_of<IO: 'static>(&self, io: &IO) -> crate::track::Socket {
        crate::track::Socket::of(io, &self.fixed.closing)
    }

    /// The files the sources read (what a watcher watches).
    pub(crate) fn files(&self) -> Vec<std::path::PathBuf> {
        self.fixed
            .sources
            .load()
            .files()
            .map(ToOwned::to_owned)
            .collect()
    }

    /// The full judgment of `peer` under `generation`'s epoch at `now`.
    pub(crate) fn judge_in(
        &self,
        generation: &Generation<S>,
        peer: Presented<'_>,
        now: rustls_pki_types::UnixTime,
    ) -> Result<Admitted, Refusal> {
        generation.epoch.judge(&self.options, peer, now)
    }

    /// [`Self::admit`] under `generation`'s epoch (a session sealed or
    /// opened with that generation's keys).
    pub(crate) fn admit_in(
        &self,
        generation: &Generation<S>,
        peer: Presented<'_>,
    ) -> Result<Admitted, Refusal> {
        generation
            .epoch
            .admit(&self.options, peer, self.fixed.clock.unix())
    }

    /// The serving generation.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<Generation<S>>> {
        self.current.load()
    }

    /// The serving generation, as an `Arc` the caller may keep.
    pub(crate) fn current_full(&self) -> Arc<Generation<S>> {
        self.current.load_full()
    }

    /// Whether the current epoch admits `peer` now: a remembered verdict or
    /// the full judgment (the verdict says in which epoch).
    pub(crate) fn admit(&self, peer: Presented<'_>) -> Result<Admitted, Refusal> {
        let epoch = self.current().epoch.clone();
        epoch.admit(&self.options, peer, self.fixed.clock.unix())
    }

    /// Tracks a connection whose peer was `admitted`, so that it is closed
    /// when the policy stops admitting its peer. The first call starts the
    /// sweeper thread.
    pub(crate) fn track(
        self: &Arc<Self>,
        admitted: &Admitted,
        peer: Presented<'_>,
        socket: Option<std::net::TcpStream>,
    ) -> Guard {
        let live = Arc::downgrade(self);
        self.tracker.track(admitted, peer, socket, move || {
            let spawned = std::thread::Builder::new()
                .name("meshtls-sweep".into())
                .spawn(move || sweeper(&live));
            if let Err(e) = &spawned {
                tracing::error!(error = %e, "cannot start the sweeper thread (tried again with the next connection): live connections will not be closed when the policy changes meanwhile");
            }
            spawned.is_ok()
        })
    }

    /// Judges the tracked connections against the serving epoch; closes
    /// those due and reports them. Returns when to look again: by the
    /// clock, and by the monotonic clock for a grace ending.
    pub(crate) fn sweep(&self) -> (Option<SystemTime>, Option<std::time::Instant>) {
        #[cfg(test)]
        if self.fault.swap(false, Ordering::Relaxed) {
            panic!("a fault injected by a test");
        }
        let epoch = self.current().epoch.clone();
        let swept = self
            .tracker
            .sweep(&epoch, &self.options, self.fixed.clock.now());
        for (reason, detail) in swept.closed {
            self.observer.connection_closed(reason, detail);
        }
        (swept.next, swept.next_grace)
    }

    /// Reads the sources again and swaps in a new generation if they changed
    /// and are valid. A failure is reported and leaves the serving one alone.
    pub(crate) fn reload(&self) -> Result<ReloadOutcome, Error> {
        let result = self.try_reload();
        if let Err(e) = &result {
            self.observer.reload_failed(e.clone());
        }
        self.check_expiry();
        result
    }

    /// Like [`Self::reload`], but without reporting a failure: for the
    /// watcher's first attempt inside a debounce window.
    pub(crate) fn try_reload(&self) -> Result<ReloadOutcome, Error> {
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let sources = self.fixed.sources.load_full();
        self.rebuild_from(&sources)
    }

    /// Applies an update of material handed over by the application: the
    /// sources it names replaced, then validated and swapped in as a
    /// reload is; the sources change only if the new material serves. A
    /// failure is reported and leaves everything as it was.
    pub(crate) fn update(&self, update: &crate::material::Update) -> Result<ReloadOutcome, Error> {
        let result = {
            let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.fixed.sources.load_full();
            update.apply(&current).and_then(|next| {
                let outcome = self.rebuild_from(&next)?;
                self.fixed.sources.store(Arc::new(next));
                Ok(outcome)
            })
        };
        if let Err(e) = &result {
            self.observer.reload_failed(e.clone());
        }
        self.check_expiry();
        result
    }

    /// Reads `sources` and swaps in a new generation if what they hold
    /// changed and is valid. Called under the rebuild lock.
    fn rebuild_from(&self, sources: &Sources) -> Result<ReloadOutcome, Error> {
        let old = self.current.load_full();
        let inputs = sources.read()?;
        if inputs == old.material.inputs {
            self.observer.unchanged();
            return Ok(ReloadOutcome::Unchanged {
                generation: old.number,
            });
        }
        let material = Arc::new(self.fixed.validate(S::ROLE, sources, inputs)?);
        let epoch = if material.inputs.same_trust(&old.material.inputs) {
            None
        } else {
            Some(Epoch::new(
                old.epoch.number + 1,
                material.trust.clone(),
                old.epoch.policy.clone(),
            ))
        };
        self.install(&old, material, epoch)
    }

    /// Compiles and installs a new rule list (CN rules only if the builder
    /// opted in); an empty list is refused.
    pub(crate) fn set_rules(&self, rules: Vec<Allow>) -> Result<ReloadOutcome, Error> {
        if rules.is_empty() {
            return Err(ConfigError::NoAllowList.into());
        }
        let policy = self.compile(rules)?;
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if policy.fingerprint() == old.epoch.policy.fingerprint() {
            self.observer.unchanged();
            return Ok(ReloadOutcome::Unchanged {
                generation: old.number,
            });
        }
        let epoch = Epoch::new(
            old.epoch.number + 1,
            old.epoch.trust.clone(),
            Arc::new(policy),
        );
        self.install(&old, old.material.clone(), Some(epoch))
    }

    /// Swaps in the next generation; `epoch` is `Some` when the policy
    /// changed (sessions then start afresh with it).
    fn install(
        &self,
        old: &Generation<S>,
        material: Arc<Material>,
        epoch: Option<Epoch>,
    ) -> Result<ReloadOutcome, Error> {
        let policy_changed = epoch.is_some();
        let (epoch, sessions) = match epoch {
            Some(epoch) => {
                let sessions = S::fresh_sessions(self.fixed.resumption, epoch.number)?;
                (Arc::new(epoch), Arc::new(sessions))
            }
            None => (old.epoch.clone(), old.sessions.clone()),
        };
        let next = Arc::new(Generation {
            number: old.number + 1,
            material,
            epoch,
            sessions,
            expiry_state: AtomicU8::new(0),
        });
        // Swap first: whoever hears the event must find the new generation serving.
        self.current.store(next.clone());
        if policy_changed {
            self.tracker.policy_changed();
        }
        self.observer.reloaded(
            next.number,
            &next.material.leaf,
            &next.material.trust.roots,
            next.material.trust.crl_next_update(),
            policy_changed,
        );
        Ok(ReloadOutcome::Swapped {
            generation: next.number,
            policy_changed,
        })
    }

    /// Sends `Expiring` / `Expired` once per generation when due.
    pub(crate) fn check_expiry(&self) {
        let generation = self.current.load();
        let leaf = &generation.material.leaf;
        let now = self.fixed.clock.now();
        let state = generation.expiry_state.load(Ordering::Relaxed);
        if now > leaf.not_after {
            if state < 2 {
                generation.expiry_state.store(2, Ordering::Relaxed);
                self.observer.expired(leaf);
            }
        } else if now >= leaf.warn_at(self.fixed.expiry_warning) && state < 1 {
            generation.expiry_state.store(1, Ordering::Relaxed);
            let remaining = leaf.not_after.duration_since(now).unwrap_or_default();
            self.observer.expiring(leaf, remaining);
        }
    }
}

impl Live<Server> {
    /// How long a peer may take to send its whole ClientHello.
    pub(crate) fn hello_timeout(&self) -> Duration {
        self.only.hello_timeout
    }

    /// Handshakes in flight before the oldest is shed.
    pub(crate) fn max_pending_handshakes(&self) -> usize {
        self.only.max_pending_handshakes
    }
}

impl Live<Client> {
    /// Whether servers are judged by the name dialled (a client built
    /// without expected identities) rather than by expected identities.
    pub(crate) fn judges_dialled_name(&self) -> bool {
        self.options.name_check == NameCheck::ServerName
    }
}

/// The Workload API stream's thread feeds the live state it was attached to,
/// while it lives.
#[cfg(feature = "workload-api")]
pub(crate) struct Following<S: Side>(pub(crate) std::sync::Weak<Live<S>>);

#[cfg(feature = "workload-api")]
impl<S: Side> crate::workload::Follower for Following<S> {
    fn update(&mut self, update: crate::material::Update) -> bool {
        let Some(live) = self.0.upgrade() else {
            return false;
        };
        // A refusal is reported (ReloadFailed) and the last good serves.
        let _ = live.update(&update);
        true
    }

    fn lost(&mut self, detail: String) -> bool {
        let Some(live) = self.0.upgrade() else {
            return false;
        };
        live.observer.workload_api_lost(detail);
        live.check_expiry();
        true
    }

    fn back(&mut self) -> bool {
        let Some(live) = self.0.upgrade() else {
            return false;
        };
        live.observer.workload_api_up(true);
        true
    }

    fn tick(&mut self) -> bool {
        let Some(live) = self.0.upgrade() else {
            return false;
        };
        live.check_expiry();
        true
    }

    fn restarted(&mut self, detail: String) -> bool {
        let Some(live) = self.0.upgrade() else {
            return false;
        };
        live.observer.task_restarted("workload-api", detail);
        true
    }
}

/// The thread that closes live connections the policy no longer admits: it
/// sweeps when its alarm rings (a policy change, a new deadline) or when a
/// verdict runs out by the clock, and ends when the live state is dropped.
/// It belongs to no async runtime. A sweep that panics is reported and
/// the sweeper goes on: enforcement never stops silently.
fn sweeper<S: Side>(live: &std::sync::Weak<Live<S>>) {
    let mut failures: u32 = 0;
    loop {
        let Some(strong) = live.upgrade() else {
            return;
        };
        let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| strong.sweep()));
        let (next, next_grace) = match swept {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(panic) => {
                failures = failures.saturating_add(1);
                strong
                    .observer
                    .task_restarted("sweeper", crate::error::panic_message(&*panic));
                drop(strong);
                // A sweep that keeps failing is retried, but not in a spin.
                std::thread::sleep(Duration::from_millis(50).saturating_mul(1 << failures.min(8)));
                continue;
            }
        };
        let alarm = strong.tracker.alarm();
        let clock = strong.fixed.clock.clone();
        drop(strong);
        clock.sleep(&alarm, next, next_grace);
    }
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::dev::DevCa;
    use crate::{Allow, ClientTls, Event, ServerTls, Source};

    /// Principle 7: a sweep that panics is reported and the sweeper goes on;
    /// the connection the failed sweep should have closed is closed by the
    /// next one.
    #[tokio::test]
    async fn a_sweep_that_panics_is_reported_and_the_sweeper_goes_on() {
        let ca = DevCa::new("restart root").unwrap();
        let id = |name: &str| format!("spiffe://restart.test/ns/a/sa/{name}");
        let server_cert = ca.leaf().dns("localhost").server().issue().unwrap();
        let client_cert = ca.leaf().spiffe(&id("web")).client().issue().unwrap();
        let server = ServerTls::builder()
            .identity(
                Source::pem("s.crt", server_cert.chain_pem()),
                Source::pem("s.key", server_cert.key_pem()),
            )
            .client_roots(Source::pem("ca", ca.cert_pem()))
            .allow(Allow::spiffe_id(&id("web")))
            .live_connection_grace(Duration::ZERO)
            .build()
            .unwrap();
        let client = ClientTls::builder()
            .identity(
                Source::pem("c.crt", client_cert.chain_pem()),
                Source::pem("c.key", client_cert.key_pem()),
            )
            .server_roots(Source::pem("ca", ca.cert_pem()))
            .build()
            .unwrap();
        let mut events = server.subscribe();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut tls, _) = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 1];
            while tls.read(&mut buf).await.is_ok_and(|n| n > 0) {
                let _ = tls.write_all(&buf).await;
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tls, _) = client.connector().connect("localhost", tcp).await.unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await.unwrap();

        server
            .live
            .fault
            .store(true, std::sync::atomic::Ordering::Relaxed);
        server
            .set_allow_list([Allow::spiffe_id(&id("other"))])
            .unwrap();
        let mut restarted = false;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await.unwrap() {
                    Event::TaskRestarted { task, detail } => {
                        assert_eq!(task, "sweeper");
                        assert!(detail.contains("injected"), "{detail}");
                        restarted = true;
                    }
                    Event::ConnectionClosed { reason, .. } => return reason,
                    _ => {}
                }
            }
        })
        .await
        .expect("the connection was not closed after the sweeper panicked");
        assert!(restarted, "no TaskRestarted event before the close");
        assert_eq!(closed, crate::RejectReason::NotAllowed);
        assert_eq!(server.stats().task_restarts, 1);
    }
}
