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

mod context;
mod meta;
mod xml;

use std::collections::BTreeMap;

use crate::ScaffoldError;
use crate::spec::{ContextSpec, ServiceSpec, is_valid_name, snake_case};
use context::context_file;
use meta::meta_file;
use xml::parse_xml;

pub(super) fn input(path: &str, message: impl Into<String>) -> ScaffoldError {
    ScaffoldError::Input {
        path: path.to_owned(),
        message: message.into(),
    }
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
pub(super) fn context_name(raw: &str, notes: &mut Vec<String>) -> String {
    if is_valid_name(raw) {
        return raw.to_owned();
    }
    let fixed = snake_case(raw);
    notes.push(format!("context name {raw:?} became {fixed:?}"));
    fixed
}

/// `tcp://HOST:PORT` → `zmq://HOST:PORT`.
pub(super) fn endpoint_bus(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("tcp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let host = if host == "*" { "127.0.0.1" } else { host };
    port.parse::<u16>().ok()?;
    Some(format!("zmq://{host}:{port}"))
}

/// The triggers of one service: `(trigger, action, target task id)`.
pub(super) type Transitions = Vec<(String, String, Option<String>, u32)>;

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

/// What both formats yield before their triggers are resolved.
pub(super) struct Parsed {
    pub(super) name: String,
    pub(super) bus: Option<String>,
    pub(super) services: Vec<ServiceSpec>,
    pub(super) transitions: Vec<Transitions>,
    pub(super) ids: BTreeMap<String, String>,
    pub(super) notes: Vec<String>,
}

/// Resolves the triggers and checks the whole context.
pub(super) fn finish(mut p: Parsed, path: &str) -> Result<ContextSpec, ScaffoldError> {
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
