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
    /// kernel does the same with a batch); returns how many succeeded and each refusal.
    /// Backends override this to batch (IPVS sends many messages per syscall).
    fn apply_all(&mut self, ops: &[Op]) -> Applied {
        let mut applied = Applied::default();
        for (i, op) in ops.iter().enumerate() {
            match self.apply(op) {
                Ok(()) => applied.ok += 1,
                Err(e) => {
                    tracing::warn!(op = %op, error = %e, "dataplane op failed");
                    applied.refused.push((Some(i), e));
                }
            }
        }
        applied
    }
}

/// What [`Dataplane::apply_all`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// How many ops succeeded.
    pub ok: usize,
    /// Each refusal, in order, with the index of its op in the batch; `None` when a whole
    /// batch failed (the socket, not the kernel's answer to one op).
    pub refused: Vec<(Option<usize>, DataplaneError)>,
}

impl Applied {
    /// The first refusal, if any.
    pub fn first_error(self) -> Option<DataplaneError> {
        self.refused.into_iter().next().map(|(_, e)| e)
    }

    /// The refusals as one error (`DataplaneError::OpsRefused`), naming per service its first
    /// refusal for what the service asks (`Op::refused_for_what_it_asks`); `None` when every
    /// op succeeded.
    pub fn into_error(self, ops: &[Op]) -> Option<DataplaneError> {
        let refused = self.refused.len();
        let op_of = |i: &Option<usize>| i.and_then(|i| ops.get(i));
        let mut services = std::collections::BTreeMap::new();
        let mut vips = std::collections::BTreeMap::new();
        for (i, e) in &self.refused {
            let asks = op_of(i).filter(|op| {
                e.errno()
                    .is_some_and(|errno| op.refused_for_what_it_asks(errno))
            });
            match asks {
                Some(Op::AddVip(ip)) => {
                    vips.entry(*ip).or_insert_with(|| e.to_string());
                }
                Some(op) => {
                    if let Some(key) = op.service() {
                        services.entry(key.clone()).or_insert_with(|| e.to_string());
                    }
                }
                None => {}
            }
        }
        // The rest of such a service's ops follow from its refusal (its destinations find no
        // service); anything else is another refusal.
        let explained = |op: &Op| match op {
            Op::AddVip(ip) => vips.contains_key(ip),
            op => op.service().is_some_and(|key| services.contains_key(key)),
        };
        let other = self
            .refused
            .iter()
            .any(|(i, _)| op_of(i).is_none_or(|op| !explained(op)));
        let first = self.first_error()?;
        Some(DataplaneError::OpsRefused {
            first: Box::new(first),
            refused,
            services,
            vips,
            other,
        })
    }
}
