//! No panic on any input: mutated certificates, keys, PEM files, CRLs, rule
//! strings and SPIFFE IDs go through the public parsing paths. Deterministic
//! (a fixed-seed generator), bounded in count.

mod common;

use common::Pki;
use meshtls::{Allow, PeerIdentity, ServerTls, Source, SpiffeId, TrustDomain};

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
    for i in 0..600 {
        let (mut chain, mut key, mut roots, mut crl_pem) = (
            cert.chain_pem().as_bytes().to_vec(),
            cert.key_pem().as_bytes().to_vec(),
            pki.ca.cert_pem().as_bytes().to_vec(),
            crl.as_bytes().to_vec(),
        );
        match i % 4 {
            0 => chain = rng.mutate(&chain),
            1 => key = rng.mutate(&key),
            2 => roots = rng.mutate(&roots),
            _ => crl_pem = rng.mutate(&crl_pem),
        }
        let built = ServerTls::builder()
            .identity(Source::pem("chain", chain), Source::pem("key", key))
            .client_roots(Source::pem("roots", roots))
            .crl(Source::pem("crl", crl_pem))
            .dangerous()
            .allow_any_authenticated()
            .build();
        if let Err(e) = built {
            assert!(!e.to_string().is_empty());
        }
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
    for _ in 0..20_000 {
        let seed = seeds[rng.below(seeds.len())].as_bytes();
        let bytes = rng.mutate(seed);
        let text = String::from_utf8_lossy(&bytes);
        let _ = text.parse::<Allow>().map(|rule| rule.to_string());
        let _ = text
            .parse::<SpiffeId>()
            .map(|id| (id.trust_domain().len(), id.segments().count()));
        let _ = text.parse::<TrustDomain>();
        let _ = Allow::spiffe_pattern(&text).to_string();
        let _ = Allow::dns(&text).to_string();
    }
}
