//! A LAN of "hosts" on this one machine, each a Linux network namespace with
//! an address of its own: what loopback cannot give (mDNS, a host cut off by
//! its cable while its process keeps running). Needs root (CAP_NET_ADMIN,
//! CAP_SYS_ADMIN for `ip netns`), `ip` from iproute2 and, to kill what runs
//! in the hosts should the test process die outright, `setpriv` (util-linux).
//!
//! The switch is a bridge inside a namespace of its own, not in the root
//! namespace: with `br_netfilter` loaded (Docker loads it, and sets the
//! FORWARD policy to DROP), frames bridged in the root namespace go through
//! the machine's iptables and host-to-host traffic is dropped. The switch
//! namespace has an empty ruleset, so nothing of the machine's firewall is
//! touched. The test process reaches the hosts through one veth from the
//! root namespace into the switch, holding the LAN's `.1` address.
//!
//! ```text
//!  root ns: pbft<pid>-<k> 10.a.b.1/24 ──┐
//!                          switch ns: bridge "sw" ── h0 ──▶ host ns 0: eth0 10.a.b.10/24
//!                                                ── h1 ──▶ host ns 1: eth0 10.a.b.11/24 …
//! ```
//!
//! It only ever adds: one /24 in 10.0.0.0/8 that no route of the machine
//! overlaps, one link in the root namespace and namespaces, all named
//! `pbft<pid>-<k>…`. It never changes the machine's interfaces, addresses,
//! routes or firewall. Dropping the [`Lan`] kills every process inside its
//! hosts and deletes all of it; a new one first removes what a crashed test
//! process (a `pid` no longer alive) left behind.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Everything we create starts with this, then `<pid>-<k>`.
const PREFIX: &str = "pbft";
/// Host `i` is at `.(HOST_OFFSET + i)`; the test process at `.1`.
const HOST_OFFSET: u8 = 10;
/// Interface names hold at most IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;
/// Lans made by this process so far: names and subnets differ per Lan.
static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub enum LanError {
    /// This machine or user cannot create network namespaces.
    Unavailable(String),
    /// A namespace could be made but not the rest: a bug or a broken setup.
    Setup(String),
}

pub struct Lan {
    /// `pbft<pid>-<k>`: the root namespace's link; namespaces add a suffix.
    name: String,
    /// The LAN is `10.{subnet[0]}.{subnet[1]}.0/24`.
    subnet: [u8; 2],
    hosts: usize,
    pdeathsig: bool,
}

/// A [`Lan`] of `hosts` hosts, or `None` (with a line saying why) when this
/// machine cannot make one. With `CI` set, it must: a panic instead.
pub fn lan_or_skip(hosts: usize) -> Option<Lan> {
    match Lan::new(hosts) {
        Ok(lan) => Some(lan),
        Err(LanError::Unavailable(why)) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: cannot create network namespaces ({why}); run as root with iproute2");
            None
        }
        Err(LanError::Unavailable(why)) => panic!("cannot create network namespaces ({why}), and CI is set"),
        Err(LanError::Setup(why)) => panic!("setting up the LAN: {why}"),
    }
}

impl Lan {
    pub fn new(hosts: usize) -> Result<Lan, LanError> {
        assert!(hosts <= 200, "one /24");
        sweep_leftovers();
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}-{k}");
        assert!(name.len() <= IFNAME_MAX, "{name} is too long for an interface name");
        // From here on, Drop removes whatever part was made.
        let mut lan = Lan { name, subnet: [0, 0], hosts: 0, pdeathsig: has_setpriv() };
        let sw = lan.switch_ns();
        // First, so a machine without `ip` or the right to use it skips.
        ip(&["netns", "add", &sw]).map_err(LanError::Unavailable)?;
        lan.subnet = free_subnet(pid.wrapping_mul(31).wrapping_add(k)).map_err(LanError::Setup)?;
        let root_addr = format!("{}/24", lan.own_ip());
        let setup: &[&[&str]] = &[
            &["-n", &sw, "link", "add", "name", "sw", "type", "bridge", "mcast_snooping", "0"],
            &["-n", &sw, "link", "set", "dev", "sw", "up"],
            &["link", "add", "name", &lan.name, "type", "veth", "peer", "name", "uplink", "netns", &sw],
            &["-n", &sw, "link", "set", "dev", "uplink", "master", "sw", "up"],
            &["addr", "add", &root_addr, "dev", &lan.name],
            &["link", "set", "dev", &lan.name, "up"],
        ];
        for args in setup {
            ip(args).map_err(LanError::Setup)?;
        }
        for i in 0..hosts {
            let ns = lan.host_ns(i);
            ip(&["netns", "add", &ns]).map_err(LanError::Setup)?;
            lan.hosts = i + 1;
            let port = format!("h{i}");
            let addr = format!("{}/24", lan.host_ip(i));
            let setup: &[&[&str]] = &[
                &["-n", &sw, "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns],
                &["-n", &sw, "link", "set", "dev", &port, "master", "sw", "up"],
                &["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
                &["-n", &ns, "link", "set", "dev", "eth0", "up"],
                &["-n", &ns, "link", "set", "dev", "lo", "up"],
                // mDNS sends to 224.0.0.251; a default route instead would let
                // a host's traffic leave through the machine.
                &["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"],
            ];
            for args in setup {
                ip(args).map_err(LanError::Setup)?;
            }
        }
        Ok(lan)
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The test process's address on the LAN.
    pub fn own_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 1)
    }

    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], HOST_OFFSET + i as u8)
    }

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }

    fn host_ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.name)
    }

    /// Spawns `cmd` (its program, arguments, environment and directory)
    /// inside host `i`, stdio to /dev/null. The process is killed when the
    /// thread that spawned it ends (PR_SET_PDEATHSIG, through `setpriv`), so
    /// a test killed outright leaves nothing running; spawn from the test's
    /// own thread. `ip netns exec` execs in place: the child's pid is the
    /// program's own, for signals.
    pub fn run(&self, i: usize, cmd: &Command) -> std::io::Result<Child> {
        let ns = self.host_ns(i);
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", &ns]);
        if self.pdeathsig {
            wrapped.args(["setpriv", "--pdeathsig", "KILL", "--"]);
        }
        wrapped.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
    }

    /// Pulls host `i`'s cable: its switch port goes down, so it reaches no
    /// one and no one reaches it. Its processes keep running, their sockets
    /// open (TCP retransmits into the void), as on a real LAN.
    pub fn cut(&self, i: usize) {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        ip(&["-n", &self.switch_ns(), "link", "set", "dev", &format!("h{i}"), "down"]).expect("cut");
    }

    /// Plugs host `i`'s cable back in.
    pub fn heal(&self, i: usize) {
        assert!(i < self.hosts, "host {i} of {}", self.hosts);
        ip(&["-n", &self.switch_ns(), "link", "set", "dev", &format!("h{i}"), "up"]).expect("heal");
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Shows what a cross-host test observed (timings of view changes and
/// catch-ups): printed, and appended as a line to the file
/// `PBFT_CI_TIMINGS` names, if set (CI shows it, as `cargo test` hides the
/// output of tests that pass).
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Some(file) = std::env::var_os("PBFT_CI_TIMINGS") {
        use std::io::Write as _;
        let mut f = std::fs::File::options().create(true).append(true).open(file).expect("the timings file opens");
        writeln!(f, "{line}").expect("timings written");
    }
}

/// Runs `ip ARGS`; its stdout, or what went wrong.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`ip {}`: {}", args.join(" "), err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Our namespaces present now (one name per line of `ip netns list`, which
/// may add " (id: N)").
fn our_namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| owner_pid(n).is_some())
        .map(String::from)
        .collect()
}

/// The pid in a name we made (`pbft<pid>-<k>` or `pbft<pid>-<k>-…`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let k = rest.split('-').next()?;
    if pid.is_empty() || k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Kills every process inside namespace `ns` (ours by its name) and waits,
/// briefly, for them to be gone: a namespace with processes in it outlives
/// `ip netns del`, and so do its links.
fn kill_inside(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> =
            ip(&["netns", "pids", ns]).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("netns: processes {pids:?} still in {ns}");
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the namespaces and root link of the Lan named `name`.
fn remove(name: &str) {
    let mine = |n: &str| n == name || n.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'));
    let namespaces: Vec<String> = our_namespaces().into_iter().filter(|n| mine(n)).collect();
    for ns in &namespaces {
        kill_inside(ns);
    }
    for ns in &namespaces {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("netns: {e}");
        }
    }
    // Deleting the switch namespace takes the root end of its veth along,
    // asynchronously; delete it here in case it is still there.
    if ip(&["link", "show", "dev", name]).is_ok() {
        let _ = ip(&["link", "del", "dev", name]);
    }
}

/// Removes what Lans of test processes that are gone left behind (a test
/// killed outright runs no Drop). Lans of live processes are left alone.
fn sweep_leftovers() {
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    // "7: pbft123-0@if2: <…>": the name, up to '@' or ':'.
    let link_names = links.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n));
    let mut lans: Vec<String> = link_names.filter(|n| owner_pid(n).is_some()).map(String::from).collect();
    for ns in our_namespaces() {
        // The Lan's name is the namespace's without its last "-…".
        if let Some((lan, _)) = ns.rsplit_once('-') {
            lans.push(lan.to_string());
        }
    }
    lans.sort();
    lans.dedup();
    for lan in lans {
        let Some(pid) = owner_pid(&lan) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing {lan}*, left by process {pid}");
            remove(&lan);
        }
    }
}

/// A /24 in 10.0.0.0/8 that overlaps no route of the machine (any table:
/// local addresses are routes too), starting from `seed`.
fn free_subnet(seed: u32) -> Result<[u8; 2], String> {
    let routes = ip(&["-4", "-o", "route", "show", "table", "all"])?;
    let taken: Vec<(u32, u32)> = routes.lines().filter_map(route_prefix).filter(|&(_, len)| len > 0).collect();
    for attempt in 0..512u32 {
        let x = seed.wrapping_add(attempt.wrapping_mul(7919));
        // 10.200.0.0–10.249.255.0: away from the low 10/8 ranges clouds,
        // VPNs and container networks usually take.
        let subnet = [200 + (x % 50) as u8, ((x / 50) % 256) as u8];
        let net = u32::from(Ipv4Addr::new(10, subnet[0], subnet[1], 0));
        let overlaps = |&(prefix, len): &(u32, u32)| {
            let mask = u32::MAX << (32 - len.min(24));
            net & mask == prefix & mask
        };
        if !taken.iter().any(overlaps) {
            return Ok(subnet);
        }
    }
    Err("no free /24 in 10.200.0.0/16–10.249.0.0/16".into())
}

/// The destination of one line of `ip -o route show table all`, as
/// (address, prefix length); `default` is 0.0.0.0/0.
fn route_prefix(line: &str) -> Option<(u32, u32)> {
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    let mut words = line.split_whitespace();
    let mut dest = words.next()?;
    if TYPES.contains(&dest) {
        dest = words.next()?;
    }
    if dest == "default" {
        return Some((0, 0));
    }
    let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
    Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len.parse().ok().filter(|l| *l <= 32)?))
}
