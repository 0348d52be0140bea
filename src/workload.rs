//! Identity from the SPIFFE Workload API (feature `workload-api`): a SPIRE
//! agent (or any Workload API server) streams X509-SVIDs and bundles, and
//! each response becomes an [`Update`] of the serving material, validated
//! all or nothing as a reload from disk is.
//!
//! ```no_run
//! # fn f() -> Result<(), meshtls::Error> {
//! use meshtls::{Allow, ServerTls, WorkloadApi};
//! // SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/agent.sock
//! let server = ServerTls::builder()
//!     .workload_api(WorkloadApi::from_env())
//!     .allow(Allow::spiffe_trust_domain("prod.example"))
//!     .build()?;
//! # let _ = server; Ok(()) }
//! ```
//!
//! The SVID is the service's identity; each trust domain's bundle in the
//! response (its own and the federated ones) becomes that trust domain's
//! roots, which vouch for its SPIFFE IDs only. There are no flat roots: a
//! client expects its servers by SPIFFE ID
//! ([`expect_server`](crate::Builder::expect_server)), as the dialled name is
//! not something a trust domain's bundle vouches for.
//!
//! The client streams (it does not poll). When the agent goes away the last
//! good SVID keeps serving, the client reconnects with backoff, and the
//! server or client says so ([`Event::WorkloadApiLost`](crate::Event::WorkloadApiLost),
//! [`Event::WorkloadApiBack`](crate::Event::WorkloadApiBack), the gauge
//! `meshtls_workload_api_connected`); an SVID nearing its expiry without an
//! update is reported as any certificate is (`Expiring`, the expiry gauge).
//! A response that fails validation is refused as a bad file would be
//! (`ReloadFailed`), and the last good generation keeps serving.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use futures_core::Stream;
use spiffe::{WorkloadApiClient, X509Context};

use crate::error::{ConfigError, Error};
use crate::material::Update;
use crate::source::pem_encode;

/// What [`WorkloadApi::choose`] is shown of each SVID in a response.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SvidChoice<'a> {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: &'a str,
    /// The hint the registration gave it, if any.
    pub hint: Option<&'a str>,
}

type Chooser = dyn Fn(&[SvidChoice<'_>]) -> Option<usize> + Send + Sync;

#[derive(Clone)]
enum Pick {
    First,
    Hint(String),
    Choose(Arc<Chooser>),
}

/// Where and how to reach the SPIFFE Workload API, for
/// [`Builder::workload_api`](crate::Builder::workload_api).
#[derive(Clone)]
#[must_use]
pub struct WorkloadApi {
    endpoint: Option<String>,
    pick: Pick,
    wait: Duration,
    backoff: (Duration, Duration),
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi")
            .field("endpoint", &self.endpoint_name())
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl WorkloadApi {
    /// The endpoint named by `SPIFFE_ENDPOINT_SOCKET` (`unix:///path` or
    /// `tcp:IP:port`), read when the server or client is built.
    pub fn from_env() -> Self {
        Self {
            endpoint: None,
            pick: Pick::First,
            wait: Duration::from_secs(30),
            backoff: (Duration::from_millis(200), Duration::from_secs(10)),
        }
    }

    /// An endpoint given here: `unix:///run/spire/agent.sock`,
    /// `unix:/run/spire/agent.sock`, or `tcp:127.0.0.1:8081`.
    pub fn endpoint(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: Some(endpoint.into()),
            ..Self::from_env()
        }
    }

    /// With several SVIDs in a response, the one whose registration hint is
    /// `hint` (and none, refused, when no SVID has it). Default: the first.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.pick = Pick::Hint(hint.into());
        self
    }

    /// With several SVIDs in a response, the one `choose` picks by its
    /// position (`None`: the response is refused).
    pub fn choose(
        mut self,
        choose: impl Fn(&[SvidChoice<'_>]) -> Option<usize> + Send + Sync + 'static,
    ) -> Self {
        self.pick = Pick::Choose(Arc::new(choose));
        self
    }

    /// How long building waits for the first SVID (the agent starting, the
    /// workload being attested and registered). Default 30 s.
    pub fn wait_for_agent(mut self, wait: Duration) -> Self {
        // A wait past a day is as good as none; beyond what an Instant can
        // add, it would be a panic.
        self.wait = wait.min(Duration::from_secs(24 * 3600));
        self
    }

    fn endpoint_name(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => std::env::var("SPIFFE_ENDPOINT_SOCKET")
                .map(|e| format!("{e} (SPIFFE_ENDPOINT_SOCKET)"))
                .unwrap_or_else(|_| "SPIFFE_ENDPOINT_SOCKET (not set)".to_owned()),
        }
    }

    async fn connect(&self) -> Result<WorkloadApiClient, String> {
        match &self.endpoint {
            Some(e) => WorkloadApiClient::connect_to(e).await,
            None => WorkloadApiClient::connect_env().await,
        }
        .map_err(|e| e.to_string())
    }
}

/// The Update a Workload API response stands for: the chosen SVID as the
/// identity, each trust domain's bundle as its roots (and only those).
fn update_of(context: &X509Context, pick: &Pick) -> Result<Update, String> {
    let svids = context.svids();
    let ids: Vec<String> = svids.iter().map(|s| s.spiffe_id().to_string()).collect();
    let choices: Vec<SvidChoice<'_>> = svids
        .iter()
        .zip(&ids)
        .map(|(s, id)| SvidChoice {
            spiffe_id: id,
            hint: s.hint(),
        })
        .collect();
    let index = match pick {
        Pick::First => (!svids.is_empty()).then_some(0),
        Pick::Hint(hint) => choices.iter().position(|c| c.hint == Some(hint.as_str())),
        Pick::Choose(choose) => choose(&choices).filter(|i| *i < svids.len()),
    }
    .ok_or_else(|| {
        let offered: Vec<String> = choices
            .iter()
            .map(|c| match c.hint {
                Some(h) => format!("{} (hint {h:?})", c.spiffe_id),
                None => c.spiffe_id.to_owned(),
            })
            .collect();
        format!(
            "no SVID in the response was chosen (offered: {})",
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        )
    })?;
    let svid = &svids[index];
    let chain: String = svid
        .cert_chain()
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c.as_bytes()))
        .collect();
    let key = pem_encode("PRIVATE KEY", svid.private_key().as_bytes());
    let domains = context.bundle_set().iter().map(|(td, bundle)| {
        let pem: String = bundle
            .authorities()
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c.as_bytes()))
            .collect();
        (td.to_string(), pem.into_bytes())
    });
    Ok(Update::new()
        .origin("the SPIFFE Workload API")
        .identity(chain, key)
        .exactly_these_domain_roots(domains))
}

/// What the stream's thread tells the live state it feeds.
pub(crate) trait Follower: Send {
    /// A new response, as an update; `false` when the live state is gone.
    fn update(&mut self, update: Update) -> bool;
    /// The connection to the agent was lost (`false`: the live state is gone).
    fn lost(&mut self, detail: String) -> bool;
    /// The connection is back.
    fn back(&mut self) -> bool;
    /// Time passed (expiry warnings); `false` when the live state is gone.
    fn tick(&mut self) -> bool;
    /// Applying a response panicked (a bug): reported, and the stream goes
    /// on; `false` when the live state is gone.
    fn restarted(&mut self, detail: String) -> bool;
}

/// The stream, started: its first response, and where to attach the live
/// state that follows the rest. Dropping the guard stops the thread.
pub(crate) struct Started {
    pub(crate) first: Update,
    attach: mpsc::Sender<Box<dyn Follower>>,
    pub(crate) guard: StopGuard,
}

impl Started {
    /// Hands the stream's thread the live state to feed from now on.
    pub(crate) fn attach(self, follower: Box<dyn Follower>) -> StopGuard {
        let _ = self.attach.send(follower);
        self.guard
    }
}

/// Stops the stream's thread when dropped (held by the live state).
pub(crate) struct StopGuard(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>);

/// Connects, waits for the first usable response (within `api.wait`), and
/// leaves a thread with its own runtime following the stream.
pub(crate) fn start(api: &WorkloadApi) -> Result<Started, Error> {
    let (first_tx, first_rx) = mpsc::channel::<Result<Update, String>>();
    let (attach_tx, attach_rx) = mpsc::channel::<Box<dyn Follower>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = api.clone();
    let wait = api.wait;
    let endpoint = api.endpoint_name();
    std::thread::Builder::new()
        .name("meshtls-workload-api".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = first_tx.send(Err("cannot start a runtime for the Workload API".into()));
                return;
            };
            let mut state = FollowState {
                first_tx: Some(first_tx),
                attach_rx,
                stop: stop_rx,
                follower: None,
                lost: false,
                started: tokio::time::Instant::now(),
            };
            // A panic (a bug, here or in the client) is reported and the
            // stream followed again: following never stops silently.
            let mut failures: u32 = 0;
            loop {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(follow(&api, &mut state));
                }));
                let Err(panic) = run else {
                    return;
                };
                let detail = crate::error::panic_message(&*panic);
                match state.follower.as_mut() {
                    Some(f) => {
                        if !f.restarted(detail) {
                            return;
                        }
                    }
                    None => {
                        if let Some(tx) = state.first_tx.take() {
                            let _ =
                                tx.send(Err(format!("the Workload API client panicked: {detail}")));
                        }
                        return;
                    }
                }
                failures = failures.saturating_add(1);
                std::thread::sleep(Duration::from_millis(100).saturating_mul(1 << failures.min(7)));
            }
        })
        .map_err(|e| workload_error(&endpoint, wait, &format!("cannot start a thread: {e}")))?;
    match first_rx.recv_timeout(wait.saturating_add(Duration::from_secs(1))) {
        Ok(Ok(first)) => Ok(Started {
            first,
            attach: attach_tx,
            guard: StopGuard(stop_tx),
        }),
        Ok(Err(detail)) => Err(workload_error(&endpoint, wait, &detail)),
        Err(_) => Err(workload_error(
            &endpoint,
            wait,
            "no X509-SVID came: the agent may not have attested this workload yet (no registration entry matches it), or the endpoint is not a Workload API",
        )),
    }
}

fn workload_error(endpoint: &str, waited: Duration, detail: &str) -> Error {
    ConfigError::WorkloadApi {
        endpoint: endpoint.to_owned(),
        waited,
        detail: crate::error::untrusted(detail),
    }
    .into()
}

/// Runs `f` until it returns, or returns `None` when `stop` fires first.
async fn or_stop<T>(
    f: impl Future<Output = T>,
    stop: &mut tokio::sync::oneshot::Receiver<()>,
) -> Option<T> {
    tokio::select! {
        out = f => Some(out),
        _ = stop => None,
    }
}

/// The stream's thread: the first response for the builder, then every
/// response for the live state, reconnecting with backoff.
/// What the stream's thread keeps across a restart of [`follow`] after a
/// panic.
struct FollowState {
    /// The builder, until it has its first response.
    first_tx: Option<mpsc::Sender<Result<Update, String>>>,
    attach_rx: mpsc::Receiver<Box<dyn Follower>>,
    stop: tokio::sync::oneshot::Receiver<()>,
    /// The live state fed, once attached.
    follower: Option<Box<dyn Follower>>,
    /// The follower was told the connection was lost, and not yet that it
    /// is back.
    lost: bool,
    started: tokio::time::Instant,
}

async fn follow(api: &WorkloadApi, state: &mut FollowState) {
    let FollowState {
        first_tx,
        attach_rx,
        stop,
        follower,
        lost,
        started,
    } = state;
    let pick = &api.pick;
    let mut backoff = api.backoff.0;
    let mut last_error = String::from("no connection attempt yet");
    loop {
        // Before the builder has its first SVID, give up after `wait`.
        if let Some(tx) = first_tx.as_ref()
            && started.elapsed() >= api.wait
        {
            let _ = tx.send(Err(last_error));
            return;
        }
        let client = match or_stop(api.connect(), stop).await {
            None => return,
            Some(Ok(client)) => Some(client),
            Some(Err(e)) => {
                last_error = format!("cannot connect: {e}");
                None
            }
        };
        let stream = match &client {
            Some(client) => match or_stop(client.stream_x509_contexts(), stop).await {
                None => return,
                Some(Ok(stream)) => Some(Box::pin(stream)),
                Some(Err(e)) => {
                    last_error = format!("the agent refused the X509-SVID stream: {e}");
                    None
                }
            },
            None => None,
        };
        if let Some(mut stream) = stream {
            loop {
                let tick = tokio::time::sleep(Duration::from_secs(30));
                let item = tokio::select! {
                    item = or_stop(std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)), stop) => item,
                    () = tick => {
                        if let Some(f) = follower.as_mut() && !f.tick() {
                            return;
                        }
                        continue;
                    }
                };
                let Some(item) = item else {
                    return;
                };
                match item {
                    Some(Ok(context)) => {
                        backoff = api.backoff.0;
                        // The application's `choose` runs here: a panic in
                        // it makes the response unusable, not the stream end.
                        let update = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            update_of(&context, pick)
                        }))
                        .unwrap_or_else(|panic| {
                            Err(format!(
                                "choosing the SVID panicked: {}",
                                crate::error::panic_message(&*panic)
                            ))
                        });
                        if let Some(tx) = first_tx.take() {
                            match update {
                                Ok(update) => {
                                    if tx.send(Ok(update)).is_err() {
                                        return;
                                    }
                                    // The builder validates it, builds, and
                                    // attaches the live state (or gives up).
                                    match attach_rx.recv() {
                                        Ok(f) => *follower = Some(f),
                                        Err(_) => return,
                                    }
                                }
                                Err(detail) => {
                                    // Not usable: keep waiting for one that
                                    // is, while the builder waits.
                                    if started.elapsed() >= api.wait {
                                        let _ = tx.send(Err(detail));
                                        return;
                                    }
                                    tracing::debug!(%detail, "Workload API response not usable yet");
                                    *first_tx = Some(tx);
                                }
                            }
                            continue;
                        }
                        let Some(f) = follower.as_mut() else {
                            return;
                        };
                        if std::mem::take(lost) && !f.back() {
                            return;
                        }
                        let alive = match update {
                            Ok(update) => {
                                // A panic while applying it (a bug) is
                                // reported; the stream goes on.
                                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    f.update(update)
                                })) {
                                    Ok(alive) => alive,
                                    Err(panic) => f.restarted(crate::error::panic_message(&*panic)),
                                }
                            }
                            Err(detail) => {
                                *lost = true;
                                f.lost(format!("a response was not usable: {detail}"))
                            }
                        };
                        if !alive {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        last_error = format!("the stream failed: {e}");
                        break;
                    }
                    None => {
                        last_error = "the agent closed the stream".to_owned();
                        break;
                    }
                }
            }
        }
        // Said once per loss, not at every attempt while the agent is away.
        if let Some(f) = follower.as_mut() {
            if !*lost && !f.lost(last_error.clone()) {
                return;
            }
            *lost = true;
            tracing::debug!(detail = %last_error, "Workload API still away; trying again");
            // While the agent is away the SVID ages: warn as it nears expiry.
            if !f.tick() {
                return;
            }
        }
        if or_stop(tokio::time::sleep(jitter(backoff)), stop)
            .await
            .is_none()
        {
            return;
        }
        backoff = (backoff * 2).min(api.backoff.1);
    }
}

/// `d` give or take a quarter, so that many workloads do not reconnect in
/// step after an agent restart.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let quarter = d / 4;
    let offset = Duration::from_nanos(u64::from(nanos) % quarter.as_nanos().max(1) as u64);
    d - quarter + offset * 2
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    use spiffe::{TrustDomain, X509Bundle, X509BundleSet, X509Svid};

    use super::*;
    use crate::dev::DevCa;
    use crate::error::MaterialKind;
    use crate::material::Sources;
    use crate::source::Source;

    /// A response of two SVIDs (hints `a` and `b`) and one bundle, and the
    /// PEM of each SVID's chain.
    fn response() -> (X509Context, [String; 2], String) {
        let ca = DevCa::new("workload root").unwrap();
        let mut svids = Vec::new();
        let mut chains = Vec::new();
        for name in ["a", "b"] {
            let cert = ca
                .leaf()
                .spiffe(&format!("spiffe://example.org/{name}"))
                .client()
                .issue()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap();
            let svid = X509Svid::parse_from_der_with_hint(
                cert.der(),
                key.secret_der(),
                Some(Arc::from(name)),
            )
            .unwrap();
            svids.push(Arc::new(svid));
            chains.push(pem_encode("CERTIFICATE", cert.der()));
        }
        let ca_der =
            rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let mut bundles = X509BundleSet::new();
        bundles.add_bundle(
            X509Bundle::from_x509_authorities(
                TrustDomain::new("example.org").unwrap(),
                &[ca_der.as_ref()],
            )
            .unwrap(),
        );
        let [a, b] = <[String; 2]>::try_from(chains).unwrap();
        (
            X509Context::new(svids, bundles),
            [a, b],
            pem_encode("CERTIFICATE", ca_der.as_ref()),
        )
    }

    fn empty_sources() -> Sources {
        let empty = |label: &str| Source::pem(label, Vec::new());
        Sources {
            cert: empty("cert"),
            key: empty("key"),
            roots: empty("roots"),
            domain_roots: vec![("stale.example".into(), empty("stale"))],
            crls: Vec::new(),
        }
    }

    /// The chain the update makes the identity, as PEM.
    fn chosen(context: &X509Context, pick: &Pick) -> Result<String, String> {
        let sources = update_of(context, pick)?.apply(&empty_sources()).unwrap();
        let bytes = sources.cert.read(MaterialKind::CertificateChain).unwrap();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn the_svid_is_chosen_first_by_hint_or_by_closure() {
        let (context, [a, b], _) = response();
        assert_eq!(chosen(&context, &Pick::First).unwrap(), a);
        assert_eq!(chosen(&context, &Pick::Hint("b".into())).unwrap(), b);
        let by_id = Pick::Choose(Arc::new(|svids: &[SvidChoice<'_>]| {
            svids.iter().position(|s| s.spiffe_id.ends_with("/b"))
        }));
        assert_eq!(chosen(&context, &by_id).unwrap(), b);
        // Nothing chosen: refused, saying what was offered.
        let err = chosen(&context, &Pick::Hint("c".into())).unwrap_err();
        assert!(
            err.contains("hint \"a\"") && err.contains("hint \"b\""),
            "{err}"
        );
        let out_of_range = Pick::Choose(Arc::new(|_: &[SvidChoice<'_>]| Some(7)));
        assert!(chosen(&context, &out_of_range).is_err());
    }

    #[test]
    fn the_bundles_become_exactly_the_roots_per_trust_domain() {
        let (context, _, ca) = response();
        let sources = update_of(&context, &Pick::First)
            .unwrap()
            .apply(&empty_sources())
            .unwrap();
        // The stale trust domain is gone; the response's is there.
        let domains: Vec<&str> = sources
            .domain_roots
            .iter()
            .map(|(td, _)| td.as_str())
            .collect();
        assert_eq!(domains, ["example.org"]);
        let roots = sources.domain_roots[0]
            .1
            .read(MaterialKind::TrustRoots)
            .unwrap();
        assert_eq!(&roots[..], ca.as_bytes());
    }
}
