//! Rotation soak: client tasks handshake continuously while the server's
//! certificate, the client-CA bundle (with overlap), the CRL (revoking and
//! un-revoking a marked client) and the allow-list (removing and restoring
//! it) rotate 200 times, with torn, empty and mismatched writes in between.
//!
//! Counted: handshakes by valid clients that failed (target 0); handshakes by
//! the marked client admitted, full or resumed, while the serving policy
//! refused it (target 0); open descriptors and RSS at start and end; watcher
//! threads after drop (target 0). `MESHTLS_SOAK_ROTATIONS=2000` runs longer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Pki, TD, echo_incoming, ping_over, replace, svid, td_pattern};
use meshtls::dev::{DevCa, DevCert};
use meshtls::{Allow, ClientTls, ServerTls};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn watcher_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| {
        tasks
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "meshtls-reload")
            })
            .count()
    })
}

/// Connects, sends a line, reads the echo: admitted end to end or not.
async fn attempt(client: &ClientTls, addr: std::net::SocketAddr) -> Result<(), String> {
    match ping_over(client, addr).await {
        Ok(line) if !line.is_empty() => Ok(()),
        Ok(_) => Err("closed".into()),
        Err(e) => Err(e),
    }
}

/// The state the controller last made the server serve.
#[derive(Default)]
struct Marked {
    /// Whether the serving policy refuses the marked client now (set before
    /// a refusing change is written, cleared only once an admitting one is
    /// known to serve).
    refused: AtomicBool,
    /// Set while the state is settled: attempts are counted only then.
    settled: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_traffic_lose_nothing_and_admit_no_one_refused() {
    let rotations: usize = std::env::var("MESHTLS_SOAK_ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let pki = Pki::new();
    let second = DevCa::new("second root").unwrap();
    let third = DevCa::new("third root").unwrap();
    let (cert, key) = pki.write_cert("server", &pki.server_cert());
    let roots = pki.write(
        "roots.crt",
        format!("{}{}", pki.ca.cert_pem(), second.cert_pem()),
    );
    let crl = pki.write_crl(&[]);
    let everyone = vec![Allow::spiffe_trust_domain(TD)];
    let without_marked = vec![td_pattern("ns/valid/**"), td_pattern("ns/other/**")];
    let (fds0, rss0) = (fds(), rss_kib());
    let server = ServerTls::builder()
        .identity_files(&cert, &key)
        .client_roots_file(&roots)
        .crl_file(&crl)
        .allow_all_of(everyone.clone())
        .debounce(Duration::from_millis(20))
        .live_connection_grace(Duration::from_millis(100))
        .watch()
        .unwrap();

    let (addr, serving) = echo_incoming(&server).await;

    // Valid clients: from the CA that stays in the bundle, on the list.
    let valid: Vec<ClientTls> = (0..3)
        .map(|i| {
            pki.client(&format!("spiffe://{TD}/ns/valid/sa/c{i}"))
                .build()
                .unwrap()
        })
        .collect();
    // The marked client (revoked and un-revoked, removed and restored), with
    // resumption on: resumed handshakes must be refused too.
    let marked_cert: DevCert = pki.client_cert(&svid("marked", "client"));
    let marked = pki.client_with(&marked_cert).build().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let valid_ok = Arc::new(AtomicU64::new(0));
    let valid_failed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let state = Arc::new(Marked::default());
    let marked_admitted_while_refused = Arc::new(AtomicU64::new(0));
    let marked_counted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in valid {
        let (stop, ok, failed, failures) = (
            stop.clone(),
            valid_ok.clone(),
            valid_failed.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match attempt(&client, addr).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    {
        let (stop, state, bad, counted) = (
            stop.clone(),
            state.clone(),
            marked_admitted_while_refused.clone(),
            marked_counted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let before =
                    state.settled.load(Ordering::SeqCst) && state.refused.load(Ordering::SeqCst);
                let admitted = attempt(&marked, addr).await.is_ok();
                let after =
                    state.settled.load(Ordering::SeqCst) && state.refused.load(Ordering::SeqCst);
                // Counted only when refused for the whole attempt.
                if before && after {
                    counted.fetch_add(1, Ordering::Relaxed);
                    if admitted {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    for step in 0..rotations {
        state.settled.store(false, Ordering::SeqCst);
        // Junk first, as a careless writer leaves it: torn, empty, or a
        // certificate with the wrong key. None of it may serve (the watcher
        // may see it too; this reload makes sure it is tried).
        match step % 4 {
            0 => std::fs::write(&cert, &pki.server_cert().chain_pem()[..200]).unwrap(),
            1 => std::fs::write(&crl, "").unwrap(),
            2 => std::fs::write(&cert, pki.server_cert().chain_pem()).unwrap(),
            _ => std::fs::write(&roots, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap(),
        }
        assert!(server.reload().is_err(), "junk of step {step} was served");
        // Then the real change of this step.
        let refuse = step % 2 == 0;
        if refuse {
            state.refused.store(true, Ordering::SeqCst);
        }
        let fresh = pki.server_cert();
        replace(&key, fresh.key_pem());
        replace(&cert, fresh.chain_pem());
        let revoked: Vec<&DevCert> = if refuse && step % 4 == 0 {
            vec![&marked_cert]
        } else {
            vec![]
        };
        replace(
            &crl,
            pki.ca.crl(&revoked, Duration::from_secs(3600)).unwrap(),
        );
        let other = if step % 3 == 0 { &third } else { &second };
        replace(&roots, format!("{}{}", other.cert_pem(), pki.ca.cert_pem()));
        let rules = if refuse && step % 4 == 2 {
            &without_marked
        } else {
            &everyone
        };
        server.set_allow_list(rules.clone()).unwrap();
        // Serving now: this reload read every file as written (or the
        // watcher got there first and it finds nothing new).
        server.reload().unwrap();
        assert_eq!(server.certificate().serial, fresh.serial());
        if !refuse {
            state.refused.store(false, Ordering::SeqCst);
        }
        state.settled.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stats = server.stats();
    // The accept loop holds an acceptor (and so the server's state): stop
    // it, drop the handle, and the watcher must go with them.
    serving.abort();
    let _ = serving.await;
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds1, rss1) = (fds(), rss_kib());
    let threads = watcher_threads();
    println!(
        "soak: {rotations} rotations in {elapsed:.1?}; valid handshakes {} ok, {} failed; \
         marked client: {} attempts while refused, {} admitted; reloads {} ok, {} refused; \
         descriptors {fds0} -> {fds1}; RSS {rss0} -> {rss1} KiB; watcher threads after drop {threads}",
        valid_ok.load(Ordering::Relaxed),
        valid_failed.load(Ordering::Relaxed),
        marked_counted.load(Ordering::Relaxed),
        marked_admitted_while_refused.load(Ordering::Relaxed),
        stats.reloads_ok,
        stats.reloads_failed,
    );
    assert_eq!(
        valid_failed.load(Ordering::Relaxed),
        0,
        "valid clients failed: {:?}",
        failures.lock().unwrap().iter().take(5).collect::<Vec<_>>()
    );
    assert!(valid_ok.load(Ordering::Relaxed) > rotations as u64);
    assert!(
        marked_counted.load(Ordering::Relaxed) > 0,
        "the marked client was never tried while refused"
    );
    assert_eq!(marked_admitted_while_refused.load(Ordering::Relaxed), 0);
    assert!(
        stats.reloads_failed > 0,
        "no junk was refused: the soak did not test it"
    );
    assert_eq!(threads, 0, "the watcher outlived its server");
    assert!(fds1 <= fds0 + 16, "descriptors grew: {fds0} -> {fds1}");
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew by more than 64 MiB: {rss0} -> {rss1} KiB"
    );
}
