//! Real peers: OpenSSL (`s_client`, `s_server`), Python's `ssl` and Java 17
//! against meshtls, both ways where it applies. Proves they present client
//! certificates without CA hints, speak TLS 1.3 with our suites and groups,
//! and see our refusals as the right alerts. A test whose peer program is
//! not on PATH says it was skipped and what installs it (with
//! `MESHTLS_REQUIRE_PEERS=1`, as in CI, it fails).

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::web::serve_axum;
use common::{
    INSTALL_CURL, INSTALL_JDK, INSTALL_OPENSSL, INSTALL_PYTHON, Pki, TD, openssl, require_peer,
    run_peer, start, svid,
};
use meshtls::{Allow, ClientTls, RejectReason};

fn s_client_args(pki: &Pki, port: u16, with_cert: bool, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
        "-CAfile",
        pki.ca_file().to_str().unwrap(),
        "-verify_return_error",
        "-quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if with_cert {
        let (cert, key) =
            pki.write_cert("openssl-client", &pki.client_cert(&svid("interop", "peer")));
        args.extend([
            "-cert".into(),
            cert.display().to_string(),
            "-key".into(),
            key.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test]
async fn openssl_s_client_is_admitted_and_refused_with_the_right_alerts() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_admitting(&svid("interop", "peer"))).await;
    let port = running.addr.port();

    let (ok, out) = run_peer(
        "openssl",
        s_client_args(&pki, port, true, &[]),
        Some("ping\n"),
    )
    .await;
    assert!(
        ok && out.contains(&format!("hello {}", svid("interop", "peer"))),
        "{out}"
    );
    running.expect_admitted_as(&svid("interop", "peer")).await;

    let (_, out) = run_peer(
        "openssl",
        s_client_args(&pki, port, false, &[]),
        Some("ping\n"),
    )
    .await;
    assert!(out.contains("certificate required"), "{out}");
    running
        .expect_refused(RejectReason::NoClientCertificate)
        .await;

    let (_, out) = run_peer(
        "openssl",
        s_client_args(&pki, port, true, &["-tls1_2"]),
        Some("ping\n"),
    )
    .await;
    assert!(out.contains("protocol version"), "{out}");
    running.expect_refused(RejectReason::ProtocolVersion).await;
}

/// An `openssl s_server` that requires a client certificate from `pki`'s CA,
/// serves one connection and echoes each line reversed (`-rev`).
struct SServer {
    child: std::process::Child,
    port: u16,
}

impl SServer {
    fn start(pki: &Pki) -> Self {
        let (cert, key) = pki.write_cert("openssl-server", &pki.server_cert());
        let port = {
            let probe = StdListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &port.to_string(),
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
                "-CAfile",
                pki.ca_file().to_str().unwrap(),
                "-Verify",
                "1",
                "-verify_return_error",
                "-tls1_3",
                "-rev",
                "-naccept",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, port }
    }

    /// Connects `client` once s_server listens; the handshake's outcome and
    /// the reply to "ping".
    async fn call(&self, client: &ClientTls) -> Result<(meshtls::PeerIdentity, String), String> {
        for _ in 0..100 {
            if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let (tls, server) = client
                    .connector()
                    .connect("localhost", tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                return common::exchange(tls).await.map(|reply| (server, reply));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("s_server never listened");
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn meshtls_client_against_openssl_s_server() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let s_server = SServer::start(&pki);
    let client = pki
        .client(&svid("interop", "peer"))
        .expect_server(Allow::spiffe_id(&format!(
            "spiffe://{TD}/ns/billing/sa/api"
        )))
        .build()
        .unwrap();
    let (server, reply) = s_server.call(&client).await.unwrap();
    assert_eq!(server.spiffe_id().unwrap().path(), "/ns/billing/sa/api");
    // `-rev` echoes each line reversed; it only answers a verified client.
    assert_eq!(reply, "gnip");
}

#[tokio::test]
async fn python_ssl_client_is_admitted() {
    if !require_peer("python3", INSTALL_PYTHON) {
        return;
    }
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_admitting(&svid("interop", "peer"))).await;
    let (cert, key) = pki.write_cert("python-client", &pki.client_cert(&svid("interop", "peer")));
    let script = r#"
import socket, ssl, sys
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
with socket.create_connection(("127.0.0.1", port)) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"ping\n")
        print(tls.makefile().readline().strip(), tls.version())
"#;
    let args = vec![
        "-c".to_owned(),
        script.to_owned(),
        running.addr.port().to_string(),
        pki.ca_file().display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    ];
    let (ok, out) = run_peer("python3", args, Some("")).await;
    assert!(
        ok && out.contains(&format!("hello {}", svid("interop", "peer")))
            && out.contains("TLSv1.3"),
        "{out}"
    );
    running.expect_admitted().await;
}

#[tokio::test]
async fn java_client_is_admitted() {
    // `java Interop.java` compiles the source first: a JDK, not a JRE.
    if !require_peer("java", INSTALL_JDK)
        || !require_peer("javac", INSTALL_JDK)
        || !require_peer("openssl", INSTALL_OPENSSL)
    {
        return;
    }
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_admitting(&svid("interop", "peer"))).await;
    let (cert, key) = pki.write_cert("java-client", &pki.client_cert(&svid("interop", "peer")));
    openssl(
        pki.dir.path(),
        &[
            "pkcs12",
            "-export",
            "-in",
            cert.to_str().unwrap(),
            "-inkey",
            key.to_str().unwrap(),
            "-out",
            "java-client.p12",
            "-passout",
            "pass:changeit",
        ],
    );
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/Interop.java");
    let args = vec![
        source.to_owned(),
        "127.0.0.1".to_owned(),
        running.addr.port().to_string(),
        pki.path("java-client.p12").display().to_string(),
        "changeit".to_owned(),
        pki.ca_file().display().to_string(),
    ];
    let (ok, out) = run_peer("java", args, Some("")).await;
    assert!(
        ok && out.contains(&format!("hello {}", svid("interop", "peer"))),
        "{out}"
    );
    running.expect_admitted_as(&svid("interop", "peer")).await;
}

#[tokio::test]
async fn meshtls_client_refused_by_openssl_s_server_sees_the_alert() {
    if !require_peer("openssl", INSTALL_OPENSSL) {
        return;
    }
    let pki = Pki::new();
    let s_server = SServer::start(&pki);
    // A client whose certificate s_server's CA did not sign.
    let other = Pki::named("other root");
    let (c, k) = other.write_cert("stranger", &other.client_cert(&svid("interop", "peer")));
    let client = ClientTls::builder()
        .identity_files(c, k)
        .server_roots_file(pki.ca_file())
        .build()
        .unwrap();
    let err = s_server.call(&client).await.unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
}

#[tokio::test]
async fn curl_calls_an_axum_service() {
    if !require_peer("curl", INSTALL_CURL) {
        return;
    }
    use axum::routing::get;
    let pki = Pki::new();
    let server = pki
        .server_admitting(&svid("interop", "peer"))
        .build()
        .unwrap();
    let app = axum::Router::new().route(
        "/whoami",
        get(|peer: meshtls::PeerIdentity| async move { peer.to_string() }),
    );
    let port = serve_axum(&server, app).await.port();

    let (cert, key) = pki.write_cert("curl-client", &pki.client_cert(&svid("interop", "peer")));
    let url = format!("https://localhost:{port}/whoami");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let common = |with_cert: bool| {
        let mut args = vec![
            "--silent".to_owned(),
            "--show-error".to_owned(),
            "--tlsv1.3".to_owned(),
            "--resolve".to_owned(),
            resolve.clone(),
            "--cacert".to_owned(),
            pki.ca_file().display().to_string(),
        ];
        if with_cert {
            args.extend([
                "--cert".to_owned(),
                cert.display().to_string(),
                "--key".to_owned(),
                key.display().to_string(),
            ]);
        }
        args.push(url.clone());
        args
    };
    let (ok, out) = run_peer("curl", common(true), Some("")).await;
    assert!(ok && out.trim() == svid("interop", "peer"), "{out}");
    // HTTP/2 is offered by default now: curl speaks it.
    let mut h2 = common(true);
    h2.splice(
        0..0,
        ["--write-out".to_owned(), " http/%{http_version}".to_owned()],
    );
    let (ok, out) = run_peer("curl", h2, Some("")).await;
    assert!(ok && out.trim().ends_with("http/2"), "{out}");

    // No certificate: refused. Over HTTP/2 curl reports the broken
    // connection ((55)/(56)) rather than the alert; the server says why.
    let mut events = server.subscribe();
    let (ok, out) = run_peer("curl", common(false), Some("")).await;
    assert!(
        !ok && (out.contains("alert") || out.contains("(55)") || out.contains("(56)")),
        "{out}"
    );
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Ok(meshtls::Event::Rejected { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the server did not report the refusal");
    assert_eq!(reason, RejectReason::NoClientCertificate);
}
