//! Rotating the pair's CA with an overlap, so that nothing ever stops
//! trusting what its peer presents (the manuals' key reset, and the CA's
//! own renewal). Three steps, each written to the pair's TLS Secret and
//! taken only once every running agent has loaded the one before:
//!
//! 1. **Trusting**: a new CA is added to the bundle (`ca.crt` holds the old
//!    and the new), its key kept aside (`ca-next.key`); the certificates in
//!    use are still the old CA's. Agents learn to trust the new CA.
//! 2. **Presenting**: the members' and the operator's certificates are
//!    issued anew by the new CA, whose key becomes `ca.key`; the bundle
//!    still holds both, so an agent on the old certificate and one on the
//!    new trust each other.
//! 3. **Steady**: the old CA leaves the bundle; every agent presents the
//!    new CA's certificate by then.
//!
//! Where each step stands is read from the Secret alone, so an operator
//! restarted in the middle goes on from there.

use std::collections::BTreeMap;

use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use super::{CA_CERT, CA_KEY, TlsError, ca_params};

/// The key of the CA being introduced, while its certificate is only
/// trusted (step 1).
pub const CA_NEXT_KEY: &str = "ca-next.key";

/// Where a CA rotation stands, as the Secret holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// One CA; no rotation under way.
    Steady,
    /// The new CA is in the bundle; the certificates in use are the old one's.
    Trusting,
    /// The certificates in use are the new CA's; the old CA is still trusted.
    Presenting,
}

impl Stage {
    /// In words, for status and Events.
    pub fn words(self) -> &'static str {
        match self {
            Stage::Steady => "steady",
            Stage::Trusting => "agents loading the new CA",
            Stage::Presenting => "agents loading certificates from the new CA",
        }
    }
}

pub fn stage(data: &BTreeMap<String, String>) -> Stage {
    if data.contains_key(CA_NEXT_KEY) {
        Stage::Trusting
    } else if data.get(CA_CERT).is_some_and(|b| fingerprints(b).len() > 1) {
        Stage::Presenting
    } else {
        Stage::Steady
    }
}

/// The SHA-256 of each certificate in `pem`, in hex, in order; a block
/// that does not read as a certificate is left out.
pub fn fingerprints(pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(|c| c.ok())
        .filter(|c| super::der::validity(c).is_some())
        .map(|c| hex(&Sha256::digest(&c)))
        .collect()
}

/// The SHA-256 of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Option<String> {
    fingerprints(pem).into_iter().next()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Step 1: a new CA (made for twice the leaves' lifetime) joins the
/// bundle. Only from `Steady`.
pub fn begin(
    data: &BTreeMap<String, String>,
    pair: &str,
    namespace: &str,
    lifetime_seconds: i64,
) -> Result<BTreeMap<String, String>, TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(pair, namespace, lifetime_seconds)?.self_signed(&key)?;
    let mut out = data.clone();
    let bundle = data.get(CA_CERT).map(|b| pem_blocks(b)).unwrap_or_default();
    out.insert(CA_CERT.into(), bundle + &cert.pem());
    out.insert(CA_NEXT_KEY.into(), key.serialize_pem());
    Ok(out)
}

/// Step 2: the members' and the operator's certificates issued by the new
/// CA, whose key becomes the pair's CA key.
pub fn present(
    data: &BTreeMap<String, String>,
    pair: &str,
    namespace: &str,
    lifetime_seconds: i64,
) -> Result<BTreeMap<String, String>, TlsError> {
    let newest = data.get(CA_CERT).and_then(|b| newest_ca_not_after(b));
    let fresh = super::reissued(data, CA_NEXT_KEY, pair, namespace, lifetime_seconds, newest)?;
    let mut out = data.clone();
    if let Some(next) = out.remove(CA_NEXT_KEY) {
        out.insert(CA_KEY.into(), next);
    }
    out.extend(fresh);
    Ok(out)
}

/// Step 3: only the new CA is trusted.
pub fn finish(data: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = data.clone();
    if let Some(newest) = data.get(CA_CERT).and_then(|b| last_block(b)) {
        out.insert(CA_CERT.into(), newest);
    }
    out
}

/// The `notAfter` of the bundle's newest (last) CA.
pub fn newest_ca_not_after(bundle: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    newest_ca(bundle).and_then(|pem| super::not_after(&pem))
}

/// The `notAfter` of the CA whose key is `ca.key`: the old one while the
/// new is only trusted, the newest otherwise.
pub fn signing_ca_not_after(data: &BTreeMap<String, String>) -> Option<chrono::DateTime<chrono::Utc>> {
    let bundle = blocks(data.get(CA_CERT)?);
    let signing = if stage(data) == Stage::Trusting { bundle.first() } else { bundle.last() };
    signing.and_then(|pem| super::not_after(pem))
}

/// Whether the pair's CA key reads (leaves can be issued by it); one that
/// does not is replaced by a rotation.
pub fn ca_key_reads(data: &BTreeMap<String, String>) -> bool {
    data.get(CA_KEY).is_some_and(|k| KeyPair::from_pem(k).is_ok())
}

/// The bundle's newest (last) CA certificate, as PEM.
pub fn newest_ca(bundle: &str) -> Option<String> {
    last_block(bundle)
}

/// The bundle's certificates that read, each as one PEM block ending in
/// a newline; whatever else the text holds is left out.
fn blocks(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in bundle.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN CERTIFICATE") {
            block = Some(String::new());
        }
        if let Some(b) = block.as_mut() {
            b.push_str(line);
            b.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE")
            && let Some(b) = block.take()
            && !fingerprints(&b).is_empty()
        {
            out.push(b);
        }
    }
    out
}

fn pem_blocks(bundle: &str) -> String {
    blocks(bundle).concat()
}

fn last_block(bundle: &str) -> Option<String> {
    blocks(bundle).pop()
}

#[cfg(test)]
mod tests {
    use super::super::{
        CLIENT_CERT, CLIENT_KEY, DEFAULT_LEAF_LIFETIME_SECONDS, Identity, client_config, generate_pair_material,
        member_cert_key, member_server_name, server_config, server_name,
    };
    use super::*;
    use crate::api::Member;

    fn id(data: &BTreeMap<String, String>, cert: &str, key: &str) -> Identity {
        Identity { ca: data[CA_CERT].clone(), cert: data[cert].clone(), key: data[key].clone() }
    }

    /// A full mutual-TLS handshake in memory: `client` (the operator's
    /// identity in `c`) against the primary's agent (its identity in `s`).
    fn handshake(c: &BTreeMap<String, String>, s: &BTreeMap<String, String>) -> Result<(), rustls::Error> {
        let (sc, sk) = member_cert_key(Member::Primary);
        let client = client_config(&id(c, CLIENT_CERT, CLIENT_KEY)).unwrap();
        let server = server_config(&id(s, &sc, &sk)).unwrap();
        let name = server_name(&member_server_name(Member::Primary, "db", "prod")).unwrap();
        let mut cl = rustls::ClientConnection::new(client, name).unwrap();
        let mut sv = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            cl.write_tls(&mut buf).unwrap();
            sv.read_tls(&mut buf.as_slice()).unwrap();
            sv.process_new_packets()?;
            let mut buf = Vec::new();
            sv.write_tls(&mut buf).unwrap();
            cl.read_tls(&mut buf.as_slice()).unwrap();
            cl.process_new_packets()?;
            if !cl.is_handshaking() && !sv.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("the handshake did not finish".into()))
    }

    #[test]
    fn every_pair_of_neighbouring_steps_trusts_each_other_and_the_ends_do_not() {
        let steady = generate_pair_material("db", "prod", DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        assert_eq!(stage(&steady), Stage::Steady);
        let trusting = begin(&steady, "db", "prod", DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        assert_eq!(stage(&trusting), Stage::Trusting);
        assert_eq!(fingerprints(&trusting[CA_CERT]).len(), 2);
        assert_eq!(trusting[CLIENT_CERT], steady[CLIENT_CERT], "step 1 changes no certificate in use");
        let presenting = present(&trusting, "db", "prod", DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        assert_eq!(stage(&presenting), Stage::Presenting);
        assert_eq!(presenting[CA_KEY], trusting[CA_NEXT_KEY]);
        let done = finish(&presenting);
        assert_eq!(stage(&done), Stage::Steady);
        assert_eq!(fingerprints(&done[CA_CERT]), fingerprints(&trusting[CA_CERT])[1..]);
        assert_ne!(fingerprint(&done[CA_CERT]), fingerprint(&steady[CA_CERT]));

        // Parties one step apart (each agent loads the Secret at its own
        // moment) always complete a handshake, in both directions...
        let steps = [&steady, &trusting, &presenting, &done];
        for w in steps.windows(2) {
            for (a, b) in [(w[0], w[1]), (w[1], w[0])] {
                handshake(a, b).unwrap();
                handshake(a, a).unwrap();
            }
        }
        // ... which is why the steps wait for every agent: two apart, the
        // old CA's certificate meets a party that no longer trusts it.
        assert!(handshake(&steady, &presenting).is_err(), "an agent that never loaded the new CA");
        assert!(handshake(&trusting, &done).is_err());
        assert!(handshake(&steady, &done).is_err());
    }

    #[test]
    fn steps_refuse_what_they_cannot_take_and_the_bundle_reader_skips_garbage() {
        let steady = generate_pair_material("db", "prod", DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        assert!(matches!(present(&steady, "db", "prod", 600), Err(TlsError::BadPem("ca-next.key"))));
        let mut bad = begin(&steady, "db", "prod", 600).unwrap();
        bad.insert(CA_NEXT_KEY.into(), "not a key".into());
        assert!(present(&bad, "db", "prod", 600).is_err());
        let noisy = format!("junk before\n{}trailing junk\n", steady[CA_CERT]);
        assert_eq!(fingerprints(&noisy), fingerprints(&steady[CA_CERT]));
        assert_eq!(pem_blocks(&noisy), steady[CA_CERT].replace("\r\n", "\n"));
        assert_eq!(fingerprints("nothing"), Vec::<String>::new());
        // A block that does not read is not carried into the next bundle.
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let mut broken = steady.clone();
        broken.insert(CA_CERT.into(), format!("{garbage}{}", steady[CA_CERT]));
        let next = begin(&broken, "db", "prod", 600).unwrap();
        assert!(!next[CA_CERT].contains("AAAA"));
        assert_eq!(fingerprints(&next[CA_CERT]).len(), 2);
        broken.insert(CA_CERT.into(), garbage.into());
        assert_eq!(fingerprints(&begin(&broken, "db", "prod", 600).unwrap()[CA_CERT]).len(), 1);
        assert_eq!(fingerprint(&steady[CA_CERT]).map(|f| f.len()), Some(64));
    }

    #[test]
    fn a_short_lived_pair_gets_a_ca_twice_the_leaves_life_and_leaves_within_it() {
        let steady = generate_pair_material("db", "prod", 300).unwrap();
        let e = super::super::expiry(&steady);
        let left = |t: Option<chrono::DateTime<chrono::Utc>>| (t.unwrap() - chrono::Utc::now()).num_seconds();
        assert!((590..=600).contains(&left(e.ca)), "CA: {:?}", e.ca);
        assert!((290..=300).contains(&left(e.members)), "leaves: {:?}", e.members);
        // Half the CA's life: a rotation starts with half of it left.
        assert!((260..=300).contains(&left(e.ca_renew_after)), "{:?}", e.ca_renew_after);
        let presenting = present(&begin(&steady, "db", "prod", 3000).unwrap(), "db", "prod", 3000).unwrap();
        let p = super::super::expiry(&presenting);
        assert!(p.ca > e.ca, "the newest CA counts");
    }
}
