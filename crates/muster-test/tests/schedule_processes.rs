//! Scheduled jobs with real processes: two instances, one run per fire time.

use std::time::Duration;

use muster_test::{Proc, wait_registered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_a_cron_service_fire_each_second_once_between_them() {
    let (_bus, client, url) = muster_test::bus_and_client().await;
    let mut ticks = client.subscribe(&["ticker.tick"]).await.unwrap();
    let ticker = |n: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_muster-test-ticker"));
        c.args(["--bus", &url, "--log-level", "warn"])
            .env("MUSTER_INSTANCE", format!("ticker-{n}"));
        Proc::spawn("ticker", c)
    };
    let _a = ticker("a");
    let _b = ticker("b");
    wait_registered(&client, "ticker", 2).await;
    let mut seconds: Vec<(i64, String)> = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), ticks.recv()).await {
            seconds.push((
                ev.payload["second"].as_i64().unwrap(),
                ev.payload["instance"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let mut only: Vec<i64> = seconds.iter().map(|s| s.0).collect();
    only.sort_unstable();
    let mut unique = only.clone();
    unique.dedup();
    assert_eq!(only, unique, "a second ran twice: {seconds:?}");
    assert!(
        unique.len() >= 9,
        "ten seconds, {} runs: {seconds:?}",
        unique.len()
    );
    assert_eq!(
        unique.last().unwrap() - unique.first().unwrap() + 1,
        unique.len() as i64,
        "no second missed: {seconds:?}"
    );
}
