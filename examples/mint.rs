//! Mint development certificates (a CA, leaves, CRLs) with `meshtls::dev`.
//! Development only: keys are written unencrypted.
//!
//! ```sh
//! cargo run --example mint -- ca --out tls/ca
//! cargo run --example mint -- leaf --ca tls/ca --out tls/server --dns localhost --spiffe spiffe://demo.local/ns/shop/sa/api --server
//! cargo run --example mint -- leaf --ca tls/ca --out tls/web --spiffe spiffe://demo.local/ns/shop/sa/web --client
//! cargo run --example mint -- crl --ca tls/ca --revoke tls/web/tls.crt --out tls/ca/ca.crl
//! ```

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use meshtls::PeerIdentity;
use meshtls::dev::DevCa;
use meshtls::rustls::pki_types::CertificateDer;
use meshtls::rustls::pki_types::pem::PemObject;

const USAGE: &str = "usage:
  mint ca   --out DIR [--name NAME]
            writes DIR/ca.crt and DIR/ca.key
  mint leaf --ca DIR --out DIR2 [--spiffe ID] [--dns NAME]... [--cn NAME] [--server] [--client] [--hours N]
            writes DIR2/tls.crt (chain) and DIR2/tls.key; without --server/--client, both usages
  mint crl  --ca DIR --revoke CERTFILE... --out FILE [--hours N]
            writes a CRL signed by the CA revoking those certificates";

fn main() -> ExitCode {
    match run() {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail(USAGE, e),
    }
}

fn load_ca(dir: &str) -> Result<DevCa, String> {
    let dir = PathBuf::from(dir);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
    };
    DevCa::from_pem(&read("ca.crt")?, &read("ca.key")?).map_err(|e| e.to_string())
}

fn hours(args: &cli::Args, default: u64) -> Result<Duration, String> {
    let hours = match args.optional("hours") {
        Some(h) => h
            .parse::<u64>()
            .map_err(|_| format!("--hours {h:?} is not a whole number"))?,
        None => default,
    };
    Ok(Duration::from_secs(hours * 3600))
}

fn run() -> Result<String, String> {
    let args = cli::Args::parse(
        &[
            "dns", "revoke", "cn", "hours", "spiffe", "ca", "out", "name",
        ],
        &["server", "client"],
    )?;
    let command = args.positional.first().map(String::as_str);
    match command {
        Some("ca") => {
            let out = PathBuf::from(args.required("out")?);
            let name = args
                .optional("name")
                .unwrap_or_else(|| "meshtls development CA".into());
            let ca = DevCa::new(&name).map_err(|e| e.to_string())?;
            let (cert, key) = ca.write_to(&out).map_err(|e| e.to_string())?;
            Ok(format!("wrote {} and {}", cert.display(), key.display()))
        }
        Some("leaf") => {
            let ca = load_ca(&args.required("ca")?)?;
            let out = PathBuf::from(args.required("out")?);
            let mut leaf = ca.leaf().valid_for(hours(&args, 24)?);
            if let Some(id) = args.optional("spiffe") {
                leaf = leaf.spiffe(&id);
            }
            for name in args.all("dns") {
                leaf = leaf.dns(&name);
            }
            if let Some(cn) = args.optional("cn") {
                leaf = leaf.cn(&cn);
            }
            let (server, client) = (args.switch("server"), args.switch("client"));
            if server || !client {
                leaf = leaf.server();
            }
            if client || !server {
                leaf = leaf.client();
            }
            let cert = leaf.issue().map_err(|e| e.to_string())?;
            let (c, k) = cert.write_to(&out).map_err(|e| e.to_string())?;
            Ok(format!(
                "wrote {} (serial {}) and {}",
                c.display(),
                cert.serial(),
                k.display()
            ))
        }
        Some("crl") => {
            let ca = load_ca(&args.required("ca")?)?;
            let out = PathBuf::from(args.required("out")?);
            let mut serials = Vec::new();
            for file in args.all("revoke") {
                let der = CertificateDer::from_pem_file(&file)
                    .map_err(|e| format!("cannot read a certificate from {file}: {e}"))?;
                let peer = PeerIdentity::from_leaf_der(&der).map_err(|e| format!("{file}: {e}"))?;
                serials.push(peer.serial().to_owned());
            }
            let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
            let crl = ca
                .crl_for_serials(&refs, hours(&args, 24 * 7)?)
                .map_err(|e| e.to_string())?;
            std::fs::write(&out, crl)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            Ok(format!(
                "wrote {} revoking [{}]",
                out.display(),
                serials.join(", ")
            ))
        }
        _ => Err("say what to mint: ca, leaf or crl".into()),
    }
}
