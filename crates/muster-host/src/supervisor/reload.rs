//! Applying a changed manifest to a running transaction: new services
//! start, removed ones stop, changed ones restart, the rest are untouched.

use std::sync::Arc;
use std::time::Duration;

use super::ReloadReport;
use super::scheduled::SchedState;
use super::state::{Out, Phase, Slot, Svc, Txn, TxnState};
use crate::events::ContextChange;
use crate::manifest::ContextSpec;

impl Txn {
    /// Applies a reloaded context spec to this transaction.
    pub(super) fn apply(
        &mut self,
        out: &mut Out,
        spec: Arc<ContextSpec>,
        report: &mut ReloadReport,
    ) {
        let id = self.id.clone();
        let running = self.state == TxnState::Running;
        let mut old: Vec<Svc> = std::mem::take(&mut self.services);
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for new in &spec.services {
            match old.iter().position(|s| s.spec.name == new.name) {
                Some(k) => {
                    let mut svc = old.remove(k);
                    if *svc.spec == **new {
                        report.unchanged.push(format!("{id}/{}", new.name));
                    } else {
                        // Extra slots beyond the new count retire.
                        if svc.slots.len() > new.instances as usize {
                            let extra = svc.slots.split_off(new.instances as usize);
                            self.retired.push(Svc {
                                spec: svc.spec.clone(),
                                wanted: false,
                                slots: extra,
                                sched: None,
                            });
                        }
                        while svc.slots.len() < new.instances as usize {
                            let n = u32::try_from(svc.slots.len()).unwrap_or(u32::MAX);
                            svc.slots.push(Slot::new(n));
                        }
                        if svc.spec.schedule != new.schedule {
                            svc.sched = new.schedule.as_ref().map(SchedState::new);
                        }
                        svc.spec = new.clone();
                        if svc.wanted || svc.has_process() {
                            changed.push(new.name.clone());
                            report.restarted.push(format!("{id}/{}", new.name));
                        } else {
                            report.unchanged.push(format!("{id}/{}", new.name));
                        }
                    }
                    self.services.push(svc);
                }
                None => {
                    self.services.push(Svc::new(new.clone()));
                    if new.autostart {
                        added.push(self.services.len() - 1);
                        report.started.push(format!("{id}/{}", new.name));
                    }
                }
            }
        }
        for gone in old {
            report.stopped.push(format!("{id}/{}", gone.spec.name));
            self.retired.push(gone);
        }
        for svc in &mut self.retired {
            svc.wanted = false;
            let timeout = svc.spec.stop_timeout;
            for slot in &mut svc.slots {
                if matches!(slot.phase, Phase::Starting | Phase::Running) {
                    Self::signal_slot(out, &id, slot, timeout);
                }
            }
        }
        self.retired.retain(Svc::has_process);
        self.context = spec;
        if !running {
            return;
        }
        if !changed.is_empty() {
            self.restart_group(out, changed, Duration::ZERO);
        }
        for i in added {
            self.start_service(out, i);
        }
        self.arm_schedules(out);
        self.context_event(out, ContextChange::Reloaded, None);
    }
}
