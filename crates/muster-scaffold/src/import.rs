//! `muster import`: context_task_queue's XML files as a [`ContextSpec`].
//!
//! Two formats (docs/manifest.md, "Importing context_task_queue
//! contexts"): a context file (`Context-NAME.xml`, root `<Context>`, one
//! `<TaskService>` per service) and a `MetaServiceConf` file (root
//! `<MetaServiceConf>`, one `<Service>` per service to generate). As that
//! project's reader did, an element may appear once or repeated, a leaf's
//! value may be given as an attribute of its parent instead, and an empty
//! element means "nothing". Whatever has no muster equivalent is put in
//! [`ContextSpec::notes`], never dropped without a word.

use std::collections::BTreeMap;

use crate::ScaffoldError;
use crate::spec::{ContextSpec, ServiceSpec, is_valid_name, snake_case};

/// An element: tag, attributes, trimmed text, child elements, line.
#[derive(Debug, Clone)]
struct XNode {
    tag: String,
    attrs: BTreeMap<String, String>,
    text: String,
    children: Vec<XNode>,
    line: u32,
}

impl XNode {
    fn from(doc: &roxmltree::Document<'_>, n: roxmltree::Node<'_, '_>) -> Self {
        Self {
            tag: n.tag_name().name().to_owned(),
            attrs: n
                .attributes()
                .map(|a| (a.name().to_owned(), a.value().to_owned()))
                .collect(),
            text: n
                .children()
                .filter(|c| c.is_text())
                .filter_map(|c| c.text())
                .collect::<String>()
                .trim()
                .to_owned(),
            children: n
                .children()
                .filter(roxmltree::Node::is_element)
                .map(|c| Self::from(doc, c))
                .collect(),
            line: doc.text_pos_at(n.range().start).row,
        }
    }

    /// Every child called `tag` (none, one or many).
    fn all(&self, tag: &str) -> Vec<&XNode> {
        self.children.iter().filter(|c| c.tag == tag).collect()
    }

    fn one(&self, tag: &str) -> Option<&XNode> {
        self.children.iter().find(|c| c.tag == tag)
    }

    /// A leaf's value: the child element's text, or an attribute of the
    /// same name; `None` when absent or empty.
    fn field(&self, name: &str) -> Option<String> {
        self.one(name)
            .map(|c| c.text.clone())
            .or_else(|| self.attrs.get(name).cloned())
            .filter(|v| !v.is_empty())
    }

    /// Notes children and attributes outside `known`.
    fn report_unknown(&self, known: &[&str], notes: &mut Vec<String>) {
        for c in &self.children {
            if !known.contains(&c.tag.as_str()) {
                notes.push(format!(
                    "not carried over: <{}> in <{}> (line {}){}",
                    c.tag,
                    self.tag,
                    c.line,
                    if c.text.is_empty() {
                        String::new()
                    } else {
                        format!(" = {:?}", c.text)
                    }
                ));
            }
        }
        for (k, v) in &self.attrs {
            if !known.contains(&k.as_str()) {
                notes.push(format!(
                    "not carried over: attribute {k}={v:?} of <{}> (line {})",
                    self.tag, self.line
                ));
            }
        }
    }
}

fn input(path: &str, message: impl Into<String>) -> ScaffoldError {
    ScaffoldError::Input {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn parse_xml(text: &str, path: &str) -> Result<XNode, ScaffoldError> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| input(path, format!("not well-formed XML: {e}")))?;
    Ok(XNode::from(&doc, doc.root_element()))
}

/// Which of the two formats a file is, by its root element.
///
/// # Errors
/// Not XML, or another root.
pub fn import(text: &str, path: &str) -> Result<ContextSpec, ScaffoldError> {
    let root = parse_xml(text, path)?;
    match root.tag.as_str() {
        "Context" => context_file(&root, path),
        "MetaServiceConf" => meta_file(&root, path),
        other => Err(input(
            path,
            format!("the root element is <{other}>; expected <Context> or <MetaServiceConf>"),
        )),
    }
}

/// A context name muster accepts, noting a change.
fn context_name(raw: &str, notes: &mut Vec<String>) -> String {
    if is_valid_name(raw) {
        return raw.to_owned();
    }
    let fixed = snake_case(raw);
    notes.push(format!("context name {raw:?} became {fixed:?}"));
    fixed
}

/// `tcp://HOST:PORT` → `zmq://HOST:PORT`.
fn endpoint_bus(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("tcp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let host = if host == "*" { "127.0.0.1" } else { host };
    port.parse::<u16>().ok()?;
    Some(format!("zmq://{host}:{port}"))
}

/// The triggers of one service: `(trigger, action, target task id)`.
type Transitions = Vec<(String, String, Option<String>, u32)>;

/// Resolves transitions (targets by task id) into each service's triggers.
fn apply_transitions(
    services: &mut [ServiceSpec],
    transitions: &[Transitions],
    ids: &BTreeMap<String, String>,
    path: &str,
    notes: &mut Vec<String>,
) -> Result<(), ScaffoldError> {
    for (service, list) in services.iter_mut().zip(transitions) {
        for (trigger, action, target, line) in list {
            let Some(actions) = service.triggers.get_mut(trigger) else {
                notes.push(format!(
                    "not carried over: trigger {trigger:?} of {} (line {line}): muster has on_start, on_update, on_fail, on_exit",
                    service.name
                ));
                continue;
            };
            if action == "exit" {
                actions.exit = true;
                continue;
            }
            let list = match action.as_str() {
                "start" => &mut actions.start,
                "stop" => &mut actions.stop,
                "restart" => &mut actions.restart,
                other => {
                    notes.push(format!(
                        "not carried over: action {other:?} on {trigger} of {} (line {line}): muster has start, stop, restart, exit",
                        service.name
                    ));
                    continue;
                }
            };
            let Some(target) = target else {
                return Err(input(
                    path,
                    format!(
                        "line {line}: {} {trigger} says {action:?} but names no task id",
                        service.name
                    ),
                ));
            };
            let Some(name) = ids.get(target) else {
                return Err(input(
                    path,
                    format!(
                        "line {line}: {} {trigger} names task id {target:?}, which no service has",
                        service.name
                    ),
                ));
            };
            list.push(name.clone());
        }
    }
    Ok(())
}

/// A `<Context>` file.
fn context_file(root: &XNode, path: &str) -> Result<ContextSpec, ScaffoldError> {
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

/// What both formats yield before their triggers are resolved.
struct Parsed {
    name: String,
    bus: Option<String>,
    services: Vec<ServiceSpec>,
    transitions: Vec<Transitions>,
    ids: BTreeMap<String, String>,
    notes: Vec<String>,
}

/// Resolves the triggers and checks the whole context.
fn finish(mut p: Parsed, path: &str) -> Result<ContextSpec, ScaffoldError> {
    apply_transitions(&mut p.services, &p.transitions, &p.ids, path, &mut p.notes)?;
    let ctx = ContextSpec {
        name: p.name,
        bus: p.bus,
        services: p.services,
        notes: p.notes,
        ..ContextSpec::default()
    };
    ctx.validate(path)?;
    Ok(ctx)
}

/// A `<MetaServiceConf>` file.
fn meta_file(root: &XNode, path: &str) -> Result<ContextSpec, ScaffoldError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Context>
  <FrontEndEndpoint>tcp://127.0.0.1:5556</FrontEndEndpoint>
  <BackendEndpoint>tcp://127.0.0.1:5557</BackendEndpoint>
  <FrontBind>tcp://*:5557</FrontBind>
  <BackendBind>tcp://*:5556</BackendBind>
  <TaskLogName>EchoAction</TaskLogName>
  <ContextID>context001</ContextID>
  <TaskService id='ts_100' topic='process' instance='EchoAction' serviceType='Process'>
    <Task>
      <description>
        An echo action is for shouting the time
      </description>
      <message>
        <header><action>start</action><service_name>echo_action</service_name></header>
        <content><configuration><device_action>shout</device_action></configuration></content>
      </message>
      <state type="on_start">
        <on_start><action></action><call></call></on_start>
        <on_exit><action>restart'</action><call>ts_100</call></on_exit>
        <on_fail/>
      </state>
    </Task>
  </TaskService>
</Context>"#;

    #[test]
    fn a_context_file_with_one_task_service() {
        let ctx = import(CONTEXT, "Context-EchoAction.xml").unwrap();
        assert_eq!(ctx.name, "EchoAction");
        assert_eq!(ctx.bus.as_deref(), Some("zmq://127.0.0.1:5556"));
        let s = &ctx.services[0];
        assert_eq!(s.name, "echo_action");
        assert_eq!(s.description, "An echo action is for shouting the time");
        assert_eq!(s.env["MUSTER_DEVICE_ACTION"], "shout");
        assert_eq!(s.env["MUSTER_TASK_ID"], "ts_100");
        assert_eq!(s.triggers.on_exit.restart, vec!["echo_action"]);
        assert!(
            s.triggers.on_start.is_empty(),
            "empty elements mean nothing"
        );
        let notes = ctx.notes.join("\n");
        for said in ["ContextID", "topic \"process\"", "BackendBind"] {
            assert!(notes.contains(said), "{said} reported in\n{notes}");
        }
    }

    #[test]
    fn unknown_elements_are_reported_and_bad_targets_refused() {
        let extra = CONTEXT.replace("<ContextID>", "<Priority>high</Priority><ContextID>");
        let ctx = import(&extra, "c.xml").unwrap();
        assert!(
            ctx.notes
                .iter()
                .any(|n| n.contains("<Priority>") && n.contains("\"high\"")),
            "{:?}",
            ctx.notes
        );
        let bad = CONTEXT.replace("<call>ts_100</call>", "<call>ts_999</call>");
        let e = import(&bad, "c.xml").unwrap_err().to_string();
        assert!(e.contains("ts_999"), "{e}");
        assert!(
            import("<Context>", "c.xml")
                .unwrap_err()
                .to_string()
                .contains("well-formed")
        );
        assert!(
            import("<Other/>", "c.xml")
                .unwrap_err()
                .to_string()
                .contains("<Other>")
        );
    }

    #[test]
    fn attributes_stand_for_leaves_and_single_services_are_fine() {
        let meta = r#"<MetaServiceConf context_name="Solo">
            <Service task_service="Ping" task_id="t1" task_type="Looped"/>
        </MetaServiceConf>"#;
        let ctx = import(meta, "m.xml").unwrap();
        assert_eq!(ctx.name, "Solo");
        assert_eq!(ctx.services[0].name, "ping");
        assert!(!ctx.services[0].task);
        assert_eq!(ctx.services[0].rpc, vec!["hello"]);
    }
}
