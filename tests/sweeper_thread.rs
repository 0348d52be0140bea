//! The sweeper thread: what a peer's chain can make it do (nothing: it
//! sleeps), and that it ends with its server. Found by the red team of
//! issue 19. These tests read the process's threads (/proc/self/task), so
//! they run one at a time, in a binary of their own.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Pki, echo_incoming, expired_unrelated_ca, shop, watched};
use meshtls::rustls::pki_types::CertificateDer;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// CPU ticks the new sweeper thread(s) spend in one second while a peer
/// that presents `extra` after its leaf stays connected.
async fn sweeper_cpu_with(extra: Option<CertificateDer<'static>>) -> u64 {
    let pki = Pki::new();
    let server = pki.server_td().build().unwrap();
    let (addr, task) = echo_incoming(&server).await;
    let before = threads("meshtls-sweep");
    let cert = pki.client_cert(&shop("a"));
    let line = pki.open_presenting(&cert, extra, addr).await;
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
        let server = watched(pki.server_td(), Duration::from_millis(20));
        let (addr, task) = echo_incoming(&server).await;
        let cert = pki.client_cert(&shop(&format!("c{i}")));
        let line = pki.open_presenting(&cert, None, addr).await;
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
