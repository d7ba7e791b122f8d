//! A Herald cluster's certificates: one certificate authority (CA) per
//! cluster, and the node and client certificates it issues.
//!
//! Every Herald listener speaks TLS, and what a certificate says decides who
//! its holder is (`CertIdentity`), so this crate owns both sides of that
//! convention: how a certificate is made (`heraldctl cert`, the playground,
//! the test harnesses) and how a node reads it back (the node's TLS layer).
//!
//! - A **node** certificate names its Raft id in a URI subject alternative
//!   name, `herald://node/<id>` (its common name is `node<id>` for people),
//!   lists the hosts clients and peers dial (DNS names and IP addresses) and
//!   may serve and dial (extended key usages serverAuth and clientAuth). The
//!   peer port admits nothing else, so only holders of a node certificate
//!   from the cluster's CA can speak Raft.
//! - A **client** certificate names a user in its common name (like etcd) and
//!   may only dial (clientAuth). On the client port that name is the
//!   caller's principal; its roles come from the replicated auth state.
//!
//! Keys are ECDSA P-256: small, and the cheapest handshake rustls offers.
//! Files are PEM, private keys `0600`, and nothing is ever overwritten: a
//! CA key lost to a careless `create-ca` would orphan every certificate.

#![warn(missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The URI subject alternative name of node `id` is this followed by the id.
pub const NODE_URI_PREFIX: &str = "herald://node/";

/// The CA certificate's file name in a certificates directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's default file name (keep it elsewhere in production).
pub const CA_KEY: &str = "ca.key";

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertIdentity {
    /// A cluster node, by Raft id.
    Node(u64),
    /// A user, by name.
    User(String),
}

/// Why a certificate could not be made, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is already there; certificates and keys are never overwritten.
    #[error(
        "{path} already exists (certificates and keys are never overwritten: remove it first or use another directory)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Bad input, or a certificate that does not follow Herald's convention.
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused to make or parse something.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn invalid(msg: impl Into<String>) -> CertError {
    CertError::Invalid(msg.into())
}

/// Checks a user name as certificates, tokens and the auth state carry it:
/// 1..=64 bytes of ASCII letters, digits and `. _ @ -`, not starting with
/// `-` (it would read as a flag). Returns why it is not one.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "user name must be 1..=64 bytes, got {}",
            name.len()
        ));
    }
    if name.starts_with('-') {
        return Err(format!("user name {name:?} must not start with '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@-".contains(*c)))
    {
        return Err(format!(
            "user name {name:?} may only hold ASCII letters, digits and . _ @ - (found {c:?})"
        ));
    }
    Ok(())
}

/// Reads who a DER certificate names (see the crate docs). The chain is
/// not checked here: the TLS layer has already verified it against the
/// cluster's CA.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(format!("unreadable certificate: {e}")))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && let Some(id) = uri.strip_prefix(NODE_URI_PREFIX)
            {
                return match id.parse::<u64>() {
                    Ok(id) if id > 0 => Ok(CertIdentity::Node(id)),
                    _ => Err(invalid(format!(
                        "certificate names node {id:?}, which is not a node id"
                    ))),
                };
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| invalid("certificate has no common name (CN) naming its user"))?;
    let cn = cn
        .as_str()
        .map_err(|e| invalid(format!("certificate common name is not text: {e}")))?;
    check_user_name(cn).map_err(|e| invalid(format!("certificate common name: {e}")))?;
    Ok(CertIdentity::User(cn.to_string()))
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not before this time.
    pub not_before: SystemTime,
    /// Not after this time.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (some slack for clocks a little behind) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CertError> {
        if self.not_after <= self.not_before {
            return Err(invalid("validity: not_after must be after not_before"));
        }
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        Ok(())
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Issued {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (0600), refusing to
    /// overwrite either; returns their paths.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        for path in [&cert, &key] {
            if path.exists() {
                return Err(CertError::Exists { path: path.clone() });
            }
        }
        write_new(&key, &self.key_pem, true)?;
        write_new(&cert, &self.cert_pem, false)?;
        Ok((cert, key))
    }
}

/// The file stem of node `id`'s certificate and key: `node<id>`.
pub fn node_stem(id: u64) -> String {
    format!("node{id}")
}

/// The file stem of user `name`'s client certificate and key: `client.<name>`.
pub fn client_stem(name: &str) -> String {
    format!("client.{name}")
}

/// Creates `path` with `contents`, failing if it exists; private files are
/// made `0600` before anything is written to them.
pub fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.to_owned(),
            }
        } else {
            io(source)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A certificate authority that can issue node and client certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named `name`, valid as `validity` says.
    pub fn create(name: &str, validity: Validity) -> Result<Ca, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Herald");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// Reads `<certs_dir>/ca.crt` and the CA key at `key`.
    pub fn load(certs_dir: &Path, key: &Path) -> Result<Ca, CertError> {
        let cert = read(&certs_dir.join(CA_CERT))?;
        let key_pem = read(key)?;
        Ca::from_pem(&cert, &key_pem)
    }

    /// Writes `<certs_dir>/ca.crt` and the key at `key` (0600), refusing to
    /// overwrite either.
    pub fn save(&self, certs_dir: &Path, key: &Path) -> Result<(), CertError> {
        let cert = certs_dir.join(CA_CERT);
        for path in [&cert, key] {
            if path.exists() {
                return Err(CertError::Exists {
                    path: path.to_path_buf(),
                });
            }
        }
        write_new(key, &self.key_pem(), true)?;
        write_new(&cert, &self.cert_pem, false)
    }

    /// The CA certificate (what every node and client trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for node `id`, valid for `hosts` (DNS names or IP
    /// addresses that clients and peers dial).
    pub fn issue_node(
        &self,
        id: u64,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, CertError> {
        if id == 0 {
            return Err(invalid("node id must be >= 1"));
        }
        if hosts.is_empty() {
            return Err(invalid(
                "a node certificate needs at least one host (DNS name or IP address)",
            ));
        }
        let mut sans = vec![SanType::URI(
            format!("{NODE_URI_PREFIX}{id}")
                .try_into()
                .map_err(|e| invalid(format!("node URI: {e}")))?,
        )];
        for host in hosts {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.as_str()
                        .try_into()
                        .map_err(|e| invalid(format!("host {host:?}: {e}")))?,
                ),
            });
        }
        self.issue(
            &node_stem(id),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity,
        )
    }

    /// A client certificate for user `name`.
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<Issued, CertError> {
        check_user_name(name).map_err(invalid)?;
        self.issue(
            name,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files of a local cluster's certificates in one directory, as
/// [`local_cluster`] makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCerts {
    /// The directory.
    pub dir: PathBuf,
}

impl LocalCerts {
    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }
    /// Node `id`'s certificate and key.
    pub fn node(&self, id: u64) -> (PathBuf, PathBuf) {
        let stem = node_stem(id);
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }
    /// User `name`'s client certificate and key.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let stem = client_stem(name);
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }
}

/// Makes everything a local cluster on loopback needs in `dir` (created if
/// absent): a CA (its key beside it: a playground, not production), a
/// certificate per node for `localhost`, `127.0.0.1` and `::1`, and a client
/// certificate per user.
pub fn local_cluster(
    dir: &Path,
    node_ids: &[u64],
    users: &[&str],
    validity: Validity,
) -> Result<LocalCerts, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca = Ca::create("Herald local CA", validity)?;
    ca.save(dir, &dir.join(CA_KEY))?;
    let hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    for &id in node_ids {
        ca.issue_node(id, &hosts, validity)?
            .save(dir, &node_stem(id))?;
    }
    for user in users {
        ca.issue_client(user, validity)?
            .save(dir, &client_stem(user))?;
    }
    Ok(LocalCerts {
        dir: dir.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        p.contents
    }

    #[test]
    fn node_and_client_certificates_name_their_holders() {
        let ca = Ca::create("test CA", Validity::days(1)).expect("ca");
        let node = ca
            .issue_node(
                7,
                &["127.0.0.1".into(), "node7.example".into()],
                Validity::days(1),
            )
            .expect("node");
        assert_eq!(
            identity_of(&der(&node.cert_pem)).unwrap(),
            CertIdentity::Node(7)
        );
        let client = ca.issue_client("alice", Validity::days(1)).expect("client");
        assert_eq!(
            identity_of(&der(&client.cert_pem)).unwrap(),
            CertIdentity::User("alice".into())
        );
        // A CA certificate names no user Herald accepts ("test CA" has a space).
        assert!(identity_of(&der(ca.cert_pem())).is_err());
    }

    #[test]
    fn user_names_are_checked() {
        for good in ["root", "alice.smith", "svc-1", "a@b", "x_y"] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a:b", "é", &"x".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        let ca = Ca::create("test CA", Validity::days(1)).expect("ca");
        assert!(ca.issue_client("a b", Validity::days(1)).is_err());
        assert!(
            ca.issue_node(0, &["localhost".into()], Validity::days(1))
                .is_err()
        );
        assert!(ca.issue_node(1, &[], Validity::days(1)).is_err());
    }

    #[test]
    fn a_ca_reloaded_from_pem_issues_certificates_its_original_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create("test CA", Validity::days(1)).expect("ca");
        ca.save(dir.path(), &dir.path().join(CA_KEY)).expect("save");
        let again = Ca::load(dir.path(), &dir.path().join(CA_KEY)).expect("load");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let issued = again.issue_client("bob", Validity::days(1)).expect("issue");
        let ca_der = der(ca.cert_pem());
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let child_der = der(&issued.cert_pem);
        let (_, child) = x509_parser::parse_x509_certificate(&child_der).unwrap();
        assert_eq!(child.issuer(), ca_x509.subject());
        child
            .verify_signature(Some(ca_x509.public_key()))
            .expect("signed by the original CA key");
    }

    #[test]
    fn nothing_is_overwritten_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs =
            local_cluster(dir.path(), &[1, 2], &["root"], Validity::days(1)).expect("certs");
        assert!(certs.ca().is_file());
        assert!(certs.node(2).0.is_file());
        assert!(certs.client("root").1.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(certs.client("root").1)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        match local_cluster(dir.path(), &[1], &[], Validity::days(1)) {
            Err(CertError::Exists { path }) => assert!(path.ends_with(CA_CERT)),
            other => panic!("expected Exists, got {other:?}"),
        }
    }

    #[test]
    fn an_expired_validity_is_made_as_asked() {
        let ca = Ca::create("test CA", Validity::days(1)).expect("ca");
        let past = Validity {
            not_before: SystemTime::now() - Duration::from_secs(7200),
            not_after: SystemTime::now() - Duration::from_secs(3600),
        };
        let old = ca.issue_client("old", past).expect("issue");
        let child_der = der(&old.cert_pem);
        let (_, child) = x509_parser::parse_x509_certificate(&child_der).unwrap();
        assert!(!child.validity().is_valid());
        let backwards = Validity {
            not_before: past.not_after,
            not_after: past.not_before,
        };
        assert!(ca.issue_client("x", backwards).is_err());
    }
}
