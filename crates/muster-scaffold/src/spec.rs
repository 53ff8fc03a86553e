//! The model every input fills and every output reads: a context of
//! services with their entry points, policies and triggers.

use std::collections::BTreeMap;

use crate::ScaffoldError;

/// True for a name a service, context, method or queue can have here:
/// a letter, then letters, digits, `_` and `-`, at most 64.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks a name, saying what it is for when it is refused.
///
/// # Errors
/// [`ScaffoldError::BadName`].
pub fn check_name(what: &'static str, name: &str) -> Result<(), ScaffoldError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ScaffoldError::BadName {
            what,
            name: name.to_owned(),
            why: "use a letter, then letters, digits, _ and - (at most 64)",
        })
    }
}

/// `DrinkCoffee`, `drink-coffee`, `drink coffee` → `drink_coffee`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
            prev_lower = false;
        }
    }
    out.trim_end_matches('_').to_owned()
}

/// `drink_coffee` → `DrinkCoffee`.
pub fn camel_case(name: &str) -> String {
    name.split(['_', '-', '.', ':'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

pub use muster_manifest::{Actions, Triggers};

/// One service: its code's entry points and its place in a context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service (and crate, and binary) name.
    pub name: String,
    /// What it does, for its README and doc comment.
    pub description: String,
    /// RPC methods.
    pub rpc: Vec<String>,
    /// Topic patterns it subscribes to.
    pub subscribe: Vec<String>,
    /// Work queues it consumes.
    pub consume: Vec<String>,
    /// A period for a scheduled job (`"30s"`).
    pub every: Option<String>,
    /// A task: its main does its work, reports it with `ctx.update`, and
    /// returns (exit 0), which is what fires `on_exit`.
    pub task: bool,
    /// Instances the manifest runs.
    pub instances: u32,
    /// The manifest's restart policy (`permanent`, `transient`, `temporary`).
    pub restart: Option<String>,
    /// Started with the context (`false`: only by a trigger).
    pub autostart: bool,
    /// Services that must be ready first.
    pub after: Vec<String>,
    /// Extra environment (`MUSTER_*` keys become config).
    pub env: BTreeMap<String, String>,
    /// Lifecycle triggers.
    pub triggers: Triggers,
}

impl ServiceSpec {
    /// A service with the defaults of `muster new NAME`.
    ///
    /// # Errors
    /// An invalid name.
    pub fn new(name: &str) -> Result<Self, ScaffoldError> {
        check_name("service name", name)?;
        Ok(Self {
            name: name.to_owned(),
            description: format!("The {name} service."),
            instances: 1,
            autostart: true,
            ..Self::default()
        })
    }

    /// With no entry point at all, `muster new` gives the service one
    /// method, `hello`, so that it answers something.
    pub fn with_default_entry_point(mut self) -> Self {
        if self.rpc.is_empty()
            && self.subscribe.is_empty()
            && self.consume.is_empty()
            && self.every.is_none()
            && !self.task
        {
            self.rpc.push("hello".into());
        }
        self
    }

    /// Checks names of methods and queues.
    ///
    /// # Errors
    /// The first invalid name.
    pub fn validate(&self) -> Result<(), ScaffoldError> {
        check_name("service name", &self.name)?;
        for m in &self.rpc {
            check_name("method name", m)?;
        }
        for q in &self.consume {
            if q.is_empty()
                || !q
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
            {
                return Err(ScaffoldError::BadName {
                    what: "queue name",
                    name: q.clone(),
                    why: "use letters, digits, _, -, . and :",
                });
            }
        }
        for t in &self.subscribe {
            if t.is_empty() || t.contains(' ') {
                return Err(ScaffoldError::BadName {
                    what: "topic pattern",
                    name: t.clone(),
                    why: "dot-separated tokens; * for one token, > for the rest",
                });
            }
        }
        Ok(())
    }
}

/// A context: its services and the host settings that come with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextSpec {
    /// Context name.
    pub name: String,
    /// OTP strategy, when not `one_for_one`.
    pub strategy: Option<String>,
    /// Restart budget.
    pub max_restarts: Option<u32>,
    /// Its window in seconds.
    pub within_secs: Option<u32>,
    /// Bus URL for the host (`[host] bus`).
    pub bus: Option<String>,
    /// The services, in order.
    pub services: Vec<ServiceSpec>,
    /// What the input said that has no muster equivalent, or was mapped
    /// in a way worth saying: printed, and written into the manifest.
    pub notes: Vec<String>,
}

impl ContextSpec {
    /// Checks names and that every trigger and `after` names a service
    /// of the context.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self, path: &str) -> Result<(), ScaffoldError> {
        check_name("context name", &self.name)?;
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        for (i, s) in self.services.iter().enumerate() {
            s.validate()?;
            if names[..i].contains(&s.name.as_str()) {
                return Err(ScaffoldError::Input {
                    path: path.to_owned(),
                    message: format!("service {:?} is named twice", s.name),
                });
            }
            for (trigger, actions) in s.triggers.all() {
                for t in actions.targets() {
                    if !names.contains(&t.as_str()) {
                        return Err(ScaffoldError::Input {
                            path: path.to_owned(),
                            message: format!(
                                "service {:?}: {trigger} names {t:?}, which is not a service of the context",
                                s.name
                            ),
                        });
                    }
                }
            }
            for a in &s.after {
                if !names.contains(&a.as_str()) {
                    return Err(ScaffoldError::Input {
                        path: path.to_owned(),
                        message: format!("service {:?}: after names unknown {a:?}", s.name),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        assert_eq!(snake_case("DrinkCoffee"), "drink_coffee");
        assert_eq!(snake_case("drink-coffee"), "drink_coffee");
        assert_eq!(snake_case("Run"), "run");
        assert_eq!(snake_case("S001 Stand"), "s001_stand");
        assert_eq!(camel_case("drink_coffee"), "DrinkCoffee");
        assert_eq!(camel_case("orders.new"), "OrdersNew");
    }

    #[test]
    fn names() {
        assert!(is_valid_name("stand"));
        assert!(!is_valid_name("1stand"));
        assert!(!is_valid_name("a.b"));
        assert!(ServiceSpec::new("bad name").is_err());
    }
}
