//! The replica's parameters. Every bound the core keeps is named here.

use libp2p_identity::PeerId;

use super::io::Millis;
use crate::wire::{limits, NetworkId};

#[derive(Clone, Debug)]
pub struct Config {
    pub network: NetworkId,
    /// The replicas in their fixed order.
    pub replicas: Vec<PeerId>,
    /// Requests per pre-prepare.
    pub batch_max: usize,
    /// How long the primary waits to fill a batch while others are in flight
    /// (an idle primary proposes at once; a full batch goes at once). About
    /// a batch's round on a loaded machine: at moderate load a request then
    /// mostly waits for the batch ahead of it to execute and joins a bigger
    /// batch, instead of starting one of its own whose fixed cost (every
    /// replica's signatures, verifications and fsyncs) it pays alone. At
    /// 110 requests/s on the 2-core bench machine, p50 latency was 90 ms
    /// with 2 ms, 72 with 15, 57 with 30 and 53 with 50.
    pub batch_delay_ms: Millis,
    /// Batches the primary keeps ordered but not yet executed; beyond it,
    /// requests wait and the next batch is bigger. Under load this trades
    /// many small batches, each costing every replica its signatures and
    /// verifications, for fewer full ones; an idle primary proposes at once.
    pub pipeline_max: u64,
    /// Checkpoint every K sequence numbers.
    pub checkpoint_interval: u64,
    /// Watermark window L: sequence numbers in `h+1..=h+L` are accepted,
    /// h being the last stable checkpoint. A multiple of K.
    pub window: u64,
    /// Requests held (pending or in the log) before new ones are refused busy.
    pub pending_max: usize,
    /// How often a replica tells the others how far it got.
    pub status_interval_ms: Millis,
    /// How long before asking another replica for a missing request.
    pub fetch_retry_ms: Millis,
    /// How long a request may wait for ordering before the backups replace
    /// the primary; doubles with each view that fails in a row.
    pub view_change_timeout_ms: Millis,
    /// The timeout doubles at most this many times (bounds how long replicas
    /// that drifted apart in views take to meet again).
    pub view_change_doublings_max: u32,
    /// Slots one answer to a lagging replica's status carries.
    pub help_slots_max: u64,
    /// Help a replica only once it is behind what this one had executed a
    /// status interval ago (or below its log): under load, replicas a few
    /// slots apart are in the pipeline, not lagging, and answering each
    /// status with every message of the slots in flight multiplied the
    /// traffic. Off: help whenever behind (older simulator traces).
    pub help_only_lagging: bool,
    /// **Test-only**: (prepares, commits) that make a slot prepared and
    /// committed, in place of 2f and 2f + 1. Exists so the simulator can prove
    /// its checkers catch a weakened quorum; `None` everywhere else.
    pub unsafe_quorum_override: Option<(usize, usize)>,
    /// **Test-only**: NEW-VIEW ignores prepared certificates (every slot
    /// becomes a null request). Exists so the simulator can prove it catches
    /// a weakened view-change rule; `false` everywhere else.
    pub unsafe_forget_prepared_in_new_view: bool,
    /// **Test-only**: answer `Prepared` once the pre-prepare is in, before
    /// the slot prepared. Exists so the simulator can prove it catches a
    /// weakened tentative execution; `false` everywhere else.
    pub unsafe_tentative_at_pre_prepare: bool,
}

impl Config {
    pub fn new(network: NetworkId, replicas: Vec<PeerId>) -> Config {
        Config {
            network,
            replicas,
            batch_max: 128,
            batch_delay_ms: 30,
            pipeline_max: 4,
            checkpoint_interval: 64,
            window: 256,
            pending_max: 65_536,
            status_interval_ms: 500,
            fetch_retry_ms: 200,
            help_slots_max: 16,
            help_only_lagging: true,
            view_change_timeout_ms: 2_000,
            view_change_doublings_max: 5,
            unsafe_quorum_override: None,
            unsafe_forget_prepared_in_new_view: false,
            unsafe_tentative_at_pre_prepare: false,
        }
    }

    pub(crate) fn check(&self) {
        assert!(self.replicas.len() >= 4 && (self.replicas.len() - 1) % 3 == 0, "n = 3f + 1, f ≥ 1");
        assert!(
            self.batch_max >= 1 && self.batch_max <= limits::BATCH_REQUESTS_MAX,
            "batch_max in 1..=BATCH_REQUESTS_MAX"
        );
        assert!(self.pipeline_max >= 1, "pipeline_max ≥ 1");
        assert!(self.checkpoint_interval >= 1, "K ≥ 1");
        assert!(
            self.window >= self.checkpoint_interval && self.window % self.checkpoint_interval == 0,
            "L is a positive multiple of K"
        );
        assert!(self.window as usize <= limits::PREPARED_MAX, "L ≤ PREPARED_MAX: a view change carries the window");
    }
}
