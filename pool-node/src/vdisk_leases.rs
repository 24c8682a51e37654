//! Which host holds each vdisk, under which vdisk epoch: the catalog's
//! `vdisk_holders` table mirrored in memory, so that a host log's writer
//! thread checks every append's vdisk tickets without reading the catalog.
//!
//! The mirror changes only after the catalog transaction that made the
//! change committed, and a claim that takes a vdisk from another host runs
//! in that host's log writer thread: its appends queued before the claim
//! are written first, and every one after it is checked against the new
//! holder.

use std::collections::HashMap;
use std::sync::Mutex;

use strata_common::wire::VdiskTicket;

use crate::catalog::{Catalog, VdiskHolder};

/// The vdisk holders, in memory.
pub struct VdiskLeases {
    holders: Mutex<HashMap<String, VdiskHolder>>,
}

impl VdiskLeases {
    /// The holders the catalog records.
    pub fn load(catalog: &Catalog) -> anyhow::Result<VdiskLeases> {
        Ok(VdiskLeases {
            holders: Mutex::new(catalog.vdisk_holders()?.into_iter().collect()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VdiskHolder>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Vdisk `vdisk`'s holder, if any host claimed it.
    pub fn get(&self, vdisk: &str) -> Option<VdiskHolder> {
        self.lock().get(vdisk).cloned()
    }

    /// Records `holder` for `vdisk`, once the catalog has. Changes may
    /// arrive out of order (a claim runs in the old holder's log writer,
    /// an adoption report on a worker): one older than what is recorded is
    /// ignored, so the table never goes back to an earlier lease. At the
    /// same epoch only the end of an adoption is news.
    pub fn set(&self, vdisk: &str, holder: VdiskHolder) {
        let mut holders = self.lock();
        let newer = holders.get(vdisk).is_none_or(|current| {
            holder.epoch > current.epoch
                || (holder.epoch == current.epoch && holder.adopt_from.is_none())
        });
        if newer {
            holders.insert(vdisk.to_string(), holder);
        }
    }

    /// The vdisks among `tickets` that `host` does not hold under the
    /// ticket's epoch (never claimed, or claimed since by another host).
    pub fn not_held(&self, host: &str, tickets: &[VdiskTicket]) -> Vec<String> {
        let holders = self.lock();
        tickets
            .iter()
            .filter(|t| {
                !holders
                    .get(&t.name)
                    .is_some_and(|h| h.host == host && h.epoch == t.epoch)
            })
            .map(|t| t.name.clone())
            .collect()
    }

    /// Whether `host` holds a vdisk whose state it must adopt from
    /// `source`: only then may it read `source`'s commit and log.
    pub fn adopting_from(&self, host: &str, source: &str) -> bool {
        self.lock()
            .values()
            .any(|h| h.host == host && h.adopt_from.as_deref() == Some(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(name: &str, epoch: u64) -> VdiskTicket {
        VdiskTicket {
            name: name.to_string(),
            epoch,
        }
    }

    #[test]
    fn only_the_holder_under_the_current_epoch_passes() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let leases = VdiskLeases::load(&catalog).unwrap();
        assert_eq!(leases.not_held("h1", &[ticket("db", 1)]), vec!["db"]);
        leases.set(
            "db",
            VdiskHolder {
                host: "h1".to_string(),
                epoch: 1,
                adopt_from: None,
            },
        );
        assert!(leases.not_held("h1", &[ticket("db", 1)]).is_empty());
        assert!(!leases.adopting_from("h2", "h1"));
        leases.set(
            "db",
            VdiskHolder {
                host: "h2".to_string(),
                epoch: 2,
                adopt_from: Some("h1".to_string()),
            },
        );
        assert_eq!(leases.not_held("h1", &[ticket("db", 1)]), vec!["db"]);
        assert_eq!(leases.not_held("h2", &[ticket("db", 1)]), vec!["db"]);
        assert!(leases.not_held("h2", &[ticket("db", 2)]).is_empty());
        assert!(leases.adopting_from("h2", "h1"));
        assert!(!leases.adopting_from("h1", "h2"));
        // Reports that finish late change nothing: an earlier lease, or a
        // claim's view of an adoption already reported done.
        let done = VdiskHolder {
            host: "h2".to_string(),
            epoch: 2,
            adopt_from: None,
        };
        leases.set("db", done.clone());
        leases.set(
            "db",
            VdiskHolder {
                adopt_from: Some("h1".to_string()),
                ..done.clone()
            },
        );
        leases.set(
            "db",
            VdiskHolder {
                host: "h1".to_string(),
                epoch: 1,
                adopt_from: None,
            },
        );
        assert_eq!(leases.get("db"), Some(done));
    }
}
