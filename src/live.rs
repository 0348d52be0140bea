//! The generation a config serves from, how the next one is built and
//! swapped in, and how a peer is judged against the current one.
//!
//! A generation is all-or-nothing: material is read and validated as a whole
//! before the swap, so a reader sees either the old set or the new one.
//! Session state (ticket keys, caches) belongs to a *policy epoch*: it is
//! kept when only the service's own certificate changes and replaced when
//! roots, CRLs or the allow-list change, so no session outlives the policy
//! that admitted it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::CertificateError;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::EndEntityCert;

use crate::error::Error;
use crate::identity::{IdentityCache, PeerIdentity};
use crate::material::{Material, RevocationScope, Role, Sources, peer_key_usage};
use crate::observe::{Observer, RejectReason, classify_webpki, describe_webpki, remember_refusal};
use crate::policy::{Allow, Policy, describe};

/// Per-epoch session state of one side.
pub(crate) trait Sessions: Send + Sync + Sized + 'static {
    /// What the builder chose, fixed for the life of the config.
    type Choice: Copy + Send + Sync + 'static;
    fn fresh(choice: Self::Choice) -> Result<Self, Error>;
}

/// How a peer is judged on its name: against the allow-list, or (a client
/// with no expected identities) against the name it dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameCheck {
    AllowList,
    ServerName,
}

/// One immutable generation.
pub(crate) struct Generation<S> {
    pub(crate) number: u64,
    pub(crate) epoch: u64,
    pub(crate) material: Arc<Material>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) sessions: Arc<S>,
    /// When this policy epoch began (`None` for the first, which follows no
    /// other policy).
    epoch_began: Option<Instant>,
    /// 0: nothing said; 1: `Expiring` sent; 2: `Expired` sent.
    expiry_state: AtomicU8,
}

impl<S> Generation<S> {
    /// Whether new session state (a ticket, a cache entry) may be created now.
    ///
    /// A handshake that straddles a policy change can have its peer judged by
    /// the old policy and its ticket sealed with the new epoch's keys; rustls
    /// gives the session hooks no per-connection context to tell. So for
    /// `settle` (the handshake timeout) after a change, no session state is
    /// created: those peers simply do a full handshake next time.
    pub(crate) fn may_store_sessions(&self, settle: Duration) -> bool {
        self.epoch_began
            .is_none_or(|began| began.elapsed() >= settle)
    }
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
pub(crate) struct Fixed<S: Sessions> {
    pub(crate) role: Role,
    pub(crate) sources: Sources,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) scope: RevocationScope,
    pub(crate) sessions: S::Choice,
    pub(crate) name_check: NameCheck,
    pub(crate) legacy_cn: bool,
    /// Warn when less than this share of the lifetime is left.
    pub(crate) expiry_warning: f64,
    /// How long after a policy change no session state is created (the
    /// handshake timeout).
    pub(crate) settle: Duration,
}

impl<S: Sessions> Fixed<S> {
    /// Validates a set of inputs read from the sources, as of now.
    fn validate(&self, inputs: crate::material::Inputs) -> Result<Material, Error> {
        Material::validate(
            &self.sources,
            inputs,
            self.role,
            &self.provider,
            self.scope,
            SystemTime::now(),
        )
    }
}

/// The live state shared by a config's resolver, verifier, session store,
/// the acceptor or connector, and the watcher.
pub(crate) struct Live<S: Sessions> {
    current: ArcSwap<Generation<S>>,
    pub(crate) fixed: Fixed<S>,
    pub(crate) observer: Observer,
    /// Serializes rebuilds so generation numbers and epochs stay ordered.
    rebuild: Mutex<()>,
    /// The watcher, stopped when the last user of this state goes away.
    pub(crate) watcher: OnceLock<crate::reload::WatchGuard>,
    /// Peers' parsed leaves.
    identities: IdentityCache,
}

/// A refused peer: the class, the specifics, and the error rustls should send.
pub(crate) struct Rejection {
    pub(crate) reason: RejectReason,
    pub(crate) detail: String,
    pub(crate) tls: CertificateError,
}

impl Rejection {
    /// Reports the refusal and turns it into the error rustls sends an alert for.
    pub(crate) fn into_tls(self, observer: &Observer) -> rustls::Error {
        remember_refusal(&self.tls, self.reason, &self.detail);
        observer.rejected(self.reason, self.detail);
        rustls::Error::InvalidCertificate(self.tls)
    }
}

impl<S: Sessions> Live<S> {
    /// Builds the first generation; fails if the material is not valid.
    pub(crate) fn new(
        fixed: Fixed<S>,
        policy: Policy,
        observer: Observer,
    ) -> Result<Arc<Self>, Error> {
        let material = Self::load(&fixed)?;
        let first = Generation {
            number: 1,
            epoch: 1,
            material: Arc::new(material),
            policy: Arc::new(policy),
            sessions: Arc::new(S::fresh(fixed.sessions)?),
            epoch_began: None,
            expiry_state: AtomicU8::new(0),
        };
        observer.reloaded(1, &first.material.leaf, &first.material.trust.roots, true);
        let live = Arc::new(Self {
            current: ArcSwap::from_pointee(first),
            fixed,
            observer,
            rebuild: Mutex::new(()),
            watcher: OnceLock::new(),
            identities: IdentityCache::new(),
        });
        // Nobody can have subscribed yet: log now; the watcher (or the next
        // reload) sends the event.
        let leaf = &live.current().material.leaf;
        if SystemTime::now() >= leaf.warn_at(live.fixed.expiry_warning) {
            tracing::warn!(serial = %leaf.serial, not_after = %crate::error::fmt_time(leaf.not_after), "certificate expires soon");
        }
        Ok(live)
    }

    fn load(fixed: &Fixed<S>) -> Result<Material, Error> {
        fixed.validate(fixed.sources.read()?)
    }

    /// The serving generation.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<Generation<S>>> {
        self.current.load()
    }

    /// Reads the sources again and swaps in a new generation if they changed
    /// and are valid. A failure is reported and leaves the serving one alone.
    pub(crate) fn reload(&self) -> Result<ReloadOutcome, Arc<Error>> {
        let result = self.try_reload();
        if let Err(e) = &result {
            self.observer.reload_failed(e.clone());
        }
        self.check_expiry();
        result
    }

    /// Like [`Self::reload`], but without reporting a failure: for the
    /// watcher's first attempt inside a debounce window.
    pub(crate) fn try_reload(&self) -> Result<ReloadOutcome, Arc<Error>> {
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let inputs = self.fixed.sources.read().map_err(Arc::new)?;
        if inputs == old.material.inputs {
            return Ok(ReloadOutcome::Unchanged {
                generation: old.number,
            });
        }
        let material = self.fixed.validate(inputs).map_err(Arc::new)?;
        let policy_changed = !material.inputs.same_trust(&old.material.inputs);
        self.install(&old, Arc::new(material), old.policy.clone(), policy_changed)
            .map_err(Arc::new)
    }

    /// Compiles and installs a new rule list (CN rules only if the builder
    /// opted in); an empty list is refused.
    pub(crate) fn set_rules(&self, rules: Vec<Allow>) -> Result<ReloadOutcome, Error> {
        if rules.is_empty() {
            return Err(Error::NoAllowList);
        }
        let policy = if self.fixed.legacy_cn {
            Policy::with_legacy_cn(rules)?
        } else {
            Policy::new(rules)?
        };
        self.set_policy(policy)
    }

    /// Replaces the allow-list; sessions are reset if the decisions can change.
    pub(crate) fn set_policy(&self, policy: Policy) -> Result<ReloadOutcome, Error> {
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let changed = policy.fingerprint() != old.policy.fingerprint();
        if !changed {
            return Ok(ReloadOutcome::Unchanged {
                generation: old.number,
            });
        }
        self.install(&old, old.material.clone(), Arc::new(policy), true)
    }

    fn install(
        &self,
        old: &Generation<S>,
        material: Arc<Material>,
        policy: Arc<Policy>,
        policy_changed: bool,
    ) -> Result<ReloadOutcome, Error> {
        let (epoch, sessions, epoch_began) = if policy_changed {
            let fresh = Arc::new(S::fresh(self.fixed.sessions)?);
            (old.epoch + 1, fresh, Some(Instant::now()))
        } else {
            (old.epoch, old.sessions.clone(), old.epoch_began)
        };
        let next = Generation {
            number: old.number + 1,
            epoch,
            material,
            policy,
            sessions,
            epoch_began,
            expiry_state: AtomicU8::new(0),
        };
        let next = Arc::new(next);
        // Swap first: whoever hears the event must find the new generation serving.
        self.current.store(next.clone());
        self.observer.reloaded(
            next.number,
            &next.material.leaf,
            &next.material.trust.roots,
            policy_changed,
        );
        let number = next.number;
        Ok(ReloadOutcome::Swapped {
            generation: number,
            policy_changed,
        })
    }

    /// Sends `Expiring` / `Expired` once per generation when due.
    pub(crate) fn check_expiry(&self) {
        let generation = self.current.load();
        let leaf = &generation.material.leaf;
        let now = SystemTime::now();
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

    /// The identity of a peer's leaf, parsed once and cached.
    pub(crate) fn identity(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> Result<PeerIdentity, crate::identity::IdentityError> {
        self.identities.get(end_entity)
    }

    /// The full check of a peer: chain to the roots (with revocation), then
    /// the workload-certificate rules, then the name or allow-list.
    pub(crate) fn judge(
        &self,
        generation: &Generation<S>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: Option<&ServerName<'_>>,
        now: UnixTime,
    ) -> Result<PeerIdentity, Rejection> {
        let algs = self.fixed.provider.signature_verification_algorithms.all;
        let usage = peer_key_usage(self.fixed.role);
        if let Err(e) =
            generation
                .material
                .trust
                .verify(algs, end_entity, intermediates, now, usage)
        {
            let (reason, tls) = classify_webpki(&e);
            let who = PeerIdentity::from_leaf_der(end_entity)
                .map(|p| describe(&p))
                .unwrap_or_else(|_| "with an unreadable certificate".into());
            let detail = format!("peer {who}: {}", describe_webpki(&e));
            return Err(Rejection {
                reason,
                detail,
                tls,
            });
        }
        let peer = self.identity(end_entity).map_err(|e| Rejection {
            reason: RejectReason::NotAWorkloadCertificate,
            detail: format!("peer certificate refused: {e}"),
            tls: CertificateError::ApplicationVerificationFailure,
        })?;
        self.check_name(generation, &peer, end_entity, server_name)?;
        Ok(peer)
    }

    fn check_name(
        &self,
        generation: &Generation<S>,
        peer: &PeerIdentity,
        end_entity: &CertificateDer<'_>,
        server_name: Option<&ServerName<'_>>,
    ) -> Result<(), Rejection> {
        match (self.fixed.name_check, server_name) {
            (NameCheck::ServerName, Some(name)) => {
                let valid = EndEntityCert::try_from(end_entity)
                    .and_then(|c| c.verify_is_valid_for_subject_name(name));
                valid.map_err(|e| Rejection {
                    reason: RejectReason::NotAllowed,
                    detail: format!(
                        "server {} is not valid for the name {:?} we dialled: {}",
                        describe(peer),
                        name.to_str(),
                        describe_webpki(&e)
                    ),
                    tls: CertificateError::NotValidForName,
                })
            }
            _ => generation.policy.check(peer).map_err(|e| Rejection {
                reason: RejectReason::NotAllowed,
                detail: e.to_string(),
                tls: CertificateError::ApplicationVerificationFailure,
            }),
        }
    }

    /// The cheap check of a resumed peer under the same policy epoch:
    /// validity window and allow-list, no signatures.
    pub(crate) fn recheck(
        &self,
        generation: &Generation<S>,
        end_entity: &CertificateDer<'_>,
        server_name: Option<&ServerName<'_>>,
    ) -> Result<PeerIdentity, Rejection> {
        let peer = self.identity(end_entity).map_err(|e| Rejection {
            reason: RejectReason::NotAWorkloadCertificate,
            detail: format!("resumed peer refused: {e}"),
            tls: CertificateError::ApplicationVerificationFailure,
        })?;
        if !peer.is_valid_at(SystemTime::now()) {
            return Err(Rejection {
                reason: RejectReason::Expired,
                detail: format!(
                    "resumed peer {}: certificate outside its validity",
                    describe(&peer)
                ),
                tls: CertificateError::Expired,
            });
        }
        self.check_name(generation, &peer, end_entity, server_name)?;
        Ok(peer)
    }
}
