//! No panic on any input: mutated certificates, keys, PEM files, CRLs, rule
//! strings and SPIFFE IDs go through the public parsing paths. Deterministic
//! (a fixed-seed generator), bounded in count.

mod common;

use common::{Pki, ServerBuilderExt};
use meshtls::{Allow, PeerIdentity, Policy, ServerTls, Source, SpiffeId, TrustDomain};

/// xorshift64*: small, deterministic, good enough to mutate inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A copy of `input` with a few bytes flipped, dropped, duplicated or cut.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            if out.is_empty() {
                break;
            }
            let at = self.below(out.len());
            match self.below(5) {
                0 => out[at] ^= 1 << self.below(8),
                1 => out[at] = self.next() as u8,
                2 => {
                    out.remove(at);
                }
                3 => out.insert(at, self.next() as u8),
                _ => out.truncate(at),
            }
        }
        out
    }
}

#[test]
fn mutated_leaf_certificates_never_panic() {
    let pki = Pki::new();
    let leaf = pki
        .ca
        .leaf()
        .spiffe("spiffe://td/a/b")
        .dns("a.example")
        .cn("a")
        .client()
        .issue()
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut parsed = 0;
    for _ in 0..20_000 {
        let der = rng.mutate(leaf.der());
        if let Ok(peer) = PeerIdentity::from_leaf_der(&der) {
            parsed += 1;
            let _ = (
                peer.subject(),
                peer.display_name(),
                peer.not_after_rfc3339(),
            );
        }
    }
    // Some mutations (in the signature, say) still parse; most do not.
    assert!(parsed > 0 && parsed < 20_000, "{parsed}");
}

#[test]
fn mutated_pem_material_never_panics_and_always_explains() {
    let pki = Pki::new();
    let cert = pki.server_cert();
    let crl = pki
        .ca
        .crl(&[&cert], std::time::Duration::from_secs(3600))
        .unwrap();
    let mut rng = Rng(42);
    // Per source mutated: how many builds it made fail.
    let names = ["chain", "key", "roots", "crl"];
    let mut refused = [0usize; 4];
    for i in 0..600 {
        let (mut chain, mut key, mut roots, mut crl_pem) = (
            cert.chain_pem().as_bytes().to_vec(),
            cert.key_pem().as_bytes().to_vec(),
            pki.ca.cert_pem().as_bytes().to_vec(),
            crl.as_bytes().to_vec(),
        );
        let mutated = i % 4;
        match mutated {
            0 => chain = rng.mutate(&chain),
            1 => key = rng.mutate(&key),
            2 => roots = rng.mutate(&roots),
            _ => crl_pem = rng.mutate(&crl_pem),
        }
        let built = ServerTls::builder()
            .identity(Source::pem("chain", chain), Source::pem("key", key))
            .client_roots(Source::pem("roots", roots))
            .crl(Source::pem("crl", crl_pem))
            .any_authenticated()
            .build();
        if let Err(e) = built {
            refused[mutated] += 1;
            // The error names the source that was mutated, as the builder
            // names in-memory sources.
            let named = format!("in-memory {}", names[mutated]);
            let said = e.to_string();
            assert!(
                said.contains(&named),
                "mutation {i} of {} was refused without naming it ({named:?}): {said}",
                names[mutated]
            );
        }
    }
    // Each kind of material was broken by some mutations (most of them:
    // a mutation in a comment or past the END line changes nothing).
    for (name, n) in names.iter().zip(refused) {
        assert!(n > 0 && n <= 150, "{name}: {n} of 150 refused");
    }
}

#[test]
fn arbitrary_strings_never_panic() {
    let seeds = [
        "spiffe://td/ns/prod/**",
        "spiffe://td/ns/*/sa/api",
        "dns:*.svc.cluster.local",
        "cn:legacy",
        "spiffe://prod.example/ns/a",
        "dns:é.example",
    ];
    let mut rng = Rng(7);
    let (mut rules, mut ids, mut domains, mut built) = (0, 0, 0, 0);
    for _ in 0..20_000 {
        let seed = seeds[rng.below(seeds.len())].as_bytes();
        let bytes = rng.mutate(seed);
        let text = String::from_utf8_lossy(&bytes);

        // A rule that parses displays as a rule that parses to the same
        // display, and compiles (CN rules with legacy CN on).
        if let Ok(rule) = text.parse::<Allow>() {
            rules += 1;
            let shown = rule.to_string();
            let again = shown.parse::<Allow>().unwrap_or_else(|e| {
                panic!("{text:?} displays as {shown:?}, which does not parse: {e}")
            });
            assert_eq!(again.to_string(), shown, "{text:?}");
            if let Err(e) = Policy::with_legacy_cn([rule]) {
                panic!("{text:?} parsed as {shown:?} but does not compile: {e}");
            }
        }

        // An ID that parses is exactly its text, and round-trips.
        if let Ok(id) = text.parse::<SpiffeId>() {
            ids += 1;
            assert_eq!(id.to_string(), text, "{text:?}");
            assert_eq!(id.as_str().parse::<SpiffeId>().ok(), Some(id.clone()));
            assert_eq!(
                format!("spiffe://{}{}", id.trust_domain(), id.path()),
                id.as_str()
            );
            assert_eq!(
                id.segments().count(),
                id.path().matches('/').count(),
                "{text:?}"
            );
        }
        if let Ok(td) = text.parse::<TrustDomain>() {
            domains += 1;
            assert_eq!(td.to_string().parse::<TrustDomain>().ok(), Some(td));
        }

        // The constructors never panic: a malformed rule shows as invalid
        // and is refused when compiled; a valid one round-trips.
        for rule in [Allow::spiffe_pattern(&text), Allow::dns(&text)] {
            let shown = rule.to_string();
            match Policy::new([rule]) {
                Ok(_) => {
                    built += 1;
                    let again = shown.parse::<Allow>().unwrap_or_else(|e| {
                        panic!("{text:?} made the rule {shown:?}, which does not parse: {e}")
                    });
                    assert_eq!(again.to_string(), shown, "{text:?}");
                }
                Err(_) => assert!(
                    shown.starts_with("<invalid rule"),
                    "{text:?} made {shown:?}, refused when compiled but not shown as invalid"
                ),
            }
        }
    }
    // Mutations both keep and break each kind of input.
    for (what, n) in [("rules", rules), ("IDs", ids), ("trust domains", domains)] {
        assert!(n > 0 && n < 20_000, "{what}: {n} of 20,000 parsed");
    }
    assert!(
        built > 0 && built < 40_000,
        "{built} constructed rules compiled"
    );
}
