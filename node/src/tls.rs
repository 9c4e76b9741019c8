//! The QUIC TLS layer: a per-node self-signed certificate, and client/server configs.
//!
//! TLS here provides QUIC's packet protection and the exporter that binds the Noise handshake to
//! the connection; it does *not* authenticate nodes (the Noise static keys do). So the client
//! accepts any certificate but still verifies the handshake signature made with it, which is what
//! makes the exporter secret unknown to anyone but the two endpoints. TLS 1.3 only, 0-RTT off.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Certificate and key of a node.
#[derive(Debug)]
pub struct TlsIdentity {
    /// DER certificate.
    pub cert: CertificateDer<'static>,
    /// DER PKCS#8 private key.
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl TlsIdentity {
    /// A fresh self-signed certificate.
    pub fn generate() -> Result<Self, String> {
        let ck = rcgen::generate_simple_self_signed(vec!["lifeboat".to_string()])
            .map_err(|e| e.to_string())?;
        Ok(TlsIdentity {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()),
        })
    }

    /// Saves to `cert_path` and `key_path` (0600).
    pub fn save(
        &self,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(), lifeboat_config::ConfigError> {
        use lifeboat_config::state::write_file_atomic;
        write_file_atomic(cert_path, self.cert.as_ref(), 0o644)?;
        write_file_atomic(key_path, self.key.secret_pkcs8_der(), 0o600)
    }

    /// Loads, or creates and saves if missing.
    pub fn load_or_create(cert_path: &Path, key_path: &Path) -> Result<Self, String> {
        match (std::fs::read(cert_path), std::fs::read(key_path)) {
            (Ok(c), Ok(k)) => Ok(TlsIdentity {
                cert: CertificateDer::from(c),
                key: PrivatePkcs8KeyDer::from(k),
            }),
            _ => {
                let id = Self::generate()?;
                id.save(cert_path, key_path).map_err(|e| e.to_string())?;
                Ok(id)
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate, verifying only the TLS 1.3 handshake signature.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// QUIC flow-control and liveness tuning.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Connection closes after this much silence.
    pub idle_timeout: Duration,
    /// Keep-alive period (keeps NAT bindings and detects dead paths).
    pub keep_alive: Duration,
    /// Per-stream receive window in bytes.
    pub stream_window: u32,
    /// Per-connection receive window in bytes.
    pub conn_window: u32,
    /// Concurrent bidirectional streams a peer may open.
    pub max_bidi: u32,
    /// Concurrent unidirectional streams a peer may open.
    pub max_uni: u32,
    /// Connection receive window before the Noise handshake admits the peer: an
    /// unauthenticated peer may make us buffer at most this much, on the one handshake stream
    /// it may open. [`admit`] raises the window and stream limits to the values above.
    pub pre_admission_window: u32,
    /// Largest UDP payload path MTU discovery searches for. Paths that carry it (jumbo-frame
    /// LANs, loopback, virtual switches) move several times fewer packets per byte; standard
    /// 1500-byte paths lose the probes and settle near 1452, quinn's default bound.
    pub max_udp_payload: u16,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            idle_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(3),
            stream_window: 8 << 20,
            conn_window: 32 << 20,
            max_bidi: 16,
            max_uni: 4,
            pre_admission_window: 128 << 10,
            max_udp_payload: 16384,
        }
    }
}

fn transport_config(t: &Tuning) -> Arc<quinn::TransportConfig> {
    let mut c = quinn::TransportConfig::default();
    c.max_idle_timeout(quinn::IdleTimeout::try_from(t.idle_timeout).ok())
        .keep_alive_interval(Some(t.keep_alive))
        .stream_receive_window(quinn::VarInt::from_u32(t.stream_window))
        // Until admission: one bidirectional stream (the handshake), no unidirectional ones,
        // and a small connection window (see `Tuning::pre_admission_window`).
        .receive_window(quinn::VarInt::from_u32(
            t.pre_admission_window.min(t.conn_window),
        ))
        .send_window(t.conn_window as u64)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(t.max_udp_payload);
    c.mtu_discovery_config(Some(mtu));
    Arc::new(c)
}

/// Opens an admitted connection to full speed: the receive window and stream limits of `t`.
pub fn admit(conn: &quinn::Connection, t: &Tuning) {
    conn.set_receive_window(quinn::VarInt::from_u32(t.conn_window));
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(t.max_bidi));
    conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(t.max_uni));
}

/// Server config for the node's endpoint.
pub fn server_config(id: &TlsIdentity, t: &Tuning) -> Result<quinn::ServerConfig, String> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![lifeboat_protocol::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport_config(t));
    Ok(sc)
}

/// Client config for dialing other nodes.
pub fn client_config(t: &Tuning) -> Result<quinn::ClientConfig, String> {
    let p = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![lifeboat_protocol::ALPN.to_vec()];
    tls.enable_early_data = false;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport_config(t));
    Ok(cc)
}

/// Binds a QUIC endpoint that both accepts and dials. Must run inside a tokio runtime.
pub fn endpoint(
    bind: std::net::SocketAddr,
    id: &TlsIdentity,
    t: &Tuning,
) -> Result<quinn::Endpoint, String> {
    let mut ep = quinn::Endpoint::server(server_config(id, t)?, bind)
        .map_err(|e| format!("cannot listen on {bind}/udp: {e}"))?;
    ep.set_default_client_config(client_config(t)?);
    Ok(ep)
}
