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

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::api::Member;

mod reload;
pub mod rotation;
pub use reload::Material;

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

/// A pair's CA, made for twice the leaves' lifetime (ten years by
/// default). Every CA of a pair has the same name: a leaf names its issuer
/// by it, and a verifier that trusts two of them (during a rotation) tries
/// each one's key.
fn ca_params(pair: &str, namespace: &str, leaf_lifetime_seconds: i64) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("hapair CA {namespace}/{pair}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_window(&mut params, chrono::Utc::now(), chrono::Duration::seconds(2 * leaf_lifetime_seconds.max(60)), None);
    Ok(params)
}

/// How long the members' and the operator's certificates are made for when
/// the pair does not say (`spec.certificates.lifetimeSeconds`): five years.
pub const DEFAULT_LEAF_LIFETIME_SECONDS: i64 = 5 * 365 * 86400;

/// A leaf's validity: from a little before `now` (a peer whose clock is
/// behind must not see it as not yet valid; at most a tenth of its life, so
/// the renewal point stays well inside it) for `lifetime`, and never past
/// `cap` (the issuing CA's own end: a leaf cannot outlive it).
fn set_window(
    params: &mut CertificateParams,
    now: chrono::DateTime<chrono::Utc>,
    lifetime: chrono::Duration,
    cap: Option<chrono::DateTime<chrono::Utc>>,
) {
    let back = (lifetime / 10).min(chrono::Duration::minutes(5));
    let at = |t: chrono::DateTime<chrono::Utc>| {
        time::OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    params.not_before = at(now - back);
    params.not_after = at(cap.map_or(now + lifetime, |cap| cap.min(now + lifetime)));
}

fn leaf(
    name: &str,
    server: bool,
    lifetime: chrono::Duration,
    cap: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<CertificateParams, TlsError> {
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
    set_window(&mut params, chrono::Utc::now(), lifetime, cap);
    Ok(params)
}

/// Everything the pair's TLS Secret holds, freshly generated; the members'
/// and the operator's certificates for `lifetime_seconds`.
pub fn generate_pair_material(
    pair: &str,
    namespace: &str,
    lifetime_seconds: i64,
) -> Result<BTreeMap<String, String>, TlsError> {
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(pair, namespace, lifetime_seconds)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut out = BTreeMap::new();
    out.insert(CA_CERT.to_string(), ca_cert.pem());
    out.insert(CA_KEY.to_string(), ca_key.serialize_pem());
    out.extend(leaves(pair, namespace, &Issuer::new(ca_params, ca_key), lifetime_seconds, None)?);
    Ok(out)
}

/// The members' and the operator's certificates and keys, issued anew by
/// the pair's CA as the Secret holds it (its certificate and key stay).
/// Certificates of the old and the new issue chain to the same CA, so
/// members that load the new ones at different moments keep talking.
pub fn renew_leaves(
    data: &BTreeMap<String, String>,
    pair: &str,
    namespace: &str,
    lifetime_seconds: i64,
) -> Result<BTreeMap<String, String>, TlsError> {
    let mut out = data.clone();
    out.extend(reissued(data, CA_KEY, pair, namespace, lifetime_seconds, rotation::signing_ca_not_after(data))?);
    Ok(out)
}

/// The members' and the operator's certificates issued by the CA whose key
/// is the Secret's `key_name`, none past `cap` (that CA's end).
fn reissued(
    data: &BTreeMap<String, String>,
    key_name: &'static str,
    pair: &str,
    namespace: &str,
    lifetime_seconds: i64,
    cap: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<BTreeMap<String, String>, TlsError> {
    let pem = data.get(key_name).ok_or(TlsError::BadPem(key_name))?;
    let key = KeyPair::from_pem(pem).map_err(|_| TlsError::BadPem(key_name))?;
    // The issuer is the CA's name and key: what a leaf records of it.
    let issuer = Issuer::new(ca_params(pair, namespace, lifetime_seconds)?, key);
    leaves(pair, namespace, &issuer, lifetime_seconds, cap)
}

fn leaves(
    pair: &str,
    namespace: &str,
    issuer: &Issuer<'_, KeyPair>,
    lifetime_seconds: i64,
    cap: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<BTreeMap<String, String>, TlsError> {
    let lifetime = chrono::Duration::seconds(lifetime_seconds.max(60));
    let mut out = BTreeMap::new();
    for member in Member::BOTH {
        let key = KeyPair::generate()?;
        let cert = leaf(&member_server_name(member, pair, namespace), true, lifetime, cap)?.signed_by(&key, issuer)?;
        let (c, k) = member_cert_key(member);
        out.insert(c, cert.pem());
        out.insert(k, key.serialize_pem());
    }
    let key = KeyPair::generate()?;
    let cert = leaf(&format!("operator.{pair}.{namespace}.hapair"), false, lifetime, cap)?.signed_by(&key, issuer)?;
    out.insert(CLIENT_CERT.to_string(), cert.pem());
    out.insert(CLIENT_KEY.to_string(), key.serialize_pem());
    Ok(out)
}

/// When the pair's certificates stop being valid: the CA's (the newest in
/// the bundle), and the earliest of the members' and the operator's client
/// certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expiry {
    pub ca: Option<chrono::DateTime<chrono::Utc>>,
    /// When the CA is due for a rotation: half through its life, so that
    /// the rotation (minutes) has the other half to complete in.
    pub ca_renew_after: Option<chrono::DateTime<chrono::Utc>>,
    pub members: Option<chrono::DateTime<chrono::Utc>>,
    /// When the members' and the operator's certificates are due for
    /// renewal: the earliest point two-thirds through one's life. A
    /// certificate that does not read is due at once.
    pub renew_after: Option<chrono::DateTime<chrono::Utc>>,
}

/// The expiry of the material in a pair's TLS Secret (`data` as stored);
/// a certificate that does not read is left out (`None` if none does).
pub fn expiry(data: &BTreeMap<String, String>) -> Expiry {
    let of = |key: &str| data.get(key).and_then(|pem| not_after(pem));
    let leaves: Vec<String> =
        Member::BOTH.map(|m| member_cert_key(m).0).into_iter().chain([CLIENT_CERT.into()]).collect();
    let members = leaves.iter().filter_map(|k| of(k)).min();
    let renew_after = if data.is_empty() {
        None
    } else {
        leaves
            .iter()
            .map(|k| {
                let (from, to) = data.get(k).and_then(|pem| validity(pem)).unwrap_or_default();
                from + (to - from) * 2 / 3
            })
            .min()
    };
    let ca = data.get(CA_CERT).and_then(|b| rotation::newest_ca_not_after(b));
    let ca_from = data.get(CA_CERT).and_then(|b| validity(&rotation::newest_ca(b)?));
    // A CA that does not read is due at once (as a leaf is).
    let ca_renew_after = if data.is_empty() {
        None
    } else {
        Some(ca_from.map_or(chrono::DateTime::UNIX_EPOCH, |(from, to)| from + (to - from) / 2))
    };
    Expiry { ca, ca_renew_after, members, renew_after }
}

/// The `notAfter` of the first certificate in `pem`.
pub fn not_after(pem: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    validity(pem).map(|(_, to)| to)
}

/// The `notBefore` and `notAfter` of the first certificate in `pem`.
pub fn validity(pem: &str) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    der::validity(der.as_ref())
}

/// Just enough DER to find a certificate's validity: Certificate ::=
/// SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, … }, … }.
/// Every length is checked against what is left; anything else is `None`.
mod der {
    use chrono::{DateTime, NaiveDateTime, Utc};

    /// One tag-length-value: (tag, content, what follows).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, content, rest) = tlv(input)?;
        (t == tag).then_some((content, rest))
    }

    /// `notBefore` and `notAfter`.
    pub fn validity(cert: &[u8]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        const SEQUENCE: u8 = 0x30;
        let (certificate, _) = expect(cert, SEQUENCE)?;
        let (mut tbs, _) = expect(certificate, SEQUENCE)?;
        if tbs.first() == Some(&0xa0) {
            tbs = tlv(tbs)?.2;
        }
        let (_serial, rest) = expect(tbs, 0x02)?;
        let (_signature, rest) = expect(rest, SEQUENCE)?;
        let (_issuer, rest) = expect(rest, SEQUENCE)?;
        let (validity, _) = expect(rest, SEQUENCE)?;
        let (from_tag, not_before, rest) = tlv(validity)?;
        let (to_tag, not_after, _) = tlv(rest)?;
        Some((time(from_tag, not_before)?, time(to_tag, not_after)?))
    }

    fn time(tag: u8, value: &[u8]) -> Option<DateTime<Utc>> {
        let text = std::str::from_utf8(value).ok()?;
        let full = match (tag, text.len()) {
            // UTCTime YYMMDDHHMMSSZ: 50–99 are 19xx (RFC 5280).
            (0x17, 13) => format!("{}{text}", if text[..2].parse::<u8>().ok()? >= 50 { "19" } else { "20" }),
            // GeneralizedTime YYYYMMDDHHMMSSZ.
            (0x18, 15) => text.to_string(),
            _ => return None,
        };
        let naive = NaiveDateTime::parse_from_str(full.strip_suffix('Z')?, "%Y%m%d%H%M%S").ok()?;
        Some(naive.and_utc())
    }
}

/// PEM certificate and key of one identity plus the pair's CA (one or more
/// CA certificates: while a CA is rotated, the old and the new).
#[derive(Clone, PartialEq, Eq)]
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

/// Server side: present `id`, require a client certificate from the same
/// CA (material that never changes; see [`Material`] for the kind that
/// does).
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    Material::new(id)?.server_config()
}

/// Client side: present `id`, trust only the pair's CA.
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    Material::new(id)?.client_config()
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
        let m = generate_pair_material("db", "prod", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let (c, k) = member_cert_key(Member::Primary);
        server_config(&identity(&m, &c, &k)).unwrap();
        client_config(&identity(&m, CLIENT_CERT, CLIENT_KEY)).unwrap();
        assert!(m[CA_KEY].contains("PRIVATE KEY"));
    }

    #[test]
    fn the_expiry_of_generated_material_is_read_from_the_certificates() {
        let m = generate_pair_material("db", "prod", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let e = expiry(&m);
        let (ca, members) = (e.ca.unwrap(), e.members.unwrap());
        let years = |t: chrono::DateTime<chrono::Utc>| (t - chrono::Utc::now()).num_days() / 365;
        // The CA is made for 10 years, the leaves for 5 (to the first of a month).
        assert!((9..=10).contains(&years(ca)), "{ca}");
        assert!((4..=5).contains(&years(members)), "{members}");
        assert!(members < ca);
        // Garbage in any entry is left out, never a panic.
        let mut bad = m.clone();
        bad.insert(CA_CERT.into(), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
        assert_eq!(expiry(&bad).ca, None);
        assert_eq!(expiry(&bad).members, Some(members));
        assert_eq!(expiry(&BTreeMap::new()), Expiry::default());
    }

    fn end(cert: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
        der::validity(cert).map(|(_, to)| to)
    }

    #[test]
    fn the_der_reader_refuses_every_truncation_and_reads_both_time_forms() {
        let m = generate_pair_material("db", "prod", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let der = CertificateDer::pem_slice_iter(m[CA_CERT].as_bytes()).next().unwrap().unwrap().to_vec();
        let whole = end(&der).unwrap();
        for cut in 0..der.len() {
            // A truncated certificate either still holds its validity (the
            // signature was cut) or reads as nothing; it never panics.
            if let Some(t) = end(&der[..cut]) {
                assert_eq!(t, whole);
            }
        }
        // Hand-made: SEQUENCE { SEQUENCE { INTEGER 1, SEQ {}, SEQ {}, SEQ { UTCTime, GeneralizedTime } } }.
        let validity = |a: &[u8], b: &[u8]| {
            let mut v = vec![0x17, a.len() as u8];
            v.extend_from_slice(a);
            v.extend_from_slice(&[0x18, b.len() as u8]);
            v.extend_from_slice(b);
            let mut tbs = vec![0x02, 1, 1, 0x30, 0, 0x30, 0, 0x30, v.len() as u8];
            tbs.extend(v);
            let mut cert = vec![0x30, tbs.len() as u8];
            cert.extend(tbs);
            let mut out = vec![0x30, cert.len() as u8];
            out.extend(cert);
            out
        };
        let t = end(&validity(b"491231235959Z", b"20501231235959Z")).unwrap();
        assert_eq!(t.to_rfc3339(), "2050-12-31T23:59:59+00:00");
        assert_eq!(end(&validity(b"491231235959Z", b"2050123123595Z")), None, "a short time");
        assert_eq!(end(&validity(b"491231235959Z", b"20501331235959Z")), None, "month 13");
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let id = Identity { ca: "nope".into(), cert: "nope".into(), key: "nope".into() };
        assert!(matches!(server_config(&id), Err(TlsError::BadPem(_))));
    }
}
