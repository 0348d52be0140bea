//! The fuzz targets' cases on stable: every seed in `fuzz/corpus/<target>/`
//! and every crash input kept in `fuzz/regressions/<target>/` runs through
//! the same code the libFuzzer targets run (`fuzz/cases.rs`), so a crash
//! found once stays fixed. Also checks the seeds are what they claim.

#[path = "../fuzz/cases.rs"]
mod cases;

use std::path::Path;

fn inputs(dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn replay(target: &str, case: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["fuzz/corpus", "fuzz/regressions"] {
        for (name, data) in inputs(dir, target) {
            let result = std::panic::catch_unwind(|| case(&data));
            assert!(result.is_ok(), "{dir}/{target}/{name} panics");
            n += 1;
        }
    }
    n
}

#[test]
fn material_corpus_and_regressions() {
    assert!(replay("material", cases::material) >= 4);
}

#[test]
fn identifiers_corpus_and_regressions() {
    assert!(replay("identifiers", cases::identifiers) >= 5);
}

#[test]
fn policy_corpus_and_regressions() {
    assert!(replay("policy", cases::policy) >= 3);
}

#[test]
fn judgment_corpus_and_regressions() {
    assert!(replay("judgment", cases::judgment) >= 3);
}

#[test]
fn the_judgment_seed_is_admitted_end_to_end() {
    // The seed chain is the fixture client's: the case's handshake must get
    // as far as the acceptor's check, or the target fuzzes only refusals.
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/judgment/");
    let seed = std::fs::read(format!("{corpus}client")).unwrap();
    assert!(
        cases::judgment_admits(&seed),
        "the fixture client is not admitted"
    );
    // Revoked by the fixture CRL (and signed with another key): refused.
    let revoked = std::fs::read(format!("{corpus}revoked")).unwrap();
    assert!(!cases::judgment_admits(&revoked));
    let split = cases::split(b"a\n--8<--\nb");
    assert_eq!(split, [b"a".as_slice(), b"b".as_slice()]);
}
