//! The run's certificates (rcgen): a certificate authority, and one certificate per
//! identity ([`Identity`]) naming it in its subject alternative name.
//!
//! `wdml certs` writes a credentials directory with [`write_dir`]: `ca.pem` (everyone
//! needs it), `ca.key` (only to issue more certificates later; keep it off the
//! devices), and `<stem>.pem` / `<stem>.key` for the coordinator, an observer and each
//! node. Keys are written `0600`. Every key pair comes from the operating system's
//! random source (ring's `SystemRandom`), never from the run seed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::TryRngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use crate::Identity;
use wdml_files::{Mode, write_atomic};

/// What can go wrong issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// A certificate authority that can issue identities.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// An issued certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long certificates are valid unless told otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// Clocks of laptops on a LAN disagree: certificates are valid from an hour ago.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The CA's name. Fixed, so that [`Authority::load`] can issue under a CA written
/// earlier without parsing its certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "wdml");
    name.push(DnType::CommonName, "WDML run CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn unix(t: SystemTime) -> Result<time::OffsetDateTime, rcgen::Error> {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| rcgen::Error::Time)
}

fn serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Random(e.to_string()))?;
    bytes[0] &= 0x7f; // a positive INTEGER
    Ok(SerialNumber::from_slice(&bytes))
}

impl Authority {
    /// A new CA with a fresh key, valid for `validity` from now.
    pub fn generate(validity: Duration) -> Result<Self, Error> {
        let now = SystemTime::now();
        let mut params = ca_params();
        params.not_before = unix(now - CLOCK_SKEW)?;
        params.not_after = unix(now + validity)?;
        params.serial_number = Some(serial()?);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA written in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            wdml_files::read_bounded_text(&path, MAX_PEM_BYTES).map_err(|e| Error::File {
                path,
                reason: e.to_string(),
            })
        };
        let cert_pem = read("ca.pem")?;
        let key = KeyPair::from_pem(&read("ca.key")?).map_err(|e| Error::File {
            path: dir.join("ca.key"),
            reason: format!("not a private key: {e}"),
        })?;
        Ok(Authority {
            cert_pem,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `identity`, valid for `validity` from now.
    pub fn issue(&self, identity: Identity, validity: Duration) -> Result<Issued, Error> {
        let now = SystemTime::now();
        self.issue_between(identity, now - CLOCK_SKEW, now + validity)
    }

    /// A certificate for `identity` valid from `not_before` to `not_after` (tests use
    /// it for certificates that have expired).
    pub fn issue_between(
        &self,
        identity: Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "wdml");
        name.push(DnType::CommonName, identity.dns_name());
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::DnsName(identity.dns_name().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            Identity::Observer => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = unix(not_before)?;
        params.not_after = unix(not_after)?;
        params.serial_number = Some(serial()?);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The largest PEM file read (a certificate or key is a few kilobytes).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Writes `authority` and a certificate for each of `identities` into `dir`: the files
/// that exist already are kept (so more nodes can be added later), the rest written
/// atomically, keys `0600`. `ca.key` only with `keep_ca_key`. Returns what was written.
pub fn write_dir(
    dir: &Path,
    authority: &Authority,
    identities: &[Identity],
    validity: Duration,
    keep_ca_key: bool,
) -> Result<Vec<PathBuf>, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| Error::File {
            path,
            reason: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    let mut put = |name: String, text: &str, mode: Mode| -> Result<(), Error> {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes(), mode).map_err(io(&path))?;
        written.push(path);
        Ok(())
    };
    if !dir.join("ca.pem").exists() {
        put("ca.pem".into(), authority.cert_pem(), Mode::Public)?;
    }
    if keep_ca_key && !dir.join("ca.key").exists() {
        put("ca.key".into(), &authority.key_pem(), Mode::Secret)?;
    }
    for &identity in identities {
        let (cert, key) = (format!("{}.pem", identity.stem()), format!("{}.key", identity.stem()));
        if dir.join(&cert).exists() && dir.join(&key).exists() {
            continue;
        }
        // A pair half written is written again whole: a key and a certificate belong together.
        let issued = authority.issue(identity, validity)?;
        put(key, &issued.key_pem, Mode::Secret)?;
        put(cert, &issued.cert_pem, Mode::Public)?;
    }
    Ok(written)
}

/// Copies, for each of `identities`, `ca.pem` and its own certificate and key from the
/// credentials directory `dir` into `into/<stem>/`: one folder per machine or container
/// that holds what it needs and nothing else (no other identity's key, no `ca.key`).
/// Keys stay `0600`. Returns the folders.
pub fn deploy(dir: &Path, into: &Path, identities: &[Identity]) -> Result<Vec<PathBuf>, Error> {
    let file_error = |path: &Path, e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut folders = Vec::new();
    for &identity in identities {
        let folder = into.join(identity.stem());
        std::fs::create_dir_all(&folder).map_err(|e| file_error(&folder, e))?;
        let files = [
            ("ca.pem".to_string(), Mode::Public),
            (format!("{}.pem", identity.stem()), Mode::Public),
            (format!("{}.key", identity.stem()), Mode::Secret),
        ];
        for (name, mode) in files {
            let from = dir.join(&name);
            let bytes = wdml_files::read_bounded(&from, MAX_PEM_BYTES).map_err(|e| file_error(&from, e))?;
            let to = folder.join(&name);
            write_atomic(&to, &bytes, mode).map_err(|e| file_error(&to, e))?;
        }
        folders.push(folder);
    }
    Ok(folders)
}
