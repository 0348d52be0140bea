//! Go's `crypto/tls` against meshtls, both ways (`tests/interop/peer.go`,
//! standard library only; any Go toolchain, which `.ci/run` installs when
//! there is none). Without `go` on PATH the tests say they were skipped
//! (with `MESHTLS_REQUIRE_PEERS=1`, as in CI, they fail).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{INSTALL_GO, Pki, exchange, require_peer, run_peer, start, svid};
use meshtls::{Allow, RejectReason};

/// The Go peer, built once per test run.
fn peer() -> &'static PathBuf {
    static PEER: OnceLock<PathBuf> = OnceLock::new();
    PEER.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("go-peer");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/peer.go"
            ))
            .env("GOCACHE", tmp.join("go-cache"))
            .env("GOPATH", tmp.join("go-path"))
            .env("GOFLAGS", "-buildvcs=false")
            .env("CGO_ENABLED", "0")
            .output()
            .unwrap_or_else(|e| panic!("cannot run go (apt-get install golang-go): {e}"));
        assert!(
            built.status.success(),
            "go build failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// Runs the Go client; returns what it printed.
async fn go_client(args: Vec<String>) -> String {
    let args = std::iter::once("client".to_owned()).chain(args).collect();
    run_peer(peer(), args, None).await.1
}

#[tokio::test]
async fn go_client_admitted_and_refused_with_the_right_alerts() {
    if !require_peer("go", INSTALL_GO) {
        return;
    }
    let pki = Pki::new();
    let (_server, mut running) = start(pki.server_admitting(&svid("interop", "go-client"))).await;
    let addr = running.addr.to_string();
    let ca = pki.ca_file().display().to_string();

    // Admitted, and told who it is.
    let (cert, key) = pki.write_cert("go", &pki.client_cert(&svid("interop", "go-client")));
    let said = go_client(vec![
        addr.clone(),
        ca.clone(),
        cert.display().to_string(),
        key.display().to_string(),
        "localhost".into(),
    ])
    .await;
    assert!(
        said.contains(&format!("reply: hello {}", svid("interop", "go-client"))),
        "{said}"
    );
    running
        .expect_admitted_as(&svid("interop", "go-client"))
        .await;

    // Off the allow-list: Go sees access_denied, the server says why.
    let (cert, key) = pki.write_cert("go-other", &pki.client_cert(&svid("interop", "go-other")));
    let said = go_client(vec![
        addr.clone(),
        ca.clone(),
        cert.display().to_string(),
        key.display().to_string(),
        "localhost".into(),
    ])
    .await;
    assert!(
        said.contains("error: remote error: tls: access denied"),
        "{said}"
    );
    running.expect_refused(RejectReason::NotAllowed).await;

    // No certificate: certificate_required.
    let said = go_client(vec![addr, ca, "localhost".into()]).await;
    assert!(
        said.contains("error: remote error: tls: certificate required"),
        "{said}"
    );
    running
        .expect_refused(RejectReason::NoClientCertificate)
        .await;
}

struct GoServer(Child, std::net::SocketAddr);

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn go_server(pki: &Pki) -> GoServer {
    let cert = pki
        .ca
        .leaf()
        .spiffe(&svid("interop", "go-server"))
        .dns("localhost")
        .server()
        .issue()
        .unwrap();
    let (cert, key) = pki.write_cert("go-server", &cert);
    let mut child = Command::new(peer())
        .arg("server")
        .arg(pki.ca_file())
        .arg(cert)
        .arg(key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("Go server said {line:?}"))
        .parse()
        .unwrap();
    GoServer(child, addr)
}

#[tokio::test]
async fn meshtls_client_against_a_go_server_with_a_spiffe_id() {
    if !require_peer("go", INSTALL_GO) {
        return;
    }
    let pki = Pki::new();
    let go = go_server(&pki);

    // Admitted with the right expected ID; Go saw our SPIFFE ID.
    let client = pki
        .client(&svid("interop", "rust"))
        .expect_server(Allow::spiffe_id(&svid("interop", "go-server")))
        .build()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(go.1).await.unwrap();
    let (tls, server) = client.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(
        server.spiffe_id().unwrap().to_string(),
        svid("interop", "go-server")
    );
    let reply = exchange(tls).await.unwrap();
    assert!(
        reply.contains(&format!("hello {} from go", svid("interop", "rust"))),
        "{reply}"
    );

    // Refused with a wrong one, by our side, saying which.
    let wrong = pki
        .client(&svid("interop", "rust"))
        .expect_server(Allow::spiffe_id(&svid("interop", "someone-else")))
        .build()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(go.1).await.unwrap();
    let error = wrong
        .connector()
        .connect("localhost", tcp)
        .await
        .unwrap_err();
    assert_eq!(error.reason(), RejectReason::NotAllowed, "{error}");
    assert!(
        error.to_string().contains(&svid("interop", "go-server")),
        "{error}"
    );
}
