//! The `Dataplane` trait: the seam between the pure planner and a kernel (or its twin).

use crate::error::DataplaneError;
use crate::model::{Service, ServiceKey};
use crate::op::Op;
use crate::plan::{Actual, View};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// A place rules can be read from and written to. Calls block; the node runs them on a
/// blocking thread.
pub trait Dataplane: Send {
    /// `"memory"` or `"ipvs"`.
    fn kind(&self) -> &'static str;

    /// Every IPVS service on the node (Shoal's and foreign) and the VIPs on Shoal's interface.
    fn read(&mut self) -> Result<Actual, DataplaneError>;

    /// `read`, giving way like `read_each_until`: `Ok(None)` when `stop` ended it. The admin
    /// API's read-back reads this way, so that a reconcile pass waiting for the dataplane does
    /// not wait for the whole table.
    fn read_until(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Actual>, DataplaneError> {
        if stop() {
            return Ok(None);
        }
        self.read().map(Some)
    }

    /// What the planner needs of a full read (the reconciler's drift check): the same as
    /// `read().into_view()`. Backends override it to build the view as they read, without
    /// holding the whole `Actual` (counters and a second copy of every destination; 52 MiB at
    /// 10,000 services x 40 destinations, against 18 MiB for the view).
    fn read_view(&mut self) -> Result<View, DataplaneError> {
        self.read().map(Actual::into_view)
    }

    /// A full read handed over one service at a time (destinations sorted by address and
    /// port), then the VIPs on Shoal's interface; `Ok(None)` when `stop`, asked between two
    /// services, ended it. The drift check reads this way: it gives way to a change arriving
    /// meanwhile (which then waits for one service's read, not the table's), and it compares
    /// each service with its kept view as it comes instead of holding a second copy of the
    /// table. Backends that read in one go ask `stop` once, before.
    fn read_each_until(
        &mut self,
        stop: &dyn Fn() -> bool,
        each: &mut dyn FnMut(Service),
    ) -> Result<Option<BTreeSet<IpAddr>>, DataplaneError> {
        if stop() {
            return Ok(None);
        }
        let view = self.read_view()?;
        view.services.into_values().for_each(each);
        Ok(Some(view.vips))
    }

    /// The keys of every IPVS service on the node, without destinations or counters: the cheap
    /// check made before a flush planned on a view kept in memory.
    fn service_keys(&mut self) -> Result<Vec<ServiceKey>, DataplaneError> {
        Ok(self
            .read()?
            .services
            .into_iter()
            .map(|o| o.service.key)
            .collect())
    }

    /// Apply one operation; the error names the op and its entry.
    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError>;

    /// Apply many operations in order. Every op is attempted even if an earlier one fails (the
    /// kernel does the same with a batch); returns how many succeeded and the first error.
    /// Backends override this to batch (IPVS sends many messages per syscall).
    fn apply_all(&mut self, ops: &[Op]) -> (usize, Option<DataplaneError>) {
        let mut applied = 0;
        let mut first = None;
        for op in ops {
            match self.apply(op) {
                Ok(()) => applied += 1,
                Err(e) => {
                    tracing::warn!(op = %op, error = %e, "dataplane op failed");
                    first.get_or_insert(e);
                }
            }
        }
        (applied, first)
    }
}
