//! The failover bench's first peer: Debian's keepalived, a VRRP pair with
//! `advert_int 1` holding a virtual address, as a classic active/standby
//! appliance runs it. Two network namespaces (the members) and a third (the
//! client) on one bridge; each member runs keepalived and the same test
//! application hapair's members run, on the same port. keepalived tells the
//! application its role through its `notify` script, which writes the same
//! role files the hapair agent writes (with no deadline: keepalived has no
//! lease), and checks the application every second (`vrrp_script`, one
//! failure is enough) — the way keepalived is set up for a service.
//!
//! The client is the same as hapair's (`harness/probe.rs`): a keep-alive
//! connection to the virtual address, unique ids, every acknowledgement
//! stamped on the bench's clock. The outage is its longest silence from its
//! last acknowledgement before the fault until it has been served steadily
//! (no 250 ms break) for 2 s — keepalived has no epoch to wait for. Faults, as hapair's series:
//! - `confirmed`: kill -9 of the master's application;
//! - `frozen`: every process of the master stopped (SIGSTOP);
//! - `partitioned`: every packet to and from the master dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::probe::Probe;

pub const CLIENT_NETNS: &str = "/var/run/netns/hapair-ka-client";
const NS: [&str; 2] = ["hapair-ka-1", "hapair-ka-2"];
const VIP: &str = "10.213.77.100";
const PORT: u16 = 8080;

/// Why the peer cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    (!Path::new("/usr/sbin/keepalived").exists()).then(|| "install keepalived (make bench-tools)".to_string())
}

fn sh(script: &str) -> Result<String, String> {
    let out = Command::new("sh").arg("-c").arg(script).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{script}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The pair, running; torn down when dropped.
pub struct Pair {
    dir: PathBuf,
    keepalived: Vec<Child>,
    apps: Vec<Option<Child>>,
    app_bin: PathBuf,
}

/// Member `i`'s name, as its application answers (`x-hapair-member`).
pub fn member(i: usize) -> String {
    format!("ka{}", i + 1)
}

fn teardown_net() {
    for ns in NS.iter().chain(std::iter::once(&"hapair-ka-client")) {
        let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
    }
}

impl Pair {
    pub fn start(app_bin: &Path) -> Result<Self, String> {
        teardown_net();
        let dir = std::env::temp_dir().join(format!("hapair-bench-keepalived-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // The client's namespace holds the bridge; each member hangs on it
        // by a veth pair.
        let mut net = String::from(
            "set -e; ip netns add hapair-ka-client; ip -n hapair-ka-client link add br0 type bridge; \
             ip -n hapair-ka-client addr add 10.213.77.10/24 dev br0; ip -n hapair-ka-client link set br0 up; \
             ip -n hapair-ka-client link set lo up;",
        );
        for (i, ns) in NS.iter().enumerate() {
            net += &format!(
                "ip netns add {ns}; ip link add ka{i} netns hapair-ka-client type veth peer name eth0 netns {ns}; \
                 ip -n hapair-ka-client link set ka{i} master br0 up; \
                 ip -n {ns} addr add 10.213.77.{}/24 dev eth0; ip -n {ns} link set eth0 up; ip -n {ns} link set lo up;",
                i + 1
            );
        }
        sh(&net)?;
        let mut pair = Pair { dir, keepalived: Vec::new(), apps: vec![None, None], app_bin: app_bin.to_path_buf() };
        for (i, ns) in NS.iter().enumerate() {
            pair.write_config(i)?;
            pair.start_app(i)?;
            let d = pair.dir.join(member(i));
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "/usr/sbin/keepalived", "--dont-fork", "--log-console", "--vrrp"])
                .arg("--use-file")
                .arg(d.join("keepalived.conf"))
                .arg("--pid")
                .arg(d.join("keepalived.pid"))
                .arg("--vrrp_pid")
                .arg(d.join("vrrp.pid"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("keepalived.log")).map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("keepalived: {e}"))?;
            pair.keepalived.push(child);
        }
        Ok(pair)
    }

    fn write_config(&self, i: usize) -> Result<(), String> {
        let d = self.dir.join(member(i));
        std::fs::create_dir_all(d.join("run")).map_err(|e| e.to_string())?;
        // The role files as hapair's agent writes them: epoch and deadline
        // first when becoming master, role first when leaving. The epoch is
        // the wall clock in ms (keepalived has no epoch), the deadline far
        // away (keepalived has no lease).
        let notify = format!(
            "#!/bin/sh\nrun={run}\ncase \"$3\" in\n  MASTER) date +%s%3N > $run/epoch.tmp && mv $run/epoch.tmp $run/epoch; \
             echo 1000000000 > $run/deadline.tmp && mv $run/deadline.tmp $run/deadline; \
             echo active > $run/role.tmp && mv $run/role.tmp $run/role ;;\n  *) echo standby > $run/role.tmp && mv $run/role.tmp $run/role ;;\nesac\n",
            run = d.join("run").display()
        );
        let check = format!(
            "#!/bin/bash\nexec 3<>/dev/tcp/127.0.0.1/{PORT} || exit 1\nprintf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3\nread -t 1 -r status <&3\n[[ \"$status\" == *\" 200 \"* ]]\n"
        );
        let conf = format!(
            "global_defs {{\n  router_id {name}\n  enable_script_security\n  script_user root\n}}\n\
             vrrp_script app {{\n  script \"{check}\"\n  interval 1\n  timeout 1\n  fall 1\n  rise 1\n}}\n\
             vrrp_instance bench {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 77\n  priority {prio}\n  advert_int 1\n\
               virtual_ipaddress {{\n    {VIP}/24\n  }}\n  track_script {{\n    app\n  }}\n  notify \"{notify}\"\n}}\n",
            name = member(i),
            check = d.join("check.sh").display(),
            notify = d.join("notify.sh").display(),
            prio = 150 - i * 50,
        );
        for (file, text) in [("notify.sh", notify), ("check.sh", check), ("keepalived.conf", conf)] {
            std::fs::write(d.join(file), text).map_err(|e| e.to_string())?;
        }
        sh(&format!("chmod 755 {0}/notify.sh {0}/check.sh; echo standby > {0}/run/role", d.display()))?;
        Ok(())
    }

    /// Member `i`'s application, with its own hostname (the name it
    /// answers with).
    fn start_app(&mut self, i: usize) -> Result<(), String> {
        let d = self.dir.join(member(i));
        let child = Command::new("ip")
            .args(["netns", "exec", NS[i], "unshare", "--uts", "sh", "-c"])
            .arg(format!(
                "hostname {} && exec {} --listen 0.0.0.0:{PORT} --run-dir {}",
                member(i),
                self.app_bin.display(),
                d.join("run").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("application: {e}"))?;
        self.apps[i] = Some(child);
        Ok(())
    }

    /// The member whose application says `active`, if one does.
    fn master(&self) -> Option<usize> {
        (0..2).find(|&i| {
            std::fs::read_to_string(self.dir.join(member(i)).join("run/role")).is_ok_and(|r| r.trim() == "active")
        })
    }

    fn pids(&self, i: usize) -> Vec<u32> {
        sh(&format!("ip netns pids {}", NS[i]))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn inject(&mut self, fault: super::Fault, i: usize) {
        match fault {
            super::Fault::Confirmed => {
                if let Some(mut app) = self.apps[i].take() {
                    // `ip netns exec` execs: the child is the application.
                    let _ = app.kill();
                    let _ = app.wait();
                }
            }
            super::Fault::Frozen => {
                for p in self.pids(i) {
                    let _ = sh(&format!("kill -STOP {p}"));
                }
            }
            super::Fault::Partitioned => {
                let _ = sh(&format!(
                    "ip netns exec {0} nft add table inet cut && ip netns exec {0} nft add chain inet cut in '{{ type filter hook input priority -300; policy drop; }}' && ip netns exec {0} nft add chain inet cut out '{{ type filter hook output priority -300; policy drop; }}'",
                    NS[i]
                ));
            }
            _ => unreachable!("keepalived has no switchover"),
        }
    }

    fn undo(&mut self, fault: super::Fault, i: usize) -> Result<(), String> {
        match fault {
            super::Fault::Confirmed => self.start_app(i),
            super::Fault::Frozen => {
                for p in self.pids(i) {
                    let _ = sh(&format!("kill -CONT {p}"));
                }
                Ok(())
            }
            _ => sh(&format!("ip netns exec {} nft delete table inet cut", NS[i])).map(|_| ()),
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for i in 0..2 {
            for p in self.pids(i) {
                let _ = sh(&format!("kill -CONT {p}; kill -9 {p}"));
            }
        }
        for c in self.keepalived.iter_mut().chain(self.apps.iter_mut().flatten()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        teardown_net();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One series of `runs` faults on a keepalived pair: each run's client
/// outage (ms), and the runs that did not complete.
pub async fn series(
    app_bin: &Path,
    fault: super::Fault,
    runs: usize,
    rng: &mut fastrand::Rng,
) -> (Vec<f64>, Vec<String>) {
    let (mut outages, mut failed) = (Vec::new(), Vec::new());
    let mut pair = match Pair::start(app_bin) {
        Ok(p) => p,
        Err(e) => {
            failed.push(format!("the keepalived pair did not start: {e}"));
            return (outages, failed);
        }
    };
    let vip: std::net::SocketAddr = format!("{VIP}:{PORT}").parse().unwrap();
    let client = Probe::start_in(vip, CLIENT_NETNS);
    for run in 0..runs {
        // Settled: one master, serving the client.
        let start = Instant::now();
        let master = loop {
            if let Some(m) = pair.master()
                && client
                    .wait_for(Instant::now(), Duration::from_millis(500), |a| a.member == member(m))
                    .await
                    .is_some()
            {
                break Some(m);
            }
            if start.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(m) = master else {
            failed.push(format!("run {run}: no master serving within 60 s"));
            break;
        };
        // A random phase of the advertisement cycle (1 s).
        tokio::time::sleep(Duration::from_millis(rng.u64(0..1000))).await;
        let at = Instant::now();
        pair.inject(fault, m);
        match client.outage_after(at, Duration::from_millis(250), Duration::from_secs(2), Duration::from_secs(60)).await
        {
            Some(ms) => {
                eprintln!("keepalived {} run {run}: {} faulted, outage {ms:.0} ms", fault.name(), member(m));
                outages.push(ms);
            }
            None => failed.push(format!("run {run}: not served steadily again within 60 s")),
        }
        if let Err(e) = pair.undo(fault, m) {
            failed.push(format!("run {run}: could not undo the fault: {e}"));
            break;
        }
        // The old master returns as backup (nopreempt); let it settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    client.stop().await;
    (outages, failed)
}
