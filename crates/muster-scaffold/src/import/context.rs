//! A context file (`Context-NAME.xml`, root `<Context>`, one
//! `<TaskService>` per service).

use std::collections::BTreeMap;

use super::xml::XNode;
use super::{Parsed, Transitions, context_name, endpoint_bus, finish, input};
use crate::ScaffoldError;
use crate::spec::{ContextSpec, ServiceSpec, snake_case};

/// A `<Context>` file.
pub(super) fn context_file(root: &XNode, path: &str) -> Result<ContextSpec, ScaffoldError> {
    let mut notes = Vec::new();
    root.report_unknown(
        &[
            "FrontEndEndpoint",
            "BackendEndpoint",
            "FrontBind",
            "BackendBind",
            "TaskLogName",
            "ContextID",
            "TaskService",
        ],
        &mut notes,
    );
    let name = root
        .field("TaskLogName")
        .ok_or_else(|| input(path, "<TaskLogName> (the context's name) is missing"))?;
    let name = context_name(&name, &mut notes);
    let bus = root
        .field("FrontEndEndpoint")
        .and_then(|e| endpoint_bus(&e));
    if let Some(b) = &bus {
        notes.push(format!(
            "FrontEndEndpoint became the host's bus {b} (muster's bus uses that port and the next two)"
        ));
    }
    for k in ["BackendEndpoint", "FrontBind", "BackendBind"] {
        if let Some(v) = root.field(k) {
            notes.push(format!(
                "{k} {v:?}: not needed, muster's bus replaces the forwarder device"
            ));
        }
    }
    if let Some(id) = root.field("ContextID") {
        notes.push(format!(
            "ContextID {id:?}: muster gives each start of a context its own transaction id"
        ));
    }
    let mut services = Vec::new();
    let mut transitions = Vec::new();
    let mut ids = BTreeMap::new();
    for ts in root.all("TaskService") {
        ts.report_unknown(
            &["id", "topic", "instance", "serviceType", "Task"],
            &mut notes,
        );
        let raw = ts
            .field("instance")
            .or_else(|| ts.field("id"))
            .ok_or_else(|| {
                input(
                    path,
                    format!("line {}: <TaskService> has no instance or id", ts.line),
                )
            })?;
        let mut s = ServiceSpec::new(&snake_case(&raw))
            .map_err(|e| input(path, format!("line {}: {e}", ts.line)))?;
        s.task = true;
        if let Some(id) = ts.field("id") {
            s.env.insert("MUSTER_TASK_ID".into(), id.clone());
            ids.insert(id, s.name.clone());
        }
        if let Some(kind) = ts.field("serviceType").filter(|k| k != "Process") {
            notes.push(format!(
                "{}: serviceType {kind:?} runs as a process under muster",
                s.name
            ));
        }
        if let Some(topic) = ts.field("topic") {
            notes.push(format!(
                "{}: topic {topic:?} has no equivalent (muster routes by service and method)",
                s.name
            ));
        }
        let mut list = Transitions::new();
        if let Some(task) = ts.one("Task") {
            task.report_unknown(&["description", "message", "state"], &mut notes);
            if let Some(d) = task.field("description") {
                s.description = d.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            if let Some(msg) = task.one("message") {
                msg.report_unknown(&["header", "content"], &mut notes);
                if let Some(h) = msg.one("header") {
                    h.report_unknown(&["action", "service_name"], &mut notes);
                    if let Some(a) = h.field("action").filter(|a| a != "start") {
                        notes.push(format!("{}: message action {a:?} not carried over (a service starts with its context or by a trigger)", s.name));
                    }
                    if let Some(n) = h.field("service_name") {
                        notes.push(format!(
                            "{}: service_name {n:?} kept as MUSTER_SERVICE_NAME",
                            s.name
                        ));
                        s.env.insert("MUSTER_SERVICE_NAME".into(), n);
                    }
                }
                if let Some(conf) = msg.one("content").and_then(|c| c.one("configuration")) {
                    for leaf in &conf.children {
                        if leaf.children.is_empty() {
                            s.env.insert(
                                format!("MUSTER_{}", leaf.tag.to_ascii_uppercase()),
                                leaf.text.clone(),
                            );
                        } else {
                            notes.push(format!(
                                "{}: nested configuration <{}> (line {}) not carried over",
                                s.name, leaf.tag, leaf.line
                            ));
                        }
                    }
                }
            }
            if let Some(state) = task.one("state") {
                let entry = state.field("type").unwrap_or_else(|| "on_start".into());
                s.autostart = entry == "on_start";
                for t in &state.children {
                    if t.tag == "type" {
                        continue;
                    }
                    t.report_unknown(&["action", "call"], &mut notes);
                    if let Some(action) = t.field("action") {
                        // The template wrote `start'` with a stray quote.
                        let action = action.trim_end_matches('\'').to_owned();
                        if !action.is_empty() {
                            list.push((t.tag.clone(), action, t.field("call"), t.line));
                        }
                    }
                }
            }
        }
        services.push(s);
        transitions.push(list);
    }
    if services.is_empty() {
        return Err(input(path, "no <TaskService>: the context has no service"));
    }
    notes.push(
        "a context file holds no code: the manifest runs services/<name> of a Cargo workspace (`muster new NAME` makes one)".into(),
    );
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
