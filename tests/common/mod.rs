//! A small PKI and loopback harness shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshtls::dev::{DevCa, DevCert};
use meshtls::rustls;
use meshtls::{Allow, ClientTls, HandshakeError, PeerIdentity, RejectReason, ServerTls};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const TD: &str = "prod.example";

/// The SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_in(td: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{td}/ns/{ns}/sa/{sa}")
}

/// The SPIFFE ID of service account `sa` in namespace `ns` of [`TD`].
pub fn svid(ns: &str, sa: &str) -> String {
    spiffe_in(TD, ns, sa)
}

/// A workload of the `shop` namespace: `spiffe://<TD>/ns/shop/sa/<name>`.
pub fn shop(name: &str) -> String {
    svid("shop", name)
}

/// The caller the handshake and reload tests admit:
/// `spiffe://<TD>/ns/billing/sa/web`.
pub fn billing_web() -> String {
    svid("billing", "web")
}

/// The SPIFFE ID of [`Pki::server_cert`]: `spiffe://<TD>/ns/billing/sa/api`.
pub fn server_id() -> String {
    svid("billing", "api")
}

/// The allow rule for the SPIFFE ID pattern `spiffe://<TD>/<rest>`.
pub fn td_pattern(rest: &str) -> Allow {
    Allow::spiffe_pattern(&format!("spiffe://{TD}/{rest}"))
}

/// A current-thread tokio runtime with I/O and time enabled.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client certificate for `spiffe`, issued by `ca`.
pub fn client_of(ca: &DevCa, spiffe: &str) -> DevCert {
    ca.leaf().spiffe(spiffe).client().issue().unwrap()
}

/// A client certificate for `spiffe`, issued by `ca`, valid from
/// `not_before` to `not_after`.
pub fn client_between(
    ca: &DevCa,
    spiffe: &str,
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> DevCert {
    ca.leaf()
        .spiffe(spiffe)
        .client()
        .valid_between(not_before, not_after)
        .issue()
        .unwrap()
}

/// Shortcuts on any server builder.
pub trait ServerBuilderExt {
    /// `.dangerous().allow_any_authenticated()`: admits every peer whose
    /// chain reaches the client roots, with no identity check.
    fn any_authenticated(self) -> Self;
}

impl<State> ServerBuilderExt for meshtls::ServerTlsBuilder<State> {
    fn any_authenticated(self) -> Self {
        self.dangerous().allow_any_authenticated()
    }
}

/// Shortcuts on any builder, server's or client's.
pub trait BuilderExt {
    /// `.dangerous().clock(time.clock())`: the side reads time from `time`.
    fn on_clock(self, time: &meshtls::ManualClock) -> Self;
}

impl<Side, State> BuilderExt for meshtls::Builder<Side, State> {
    fn on_clock(self, time: &meshtls::ManualClock) -> Self {
        self.dangerous().clock(time.clock())
    }
}

/// A CA, a temp directory, and shortcuts for the certificates tests need.
pub struct Pki {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Self::named("meshtls test root")
    }

    /// A PKI whose root has the given name.
    pub fn named(name: &str) -> Self {
        Self {
            ca: DevCa::new(name).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// `ca.crt` in the directory.
    pub fn ca_file(&self) -> PathBuf {
        self.write("ca.crt", self.ca.cert_pem())
    }

    /// A server certificate for `localhost` with a SPIFFE ID.
    pub fn server_cert(&self) -> DevCert {
        self.ca
            .leaf()
            .spiffe(&server_id())
            .dns("localhost")
            .server()
            .issue()
            .unwrap()
    }

    /// A server certificate for `localhost` (no SPIFFE ID), valid from
    /// `not_before` to `not_after`.
    pub fn localhost_cert_between(
        &self,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> DevCert {
        self.ca
            .leaf()
            .dns("localhost")
            .server()
            .valid_between(not_before, not_after)
            .issue()
            .unwrap()
    }

    /// A client certificate with the given SPIFFE ID.
    pub fn client_cert(&self, spiffe: &str) -> DevCert {
        client_of(&self.ca, spiffe)
    }

    /// A client certificate with the given SPIFFE ID, valid from
    /// `not_before` to `not_after`.
    pub fn client_cert_between(
        &self,
        spiffe: &str,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> DevCert {
        client_between(&self.ca, spiffe, not_before, not_after)
    }

    /// A client certificate for `spiffe`, valid from a minute before `start`
    /// until `life` after it.
    pub fn client_cert_from(
        &self,
        spiffe: &str,
        start: std::time::SystemTime,
        life: Duration,
    ) -> DevCert {
        self.client_cert_between(spiffe, start - Duration::from_secs(60), start + life)
    }

    /// Writes `ca.crl`, this CA's CRL listing `revoked`, valid for an hour.
    pub fn write_crl(&self, revoked: &[&DevCert]) -> PathBuf {
        self.write(
            "ca.crl",
            self.ca.crl(revoked, Duration::from_secs(3600)).unwrap(),
        )
    }

    /// Writes `cert` as `<name>.crt` / `<name>.key`.
    pub fn write_cert(&self, name: &str, cert: &DevCert) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), cert.chain_pem()),
            self.write(&format!("{name}.key"), cert.key_pem()),
        )
    }

    /// A server builder with this CA's server certificate and client roots.
    pub fn server(&self) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        let (cert, key) = self.write_cert("server", &self.server_cert());
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(self.ca_file())
    }

    /// [`Pki::server`] admitting any authenticated peer (`dangerous()`).
    pub fn server_any(&self) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.server().any_authenticated()
    }

    /// [`Pki::server`] admitting the peers `rule` allows.
    pub fn server_allow(&self, rule: Allow) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.server().allow(rule)
    }

    /// [`Pki::server`] admitting the `shop` workloads `names`.
    pub fn server_admitting_shop(
        &self,
        names: &[&str],
    ) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.server()
            .allow_all_of(names.iter().map(|name| Allow::spiffe_id(&shop(name))))
    }

    /// [`Pki::server`] admitting the one SPIFFE ID `spiffe`.
    pub fn server_admitting(&self, spiffe: &str) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.server_allow(Allow::spiffe_id(spiffe))
    }

    /// A server builder with this CA's server certificate, trusting the
    /// client roots in `roots`.
    pub fn server_with_roots(&self, roots: &Path) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        let (cert, key) = self.write_cert("server", &self.server_cert());
        ServerTls::builder()
            .identity_files(cert, key)
            .client_roots_file(roots)
    }

    /// Writes `roots.crt`: this CA's certificate, then `other`'s.
    pub fn roots_with(&self, other: &DevCa) -> PathBuf {
        self.write(
            "roots.crt",
            format!("{}{}", self.ca.cert_pem(), other.cert_pem()),
        )
    }

    /// [`Pki::server`] admitting every workload of the trust domain [`TD`].
    pub fn server_td(&self) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.server_allow(Allow::spiffe_trust_domain(TD))
    }

    /// A client builder presenting `cert` and trusting this CA.
    pub fn client_with(&self, cert: &DevCert) -> meshtls::ClientTlsBuilder<meshtls::Ready> {
        let name = format!("client-{}", cert.serial().replace(':', ""));
        let (c, k) = self.write_cert(&name, cert);
        ClientTls::builder()
            .identity_files(c, k)
            .server_roots_file(self.ca_file())
    }

    /// A client presenting the files `cert` and `key` and trusting this CA,
    /// watching the files (`debounce`), with resumption off: each handshake
    /// presents the certificate of the moment.
    pub fn rotating_client(&self, cert: &Path, key: &Path, debounce: Duration) -> ClientTls {
        ClientTls::builder()
            .identity_files(cert, key)
            .server_roots_file(self.ca_file())
            .resumption(meshtls::Resumption::Disabled)
            .debounce(debounce)
            .watch()
            .unwrap()
    }

    /// A bare rustls client trusting this CA and presenting `cert` alone,
    /// or followed by `extra` (what a peer may append to its chain).
    pub fn presenting(
        &self,
        cert: &DevCert,
        extra: Option<rustls::pki_types::CertificateDer<'static>>,
    ) -> Arc<rustls::ClientConfig> {
        let mut chain = chain_of(cert);
        chain.extend(extra);
        bare_presenting(self.ca.cert_pem(), chain, cert.key_pem())
    }

    /// A connection held open by [`Pki::presenting`]`(cert, extra)`: it must
    /// be admitted (see [`Open::connect`]).
    pub async fn open_presenting(
        &self,
        cert: &DevCert,
        extra: Option<rustls::pki_types::CertificateDer<'static>>,
        addr: SocketAddr,
    ) -> Open {
        Open::connect(self.presenting(cert, extra), addr)
            .await
            .unwrap()
    }

    /// [`Pki::server_allow`] speaking gRPC (ALPN `h2` only).
    pub fn grpc_server(&self, rule: Allow) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.server_allow(rule).alpn_protocols(web::h2())
    }

    /// [`Pki::server_admitting`] speaking gRPC (ALPN `h2` only).
    pub fn grpc_server_admitting(&self, spiffe: &str) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
        self.grpc_server(Allow::spiffe_id(spiffe))
    }

    /// [`Pki::client`] speaking gRPC (ALPN `h2` only).
    pub fn grpc_client(&self, spiffe: &str) -> meshtls::ClientTlsBuilder<meshtls::Ready> {
        self.client(spiffe).alpn_protocols(web::h2())
    }

    /// A client builder with a fresh certificate for `spiffe`.
    pub fn client(&self, spiffe: &str) -> meshtls::ClientTlsBuilder<meshtls::Ready> {
        self.client_with(&self.client_cert(spiffe))
    }
}

/// A running test server: every accept result is sent to `results`.
pub struct Running {
    pub addr: SocketAddr,
    pub results: mpsc::UnboundedReceiver<Result<PeerIdentity, HandshakeError>>,
}

impl Running {
    /// The next accept result (waits at most 10 s).
    pub async fn next(&mut self) -> Result<PeerIdentity, HandshakeError> {
        tokio::time::timeout(Duration::from_secs(10), self.results.recv())
            .await
            .expect("no accept result within 10 s")
            .expect("server loop ended")
    }

    /// `client` calls this server as `localhost`: what it saw.
    pub async fn call(&self, client: &ClientTls) -> Seen {
        call(client, self.addr, "localhost").await
    }

    /// `client`'s certificate is revoked: its handshake completes, then the
    /// server's `CertificateRevoked` alert arrives; the server reports
    /// [`RejectReason::Revoked`].
    pub async fn assert_revoked(&mut self, client: &ClientTls) -> HandshakeError {
        self.assert_refused_late(client, "CertificateRevoked", RejectReason::Revoked)
            .await
    }

    /// The server's side of an admitted handshake: who it admitted.
    pub async fn expect_admitted(&mut self) -> PeerIdentity {
        self.next()
            .await
            .unwrap_or_else(|e| panic!("the server refused: {e}"))
    }

    /// The server's side of a refused handshake: it reports `reason`.
    pub async fn expect_refused(&mut self, reason: RejectReason) -> HandshakeError {
        let err = match self.next().await {
            Ok(peer) => panic!("the server admitted {peer}"),
            Err(e) => e,
        };
        assert_eq!(err.reason(), reason, "{err}");
        err
    }

    /// The server's side of an admitted handshake: it admitted `spiffe`.
    pub async fn expect_admitted_as(&mut self, spiffe: &str) -> PeerIdentity {
        let peer = self.expect_admitted().await;
        assert_eq!(peer.spiffe_id().unwrap().as_str(), spiffe);
        peer
    }

    /// `client` calls (as `localhost`) and both sides say it was admitted:
    /// the client has the server's reply, the server its identity.
    pub async fn assert_admitted(&mut self, client: &ClientTls) -> PeerIdentity {
        let seen = call(client, self.addr, "localhost").await;
        assert!(seen.reply().starts_with("hello"), "{seen:?}");
        self.expect_admitted().await
    }

    /// `client` calls (as `localhost`) and both sides say it was refused and
    /// why: the client saw `alert` (the alert's name, or its own handshake
    /// error), the server reports `reason`.
    pub async fn assert_refused(
        &mut self,
        client: &ClientTls,
        alert: &str,
        reason: RejectReason,
    ) -> HandshakeError {
        let seen = call(client, self.addr, "localhost").await;
        let text = match &seen {
            Seen::Refused(text) => text.clone(),
            Seen::Handshake(e) => format!("{e} {e:?}"),
            Seen::Reply(..) => panic!("admitted, expected {alert}: {seen:?}"),
        };
        assert!(text.contains(alert), "expected {alert}: {seen:?}");
        self.expect_refused(reason).await
    }

    /// `client` calls (as `localhost`), its handshake completes on its side,
    /// then the server's alert `alert` arrives (nothing else will do); the
    /// server reports `reason`.
    pub async fn assert_refused_late(
        &mut self,
        client: &ClientTls,
        alert: &str,
        reason: RejectReason,
    ) -> HandshakeError {
        let seen = self.call(client).await;
        assert!(seen.refused().contains(alert), "{seen:?}");
        self.expect_refused(reason).await
    }

    /// `client` calls (as `localhost`) and refuses the server itself: its
    /// handshake fails with `reason`.
    pub async fn assert_client_refuses(&self, client: &ClientTls, reason: RejectReason) -> Seen {
        let seen = self.call(client).await;
        seen.assert_handshake(reason);
        seen
    }

    /// `client` calls (as `localhost`), its handshake completes on its side,
    /// then the server's alert `alert` arrives; the server reports a
    /// refusal, whatever its reason.
    pub async fn refused_late(&mut self, client: &ClientTls, alert: &str) -> HandshakeError {
        assert!(self.call(client).await.refused().contains(alert));
        self.next().await.unwrap_err()
    }
}

/// Builds `builder` watching its files, debounced by `debounce` (it must
/// build and start watching).
pub fn watched(
    builder: meshtls::ServerTlsBuilder<meshtls::Ready>,
    debounce: Duration,
) -> ServerTls {
    builder.debounce(debounce).watch().unwrap()
}

/// Builds `builder` (it must build) and [`serve`]s the server.
pub async fn start(builder: meshtls::ServerTlsBuilder<meshtls::Ready>) -> (ServerTls, Running) {
    let server = builder.build().unwrap();
    let running = serve(&server).await;
    (server, running)
}

/// Serves `server` on 127.0.0.1:0 with its acceptor. Each admitted
/// connection reads one line and answers `hello <peer> serial <serial>`.
pub async fn serve(server: &ServerTls) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    let (tx, results) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok((stream, peer)) => {
                        let reply = format!("hello {} serial {}\n", peer, peer.serial());
                        let _ = tx.send(Ok(peer));
                        answer(stream, reply).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    Running { addr, results }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(stream: S, reply: String) {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if stream.read_line(&mut line).await.is_ok() {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.get_mut().shutdown().await;
    }
}

/// What a client saw.
#[derive(Debug)]
pub enum Seen {
    /// The server's reply and the server's identity.
    Reply(String, PeerIdentity),
    /// The connector refused the handshake.
    Handshake(HandshakeError),
    /// The handshake completed on our side, then the server's alert arrived.
    Refused(String),
}

impl Seen {
    pub fn reply(&self) -> &str {
        match self {
            Self::Reply(r, _) => r,
            other => panic!("expected a reply, saw {other:?}"),
        }
    }

    pub fn refused(&self) -> &str {
        match self {
            Self::Refused(r) => r,
            other => panic!("expected the server to refuse, saw {other:?}"),
        }
    }

    pub fn handshake(&self) -> &HandshakeError {
        match self {
            Self::Handshake(e) => e,
            other => panic!("expected a handshake error, saw {other:?}"),
        }
    }

    /// The connector refused the handshake, with `reason`.
    pub fn assert_handshake(&self, reason: RejectReason) -> &HandshakeError {
        assert_eq!(self.handshake().reason(), reason, "{self:?}");
        self.handshake()
    }
}

/// Connects with the meshtls connector, sends a line, reads the reply.
pub async fn call(client: &ClientTls, addr: SocketAddr, name: &str) -> Seen {
    let tcp = TcpStream::connect(addr).await.unwrap();
    match client.connector().connect(name, tcp).await {
        Err(e) => Seen::Handshake(e),
        Ok((stream, server)) => match exchange(stream).await {
            Ok(reply) => Seen::Reply(reply, server),
            Err(e) => Seen::Refused(e),
        },
    }
}

/// Connects with the meshtls connector (as `localhost`), sends `ping`, reads
/// one line (no time limit): the line as read (empty at the end of the
/// stream), or the first error's text.
pub async fn ping_over(client: &ClientTls, addr: SocketAddr) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (tls, _) = client
        .connector()
        .connect("localhost", tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"ping\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    tls.read_line(&mut line).await.map_err(|e| e.to_string())?;
    Ok(line)
}

/// Sends `ping`, reads one line; an error or EOF is the refusal text.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<String, String> {
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"ping\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("closed without a reply".into()),
        Ok(Ok(_)) => Ok(line.trim_end().to_owned()),
    }
}

/// A bare rustls client config trusting `ca_pem`, presenting `identity`
/// (chain, key) if given, speaking only `versions`.
pub fn bare_client(
    ca_pem: &str,
    identity: Option<&DevCert>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    bare_client_pem(
        ca_pem,
        identity.map(|c| (c.chain_pem(), c.key_pem())),
        versions,
    )
}

/// Like [`bare_client`], with the identity as (chain PEM, key PEM).
pub fn bare_client_pem(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

/// Connects with a bare tokio-rustls client.
pub async fn call_bare(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = meshtls::tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    exchange(stream).await
}

/// Writes `contents` to `path` atomically (temp file + rename).
pub fn replace(path: &Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the `openssl` CLI in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The identity of a certificate, read as the server would read it.
pub fn identity_of(cert: &DevCert) -> PeerIdentity {
    PeerIdentity::from_leaf_der(cert.der()).unwrap()
}

/// The TLS records in `bytes` (5-byte header and payload each), in order.
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let (record, tail) = rest.split_at(len.min(rest.len()));
        out.push(record);
        rest = tail;
    }
    out
}

/// A client and a server connection joined in memory, driven by hand so a
/// test can hold back, reorder or delay any record.
pub struct Wire {
    pub client: rustls::ClientConnection,
    pub server: rustls::ServerConnection,
}

impl Wire {
    pub fn new(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Self {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Self {
            client: rustls::ClientConnection::new(client, name).unwrap(),
            server: rustls::ServerConnection::new(server).unwrap(),
        }
    }

    /// What the client has to send.
    pub fn client_out(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut out).unwrap();
        }
        out
    }

    /// What the server has to send.
    pub fn server_out(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.server.wants_write() {
            self.server.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Feeds `bytes` to the server.
    pub fn feed_server(&mut self, mut bytes: &[u8]) -> Result<(), rustls::Error> {
        while !bytes.is_empty() {
            self.server.read_tls(&mut bytes).unwrap();
            self.server.process_new_packets()?;
        }
        Ok(())
    }

    /// Feeds `bytes` to the client.
    pub fn feed_client(&mut self, mut bytes: &[u8]) -> Result<(), rustls::Error> {
        while !bytes.is_empty() {
            self.client.read_tls(&mut bytes).unwrap();
            self.client.process_new_packets()?;
        }
        Ok(())
    }

    /// Runs the handshake to its end (tickets delivered): the first error
    /// either side saw, as "server: ..." or "client: ...".
    pub fn complete(&mut self) -> Result<(), String> {
        for _ in 0..20 {
            let out = self.client_out();
            self.feed_server(&out)
                .map_err(|e| format!("server: {e:?}"))?;
            let out = self.server_out();
            self.feed_client(&out)
                .map_err(|e| format!("client: {e:?}"))?;
            if !self.client.is_handshaking()
                && !self.server.is_handshaking()
                && !self.client.wants_write()
                && !self.server.wants_write()
            {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    /// Whether the server resumed a session.
    pub fn resumed(&self) -> bool {
        self.server.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

/// Where to get the peers the interop tests run (for skip messages).
pub const INSTALL_GO: &str = "the Go toolchain: https://go.dev/dl or apt-get install golang-go";
/// A JDK: `java` (with its compiler, to run a source file), `javac`, `keytool`.
pub const INSTALL_JDK: &str = "a JDK 17 or later: apt-get install default-jdk-headless";
/// The OpenSSL command-line tool.
pub const INSTALL_OPENSSL: &str = "apt-get install openssl";
/// Python 3.
pub const INSTALL_PYTHON: &str = "apt-get install python3";
/// curl.
pub const INSTALL_CURL: &str = "apt-get install curl";

/// The set in CI (`.ci/run`): a peer program that is missing fails the test
/// instead of skipping it, so CI runs every peer.
pub const REQUIRE_PEERS: &str = "MESHTLS_REQUIRE_PEERS";

/// Runs a peer program with `args` (off the runtime's threads), `input` on
/// its stdin (or none): whether it succeeded, and its stdout then stderr.
pub async fn run_peer(
    program: impl AsRef<std::ffi::OsStr>,
    args: Vec<String>,
    input: Option<&'static str>,
) -> (bool, String) {
    use std::process::{Command, Stdio};
    let program = program.as_ref().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        if let Some(input) = input {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

/// Where `program` is on `PATH` (an executable file), if it is.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether the peer `program` this test runs is on `PATH`. When it is not,
/// prints `SKIPPED: <test>: no <program> on PATH (install: <install>)` and
/// returns `false` (the test then returns early), or, with
/// `MESHTLS_REQUIRE_PEERS=1` (CI), fails the test.
pub fn require_peer(program: &str, install: &str) -> bool {
    require_peer_for("", program, install)
}

/// [`require_peer`] for one part of a test (`part` says which, in the
/// message): the part is skipped, the rest runs.
pub fn require_peer_for(part: &str, program: &str, install: &str) -> bool {
    if find_program(program).is_some() {
        return true;
    }
    report_missing(part, program, install);
    false
}

/// [`require_peer`]'s answer to a peer that is missing (for a test that
/// looked for it another way): skipped loudly, or a failure under
/// `MESHTLS_REQUIRE_PEERS=1`.
pub fn missing_peer(program: &str, install: &str) {
    report_missing("", program, install);
}

fn report_missing(part: &str, program: &str, install: &str) {
    let current = std::thread::current();
    let name = current.name().unwrap_or("a test");
    let test = if part.is_empty() {
        name.to_owned()
    } else {
        format!("{name} ({part})")
    };
    if std::env::var(REQUIRE_PEERS).is_ok_and(|v| v == "1") {
        panic!("{test}: no {program} on PATH (install: {install}), and {REQUIRE_PEERS}=1");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of a test that passes, and a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: no {program} on PATH (install: {install})"
    );
}

// ---------------------------------------------------------------------------
// Peers that present a chain of their own choosing, on connections held
// open (the live-connection and sweeper tests).
// ---------------------------------------------------------------------------

/// The first certificate of a PEM text, as DER.
pub fn der_of(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A plain rustls client (what an attacker runs) trusting `ca_pem` and
/// presenting exactly `chain` (leaf first, then anything it likes).
pub fn bare_presenting(
    ca_pem: &str,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_pem: &str,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_of(ca_pem)).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    )
}

/// `cert` alone (no intermediates) as a bare client's chain.
pub fn chain_of(cert: &DevCert) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())]
}

/// An echo server on `server`'s `Incoming`: every line of every connection
/// comes back, until the connection ends. The task is returned to be
/// aborted.
pub async fn echo_incoming(server: &ServerTls) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, task, _ended) = spawn_echo(server).await;
    (addr, task)
}

/// Builds `builder` judging live connections at once (no grace) on `time`'s
/// clock, then [`events_and_echo`]: the server, its events, its address.
pub async fn serve_judged(
    builder: meshtls::ServerTlsBuilder<meshtls::Ready>,
    time: &meshtls::ManualClock,
) -> (
    ServerTls,
    tokio::sync::broadcast::Receiver<meshtls::Event>,
    SocketAddr,
) {
    let server = builder
        .live_connection_grace(Duration::ZERO)
        .on_clock(time)
        .build()
        .unwrap();
    let (events, addr) = events_and_echo(&server).await;
    (server, events, addr)
}

/// The scene of a peer kept past its expiry or a stale CRL: a server that
/// checks `ca.crl` and judges live connections at once (no grace) on a
/// manual clock started at `start`, serving [`events_and_echo`].
pub struct Kept {
    pub pki: Pki,
    pub start: std::time::SystemTime,
    pub time: meshtls::ManualClock,
    /// `ca.crl`, this CA's CRL, valid for `crl_life`.
    pub crl: PathBuf,
    crl_life: Duration,
    pub server: ServerTls,
    pub events: tokio::sync::broadcast::Receiver<meshtls::Event>,
    pub addr: SocketAddr,
}

impl Kept {
    /// The scene, with an empty CRL valid for `crl_life`; `server(pki, crl)`
    /// is the server's builder.
    pub async fn new(
        crl_life: Duration,
        server: impl FnOnce(&Pki, &Path) -> meshtls::ServerTlsBuilder<meshtls::Ready>,
    ) -> Self {
        let pki = Pki::new();
        let start = std::time::SystemTime::now();
        let time = meshtls::ManualClock::new(start);
        let crl = pki.write("ca.crl", pki.ca.crl(&[], crl_life).unwrap());
        let (server, events, addr) = serve_judged(server(&pki, &crl), &time).await;
        Self {
            pki,
            start,
            time,
            crl,
            crl_life,
            server,
            events,
            addr,
        }
    }

    /// A client certificate for `spiffe` that expires an hour after `start`.
    pub fn expiring_cert(&self, spiffe: &str) -> DevCert {
        self.pki
            .client_cert_from(spiffe, self.start, Duration::from_secs(3600))
    }

    /// Advances the clock two hours: past an hour-long certificate, and
    /// past the next update of an hour-long CRL.
    pub fn two_hours_later(&self) {
        self.time.advance(Duration::from_secs(2 * 3600));
    }

    /// The CRL (valid `crl_life` again) lists `revoked`; the server reloads.
    pub fn revoke(&self, revoked: &[&DevCert]) {
        std::fs::write(&self.crl, self.pki.ca.crl(revoked, self.crl_life).unwrap()).unwrap();
        self.server.reload().unwrap();
    }
}

/// Subscribes to `server`'s events, then serves [`echo_incoming`] (the
/// task runs on when dropped): the events and the address.
pub async fn events_and_echo(
    server: &ServerTls,
) -> (tokio::sync::broadcast::Receiver<meshtls::Event>, SocketAddr) {
    let events = server.subscribe();
    let (addr, _task) = echo_incoming(server).await;
    (events, addr)
}

/// [`echo_incoming`] that also says how each connection ended on the
/// server's side (`eof`, or the error) on the returned channel.
pub async fn echo_reporting(server: &ServerTls) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (addr, _task, ended) = spawn_echo(server).await;
    (addr, ended)
}

async fn spawn_echo(
    server: &ServerTls,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = server.acceptor().incoming(listener);
    let (tx, ended) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                let how = loop {
                    let mut line = String::new();
                    match conn.read_line(&mut line).await {
                        Ok(0) => break "eof".to_owned(),
                        Ok(_) => {
                            if let Err(e) = conn.get_mut().write_all(line.as_bytes()).await {
                                break e.to_string();
                            }
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = tx.send(how);
            });
        }
    });
    (addr, task, ended)
}

/// A connection held open, answering pings: by default a bare client's.
pub struct Open<S = meshtls::tokio_rustls::client::TlsStream<TcpStream>>(BufReader<S>);

/// A meshtls client's connection, tracked by its client.
pub type TrackedStream = meshtls::Tracked<meshtls::tokio_rustls::client::TlsStream<TcpStream>>;

impl Open {
    /// Connects with `config` (as `localhost`) and pings once: in TLS 1.3
    /// the server's verdict on the client shows on the first read.
    pub async fn connect(
        config: Arc<rustls::ClientConfig>,
        addr: SocketAddr,
    ) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = meshtls::tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut open = Self(BufReader::new(tls));
        open.ping().await?;
        Ok(open)
    }
}

impl Open<TrackedStream> {
    /// Connects with the meshtls `client` (as `localhost`); the handshake
    /// must succeed on the client's side. No ping yet.
    pub async fn meshtls(client: &ClientTls, addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (tls, _) = client.connector().connect("localhost", tcp).await.unwrap();
        Self(BufReader::new(tls))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Open<S> {
    /// Sends a line and reads the echo; an error or the end of the stream
    /// is the error text.
    pub async fn ping(&mut self) -> Result<(), String> {
        self.0
            .get_mut()
            .write_all(b"ping\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(10), self.0.read_line(&mut line)).await {
            Err(_) => Err("no answer within 10 s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(0)) => Err("end of stream".into()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The stream under the line reader.
    pub fn get_ref(&self) -> &S {
        self.0.get_ref()
    }
}

/// A reload or update swapped in a new generation with a policy change
/// (new trust, so new epoch, sessions and verdicts).
pub fn assert_policy_changed(outcome: &meshtls::ReloadOutcome) {
    assert!(
        matches!(
            outcome,
            meshtls::ReloadOutcome::Swapped {
                policy_changed: true,
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// The first `ConnectionClosed` within `within`, skipping other events.
pub async fn closed_within(
    events: &mut tokio::sync::broadcast::Receiver<meshtls::Event>,
    within: Duration,
) -> Option<(RejectReason, String)> {
    use tokio::sync::broadcast::error::RecvError;
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(meshtls::Event::ConnectionClosed { reason, detail }) => return (reason, detail),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

/// The next `ConnectionClosed` (at most 10 s), skipping other events.
pub async fn next_closed(
    events: &mut tokio::sync::broadcast::Receiver<meshtls::Event>,
) -> (RejectReason, String) {
    closed_within(events, Duration::from_secs(10))
        .await
        .expect("no ConnectionClosed event within 10 s")
}

/// Waits `quiet`, failing if a connection is closed meanwhile.
pub async fn assert_nothing_closed(
    events: &mut tokio::sync::broadcast::Receiver<meshtls::Event>,
    quiet: Duration,
) {
    if let Some((reason, detail)) = closed_within(events, quiet).await {
        panic!("a connection was closed: {reason}: {detail}");
    }
}

/// The closing a scenario saw is for `reason`.
pub fn closed_as(closed: &Option<(RejectReason, String)>, reason: RejectReason) -> bool {
    closed.as_ref().is_some_and(|(r, _)| *r == reason)
}

/// A scenario's end, `(closing seen, whether the peer still talked after)`,
/// is a closing for `reason` (seen `within` the time it names) and a peer
/// that no longer talks (else fails with `still`).
pub fn assert_closed(
    (closed, still_talks): (Option<(RejectReason, String)>, bool),
    within: &str,
    reason: RejectReason,
    still: &str,
) {
    let (seen, detail) = closed.unwrap_or_else(|| panic!("no ConnectionClosed within {within}"));
    assert_eq!(seen, reason, "{detail}");
    assert!(!still_talks, "{still}");
}

/// Parameters of a CA certificate (no path length limit) with common name
/// `name`, for key signing, CRL signing and `more` uses.
pub fn ca_params(name: &str, more: &[rcgen::KeyUsagePurpose]) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.key_usages.extend_from_slice(more);
    params
}

/// A CA certificate unrelated to anyone's chain, expired in 2001.
pub fn expired_unrelated_ca() -> rustls::pki_types::CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = ca_params("an unrelated CA, long expired", &[]);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    params.self_signed(&key).unwrap().der().clone()
}
