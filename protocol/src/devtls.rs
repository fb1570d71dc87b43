//! Throw-away TLS files for a demo or a test (feature `dev-tls`): a CA, a
//! nats-server certificate for `127.0.0.1` and `localhost`, and one client
//! certificate signed by it, as PEM files. `baton dev` and the test fixture
//! use them; a production deployment brings its own PKI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::ProtocolError;
use crate::natsconf::TlsFiles;

/// What [`make`] wrote.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// The server's certificate and key, and the CA that signed every certificate.
    pub server: TlsFiles,
    /// A client certificate signed by the CA, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn err(what: &str, e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Connect(format!("making the dev TLS files: {what}: {e}"))
}

/// Write a CA, a server certificate (SANs `127.0.0.1`, `localhost` and
/// `extra_names`) and a client certificate into `dir` (keys 0600).
pub fn make(dir: &Path, extra_names: &[&str]) -> Result<DevTls, ProtocolError> {
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Baton dev CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| err("CA", e))?;
    let issuer = Issuer::new(ca, ca_key);
    let write = |name: &str, pem: String, private: bool| -> Result<PathBuf, ProtocolError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(|e| err(name, e))?;
        file.write_all(pem.as_bytes()).map_err(|e| err(name, e))?;
        Ok(path)
    };
    let leaf = |names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(|e| err(cn, e))?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(|e| err(cn, e))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).map_err(|e| err(cn, e))?;
        Ok::<_, ProtocolError>((cert.pem(), key.serialize_pem()))
    };
    let mut names = vec!["127.0.0.1", "localhost"];
    names.extend_from_slice(extra_names);
    let (server_cert, server_key) = leaf(
        &names,
        "baton dev nats-server",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) =
        leaf(&[], "baton dev client", ExtendedKeyUsagePurpose::ClientAuth)?;
    Ok(DevTls {
        server: TlsFiles {
            ca: write("ca.pem", ca_cert.pem(), false)?,
            cert: write("server.pem", server_cert, false)?,
            key: write("server-key.pem", server_key, true)?,
        },
        client_cert: write("client.pem", client_cert, false)?,
        client_key: write("client-key.pem", client_key, true)?,
    })
}
