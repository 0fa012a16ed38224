//! What one probe found, in the words the report and the wire both use.

use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    /// No probe finished yet.
    Pending,
    Ok,
    Timeout,
    /// The connection was refused or reset.
    Refused,
    /// An HTTP answer with a status other than the expected one.
    Status(u16),
    /// Any other failure (TLS, malformed HTTP, unreachable network).
    Error,
}

impl ProbeResult {
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeResult::Ok)
    }

    /// The Prometheus label value (bounded set: HTTP statuses fold into one value).
    pub fn label(&self) -> &'static str {
        match self {
            ProbeResult::Pending => "pending",
            ProbeResult::Ok => "ok",
            ProbeResult::Timeout => "timeout",
            ProbeResult::Refused => "refused",
            ProbeResult::Status(_) => "bad_status",
            ProbeResult::Error => "error",
        }
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Status(code) => write!(f, "status {code}"),
            other => f.write_str(other.label()),
        }
    }
}

impl Serialize for ProbeResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
