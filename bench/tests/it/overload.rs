//! The overload test's bookkeeping: refusals, leader changes, the table,
//! and the largest payloads staying exactly at the limits.

use herald_bench::overload::report::{
    LeaderTracker, Outcome, RefusalTally, SystemOverload, overload_table, refusals_table,
};
use herald_bench::payload::{ETCD_MAX_REQUEST_BYTES, big_login, big_value, leased_login};
use herald_bench::procfs::parse_open_files_limit;

fn refused(code: &str, message: &str) -> Outcome {
    Outcome::Refused {
        code: code.into(),
        message: message.into(),
    }
}

#[test]
fn refusals_are_counted_by_phase_code_and_message() {
    let mut t = RefusalTally::default();
    t.record("open-loop", &Outcome::Ok);
    for _ in 0..3 {
        t.record(
            "open-loop",
            &refused("ResourceExhausted", "quota users: 2000000"),
        );
    }
    t.record(
        "idle",
        &refused("Unavailable", "connection limit 4096 reached"),
    );
    t.record(
        "open-loop",
        &Outcome::Indeterminate {
            message: "timed out".into(),
        },
    );
    assert_eq!(t.refused("open-loop"), 3);
    assert_eq!(t.indeterminate("open-loop"), 1);
    assert_eq!(t.refused("idle"), 1);
    let all = t.refusals();
    assert_eq!(all.len(), 3, "{all:?}");
    let quota = all.iter().find(|r| r.code == "ResourceExhausted").unwrap();
    assert_eq!((quota.count, quota.phase.as_str()), (3, "open-loop"));
}

#[test]
fn distinct_messages_are_capped() {
    let mut t = RefusalTally::default();
    for i in 0..50 {
        t.record(
            "largest",
            &refused("InvalidArgument", &format!("uid {i} too long")),
        );
    }
    let all = t.refusals();
    assert_eq!(all.len(), 21, "20 distinct and one bucket for the rest");
    let other = all
        .iter()
        .find(|r| r.message == "(other messages)")
        .unwrap();
    assert_eq!(other.count, 30);
    assert_eq!(t.refused("largest"), 50);
}

#[test]
fn leader_tracker_counts_elections_not_the_first_reading() {
    let mut l = LeaderTracker::default();
    for node in ["node1", "node2", "node3"] {
        l.observe(0.0, "idle", node, 3, 1);
    }
    // A node that does not know the leader yet changes nothing.
    l.observe(0.2, "idle", "node2", 3, 0);
    assert_eq!((l.term_changes, l.leader_changes), (0, 0));
    l.observe(5.0, "open-loop", "node2", 4, 2);
    l.observe(5.2, "open-loop", "node1", 4, 2);
    assert_eq!((l.term_changes, l.leader_changes), (1, 1));
    // A new term with the same leader is an election all the same.
    l.observe(9.0, "largest", "node3", 5, 2);
    assert_eq!((l.term_changes, l.leader_changes), (2, 1));
    assert_eq!(l.events.len(), 3);
    assert!(l.events[0].contains("open-loop"), "{:?}", l.events);
}

#[test]
fn table_has_one_column_per_system() {
    let systems = vec![
        SystemOverload {
            system: "herald".into(),
            idle_asked: 200,
            idle_open: 200,
            ..SystemOverload::default()
        },
        SystemOverload {
            system: "etcd".into(),
            idle_asked: 200,
            idle_open: 150,
            ..SystemOverload::default()
        },
    ];
    let table = overload_table(&systems);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "| | herald | etcd |");
    assert!(lines[2].starts_with("| idle connections open / asked | 200 / 200"));
    assert!(lines.iter().all(|l| l.matches('|').count() == 4), "{table}");
    assert!(refusals_table(&systems).contains("no request was refused"));
}

#[test]
fn largest_payloads_sit_exactly_at_the_limits() {
    let login = big_login(7);
    assert_eq!(login.uid.len(), 128);
    let ext: usize = login.ext.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(ext, 4096);
    assert!(big_value(7).len() < ETCD_MAX_REQUEST_BYTES);
    assert_eq!(leased_login(3).uid, "ovl-0000000003");
    assert!(leased_login(3).ttl_ms > 0);
}

#[test]
fn open_files_limit_from_proc_limits() {
    let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                Max open files            1024                 524288               files\n";
    assert_eq!(parse_open_files_limit(text), Some(1024));
    assert_eq!(
        parse_open_files_limit("Max processes 10 10 processes"),
        None
    );
}
