//! Whole-system behaviour over real processes: four `pbft-node run`
//! replicas on 127.0.0.1, found through replica 0's address alone, driven by
//! the library's gateway client. Every test is bounded in time and kills
//! what it started.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pbft_node::net::client::{Client, ClientEvent};
use pbft_node::net::{Channel, NON_MEMBERS_MAX};
use pbft_node::pbft::Message;
use pbft_node::wire::{limits, Digest, JobId, Operation, ReplyBody};
use support::{job_log, wait_connected, JobLog, Testnet};

/// What a gateway saw of its requests.
#[derive(Default)]
struct Seen {
    ordered: HashMap<Digest, JobId>,
    results: HashMap<Digest, BTreeSet<usize>>,
    consensus: Vec<Message>,
}

impl Seen {
    fn take(&mut self, e: ClientEvent) {
        match e {
            ClientEvent::Ordered { request, job, .. } => {
                self.ordered.insert(request, job);
            }
            ClientEvent::Reply { replica, reply } => {
                if let ReplyBody::Result { .. } = reply.msg.body {
                    self.results.entry(reply.msg.request).or_default().insert(replica);
                }
            }
            ClientEvent::Consensus { message, .. } => self.consensus.push(message),
            ClientEvent::Refused { number, reason, .. } => panic!("request {number} refused: {reason:?}"),
        }
    }

    fn all_ordered(&self, requests: &[Digest]) -> bool {
        requests.iter().all(|d| self.ordered.contains_key(d))
    }

    fn all_results_from(&self, requests: &[Digest], replicas: &[usize]) -> bool {
        requests.iter().all(|d| self.results.get(d).is_some_and(|r| replicas.iter().all(|i| r.contains(i))))
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

const REQUESTS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_ordered_every_replica_logs_the_same_jobs_and_serves_its_results() {
    let started = Instant::now();
    let mut net = Testnet::new(1);
    net.start_all();
    let mut client = net.client(0, false);
    wait_connected(&client, Duration::from_secs(30)).await;

    let requests = submit(&client, 1..REQUESTS + 1).await;
    let mut seen = Seen::default();
    until(&mut client, &mut seen, Duration::from_secs(60), "all requests ordered", |s| s.all_ordered(&requests)).await;
    let jobs: BTreeSet<JobId> = seen.ordered.values().copied().collect();
    assert_eq!(jobs.len(), requests.len(), "every request is a job of its own");
    until(&mut client, &mut seen, Duration::from_secs(60), "every replica's result for every job", |s| {
        s.all_results_from(&requests, &[0, 1, 2, 3])
    })
    .await;
    client.shutdown().await;

    // A restarted gateway collects the verdicts' material again: every
    // replica serves its signed results from its store.
    let mut restarted = net.client(0, false);
    wait_connected(&restarted, Duration::from_secs(30)).await;
    let asked = &requests[..10];
    for d in asked {
        restarted.fetch_replies(*d).await;
    }
    let mut again = Seen::default();
    until(&mut restarted, &mut again, Duration::from_secs(30), "stored results served", |s| {
        s.all_results_from(asked, &[0, 1, 2, 3])
    })
    .await;
    restarted.shutdown().await;
    net.stop_all();

    let logs: Vec<JobLog> = (0..4).map(|i| job_log(&net.data_dir(i))).collect();
    assert_eq!(logs[0].1.len(), REQUESTS as usize, "replica 0 logged every job");
    assert_eq!(logs[0].1.keys().copied().collect::<BTreeSet<_>>(), jobs, "the jobs the gateway was told");
    for (i, log) in logs.iter().enumerate().skip(1) {
        assert_eq!(log, &logs[0], "replica {i}'s job log differs from replica 0's");
    }
    let logs = net.logs();
    assert!(logs.contains("ordered batch"), "one log line per ordered batch");
    eprintln!("ordered {REQUESTS} requests on 4 processes in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_outsiders_bad_signatures_and_oversized_messages_are_rejected() {
    // Gateways: 0 honest, 1 faulty member.
    let mut net = Testnet::new(2);
    net.start_all();
    let mut client = net.client(0, false);
    wait_connected(&client, Duration::from_secs(30)).await;

    // Each bad message from an identity of its own: a peer's gossip is
    // ignored for a while after its first rejected message.
    let outsider_key = libp2p_identity::Keypair::generate_ed25519();
    let outsider = net.client_with_key(outsider_key.clone(), false);
    let garbage = net.client_with_key(libp2p_identity::Keypair::generate_ed25519(), false);
    let oversized = net.client_with_key(libp2p_identity::Keypair::generate_ed25519(), false);
    let mut forger = net.client(1, false);
    for c in [&outsider, &garbage, &oversized, &forger] {
        wait_connected(c, Duration::from_secs(30)).await;
    }
    // Let gossipsub learn the subscriptions.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let op = |n: u64| Operation::Run {
        repo: "file:///repo".into(),
        git_ref: "master".into(),
        commit: Some(format!("{n:040x}")),
    };
    // A request signed by a non-member, in its own name.
    outsider.publish_raw(Channel::Requests, outsider.request(1, None, op(1)).bytes().to_vec()).await;
    // Garbage on every topic.
    for ch in Channel::ALL {
        garbage.publish_raw(ch, b"\x00not cbor at all\xff".to_vec()).await;
    }
    // The honest gateway's request with its signature's last byte flipped,
    // published by another member.
    let mut forged = client.request(1, None, op(1)).bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    forger.publish_raw(Channel::Requests, forged).await;
    let penalised_at = tokio::time::Instant::now();
    // The forger's own valid request, published once (no retransmission)
    // while its gossip is ignored: never ordered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ignored = forger.request(1, None, op(101));
    forger.publish_raw(Channel::Requests, ignored.bytes().to_vec()).await;
    // Over our bound (under gossipsub's own, so it reaches validation).
    oversized.publish_raw(Channel::Consensus, vec![0xa5; limits::ENVELOPE_BYTES_MAX + 1]).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = net.logs();
    let rejected = logs.lines().filter(|l| l.contains("rejected gossip message")).count();
    assert!(rejected >= 4, "each bad message is rejected at validation (saw {rejected} rejections)");
    assert!(logs.contains("signed by") || logs.contains("bad signature"), "the outsider's and forger's signatures");
    assert!(logs.contains("over the bound"), "the oversized message");

    // Nothing changed: the honest gateway's requests are jobs 1.. as if
    // nothing had happened, and nothing else was ordered.
    let requests = submit(&client, 1..11).await;
    let mut seen = Seen::default();
    until(&mut client, &mut seen, Duration::from_secs(60), "honest requests ordered", |s| {
        s.all_ordered(&requests) && s.all_results_from(&requests, &[0, 1, 2, 3])
    })
    .await;
    // Once the penalty is over, the forger's valid gossip counts again.
    tokio::time::sleep_until(penalised_at + pbft_node::net::REJECT_PENALTY + Duration::from_secs(1)).await;
    let forgiven = forger.request(2, None, op(102));
    forger.publish_raw(Channel::Requests, forgiven.bytes().to_vec()).await;
    let forgiven = forgiven.msg.digest();
    let mut forger_seen = Seen::default();
    until(&mut forger, &mut forger_seen, Duration::from_secs(60), "the forger's request after the penalty", |s| {
        s.all_results_from(&[forgiven], &[0, 1, 2, 3])
    })
    .await;
    for c in [client, outsider, garbage, oversized, forger] {
        c.shutdown().await;
    }
    net.stop_all();
    for i in 0..4 {
        let (_, jobs) = job_log(&net.data_dir(i));
        let ordered: Vec<Digest> = jobs.values().map(|(d, _)| *d).collect();
        assert!(!ordered.contains(&ignored.msg.digest()), "replica {i} ordered gossip it was ignoring");
        assert_eq!(ordered.last(), Some(&forgiven), "replica {i}: the forgiven request last");
        assert_eq!(jobs.len(), requests.len() + 1, "replica {i} ordered the honest requests and nothing else");
    }
}

/// (signer, kind, view, seq) of a protocol message, and its bytes.
fn slot(m: &Message) -> ((String, &'static str, u64, u64), Vec<u8>) {
    let (kind, view, seq) = match m {
        Message::PrePrepare(s) => ("pre-prepare", s.msg.view, s.msg.seq),
        Message::Prepare(s) => ("prepare", s.msg.view, s.msg.seq),
        Message::Commit(s) => ("commit", s.msg.view, s.msg.seq),
        Message::Checkpoint(s) => ("checkpoint", 0, s.msg.seq),
        Message::ViewChange(s) => ("view-change", s.msg.view, 0),
        Message::NewView(s) => ("new-view", s.msg.view, 0),
    };
    ((m.signer().to_string(), kind, view, seq), m.bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_killed_under_load_restarts_catches_up_and_never_equivocates() {
    // Gateways: 0 submits, 1 observes the consensus topic.
    let mut net = Testnet::new(2);
    net.start_all();
    let mut client = net.client(0, false);
    let mut observer = net.client(1, true);
    wait_connected(&client, Duration::from_secs(30)).await;
    wait_connected(&observer, Duration::from_secs(30)).await;
    let mut seen = Seen::default();
    let mut watched = Seen::default();

    let first = submit(&client, 1..101).await;
    // Under load: kill -9 a backup while requests are in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.kill(2);
    let during = submit(&client, 101..201).await;
    until(&mut client, &mut seen, Duration::from_secs(60), "ordered by the three left", |s| {
        s.all_ordered(&first) && s.all_ordered(&during)
    })
    .await;
    // Back from its data dir, same key.
    net.start(2);
    let after = submit(&client, 201..251).await;
    until(&mut client, &mut seen, Duration::from_secs(90), "the restarted replica runs the latest jobs", |s| {
        s.all_ordered(&after) && s.all_results_from(&after, &[0, 1, 2, 3])
    })
    .await;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), observer.next_event()).await {
        watched.take(e);
    }
    client.shutdown().await;
    observer.shutdown().await;
    net.stop_all();

    // Never two different signed messages from one signer for one slot.
    let mut by_slot: HashMap<(String, &'static str, u64, u64), BTreeSet<Vec<u8>>> = HashMap::new();
    for m in &watched.consensus {
        let (key, bytes) = slot(m);
        by_slot.entry(key).or_default().insert(bytes);
    }
    assert!(!by_slot.is_empty(), "the observer saw the consensus traffic");
    for (key, versions) in &by_slot {
        assert_eq!(versions.len(), 1, "{key:?} signed {} different ways", versions.len());
    }
    let restarted = net.replica_keys[2].public().to_peer_id().to_string();
    assert!(by_slot.keys().any(|k| k.0 == restarted), "the restarted replica's messages were watched");

    // Its job log matches the others' wherever it has the job (jobs it
    // learnt by state transfer only it never ran, and does not log).
    let logs: Vec<JobLog> = (0..4).map(|i| job_log(&net.data_dir(i))).collect();
    for i in [1, 3] {
        assert_eq!(logs[i], logs[0], "replica {i}'s job log differs from replica 0's");
    }
    assert_eq!(logs[2].0, logs[0].0, "the restarted replica reached the same last batch");
    for (job, record) in &logs[2].1 {
        assert_eq!(logs[0].1.get(job), Some(record), "job {job} differs on the restarted replica");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_a_view_change_and_catches_up_on_restart() {
    let mut net = Testnet::new(1);
    net.start_all();
    let mut client = net.client(0, false);
    wait_connected(&client, Duration::from_secs(30)).await;
    let mut seen = Seen::default();

    let before = submit(&client, 1..51).await;
    until(&mut client, &mut seen, Duration::from_secs(60), "ordered in view 0", |s| s.all_ordered(&before)).await;
    // kill -9 the primary of view 0: the requests after it wait for the
    // backups' timers, a VIEW-CHANGE and replica 1's NEW-VIEW.
    net.kill(0);
    let during = submit(&client, 51..101).await;
    until(&mut client, &mut seen, Duration::from_secs(90), "ordered without the primary", |s| {
        s.all_ordered(&during) && s.all_results_from(&during, &[1, 2, 3])
    })
    .await;
    assert!(net.logs().lines().any(|l| l.contains("ordered batch") && !l.contains("view=0")), "a later view ordered");
    // The old primary comes back, learns the new view and catches up.
    net.start(0);
    let after = submit(&client, 101..121).await;
    until(&mut client, &mut seen, Duration::from_secs(90), "the old primary runs the latest jobs", |s| {
        s.all_ordered(&after) && s.all_results_from(&after, &[0, 1, 2, 3])
    })
    .await;
    let jobs: BTreeSet<JobId> = seen.ordered.values().copied().collect();
    assert_eq!(jobs.len(), 120, "every request is a job of its own");
    client.shutdown().await;
    net.stop_all();

    let logs: Vec<JobLog> = (0..4).map(|i| job_log(&net.data_dir(i))).collect();
    for i in [2, 3] {
        assert_eq!(logs[i], logs[1], "replica {i}'s job log differs from replica 1's");
    }
    assert_eq!(logs[1].1.len(), 120);
    assert_eq!(logs[0].0, logs[1].0, "the old primary reached the same last batch");
    for (job, record) in &logs[0].1 {
        assert_eq!(logs[1].1.get(job), Some(record), "job {job} differs on the old primary");
    }
}

/// Twenty peers outside the membership dial the replicas and keep dialling.
/// Each replica admits a few of them ([`NON_MEMBERS_MAX`] in all) and
/// refuses the rest once the Noise handshake names them; members still
/// connect, and ordering goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_get_a_few_connections_and_members_still_connect_and_order() {
    const OUTSIDERS: usize = 20;
    let started = Instant::now();
    // Gateways: 0 submits from the start, 1 joins once the outsiders are in.
    let mut net = Testnet::new(2);
    net.start_all();
    let mut client = net.client(0, false);
    wait_connected(&client, Duration::from_secs(30)).await;

    let outsiders: Vec<Client> =
        (0..OUTSIDERS).map(|_| net.client_with_key(libp2p_identity::Keypair::generate_ed25519(), false)).collect();
    // Long enough for the admitted ones to find every replica, and for the
    // refused ones to come back a few times (their dialers back off to 2 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    // A refused connection lives for a moment on the outsider's side: the
    // least seen over a few looks is what stays connected.
    let mut held = usize::MAX;
    for _ in 0..5 {
        let mut now = 0;
        for o in &outsiders {
            now += o.connected_replicas().await;
        }
        held = held.min(now);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(held <= 4 * NON_MEMBERS_MAX, "{held} outsider connections held, over 4 × {NON_MEMBERS_MAX}");
    assert!(held >= NON_MEMBERS_MAX, "only {held} outsider connections: a few are admitted, not none");

    // A member connects whatever the outsiders hold, and requests are
    // ordered and run by every replica.
    let late = net.client(1, false);
    wait_connected(&late, Duration::from_secs(15)).await;
    let requests = submit(&client, 1..21).await;
    let mut seen = Seen::default();
    until(&mut client, &mut seen, Duration::from_secs(30), "ordered and run by all four", |s| {
        s.all_ordered(&requests) && s.all_results_from(&requests, &[0, 1, 2, 3])
    })
    .await;
    for c in outsiders.into_iter().chain([client, late]) {
        c.shutdown().await;
    }
    net.stop_all();
    for i in 0..4 {
        let (_, jobs) = job_log(&net.data_dir(i));
        assert_eq!(jobs.len(), requests.len(), "replica {i} ordered every request");
    }
    eprintln!(
        "{OUTSIDERS} outsiders held {held} connections to the 4 replicas (at most {NON_MEMBERS_MAX} each); \
         a member joined and 20 requests were ordered by all 4; test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
