//! The sweeper thread: what a peer's chain can make it do (nothing: it
//! sleeps), and that it ends with its server. Found by the red team of
//! issue 19. These tests read the process's threads (/proc/self/task), so
//! they run one at a time, in a binary of their own.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Pki, TD};
use meshtls::rustls;
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use meshtls::{Allow, ServerTls};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn id(name: &str) -> String {
    format!("spiffe://{TD}/ns/shop/sa/{name}")
}

/// The ids of this process's threads named `name`.
fn threads(name: &str) -> BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// User + system CPU time of thread `tid`, in clock ticks.
fn cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 (index 0 here); utime 14, stime 15.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}

/// A CA certificate unrelated to anyone's chain, expired in 2001.
fn expired_unrelated_ca() -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "an unrelated CA, long expired");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    params.self_signed(&key).unwrap().der().clone()
}

fn bare(
    ca_pem: &str,
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
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

async fn echo_server(server: &ServerTls) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = server.acceptor().incoming(listener);
    let task = tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    match conn.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if conn.get_mut().write_all(line.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

type Client = BufReader<meshtls::tokio_rustls::client::TlsStream<TcpStream>>;

async fn open_and_ping(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = meshtls::tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut line = BufReader::new(tls);
    line.get_mut().write_all(b"ping\n").await.unwrap();
    let mut answer = String::new();
    line.read_line(&mut answer).await.unwrap();
    assert_eq!(answer, "ping\n");
    line
}

/// CPU ticks the new sweeper thread(s) spend in one second while a peer
/// that presents `extra` after its leaf stays connected.
async fn sweeper_cpu_with(extra: Option<CertificateDer<'static>>) -> u64 {
    let pki = Pki::new();
    let server = pki
        .server()
        .allow(Allow::spiffe_trust_domain(TD))
        .build()
        .unwrap();
    let (addr, task) = echo_server(&server).await;
    let before = threads("meshtls-sweep");
    let cert = pki.client_cert(&id("a"));
    let mut chain = vec![CertificateDer::from(cert.der().to_vec())];
    chain.extend(extra);
    let line = open_and_ping(bare(pki.ca.cert_pem(), chain, cert.key_pem()), addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ours: Vec<u32> = threads("meshtls-sweep")
        .difference(&before)
        .copied()
        .collect();
    assert!(
        !ours.is_empty(),
        "no sweeper thread started for the tracked connection"
    );
    let start: u64 = ours.iter().map(|t| cpu_ticks(*t)).sum();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = ours.iter().map(|t| cpu_ticks(*t)).sum::<u64>() - start;
    drop(line);
    task.abort();
    spent
}

#[tokio::test]
async fn control_the_sweeper_sleeps_while_a_peer_stays_connected() {
    let _one = ONE_AT_A_TIME.lock().await;
    let spent = sweeper_cpu_with(None).await;
    assert!(spent <= 5, "the sweeper spent {spent} ticks of CPU in 1 s");
}

#[tokio::test]
async fn a_peer_with_an_expired_extra_ca_in_its_chain_does_not_make_the_sweeper_spin() {
    let _one = ONE_AT_A_TIME.lock().await;
    let spent = sweeper_cpu_with(Some(expired_unrelated_ca())).await;
    assert!(
        spent <= 5,
        "one admitted peer that appended an unrelated CA expired in 2001 to its chain makes the \
         sweeper thread burn {spent} clock ticks of CPU per second (a verdict 'until' in the past: \
         it wakes at once and judges the chain in full, forever)"
    );
}

/// Builds and drops servers, each with a tracked connection (and a
/// watcher), and checks that their threads end with them.
#[tokio::test]
async fn sweeper_and_watcher_threads_end_with_their_servers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sweepers = threads("meshtls-sweep").len();
    let watchers = threads("meshtls-reload").len();
    for i in 0..20 {
        let pki = Pki::new();
        let server = pki
            .server()
            .allow(Allow::spiffe_trust_domain(TD))
            .debounce(Duration::from_millis(20))
            .watch()
            .unwrap();
        let (addr, task) = echo_server(&server).await;
        let cert = pki.client_cert(&id(&format!("c{i}")));
        let line = open_and_ping(
            bare(
                pki.ca.cert_pem(),
                vec![CertificateDer::from(cert.der().to_vec())],
                cert.key_pem(),
            ),
            addr,
        )
        .await;
        drop(server);
        task.abort();
        let _ = task.await;
        drop(line);
    }
    let mut left = (0, 0);
    for _ in 0..50 {
        left = (
            threads("meshtls-sweep").len().saturating_sub(sweepers),
            threads("meshtls-reload").len().saturating_sub(watchers),
        );
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        (0, 0),
        "(sweeper, watcher) threads left 5 s after 20 servers were dropped"
    );
}
