//! The OCI archive `make image` builds from the Containerfile: a valid image
//! layout whose digests match, one layer holding a static `hapair` that runs,
//! a non-root user, the reference the chart installs by default — and the
//! same manifest digest when it is built again.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn archive() -> PathBuf {
    PathBuf::from(std::env::var("HAPAIR_IMAGE_ARCHIVE").expect("run with `make image-check`"))
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digests");
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), hex, "blob {digest} does not hash to its name");
    bytes
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn the_image_is_a_static_non_root_hapair_on_an_empty_base() {
    let dir = std::env::temp_dir().join(format!("hapair-image-{}", std::process::id()));
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let ok = Command::new("tar").arg("-xf").arg(archive()).arg("-C").arg(&layout).status().unwrap();
    assert!(ok.success());
    assert_eq!(json(&std::fs::read(layout.join("oci-layout")).unwrap())["imageLayoutVersion"], "1.0.0");
    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    // The whole reference, as buildah writes it and as `ctr images import`
    // names the image it imports.
    let reference = std::env::var("HAPAIR_IMAGE_REF").unwrap();
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], reference.as_str());

    let manifest_bytes = blob(&layout, manifests[0]["digest"].as_str().unwrap());
    assert_eq!(manifests[0]["size"], manifest_bytes.len());
    let manifest = json(&manifest_bytes);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    let user = config["config"]["User"].as_str().unwrap();
    let uid: u32 = user.split(':').next().unwrap().parse().expect("a numeric user (runAsNonRoot can check it)");
    assert_ne!(uid, 0, "runs as root");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/hapair"]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["operator"]));
    let (_, tag) = reference.rsplit_once(':').unwrap();
    assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], tag);
    assert_eq!(config["created"], "1970-01-01T00:00:00Z", "a build time would make every build differ");
    assert!(config["config"]["Labels"].get("io.buildah.version").is_none(), "the builder's version is in the image");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer on an empty base");
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    let gz = dir.join("layer.tar.gz");
    std::fs::write(&gz, &layer).unwrap();
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    assert!(Command::new("tar").arg("-xzf").arg(&gz).arg("-C").arg(&rootfs).status().unwrap().success());
    // The uncompressed layer is what diff_ids name.
    let tar = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap().stdout;
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{:x}", Sha256::digest(&tar)));
    let mut files: Vec<String> =
        walk(&rootfs).iter().map(|p| p.strip_prefix(&rootfs).unwrap().display().to_string()).collect();
    files.sort();
    assert_eq!(files, ["etc/group", "etc/passwd", "hapair"], "nothing but the binary and its user");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(&format!(":{uid}:")), "{passwd}");

    let bin = rootfs.join("hapair");
    let elf = Command::new("readelf").arg("-l").arg(&bin).output().unwrap();
    assert!(!String::from_utf8_lossy(&elf.stdout).contains("INTERP"), "dynamically linked: the image has no libc");
    // The test-only fault hooks (crash points, a stepped clock) are not
    // compiled in: their strings exist only in a fault-injection build.
    let bytes = std::fs::read(&bin).unwrap();
    for hook in ["HAPAIR_FAULT_CRASH_FILE", "HAPAIR_FAULT_EXIT_AT", "clock-offset-ms"] {
        assert!(!bytes.windows(hook.len()).any(|w| w == hook.as_bytes()), "the image has the fault hook {hook}");
    }
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("hapair {}", env!("CARGO_PKG_VERSION")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The manifest digest an archive's index names.
fn manifest_digest(archive: &Path) -> String {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg("index.json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json(&out.stdout)["manifests"][0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn the_image_built_again_from_the_same_binary_has_the_same_digest() {
    let again = PathBuf::from(std::env::var("HAPAIR_IMAGE_ARCHIVE_AGAIN").expect("run with `make image-check`"));
    let first = manifest_digest(&archive());
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(manifest_digest(&again), first, "two builds of one binary differ");
    // The archives themselves too: the nodes import an archive again only
    // when its bytes change.
    assert_eq!(std::fs::read(archive()).unwrap(), std::fs::read(&again).unwrap(), "the archives' bytes differ");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
