//! A `MetaServiceConf` file (root `<MetaServiceConf>`, one `<Service>` per
//! service to generate).

use std::collections::BTreeMap;

use super::xml::XNode;
use super::{Parsed, Transitions, context_name, finish, input};
use crate::ScaffoldError;
use crate::spec::{ContextSpec, ServiceSpec, snake_case};

/// A `<MetaServiceConf>` file.
pub(super) fn meta_file(root: &XNode, path: &str) -> Result<ContextSpec, ScaffoldError> {
    let mut notes = Vec::new();
    root.report_unknown(
        &[
            "context_name",
            "server_ip",
            "sub_port",
            "pub_port",
            "service_path",
            "home_path",
            "context_id",
            "log_on",
            "Service",
        ],
        &mut notes,
    );
    let name = root
        .field("context_name")
        .ok_or_else(|| input(path, "<context_name> is missing"))?;
    let name = context_name(&name, &mut notes);
    let bus = match (root.field("server_ip"), root.field("sub_port")) {
        (Some(ip), Some(port)) if port.parse::<u16>().is_ok() => {
            let b = format!("zmq://{ip}:{port}");
            notes.push(format!(
                "server_ip and sub_port became the host's bus {b} (that port and the next two)"
            ));
            Some(b)
        }
        _ => None,
    };
    if let Some(p) = root.field("pub_port") {
        notes.push(format!(
            "pub_port {p}: not needed, muster's bus replaces the forwarder device"
        ));
    }
    for k in ["service_path", "home_path"] {
        if let Some(v) = root.field(k) {
            notes.push(format!(
                "{k} {v:?}: the services are generated under services/"
            ));
        }
    }
    if let Some(id) = root.field("context_id") {
        notes.push(format!(
            "context_id {id:?}: muster gives each start of a context its own transaction id"
        ));
    }
    if let Some(v) = root.field("log_on") {
        notes.push(format!("log_on {v:?}: use --log-level in a service's run"));
    }
    let mut services = Vec::new();
    let mut transitions = Vec::new();
    let mut ids = BTreeMap::new();
    for svc in root.all("Service") {
        svc.report_unknown(
            &[
                "task_service",
                "task_class",
                "task_desc",
                "service_name",
                "task_id",
                "device_action",
                "task_topic",
                "entry_action",
                "location",
                "state",
                "task_type",
            ],
            &mut notes,
        );
        let raw = svc.field("task_service").ok_or_else(|| {
            input(
                path,
                format!("line {}: <Service> has no <task_service>", svc.line),
            )
        })?;
        let mut s = ServiceSpec::new(&snake_case(&raw))
            .map_err(|e| input(path, format!("line {}: {e}", svc.line)))?;
        if let Some(d) = svc.field("task_desc") {
            s.description = d;
        }
        match svc.field("task_type").as_deref() {
            Some("Looped") => {
                s.task = false;
                s.restart = Some("permanent".into());
            }
            Some("Single") | None => s.task = true,
            Some(other) => {
                s.task = true;
                notes.push(format!(
                    "{}: task_type {other:?} treated as Single (a task that runs once)",
                    s.name
                ));
            }
        }
        if let Some(id) = svc.field("task_id") {
            s.env.insert("MUSTER_TASK_ID".into(), id.clone());
            ids.insert(id, s.name.clone());
        }
        if let Some(a) = svc.field("device_action") {
            s.env.insert("MUSTER_DEVICE_ACTION".into(), a);
        }
        if let Some(n) = svc.field("service_name") {
            s.env.insert("MUSTER_SERVICE_NAME".into(), n);
        }
        if let Some(c) = svc.field("task_class") {
            notes.push(format!(
                "{}: task_class {c:?} is the `task` function of services/{}/src/lib.rs",
                s.name, s.name
            ));
        }
        if let Some(t) = svc.field("task_topic") {
            notes.push(format!(
                "{}: task_topic {t:?} has no equivalent (muster routes by service and method)",
                s.name
            ));
        }
        if let Some(l) = svc.field("location") {
            notes.push(format!(
                "{}: location {l:?}: generated under services/{}",
                s.name, s.name
            ));
        }
        let entry = svc
            .field("entry_action")
            .unwrap_or_else(|| "on_start".into());
        s.autostart = entry == "on_start";
        let mut list = Transitions::new();
        for st in svc.all("state") {
            st.report_unknown(&["trigger", "action", "state_id"], &mut notes);
            let (Some(trigger), Some(action)) = (st.field("trigger"), st.field("action")) else {
                continue;
            };
            list.push((trigger, action, st.field("state_id"), st.line));
        }
        services.push(s.with_default_entry_point());
        transitions.push(list);
    }
    if services.is_empty() {
        return Err(input(path, "no <Service>: the file describes no service"));
    }
    finish(
        Parsed {
            name,
            bus,
            services,
            transitions,
            ids,
            notes,
        },
        path,
    )
}
