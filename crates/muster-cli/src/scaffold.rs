//! `muster new` and `muster import`: generation of services and contexts,
//! and the import of context_task_queue's XML contexts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use muster_scaffold::generate::{self, MusterDep};
use muster_scaffold::spec::{ContextSpec, ServiceSpec};

#[derive(Debug, clap::Args)]
pub(crate) struct NewCmd {
    /// The service's name (letters, digits, _ and -); not with --from.
    #[arg(required_unless_present = "from")]
    name: Option<String>,
    /// An RPC method (repeatable); `hello` when no entry point is given.
    #[arg(long, value_name = "METHOD")]
    rpc: Vec<String>,
    /// A topic pattern to subscribe to (repeatable).
    #[arg(long, value_name = "TOPIC")]
    subscribe: Vec<String>,
    /// A work queue to consume (repeatable).
    #[arg(long, value_name = "QUEUE")]
    consume: Vec<String>,
    /// A scheduled job every DURATION (`30s`, `5m`).
    #[arg(long, value_name = "DURATION")]
    every: Option<String>,
    /// A task: main mode does its work, reports it and exits 0.
    #[arg(long)]
    task: bool,
    /// Directory to create the project in (as DIR/NAME).
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// Several services and their context's manifest from a services.toml
    /// (docs/manifest.md, "Generating services").
    #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "rpc", "subscribe", "consume", "every", "task"])]
    from: Option<PathBuf>,
    /// Where generated projects take muster from: a path to its
    /// `crates/muster`, or a version [default: this build's source tree
    /// when it is there, else 0.1].
    #[arg(long, value_name = "PATH|VERSION")]
    muster: Option<String>,
}

/// The `muster` dependency of generated projects.
fn muster_dep(given: Option<&str>) -> MusterDep {
    match given {
        Some(v) if v.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            MusterDep::Version(v.to_owned())
        }
        Some(p) => MusterDep::Path(std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p))),
        None => {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../muster");
            match source.canonicalize() {
                Ok(p) if p.join("Cargo.toml").is_file() => MusterDep::Path(p),
                _ => MusterDep::Version("0.1".into()),
            }
        }
    }
}

fn say_notes(ctx: &ContextSpec) {
    for n in &ctx.notes {
        eprintln!("import: {n}");
    }
}

impl NewCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let dep = muster_dep(self.muster.as_deref());
        if let Some(file) = &self.from {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let ctx = muster_scaffold::services_file::parse(&text, &file.display().to_string())?;
            let dir = self.path.join(&ctx.name);
            generate::write_context(&dir, &ctx, &dep)?;
            println!(
                "created {} with {} services and its muster.toml",
                dir.display(),
                ctx.services.len()
            );
            return Ok(());
        }
        let name = self.name.as_deref().unwrap_or_default();
        let mut s = ServiceSpec::new(name)?;
        s.rpc = self.rpc;
        s.subscribe = self.subscribe;
        s.consume = self.consume;
        s.every = self.every;
        s.task = self.task;
        if s.task {
            s.restart = Some("transient".into());
        }
        let s = s.with_default_entry_point();
        let dir = self.path.join(name);
        generate::write_service(&dir, &s, &dep)?;
        println!(
            "created {} (cargo test, cargo run, or muster up with its muster.toml)",
            dir.display()
        );
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImportCmd {
    /// context_task_queue's context file (`Context-NAME.xml`), or with
    /// --meta its MetaServiceConf file.
    file: PathBuf,
    /// The file is a MetaServiceConf: generate its services and manifest.
    #[arg(long)]
    meta: bool,
    /// Write the manifest here instead of printing it (context files).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --meta: directory to create the context in (as DIR/NAME).
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// With --meta: where generated projects take muster from.
    #[arg(long, value_name = "PATH|VERSION")]
    muster: Option<String>,
}

impl ImportCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let shown = self.file.display().to_string();
        let is_meta = text.contains("<MetaServiceConf");
        if is_meta != self.meta {
            anyhow::bail!(
                "{shown}: {}",
                if is_meta {
                    "a MetaServiceConf file: `muster import --meta` generates its services"
                } else {
                    "not a MetaServiceConf file: import a context file without --meta"
                }
            );
        }
        let ctx = muster_scaffold::import::import(&text, &shown)?;
        say_notes(&ctx);
        if self.meta {
            let dir = self.path.join(&ctx.name);
            generate::write_context(&dir, &ctx, &muster_dep(self.muster.as_deref()))?;
            println!(
                "created {} with {} services and its muster.toml",
                dir.display(),
                ctx.services.len()
            );
            return Ok(());
        }
        let manifest = generate::manifest(&ctx, true);
        match &self.output {
            Some(out) => {
                if out.exists() {
                    anyhow::bail!("{} already exists; nothing was written", out.display());
                }
                std::fs::write(out, manifest)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!("wrote {}", out.display());
            }
            None => print!("{manifest}"),
        }
        Ok(())
    }
}
