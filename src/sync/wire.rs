//! What the agents say to each other about files.
//!
//! - `GET /v1/sync/manifest?dir=D&have=G` → [`ManifestReply`] (only from an
//!   active or draining member; `have` is the generation the caller holds,
//!   which lets the active count what its standby still lacks);
//! - `GET /v1/sync/file?dir=D&path=P` → the file's bytes, streamed, with
//!   header `x-hapair-size` (the size when opened: never more is sent) and,
//!   when the file did not change while it was read, trailers naming the
//!   exact version sent ([`SENT_SIZE`] and friends, see [`sent_entry`]);
//! - `POST /v1/sync/take?dir=D&path=P&quarantine=0|1` → the member fetches
//!   that file from its peer (a resync's copy-back or newest-wins update);
//! - `POST /v1/sync` → the standby syncs every directory now.
//!
//! Everything received is checked before use: [`ManifestReply::check`]
//! refuses paths that could leave the directory and absurd sizes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::{Entry, Files};
use super::path::{self, Refusal};
use super::state::{MAX_LINEAGE, Point};

/// Header: the size of the file when the source opened it.
pub const SIZE_HEADER: &str = "x-hapair-size";
/// Trailers: the version of the file the body holds, sent only when the
/// file's size and mtime did not change while it was read. A file that
/// keeps changing (an append-only log written every few milliseconds)
/// still syncs: the standby takes the version it was sent, whatever the
/// (older) manifest said.
pub const SENT_SIZE: &str = "x-hapair-sent-size";
pub const SENT_HASH: &str = "x-hapair-sent-hash";
pub const SENT_MTIME: &str = "x-hapair-sent-mtime";
pub const SENT_MODE: &str = "x-hapair-sent-mode";

/// The trailers for a version of a file.
pub fn sent_trailers(e: &Entry) -> hyper::HeaderMap {
    let mut h = hyper::HeaderMap::new();
    for (k, v) in [
        (SENT_SIZE, e.size.to_string()),
        (SENT_HASH, e.hash.clone()),
        (SENT_MTIME, e.mtime.to_string()),
        (SENT_MODE, e.mode.to_string()),
    ] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    h
}

/// The version a peer says it sent; `None` when the trailers are absent or
/// malformed (then the copy must match the manifest instead).
pub fn sent_entry(h: &hyper::HeaderMap) -> Option<Entry> {
    let get = |k: &str| h.get(k)?.to_str().ok();
    let hash = get(SENT_HASH)?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Entry {
        size: get(SENT_SIZE)?.parse().ok().filter(|s| *s <= i64::MAX as u64)?,
        mtime: get(SENT_MTIME)?.parse().ok()?,
        mode: get(SENT_MODE)?.parse::<u32>().ok()? & 0o777,
        hash: hash.to_ascii_lowercase(),
    })
}

/// Largest manifest accepted (bytes of JSON): about a million files.
pub const MAX_MANIFEST: usize = 256 * 1024 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestReply {
    pub dir: String,
    /// The source's current point and lineage.
    pub point: Point,
    pub lineage: Vec<Point>,
    /// Digest of `files`.
    pub digest: String,
    pub files: Files,
    /// For every synced directory, the point at which it last changed.
    pub changed_at: BTreeMap<String, Point>,
}

impl ManifestReply {
    /// Decodes and checks a peer's manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m: ManifestReply = serde_json::from_slice(bytes)?;
        m.check()?;
        Ok(m)
    }

    pub fn check(&self) -> Result<(), DecodeError> {
        for p in self.files.keys() {
            path::volume_path(&self.dir, p).map_err(|r| DecodeError::Path(p.chars().take(200).collect(), r))?;
        }
        if self.lineage.len() > MAX_LINEAGE {
            return Err(DecodeError::Lineage);
        }
        if self.files.values().any(|e| e.size > i64::MAX as u64 || e.hash.len() != 64) {
            return Err(DecodeError::Entry);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest names a refused path {0:?}: {1}")]
    Path(String, Refusal),
    #[error("manifest lineage too long")]
    Lineage,
    #[error("manifest entry with an impossible size or hash")]
    Entry,
}

/// `key=value` from a query string, percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).and_then(percent_decode)
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sent_version_round_trips_and_malformed_trailers_are_ignored() {
        let e = Entry { size: 11, mtime: -5, mode: 0o640, hash: "ab".repeat(32) };
        assert_eq!(sent_entry(&sent_trailers(&e)), Some(e.clone()));
        for (k, v) in [
            (SENT_HASH, "zz".repeat(32)),
            (SENT_HASH, "ab".into()),
            (SENT_SIZE, "-1".into()),
            (SENT_SIZE, u64::MAX.to_string()),
            (SENT_MTIME, "soon".into()),
            (SENT_MODE, "rwx".into()),
        ] {
            let mut h = sent_trailers(&e);
            h.insert(k, v.parse().unwrap());
            assert_eq!(sent_entry(&h), None, "{k}: {v}");
        }
        assert_eq!(sent_entry(&hyper::HeaderMap::new()), None);
    }

    #[test]
    fn paths_survive_the_query_string_and_garbage_does_not_decode() {
        for p in ["a b/ü.txt", "x&y=z", "100%", "a+b"] {
            let q = format!("dir=up&path={}", encode(p));
            assert_eq!(query_param(Some(&q), "path").as_deref(), Some(p));
        }
        assert_eq!(query_param(Some("path=%zz"), "path"), None);
        assert_eq!(query_param(Some("path=%c3"), "path"), None);
        assert_eq!(query_param(Some("pathx=1"), "path"), None);
    }

    #[test]
    fn a_manifest_naming_a_path_outside_is_refused() {
        let mut m = ManifestReply {
            dir: "up".into(),
            point: Point::default(),
            lineage: vec![],
            digest: String::new(),
            files: Files::new(),
            changed_at: BTreeMap::new(),
        };
        let e = crate::sync::manifest::Entry { size: 1, mtime: 0, mode: 0o644, hash: "0".repeat(64) };
        m.files.insert("ok/file".into(), e.clone());
        assert!(m.check().is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "a//b", "a/./b"] {
            let mut m = m.clone();
            m.files.insert(bad.into(), e.clone());
            assert!(matches!(m.check(), Err(DecodeError::Path(..))), "{bad}");
        }
        m.dir = ".".into();
        m.files.insert(".hapair/sync.json".into(), e);
        assert!(matches!(m.check(), Err(DecodeError::Path(_, Refusal::Reserved))));
        assert!(ManifestReply::decode(b"{\"dir\": 1}").is_err());
    }
}
