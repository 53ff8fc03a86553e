//! Layered, typed configuration: defaults, config file (JSON, TOML or
//! YAML), `MUSTER_`-prefixed environment, then `--key value` pairs, each
//! overriding the one before. Values from the environment and the command
//! line are parsed as JSON when they parse, so `--port 80` is a number.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Environment variables the framework itself reads; never config keys.
const RESERVED_ENV: &[&str] = &[
    "BUS",
    "SERVICE",
    "INSTANCE",
    "TRANSACTION",
    "LOG_LEVEL",
    "MAIN",
    "TEST_AMQP",
    "TEST_REDIS",
];

/// A configuration problem, phrased as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(String);

/// Reads a config file by its extension into JSON.
///
/// # Errors
/// When the file cannot be read, has an unknown extension or does not parse.
pub fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bad = |e: &dyn std::fmt::Display| ConfigError(format!("{}: {e}", path.display()));
    let value = match ext.as_str() {
        "json" => serde_json::from_str(&text).map_err(|e| bad(&e))?,
        "toml" => toml::from_str::<Value>(&text).map_err(|e| bad(&e))?,
        "yaml" | "yml" => serde_yaml::from_str::<Value>(&text).map_err(|e| bad(&e))?,
        other => {
            return Err(ConfigError(format!(
                "{}: unknown config format {other:?} (use .json, .toml, .yaml or .yml)",
                path.display()
            )));
        }
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(ConfigError(format!(
            "{}: the top level must be a table/object",
            path.display()
        ))),
    }
}

/// Parses a command-line or environment value: JSON when it parses,
/// otherwise the plain string.
pub fn parse_scalar(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Sets `a.b.c` (or `a__b__c`) in a JSON object, creating tables.
fn set_path(root: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for p in parents {
        if !cur.get(*p).is_some_and(Value::is_object)
            && let Value::Object(m) = cur
        {
            m.insert((*p).to_owned(), Value::Object(Map::new()));
        }
        let Some(next) = cur.get_mut(*p) else { return };
        cur = next;
    }
    if let Value::Object(m) = cur {
        m.insert((*last).to_owned(), value);
    }
}

/// Deep-merges `over` into `base`; tables merge, everything else replaces.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The sources of one service's configuration.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Parsed config file, if any.
    pub file: Option<Value>,
    /// `MUSTER_*` variables (name without the prefix, value).
    pub env: Vec<(String, String)>,
    /// `--key value` pairs from the command line.
    pub args: Vec<(String, String)>,
}

impl Sources {
    /// Collects `MUSTER_*` variables from the process environment.
    pub fn from_process_env(self) -> Self {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        self.from_env(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Collects `MUSTER_*` variables (less the framework's own) from `vars`.
    pub fn from_env<'a>(mut self, vars: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        self.env = vars
            .filter_map(|(k, v)| {
                k.strip_prefix("MUSTER_")
                    .map(|k| (k.to_owned(), v.to_owned()))
            })
            .filter(|(k, _)| !RESERVED_ENV.contains(&k.as_str()))
            .collect();
        self
    }

    /// The sources of one service of a group: its own table of the merged
    /// config (`[echo]` for service `echo`) when there is one, else all.
    pub fn for_service(&self, service: &str, group: bool) -> Sources {
        if !group {
            return self.clone();
        }
        match self.merged().get(service) {
            Some(section @ Value::Object(_)) => Sources {
                file: Some(section.clone()),
                env: Vec::new(),
                args: Vec::new(),
            },
            _ => self.clone(),
        }
    }

    /// The merged JSON value, before typing.
    pub fn merged(&self) -> Value {
        let mut root = Value::Object(Map::new());
        if let Some(f) = &self.file {
            merge(&mut root, f.clone());
        }
        for (k, v) in &self.env {
            let key = k.to_ascii_lowercase();
            let path: Vec<&str> = key.split("__").collect();
            set_path(&mut root, &path, parse_scalar(v));
        }
        for (k, v) in &self.args {
            let path: Vec<&str> = k.split('.').collect();
            set_path(&mut root, &path, parse_scalar(v));
        }
        root
    }

    /// Merges and types the configuration.
    ///
    /// # Errors
    /// One line naming the missing or mistyped key.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        typed(self.merged())
    }
}

/// Types a JSON value, naming the key at fault.
///
/// # Errors
/// One line naming the missing or mistyped key.
pub fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let key = if path == "." || path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            ConfigError(format!("missing key `{key}`"))
        } else {
            ConfigError(format!("key `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Db {
        host: String,
        port: u16,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Conf {
        name: String,
        #[serde(default)]
        verbose: bool,
        db: Db,
    }

    fn sources() -> Sources {
        Sources {
            file: Some(serde_json::json!({"name": "file", "db": {"host": "h", "port": 1}})),
            env: vec![("DB__PORT".into(), "2".into())],
            args: vec![],
        }
    }

    #[test]
    fn precedence_file_env_args() {
        let mut s = sources();
        assert_eq!(s.load::<Conf>().unwrap().db.port, 2);
        s.args.push(("db.port".into(), "3".into()));
        s.args.push(("verbose".into(), "true".into()));
        s.args.push(("name".into(), "cli".into()));
        let c: Conf = s.load().unwrap();
        assert_eq!(c.db.port, 3);
        assert!(c.verbose);
        assert_eq!(c.name, "cli");
    }

    #[test]
    fn missing_key_is_named() {
        let s = Sources {
            file: Some(serde_json::json!({"name": "x", "db": {"host": "h"}})),
            ..Default::default()
        };
        assert_eq!(
            s.load::<Conf>().unwrap_err().to_string(),
            "config: missing key `db.port`"
        );
    }

    #[test]
    fn mistyped_key_is_named() {
        let mut s = sources();
        s.args.push(("db.port".into(), "high".into()));
        let e = s.load::<Conf>().unwrap_err().to_string();
        assert!(e.starts_with("config: key `db.port`: invalid type"), "{e}");
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_scalar("80"), Value::from(80));
        assert_eq!(parse_scalar("true"), Value::from(true));
        assert_eq!(parse_scalar("hello"), Value::from("hello"));
        assert_eq!(parse_scalar("\"80\""), Value::from("80"));
    }

    #[test]
    fn file_formats() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [
            ("c.toml", "name = \"t\"\n[db]\nhost = \"h\"\nport = 5\n"),
            ("c.yaml", "name: t\ndb:\n  host: h\n  port: 5\n"),
            ("c.json", r#"{"name":"t","db":{"host":"h","port":5}}"#),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            let s = Sources {
                file: Some(read_file(&p).unwrap()),
                ..Default::default()
            };
            assert_eq!(s.load::<Conf>().unwrap().db.port, 5, "{name}");
        }
        let bad = dir.join("c.ini");
        std::fs::write(&bad, "x").unwrap();
        assert!(read_file(&bad).is_err());
    }
}
