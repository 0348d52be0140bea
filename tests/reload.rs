//! Live rotation: real files, real sockets, the real watcher.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{
    Pki, ServerBuilderExt, billing_web, call, client_of, replace, serve, start, svid, td_pattern,
};
use meshtls::dev::DevCert;
use meshtls::{Allow, ClientTls, Event, RejectReason, ReloadOutcome, Resumption, ServerTls};
use tokio::sync::broadcast::Receiver;

const WAIT: Duration = Duration::from_secs(10);

/// Files a server watches, in `<dir>/live/`.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn files(pki: &Pki, first: &DevCert) -> Files {
    let f = Files {
        cert: pki.path("live/tls.crt"),
        key: pki.path("live/tls.key"),
        ca: pki.path("live/ca.crt"),
    };
    pki.write("live/tls.crt", first.chain_pem());
    pki.write("live/tls.key", first.key_pem());
    pki.write("live/ca.crt", pki.ca.cert_pem());
    f
}

fn watched(f: &Files) -> meshtls::ServerTlsBuilder<meshtls::Ready> {
    ServerTls::builder()
        .identity_files(&f.cert, &f.key)
        .client_roots_file(&f.ca)
        .allow(Allow::spiffe_id(&billing_web()))
        .debounce(Duration::from_millis(50))
        .poll_interval(None)
}

/// A client that never resumes, so every call shows the served certificate.
fn fresh_client(pki: &Pki) -> ClientTls {
    pki.client(&billing_web())
        .resumption(Resumption::Disabled)
        .build()
        .unwrap()
}

async fn served_serial(client: &ClientTls, addr: std::net::SocketAddr) -> String {
    match call(client, addr, "localhost").await {
        common::Seen::Reply(_, server) => server.serial().to_owned(),
        other => panic!("call failed: {other:?}"),
    }
}

/// Waits for the next reload or refused reload, skipping other events.
async fn next_reload(events: &mut Receiver<Event>) -> Event {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no reload event within 10 s")
            .expect("event channel closed");
        if matches!(event, Event::Reloaded { .. } | Event::ReloadFailed { .. }) {
            return event;
        }
    }
}

async fn expect_reloaded(events: &mut Receiver<Event>) -> (u64, String, bool) {
    match next_reload(events).await {
        Event::Reloaded {
            generation,
            leaf,
            policy_changed,
            ..
        } => (generation, leaf.serial, policy_changed),
        other => panic!("expected a reload, got: {other}"),
    }
}

async fn expect_failed(events: &mut Receiver<Event>) -> String {
    match next_reload(events).await {
        Event::ReloadFailed { error, .. } => error.to_string(),
        other => panic!("expected a refused reload, got: {other}"),
    }
}

#[tokio::test]
async fn atomic_rename_of_cert_and_key_is_served_next() {
    let pki = Pki::new();
    let f = files(&pki, &pki.server_cert());
    let server = watched(&f).watch().unwrap();
    let mut events = server.subscribe();
    let running = serve(&server).await;
    let client = fresh_client(&pki);
    let first = served_serial(&client, running.addr).await;

    let next = pki.server_cert();
    replace(&f.cert, next.chain_pem());
    replace(&f.key, next.key_pem());
    let (generation, serial, policy_changed) = expect_reloaded(&mut events).await;
    assert_eq!(
        (generation, serial.as_str(), policy_changed),
        (2, next.serial(), false)
    );
    let now = served_serial(&client, running.addr).await;
    assert_eq!(now, next.serial());
    assert_ne!(now, first);
}

#[tokio::test]
async fn kubernetes_secret_volume_swap_is_served_next() {
    let pki = Pki::new();
    let vol = pki.path("secret");
    let first = pki.server_cert();
    k8s_publish(
        &vol,
        "..2026_11_24_08_00_00.000000001",
        &first,
        pki.ca.cert_pem(),
    );
    let server = ServerTls::builder()
        .identity_files(vol.join("tls.crt"), vol.join("tls.key"))
        .client_roots_file(vol.join("ca.crt"))
        .allow(Allow::spiffe_id(&billing_web()))
        .debounce(Duration::from_millis(50))
        .poll_interval(None)
        .watch()
        .unwrap();
    let mut events = server.subscribe();
    let running = serve(&server).await;
    let client = fresh_client(&pki);
    assert_eq!(served_serial(&client, running.addr).await, first.serial());

    let next = pki.server_cert();
    k8s_publish(
        &vol,
        "..2026_11_24_09_00_00.000000002",
        &next,
        pki.ca.cert_pem(),
    );
    let (_, serial, _) = expect_reloaded(&mut events).await;
    assert_eq!(serial, next.serial());
    assert_eq!(served_serial(&client, running.addr).await, next.serial());
}

/// Publishes like the kubelet: a new timestamped directory, `..data` swapped
/// to it by renaming a symlink, the old directory deleted.
fn k8s_publish(vol: &Path, stamp: &str, cert: &DevCert, ca_pem: &str) {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(vol).unwrap();
    let data = vol.join(stamp);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert.chain_pem()).unwrap();
    std::fs::write(data.join("tls.key"), cert.key_pem()).unwrap();
    std::fs::write(data.join("ca.crt"), ca_pem).unwrap();
    let old = std::fs::read_link(vol.join("..data")).ok();
    symlink(stamp, vol.join("..data_tmp")).unwrap();
    std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = vol.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(vol.join(old)).unwrap();
    }
}

#[tokio::test]
async fn key_written_after_cert_is_not_an_error() {
    let pki = Pki::new();
    let f = files(&pki, &pki.server_cert());
    let server = ServerTls::builder()
        .identity_files(&f.cert, &f.key)
        .client_roots_file(&f.ca)
        .allow(Allow::spiffe_id(&billing_web()))
        .poll_interval(None) // default debounce: 100 ms
        .watch()
        .unwrap();
    let mut events = server.subscribe();
    let running = serve(&server).await;

    let next = pki.server_cert();
    std::fs::write(&f.cert, next.chain_pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&f.key, next.key_pem()).unwrap();

    let (_, serial, _) = expect_reloaded(&mut events).await;
    assert_eq!(serial, next.serial());
    assert_eq!(
        served_serial(&fresh_client(&pki), running.addr).await,
        next.serial()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, Event::ReloadFailed { .. }),
            "unexpected: {event}"
        );
    }
    assert_eq!(server.stats().reloads_failed, 0);
}

#[tokio::test]
async fn bad_writes_keep_the_last_good_generation() {
    let pki = Pki::new();
    let good = pki.server_cert();
    let f = files(&pki, &good);
    let server = watched(&f).watch().unwrap();
    let mut events = server.subscribe();
    let running = serve(&server).await;
    let client = fresh_client(&pki);

    let now = SystemTime::now();
    let expired = pki.localhost_cert_between(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(60),
    );
    let stranger = pki.server_cert();
    let pem = good.chain_pem();
    let cases: Vec<(&str, &Path, String, &str)> = vec![
        (
            "garbage",
            &f.cert,
            "not a certificate at all\n".into(),
            "holds no certificate chain",
        ),
        ("empty", &f.cert, String::new(), "is empty"),
        (
            "truncated",
            &f.cert,
            pem[..pem.len() / 2].to_owned(),
            "malformed PEM",
        ),
        (
            "mismatched key",
            &f.key,
            stranger.key_pem().to_owned(),
            "does not match",
        ),
        (
            "expired",
            &f.cert,
            expired.chain_pem().to_owned(),
            "expired at",
        ),
    ];
    for (what, path, contents, reason) in cases {
        replace(path, &contents);
        let error = expect_failed(&mut events).await;
        assert!(error.contains(reason), "{what}: {error}");
        assert!(
            error.contains(&path.display().to_string()),
            "{what}: {error}"
        );
        assert_eq!(
            served_serial(&client, running.addr).await,
            good.serial(),
            "{what}"
        );
        // Put the good file back; identical bytes make no new generation.
        replace(
            path,
            if path == f.cert {
                good.chain_pem()
            } else {
                good.key_pem()
            },
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.generation(), 1, "{what}");
    }

    // A good new pair heals it.
    let next = pki.server_cert();
    replace(&f.cert, next.chain_pem());
    replace(&f.key, next.key_pem());
    let (generation, serial, _) = expect_reloaded(&mut events).await;
    assert_eq!((generation, serial.as_str()), (2, next.serial()));
    assert_eq!(served_serial(&client, running.addr).await, next.serial());
    assert!(server.stats().reloads_failed >= 5);
}

#[tokio::test]
async fn ca_bundle_rotation_with_overlap() {
    let pki = Pki::new();
    let f = files(&pki, &pki.server_cert());
    let server = ServerTls::builder()
        .identity_files(&f.cert, &f.key)
        .client_roots_file(&f.ca)
        .any_authenticated()
        .debounce(Duration::from_millis(50))
        .poll_interval(None)
        .watch()
        .unwrap();
    let mut events = server.subscribe();
    let mut running = serve(&server).await;

    let new_ca = meshtls::dev::DevCa::new("meshtls next root").unwrap();
    let old_client = pki.client(&billing_web()).build().unwrap();
    let new_cert = client_of(&new_ca, &billing_web());
    let new_client = pki.client_with(&new_cert).build().unwrap();

    running.assert_admitted(&old_client).await;
    running
        .assert_refused(&new_client, "UnknownCA", RejectReason::UnknownIssuer)
        .await;

    // Overlap: both CAs.
    replace(&f.ca, format!("{}{}", pki.ca.cert_pem(), new_ca.cert_pem()));
    let (_, _, policy_changed) = expect_reloaded(&mut events).await;
    assert!(policy_changed);
    for client in [&old_client, &new_client] {
        running.assert_admitted(client).await;
    }

    // New CA only: the old-CA client is refused, even holding a ticket.
    replace(&f.ca, new_ca.cert_pem());
    expect_reloaded(&mut events).await;
    running
        .assert_refused(&old_client, "UnknownCA", RejectReason::UnknownIssuer)
        .await;
    running.assert_admitted(&new_client).await;
}

#[tokio::test]
async fn crl_update_refuses_new_connections_but_not_the_open_one() {
    let pki = Pki::new();
    let f = files(&pki, &pki.server_cert());
    let crl = pki.write(
        "live/ca.crl",
        pki.ca.crl(&[], Duration::from_secs(3600)).unwrap(),
    );
    let server = watched(&f).crl_file(&crl).watch().unwrap();
    let mut events = server.subscribe();
    let mut running = serve(&server).await;

    let cert = pki.client_cert(&billing_web());
    let client = pki.client_with(&cert).build().unwrap();
    // A first connection gives the client a ticket; a second one resumes.
    running.assert_admitted(&client).await;
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (open, _) = client.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(
        open.get_ref().1.handshake_kind(),
        Some(meshtls::rustls::HandshakeKind::Resumed)
    );
    running.expect_admitted().await;

    replace(
        &crl,
        pki.ca.crl(&[&cert], Duration::from_secs(3600)).unwrap(),
    );
    let (_, _, policy_changed) = expect_reloaded(&mut events).await;
    assert!(policy_changed);

    // New connections, resumed or not, are refused.
    running
        .assert_refused(&client, "CertificateRevoked", RejectReason::Revoked)
        .await;
    let fresh = pki
        .client_with(&cert)
        .resumption(Resumption::Disabled)
        .build()
        .unwrap();
    running.refused_late(&fresh, "CertificateRevoked").await;

    // The connection opened before the revocation still works: cutting it is
    // the application's call.
    let reply = common::exchange(open).await.unwrap();
    assert!(reply.starts_with("hello"), "{reply}");
}

#[tokio::test]
async fn own_certificate_rotation_keeps_resumption() {
    let pki = Pki::new();
    let f = files(&pki, &pki.server_cert());
    let server = watched(&f).watch().unwrap();
    let mut events = server.subscribe();
    let mut running = serve(&server).await;
    let client = pki.client(&billing_web()).build().unwrap();
    running.assert_admitted(&client).await;

    let next = pki.server_cert();
    replace(&f.cert, next.chain_pem());
    replace(&f.key, next.key_pem());
    let (_, _, policy_changed) = expect_reloaded(&mut events).await;
    assert!(!policy_changed);

    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (stream, _) = client.connector().connect("localhost", tcp).await.unwrap();
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(meshtls::rustls::HandshakeKind::Resumed)
    );
    assert!(common::exchange(stream).await.unwrap().starts_with("hello"));
    running.expect_admitted().await;
}

#[tokio::test]
async fn unchanged_content_makes_no_generation() {
    let pki = Pki::new();
    let cert = pki.server_cert();
    let f = files(&pki, &cert);
    let server = watched(&f).build().unwrap();
    replace(&f.cert, cert.chain_pem()); // same bytes, new inode
    assert_eq!(
        server.reload().unwrap(),
        ReloadOutcome::Unchanged { generation: 1 }
    );
    let next = pki.server_cert();
    replace(&f.cert, next.chain_pem());
    replace(&f.key, next.key_pem());
    assert_eq!(
        server.reload().unwrap(),
        ReloadOutcome::Swapped {
            generation: 2,
            policy_changed: false
        }
    );
    replace(&f.key, "garbage");
    let err = server.reload().unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
    assert_eq!(server.generation(), 2);
}

#[tokio::test]
async fn deleted_files_keep_serving_and_recover() {
    let pki = Pki::new();
    let good = pki.server_cert();
    let f = files(&pki, &good);
    let server = watched(&f)
        .poll_interval(Some(Duration::from_millis(200)))
        .watch()
        .unwrap();
    let mut events = server.subscribe();
    let running = serve(&server).await;
    let client = fresh_client(&pki);

    // The whole directory goes away, as an unmounted volume would.
    std::fs::remove_dir_all(pki.path("live")).unwrap();
    let error = expect_failed(&mut events).await;
    assert!(error.contains("cannot read"), "{error}");
    assert_eq!(served_serial(&client, running.addr).await, good.serial());

    // It comes back (a new directory: the old watch is gone; the poll re-arms).
    let next = pki.server_cert();
    pki.write("live/ca.crt", pki.ca.cert_pem());
    pki.write("live/tls.key", next.key_pem());
    pki.write("live/tls.crt", next.chain_pem());
    // Refusals while the files land one by one are fine; then it heals.
    loop {
        match next_reload(&mut events).await {
            Event::Reloaded { leaf, .. } => {
                assert_eq!(leaf.serial, next.serial());
                break;
            }
            Event::ReloadFailed { .. } => continue,
            other => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(served_serial(&client, running.addr).await, next.serial());
}

#[tokio::test]
async fn waits_for_files_written_after_start() {
    let pki = Pki::new();
    let cert = pki.server_cert();
    let dir = pki.path("late");
    let (c, k, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    let writer = {
        let (dir, chain, key, ca_pem) = (
            dir.clone(),
            cert.chain_pem().to_owned(),
            cert.key_pem().to_owned(),
            pki.ca.cert_pem().to_owned(),
        );
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
            std::fs::write(dir.join("tls.key"), key).unwrap();
            std::fs::write(dir.join("tls.crt"), chain).unwrap();
        })
    };
    let builder = || {
        ServerTls::builder()
            .identity_files(&c, &k)
            .client_roots_file(&ca)
            .any_authenticated()
    };
    // Without waiting: fail fast, naming the file.
    let err = builder().watch().unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");

    let server = builder()
        .wait_for_files(Duration::from_secs(10))
        .watch()
        .unwrap();
    writer.join().unwrap();
    assert_eq!(server.certificate().serial, cert.serial());

    // And a deadline that passes says what was missing.
    let err = ServerTls::builder()
        .identity_files(dir.join("never.crt"), &k)
        .client_roots_file(&ca)
        .any_authenticated()
        .wait_for_files(Duration::from_millis(300))
        .watch()
        .unwrap_err();
    assert!(matches!(err, meshtls::Error::NotReady { .. }), "{err}");
    assert!(err.to_string().contains("never.crt"), "{err}");
}

#[tokio::test]
async fn client_certificate_rotates_too() {
    let pki = Pki::new();
    let server = pki.server_allow(td_pattern("**")).build().unwrap();
    let mut running = serve(&server).await;
    let first = pki.client_cert(&billing_web());
    let c = pki.write("client/tls.crt", first.chain_pem());
    let k = pki.write("client/tls.key", first.key_pem());
    let client = pki.rotating_client(&c, &k, Duration::from_millis(50));
    let mut events = client.subscribe();
    assert!(running.call(&client).await.reply().starts_with("hello"));
    assert_eq!(running.expect_admitted().await.serial(), first.serial());

    let next = pki.client_cert(&billing_web());
    replace(&c, next.chain_pem());
    replace(&k, next.key_pem());
    expect_reloaded(&mut events).await;
    assert!(running.call(&client).await.reply().starts_with("hello"));
    assert_eq!(running.expect_admitted().await.serial(), next.serial());
}

/// 200 rotations under continuous handshakes from several tasks: no
/// handshake fails, and each sees one complete generation (a certificate with
/// the key that signs for it, or the handshake could not complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_handshake() {
    const ROTATIONS: usize = 200;
    const TASKS: usize = 4;
    let pki = Pki::new();
    let first = pki.server_cert();
    let f = files(&pki, &first);
    let (server, running) = start(watched(&f)).await;

    let done = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let issued = Arc::new(std::sync::Mutex::new(vec![first.serial().to_owned()]));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let client = fresh_client(&pki);
        let (done, handshakes, issued) = (done.clone(), handshakes.clone(), issued.clone());
        let addr = running.addr;
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let serial = served_serial(&client, addr).await;
                assert!(
                    issued.lock().unwrap().contains(&serial),
                    "served a serial never issued: {serial}"
                );
                handshakes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut results = running.results;
    let drain = tokio::spawn(async move {
        let mut failures = Vec::new();
        while let Some(r) = results.recv().await {
            if let Err(e) = r {
                failures.push(e.to_string());
            }
        }
        failures
    });

    for _ in 0..ROTATIONS {
        let next = pki.server_cert();
        issued.lock().unwrap().push(next.serial().to_owned());
        replace(&f.cert, next.chain_pem());
        replace(&f.key, next.key_pem());
        let outcome = server.reload().unwrap();
        assert!(
            matches!(outcome, ReloadOutcome::Swapped { .. }),
            "{outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.generation(), 1 + ROTATIONS as u64);
    let total = handshakes.load(Ordering::Relaxed);
    assert!(
        total >= TASKS,
        "too few handshakes to mean anything: {total}"
    );
    let stats = server.stats();
    assert!(
        stats.rejected.is_empty(),
        "refused during rotation: {:?}",
        stats.rejected
    );
    drop(server);
    drain.abort();
    eprintln!("{total} handshakes across {ROTATIONS} rotations, none failed");
}

#[tokio::test]
async fn expiring_and_expired_events() {
    let pki = Pki::new();
    let now = SystemTime::now();
    // 1.5 s of a 4 s life left: under the default third.
    let short = pki.localhost_cert_between(
        now - Duration::from_millis(2500),
        now + Duration::from_millis(1500),
    );
    let f = files(&pki, &short);
    let server = watched(&f)
        .poll_interval(Some(Duration::from_millis(100)))
        .watch()
        .unwrap();
    let mut events = server.subscribe();
    let mut saw_expiring = false;
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("no expiry event")
            .unwrap();
        match event {
            Event::Expiring { leaf, remaining } => {
                assert_eq!(leaf.serial, short.serial());
                assert!(remaining <= Duration::from_millis(1500), "{remaining:?}");
                saw_expiring = true;
            }
            Event::Expired { leaf } => {
                assert_eq!(leaf.serial, short.serial());
                break;
            }
            _ => {}
        }
    }
    assert!(saw_expiring);
}

/// Connects, exchanges a line (which also takes in the server's tickets), and
/// says whether the handshake was a resumption.
async fn resumed(client: &ClientTls, addr: std::net::SocketAddr) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (stream, _) = client.connector().connect("localhost", tcp).await.unwrap();
    let kind = stream.get_ref().1.handshake_kind();
    assert!(common::exchange(stream).await.unwrap().starts_with("hello"));
    kind == Some(meshtls::rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn a_policy_change_ends_old_sessions_and_new_ones_resume_at_once() {
    let pki = Pki::new();
    let a = billing_web();
    let b = svid("billing", "batch");
    let (server, running) = start(
        pki.server_allow(Allow::spiffe_id(&a))
            .allow(Allow::spiffe_id(&b)),
    )
    .await;
    let client = pki.client(&a).build().unwrap();
    assert!(!resumed(&client, running.addr).await);
    assert!(
        resumed(&client, running.addr).await,
        "tickets work before the change"
    );

    server.set_allow_list([Allow::spiffe_id(&a)]).unwrap();
    // The ticket from before the change does not resume; the full handshake
    // that follows is judged by the new list and its ticket works at once
    // (every session is judged again when it is used, so no settling time).
    assert!(!resumed(&client, running.addr).await);
    assert!(
        resumed(&client, running.addr).await,
        "a session made under the new policy resumes"
    );
}

#[tokio::test]
async fn symlinked_file_changed_in_place_is_seen() {
    use std::os::unix::fs::symlink;
    let pki = Pki::new();
    let first = pki.server_cert();
    // The real files live elsewhere; the configured paths are symlinks.
    pki.write("real/tls.crt", first.chain_pem());
    pki.write("real/tls.key", first.key_pem());
    pki.write("conf/ca.crt", pki.ca.cert_pem());
    symlink(pki.path("real/tls.crt"), pki.path("conf/tls.crt")).unwrap();
    symlink(pki.path("real/tls.key"), pki.path("conf/tls.key")).unwrap();
    let server = ServerTls::builder()
        .identity_files(pki.path("conf/tls.crt"), pki.path("conf/tls.key"))
        .client_roots_file(pki.path("conf/ca.crt"))
        .any_authenticated()
        .debounce(Duration::from_millis(50))
        .poll_interval(None)
        .watch()
        .unwrap();
    let mut events = server.subscribe();
    let next = pki.server_cert();
    replace(&pki.path("real/tls.crt"), next.chain_pem());
    replace(&pki.path("real/tls.key"), next.key_pem());
    let (_, serial, _) = expect_reloaded(&mut events).await;
    assert_eq!(serial, next.serial());
}

/// Found by the model test of issue 19: a service whose own certificate
/// comes from the old CA of a same-name key rotation must be able to reload
/// a bundle that keeps only the new CA (its own chain then fails with a bad
/// signature, which says no more than "another CA": the sanity check of the
/// service's own chain tolerates it as it tolerates an unknown issuer).
#[test]
fn a_service_of_the_old_ca_reloads_a_bundle_of_its_same_name_successor() {
    let old = Pki::named("rotating root");
    let new = meshtls::dev::DevCa::new("rotating root").unwrap();
    let roots = old.roots_with(&new);
    let server = old
        .server_with_roots(&roots)
        .any_authenticated()
        .build()
        .unwrap();
    std::fs::write(&roots, new.cert_pem()).unwrap();
    let outcome = server
        .reload()
        .unwrap_or_else(|e| panic!("the new CA's bundle was refused: {e}"));
    common::assert_policy_changed(&outcome);
}
