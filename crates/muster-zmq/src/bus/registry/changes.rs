//! The registry's version and the instances its latest changes touched,
//! so that a caller's refresh gets what changed since its version rather
//! than the whole list: about 1 MB of JSON at 1,000 instances, which every
//! caller fetched after each change (`docs/benchmarks.md`, issue 22).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;

use muster_core::registry::InstanceInfo;

use super::Registry;
use crate::control::{List, ListReply};

/// Changes remembered, one per instance touched.
const REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Changes {
    version: u64,
    /// (version, instance id) of the latest changes, oldest first.
    touched: VecDeque<(u64, String)>,
    /// `touched` holds every change made after this version.
    complete_after: u64,
}

impl Changes {
    /// Bumped on every change.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// A new version, in which the entries of `instances` were added,
    /// replaced or removed.
    pub(super) fn record(&mut self, instances: impl IntoIterator<Item = String>) {
        self.version += 1;
        let version = self.version;
        self.touched
            .extend(instances.into_iter().map(|id| (version, id)));
        while self.touched.len() > REMEMBERED {
            if let Some((v, _)) = self.touched.pop_front() {
                self.complete_after = self.complete_after.max(v);
            }
        }
    }

    /// The instances touched after `version`; `None` when the log no
    /// longer reaches back that far, or `version` is not one made here.
    pub(super) fn since(&self, version: u64) -> Option<BTreeSet<&str>> {
        if version < self.complete_after || version > self.version {
            return None;
        }
        let first = self.touched.partition_point(|(v, _)| *v <= version);
        Some(
            self.touched
                .range(first..)
                .map(|(_, id)| id.as_str())
                .collect(),
        )
    }
}

impl Registry {
    /// The answer to `list`: nothing when the caller's copy is current,
    /// the changes since its version when it asked for them and they can
    /// be told, the whole registry otherwise.
    pub(super) fn list(&self, req: &List) -> ListReply {
        let mut reply = ListReply {
            epoch: self.epoch.clone(),
            version: self.changes.version(),
            instances: None,
            changed: None,
            removed: None,
        };
        let same_run = req.epoch.as_deref() == Some(self.epoch.as_str());
        match req.version.filter(|_| same_run) {
            Some(v) if v == self.changes.version() => {}
            Some(v) if req.changes => match self.changes_since(v) {
                Some((changed, removed)) => {
                    reply.changed = Some(changed);
                    reply.removed = Some(removed);
                }
                None => reply.instances = Some(self.all()),
            },
            _ => reply.instances = Some(self.all()),
        }
        let counter = match (&reply.instances, &reply.changed) {
            (Some(_), _) => &self.stats.0.listings_whole,
            (None, Some(_)) => &self.stats.0.listings_of_changes,
            (None, None) => return reply,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        reply
    }

    /// Every entry, by service and instance.
    fn all(&self) -> Vec<InstanceInfo> {
        let mut v: Vec<InstanceInfo> = self.entries.values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        v
    }

    /// The entries added or replaced since `version`, and the ids of those
    /// removed; `None` when the registry cannot say (`Changes::since`), or
    /// when so much changed that the whole list costs no more.
    fn changes_since(&self, version: u64) -> Option<(Vec<InstanceInfo>, Vec<String>)> {
        let ids = self.changes.since(version)?;
        if ids.len() > self.entries.len() / 2 {
            return None;
        }
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for id in ids {
            match self.entries.get(id) {
                Some(e) => changed.push(e.info.clone()),
                None => removed.push(id.to_owned()),
            }
        }
        Some((changed, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(changes: &Changes, since: u64) -> Option<Vec<&str>> {
        changes.since(since).map(|s| s.into_iter().collect())
    }

    #[test]
    fn the_instances_touched_since_a_version_while_the_log_reaches_it() {
        let mut c = Changes::default();
        c.record(["a".to_owned()]);
        c.record(["b".to_owned()]);
        c.record(["a".to_owned(), "c".to_owned()]);
        assert_eq!(c.version(), 3);
        assert_eq!(ids(&c, 0), Some(vec!["a", "b", "c"]));
        assert_eq!(ids(&c, 1), Some(vec!["a", "b", "c"]));
        assert_eq!(ids(&c, 2), Some(vec!["a", "c"]));
        assert_eq!(ids(&c, 3), Some(vec![]));
        assert_eq!(ids(&c, 4), None, "a version this registry never made");

        // Past what it remembers, the oldest versions cannot be answered:
        // three of the four entries of versions 1 to 3 go.
        for i in 0..REMEMBERED - 1 {
            c.record([format!("x{i}")]);
        }
        assert_eq!(ids(&c, 1), None);
        assert_eq!(ids(&c, 2), None, "version 3 is only half remembered");
        assert_eq!(ids(&c, 3).map(|v| v.len()), Some(REMEMBERED - 1));
    }
}
