//! The in-memory twin of the nftables firewall: holds the rule list it was given.

use super::{FilterRule, Firewall, ReadBack};
use crate::error::DataplaneError;

#[derive(Debug, Default)]
pub struct MemoryFirewall {
    table: Option<Vec<FilterRule>>,
}

impl Firewall for MemoryFirewall {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn read(&mut self) -> Result<Option<ReadBack>, DataplaneError> {
        Ok(self.table.as_ref().map(|rules| ReadBack {
            rules: rules.clone(),
            foreign: 0,
        }))
    }

    fn replace(&mut self, rules: &[FilterRule]) -> Result<(), DataplaneError> {
        self.table = Some(rules.to_vec());
        Ok(())
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.table = None;
        Ok(())
    }
}
