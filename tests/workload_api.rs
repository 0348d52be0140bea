//! Identity from the SPIFFE Workload API, against a real SPIRE (server and
//! agent v1.13.3, started here in a temporary directory: SQLite datastore,
//! join-token node attestation, the unix workload attestor, entries made
//! with the server's CLI, X509-SVIDs of a minute so that they rotate during
//! the test). Skipped, saying how to install them, when `spire-server` and
//! `spire-agent` are not on PATH (`.ci/spire-tools` builds them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Open, echo_incoming, require_peer};
use meshtls::error::ConfigError;
use meshtls::{Allow, ClientTls, Event, ServerTls, WorkloadApi};

const INSTALL_SPIRE: &str = "spire-server and spire-agent v1.13.3 on PATH: bash .ci/spire-tools (Go tools module, then go install)";
const TD: &str = "example.org";

/// A SPIRE server and agent, killed when dropped.
struct Spire {
    td: String,
    dir: PathBuf,
    server: Child,
    agent: Option<Child>,
}

impl Drop for Spire {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.server).chain(self.agent.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd`, retrying until it succeeds or `within` passes: its stdout.
fn until_ok(within: Duration, mut cmd: impl FnMut() -> Command) -> String {
    let start = Instant::now();
    loop {
        let out = cmd().output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < within,
            "{:?} kept failing: {}",
            cmd(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A trust domain's federation with another: this server's bundle
/// endpoint port, the other's trust domain and bundle endpoint port.
#[derive(Clone, Copy)]
struct Federation<'a> {
    own_port: u16,
    peer_td: &'a str,
    peer_port: u16,
}

impl Spire {
    /// A SPIRE of trust domain [`TD`] whose agent serves this process two
    /// workloads, `server` and `client`.
    fn start() -> Self {
        let mut spire = Self::server(TD, None);
        spire.start_agent();
        for name in ["server", "client"] {
            spire.entry(name, None);
        }
        spire
    }

    /// A SPIRE server of trust domain `td` (federated as `federation` says),
    /// no agent yet.
    fn server(td: &str, federation: Option<Federation<'_>>) -> Self {
        // A short directory: unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!("/tmp/sp.{}.{}", std::process::id(), free_port()));
        std::fs::create_dir_all(dir.join("server")).unwrap();
        std::fs::create_dir_all(dir.join("agent")).unwrap();
        let port = free_port();
        let d = dir.display().to_string();
        let federation = federation.map_or_else(String::new, |f| {
            format!(
                r#"  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {own}
      profile "https_spiffe" {{}}
    }}
    federates_with "{peer}" {{
      bundle_endpoint_url = "https://127.0.0.1:{peer_port}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://{peer}/spire/server"
      }}
    }}
  }}
"#,
                own = f.own_port,
                peer = f.peer_td,
                peer_port = f.peer_port,
            )
        });
        std::fs::write(
            dir.join("server.conf"),
            format!(
                r#"server {{
  trust_domain = "{td}"
  bind_address = "127.0.0.1"
  bind_port = {port}
  socket_path = "{d}/server.sock"
  data_dir = "{d}/server"
  log_level = "WARN"
  ca_ttl = "1h"
  default_x509_svid_ttl = "1m"
  ratelimit {{
    attestation = false
  }}
  experimental {{
    cache_reload_interval = "1s"
  }}
{federation}}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{d}/server/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{}}
  NodeAttestor "join_token" {{}}
}}
"#
            ),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let server = Command::new("spire-server")
            .args(["run", "-config"])
            .arg(dir.join("server.conf"))
            .stdout(log("server.log"))
            .stderr(log("server.err"))
            .spawn()
            .unwrap();
        let spire = Self {
            td: td.to_owned(),
            dir,
            server,
            agent: None,
        };
        until_ok(Duration::from_secs(60), || {
            spire.server_cmd(&["healthcheck"])
        });
        let bundle = until_ok(Duration::from_secs(30), || {
            spire.server_cmd(&["bundle", "show"])
        });
        std::fs::write(spire.dir.join("bootstrap.pem"), bundle).unwrap();
        std::fs::write(
            spire.dir.join("agent.conf"),
            format!(
                r#"agent {{
  trust_domain = "{td}"
  server_address = "127.0.0.1"
  server_port = {port}
  socket_path = "{d}/agent.sock"
  data_dir = "{d}/agent"
  log_level = "WARN"
  trust_bundle_path = "{d}/bootstrap.pem"
  experimental {{
    sync_interval = "1s"
  }}
}}
plugins {{
  NodeAttestor "join_token" {{}}
  KeyManager "memory" {{}}
  WorkloadAttestor "unix" {{}}
}}
"#
            ),
        )
        .unwrap();
        spire
    }

    fn server_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("spire-server");
        cmd.args(args)
            .arg("-socketPath")
            .arg(self.dir.join("server.sock"));
        cmd
    }

    /// Starts (or restarts) the agent with a new join token.
    fn start_agent(&mut self) {
        let token = until_ok(Duration::from_secs(30), || {
            self.server_cmd(&[
                "token",
                "generate",
                "-spiffeID",
                &format!("spiffe://{}/agent", self.td),
            ])
        });
        let token = token
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .unwrap()
            .trim()
            .to_owned();
        let _ = std::fs::remove_dir_all(self.dir.join("agent"));
        std::fs::create_dir_all(self.dir.join("agent")).unwrap();
        let log = |name: &str| std::fs::File::create(self.dir.join(name)).unwrap();
        let agent = Command::new("spire-agent")
            .args(["run", "-config"])
            .arg(self.dir.join("agent.conf"))
            .args(["-joinToken", &token])
            .stdout(log("agent.log"))
            .stderr(log("agent.err"))
            .spawn()
            .unwrap();
        self.agent = Some(agent);
        let socket = self.dir.join("agent.sock");
        until_ok(Duration::from_secs(60), || {
            let mut cmd = Command::new("spire-agent");
            cmd.args(["healthcheck", "-socketPath"]).arg(&socket);
            cmd
        });
    }

    fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// A workload of this process (the unix attestor selects by uid), told
    /// apart from others by its hint `name`; federated with `federates_with`.
    fn entry(&self, name: &str, federates_with: Option<&str>) {
        let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let parent = format!("spiffe://{}/agent", self.td);
        let id = format!("spiffe://{}/{name}", self.td);
        let selector = format!("unix:uid:{uid}");
        let federates = federates_with.map(|td| format!("spiffe://{td}"));
        until_ok(Duration::from_secs(30), || {
            let mut cmd = self.server_cmd(&[
                "entry",
                "create",
                "-parentID",
                &parent,
                "-spiffeID",
                &id,
                "-selector",
                &selector,
                "-x509SVIDTTL",
                "60",
                "-hint",
                name,
            ]);
            if let Some(td) = &federates {
                cmd.args(["-federatesWith", td]);
            }
            cmd
        });
    }

    /// Trusts `other`'s bundle as its trust domain's, now (the bundle
    /// endpoints are polled only every few minutes).
    fn trust_bundle_of(&self, other: &Self) {
        let bundle = until_ok(Duration::from_secs(30), || {
            other.server_cmd(&["bundle", "show", "-format", "spiffe"])
        });
        let path = self.dir.join(format!("{}.json", other.td));
        std::fs::write(&path, bundle).unwrap();
        let id = format!("spiffe://{}", other.td);
        let path = path.display().to_string();
        until_ok(Duration::from_secs(30), || {
            self.server_cmd(&[
                "bundle", "set", "-format", "spiffe", "-id", &id, "-path", &path,
            ])
        });
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("agent.sock").display())
    }
}

fn id(name: &str) -> String {
    format!("spiffe://{TD}/{name}")
}

/// This process's SVID with hint `hint`, from the agent at `endpoint`.
fn from_agent(endpoint: &str, hint: &str) -> WorkloadApi {
    WorkloadApi::endpoint(endpoint)
        .hint(hint)
        .wait_for_agent(Duration::from_secs(60))
}

/// Runs a build (which waits for the agent) off the runtime's threads.
async fn blocking<T: Send + 'static>(build: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(build).await.unwrap()
}

/// Waits for an event `want` says yes to, for at most `within`.
async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    within: Duration,
    want: impl Fn(&Event) -> bool,
) -> Option<Event> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    })
    .await
    .ok()
}

fn have_spire() -> bool {
    require_peer("spire-server", INSTALL_SPIRE) && require_peer("spire-agent", INSTALL_SPIRE)
}

/// One SPIRE for the whole story, in order: identities from the agent, a
/// rotation under a live connection, the agent going away (the SVID ages
/// and is reported as nearing expiry) and coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_a_spire_agent_rotate_and_survive_its_restart() {
    if !have_spire() {
        return;
    }
    let mut spire = tokio::task::spawn_blocking(Spire::start).await.unwrap();
    let endpoint = spire.endpoint();

    // 1. A server and a client get their identities from the agent (chosen
    //    by hint among the two this process is entitled to) and talk.
    let server_api = from_agent(&endpoint, "server");
    let server = blocking(move || {
        ServerTls::builder()
            .workload_api(server_api)
            .allow(Allow::spiffe_id(&id("client")))
            .build()
            .unwrap()
    })
    .await;
    let client_api = from_agent(&endpoint, "client");
    let client = blocking(move || {
        ClientTls::builder()
            .workload_api(client_api)
            .expect_server(Allow::spiffe_id(&id("server")))
            .build()
            .unwrap()
    })
    .await;
    let mut events = server.subscribe();
    let (addr, _echo) = echo_incoming(&server).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_, peer) = client.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(
        peer.spiffe_id().map(ToString::to_string),
        Some(id("server"))
    );
    let mut live = Open::meshtls(&client, addr).await;
    live.ping().await.unwrap();
    let first_serial = server.certificate().serial;

    // 2. The SVID rotates at half its life (about 30 s): a new generation
    //    serves, the live connection stays, new handshakes use the new SVID.
    let rotated = wait_for(&mut events, Duration::from_secs(90), |e| {
        matches!(e, Event::Reloaded { .. })
    })
    .await
    .expect("no rotation from the agent within 90 s");
    assert!(matches!(rotated, Event::Reloaded { generation, .. } if generation >= 2));
    assert_ne!(server.certificate().serial, first_serial);
    live.ping()
        .await
        .expect("the live connection broke at the rotation");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let fresh =
        ClientTls::builder().workload_api(WorkloadApi::endpoint(endpoint.clone()).hint("client"));
    let fresh = tokio::task::spawn_blocking(move || {
        fresh.expect_server(Allow::spiffe_id(&id("server"))).build()
    })
    .await
    .unwrap()
    .unwrap();
    let (_tls, peer) = fresh.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(peer.serial(), server.certificate().serial);

    // 3. The agent goes away: the server says so and keeps serving its last
    //    good SVID; when an agent is back, it says so and follows it again.
    tokio::task::block_in_place(|| spire.stop_agent());
    let lost = wait_for(&mut events, Duration::from_secs(30), |e| {
        matches!(e, Event::WorkloadApiLost { .. })
    })
    .await
    .expect("no WorkloadApiLost within 30 s of the agent's end");
    assert!(lost.to_string().contains("last good SVID"), "{lost}");
    assert!(server.stats().workload_api_lost >= 1);
    live.ping()
        .await
        .expect("the live connection broke with the agent");
    Open::meshtls(&client, addr)
        .await
        .ping()
        .await
        .expect("no new connection while the agent was away");

    // With no agent, the SVID ages: it is reported as nearing its expiry
    // (a third of its 70 s life left), as any certificate is.
    let expiring = wait_for(&mut events, Duration::from_secs(75), |e| {
        matches!(e, Event::Expiring { .. } | Event::Expired { .. })
    })
    .await
    .expect("no Expiring event while the agent was away and the SVID aged");
    assert!(matches!(expiring, Event::Expiring { .. }), "{expiring}");

    tokio::task::block_in_place(|| spire.start_agent());
    wait_for(&mut events, Duration::from_secs(60), |e| {
        matches!(e, Event::WorkloadApiBack)
    })
    .await
    .expect("no WorkloadApiBack within 60 s of a new agent");
    // A restarted agent issues new keys: a new generation follows.
    wait_for(&mut events, Duration::from_secs(60), |e| {
        matches!(e, Event::Reloaded { .. })
    })
    .await
    .expect("no SVID from the new agent within 60 s");
    live.ping().await.unwrap();
}

/// No agent at the endpoint: building waits as long as asked, then says
/// where it looked and what to check.
#[test]
fn no_agent_at_start_is_a_clear_error_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let socket: &Path = &dir.path().join("nobody.sock");
    let started = Instant::now();
    let err = ServerTls::builder()
        .workload_api(
            WorkloadApi::endpoint(format!("unix://{}", socket.display()))
                .wait_for_agent(Duration::from_millis(800)),
        )
        .allow(Allow::spiffe_trust_domain(TD))
        .build()
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, meshtls::Error::Config(ConfigError::WorkloadApi { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("nobody.sock"), "{text}");
    assert!(text.contains("is the agent running"), "{text}");
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
}

/// Two trust domains, each with its own SPIRE, federated: a server of
/// `a.test` admits a client of `b.test` by the federated bundle its agent
/// streams (and the client expects the server by SPIFFE ID, vouched for by
/// `a.test`'s bundle, which its own agent streams as federated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_trust_domains_from_two_spire_servers() {
    if !have_spire() {
        return;
    }
    let (a, b) = tokio::task::spawn_blocking(|| {
        let (pa, pb) = (free_port(), free_port());
        let mut a = Spire::server(
            "a.test",
            Some(Federation {
                own_port: pa,
                peer_td: "b.test",
                peer_port: pb,
            }),
        );
        let mut b = Spire::server(
            "b.test",
            Some(Federation {
                own_port: pb,
                peer_td: "a.test",
                peer_port: pa,
            }),
        );
        a.trust_bundle_of(&b);
        b.trust_bundle_of(&a);
        a.start_agent();
        b.start_agent();
        a.entry("server", Some("b.test"));
        b.entry("client", Some("a.test"));
        (a, b)
    })
    .await
    .unwrap();

    let server_api = from_agent(&a.endpoint(), "server");
    let server = blocking(move || {
        ServerTls::builder()
            .workload_api(server_api)
            .allow(Allow::spiffe_trust_domain("b.test"))
            .build()
            .unwrap()
    })
    .await;
    let client_api = from_agent(&b.endpoint(), "client");
    let client = blocking(move || {
        ClientTls::builder()
            .workload_api(client_api)
            .expect_server(Allow::spiffe_id("spiffe://a.test/server"))
            .build()
            .unwrap()
    })
    .await;
    let mut running = common::serve(&server).await;
    let admitted = running.assert_admitted(&client).await;
    assert_eq!(
        admitted.spiffe_id().map(ToString::to_string).as_deref(),
        Some("spiffe://b.test/client")
    );
    assert_eq!(
        admitted.vouched_by(),
        &meshtls::VouchedBy::TrustDomain("b.test".parse().unwrap())
    );
}
