//! TLS material that can be replaced under running servers and clients
//! (certificate renewal and rotation): configs built from a [`Material`]
//! look up the current certificate, key and trusted CAs at every
//! handshake. A replacement takes effect at the next handshake; connections
//! already made are not touched, so nothing restarts and nothing fails
//! over when a pair's certificates change. Sessions resumed without a full
//! handshake (TLS session tickets) are kept per material: a replacement
//! starts with none, so no session made under a certificate or CA that was
//! replaced is resumed after it — a rotated key is out at once.

use std::sync::{Arc, RwLock};

use rustls::NamedGroup;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use super::{Identity, TlsError, parse, provider};

/// One identity and the CAs it trusts, as parsed, and the sessions made
/// under it.
struct Loaded {
    identity: Identity,
    key: Arc<CertifiedKey>,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
    server_sessions: Arc<ServerSessionMemoryCache>,
    client_sessions: ClientSessionMemoryCache,
}

/// Sessions kept for resumption, per material. A party talks to few others:
/// an agent to its peer, the operator's material for a pair to that pair's
/// two agents; an agent answers its peer, the operator's replicas and a
/// resync Job. rustls' defaults (256 each) set room aside at once for 32
/// servers and 256 sessions — tens of KiB per material, held once per pair
/// by the operator, so they grew its memory with every pair.
const CLIENT_SESSIONS: usize = 16; // two servers, eight tickets each
const SERVER_SESSIONS: usize = 32;

impl Loaded {
    fn of(id: &Identity) -> Result<Self, TlsError> {
        let (roots, chain, key) = parse(id)?;
        let roots = Arc::new(roots);
        let key = Arc::new(CertifiedKey::from_der(chain, key, &provider())?);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider()).build()?;
        Ok(Loaded {
            identity: id.clone(),
            key,
            clients,
            servers,
            server_sessions: ServerSessionMemoryCache::new(SERVER_SESSIONS),
            client_sessions: ClientSessionMemoryCache::new(CLIENT_SESSIONS),
        })
    }
}

/// The current TLS material of one party (an agent, the operator for one
/// pair), replaceable at any time.
pub struct Material {
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material")
    }
}

impl Material {
    pub fn new(id: &Identity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Material { current: RwLock::new(Arc::new(Loaded::of(id)?)) }))
    }

    fn now(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The identity in use.
    pub fn identity(&self) -> Identity {
        self.now().identity.clone()
    }

    /// Uses `id` from the next handshake on. `Ok(false)`: it is the one in
    /// use already. An identity that does not parse is refused and the
    /// current one stays.
    pub fn replace(&self, id: &Identity) -> Result<bool, TlsError> {
        if self.now().identity == *id {
            return Ok(false);
        }
        let loaded = Arc::new(Loaded::of(id)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(true)
    }

    /// Server side: present the current certificate, require a client
    /// certificate from a currently trusted CA.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(Clients(self.clone())))
            .with_cert_resolver(Arc::new(Current(self.clone())));
        config.session_storage = Arc::new(Sessions(self.clone()));
        Ok(Arc::new(config))
    }

    /// Client side: present the current certificate, trust only the
    /// currently trusted CAs.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Servers(self.clone())))
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        config.resumption = Resumption::store(Arc::new(Sessions(self.clone())));
        Ok(Arc::new(config))
    }
}

/// The current material's sessions, on either side.
#[derive(Debug)]
struct Sessions(Arc<Material>);

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.now().server_sessions.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.now().server_sessions.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.now().server_sessions.take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.0.now().client_sessions.set_kx_hint(name, group)
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.now().client_sessions.kx_hint(name)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.now().client_sessions.set_tls12_session(name, value)
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.now().client_sessions.tls12_session(name)
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.0.now().client_sessions.remove_tls12_session(name)
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.now().client_sessions.insert_tls13_ticket(name, value)
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.now().client_sessions.take_tls13_ticket(name)
    }
}

/// The current certificate, to present as server or client.
#[derive(Debug)]
struct Current(Arc<Material>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.now().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for Current {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.now().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies clients against the currently trusted CAs.
#[derive(Debug)]
struct Clients(Arc<Material>);

impl ClientCertVerifier for Clients {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the CAs change under us, so none are sent.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.now().clients.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.now().clients.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.now().clients.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.now().clients.supported_verify_schemes()
    }
}

/// Verifies servers against the currently trusted CAs.
#[derive(Debug)]
struct Servers(Arc<Material>);

impl ServerCertVerifier for Servers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.now().servers.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.now().servers.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.now().servers.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.now().servers.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rustls::{ClientConnection, ServerConnection};

    use super::*;
    use crate::api::Member;
    use crate::tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY, generate_pair_material, member_cert_key, member_server_name};

    fn member(m: &BTreeMap<String, String>) -> Identity {
        let (c, k) = member_cert_key(Member::Primary);
        Identity { ca: m[CA_CERT].clone(), cert: m[&c].clone(), key: m[&k].clone() }
    }

    fn client(m: &BTreeMap<String, String>) -> Identity {
        Identity { ca: m[CA_CERT].clone(), cert: m[CLIENT_CERT].clone(), key: m[CLIENT_KEY].clone() }
    }

    /// A full handshake in memory; the certificate the server presented.
    fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Result<Vec<u8>, rustls::Error> {
        let name = ServerName::try_from(member_server_name(Member::Primary, "db", "prod")).unwrap();
        let mut c = ClientConnection::new(client.clone(), name)?;
        let mut s = ServerConnection::new(server.clone())?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c.peer_certificates().unwrap()[0].to_vec());
            }
        }
        panic!("the handshake did not finish");
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap().to_vec()
    }

    #[test]
    fn replaced_material_is_used_from_the_next_handshake_and_a_ca_overlap_trusts_both() {
        let (a, b) = (
            generate_pair_material("db", "prod", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap(),
            generate_pair_material("db", "prod", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap(),
        );
        let (server, client_side) = (Material::new(&member(&a)).unwrap(), Material::new(&client(&a)).unwrap());
        let (sc, cc) = (server.server_config().unwrap(), client_side.client_config().unwrap());
        assert_eq!(handshake(&sc, &cc).unwrap(), der(&member(&a).cert));

        // The server moves to another CA: a client of the old one is refused
        // by the configs already built...
        assert!(server.replace(&member(&b)).unwrap());
        assert!(!server.replace(&member(&b)).unwrap(), "the same identity again changes nothing");
        assert!(handshake(&sc, &cc).is_err(), "a client trusting only the old CA");
        // ... until the client moves too.
        client_side.replace(&client(&b)).unwrap();
        assert_eq!(handshake(&sc, &cc).unwrap(), der(&member(&b).cert));

        // An overlap: both trust both CAs, and each side may present a
        // certificate of either.
        let both = format!("{}{}", a[CA_CERT], b[CA_CERT]);
        server.replace(&Identity { ca: both.clone(), ..member(&a) }).unwrap();
        client_side.replace(&Identity { ca: both.clone(), ..client(&b) }).unwrap();
        assert_eq!(handshake(&sc, &cc).unwrap(), der(&member(&a).cert));
        client_side.replace(&Identity { ca: both, ..client(&a) }).unwrap();
        assert_eq!(handshake(&sc, &cc).unwrap(), der(&member(&a).cert));

        // Garbage is refused, and what was in use stays in use.
        let garbage = Identity { ca: "x".into(), cert: "y".into(), key: "z".into() };
        assert!(matches!(server.replace(&garbage), Err(TlsError::BadPem(_))));
        assert_eq!(handshake(&sc, &cc).unwrap(), der(&member(&a).cert));
        // A certificate with another's key: refused too.
        let mixed = Identity { key: client(&a).key, ..member(&a) };
        assert!(server.replace(&mixed).is_err());
        // (No Debug for an identity: it holds a private key.)
        assert!(server.identity() == Identity { ca: format!("{}{}", a[CA_CERT], b[CA_CERT]), ..member(&a) });
    }

    #[test]
    fn renewed_leaves_chain_to_the_same_ca_and_are_due_two_thirds_through_their_life() {
        use crate::tls::{CA_KEY, expiry, renew_leaves};
        let now = chrono::Utc::now();
        let a = generate_pair_material("db", "prod", 600).unwrap();
        let e = expiry(&a);
        let left = (e.members.unwrap() - now).num_seconds();
        assert!((598..=601).contains(&left), "made for 600 s: {left}");
        // Backdated a tenth of its life (a minute): due 2/3 of 660 s after that.
        let due = (e.renew_after.unwrap() - now).num_seconds();
        assert!((377..=381).contains(&due), "due in {due} s");

        let b = renew_leaves(&a, "db", "prod", 600).unwrap();
        assert_eq!((&a[CA_CERT], &a[CA_KEY]), (&b[CA_CERT], &b[CA_KEY]), "the CA stays");
        assert_ne!(member(&a).cert, member(&b).cert);
        assert_ne!(a[CLIENT_CERT], b[CLIENT_CERT]);
        // A member still on the old certificate and the operator on the new
        // one trust each other, both ways round.
        let (old, new) = (Material::new(&member(&a)).unwrap(), Material::new(&client(&b)).unwrap());
        handshake(&old.server_config().unwrap(), &new.client_config().unwrap()).unwrap();
        let (new, old) = (Material::new(&member(&b)).unwrap(), Material::new(&client(&a)).unwrap());
        handshake(&new.server_config().unwrap(), &old.client_config().unwrap()).unwrap();

        // A certificate that does not read is due at once (renewing repairs it).
        let mut bad = b.clone();
        bad.insert(CLIENT_CERT.into(), "garbage".into());
        assert!(expiry(&bad).renew_after.unwrap() < now);
        // Without the CA's key nothing can be issued: an error, not a panic.
        let mut keyless = b.clone();
        keyless.remove(CA_KEY);
        assert!(matches!(renew_leaves(&keyless, "db", "prod", 600), Err(TlsError::BadPem("ca.key"))));
    }
}
