//! Per-pair mutual TLS: the operator mints a CA for each pair, a certificate
//! for each member's agent and one client certificate for itself and its
//! Jobs, and keeps them in the pair's TLS Secret. Agents accept only clients
//! holding a certificate from their own pair's CA, so nothing outside the
//! pair can read a member's status or files.
//!
//! Members are verified by name, not address: a member's certificate names
//! `<member>.<pair>.<namespace>.hapair`, and clients connect to the pod IP
//! while checking that name, so certificates survive pod restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::api::Member;

/// Keys of the pair's TLS Secret.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

pub fn member_cert_key(member: Member) -> (String, String) {
    (format!("{member}.crt"), format!("{member}.key"))
}

/// Name a member's certificate carries and its clients verify.
pub fn member_server_name(member: Member, pair: &str, namespace: &str) -> String {
    format!("{member}.{pair}.{namespace}.hapair")
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS material {0} is missing or not valid PEM")]
    BadPem(&'static str),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid server name {0}")]
    ServerName(String),
}

fn ca_params(pair: &str, namespace: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("hapair CA {namespace}/{pair}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, 10);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, years: i32) {
    let now = chrono::Utc::now();
    params.not_before = rcgen::date_time_ymd(now.year(), now.month() as u8, now.day() as u8);
    params.not_after = rcgen::date_time_ymd(now.year() + years, now.month() as u8, 1);
}

fn leaf(name: &str, server: bool) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Agents are servers to the operator and clients to their peer.
    params.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    set_validity(&mut params, 5);
    Ok(params)
}

/// Everything the pair's TLS Secret holds, freshly generated.
pub fn generate_pair_material(pair: &str, namespace: &str) -> Result<BTreeMap<String, String>, TlsError> {
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(pair, namespace)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut out = BTreeMap::new();
    out.insert(CA_CERT.to_string(), ca_cert.pem());
    for member in Member::BOTH {
        let key = KeyPair::generate()?;
        let cert = leaf(&member_server_name(member, pair, namespace), true)?.signed_by(&key, &issuer)?;
        let (c, k) = member_cert_key(member);
        out.insert(c, cert.pem());
        out.insert(k, key.serialize_pem());
    }
    let key = KeyPair::generate()?;
    let cert = leaf(&format!("operator.{pair}.{namespace}.hapair"), false)?.signed_by(&key, &issuer)?;
    out.insert(CLIENT_CERT.to_string(), cert.pem());
    out.insert(CLIENT_KEY.to_string(), key.serialize_pem());
    out.insert(CA_KEY.to_string(), ca_key_pem);
    Ok(out)
}

/// PEM certificate and key of one identity plus the pair's CA.
#[derive(Clone)]
pub struct Identity {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn parse(id: &Identity) -> Result<(RootCertStore, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(id.ca.as_bytes()) {
        roots.add(ca.map_err(|_| TlsError::BadPem("ca.crt"))?).map_err(|_| TlsError::BadPem("ca.crt"))?;
    }
    if roots.is_empty() {
        return Err(TlsError::BadPem("ca.crt"));
    }
    let chain = CertificateDer::pem_slice_iter(id.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadPem("certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::BadPem("certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(id.key.as_bytes()).map_err(|_| TlsError::BadPem("key"))?;
    Ok((roots, chain, key))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: present `id`, require a client certificate from the same CA.
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let (roots, chain, key) = parse(id)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Client side: present `id`, trust only the pair's CA.
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let (roots, chain, key) = parse(id)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(m: &BTreeMap<String, String>, cert: &str, key: &str) -> Identity {
        Identity { ca: m[CA_CERT].clone(), cert: m[cert].clone(), key: m[key].clone() }
    }

    #[test]
    fn generated_material_builds_server_and_client_configs() {
        let m = generate_pair_material("db", "prod").unwrap();
        let (c, k) = member_cert_key(Member::Primary);
        server_config(&identity(&m, &c, &k)).unwrap();
        client_config(&identity(&m, CLIENT_CERT, CLIENT_KEY)).unwrap();
        assert!(m[CA_KEY].contains("PRIVATE KEY"));
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let id = Identity { ca: "nope".into(), cert: "nope".into(), key: "nope".into() };
        assert!(matches!(server_config(&id), Err(TlsError::BadPem(_))));
    }
}
