//! Long-lived flows for the VM lab (`lab-flows`): the byte sequence each connection sends and
//! expects back, the stall tracker (`conn`), the report of a run (`report`) and the probes of
//! new connections (`probes`). Pure: bytes, offsets and times in milliseconds come in as
//! arguments; the binary in src/bin/lab-flows/ does the sockets.

mod conn;
mod probes;
mod report;

pub use conn::{fill, first_mismatch, seq_byte, StallTracker};
pub use probes::{
    datagram_backends, datagrams_from, fault_times, probe_phase, probes_from, summarize_probes,
    DatagramRecord, DatagramWindow, ProbeRecord, ProbeSummary, ProbeWindow,
};
pub use report::{render_summary, ConnRecord, FlowsReport, Outcome};
