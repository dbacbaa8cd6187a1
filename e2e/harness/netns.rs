//! Pod networking for the kubelet stand-in: each pod gets a network
//! namespace with one veth into the bridge `hapair0`, and an address from
//! 10.213.0.0/16. The API server refuses loopback addresses in
//! EndpointSlices, and a namespace per pod is also what makes "this member's
//! network" something a test can cut. The host side of the bridge,
//! 10.213.255.254, is where the pods find their API proxies.

use std::net::Ipv4Addr;
use std::process::Command;

pub const BRIDGE: &str = "hapair0";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 255, 254);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Creates the bridge once per machine; racing creators are fine.
pub fn ensure_bridge() -> Result<(), String> {
    if ip(&["link", "show", BRIDGE]).is_err() {
        let _ = ip(&["link", "add", BRIDGE, "type", "bridge"]);
        let _ = ip(&["addr", "add", &format!("{HOST_IP}/16"), "dev", BRIDGE]);
    }
    ip(&["link", "set", BRIDGE, "up"])
}

/// Addresses for this test process: a /24 chosen by PID, so concurrent test
/// binaries do not collide.
pub fn pod_ip(n: u32) -> Ipv4Addr {
    let third = (std::process::id() % 250) as u8;
    Ipv4Addr::new(10, 213, third, (n % 250 + 2) as u8)
}

pub fn ns_name(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("hp-{}-{}", o[2], o[3])
}

/// Creates the namespace of a pod with address `addr`.
pub fn create(addr: Ipv4Addr) -> Result<String, String> {
    let ns = ns_name(addr);
    let o = addr.octets();
    let host_if = format!("hv{}x{}", o[2], o[3]);
    let _ = ip(&["netns", "del", &ns]);
    let _ = ip(&["link", "del", &host_if]);
    ip(&["netns", "add", &ns])?;
    ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    ip(&["link", "set", &host_if, "master", BRIDGE, "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &ns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", &HOST_IP.to_string()])?;
    Ok(ns)
}

pub fn delete(ns: &str) {
    let _ = ip(&["netns", "del", ns]);
}
