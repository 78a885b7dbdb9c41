//! The server certificate: generated once (rcgen, self-signed, ECDSA P-256) and kept
//! under `<root>/vcenter/` (`cert.der`, `key.der`, and `cert.pem` for humans); its SHA-1
//! thumbprint goes into `lab.json` so clients (and vddk-sim) can pin it.

use std::path::Path;

use sha1::Digest as _;

use super::server::VcenterError;

/// The certificate and key, DER.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    /// `AA:BB:…`.
    pub thumbprint: String,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> VcenterError + '_ {
    move |source| VcenterError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Loads the identity, generating it on first use for `names` (DNS names or IPs).
pub(crate) fn load_or_create(root: &Path, names: &[String]) -> Result<Identity, VcenterError> {
    let dir = root.join("vcenter");
    std::fs::create_dir_all(&dir).map_err(io("create the vcenter directory"))?;
    let (cert_path, key_path) = (dir.join("cert.der"), dir.join("key.der"));
    let (cert_der, key_der) = if cert_path.exists() && key_path.exists() {
        (
            std::fs::read(&cert_path).map_err(io("read cert.der"))?,
            std::fs::read(&key_path).map_err(io("read key.der"))?,
        )
    } else {
        let generated = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| VcenterError::Certificate(e.to_string()))?;
        let cert = generated.cert.der().to_vec();
        let key = generated.signing_key.serialize_der();
        std::fs::write(dir.join("cert.pem"), generated.cert.pem()).map_err(io("write cert.pem"))?;
        std::fs::write(&key_path, &key).map_err(io("write key.der"))?;
        std::fs::write(&cert_path, &cert).map_err(io("write cert.der"))?;
        (cert, key)
    };
    let thumbprint = sha1::Sha1::digest(&cert_der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Identity {
        cert_der,
        key_der,
        thumbprint,
    })
}
