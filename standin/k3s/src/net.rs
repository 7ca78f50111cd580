//! Minimal HTTPS (HTTP/1.1, one request per connection, `Connection: close` on every
//! response) server and client on rustls + tokio-rustls, plus the cluster CA, serving-cert
//! and admin client-cert handling. k3s STAND-IN code, not the real k3s.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Cluster CA: PEM cert + PEM key + the CN it was created with (so a joining server can
/// rebuild an issuer without an X.509 parser).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    pub cn: String,
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p
}

impl Ca {
    pub fn generate() -> Ca {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        // real k3s: "k3s-server-ca@<unix time>"
        let cn = format!("k3s-server-ca@{secs}");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = ca_params(&cn).self_signed(&key).unwrap();
        Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cn }
    }

    /// The hash a K10 token pins (sha256 of the CA bundle as served on /cacerts).
    pub fn hash(&self) -> String {
        sha256_hex(self.cert_pem.as_bytes())
    }

    /// Serving certificate signed by the CA for the given SANs.
    pub fn serving(&self, sans: &[String]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).unwrap();
        let issuer = rcgen::Issuer::new(ca_params(&self.cn), ca_key);
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "k3s");
        for s in sans {
            let san = match s.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => match rcgen::string::Ia5String::try_from(s.as_str()) {
                    Ok(d) => rcgen::SanType::DnsName(d),
                    Err(_) => continue,
                },
            };
            if !p.subject_alt_names.contains(&san) {
                p.subject_alt_names.push(san);
            }
        }
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        let ca_der = pem_to_der(&self.cert_pem);
        (vec![cert.der().clone(), ca_der], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }
}

impl Ca {
    /// Admin client certificate (CN=system:admin, O=system:masters), as real k3s puts into
    /// k3s.yaml. Returns (cert PEM, PKCS#8 key PEM).
    pub fn client_admin(&self) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).unwrap();
        let issuer = rcgen::Issuer::new(ca_params(&self.cn), ca_key);
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        p.distinguished_name.push(rcgen::DnType::CommonName, "system:admin");
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn pem_to_der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("CA PEM")
}

/// TLS server config. Client certificates are requested but optional (like kube-apiserver
/// with --client-ca-file): a certificate that is sent must chain to `client_ca_pem`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_pem: &str,
) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_to_der(client_ca_pem)).expect("client CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server cert");
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Trust anchor used by a client.
#[derive(Clone)]
pub enum Trust {
    /// Verify chain and hostname against this CA (kubectl with k3s.yaml).
    Ca(String),
    /// Verify the chain against this CA but tolerate a hostname not in the SANs
    /// (agents joining through an LB/VIP; see README "remaining differences").
    CaAnyName(String),
    /// No verification at all: only used to fetch /cacerts, whose hash is then
    /// checked against the K10 token, as real k3s does.
    Insecure,
}

#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>, bool);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.1 {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A client identity: (certificate chain PEM, private key PEM).
pub type Identity = (String, String);

fn client_config(trust: &Trust, ident: Option<&Identity>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let ident = match ident {
        Some((c, k)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("error: bad client-certificate-data: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(k.as_bytes()).map_err(|e| format!("error: bad client-key-data: {e}"))?;
            Some((chain, key))
        }
        None => None,
    };
    let b = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca = match trust {
        Trust::Ca(p) | Trust::CaAnyName(p) => Some(p.clone()),
        Trust::Insecure => None,
    };
    if let Some(p) = &ca {
        roots.add(pem_to_der(p)).map_err(|e| format!("bad CA: {e}"))?;
    } else {
        // any valid self-signed placeholder would do; verification is skipped anyway
        roots.add(pem_to_der(&Ca::generate().cert_pem)).unwrap();
    }
    let roots = Arc::new(roots);
    let wb = match trust {
        Trust::Ca(_) => b.with_root_certificates(roots),
        _ => {
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| e.to_string())?;
            b.dangerous().with_custom_certificate_verifier(Arc::new(AnyName(v, matches!(trust, Trust::Insecure))))
        }
    };
    let mut c = match ident {
        Some((chain, key)) => wb
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("error: tls: private key does not match public key ({e})"))?,
        None => wb.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's `ip:port` (Go's `req.RemoteAddr`), set by the server that accepted it.
    pub peer: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(pos + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("header too large"));
        }
        let n = r.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof in header"));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_headers(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let hs =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    (first, hs)
}

pub async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Request> {
    let (head, mut body) = read_head(s).await?;
    let (first, headers) = parse_headers(&String::from_utf8_lossy(&head));
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let body = read_chunked(s, body).await?;
        return Ok(Request { method, path, headers, body, peer: String::new() });
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if len > 16 * 1024 * 1024 {
        return Err(std::io::Error::other("body too large"));
    }
    while body.len() < len {
        let mut tmp = vec![0u8; len - body.len()];
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    body.truncate(len);
    Ok(Request { method, path, headers, body, peer: String::new() })
}

/// Decode a `Transfer-Encoding: chunked` body; `buf` holds bytes already read past the head.
async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        // chunk-size line
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof in chunk size"));
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // trailers until an empty line; tolerate a peer that stops right after "0\r\n"
            loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    let empty = p == 0;
                    buf.drain(..p + 2);
                    if empty {
                        return Ok(out);
                    }
                    continue;
                }
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Ok(out);
                }
                buf.extend_from_slice(&tmp[..n]);
            }
        }
        if out.len() + size > 16 * 1024 * 1024 {
            return Err(std::io::Error::other("body too large"));
        }
        while buf.len() < size + 2 {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof in chunk"));
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        out.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

pub async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = reason_phrase(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    s.shutdown().await.ok();
    Ok(())
}

/// The reason phrase of an HTTP status, as Go's `resp.Status` carries it after the code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        415 => "Unsupported Media Type",
        409 => "Conflict",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Split `https://host:port[/...]` into (host, port).
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest =
        url.strip_prefix("https://").ok_or_else(|| format!("invalid server url {url}: must start with https://"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(|| format!("invalid server url {url}"))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or("443").to_string())
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (hostport.to_string(), "443".to_string()),
        }
    };
    if host.is_empty() {
        return Err(format!("invalid server url {url}"));
    }
    let port = port.parse().map_err(|_| format!("invalid port in server url {url}"))?;
    Ok((host, port))
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One HTTPS request. `bearer` goes into `Authorization: Bearer`.
pub async fn request(
    url: &str,
    trust: &Trust,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> Result<Response, String> {
    request_as(url, trust, None, method, path, bearer, body).await
}

/// One HTTPS request, optionally presenting a client certificate.
pub async fn request_as(
    url: &str,
    trust: &Trust,
    ident: Option<&Identity>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> Result<Response, String> {
    let (host, port) = parse_url(url)?;
    let cfg = client_config(trust, ident)?;
    let conn = tokio_rustls::TlsConnector::from(cfg);
    let tcp =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| format!("dial tcp {host}:{port}: i/o timeout"))?
            .map_err(|e| format!("dial tcp {host}:{port}: connect: {e}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(std::time::Duration::from_secs(5), conn.connect(name, tcp))
        .await
        .map_err(|_| "tls: handshake timeout".to_string())?
        .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: k3s-standin\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(b) = bearer {
        head.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    head.push_str("\r\n");
    let io = async {
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await?;
        let (h, mut rest) = read_head(&mut tls).await?;
        let (first, headers) = parse_headers(&String::from_utf8_lossy(&h));
        let status: u16 = first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let len: Option<usize> =
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok());
        match len {
            Some(l) => {
                while rest.len() < l {
                    let mut tmp = vec![0u8; l - rest.len()];
                    let n = tls.read(&mut tmp).await?;
                    if n == 0 {
                        break;
                    }
                    rest.extend_from_slice(&tmp[..n]);
                }
            }
            None => {
                let _ = tls.read_to_end(&mut rest).await;
            }
        }
        Ok::<_, std::io::Error>(Response { status, body: rest })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), io)
        .await
        .map_err(|_| format!("{method} https://{host}:{port}{path}: timeout"))?
        .map_err(|e| format!("{method} https://{host}:{port}{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn urls() {
        assert_eq!(parse_url("https://10.0.0.1:6443").unwrap(), ("10.0.0.1".into(), 6443));
        assert_eq!(parse_url("https://lb.local:7443/").unwrap(), ("lb.local".into(), 7443));
        assert_eq!(parse_url("https://[::1]:6443").unwrap(), ("::1".into(), 6443));
        assert!(parse_url("http://x:6443").is_err());
        assert!(parse_url("https://:6443").is_err());
    }
    #[tokio::test(flavor = "current_thread")]
    async fn request_bodies_plain_and_chunked() {
        let mut r: &[u8] = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let q = read_request(&mut r).await.unwrap();
        assert_eq!((q.method.as_str(), q.path.as_str(), q.body.as_slice()), ("POST", "/x", &b"hello"[..]));
        let mut r: &[u8] = b"PATCH /api/v1/nodes/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n";
        let q = read_request(&mut r).await.unwrap();
        assert_eq!(q.body, br#"{"a":1}"#);
        let mut r: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(read_request(&mut r).await.is_err());
    }

    #[test]
    fn admin_client_cert_builds() {
        let ca = Ca::generate();
        let (c, k) = ca.client_admin();
        assert!(c.starts_with("-----BEGIN CERTIFICATE-----") && k.contains("PRIVATE KEY"));
        assert!(client_config(&Trust::Ca(ca.cert_pem.clone()), Some(&(c, k.clone()))).is_ok());
        let (other, _) = Ca::generate().client_admin();
        assert!(client_config(&Trust::Ca(ca.cert_pem.clone()), Some(&(other, k))).is_err(), "key must match cert");
    }

    #[test]
    fn ca_hash_is_stable_and_serving_cert_builds() {
        let ca = Ca::generate();
        assert_eq!(ca.hash(), sha256_hex(ca.cert_pem.as_bytes()));
        assert_eq!(ca.hash().len(), 64);
        let (chain, _k) = ca.serving(&["127.0.0.1".into(), "localhost".into()]);
        assert_eq!(chain.len(), 2);
    }
}
