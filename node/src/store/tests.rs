//! The store against real redb files on disk: what goes in comes back, in
//! order, minus what a stable checkpoint made useless; the job log; damaged
//! files refused at open.

use std::sync::Arc;

use super::*;
use crate::wire::testkit::{digest, Net, XorShift};
use crate::wire::{Checkpoint, Commit, NewView, PrePrepare, Prepare, Request, Signed, ViewChange, WireMessage};

pub(super) fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn seal<T: WireMessage>(net: &Net, replica: usize, msg: T) -> Arc<[u8]> {
    Signed::seal(msg, &net.network(), &net.replicas[replica]).shared_bytes()
}

/// What a record is, as comparable bytes.
fn flat(r: &Record) -> (u8, Vec<u8>) {
    match r {
        Record::Request(b) => (1, b.to_vec()),
        Record::Message(b) => (2, b.to_vec()),
        Record::Stable { seq, state, proof } => {
            let mut v = seq.to_be_bytes().to_vec();
            v.extend_from_slice(state);
            for p in proof {
                v.extend_from_slice(p);
            }
            (0, v)
        }
    }
}

fn flats(records: &[Record]) -> Vec<(u8, Vec<u8>)> {
    records.iter().map(flat).collect()
}

/// A batch at `seq` ordering `requests`, each as a job.
fn batch(seq: u64, requests: &[Signed<Request>]) -> Batch {
    let digests: Vec<Digest> = requests.iter().map(|r| r.msg.digest()).collect();
    Batch {
        seq,
        view: 0,
        batch: crate::wire::batch_digest(&digests),
        requests: digests,
        jobs: requests.iter().enumerate().map(|(i, r)| (JobId { seq, index: i as u32 }, r.clone())).collect(),
    }
}

fn normal_case(net: &Net, seq: u64, request: Digest) -> Vec<Arc<[u8]>> {
    let pp = PrePrepare { view: 0, seq, requests: vec![request] };
    let batch = pp.batch_digest();
    vec![
        seal(net, 0, pp),
        seal(net, 1, Prepare { view: 0, seq, batch }),
        seal(net, 2, Prepare { view: 0, seq, batch }),
        seal(net, 1, Commit { view: 0, seq, batch }),
    ]
}

/// The slots of the protocol messages among `records`.
pub(super) fn slots(records: &[Record]) -> Vec<schema::Slot> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Message(b) => Some(schema::slot_of(b).expect("a protocol message")),
            _ => None,
        })
        .collect()
}

#[test]
fn persisted_records_come_back_in_order_after_reopening() {
    let dir = temp();
    let net = Net::new();
    let requests: Vec<Arc<[u8]>> = (1..=3).map(|n| net.seal_request(n).shared_bytes()).collect();
    let proof = vec![seal(&net, 3, Checkpoint { seq: 4, state: digest(7) })];
    let stable = Record::Stable { seq: 4, state: vec![1, 2, 3].into(), proof };
    let readies: Vec<Vec<Record>> = vec![
        vec![Record::Request(requests[0].clone()), Record::Request(requests[1].clone())],
        normal_case(&net, 5, digest(1)).into_iter().map(Record::Message).collect(),
        vec![
            Record::Message(seal(&net, 0, PrePrepare { view: 0, seq: 6, requests: vec![digest(2)] })),
            Record::Request(requests[2].clone()),
            stable.clone(),
            Record::Message(seal(&net, 2, Checkpoint { seq: 8, state: digest(8) })),
        ],
    ];
    {
        let store = Store::open(dir.path()).unwrap();
        for ready in &readies {
            store.persist(ready).unwrap();
        }
    }
    let store = Store::open(dir.path()).unwrap();
    let got = store.records().unwrap();
    // Stable first, then requests, then messages, each in persisted order.
    let all: Vec<Record> = readies.concat();
    let mut want = vec![flat(&stable)];
    want.extend(all.iter().filter(|r| matches!(r, Record::Request(_))).map(flat));
    want.extend(all.iter().filter(|r| matches!(r, Record::Message(_))).map(flat));
    assert_eq!(flats(&got), want);
    // And restore sees them the same way again: reading twice changes nothing.
    assert_eq!(flats(&store.records().unwrap()), want);
}

#[test]
fn a_stable_checkpoint_drops_old_messages_and_executed_requests_only() {
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    let reqs: Vec<Signed<Request>> = (1..=4).map(|n| net.seal_request(n)).collect();
    store.persist(&reqs.iter().map(|r| Record::Request(r.shared_bytes())).collect::<Vec<_>>()).unwrap();
    for seq in 1..=6 {
        let d = reqs[(seq as usize - 1) % 4].msg.digest();
        store.persist(&normal_case(&net, seq, d).into_iter().map(Record::Message).collect::<Vec<_>>()).unwrap();
    }
    let checkpoints: Vec<Arc<[u8]>> = (0..3).map(|i| seal(&net, i, Checkpoint { seq: 4, state: digest(4) })).collect();
    let above = seal(&net, 3, Checkpoint { seq: 8, state: digest(8) });
    store.persist(&[Record::Message(checkpoints[0].clone()), Record::Message(above.clone())]).unwrap();
    // The job log knows seqs 1 (request 0) and 5 (request 1) were executed.
    assert!(store.record_batch(&batch(1, &reqs[0..1])).unwrap());
    assert!(store.record_batch(&batch(5, &reqs[1..2])).unwrap());

    store.persist(&[Record::Stable { seq: 4, state: vec![4].into(), proof: checkpoints.clone() }]).unwrap();

    let records = store.records().unwrap();
    assert!(matches!(&records[0], Record::Stable { seq: 4, .. }));
    let kept: Vec<Vec<u8>> = records
        .iter()
        .filter_map(|r| match r {
            Record::Request(b) => Some(b.to_vec()),
            _ => None,
        })
        .collect();
    // Request 0 ran at seq 1 ≤ 4: gone. Request 1 ran at seq 5 > 4, requests
    // 2 and 3 never ran: kept.
    let want: Vec<Vec<u8>> = reqs[1..].iter().map(|r| r.bytes().to_vec()).collect();
    assert_eq!(kept, want);
    let slots = slots(&records);
    assert!(slots.iter().all(|s| s.seq > 4), "nothing at or below the checkpoint: {slots:?}");
    assert_eq!(slots.iter().filter(|s| s.seq == 5 || s.seq == 6).count(), 8, "both slots above it whole");
    assert!(slots.iter().any(|s| s.kind == Kind::Checkpoint && s.seq == 8));

    // A batch at or below the checkpoint recorded after it became stable (the
    // driver persists a Ready before recording its batches) drops its
    // requests at once.
    assert!(store.record_batch(&batch(2, &reqs[2..3])).unwrap());
    let requests_left = store.records().unwrap().iter().filter(|r| matches!(r, Record::Request(_))).count();
    assert_eq!(requests_left, 2);

    // An older stable checkpoint than the one held changes nothing.
    store.persist(&[Record::Stable { seq: 2, state: vec![2].into(), proof: vec![] }]).unwrap();
    assert!(matches!(&store.records().unwrap()[0], Record::Stable { seq: 4, .. }));
}

#[test]
fn view_changes_keep_only_the_highest_view() {
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    let vc = |replica: usize, view: u64| {
        let msg = ViewChange {
            view,
            checkpoint_seq: 0,
            checkpoint_state: digest(0),
            checkpoint_proof: vec![],
            prepared: vec![],
        };
        seal(&net, replica, msg)
    };
    let nv = |view: u64| seal(&net, view as usize % 4, NewView { view, view_changes: vec![], pre_prepares: vec![] });
    let messages = |store: &Store| -> Vec<Vec<u8>> {
        store
            .records()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                Record::Message(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect()
    };
    let persist = |m: &Arc<[u8]>| store.persist(&[Record::Message(m.clone())]).unwrap();
    for m in [vc(0, 1), vc(2, 1), vc(3, 1), nv(1), vc(2, 2), vc(3, 2)] {
        persist(&m);
    }
    // View 1 is in place: its NEW-VIEW stays, the VIEW-CHANGEs for it go,
    // and of the moves to view 2 each replica's latest one.
    let (vc_2_2, vc_3_3, nv_1, nv_2) = (vc(2, 2), vc(3, 3), nv(1), nv(2));
    persist(&vc_3_3);
    assert_eq!(messages(&store), [&nv_1, &vc_2_2, &vc_3_3].map(|b| b.to_vec()).to_vec());
    // View 2 is in place: only its NEW-VIEW and the move beyond it remain.
    persist(&nv_2);
    assert_eq!(messages(&store), [&vc_3_3, &nv_2].map(|b| b.to_vec()).to_vec());
}

#[test]
fn record_batch_is_idempotent_and_refuses_another_batch_at_the_same_seq() {
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.last_batch().unwrap(), 0);
    let reqs: Vec<Signed<Request>> = (1..=3).map(|n| net.seal_request(n)).collect();
    let first = batch(1, &reqs[..2]);
    assert!(store.record_batch(&first).unwrap());
    assert!(!store.record_batch(&first).unwrap(), "re-executed after a restart: already there");
    assert_eq!(store.last_batch().unwrap(), 1);

    let other = batch(1, &reqs[1..]);
    let err = store.record_batch(&other).unwrap_err();
    assert!(matches!(err, StoreError::BatchMismatch { seq: 1, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("replica.redb") && text.contains("bug"), "{text}");
    // The refused batch changed nothing.
    let job = store.job(JobId { seq: 1, index: 0 }).unwrap().unwrap();
    assert_eq!(job.request, reqs[0].msg.digest());
    assert_eq!(job.request_bytes, reqs[0].bytes());
    assert_eq!(job.result, None);
    assert_eq!(store.job(JobId { seq: 1, index: 2 }).unwrap(), None);
}

#[test]
fn skipped_seqs_are_marked_in_the_job_log() {
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    store.record_skipped(1, 8).unwrap();
    assert_eq!(store.last_batch().unwrap(), 8);
    assert!(store.record_batch(&batch(9, &[net.seal_request(1)])).unwrap());
    assert_eq!(store.last_batch().unwrap(), 9);
    assert!(store.record_skipped(5, 4).is_err());
    assert!(store.record_skipped(0, 4).is_err());
    drop(store);
    assert_eq!(Store::open(dir.path()).unwrap().last_batch().unwrap(), 9);
}

#[test]
fn replies_are_kept_by_request_and_finish_their_job() {
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    let reqs: Vec<Signed<Request>> = (1..=2).map(|n| net.seal_request(n)).collect();
    store.record_batch(&batch(1, &reqs)).unwrap();
    let (job0, job1) = (JobId { seq: 1, index: 0 }, JobId { seq: 1, index: 1 });
    assert_eq!(store.unfinished_jobs(10).unwrap().len(), 2);

    let abstain = net.result_reply(1, &reqs[0].msg, &crate::wire::testkit::failed());
    let result = net.result_reply(1, &reqs[0].msg, &crate::wire::testkit::passed());
    let d0 = reqs[0].msg.digest();
    store.put_reply(d0, job0, abstain.bytes()).unwrap();
    store.put_reply(d0, job0, abstain.bytes()).unwrap();
    store.put_reply(d0, job0, result.bytes()).unwrap();
    assert_eq!(store.replies(d0).unwrap(), vec![abstain.bytes().to_vec(), result.bytes().to_vec()]);
    assert_eq!(store.replies(reqs[1].msg.digest()).unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(store.job(job0).unwrap().unwrap().result, Some(result.bytes().to_vec()));
    assert_eq!(store.unfinished_jobs(10).unwrap(), vec![(job1, reqs[1].bytes().to_vec())]);

    let err = store.put_reply(d0, job1, result.bytes()).unwrap_err();
    assert!(matches!(err, StoreError::ReplyMismatch { .. }), "{err}");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.replies(d0).unwrap().len(), 2);
}

/// Writes a store with some content and returns the file's path.
fn written_store(dir: &Path) -> PathBuf {
    let net = Net::new();
    let store = Store::open(dir).unwrap();
    for seq in 1..=40 {
        let req = net.seal_request(seq);
        let mut records = vec![Record::Request(req.shared_bytes())];
        records.extend(normal_case(&net, seq, req.msg.digest()).into_iter().map(Record::Message));
        store.persist(&records).unwrap();
        store.record_batch(&batch(seq, &[req])).unwrap();
    }
    store.path().to_path_buf()
}

fn assert_refused(dir: &Path) -> String {
    match Store::open(dir) {
        Ok(_) => panic!("a damaged store opened"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("replica.redb"), "the message names the file: {text}");
            text
        }
    }
}

#[test]
fn a_truncated_database_is_refused_at_open() {
    let dir = temp();
    let path = written_store(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 4096);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    let text = assert_refused(dir.path());
    assert!(text.contains("truncated or corrupted"), "{text}");
}

#[test]
fn a_garbage_file_is_refused_at_open() {
    let dir = temp();
    let mut rng = XorShift::new(0x5eed);
    std::fs::write(dir.path().join("replica.redb"), rng.bytes(64 * 1024)).unwrap();
    let text = assert_refused(dir.path());
    assert!(text.contains("not a readable replica database"), "{text}");
}

/// Damage anywhere in the file's used bytes is an error at start, or leaves
/// what restore reads intact (the byte was in a page no longer in use); it is
/// never a panic and never a silent change.
#[test]
fn a_flipped_bit_is_an_error_at_start_or_changes_nothing() {
    let dir = temp();
    let path = written_store(dir.path());
    let clean = std::fs::read(&path).unwrap();
    let want = flats(&Store::open(dir.path()).unwrap().records().unwrap());
    let used: Vec<usize> = (0..clean.len()).filter(|&i| clean[i] != 0).collect();
    let mut rng = XorShift::new(7);
    let mut refused = 0;
    for _ in 0..30 {
        let mut bytes = clean.clone();
        bytes[used[rng.below(used.len())]] ^= 1 << rng.below(8);
        std::fs::write(&path, &bytes).unwrap();
        match Store::open(dir.path()).and_then(|s| s.records()) {
            Ok(records) => assert!(flats(&records) == want, "a flipped bit changed what restore reads"),
            Err(e) => {
                assert!(e.to_string().contains("replica.redb"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some damage was found");
}

#[test]
fn a_store_of_another_schema_version_or_no_store_at_all_is_refused() {
    let dir = temp();
    {
        let store = Store::open(dir.path()).unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert(KEY_SCHEMA, &encode_u64(SCHEMA_VERSION + 1)[..]).unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Schema { found: 2, expected: 1, .. }), "{err}");

    let other = temp();
    {
        let db = Database::create(other.path().join("replica.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<u64, u64>::new("something else")).unwrap().insert(1, 2).unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(other.path()).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
}

#[test]
fn a_store_open_twice_is_refused_while_in_use() {
    let dir = temp();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

/// A long job log is written in batches and read back in bounded pieces.
#[test]
fn a_long_job_log_is_read_in_bounded_pieces() {
    const JOBS: u64 = 100_000;
    const PER_BATCH: u64 = 500;
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    // One signed request stands for all: the store does not look inside.
    let req = net.seal_request(1);
    for seq in 1..=JOBS / PER_BATCH {
        let jobs = (0..PER_BATCH as u32).map(|i| (JobId { seq, index: i }, req.clone())).collect();
        let b = Batch { seq, view: 0, batch: digest(seq as u8), requests: vec![req.msg.digest()], jobs };
        assert!(store.record_batch(&b).unwrap());
    }
    assert_eq!(store.last_batch().unwrap(), JOBS / PER_BATCH);
    let first = store.unfinished_jobs(1000).unwrap();
    assert_eq!(first.len(), 1000);
    assert_eq!(first[0].0, JobId { seq: 1, index: 0 });
    assert_eq!(first[999].0, JobId { seq: 2, index: 499 });
    // Finished jobs leave the list; the next piece starts after them.
    for (job, _) in &first[..10] {
        store.put_reply(req.msg.digest(), *job, b"reply").unwrap();
    }
    let next = store.unfinished_jobs(5).unwrap();
    assert_eq!(
        next.iter().map(|(j, _)| *j).collect::<Vec<_>>(),
        (10..15).map(|i| JobId { seq: 1, index: i }).collect::<Vec<_>>()
    );
    let last = JobId { seq: JOBS / PER_BATCH, index: PER_BATCH as u32 - 1 };
    assert_eq!(store.job(last).unwrap().unwrap().request_bytes, req.bytes());
    // Reopening checks every page of it, and finds the same log.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.unfinished_jobs(5).unwrap(), next);
}

#[test]
fn a_group_commit_persists_records_and_records_batches_in_one_transaction() {
    let dir = temp();
    let net = Net::new();
    let store = Store::open(dir.path()).unwrap();
    let reqs: Vec<Signed<Request>> = (1..=3).map(|n| net.seal_request(n)).collect();
    let records: Vec<Record> = reqs.iter().map(|r| Record::Request(r.shared_bytes())).collect();
    let (first, second) = (batch(1, &reqs[..1]), batch(2, &reqs[1..]));
    assert_eq!(store.commit_ready(&records, &[first.clone(), second.clone()]).unwrap(), [true, true]);
    assert_eq!(store.commit_ready(&[], std::slice::from_ref(&first)).unwrap(), [false], "replayed");
    assert_eq!(store.last_batch().unwrap(), 2);
    // A batch that conflicts with the job log fails the whole group: its
    // records are not written either.
    let late = net.seal_request(9);
    let err = store.commit_ready(&[Record::Request(late.shared_bytes())], &[batch(1, &reqs[1..])]).unwrap_err();
    assert!(matches!(err, StoreError::BatchMismatch { seq: 1, .. }), "{err}");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let held: Vec<Vec<u8>> = store
        .records()
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Record::Request(b) => b.to_vec(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(held, reqs.iter().map(|r| r.bytes().to_vec()).collect::<Vec<_>>());
    assert_eq!(store.job(JobId { seq: 2, index: 1 }).unwrap().unwrap().request, reqs[2].msg.digest());

    // Results of many jobs, one transaction; a conflicting one fails the group.
    let jobs = [JobId { seq: 1, index: 0 }, JobId { seq: 2, index: 0 }];
    let group = [(reqs[0].msg.digest(), jobs[0], &b"r0"[..]), (reqs[1].msg.digest(), jobs[1], &b"r1"[..])];
    store.put_replies(&group).unwrap();
    assert_eq!(store.replies(reqs[1].msg.digest()).unwrap(), [b"r1".to_vec()]);
    assert!(store.unfinished_jobs(10).unwrap().iter().all(|(j, _)| !jobs.contains(j)));
    let bad =
        [(reqs[2].msg.digest(), JobId { seq: 2, index: 1 }, &b"r2"[..]), (reqs[0].msg.digest(), jobs[1], &b"x"[..])];
    assert!(store.put_replies(&bad).is_err());
    assert!(store.replies(reqs[2].msg.digest()).unwrap().is_empty());
}

#[test]
fn only_a_new_store_or_a_clean_stop_reads_as_stopped_cleanly_and_once() {
    let net = Net::new();
    let dir = temp();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.take_clean_stop().unwrap(), "a new store has sent nothing");
    drop(store);
    // A run that ends without `close_cleanly` (a crash).
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.take_clean_stop().unwrap());
    let prepare = seal(&net, 1, Prepare { view: 0, seq: 1, batch: digest(1) });
    store.close_cleanly(&[Record::Message(prepare.clone())]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(flats(&store.records().unwrap()), flats(&[Record::Message(prepare)]), "the last records are kept");
    assert!(store.take_clean_stop().unwrap());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.take_clean_stop().unwrap(), "the mark is taken once");
}
