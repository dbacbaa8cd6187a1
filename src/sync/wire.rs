//! What the agents say to each other about files.
//!
//! - `GET /v1/sync/manifest?dir=D&have=G` → [`ManifestReply`] (only from an
//!   active or draining member; `have` is the generation the caller holds,
//!   which lets the active count what its standby still lacks);
//! - `GET /v1/sync/file?dir=D&path=P` → the file's bytes, streamed;
//! - `POST /v1/sync/take?dir=D&path=P&quarantine=0|1` → the member fetches
//!   that file from its peer (a resync's copy-back or newest-wins update);
//! - `POST /v1/sync` → the standby syncs every directory now.
//!
//! Everything received is checked before use: [`ManifestReply::check`]
//! refuses paths that could leave the directory and absurd sizes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::Files;
use super::path::{self, Refusal};
use super::state::{MAX_LINEAGE, Point};

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
