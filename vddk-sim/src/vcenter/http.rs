//! Blocking HTTP/1.1 for the SOAP calls: one request per TCP connection
//! (`Connection: close`), plain or over rustls (ring) with the server certificate pinned
//! by its SHA-1 thumbprint, as VDDK pins vCenter's.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha1::Digest as _;
use vddk_sys::{
    VIX_E_CANNOT_CONNECT_TO_HOST, VIX_E_FAIL, VIX_E_HOST_NETWORK_CONN_REFUSED,
    VIX_E_HOST_SERVER_NOT_FOUND,
};

use crate::vix::{VixCallError, VixResult, fail};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// SOAP answers of the lab are small; this bounds a misbehaving server.
const MAX_RESPONSE: usize = 64 << 20;

/// `AA:BB:…` of a DER certificate.
pub(crate) fn thumbprint_of(der: &[u8]) -> String {
    sha1::Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Hex digits only, upper case: `aa:bb` and `AABB` compare equal.
pub(crate) fn normalise_thumbprint(t: &str) -> String {
    t.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Where the vCenter is.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    /// None: plain HTTP.
    pub tls: Option<Arc<Pin>>,
}

/// Accepts the server certificate whose thumbprint is `expected` (any, when None) and
/// remembers the thumbprint it saw.
#[derive(Debug)]
pub(crate) struct Pin {
    expected: Option<String>,
    seen: Mutex<Option<String>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pin {
    pub(crate) fn new(expected: Option<String>) -> Self {
        Self {
            expected: expected.filter(|t| !t.is_empty()),
            seen: Mutex::new(None),
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// The thumbprint of the last certificate the server presented.
    pub(crate) fn seen(&self) -> Option<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = thumbprint_of(end_entity);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(actual.clone());
        match &self.expected {
            Some(expected) if normalise_thumbprint(expected) != normalise_thumbprint(&actual) => {
                Err(rustls::Error::General(format!(
                    "certificate thumbprint {actual} is not the expected {expected}"
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A response: status, the `Set-Cookie` values, the body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub body: Vec<u8>,
}

impl Endpoint {
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    fn connect_tcp(&self) -> VixResult<TcpStream> {
        let url = self.url();
        let addrs: Vec<_> = match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                return fail(
                    VIX_E_HOST_SERVER_NOT_FOUND,
                    format!("cannot resolve vCenter host {:?}: {e}", self.host),
                );
            }
        };
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let timeouts = s
                        .set_read_timeout(Some(IO_TIMEOUT))
                        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)));
                    if let Err(e) = timeouts {
                        return fail(VIX_E_FAIL, format!("{url}: set socket timeouts: {e}"));
                    }
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) if e.kind() == ErrorKind::ConnectionRefused => fail(
                VIX_E_HOST_NETWORK_CONN_REFUSED,
                format!("vCenter {url} refused the connection: {e}"),
            ),
            Some(e) => fail(
                VIX_E_CANNOT_CONNECT_TO_HOST,
                format!("cannot connect to vCenter {url}: {e}"),
            ),
            None => fail(
                VIX_E_HOST_SERVER_NOT_FOUND,
                format!("vCenter host {:?} has no address", self.host),
            ),
        }
    }

    /// POSTs `body` to `path` and reads the whole response.
    pub(crate) fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> VixResult<Response> {
        let url = self.url();
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: vddk-sim\r\n\
             Connection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let tcp = self.connect_tcp()?;
        let io_err =
            |e: std::io::Error| VixCallError::new(io_code(&e), format!("{url}{path}: {e}"));
        let raw = match &self.tls {
            None => exchange(tcp, request.as_bytes()).map_err(io_err)?,
            Some(pin) => {
                let config =
                    rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| VixCallError::new(VIX_E_FAIL, format!("TLS setup: {e}")))?
                        .dangerous()
                        .with_custom_certificate_verifier(
                            Arc::clone(pin) as Arc<dyn ServerCertVerifier>
                        )
                        .with_no_client_auth();
                let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                    VixCallError::new(
                        VIX_E_HOST_SERVER_NOT_FOUND,
                        format!("{:?} is not a host name: {e}", self.host),
                    )
                })?;
                let conn = rustls::ClientConnection::new(Arc::new(config), name)
                    .map_err(|e| VixCallError::new(VIX_E_FAIL, format!("{url}: TLS: {e}")))?;
                let stream = rustls::StreamOwned::new(conn, tcp);
                exchange(stream, request.as_bytes()).map_err(io_err)?
            }
        };
        parse_response(&raw).ok_or_else(|| {
            VixCallError::new(
                VIX_E_FAIL,
                format!("{url}{path}: the server's answer is not an HTTP/1.1 response"),
            )
        })
    }
}

/// TLS failures (a certificate that is not the pinned one) surface as InvalidData.
fn io_code(e: &std::io::Error) -> u32 {
    match e.kind() {
        ErrorKind::ConnectionRefused => VIX_E_HOST_NETWORK_CONN_REFUSED,
        ErrorKind::InvalidData | ErrorKind::ConnectionReset | ErrorKind::TimedOut => {
            VIX_E_CANNOT_CONNECT_TO_HOST
        }
        _ => VIX_E_FAIL,
    }
}

/// Writes the request and reads until the response is complete (Content-Length) or the
/// server closes. A TLS peer that closes without close_notify ends the response too.
fn exchange<S: Read + Write>(mut stream: S, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_RESPONSE {
                    return Err(std::io::Error::other("response too large"));
                }
                if complete(&out) {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn headers(raw: &[u8], end: usize) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(&raw[..end]).ok()?;
    Some(
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect(),
    )
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
}

fn complete(raw: &[u8]) -> bool {
    let Some(end) = header_end(raw) else {
        return false;
    };
    match headers(raw, end).as_deref().and_then(content_length) {
        Some(len) => raw.len() >= end + len,
        None => false,
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = header_end(raw)?;
    let status_line = std::str::from_utf8(&raw[..end]).ok()?.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers = headers(raw, end)?;
    let rest = &raw[end..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        match content_length(&headers) {
            Some(len) => rest.get(..len)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    let set_cookies = headers
        .into_iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v)
        .collect();
    Some(Response {
        status,
        set_cookies,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_and_chunks() {
        let raw = b"HTTP/1.1 500 Internal\r\nContent-Length: 3\r\nSet-Cookie: a=b\r\n\r\nabcdef";
        assert!(complete(raw));
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"abc"[..]));
        assert_eq!(r.set_cookies, vec!["a=b".to_owned()]);
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert!(!complete(raw));
        assert_eq!(parse_response(raw).unwrap().body, b"abcde");
        assert!(parse_response(b"garbage").is_none());
    }

    #[test]
    fn thumbprints_compare_on_hex_digits() {
        assert_eq!(
            normalise_thumbprint("aa:bb:0c"),
            normalise_thumbprint("AA:BB:0C")
        );
        assert_eq!(thumbprint_of(b"").len(), 59);
    }
}
