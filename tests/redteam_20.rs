//! Red team, issue 20: `Mtls::update` and the SPIFFE Workload API.
//!
//! Each hole is a test asserting the secure behaviour (it fails until the
//! hole is fixed), with a control beside it that passes today.
//!
//! The Workload API tests run against a fake agent written here (a tonic
//! server on 127.0.0.1 speaking `/SpiffeWorkloadAPI/FetchX509SVID`), so
//! that a test chooses exactly what the agent says.

mod common;

use std::time::Duration;

use common::{Open, Pki, TD, echo_incoming, ping_over, shop};
use meshtls::dev::DevCert;
use meshtls::{Allow, ClientTls, Event, ReloadOutcome, ServerTls, Source, Update, WorkloadApi};
use tokio::sync::broadcast;

const PARTNER: &str = "partner.test";
const PARTNER_ID: &str = "spiffe://partner.test/ns/billing/sa/api";

/// A fresh client (no ticket to resume) presenting `cert`, trusting `pki`'s
/// CA for the server.
fn client_presenting(pki: &Pki, cert: &DevCert) -> ClientTls {
    pki.client_with(cert).build().unwrap()
}

/// Pings on `conn` until it fails, for at most `within`.
async fn closed_within(conn: &mut Open<common::TrackedStream>, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        if conn.ping().await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The next event `want` accepts, within `within`.
async fn event_within(
    events: &mut broadcast::Receiver<Event>,
    within: Duration,
    mut want: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

// ---------------------------------------------------------------------------
// 1. A trust domain's roots renamed with the same bytes: the change is
//    compared by bytes only (`Inputs::same_trust`, `inputs == old.inputs`),
//    so the generation (or at least the epoch) keeps the old mapping.
// ---------------------------------------------------------------------------

/// A server with its identity in memory, roots for `partner.test` only,
/// admitting the trust domains `partner.test` and `other.test`.
fn partner_server(pki: &Pki, partner: &Pki) -> ServerTls {
    let cert = pki.server_cert();
    ServerTls::builder()
        .identity(
            Source::pem("server chain", cert.chain_pem()),
            Source::pem("server key", cert.key_pem()),
        )
        .client_roots_for(PARTNER, partner.ca_file())
        .allow(Allow::spiffe_trust_domain(PARTNER))
        .allow(Allow::spiffe_trust_domain("other.test"))
        .live_connection_grace(Duration::ZERO)
        .build()
        .unwrap()
}

/// Moves partner.test's bundle (the same bytes, or `extra` appended) to
/// `other.test`, with an identity renewal when `renew`; returns whether a
/// new partner.test handshake was still admitted and whether its live
/// connection stayed open, with the outcome.
async fn move_partner_roots(extra: &str, renew: bool) -> (bool, bool, ReloadOutcome) {
    let pki = Pki::new();
    let partner = Pki::named("partner root");
    let server = partner_server(&pki, &partner);
    let (addr, _echo) = echo_incoming(&server).await;
    let partner_cert = partner.client_cert(PARTNER_ID);
    let mut live = Open::meshtls(&client_presenting(&pki, &partner_cert), addr).await;
    live.ping()
        .await
        .expect("partner.test is admitted at first");

    let mut bundle = std::fs::read(partner.ca_file()).unwrap();
    bundle.extend_from_slice(extra.as_bytes());
    let mut update = Update::new().exactly_these_domain_roots([("other.test".to_owned(), bundle)]);
    if renew {
        let renewed = pki.server_cert();
        update = update.identity(renewed.chain_pem(), renewed.key_pem());
    }
    let outcome = server.update(update).unwrap();

    let admitted = ping_over(&client_presenting(&pki, &partner_cert), addr)
        .await
        .is_ok_and(|line| line.starts_with("ping"));
    let still_open = !closed_within(&mut live, Duration::from_secs(5)).await;
    (admitted, still_open, outcome)
}

#[tokio::test]
async fn roots_moved_to_another_trust_domain_stop_vouching_for_the_old_one() {
    let (admitted, still_open, outcome) = move_partner_roots("", false).await;
    assert!(
        !admitted && !still_open,
        "partner.test has no roots any more (its bundle now belongs to other.test), yet a new \
         partner.test handshake was admitted: {admitted}, its live connection stayed open: \
         {still_open}; the update said {outcome:?} (trust compared by bytes, not by trust domain)"
    );
}

#[tokio::test]
async fn roots_moved_with_a_renewal_stop_vouching_for_the_old_trust_domain() {
    let (admitted, still_open, outcome) = move_partner_roots("", true).await;
    assert!(
        !admitted && !still_open,
        "with an identity renewal in the same update the generation swapped ({outcome:?}) but \
         the epoch kept the old trust: partner.test admitted anew: {admitted}, live connection \
         kept: {still_open}"
    );
}

/// Control: the same move with one byte more (a trailing newline) is seen
/// as a trust change, and partner.test is refused and closed.
#[tokio::test]
async fn control_roots_moved_with_different_bytes_stop_vouching() {
    let (admitted, still_open, outcome) = move_partner_roots("\n", false).await;
    common::assert_policy_changed(&outcome);
    assert!(!admitted, "partner.test admitted after its roots moved");
    assert!(!still_open, "partner.test's live connection kept");
}

// ---------------------------------------------------------------------------
// A fake SPIFFE Workload API (only FetchX509SVID).
// ---------------------------------------------------------------------------

mod fake_agent {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use meshtls::dev::{DevCa, DevCert};
    use meshtls::rustls::pki_types::PrivateKeyDer;
    use meshtls::rustls::pki_types::pem::PemObject;
    use tokio::sync::mpsc;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidResponse {
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509Svid>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: HashMap<String, Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509Svid {
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        #[prost(string, tag = "5")]
        pub hint: String,
    }

    /// One SVID entry: `cert` (issued by `ca`) with `hint`.
    pub fn svid(spiffe_id: &str, cert: &DevCert, ca: &DevCa, hint: &str) -> X509Svid {
        X509Svid {
            spiffe_id: spiffe_id.to_owned(),
            x509_svid: cert.der().to_vec(),
            x509_svid_key: PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes())
                .unwrap()
                .secret_der()
                .to_vec(),
            bundle: crate::common::der_of(ca.cert_pem()).to_vec(),
            hint: hint.to_owned(),
        }
    }

    /// A response with `svids` and federated bundles `(spiffe://td, ca)`.
    pub fn response(svids: Vec<X509Svid>, federated: &[(&str, &DevCa)]) -> X509SvidResponse {
        X509SvidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: federated
                .iter()
                .map(|(td, ca)| {
                    (
                        (*td).to_owned(),
                        crate::common::der_of(ca.cert_pem()).to_vec(),
                    )
                })
                .collect(),
        }
    }

    type Item = Result<X509SvidResponse, tonic::Status>;

    #[derive(Default)]
    struct State {
        current: Option<X509SvidResponse>,
        streams: Vec<mpsc::UnboundedSender<Item>>,
        calls: usize,
    }

    /// The fake agent: every new stream gets the current response first,
    /// then whatever is pushed.
    #[derive(Clone, Default)]
    pub struct Agent {
        state: Arc<Mutex<State>>,
        endpoint: String,
        _runtime: Option<Arc<RuntimeThread>>,
    }

    struct RuntimeThread(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for RuntimeThread {
        fn drop(&mut self) {
            if let Some(stop) = self.0.take() {
                let _ = stop.send(());
            }
        }
    }

    impl Agent {
        /// Serves on 127.0.0.1 (on its own runtime thread), answering
        /// `first` to every new stream.
        pub fn start(first: X509SvidResponse) -> Self {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std_listener.set_nonblocking(true).unwrap();
            let addr = std_listener.local_addr().unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let mut agent = Self {
                endpoint: format!("tcp://{addr}"),
                ..Self::default()
            };
            agent.state.lock().unwrap().current = Some(first);
            let service = agent.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                    let incoming = tonic::transport::server::TcpIncoming::from(listener);
                    let serve = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stop_rx.await;
                        });
                    let _ = serve.await;
                });
            });
            agent._runtime = Some(Arc::new(RuntimeThread(Some(stop_tx))));
            agent
        }

        pub fn endpoint(&self) -> String {
            self.endpoint.clone()
        }

        /// Sends `item` on every open stream (and, if a response, answers
        /// it to new streams from now on).
        pub fn push(&self, item: Item) {
            let mut state = self.state.lock().unwrap();
            if let Ok(response) = &item {
                state.current = Some(response.clone());
            }
            state.streams.retain(|s| s.send(item.clone()).is_ok());
        }

        /// Streams still open (their reader not gone).
        pub fn open_streams(&self) -> usize {
            let mut state = self.state.lock().unwrap();
            state.streams.retain(|s| !s.is_closed());
            state.streams.len()
        }

        /// FetchX509SVID calls so far.
        pub fn calls(&self) -> usize {
            self.state.lock().unwrap().calls
        }
    }

    pub struct RxStream(mpsc::UnboundedReceiver<Item>);

    impl tonic::codegen::tokio_stream::Stream for RxStream {
        type Item = Item;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
            self.0.poll_recv(cx)
        }
    }

    struct Fetch(Agent);

    impl tonic::codegen::Service<tonic::Request<X509SvidRequest>> for Fetch {
        type Response = tonic::Response<RxStream>;
        type Error = tonic::Status;
        type Future = std::future::Ready<Result<Self::Response, tonic::Status>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: tonic::Request<X509SvidRequest>) -> Self::Future {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut state = self.0.state.lock().unwrap();
            state.calls += 1;
            if let Some(current) = &state.current {
                let _ = tx.send(Ok(current.clone()));
            }
            state.streams.push(tx);
            std::future::ready(Ok(tonic::Response::new(RxStream(rx))))
        }
    }

    impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Agent {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let agent = self.clone();
            Box::pin(async move {
                if req.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
                    return Ok(tonic::Status::unimplemented("fake agent").into_http());
                }
                let codec = tonic_prost::ProstCodec::<X509SvidResponse, X509SvidRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.server_streaming(Fetch(agent), req).await)
            })
        }
    }

    impl tonic::server::NamedService for Agent {
        const NAME: &'static str = "SpiffeWorkloadAPI";
    }
}

use fake_agent::{Agent, response, svid};

/// The SVID the fake agent gives the server under test.
fn server_svid(pki: &Pki) -> DevCert {
    pki.server_cert()
}

/// Builds (blocking, off the async runtime) a server following `agent`.
async fn server_following(api: WorkloadApi, allow: Allow) -> Result<ServerTls, String> {
    tokio::task::spawn_blocking(move || {
        ServerTls::builder()
            .workload_api(api.wait_for_agent(Duration::from_secs(10)))
            .allow(allow)
            .live_connection_grace(Duration::ZERO)
            .build()
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("building panicked: {e}"))?
}

// ---------------------------------------------------------------------------
// 2. An unusable response is reported as the connection lost, but the next
//    usable one never says it is back (workload.rs: `lost` is only set on a
//    broken stream): the gauge stays at 0 and a WorkloadApiLost alert never
//    clears, while the agent answers and rotations apply.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usable_response_after_an_unusable_one_says_the_api_is_back() {
    let pki = Pki::new();
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "main")],
        &[],
    ));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()).hint("main"),
        Allow::spiffe_trust_domain(TD),
    )
    .await
    .unwrap();
    let mut events = server.subscribe();

    // A response without the hinted SVID: not usable.
    agent.push(Ok(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "other")],
        &[],
    )));
    let lost = event_within(&mut events, Duration::from_secs(10), |e| {
        matches!(e, Event::WorkloadApiLost { .. })
    })
    .await;
    assert!(lost.is_some(), "an unusable response was not reported");

    // Then a usable one: a rotation, applied.
    agent.push(Ok(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "main")],
        &[],
    )));
    let mut saw_back = false;
    let mut saw_reload = false;
    let _ = event_within(&mut events, Duration::from_secs(10), |e| {
        saw_back |= matches!(e, Event::WorkloadApiBack);
        saw_reload |= matches!(e, Event::Reloaded { .. });
        saw_back && saw_reload
    })
    .await;
    assert!(saw_reload, "the usable response was not applied");
    assert!(
        saw_back,
        "after WorkloadApiLost (an unusable response) a usable response was applied but no \
         WorkloadApiBack followed: the gauge meshtls_workload_api_connected stays 0 while the \
         agent answers"
    );
}

/// Control: a broken stream, then a usable response, does say Back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_broken_stream_then_a_response_says_back() {
    let pki = Pki::new();
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "")],
        &[],
    ));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()),
        Allow::spiffe_trust_domain(TD),
    )
    .await
    .unwrap();
    let mut events = server.subscribe();
    agent.push(Err(tonic::Status::unavailable("agent restarting")));
    assert!(
        event_within(&mut events, Duration::from_secs(10), |e| matches!(
            e,
            Event::WorkloadApiLost { .. }
        ))
        .await
        .is_some()
    );
    // The reconnection gets the current response again.
    assert!(
        event_within(&mut events, Duration::from_secs(15), |e| matches!(
            e,
            Event::WorkloadApiBack
        ))
        .await
        .is_some(),
        "no WorkloadApiBack after the reconnection"
    );
}

// ---------------------------------------------------------------------------
// 3. Text the agent chose (a gRPC status message) reaches WorkloadApiLost and
//    the log unescaped (workload.rs: `last_error = format!("the stream
//    failed: {e}")`, then `f.lost(last_error)`); the same text at build time
//    goes through `error::untrusted`.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_chosen_text_is_escaped_in_workload_api_events() {
    let pki = Pki::new();
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "")],
        &[],
    ));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()),
        Allow::spiffe_trust_domain(TD),
    )
    .await
    .unwrap();
    let mut events = server.subscribe();
    let forged = "denied\nmeshtls server: reloaded, generation 99\u{1b}[2K";
    agent.push(Err(tonic::Status::permission_denied(forged)));
    let Some(Event::WorkloadApiLost { detail }) =
        event_within(&mut events, Duration::from_secs(10), |e| {
            matches!(e, Event::WorkloadApiLost { .. })
        })
        .await
    else {
        panic!("no WorkloadApiLost after the stream failed");
    };
    assert!(
        detail.contains("denied"),
        "the test's status did not arrive: {detail:?}"
    );
    assert!(
        !detail.chars().any(char::is_control),
        "the agent's status message reached Event::WorkloadApiLost (and the log) with its \
         control characters: {detail:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. `wait_for_agent(Duration::MAX)` ("wait as long as it takes") panics in
//    `start`: `wait + Duration::from_secs(1)` overflows (workload.rs:255),
//    even with an agent that answers at once.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_agent_without_limit_does_not_panic() {
    let pki = Pki::new();
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "")],
        &[],
    ));
    let endpoint = agent.endpoint();
    let built = tokio::task::spawn_blocking(move || {
        ServerTls::builder()
            .workload_api(WorkloadApi::endpoint(endpoint).wait_for_agent(Duration::MAX))
            .allow(Allow::spiffe_trust_domain(TD))
            .build()
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    match built {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("refused: {e}"),
        Err(e) => panic!(
            "building with wait_for_agent(Duration::MAX) panicked (unchecked deadline \
             arithmetic) although the agent answered at once: {e}"
        ),
    }
}

/// Control: a long but finite wait builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_long_wait_builds() {
    let pki = Pki::new();
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "")],
        &[],
    ));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()).wait_for_agent(Duration::from_secs(3600)),
        Allow::spiffe_trust_domain(TD),
    )
    .await;
    assert!(server.is_ok(), "{server:?}");
}

// ---------------------------------------------------------------------------
// 5. Through the Workload API: a federation that ends and another that
//    starts with the same bundle bytes (the bundle set is a BTreeMap, so the
//    order of the bundles can stay the same) is "Unchanged".
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_swapped_for_one_with_the_same_bundle_ends_through_the_agent() {
    let pki = Pki::new();
    let partner = Pki::named("partner root");
    let id = common::server_id();
    let own = || svid(&id, &server_svid(&pki), &pki.ca, "");
    // "other.test" and "partner.test" both sort before "prod.example".
    let agent = Agent::start(response(
        vec![own()],
        &[("spiffe://partner.test", &partner.ca)],
    ));
    let server = tokio::task::spawn_blocking({
        let endpoint = agent.endpoint();
        move || {
            ServerTls::builder()
                .workload_api(WorkloadApi::endpoint(endpoint))
                .allow(Allow::spiffe_trust_domain(PARTNER))
                .allow(Allow::spiffe_trust_domain("other.test"))
                .live_connection_grace(Duration::ZERO)
                .build()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;
    let partner_cert = partner.client_cert(PARTNER_ID);
    let mut live = Open::meshtls(&client_presenting(&pki, &partner_cert), addr).await;
    live.ping()
        .await
        .expect("partner.test is admitted at first");

    agent.push(Ok(response(
        vec![own()],
        &[("spiffe://other.test", &partner.ca)],
    )));
    let reload = event_within(&mut events, Duration::from_secs(10), |e| {
        matches!(e, Event::Reloaded { .. } | Event::ReloadFailed { .. })
    })
    .await;
    let admitted = ping_over(&client_presenting(&pki, &partner_cert), addr)
        .await
        .is_ok_and(|line| line.starts_with("ping"));
    let still_open = !closed_within(&mut live, Duration::from_secs(5)).await;
    assert!(
        !admitted && !still_open,
        "the agent ended the federation with partner.test (and started one with other.test, \
         same bundle): partner.test admitted anew: {admitted}, live connection kept: \
         {still_open}; reload event: {reload:?}"
    );
}

/// Control: the federation simply ending closes its peers' connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_federation_ending_through_the_agent_closes_its_peers() {
    let pki = Pki::new();
    let partner = Pki::named("partner root");
    let id = common::server_id();
    let own = || svid(&id, &server_svid(&pki), &pki.ca, "");
    let agent = Agent::start(response(
        vec![own()],
        &[("spiffe://partner.test", &partner.ca)],
    ));
    let server = tokio::task::spawn_blocking({
        let endpoint = agent.endpoint();
        move || {
            ServerTls::builder()
                .workload_api(WorkloadApi::endpoint(endpoint))
                .allow(Allow::spiffe_trust_domain(PARTNER))
                .live_connection_grace(Duration::ZERO)
                .build()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (addr, _echo) = echo_incoming(&server).await;
    let partner_cert = partner.client_cert(PARTNER_ID);
    let mut live = Open::meshtls(&client_presenting(&pki, &partner_cert), addr).await;
    live.ping().await.unwrap();

    agent.push(Ok(response(vec![own()], &[])));
    assert!(
        closed_within(&mut live, Duration::from_secs(10)).await,
        "partner.test's live connection kept after the federation ended"
    );
    assert!(
        !ping_over(&client_presenting(&pki, &partner_cert), addr)
            .await
            .is_ok_and(|line| line.starts_with("ping")),
        "partner.test admitted after the federation ended"
    );
}

// ---------------------------------------------------------------------------
// Controls: the stream's thread stops with the server; an SVID of another
// trust domain does not keep the old trust domain's roots.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_the_stream_stops_when_the_server_is_dropped() {
    let pki = Pki::new();
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "")],
        &[],
    ));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()),
        Allow::spiffe_trust_domain(TD),
    )
    .await
    .unwrap();
    assert_eq!(agent.open_streams(), 1);
    drop(server);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while agent.open_streams() > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        agent.open_streams(),
        0,
        "the Workload API stream is still open 5 s after the server was dropped"
    );
    let calls = agent.calls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        agent.calls(),
        calls,
        "the stream's thread reconnects after the drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_an_svid_of_another_trust_domain_drops_the_old_roots() {
    let pki = Pki::new();
    let other = Pki::named("other td root");
    let id = common::server_id();
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(&pki), &pki.ca, "")],
        &[],
    ));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()),
        Allow::spiffe_trust_domain(TD),
    )
    .await
    .unwrap();
    let (addr, _echo) = echo_incoming(&server).await;
    let web = pki.client_cert(&shop("web"));
    let mut live = Open::meshtls(&client_presenting(&pki, &web), addr).await;
    live.ping().await.unwrap();

    // The agent now hands out an SVID of other.test, with other.test's
    // bundle only: prod.example has no roots any more.
    let other_id = "spiffe://other.test/ns/billing/sa/api";
    let other_cert = other
        .ca
        .leaf()
        .spiffe(other_id)
        .dns("localhost")
        .server()
        .issue()
        .unwrap();
    agent.push(Ok(response(
        vec![svid(other_id, &other_cert, &other.ca, "")],
        &[],
    )));
    assert!(
        closed_within(&mut live, Duration::from_secs(10)).await,
        "a prod.example peer stays connected after prod.example's roots went away"
    );
}

// ---------------------------------------------------------------------------
// 6. A panic on the stream's thread (the application's `choose` closure
//    here; equally a panic in parsing or validating agent-sent material)
//    ends the thread for good, silently (workload.rs `start`: the thread
//    body is not wrapped in catch_unwind, nothing restarts it, no event):
//    from then on nothing the agent says is applied, a federation the agent
//    ends keeps its peers admitted, and the SVID is never rotated again.
//    DESIGN principle 7: a Workload API stream that panics is restarted
//    and says so.
// ---------------------------------------------------------------------------

/// A server following an agent with a `choose` closure that panics on a
/// response with more than one SVID; `partner.test` federated at first.
async fn server_with_panicking_chooser(
    pki: &Pki,
    partner: &Pki,
) -> (Agent, ServerTls, Box<dyn Fn() -> fake_agent::X509Svid>) {
    let id = common::server_id();
    let own = {
        let ca = DevCaHandle(pki.ca.cert_pem().to_owned(), pki.ca.key_pem().to_owned());
        move || {
            let ca = meshtls::dev::DevCa::from_pem(&ca.0, &ca.1).unwrap();
            let cert = ca
                .leaf()
                .spiffe(&common::server_id())
                .dns("localhost")
                .server()
                .issue()
                .unwrap();
            svid(&common::server_id(), &cert, &ca, "")
        }
    };
    let agent = Agent::start(response(
        vec![svid(&id, &server_svid(pki), &pki.ca, "")],
        &[("spiffe://partner.test", &partner.ca)],
    ));
    let endpoint = agent.endpoint();
    let server = tokio::task::spawn_blocking(move || {
        ServerTls::builder()
            .workload_api(WorkloadApi::endpoint(endpoint).choose(|svids| {
                assert!(
                    svids.len() == 1,
                    "the application's chooser: one SVID expected"
                );
                Some(0)
            }))
            .allow(Allow::spiffe_trust_domain(PARTNER))
            .live_connection_grace(Duration::ZERO)
            .build()
            .unwrap()
    })
    .await
    .unwrap();
    (agent, server, Box::new(own))
}

struct DevCaHandle(String, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_stream_thread_is_reported_and_the_stream_followed_again() {
    let pki = Pki::new();
    let partner = Pki::named("partner root");
    let (agent, server, own) = server_with_panicking_chooser(&pki, &partner).await;
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;
    let partner_cert = partner.client_cert(PARTNER_ID);
    let mut live = Open::meshtls(&client_presenting(&pki, &partner_cert), addr).await;
    live.ping().await.unwrap();

    // A response the chooser panics on.
    agent.push(Ok(response(
        vec![own(), own()],
        &[("spiffe://partner.test", &partner.ca)],
    )));
    let said = event_within(&mut events, Duration::from_secs(5), |e| {
        matches!(
            e,
            Event::WorkloadApiLost { .. } | Event::TaskRestarted { .. }
        )
    })
    .await;
    // Then the agent ends the federation with partner.test.
    agent.push(Ok(response(vec![own()], &[])));
    let closed = closed_within(&mut live, Duration::from_secs(15)).await;
    assert!(
        said.is_some() && closed,
        "after a panic on the Workload API thread: reported: {said:?}; the agent then ended \
         the partner.test federation and partner.test's live connection was closed: {closed} \
         (open FetchX509SVID streams: {}, stats: {:?})",
        agent.open_streams(),
        server.stats()
    );
}

/// Control: without the panic, the same two responses are followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_a_panic_the_federation_ending_is_followed() {
    let pki = Pki::new();
    let partner = Pki::named("partner root");
    let (agent, server, own) = server_with_panicking_chooser(&pki, &partner).await;
    let (addr, _echo) = echo_incoming(&server).await;
    let partner_cert = partner.client_cert(PARTNER_ID);
    let mut live = Open::meshtls(&client_presenting(&pki, &partner_cert), addr).await;
    live.ping().await.unwrap();
    agent.push(Ok(response(vec![own()], &[])));
    assert!(
        closed_within(&mut live, Duration::from_secs(15)).await,
        "partner.test's live connection kept after the federation ended"
    );
}

// ---------------------------------------------------------------------------
// Issue 20: a response the agent sends that meshtls refuses (here an SVID
// without serverAuth, for a server) is refused as a bad file would be:
// ReloadFailed naming where it came from, the last good SVID serving on.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_fails_validation_keeps_the_last_good_svid() {
    let pki = Pki::new();
    let id = common::server_id();
    let good = server_svid(&pki);
    let agent = Agent::start(response(vec![svid(&id, &good, &pki.ca, "")], &[]));
    let server = server_following(
        WorkloadApi::endpoint(agent.endpoint()),
        Allow::spiffe_trust_domain(TD),
    )
    .await
    .unwrap();
    let mut events = server.subscribe();
    let serving = server.certificate().serial;

    // A client certificate offered as the server's SVID.
    let wrong = pki.ca.leaf().spiffe(&id).client().issue().unwrap();
    agent.push(Ok(response(vec![svid(&id, &wrong, &pki.ca, "")], &[])));
    let failed = event_within(&mut events, Duration::from_secs(10), |e| {
        matches!(e, Event::ReloadFailed { .. })
    })
    .await
    .expect("a response meshtls refuses was not reported as a refused reload");
    let text = failed.to_string();
    assert!(text.contains("SPIFFE Workload API"), "{text}");
    assert_eq!(server.generation(), 1);
    assert_eq!(server.certificate().serial, serving);
    assert_eq!(server.stats().reloads_failed, 1);
}
