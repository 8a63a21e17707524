//! Whole-system behaviour on a LAN: four `pbft-node run` replicas, each on a
//! host of its own (a network namespace with its own address, see
//! `support::netns`), and the test's gateway client in the root namespace
//! reaching them across the switch. This is what loopback cannot give: mDNS
//! discovery, and a host cut off the network while its process runs on.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN, for `ip netns`) and
//! iproute2: elsewhere each test says "skipping: …" and passes, unless `CI`
//! is set, where it fails.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pbft_node::net::client::{Client, ClientEvent};
use pbft_node::pbft::Config;
use pbft_node::wire::{Digest, JobId, Operation, ReplyBody};
use support::netns::{self, Lan};
use support::{job_log, wait_connected, JobLog, Testnet};

/// Every replica listens on this port of its own host's address.
const PORT: u16 = 7000;
const ALL: [usize; 4] = [0, 1, 2, 3];
/// How long a host stays cut off (at least), under a steady load: long
/// enough for TCP to back off its retransmissions, as on a real LAN.
const CUT: Duration = Duration::from_secs(6);
/// One request every this long while a host is cut off.
const LOAD_EVERY: Duration = Duration::from_millis(200);
/// Long enough for every TCP connection to and from the host to be dead
/// (retransmissions backed off to seconds) when it is healed.
const LONG_CUT: Duration = Duration::from_secs(20);

/// How replicas find each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Discovery {
    /// No `--bootstrap`, no `addr` in the membership: mDNS alone (on by
    /// default, as they listen beyond loopback).
    Mdns,
    /// Replicas 1–3 are given replica 0's address (mDNS on as well).
    Bootstrap,
}

/// Four hosts on a LAN, and the testnet (keys, membership, data and log
/// dirs, the one-at-a-time lock) of the replicas they run.
struct Hosts {
    // Dropped in this order: the Lan kills what runs in it and removes
    // itself while the testnet still holds the lock.
    lan: Lan,
    net: Testnet,
}

impl Hosts {
    /// `None` when this machine cannot make network namespaces (and `CI` is
    /// not set).
    fn new(gateways: usize) -> Option<Hosts> {
        // The lock first: one testnet at a time, and one Lan with it.
        let net = Testnet::new(gateways);
        let lan = netns::lan_or_skip(4)?;
        Some(Hosts { lan, net })
    }

    fn addr(&self, i: usize) -> String {
        format!("/ip4/{}/tcp/{PORT}", self.lan.host_ip(i))
    }

    /// Starts replica `i` on host `i`, listening on the host's address.
    fn start(&mut self, i: usize, discovery: Discovery) {
        let mut cmd = self.net.replica_command(i);
        cmd.args(["--listen", &self.addr(i)]);
        if discovery == Discovery::Bootstrap && i != 0 {
            cmd.args(["--bootstrap", &self.addr(0)]);
        }
        self.net.procs[i] = Some(self.lan.run(i, &cmd).expect("pbft-node starts in its namespace"));
    }

    fn start_all(&mut self, discovery: Discovery) {
        for i in 0..4 {
            self.start(i, discovery);
        }
    }

    /// Member gateway `g`'s client, given replica 0's address only. It runs
    /// in the root namespace, where mDNS would multicast on the machine's
    /// real interfaces too, so it does not use it.
    fn client(&self, g: usize) -> Client {
        self.net.client_via(self.net.gateway_keys[g].clone(), false, vec![self.addr(0)])
    }

    /// Replica `i`'s own log file.
    fn replica_log(&self, i: usize) -> String {
        let peer = self.net.replica_keys[i].public().to_peer_id();
        std::fs::read_to_string(self.net.log_dir().join(format!("pbft-node-{peer}.log"))).unwrap_or_default()
    }

    fn job_logs(&self) -> Vec<JobLog> {
        (0..4).map(|i| job_log(&self.net.data_dir(i))).collect()
    }

    /// K: replicas checkpoint (and may drop their log) every K slots.
    fn checkpoint_interval(&self) -> u64 {
        Config::new(self.net.membership.network_id(), self.net.membership.replica_ids()).checkpoint_interval
    }
}

/// What the gateway saw of its requests, and when.
#[derive(Default)]
struct Seen {
    /// f + 1 replicas said ordered, as this job, at this time.
    ordered: HashMap<Digest, (JobId, Instant)>,
    /// The views replicas were in when they answered ordered (accepted or
    /// duplicate), per request.
    answered_in: HashMap<Digest, BTreeSet<u64>>,
    results: HashMap<Digest, BTreeSet<usize>>,
}

impl Seen {
    fn take(&mut self, e: ClientEvent) {
        match e {
            ClientEvent::Ordered { request, job, .. } => {
                self.ordered.entry(request).or_insert((job, Instant::now()));
            }
            ClientEvent::Reply { replica, reply } => match reply.msg.body {
                ReplyBody::Accepted { .. } | ReplyBody::Duplicate { .. } => {
                    self.answered_in.entry(reply.msg.request).or_default().insert(reply.msg.view);
                }
                ReplyBody::Result { .. } => {
                    self.results.entry(reply.msg.request).or_default().insert(replica);
                }
                _ => {}
            },
            ClientEvent::Refused { number, reason, .. } => panic!("request {number} refused: {reason:?}"),
            ClientEvent::Consensus { .. } => {}
        }
    }

    fn all_ordered(&self, requests: &[Digest]) -> bool {
        requests.iter().all(|d| self.ordered.contains_key(d))
    }

    fn all_results_from(&self, requests: &[Digest], replicas: &[usize]) -> bool {
        requests.iter().all(|d| self.results.get(d).is_some_and(|r| replicas.iter().all(|i| r.contains(i))))
    }

    /// The highest sequence number a request of ours was ordered at.
    fn max_seq(&self) -> u64 {
        self.ordered.values().map(|(job, _)| job.seq).max().unwrap_or(0)
    }
}

/// Takes events until `done` holds, failing after `within`.
async fn until(client: &mut Client, seen: &mut Seen, within: Duration, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(seen) {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(e)) => seen.take(e),
            Ok(None) => panic!("client stopped"),
            Err(_) => panic!("{what}: not within {within:?}"),
        }
    }
}

/// Takes events for `wait`.
async fn take_for(client: &mut Client, seen: &mut Seen, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, client.next_event()).await {
        seen.take(e);
    }
}

/// Submits requests `numbers` (each pinned to a commit of its own).
async fn submit(client: &Client, numbers: std::ops::Range<u64>) -> Vec<Digest> {
    let mut digests = Vec::new();
    for n in numbers {
        let op =
            Operation::Run { repo: "file:///repo".into(), git_ref: "master".into(), commit: Some(format!("{n:040x}")) };
        let req = client.request(n, Some(format!("delivery-{n}")), op);
        digests.push(req.msg.digest());
        client.submit(req).await;
    }
    digests
}

/// Submits a request every `every` from `*next` on until `end`, taking
/// events meanwhile: a steady load. At most `(end - now) / every + 1`.
async fn trickle_until(
    client: &mut Client,
    seen: &mut Seen,
    next: &mut u64,
    end: Instant,
    every: Duration,
) -> Vec<Digest> {
    let mut digests = Vec::new();
    while Instant::now() < end {
        digests.extend(submit(client, *next..*next + 1).await);
        *next += 1;
        take_for(client, seen, every.min(end.saturating_duration_since(Instant::now()))).await;
    }
    digests
}

/// Submits waves of requests from `*next` on, each once the last is ordered,
/// until a request is ordered at sequence number `seq` or beyond.
async fn load_past(client: &mut Client, seen: &mut Seen, next: &mut u64, seq: u64, within: Duration) -> Vec<Digest> {
    const WAVE: u64 = 4;
    let deadline = Instant::now() + within;
    let mut digests = Vec::new();
    while seen.max_seq() < seq {
        let wave = submit(client, *next..*next + WAVE).await;
        *next += WAVE;
        let left = deadline.saturating_duration_since(Instant::now());
        until(client, seen, left, &format!("ordered up to slot {seq}"), |s| s.all_ordered(&wave)).await;
        digests.extend(wave);
    }
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_lan_find_each_other_by_mdns_with_no_address_given() {
    let Some(mut hosts) = Hosts::new(1) else { return };
    // Not counting the wait for the one-at-a-time lock.
    let started = Instant::now();
    // No replica knows any other's address: only mDNS can bring them
    // together (the client knows replica 0 alone, and replica 0 nobody).
    hosts.start_all(Discovery::Mdns);
    let mut client = hosts.client(0);
    wait_connected(&client, Duration::from_secs(30)).await;
    let connected = started.elapsed();

    let requests = submit(&client, 1..21).await;
    let mut seen = Seen::default();
    until(&mut client, &mut seen, Duration::from_secs(30), "ordered and run by all four", |s| {
        s.all_ordered(&requests) && s.all_results_from(&requests, &ALL)
    })
    .await;
    client.shutdown().await;
    hosts.net.stop_all();

    for i in ALL {
        let log = hosts.replica_log(i);
        assert!(log.lines().any(|l| l.contains("swarm up") && l.contains("mdns=true")), "replica {i} ran mDNS");
    }
    let logs = hosts.job_logs();
    assert_eq!(logs[0].1.len(), requests.len(), "replica 0 logged every job");
    for (i, log) in logs.iter().enumerate().skip(1) {
        assert_eq!(log, &logs[0], "replica {i}'s job log differs from replica 0's");
    }
    netns::report(&format!(
        "mDNS: the client reached all 4 replicas {:.1} s after start; 20 requests ordered by all 4 in {:.1} s",
        connected.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}

/// Cuts backup 3 off for at least `cut` while a request comes every
/// `every`, heals it, and waits (at most `catch_up_within`) for it to run
/// the jobs ordered after healing. `past_checkpoint`: the others order past
/// a checkpoint meanwhile, so they drop slots replica 3 misses and it must
/// catch up by state transfer; otherwise they keep every slot and it catches
/// up by retransmission, running every job it missed.
async fn backup_cut_off_under_load(past_checkpoint: bool, cut: Duration, every: Duration, catch_up_within: Duration) {
    let Some(mut hosts) = Hosts::new(1) else { return };
    // Not counting the wait for the one-at-a-time lock.
    let started = Instant::now();
    hosts.start_all(Discovery::Bootstrap);
    let mut client = hosts.client(0);
    wait_connected(&client, Duration::from_secs(30)).await;
    let mut seen = Seen::default();
    let warm = submit(&client, 1..11).await;
    until(&mut client, &mut seen, Duration::from_secs(30), "ordered and run by all four", |s| {
        s.all_ordered(&warm) && s.all_results_from(&warm, &ALL)
    })
    .await;

    hosts.lan.cut(3);
    let cut_at = Instant::now();
    let mut next = 11;
    let k = hosts.checkpoint_interval();
    let mut during = Vec::new();
    if past_checkpoint {
        // Past two checkpoints: one is stable above all replica 3 ran.
        during = load_past(&mut client, &mut seen, &mut next, 2 * k + 1, Duration::from_secs(30)).await;
    } else {
        // 10 before, at most cut / every + 1 now, 10 after: fewer than a
        // checkpoint interval, so no slot is dropped.
        assert!(10 + (cut.as_millis() / every.as_millis() + 1) + 10 < u128::from(k));
    }
    during.extend(trickle_until(&mut client, &mut seen, &mut next, cut_at + cut, every).await);
    until(&mut client, &mut seen, Duration::from_secs(30), "ordered and run by the three others", |s| {
        s.all_ordered(&during) && s.all_results_from(&during, &[0, 1, 2])
    })
    .await;
    let cut_for = cut_at.elapsed();
    let during_seqs = seen.max_seq();

    hosts.lan.heal(3);
    let healed_at = Instant::now();
    let after = submit(&client, next..next + 10).await;
    // Slots learnt by state transfer are not run by the one that learnt them.
    let runs_on_3: Vec<Digest> = if past_checkpoint { after.clone() } else { [&during[..], &after].concat() };
    until(&mut client, &mut seen, catch_up_within, "the healed backup runs the latest jobs", |s| {
        s.all_ordered(&after) && s.all_results_from(&after, &ALL) && s.all_results_from(&runs_on_3, &[3])
    })
    .await;
    let catch_up = healed_at.elapsed();
    client.shutdown().await;
    hosts.net.stop_all();

    let logs = hosts.job_logs();
    for i in [1, 2] {
        assert_eq!(logs[i], logs[0], "replica {i}'s job log differs from replica 0's");
    }
    let all_jobs = warm.len() + during.len() + after.len();
    assert_eq!(logs[0].1.len(), all_jobs, "replica 0 logged every job");
    let transferred = hosts.replica_log(3).contains("state transfer: adopted");
    if past_checkpoint {
        assert!(transferred, "replica 3 adopted a stable checkpoint");
        assert_eq!(logs[3].0, logs[0].0, "replica 3 reached the same last batch");
        for (job, record) in &logs[3].1 {
            assert_eq!(logs[0].1.get(job), Some(record), "job {job} differs on replica 3");
        }
        let after_jobs: BTreeSet<JobId> = after.iter().map(|d| seen.ordered[d].0).collect();
        assert!(after_jobs.iter().all(|j| logs[3].1.contains_key(j)), "replica 3 logged the jobs after healing");
    } else {
        assert!(!transferred, "no slot was dropped: replica 3 needed no state transfer");
        assert_eq!(logs[3], logs[0], "replica 3's job log differs from replica 0's");
    }
    netns::report(&format!(
        "backup 3 cut off for {:.1} s ({} requests, up to slot {during_seqs}, ordered by the other three); \
         after healing it caught up in {:.1} s{}; test took {:.1} s",
        cut_for.as_secs_f64(),
        during.len(),
        catch_up.as_secs_f64(),
        if transferred { " by state transfer" } else { ", running every job it missed" },
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_cut_off_under_load_catches_up_by_retransmission_once_healed() {
    backup_cut_off_under_load(false, CUT, LOAD_EVERY, Duration::from_secs(40)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_cut_off_past_a_checkpoint_catches_up_by_state_transfer_once_healed() {
    backup_cut_off_under_load(true, CUT, LOAD_EVERY, Duration::from_secs(40)).await;
}

/// Cut off for 20 s, a host's TCP connections are dead: its peers' and its
/// own retransmissions have backed off to several seconds, and the sockets
/// would take many minutes to fail. Pings find the dead connections within
/// seconds, they are closed, and the dialers reconnect as soon as the cable
/// is back: the backup runs the latest jobs within seconds of healing (about
/// 1.5 s here; 7–8 s while dead connections went unnoticed, hence the
/// bound). A request every 600 ms keeps all it missed within one checkpoint
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_cut_off_for_20_s_reconnects_and_catches_up_within_seconds_once_healed() {
    backup_cut_off_under_load(false, LONG_CUT, Duration::from_millis(600), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_is_replaced_by_a_view_change_and_rejoins_once_healed() {
    let Some(mut hosts) = Hosts::new(1) else { return };
    // Not counting the wait for the one-at-a-time lock.
    let started = Instant::now();
    hosts.start_all(Discovery::Bootstrap);
    let mut client = hosts.client(0);
    wait_connected(&client, Duration::from_secs(30)).await;
    let mut seen = Seen::default();
    let warm = submit(&client, 1..11).await;
    until(&mut client, &mut seen, Duration::from_secs(30), "ordered and run by all four in view 0", |s| {
        s.all_ordered(&warm) && s.all_results_from(&warm, &ALL)
    })
    .await;

    // The primary of view 0 is cut off, running on: these requests wait for
    // the backups' timers, their VIEW-CHANGEs and replica 1's NEW-VIEW.
    hosts.lan.cut(0);
    let cut_at = Instant::now();
    let during = submit(&client, 11..31).await;
    until(&mut client, &mut seen, Duration::from_secs(40), "ordered and run without the primary", |s| {
        s.all_ordered(&during) && s.all_results_from(&during, &[1, 2, 3])
    })
    .await;
    let first_ordered = during.iter().map(|d| seen.ordered[d].1).min().unwrap();
    let view_change = first_ordered - cut_at;
    for d in &during {
        let views = &seen.answered_in[d];
        assert!(views.iter().all(|v| *v >= 1), "request {d} ordered in a later view, not in {views:?}");
    }
    // The new view goes on ordering a steady load.
    let mut next = 31;
    let more = trickle_until(&mut client, &mut seen, &mut next, cut_at + CUT, LOAD_EVERY).await;
    until(&mut client, &mut seen, Duration::from_secs(30), "ordered in the new view", |s| {
        s.all_ordered(&more) && s.all_results_from(&more, &[1, 2, 3])
    })
    .await;
    let cut_for = cut_at.elapsed();
    assert!(
        seen.max_seq() + 10 < hosts.checkpoint_interval(),
        "the old primary must catch up without state transfer for all logs to match"
    );

    // Back on the LAN, the old primary learns the new view and runs the
    // latest jobs with everyone.
    hosts.lan.heal(0);
    let healed_at = Instant::now();
    let after = submit(&client, next..next + 10).await;
    until(&mut client, &mut seen, Duration::from_secs(40), "the old primary runs the latest jobs", |s| {
        s.all_ordered(&after) && s.all_results_from(&after, &ALL)
    })
    .await;
    let rejoin = healed_at.elapsed();
    let view = seen.answered_in.values().flatten().max().copied().unwrap_or(0);
    client.shutdown().await;
    hosts.net.stop_all();

    let logs = hosts.job_logs();
    let all_jobs = warm.len() + during.len() + more.len() + after.len();
    assert_eq!(logs[0].1.len(), all_jobs, "every job, on the old primary too");
    for (i, log) in logs.iter().enumerate().skip(1) {
        assert_eq!(log, &logs[0], "replica {i}'s job log differs from replica 0's");
    }
    netns::report(&format!(
        "primary 0 cut off for {:.1} s: first request ordered in a new view (view {view} at the end) \
         {:.1} s after the cut; healed, it ran the latest jobs {:.1} s later; test took {:.1} s",
        cut_for.as_secs_f64(),
        view_change.as_secs_f64(),
        rejoin.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}
