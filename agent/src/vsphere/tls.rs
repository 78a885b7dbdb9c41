//! TLS for the vSphere clients: rustls on the ring provider, verified against the system
//! roots (plus an optional CA file) by default, or pinned to the server certificate's
//! thumbprint as vSphere displays it (SHA-1 `AA:BB:…`, SHA-256 accepted too).
//!
//! Pinning accepts the leaf certificate iff its digest matches — chain, name and validity
//! are not checked, exactly like `govc`'s `--thumbprint` — but the handshake signature is
//! still verified with the pinned certificate's key, so a pin cannot be replayed by a peer
//! without the private key.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha1::Digest as _;

/// How the server certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TlsVerification {
    /// The system's root certificates.
    #[default]
    SystemRoots,
    /// System roots plus a CA file (PEM).
    WithCaFile(PathBuf),
    /// Accept exactly the certificate with this thumbprint.
    Thumbprint(Thumbprint),
}

/// A certificate digest: SHA-1 (20 bytes, what vCenter shows) or SHA-256 (32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbprint(Vec<u8>);

impl std::fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

impl std::fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&hex.join(":"))
    }
}

impl std::str::FromStr for Thumbprint {
    type Err = TlsError;

    /// Parses `AA:BB:…` (or without colons, any case); 20 or 32 bytes.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let compact: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&compact).map_err(|_| TlsError::BadThumbprint(s.to_owned()))?;
        if bytes.len() == 20 || bytes.len() == 32 {
            Ok(Self(bytes))
        } else {
            Err(TlsError::BadThumbprint(s.to_owned()))
        }
    }
}

impl Thumbprint {
    /// `pin` as VDDK's `ConnectParams.thumbPrint` wants it: the SHA-1 thumbprint (VDDK
    /// computes no other) as upper-case hex pairs joined by colons, however it was written.
    ///
    /// # Errors
    /// A message when `pin` is no thumbprint, or a SHA-256 one.
    pub fn for_vddk(pin: &str) -> Result<String, String> {
        let tp: Self = pin
            .parse()
            .map_err(|_| format!("thumbprint {pin:?}: expected 20 hex bytes (AA:BB:…)"))?;
        if tp.0.len() != 20 {
            return Err(format!(
                "thumbprint {pin:?} is a SHA-256 digest; VDDK checks vCenter's certificate by its SHA-1 thumbprint: give that one"
            ));
        }
        Ok(tp.to_string())
    }

    /// The SHA-1 thumbprint of a DER certificate.
    #[must_use]
    pub fn sha1_of(der: &[u8]) -> Self {
        Self(sha1::Sha1::digest(der).to_vec())
    }

    /// The SHA-256 thumbprint of a DER certificate.
    #[must_use]
    pub fn sha256_of(der: &[u8]) -> Self {
        Self(sha2::Sha256::digest(der).to_vec())
    }

    /// The thumbprint of `der` of this one's kind (SHA-1 for a SHA-1 pin).
    fn of_same_kind(&self, der: &[u8]) -> Self {
        match self.0.len() {
            20 => Self::sha1_of(der),
            _ => Self::sha256_of(der),
        }
    }
}

/// Builds the rustls client configuration for `verification` (ALPN http/1.1).
///
/// # Errors
///
/// [`TlsError`] when the CA file cannot be read or no root certificate is usable.
pub fn client_config(verification: &TlsVerification) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match verification {
        TlsVerification::Thumbprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: pin.clone(),
                provider,
            }))
            .with_no_client_auth(),
        TlsVerification::SystemRoots | TlsVerification::WithCaFile(_) => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // Unparseable system certificates are skipped, as every rustls user does.
                let _ = roots.add(cert);
            }
            if let TlsVerification::WithCaFile(path) = verification {
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| TlsError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| TlsError::CaFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    roots.add(cert).map_err(|e| TlsError::CaFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            if roots.is_empty() {
                return Err(TlsError::Config("no trusted root certificates".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: Thumbprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server's digest of the pin's kind, so that the two can be compared.
        let theirs = self.pin.of_same_kind(end_entity.as_ref());
        if theirs == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate thumbprint {theirs} does not match the pinned {}",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The thumbprint is not 20 or 32 hex bytes.
    #[error("invalid certificate thumbprint {0:?} (expected SHA-1 or SHA-256 hex, e.g. AA:BB:…)")]
    BadThumbprint(String),
    /// The CA file could not be read or parsed.
    #[error("ca file {path}: {reason}")]
    CaFile {
        /// The file given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vddk_gets_the_sha1_thumbprint_in_its_one_spelling() {
        let upper = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD";
        for pin in [upper, &upper.to_lowercase(), &upper.replace(':', "")] {
            assert_eq!(Thumbprint::for_vddk(pin).unwrap(), upper, "{pin}");
        }
        let sha256 = Thumbprint::sha256_of(b"cert").to_string();
        assert!(Thumbprint::for_vddk(&sha256).unwrap_err().contains("SHA-1"));
        assert!(Thumbprint::for_vddk("AA:BB").is_err());
    }

    #[test]
    fn thumbprint_parse_and_display() {
        let s = "9A:0B:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12";
        let t: Thumbprint = s.parse().unwrap();
        assert_eq!(t.to_string(), s);
        let lower: Thumbprint = s.to_lowercase().replace(':', "").parse().unwrap();
        assert_eq!(lower, t);
        assert!("AA:BB".parse::<Thumbprint>().is_err());
        assert!("zz".repeat(20).parse::<Thumbprint>().is_err());
        let sha256 = Thumbprint::sha256_of(b"x");
        assert_eq!(sha256.to_string().parse::<Thumbprint>().unwrap(), sha256);
    }

    #[test]
    fn pin_matches_sha1_and_sha256() {
        let der = b"not really a certificate";
        let matches = |pin: Thumbprint, der: &[u8]| pin.of_same_kind(der) == pin;
        assert!(matches(Thumbprint::sha1_of(der), der));
        assert!(matches(Thumbprint::sha256_of(der), der));
        assert!(!matches(Thumbprint::sha1_of(der), b"other"));
    }

    #[test]
    fn configs_build() {
        let pin = TlsVerification::Thumbprint(Thumbprint::sha1_of(b"c"));
        assert!(client_config(&pin).is_ok());
        let missing = TlsVerification::WithCaFile("/nonexistent/ca.pem".into());
        assert!(matches!(
            client_config(&missing),
            Err(TlsError::CaFile { .. })
        ));
    }
}
