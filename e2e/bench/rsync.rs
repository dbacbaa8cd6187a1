//! The file-sync bench's peer: Debian's rsync on the same trees and the same
//! disk, locally and over ssh to this machine (an sshd the bench starts on a
//! free loopback port with keys of its own, AES-GCM as the cipher), each
//! with and without `--fsync` — hapair fsyncs every file it writes and rsync
//! by default does not, so both are shown.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSH_CIPHER: &str = "aes128-gcm@openssh.com";

/// How rsync reaches the destination.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    Local,
    Ssh(&'a Sshd),
}

pub struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// Why the peer cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    let lacks: Vec<&str> =
        [("rsync", "/usr/bin/rsync"), ("openssh-server", "/usr/sbin/sshd"), ("openssh-client", "/usr/bin/ssh")]
            .into_iter()
            .filter(|(_, path)| !Path::new(path).exists())
            .map(|(package, _)| package)
            .collect();
    (!lacks.is_empty()).then(|| format!("install {} (make bench-tools)", lacks.join(" ")))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Sshd {
    pub fn start(dir: PathBuf) -> Sshd {
        std::fs::create_dir_all(&dir).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        for key in ["host_key", "client_key"] {
            let _ = std::fs::remove_file(dir.join(key));
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(dir.join(key)));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nPidFile {d}/sshd.pid\nCiphers {SSH_CIPHER}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        let sshd = Sshd { child, port, dir };
        let start = Instant::now();
        while !Command::new("ssh")
            .args(sshd.ssh_args())
            .args(["root@127.0.0.1", "true"])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(start.elapsed() < Duration::from_secs(10), "sshd does not accept the bench's key");
            std::thread::sleep(Duration::from_millis(100));
        }
        sshd
    }

    fn ssh_args(&self) -> Vec<String> {
        let key = self.dir.join("client_key");
        [
            "-p",
            &self.port.to_string(),
            "-i",
            &key.display().to_string(),
            "-c",
            SSH_CIPHER,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-T",
            "-x",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rsync -a [--fsync] src/ dst/`, timed.
pub fn rsync(src: &Path, dst: &Path, via: Via<'_>, fsync: bool) -> Duration {
    let mut cmd = Command::new("rsync");
    cmd.arg("-a");
    if fsync {
        cmd.arg("--fsync");
    }
    let to = match via {
        Via::Local => format!("{}/", dst.display()),
        Via::Ssh(sshd) => {
            cmd.arg("-e").arg(format!("ssh {}", sshd.ssh_args().join(" ")));
            format!("root@127.0.0.1:{}/", dst.display())
        }
    };
    cmd.arg(format!("{}/", src.display())).arg(to);
    let t = Instant::now();
    run(&mut cmd);
    t.elapsed()
}

/// The four variants, in print order: name and how.
pub fn variants(sshd: &Sshd) -> [(&'static str, Via<'_>, bool); 4] {
    [
        ("rsync_local", Via::Local, false),
        ("rsync_local_fsync", Via::Local, true),
        ("rsync_ssh", Via::Ssh(sshd), false),
        ("rsync_ssh_fsync", Via::Ssh(sshd), true),
    ]
}
