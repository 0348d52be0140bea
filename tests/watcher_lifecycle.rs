//! The watcher's lifetime, alone in its own test binary so that no other
//! test's watcher threads are counted.

mod common;

use std::time::Duration;

use common::{Pki, ServerBuilderExt, current_thread, replace};
use meshtls::ServerTls;

/// Threads of this process named `meshtls-reload`.
fn watcher_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "meshtls-reload")
        .count()
}

fn wait_for_threads(n: usize) -> bool {
    for _ in 0..100 {
        if watcher_threads() == n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn watcher_lives_as_long_as_the_config_and_works_on_current_thread() {
    let rt = current_thread();
    rt.block_on(async {
        let pki = Pki::new();
        let first = pki.server_cert();
        let (cert, key) = pki.write_cert("server", &first);
        assert_eq!(watcher_threads(), 0);

        let server = ServerTls::builder()
            .identity_files(&cert, &key)
            .client_roots_file(pki.ca_file())
            .any_authenticated()
            .debounce(Duration::from_millis(20))
            .watch()
            .unwrap();
        assert!(wait_for_threads(1), "the watcher thread did not start");

        // Dropping the handle while a framework still holds the config keeps
        // the watcher: the config must not go stale.
        let config = server.config();
        let probe = server.clone();
        drop(server);
        let next = pki.server_cert();
        replace(&cert, next.chain_pem());
        replace(&key, next.key_pem());
        for _ in 0..200 {
            if probe.certificate().serial == next.serial() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(probe.certificate().serial, next.serial());
        drop(probe);
        assert_eq!(watcher_threads(), 1, "the config is still alive");

        // The last holder goes: the thread ends.
        drop(config);
        assert!(
            wait_for_threads(0),
            "the watcher thread outlived its config"
        );
    });
}
