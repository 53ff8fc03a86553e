use super::*;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn next(expr: &str, from: &str) -> String {
    Schedule::parse(expr)
        .unwrap()
        .next_after(t(from))
        .unwrap()
        .to_rfc3339()
}

#[test]
fn cron_lists_macros_and_last_day() {
    assert_eq!(
        next("0 0,12 * * *", "2026-01-01T12:00:00Z"),
        "2026-01-02T00:00:00+00:00"
    );
    assert_eq!(
        next("@hourly", "2026-01-01T12:30:00Z"),
        "2026-01-01T13:00:00+00:00"
    );
    assert_eq!(
        next("0 0 L * *", "2026-02-03T00:00:00Z"),
        "2026-02-28T00:00:00+00:00"
    );
    assert_eq!(
        next("*/10 * * * * *", "2026-01-01T00:00:05Z"),
        "2026-01-01T00:00:10+00:00"
    );
    assert_eq!(
        next("0 0 0 1 1 * 2030", "2026-01-01T00:00:00Z"),
        "2030-01-01T00:00:00+00:00"
    );
}

#[test]
fn day_of_week_0_and_7_are_sunday() {
    // 2026-11-22 is a Sunday.
    let from = "2026-11-18T00:00:00Z";
    assert_eq!(next("0 9 * * 0", from), "2026-11-22T09:00:00+00:00");
    assert_eq!(next("0 9 * * 7", from), "2026-11-22T09:00:00+00:00");
    assert_eq!(next("0 9 * * SUN", from), "2026-11-22T09:00:00+00:00");
    assert_eq!(next("0 9 * * 1", from), "2026-11-23T09:00:00+00:00");
}

#[test]
fn intervals_are_aligned_to_the_epoch() {
    assert_eq!(
        next("every 10s", "2026-01-01T00:00:03.5Z"),
        "2026-01-01T00:00:10+00:00"
    );
    assert_eq!(
        next("every 10s", "2026-01-01T00:00:10Z"),
        "2026-01-01T00:00:20+00:00"
    );
    assert_eq!(
        next("every 1h", "2026-01-01T00:59:59Z"),
        "2026-01-01T01:00:00+00:00"
    );
}

#[test]
fn at_times_across_daylight_saving_changes() {
    // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
    let s = Schedule::at("02:30")
        .unwrap()
        .in_zone("Europe/Berlin")
        .unwrap();
    let spring = s.upcoming(t("2026-03-27T12:00:00Z"), 4);
    let spring: Vec<String> = spring.iter().map(DateTime::to_rfc3339).collect();
    assert_eq!(
        spring,
        [
            "2026-03-28T01:30:00+00:00", // 02:30 CET
            "2026-03-29T01:00:00+00:00", // 02:30 does not exist: the first instant after the gap, 03:00 CEST
            "2026-03-30T00:30:00+00:00", // 02:30 CEST
            "2026-03-31T00:30:00+00:00",
        ]
    );
    let autumn = s.upcoming(t("2026-10-24T12:00:00Z"), 3);
    let autumn: Vec<String> = autumn.iter().map(DateTime::to_rfc3339).collect();
    assert_eq!(
        autumn,
        [
            "2026-10-25T00:30:00+00:00", // 02:30 CEST, the first of the two 02:30s: once
            "2026-10-26T01:30:00+00:00", // 02:30 CET
            "2026-10-27T01:30:00+00:00",
        ]
    );
}

#[test]
fn bad_schedules_say_why() {
    for (text, says) in [
        ("61 * * * *", "not a cron expression"),
        ("* * * *", "4 fields"),
        ("every 0s", "at least 1ms"),
        ("every soon", "not a duration"),
        ("at 25:00", "not a time of day"),
        ("at 7", "not a time of day"),
    ] {
        let e = Schedule::parse(text).unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
    let e = Schedule::parse("@daily")
        .unwrap()
        .in_zone("Mars/Olympus")
        .unwrap_err();
    assert!(e.to_string().contains("time zone"));
}

#[test]
fn misfire_policies_select() {
    let missed = [1, 2, 3, 4];
    assert_eq!(Misfire::Skip.select(&missed), Vec::<i32>::new());
    assert_eq!(Misfire::RunOnce.select(&missed), [4]);
    assert_eq!(Misfire::CatchUp(2).select(&missed), [3, 4]);
    assert_eq!(Misfire::CatchUp(10).select(&missed), [1, 2, 3, 4]);
    assert_eq!(
        "catch_up:3".parse::<Misfire>().unwrap(),
        Misfire::CatchUp(3)
    );
    assert!("sometimes".parse::<Misfire>().is_err());
}
