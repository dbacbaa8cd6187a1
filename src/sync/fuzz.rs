//! Fuzz targets' bodies: what a peer (or a user) can hand the agent, and
//! the invariants that must hold whatever it is. `make fuzz` runs them
//! under libFuzzer (`e2e/fuzz`); the unit tests replay their corpus and
//! random input, so `make test` checks them too. Each panics on a breach.

use super::path::{self, STATE_DIR};
use super::wire::{self, ManifestReply};

/// A path that came through the checks stays inside its directory.
fn assert_contained(vpath: &str) {
    assert!(!vpath.is_empty() && !vpath.starts_with('/'), "absolute or empty: {vpath:?}");
    assert!(vpath.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "escapes: {vpath:?}");
    assert_ne!(vpath.split('/').next(), Some(STATE_DIR), "into the state directory: {vpath:?}");
    assert!(!vpath.contains('\0'), "NUL: {vpath:?}");
}

/// A peer's manifest: decoding never panics, and whatever decodes names
/// only files inside the directory, with sane sizes and hashes.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = ManifestReply::decode(data) {
        for (rel, e) in &m.files {
            assert_contained(&path::volume_path(&m.dir, rel).expect("decode checked every path"));
            assert!(e.size <= i64::MAX as u64 && e.hash.len() == 64);
        }
        // What decodes encodes and decodes to the same thing.
        let again = ManifestReply::decode(&serde_json::to_vec(&m).unwrap()).expect("re-decodes");
        assert_eq!(again, m);
    }
}

/// A (directory, path) pair from a request: accepted only inside.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (dir, rel) = text.split_once('\n').unwrap_or((".", &text));
    if let Ok(v) = path::volume_path(dir, rel) {
        assert_contained(&v);
    }
    // And through the query string the way the agents send it.
    let q = format!("dir={}&path={}", wire::encode(dir), wire::encode(rel));
    assert_eq!(wire::query_param(Some(&q), "path").as_deref(), Some(rel));
    assert_eq!(wire::query_param(Some(&q), "dir").as_deref(), Some(dir));
}

/// A resync order's query string: only sane orders parse, and they
/// round-trip.
pub fn order(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(o) = crate::proto::ResyncOrder::from_query(Some(&text)) {
        assert!(path::check(&o.label).is_ok() && !o.label.contains('/'), "label {:?}", o.label);
        assert_eq!(crate::proto::ResyncOrder::from_query(Some(&o.to_query())), Some(o));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Every file of `e2e/fuzz/corpus/<target>/` through `f`.
    fn replay(target: &str, f: fn(&[u8])) -> usize {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/fuzz/corpus").join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            f(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        n
    }

    #[test]
    fn the_fuzz_corpus_holds_every_invariant() {
        assert!(replay("manifest", super::manifest) > 0);
        assert!(replay("path", super::path) > 0);
        assert!(replay("order", super::order) > 0);
        // The seeds include well-formed input, so the fuzzer starts deep.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/fuzz/corpus");
        let valid = std::fs::read(root.join("manifest/valid.json")).unwrap();
        assert_eq!(super::ManifestReply::decode(&valid).unwrap().files.len(), 2);
        let order = std::fs::read_to_string(root.join("order/valid")).unwrap();
        assert!(crate::proto::ResyncOrder::from_query(Some(&order)).is_some());
    }

    proptest! {
        #[test]
        fn random_input_holds_every_invariant(data in proptest::collection::vec(any::<u8>(), 0..512), text in ".{0,128}") {
            super::manifest(&data);
            super::path(&data);
            super::path(text.as_bytes());
            super::order(&data);
            super::order(text.as_bytes());
        }
    }
}
