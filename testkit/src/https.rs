//! A local HTTPS webhook receiver with certificates from a test CA made on
//! the spot, optionally requiring a client certificate (mutual TLS).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::Notify;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{crypto, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::PATIENCE;

/// A certificate authority that lives for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM, as a `ca_file` holds it.
    pub pem: String,
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        // An IP address given as a name becomes an IP subject-alt-name.
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        params.extended_key_usages.push(usage);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// One request the HTTPS receiver got.
#[derive(Clone, Debug)]
pub struct HttpsRequest {
    pub headers: HeaderMap,
    pub body: String,
    /// The client's certificate, DER, when it presented one.
    pub client_cert: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<HttpsRequest>>,
    /// Why TLS handshakes failed, as the server saw it.
    handshake_errors: Mutex<Vec<String>>,
    arrived: Notify,
}

/// An HTTPS receiver on 127.0.0.1:0 that answers 200 and records requests.
pub struct HttpsHook {
    pub addr: SocketAddr,
    state: Arc<State>,
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS acceptor serving `identity`; with `client_ca`, only clients
/// holding a certificate it signed complete the handshake.
pub fn acceptor(identity: &Issued, client_ca: Option<&TestCa>) -> TlsAcceptor {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(&ca.pem) {
                roots.add(cert).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
    let config = builder
        .with_single_cert(certs(&identity.cert_pem), key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

impl HttpsHook {
    /// Serves `identity`; with `client_ca`, only clients holding a
    /// certificate it signed may talk.
    pub async fn start(identity: &Issued, client_ca: Option<&TestCa>) -> Self {
        let acceptor = acceptor(identity, client_ca);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            state
                                .handshake_errors
                                .lock()
                                .unwrap()
                                .push(error.to_string());
                            state.arrived.notify_waiters();
                            return;
                        }
                    };
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.to_vec());
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let state = Arc::clone(&state);
                        let client_cert = client_cert.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            state.requests.lock().unwrap().push(HttpsRequest {
                                headers: parts.headers,
                                body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
                                client_cert,
                            });
                            state.arrived.notify_waiters();
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("https://{}/hook", self.addr)
    }

    pub fn requests(&self) -> Vec<HttpsRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Why handshakes with this server failed, in the server's words.
    pub fn handshake_errors(&self) -> Vec<String> {
        self.state.handshake_errors.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<HttpsRequest> {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let arrived = self.state.arrived.notified();
                if self.state.requests.lock().unwrap().len() >= n {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        let requests = self.requests();
        assert!(
            waited.is_ok(),
            "expected {n} requests, got {}; handshake errors: {:?}",
            requests.len(),
            self.handshake_errors()
        );
        requests
    }
}

/// Writes `pem` to a temporary file that lives as long as the guard.
pub fn pem_file(pem: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".pem").tempfile().unwrap();
    std::fs::write(file.path(), pem).unwrap();
    file
}

/// A TLS front for a plain TCP server, as a load balancer or stunnel puts
/// one before RabbitMQ: it terminates TLS with `acceptor` and relays the
/// bytes to `backend`. Records the client certificates it saw.
pub struct TlsProxy {
    pub addr: SocketAddr,
    client_certs: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

impl TlsProxy {
    pub async fn start(acceptor: TlsAcceptor, backend: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_certs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&client_certs);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.to_vec());
                    seen.lock().unwrap().push(cert);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, client_certs }
    }

    /// The client certificate of each TLS connection made so far.
    pub fn client_certs(&self) -> Vec<Option<Vec<u8>>> {
        self.client_certs.lock().unwrap().clone()
    }
}
