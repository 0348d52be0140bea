//! The per-handshake costs meshtls adds, each on its own, with allocation
//! counts: generation load, allow-list checks with 1, 10 and 1,000 rules, the
//! resumed-session re-check, `PeerIdentity` parsing; and the cost of building
//! and validating a generation (a reload). Compared with a full handshake
//! measured in the same run.
//!
//! ```sh
//! cargo bench --bench micro
//! ```
#![allow(unsafe_code)] // the counting allocator below; benchmark code only

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshtls::{Allow, PeerIdentity, Policy};
use support::{CLIENT_ID, Case, Checks, Material, handshake, median};

/// Counts allocations, to report allocations per operation.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Median time per call over 15 rounds, and allocations per call.
fn measure(iterations: u32, mut f: impl FnMut()) -> (Duration, f64) {
    f();
    let mut times = Vec::new();
    let mut allocs = 0;
    for _ in 0..15 {
        let a = ALLOCATIONS.load(Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        times.push(start.elapsed().as_secs_f64() / f64::from(iterations));
        allocs = ALLOCATIONS.load(Ordering::Relaxed) - a;
    }
    (
        Duration::from_secs_f64(median(times)),
        allocs as f64 / f64::from(iterations),
    )
}

fn row(what: &str, (t, allocs): (Duration, f64), full: Duration) {
    println!(
        "| {what} | {:.3} µs | {:.2}% | {allocs:.1} |",
        t.as_secs_f64() * 1e6,
        100.0 * t.as_secs_f64() / full.as_secs_f64()
    );
}

fn rules(n: usize) -> Policy {
    // The peer's ID is the last rule added; the rest are other workloads.
    let mut rules: Vec<Allow> = (1..n)
        .map(|i| Allow::spiffe_id(&format!("spiffe://bench.example/ns/n{i}/sa/s{i}")))
        .collect();
    rules.push(Allow::spiffe_id(CLIENT_ID));
    Policy::new(rules).unwrap()
}

fn mixed_rules(n: usize) -> Policy {
    // Patterns, DNS names and wildcards too, none matching: the worst case.
    let rules: Vec<Allow> = (0..n)
        .map(|i| match i % 4 {
            0 => Allow::spiffe_id(&format!("spiffe://bench.example/ns/n{i}/sa/s")),
            1 => Allow::spiffe_pattern(&format!("spiffe://bench.example/ns/p{i}/**")),
            2 => Allow::dns(&format!("svc{i}.internal")),
            _ => Allow::dns(&format!("*.zone{i}.internal")),
        })
        .collect();
    Policy::new(rules).unwrap()
}

fn main() {
    let m = Material::new(Case::BASE);
    let server = support::meshtls_server(&m, true);
    let bare_server = support::bare_server(&m, true);
    let bare_client = support::bare_client(&m, true, false);
    let no_checks = Checks {
        server: None,
        client: None,
    };
    let full = {
        let mut server_times = Vec::new();
        for _ in 0..200 {
            server_times.push(
                handshake(&bare_server, &bare_client, &no_checks)
                    .0
                    .server
                    .as_secs_f64(),
            );
        }
        Duration::from_secs_f64(median(server_times))
    };
    let leaf_der = {
        use meshtls::rustls::pki_types::pem::PemObject;
        meshtls::rustls::pki_types::CertificateDer::from_pem_slice(m.client_chain.as_bytes())
            .unwrap()
    };
    let peer = PeerIdentity::from_leaf_der(&leaf_der).unwrap();

    println!(
        "per-handshake costs; % of a full bare-rustls server handshake ({:.1} µs, same run)\n",
        full.as_secs_f64() * 1e6
    );
    println!("| operation | time | % of full handshake | allocations |");
    println!("|---|---|---|---|");
    row(
        "generation load (`ArcSwap::load`)",
        measure(100_000, || {
            black_box(server.generation());
        }),
        full,
    );
    for n in [1, 10, 1000] {
        let p = rules(n);
        row(
            &format!("allow-list check, {n} exact rule(s), admitted"),
            measure(100_000, || {
                black_box(p.check(&peer)).unwrap();
            }),
            full,
        );
    }
    let mixed = mixed_rules(1000);
    row(
        "allow-list check, 1000 mixed rules, refused",
        measure(10_000, || {
            let _ = black_box(mixed.check(&peer));
        }),
        full,
    );
    row(
        "`PeerIdentity` parse (x509-parser)",
        measure(10_000, || {
            black_box(PeerIdentity::from_leaf_der(&leaf_der)).unwrap();
        }),
        full,
    );

    // The resumed-session re-check, as the acceptor runs it.
    let client = support::meshtls_client(&m, true, true);
    let checks = Checks {
        server: None,
        client: None,
    };
    handshake(&server.config(), &client.config(), &checks);
    let acceptor = server.acceptor();
    let mut kept = None;
    let (_, kind) = support::handshake_keep(&server.config(), &client.config(), &mut kept);
    assert_eq!(kind, meshtls::rustls::HandshakeKind::Resumed);
    let Some(conn) = kept else {
        unreachable!("handshake_keep keeps the connection")
    };
    row(
        "resumed-session re-check (`Acceptor::identify`)",
        measure(100_000, || {
            black_box(acceptor.identify(&conn)).unwrap();
        }),
        full,
    );

    // A reload: read, validate and swap a generation.
    let dir = tempfile::tempdir().unwrap();
    let ca = meshtls::dev::DevCa::new("reload bench").unwrap();
    let certs: Vec<_> = (0..2)
        .map(|_| ca.leaf().dns("localhost").server().issue().unwrap())
        .collect();
    let (cert, key) = certs[0].write_to(dir.path()).unwrap();
    let roots = dir.path().join("ca.crt");
    std::fs::write(&roots, ca.cert_pem()).unwrap();
    let reloading = meshtls::ServerTls::builder()
        .identity_files(&cert, &key)
        .client_roots_file(&roots)
        .dangerous()
        .allow_any_authenticated()
        .build()
        .unwrap();
    let mut i = 0;
    let (t, allocs) = measure(50, || {
        i += 1;
        let next = &certs[i % 2];
        std::fs::write(&cert, next.chain_pem()).unwrap();
        std::fs::write(&key, next.key_pem()).unwrap();
        assert!(matches!(
            reloading.reload().unwrap(),
            meshtls::ReloadOutcome::Swapped { .. }
        ));
    });
    println!(
        "\nreload (write 2 files, read 3, validate, swap): {:.1} µs, {allocs:.0} allocations",
        t.as_secs_f64() * 1e6
    );
}
