//! Reading material files: PEM blocks in the order they appear (known and
//! unknown labels alike), or one binary DER object.

use std::path::Path;

use meshtls::rustls::pki_types::pem::{PemObject, SectionKind};

use crate::Failure;

/// No certificate, key, bundle, CRL or keystore comes near this; a wrong
/// path (a log, a disk image) is refused before it is read into memory.
const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Reads a material file, bounded in size.
pub(crate) fn read(path: &str) -> Result<Vec<u8>, Failure> {
    let size =
        std::fs::metadata(path).map_err(|e| Failure::Failed(format!("cannot read {path}: {e}")))?;
    if size.is_dir() {
        return Err(Failure::Failed(format!(
            "{path} is a directory, not a file"
        )));
    }
    if size.len() > MAX_FILE_SIZE {
        return Err(Failure::Failed(format!(
            "{path} is {} bytes, far more than any certificate, key or CRL; is it the right file?",
            size.len()
        )));
    }
    std::fs::read(path).map_err(|e| Failure::Failed(format!("cannot read {path}: {e}")))
}

/// Whether `bytes` look like PEM text (a `-----BEGIN` line somewhere).
pub(crate) fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// One PEM block.
#[derive(Debug)]
pub(crate) struct Block {
    /// The label: `CERTIFICATE`, `PRIVATE KEY`, `X509 CRL`, ...
    pub(crate) label: String,
    /// What it holds.
    pub(crate) body: Body,
}

/// What a PEM block holds.
#[derive(Debug)]
pub(crate) enum Body {
    /// A label rustls reads, decoded.
    Der(SectionKind, Vec<u8>),
    /// An encrypted private key (`ENCRYPTED PRIVATE KEY`, or a legacy
    /// `Proc-Type: 4,ENCRYPTED` header), with the cipher when it is named.
    EncryptedKey(Option<String>),
    /// A label meshtls does not read.
    Unknown,
    /// A block that does not decode (bad base64, no END line).
    Malformed(String),
}

/// The PEM blocks of `bytes`, in order.
pub(crate) fn pem_blocks(bytes: &[u8]) -> Vec<Block> {
    let text = String::from_utf8_lossy(bytes);
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let label = label.to_owned();
        let end = format!("-----END {label}-----");
        let mut block = format!("{}\n", line.trim());
        let mut ended = false;
        let mut encrypted: Option<Option<String>> = None;
        for line in lines.by_ref() {
            let line = line.trim();
            if line.starts_with("Proc-Type:") && line.contains("ENCRYPTED") {
                encrypted = Some(None);
            }
            if let Some(cipher) = line.strip_prefix("DEK-Info:") {
                let cipher = cipher.split(',').next().unwrap_or_default().trim();
                encrypted = Some(Some(cipher.to_owned()));
            }
            block.push_str(line);
            block.push('\n');
            if line == end {
                ended = true;
                break;
            }
        }
        let body = if label == "ENCRYPTED PRIVATE KEY" {
            Body::EncryptedKey(None)
        } else if let Some(cipher) = encrypted {
            Body::EncryptedKey(cipher)
        } else if !ended {
            Body::Malformed(format!("no {end} line (truncated?)"))
        } else if SectionKind::try_from(label.as_bytes()).is_err() {
            Body::Unknown
        } else {
            match <(SectionKind, Vec<u8>)>::from_pem_slice(block.as_bytes()) {
                Ok((kind, der)) => Body::Der(kind, der),
                Err(e) => Body::Malformed(format!("{e:?}")),
            }
        };
        blocks.push(Block { label, body });
    }
    blocks
}

/// The certificates of a PEM or DER file, in order.
pub(crate) fn certificates(path: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Failure> {
    if !is_pem(bytes) {
        return Ok(vec![bytes.to_vec()]);
    }
    let certs: Vec<Vec<u8>> = pem_blocks(bytes)
        .into_iter()
        .filter_map(|b| match b.body {
            Body::Der(SectionKind::Certificate, der) => Some(der),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Failure::Failed(format!(
            "{path} holds no certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

/// Who may read a file `mint` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readers {
    /// A private key: its owner only (0600), from the moment it exists.
    Owner,
    /// A certificate or a CRL: anyone (0644, less what the umask takes).
    Anyone,
}

/// Whether `write_new` may replace a file that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Never: the write fails, and the file is left as it was.
    Keep,
    /// Yes, all at once (`--force`).
    Replace,
}

/// Writes `contents` to `path` all at once: into a new file beside it,
/// created with the mode `readers` calls for (never wider, not even for a
/// moment), then renamed into place (or linked, when an existing file must
/// be kept, so two writers cannot both win). A file that exists is never
/// written into: with `Existing::Replace` it is replaced by the new one.
pub(crate) fn write_new(
    path: &Path,
    contents: &[u8],
    readers: Readers,
    existing: Existing,
) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.meshtls-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(match readers {
        Readers::Owner => 0o600,
        Readers::Anyone => 0o644,
    });
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let placed = written.and_then(|()| match existing {
        Existing::Replace => std::fs::rename(&tmp, path),
        // A link fails if `path` exists: nothing is replaced, ever.
        Existing::Keep => match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                // A file system without hard links: create the file itself,
                // only if it does not exist, with the same mode.
                options.open(path).and_then(|mut file| {
                    file.write_all(contents)?;
                    file.sync_all()
                })
            }
            linked => linked,
        },
    });
    // After a rename there is nothing left to remove.
    let _ = std::fs::remove_file(&tmp);
    placed
}

/// `path` with its extension replaced (`tls.crt` -> `tls.csr`).
pub(crate) fn with_extension(path: &str, ext: &str) -> String {
    Path::new(path).with_extension(ext).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_keeps_or_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("tls.key");
        write_new(&path, b"one", Readers::Owner, Existing::Keep).unwrap_or_else(|e| panic!("{e}"));
        let again = write_new(&path, b"two", Readers::Owner, Existing::Keep);
        assert_eq!(
            again.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"one");
        write_new(&path, b"three", Readers::Owner, Existing::Replace)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"three");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec![std::ffi::OsString::from("tls.key")]);
    }

    #[test]
    fn blocks_in_order_with_unknown_and_encrypted() {
        let pem = "junk\n-----BEGIN TRUSTED CERTIFICATE-----\nAAAA\n-----END TRUSTED CERTIFICATE-----\n\
                   -----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n\
                   -----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n\
                   -----BEGIN CERTIFICATE-----\nAAAA\n";
        let blocks = pem_blocks(pem.as_bytes());
        assert_eq!(blocks.len(), 4);
        assert!(matches!(blocks[0].body, Body::Unknown));
        assert!(matches!(blocks[1].body, Body::EncryptedKey(None)));
        assert!(
            matches!(&blocks[2].body, Body::EncryptedKey(Some(c)) if c == "AES-256-CBC"),
            "{:?}",
            blocks[2]
        );
        assert!(matches!(blocks[3].body, Body::Malformed(_)));
    }
}
