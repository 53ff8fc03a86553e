use std::path::Path;
use std::time::Duration;

use muster::schedule::Misfire;

use super::*;

/// The context of a manifest given as text, as if read from
/// `/tmp/m/muster.toml`.
fn parse_text(src: &str) -> Result<ContextSpec, ManifestError> {
    parse(
        Path::new("/tmp/m/muster.toml"),
        src,
        true,
        &Substitutions::default(),
    )
    .map(|(_, c)| c)
}

fn load(src: &str) -> Result<ContextSpec, ManifestError> {
    parse_text(src)
}

fn fault(src: &str) -> (usize, String, String) {
    match load(src).unwrap_err() {
        ManifestError::Invalid {
            line, key, message, ..
        } => (line, key, message),
        ManifestError::Io { .. } => unreachable!(),
    }
}

const GOOD: &str = r#"
[context]
name = "morning"
strategy = "rest_for_one"
max_restarts = 3
within_secs = 10

[[service]]
name = "db"
run = ["bin/db", "--port", "1"]

[[service]]
name = "stand"
command = "stand"
args = ["--speed", "2"]
instances = 2
restart = "transient"
after = ["db"]
stop_timeout = "250ms"
on_update = { start = ["db"] }
on_exit = { exit = true }
"#;

#[test]
fn missing_programs_and_directories_fail_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    let load = |src: &str| {
        std::fs::write(&file, src).unwrap();
        Manifest::load(std::slice::from_ref(&file), &Substitutions::default())
    };
    let ok =
        "[context]\nname = \"c\"\n[[service]]\nname = \"a\"\nrun = [\"sh\", \"-c\", \"true\"]\n";
    load(ok).unwrap();
    let fault = |src: &str| match load(src).unwrap_err() {
        ManifestError::Invalid {
            line, key, message, ..
        } => (line, key, message),
        ManifestError::Io { .. } => unreachable!(),
    };
    let (line, key, msg) = fault(&format!("{ok}cwd = \"/nonexistent\"\n"));
    assert_eq!((line, key.as_str()), (6, "service[0].cwd"));
    assert!(msg.contains("/nonexistent is not a directory"), "{msg}");
    let (line, key, msg) = fault(&ok.replace("\"sh\"", "\"no-such-program-xyz\""));
    assert_eq!((line, key.as_str()), (5, "service[0].run"));
    assert!(msg.contains("not found on PATH"), "{msg}");
    let (_, key, msg) = fault(&ok.replace("\"sh\"", "\"bin/missing\""));
    assert_eq!(key, "service[0].run");
    assert!(msg.contains("bin/missing not found"), "{msg}");
    // A file that is not there is said once.
    let e = Manifest::load(&[dir.path().join("nope.toml")], &Substitutions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot read {}", dir.path().join("nope.toml").display())
    );
}

#[test]
fn reads_every_key() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.name, "morning");
    assert_eq!(c.strategy, Strategy::RestForOne);
    assert_eq!((c.max_restarts, c.within), (3, Duration::from_secs(10)));
    let db = &c.services[0];
    assert_eq!(
        db.command, "/tmp/m/bin/db",
        "relative paths are the manifest's"
    );
    assert_eq!(db.args, ["--port", "1"]);
    assert_eq!(db.restart, RestartPolicy::Permanent);
    let stand = &c.services[1];
    assert_eq!(stand.command, "stand", "bare names are looked up in PATH");
    assert_eq!(stand.instances, 2);
    assert_eq!(stand.after, ["db"]);
    assert_eq!(stand.stop_timeout, Duration::from_millis(250));
    assert_eq!(stand.triggers.on_update.start, ["db"]);
    assert!(stand.triggers.on_exit.exit);
    assert!(stand.triggers.on_fail.is_empty());
}

#[test]
fn unknown_key_names_line_and_key() {
    let src = GOOD.replace("instances = 2", "instanses = 2");
    let (line, key, msg) = fault(&src);
    assert_eq!(line, 16);
    assert_eq!(key, "service[1].instanses");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn wrong_type_and_bad_value() {
    let (line, key, msg) = fault(&GOOD.replace("restart = \"transient\"", "restart = \"always\""));
    assert_eq!((line, key.as_str()), (17, "service[1].restart"));
    assert!(msg.contains("permanent"), "{msg}");
    let (line, key, _) = fault(&GOOD.replace("\"250ms\"", "\"5 years\""));
    assert_eq!((line, key.as_str()), (19, "service[1].stop_timeout"));
    let (line, key, _) = fault(&GOOD.replace("instances = 2", "instances = 0"));
    assert_eq!((line, key.as_str()), (16, "service[1].instances"));
    // Too large to be a duration: an error, not a panic of the host.
    let (line, key, msg) = fault(&GOOD.replace("\"250ms\"", "1e300"));
    assert_eq!((line, key.as_str()), (19, "service[1].stop_timeout"));
    assert!(msg.contains("not a valid duration"), "{msg}");
    let (_, _, msg) = fault(&GOOD.replace("\"250ms\"", "\"999999999999999999999h\""));
    assert!(msg.contains("not a valid duration"), "{msg}");
}

#[test]
fn unknown_services_and_cycles_are_refused() {
    let (line, key, msg) = fault(&GOOD.replace("after = [\"db\"]", "after = [\"dbx\"]"));
    assert_eq!((line, key.as_str()), (18, "service[1].after"));
    assert!(msg.contains("no service \"dbx\""), "{msg}");
    let (_, key, _) = fault(&GOOD.replace("start = [\"db\"]", "start = [\"nope\"]"));
    assert_eq!(key, "service[1].on_update.start");
    let looped = GOOD.replace(
        "run = [\"bin/db\", \"--port\", \"1\"]",
        "run = [\"db\"]\nafter = [\"stand\"]",
    );
    let (_, key, msg) = fault(&looped);
    assert!(
        key.ends_with(".after") && msg.contains("itself"),
        "{key}: {msg}"
    );
    let (_, _, msg) = fault(&GOOD.replace("name = \"stand\"", "name = \"db\""));
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn schedules_are_checked() {
    let src = GOOD.replace(
        "run = [\"bin/db\", \"--port\", \"1\"]",
        "run = [\"bin/db\"]\nschedule = \"0 0,12 * * *\"\nschedule_tz = \"Europe/Berlin\"\nmisfire = \"catch_up:3\"",
    );
    let c = load(&src).unwrap();
    let s = c.services[0].schedule.clone().unwrap();
    assert_eq!(
        (s.expr.as_str(), s.tz.as_str(), s.misfire),
        ("0 0,12 * * *", "Europe/Berlin", Misfire::CatchUp(3))
    );
    assert_eq!(c.services[0].restart, RestartPolicy::Temporary);
    assert!(!c.services[0].autostart);
    let (line, key, msg) = fault(&src.replace("0 0,12 * * *", "0 0,25 * * *"));
    assert_eq!((line, key.as_str()), (11, "service[0].schedule"));
    assert!(msg.contains("not a cron expression"), "{msg}");
    let (_, key, _) = fault(&src.replace("Europe/Berlin", "Europe/Nowhere"));
    assert_eq!(key, "service[0].schedule_tz");
    let (_, key, _) = fault(&src.replace("catch_up:3", "later"));
    assert_eq!(key, "service[0].misfire");
    let (_, key, msg) =
        fault(&src.replace("name = \"db\"", "name = \"db\"\nrestart = \"permanent\""));
    assert!(
        key.ends_with("restart") && msg.contains("runs to completion"),
        "{key}: {msg}"
    );
}

#[test]
fn syntax_errors_have_a_line() {
    let (line, _, _) = fault("[context]\nname = \"x\"\n[[service]\n");
    assert_eq!(line, 3);
    let (_, key, msg) = fault("[[service]]\nname = \"a\"\nrun = [\"a\"]\n");
    assert!(msg.contains("context"), "{key}: {msg}");
}

#[test]
fn the_job_store_settings_are_read_and_checked() {
    let host = |extra: &str| {
        parse(
            Path::new("/tmp/m/muster.toml"),
            &format!("[host]\n{extra}\n{GOOD}"),
            true,
            &Substitutions::default(),
        )
        .map(|(h, _)| h.expect("a [host] table"))
    };
    let h = host("").unwrap();
    assert!(!h.queue_in_memory, "jobs are on disk by default");
    assert_eq!(h.queue_fsync, muster_zmq::FsyncPolicy::Always);
    assert_eq!(h.heartbeats_per_sec, muster_zmq::DEFAULT_HEARTBEATS_PER_SEC);
    assert_eq!(
        host("heartbeats_per_sec = 200").unwrap().heartbeats_per_sec,
        200
    );
    let h = host("queue_store = \"memory\"\nqueue_fsync = \"5ms\"").unwrap();
    assert!(h.queue_in_memory);
    assert_eq!(
        h.queue_fsync,
        muster_zmq::FsyncPolicy::Every(Duration::from_millis(5))
    );
    for (bad, key, says) in [
        ("queue_store = \"tape\"", "host.queue_store", "\"disk\""),
        ("queue_fsync = \"sometimes\"", "host.queue_fsync", "always"),
        (
            "heartbeats_per_sec = 0",
            "host.heartbeats_per_sec",
            "at least 1",
        ),
    ] {
        match host(bad).unwrap_err() {
            ManifestError::Invalid {
                line,
                key: k,
                message,
                ..
            } => {
                assert_eq!((line, k.as_str()), (2, key));
                assert!(message.contains(says), "{message}");
            }
            ManifestError::Io { .. } => unreachable!(),
        }
    }
}

#[test]
fn the_host_bus_is_the_embedded_one_or_a_broker() {
    let host = |bus: &str| {
        parse(
            Path::new("/tmp/m/muster.toml"),
            &format!("[host]\nbus = \"{bus}\"\n{GOOD}"),
            true,
            &Substitutions::default(),
        )
        .map(|(h, _)| h.expect("a [host] table").bus)
    };
    for ok in [
        "zmq://127.0.0.1:7700",
        "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=x",
        "redis://127.0.0.1:6379/2",
        "nats://127.0.0.1:4222?prefix=p",
    ] {
        assert_eq!(host(ok).unwrap(), ok);
    }
    for bad in ["http://127.0.0.1:80", "zmq://nowhere", "127.0.0.1:7700"] {
        match host(bad).unwrap_err() {
            ManifestError::Invalid { key, .. } => assert_eq!(key, "host.bus"),
            ManifestError::Io { .. } => unreachable!(),
        }
    }
}
