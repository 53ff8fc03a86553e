//! The process environment overlaid on a `.env` file: variables already set
//! win, as with rococo's host. The process environment is never modified.

use std::collections::HashMap;
use std::path::Path;

/// Environment lookups with `.env` fallback.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment plus `.env` in the working directory.
    pub fn load() -> Self {
        Self::load_from(Path::new(".env"))
    }

    /// The process environment plus the given dotenv file, if it exists.
    pub fn load_from(path: &Path) -> Self {
        let mut vars: HashMap<String, String> = std::fs::read_to_string(path)
            .map(|text| parse(&text))
            .unwrap_or_default();
        // The process environment wins over the file.
        vars.extend(std::env::vars());
        Self { vars }
    }

    /// One variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// All variables.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parses a dotenv file's text (the `dotenvy` crate's format: `#`
/// comments, `export ` prefixes, quotes, escapes, `${VAR}` references to
/// earlier lines); malformed lines are skipped.
pub fn parse(text: &str) -> HashMap<String, String> {
    dotenvy::from_read_iter(text.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = parse(
            "# c\nA=1\nexport B=\"two words\"\nC='x' \nbad line\nD=3 # note\nE=\"a # b\"\nF=${A}x\n",
        );
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "x");
        assert_eq!(m["D"], "3");
        assert_eq!(m["E"], "a # b");
        assert_eq!(m["F"], "1x");
        assert!(!m.contains_key("bad line"));
    }

    #[test]
    fn process_env_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(".env");
        std::fs::write(&f, "PATH=/nope\nMUSTER_DOTENV_ONLY=yes\n").unwrap();
        let env = Env::load_from(&f);
        assert_ne!(env.get("PATH"), Some("/nope"));
        assert_eq!(env.get("MUSTER_DOTENV_ONLY"), Some("yes"));
    }
}
