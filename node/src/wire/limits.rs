//! Hard bounds on everything that crosses the wire. A message over a bound is
//! rejected before it is decoded further or forwarded.

/// Largest encoded envelope of any kind. A view change carrying a full window
/// of prepared certificates is the largest message; it stays well below this.
pub const ENVELOPE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest encoded request body: a repository URL, a ref and a commit fit in
/// a small fraction of this.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024;
/// Requests one pre-prepare may order.
pub const BATCH_REQUESTS_MAX: usize = 512;
/// Requests one gossip message of a gateway may carry ([`super::RequestBundle`]).
pub const BUNDLE_REQUESTS_MAX: usize = 256;
/// Replicas a network may have (n = 3f + 1, so f ≤ 21).
pub const REPLICAS_MAX: usize = 64;
/// Gateways a membership may list.
pub const GATEWAYS_MAX: usize = 256;
/// Prepared certificates one view change may carry (a full watermark window).
pub const PREPARED_MAX: usize = 1024;
/// Result sets a certificate may carry (two for `disputed`).
pub const CERTIFICATE_SETS_MAX: usize = 4;
/// Length bounds of the strings a request carries.
pub const REPO_BYTES_MAX: usize = 2048;
pub const REF_BYTES_MAX: usize = 512;
pub const COMMIT_BYTES_MAX: usize = 64;
pub const DELIVERY_BYTES_MAX: usize = 128;
/// Length bound of free text in results (error messages, step names, image ids).
pub const TEXT_BYTES_MAX: usize = 1024;
/// Steps one result may list.
pub const STEPS_MAX: usize = 256;

/// The end of one step's log a replica serves on request (people read logs
/// from the end), and the most all steps of one answer carry together.
pub const LOG_TAIL_BYTES_MAX: usize = 64 * 1024;
pub const LOGS_BYTES_MAX: usize = 1024 * 1024;

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}
