//! Hand-made histories, valid and not: the checker must tell them apart and
//! name the anomaly.

use serde_json::{Value, json};

use super::*;
use crate::history::{Op, Outcome};

/// Builds ops with explicit times.
struct H(Vec<Op>);

impl H {
    fn new() -> H {
        H(Vec::new())
    }
    #[allow(clippy::too_many_arguments)]
    fn op(
        mut self,
        process: u64,
        workload: &str,
        f: &str,
        input: Value,
        output: Value,
        outcome: Outcome,
        error: Option<&str>,
        times: (u64, Option<u64>),
    ) -> H {
        let id = self.0.len();
        self.0.push(Op {
            id,
            process,
            workload: workload.into(),
            f: f.into(),
            key: "k".into(),
            input,
            output,
            outcome,
            error: error.map(str::to_string),
            invoke_ns: times.0,
            complete_ns: times.1,
            answered_ns: times.1,
        });
        self
    }
    fn write(self, p: u64, v: u64, rev: u64, t: (u64, u64)) -> H {
        self.op(
            p,
            "register",
            "write",
            json!({"v": v}),
            json!({"v": v, "revision": rev}),
            Outcome::Ok,
            None,
            (t.0, Some(t.1)),
        )
    }
    fn read(self, p: u64, v: u64, rev: u64, t: (u64, u64), fin: bool) -> H {
        self.op(
            p,
            "register",
            "read",
            json!({"final": fin}),
            json!({"v": v, "revision": rev}),
            Outcome::Ok,
            None,
            (t.0, Some(t.1)),
        )
    }
    fn check(self) -> Report {
        check(&self.0, Duration::from_secs(10))
    }
}

fn kinds(r: &Report) -> Vec<String> {
    r.kinds().into_keys().collect()
}

#[test]
fn a_correct_register_history_is_valid() {
    let r = H::new()
        .write(1, 1, 10, (0, 10))
        .read(2, 1, 10, (5, 15), false)
        .write(1, 2, 12, (20, 30))
        .read(2, 1, 10, (21, 25), false) // concurrent with the write
        .read(2, 2, 12, (31, 35), true)
        .check();
    assert!(r.valid, "{r:#?}");
    assert_eq!(r.counts["register/write"].ok, 2);
}

#[test]
fn a_stale_read_is_reported() {
    // The write of 2 completed before the read began, yet the read saw 1.
    let r = H::new()
        .write(1, 1, 10, (0, 10))
        .write(1, 2, 12, (20, 30))
        .read(2, 1, 10, (40, 45), false)
        .check();
    assert!(!r.valid);
    assert_eq!(kinds(&r), ["not-linearizable"]);
    let a = &r.anomalies[0];
    assert_eq!(
        a.ops.last().map(|o| o.id),
        Some(2),
        "the stale read is named"
    );
}

#[test]
fn a_lost_write_is_reported() {
    // Acknowledged at revision 12, but after healing the record is at 10.
    let r = H::new()
        .write(1, 1, 10, (0, 10))
        .write(1, 2, 12, (20, 30))
        .read(3, 1, 10, (100, 110), true)
        .check();
    assert_eq!(kinds(&r), ["lost-write", "not-linearizable"]);
}

#[test]
fn info_writes_may_or_may_not_have_happened() {
    let h = H::new().write(1, 1, 10, (0, 10)).op(
        1,
        "register",
        "write",
        json!({"v": 2}),
        Value::Null,
        Outcome::Info,
        Some("timeout"),
        (20, None),
    );
    assert!(h.read(2, 1, 10, (40, 45), true).check().valid);
    let h = H::new().write(1, 1, 10, (0, 10)).op(
        1,
        "register",
        "write",
        json!({"v": 2}),
        Value::Null,
        Outcome::Info,
        Some("timeout"),
        (20, None),
    );
    let r = h
        .read(2, 2, 13, (40, 45), false)
        .read(2, 1, 10, (50, 55), false)
        .check();
    assert_eq!(kinds(&r), ["not-linearizable"], "it cannot un-happen");
}

fn lease(h: H, p: u64, rid: &str, out: Result<&str, &str>, t: (u64, u64)) -> H {
    let input = json!({"rid": rid, "user": format!("viewer-{rid}"), "pool_size": 2});
    match out {
        Ok(account) => h.op(
            p,
            "pool",
            "lease",
            input,
            json!({"account": account, "lease_id": 1}),
            Outcome::Ok,
            None,
            (t.0, Some(t.1)),
        ),
        Err(code) => h.op(
            p,
            "pool",
            "lease",
            input,
            json!({"code": code}),
            Outcome::Fail,
            Some(code),
            (t.0, Some(t.1)),
        ),
    }
}

/// A linearizable listing showing `(holder, account)` pairs.
fn list(h: H, p: u64, leases: &[(&str, &str)], t: (u64, u64)) -> H {
    let leases: Vec<Value> = leases
        .iter()
        .map(|(holder, account)| json!({"holder": holder, "account": account, "lease_id": 1}))
        .collect();
    h.op(
        p,
        "pool",
        "list",
        json!({"final": false}),
        json!({ "leases": leases }),
        Outcome::Ok,
        None,
        (t.0, Some(t.1)),
    )
}

fn renew_denied(h: H, p: u64, rid: &str, t: (u64, u64)) -> H {
    h.op(
        p,
        "pool",
        "renew",
        json!({"rid": rid}),
        json!({"code": "PermissionDenied"}),
        Outcome::Fail,
        Some("lease_secret: does not match lease 1"),
        (t.0, Some(t.1)),
    )
}

fn release(h: H, p: u64, rid: &str, t: (u64, u64)) -> H {
    h.op(
        p,
        "pool",
        "release",
        json!({"rid": rid}),
        json!({}),
        Outcome::Ok,
        None,
        (t.0, Some(t.1)),
    )
}

#[test]
fn a_correct_pool_history_is_valid() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 2, "r2", Ok("b"), (5, 15));
    h = lease(h, 3, "r3", Err("ResourceExhausted"), (20, 25));
    h = release(h, 1, "r1", (30, 40));
    h = lease(h, 3, "r4", Ok("a"), (45, 50));
    // A retry of r2 replays the same account.
    h = lease(h, 2, "r2", Ok("b"), (55, 60));
    let r = h.check();
    assert!(r.valid, "{r:#?}");
}

/// A lease-and-login answered with its login let in or not.
fn auto_login(h: H, p: u64, rid: &str, account: &str, login_ok: bool, t: (u64, u64)) -> H {
    h.op(
        p,
        "pool",
        "lease",
        json!({"rid": rid, "user": format!("viewer-{rid}"), "pool_size": 2, "login": true}),
        json!({"account": account, "lease_id": 1, "login_ok": login_ok}),
        Outcome::Ok,
        None,
        (t.0, Some(t.1)),
    )
}

#[test]
fn an_automatic_login_refused_after_its_lease_is_reported() {
    let good = auto_login(H::new(), 1, "r1", "a", true, (0, 10)).check();
    assert!(good.valid, "{good:#?}");
    let bad = auto_login(H::new(), 1, "r1", "a", false, (0, 10)).check();
    assert_eq!(kinds(&bad), ["auto-login-refused"]);
}

#[test]
fn a_double_lease_is_reported() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 2, "r2", Ok("a"), (20, 30));
    let r = h.check();
    assert_eq!(kinds(&r), ["double-lease", "not-linearizable"]);
}

#[test]
fn listings_name_holders_and_are_checked_against_the_requests() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 2, "r2", Ok("b"), (5, 15));
    h = list(h, 3, &[("viewer-r1", "a"), ("viewer-r2", "b")], (20, 25));
    assert!(h.check().valid);
    // A listing missing a lease, or showing a holder no request named.
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = list(h, 3, &[], (20, 25));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = list(h, 3, &[("viewer-r1", "a"), ("mallory", "b")], (20, 25));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
    // A listing binds an unknown lease to the account it shows.
    let mut h = H::new().op(
        1,
        "pool",
        "lease",
        json!({"rid": "r1", "user": "viewer-r1", "pool_size": 2}),
        Value::Null,
        Outcome::Info,
        Some("timeout"),
        (0, None),
    );
    h = list(h, 3, &[("viewer-r1", "b")], (20, 25));
    h = lease(h, 1, "r1", Ok("a"), (30, 35));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
}

#[test]
fn a_listing_showing_one_request_twice_is_reported() {
    // r1's lease may have happened; the listing shows it twice, with two
    // accounts, and leaves out r2's.
    let mut h = H::new().op(
        1,
        "pool",
        "lease",
        json!({"rid": "r1", "user": "viewer-r1", "pool_size": 3}),
        Value::Null,
        Outcome::Info,
        Some("timeout"),
        (0, None),
    );
    h = lease(h, 2, "r2", Ok("b"), (5, 15));
    h = list(h, 3, &[("viewer-r1", "a"), ("viewer-r1", "c")], (20, 25));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
}

#[test]
fn a_listing_with_two_holders_of_one_account_is_a_double_lease() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 2, "r2", Ok("b"), (5, 15));
    h = list(h, 3, &[("viewer-r1", "a"), ("viewer-r2", "a")], (20, 25));
    assert_eq!(kinds(&h.check()), ["double-lease", "not-linearizable"]);
}

#[test]
fn a_refused_lease_secret_is_reported() {
    // The workload only presents secrets the cluster returned.
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = renew_denied(h, 1, "r1", (20, 25));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
}

#[test]
fn a_replay_past_the_answer_cap_is_refused_without_a_change() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 1, "r1", Err("ResourceExhausted"), (20, 25));
    h = list(h, 3, &[("viewer-r1", "a")], (30, 35));
    assert!(h.check().valid);
}

#[test]
fn exhaustion_with_a_free_account_is_reported() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 2, "r2", Err("ResourceExhausted"), (20, 30));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
}

#[test]
fn a_replay_giving_another_account_is_reported() {
    let mut h = lease(H::new(), 1, "r1", Ok("a"), (0, 10));
    h = lease(h, 1, "r1", Ok("b"), (20, 30));
    assert_eq!(kinds(&h.check()), ["not-linearizable"]);
}

fn session(out: (u64, u64, u64)) -> Value {
    json!({"epoch": out.0, "terminal": out.1, "seq": out.2})
}

fn progress(h: H, p: u64, t: u64, epoch: u64, seq: u64, ok: bool, times: (u64, u64)) -> H {
    let input = json!({"terminal": t, "epoch": epoch, "seq": seq});
    if ok {
        h.op(
            p,
            "session",
            "progress",
            input,
            session((epoch, t, seq)),
            Outcome::Ok,
            None,
            (times.0, Some(times.1)),
        )
    } else {
        h.op(
            p,
            "session",
            "progress",
            input,
            json!({"code": "FailedPrecondition", "reason": "FENCED"}),
            Outcome::Fail,
            Some("fenced: session 1 is at epoch 2"),
            (times.0, Some(times.1)),
        )
    }
}

fn handoff(h: H, p: u64, from: u64, epoch_after: u64, seq: u64, t: (u64, u64)) -> H {
    h.op(
        p,
        "session",
        "handoff",
        json!({"from": from, "to": 1 - from, "epoch": epoch_after - 1, "mode": "push"}),
        json!({"accepted": true, "epoch": epoch_after, "terminal": 1 - from, "seq": seq}),
        Outcome::Ok,
        None,
        (t.0, Some(t.1)),
    )
}

fn get(h: H, p: u64, out: (u64, u64, u64), t: (u64, u64), fin: bool) -> H {
    h.op(
        p,
        "session",
        "get",
        json!({"final": fin}),
        session(out),
        Outcome::Ok,
        None,
        (t.0, Some(t.1)),
    )
}

#[test]
fn a_correct_session_history_is_valid() {
    let mut h = progress(H::new(), 1, 0, 1, 1, true, (0, 10));
    h = handoff(h, 1, 0, 2, 1, (20, 30));
    h = progress(h, 1, 0, 1, 2, false, (40, 50)); // fenced, as it must be
    h = progress(h, 2, 1, 2, 3, true, (60, 70));
    h = get(h, 3, (2, 1, 3), (80, 90), true);
    let r = h.check();
    assert!(r.valid, "{r:#?}");
}

#[test]
fn a_fenced_terminal_succeeding_is_reported() {
    let mut h = progress(H::new(), 1, 0, 1, 1, true, (0, 10));
    h = handoff(h, 1, 0, 2, 1, (20, 30));
    h = progress(h, 1, 0, 1, 2, true, (40, 50));
    let r = h.check();
    assert_eq!(kinds(&r), ["fenced-write-accepted", "not-linearizable"]);
}

/// An accepted offer is a handoff at the offer's epoch: an offer that
/// outlived a handoff must end (OFFER_ENDED), never move the session on.
#[test]
fn an_offer_accepted_after_the_session_moved_is_reported() {
    let accept = |h: H, p: u64, from: u64, epoch: u64, after: Option<u64>, t: (u64, u64)| {
        let input = json!({"from": from, "to": 1 - from, "epoch": epoch, "mode": "offer"});
        match after {
            Some(e) => h.op(
                p,
                "session",
                "handoff",
                input,
                json!({"accepted": true, "epoch": e, "terminal": 1 - from, "seq": 0}),
                Outcome::Ok,
                None,
                (t.0, Some(t.1)),
            ),
            None => h.op(
                p,
                "session",
                "handoff",
                input,
                json!({"code": "FailedPrecondition", "reason": "OFFER_ENDED"}),
                Outcome::Fail,
                Some("the offer ended"),
                (t.0, Some(t.1)),
            ),
        }
    };
    // Terminal 0 offers at epoch 1; terminal 1 pulls first; the offer ends.
    let mut good = handoff(H::new(), 2, 0, 2, 0, (0, 10));
    good = accept(good, 1, 0, 1, None, (20, 30));
    good = accept(good, 1, 1, 2, Some(3), (40, 50));
    let r = good.check();
    assert!(r.valid, "{r:#?}");
    // The stale offer taken after the pull.
    let mut bad = handoff(H::new(), 2, 0, 2, 0, (0, 10));
    bad = accept(bad, 1, 0, 1, Some(3), (20, 30));
    assert_eq!(
        kinds(&bad.check()),
        ["fenced-handoff-accepted", "not-linearizable"]
    );
}

/// A pull by terminal 1 (naming the holder 0) and a refused stale handoff
/// are fine; a stale instance of a holder handing the session away is not.
#[test]
fn a_stale_handoff_accepted_is_reported() {
    let refused = |h: H, p: u64, from: u64, epoch: u64, reason: &str, t: (u64, u64)| {
        h.op(
            p,
            "session",
            "handoff",
            json!({"from": from, "to": 1 - from, "epoch": epoch, "mode": "pull"}),
            json!({"code": "FailedPrecondition", "reason": reason}),
            Outcome::Fail,
            Some("refused"),
            (t.0, Some(t.1)),
        )
    };
    let mut good = handoff(H::new(), 2, 0, 2, 0, (0, 10));
    good = refused(good, 1, 0, 1, "FENCED", (20, 30));
    good = refused(good, 1, 0, 2, "NOT_HOLDER", (40, 50));
    good = handoff(good, 1, 1, 3, 0, (60, 70));
    let r = good.check();
    assert!(r.valid, "{r:#?}");
    // A refusal with the wrong reason is not linearizable either.
    let bad = refused(
        handoff(H::new(), 2, 0, 2, 0, (0, 10)),
        1,
        1,
        2,
        "FENCED",
        (20, 30),
    );
    assert_eq!(kinds(&bad.check()), ["not-linearizable"]);
    // Terminal 0 at epoch 1 hands away a session at epoch 2.
    let mut bad = handoff(H::new(), 2, 0, 2, 0, (0, 10));
    bad = bad.op(
        1,
        "session",
        "handoff",
        json!({"from": 0, "to": 1, "epoch": 1, "mode": "push"}),
        json!({"accepted": true, "epoch": 3, "terminal": 1, "seq": 0}),
        Outcome::Ok,
        None,
        (20, Some(30)),
    );
    assert_eq!(
        kinds(&bad.check()),
        ["fenced-handoff-accepted", "not-linearizable"]
    );
}

#[test]
fn progress_going_back_is_reported() {
    let mut h = progress(H::new(), 1, 0, 1, 5, true, (0, 10));
    h = get(h, 2, (1, 0, 3), (20, 30), false);
    let r = h.check();
    assert_eq!(kinds(&r), ["not-linearizable", "progress-went-back"]);
    let mut h = progress(H::new(), 1, 0, 1, 5, true, (0, 10));
    h = get(h, 2, (1, 0, 0), (20, 30), true);
    assert_eq!(kinds(&h.check()), ["lost-write", "not-linearizable"]);
}

const SEC: u64 = 1_000_000_000;

/// A lease of `ttl_s` seconds, acknowledged with `account`.
fn lease_ttl(h: H, p: u64, rid: &str, account: &str, ttl_s: u64, t: (u64, u64)) -> H {
    h.op(
        p,
        "pool",
        "lease",
        json!({"rid": rid, "user": format!("viewer-{rid}"), "pool_size": 2, "ttl_ms": ttl_s * 1000}),
        json!({"account": account, "lease_id": 1}),
        Outcome::Ok,
        None,
        (t.0, Some(t.1)),
    )
}

fn renew_ended(h: H, p: u64, rid: &str, t: (u64, u64)) -> H {
    h.op(
        p,
        "pool",
        "renew",
        json!({"rid": rid, "ttl_ms": 10_000}),
        json!({"code": "FailedPrecondition"}),
        Outcome::Fail,
        Some("lease ended"),
        (t.0, Some(t.1)),
    )
}

#[test]
fn a_lease_ended_before_its_ttl_is_reported() {
    // r1: 10 s, sent at 0, acknowledged at 0.1 s. Two seconds later it is
    // gone from a listing, refused a renewal as ended, and its account is
    // leased to r2: what a cluster time that jumped hours ahead does.
    let mut h = lease_ttl(H::new(), 1, "r1", "a", 10, (0, SEC / 10));
    h = list(h, 2, &[], (2 * SEC, 2 * SEC + 1));
    h = renew_ended(h, 1, "r1", (3 * SEC, 3 * SEC + 1));
    h = lease_ttl(h, 2, "r2", "a", 10, (4 * SEC, 4 * SEC + 1));
    let r = h.check();
    assert!(!r.valid);
    let early: Vec<&Anomaly> = r
        .anomalies
        .iter()
        .filter(|a| a.kind == "lease-expired-early")
        .collect();
    assert_eq!(early.len(), 3, "{:#?}", r.anomalies);
    assert!(
        early[2].message.contains("lost account a to r2"),
        "{}",
        early[2].message
    );
}

#[test]
fn a_lease_ended_after_its_ttl_or_released_is_not_early() {
    // Gone from a listing only after sent + TTL (the model, whose leases
    // never expire, objects; the time check does not).
    let h = lease_ttl(H::new(), 1, "r1", "a", 10, (0, SEC / 10));
    let r = list(h, 2, &[], (11 * SEC, 11 * SEC + 1)).check();
    assert!(
        !kinds(&r).contains(&"lease-expired-early".to_string()),
        "{r:#?}"
    );
    // Within the clock allowance of the deadline.
    let h = lease_ttl(H::new(), 1, "r1", "a", 10, (0, SEC / 10));
    let r = list(h, 2, &[], (9 * SEC, 9 * SEC + 1)).check();
    assert!(
        !kinds(&r).contains(&"lease-expired-early".to_string()),
        "{r:#?}"
    );
    // Released (the release sent before the listing ended): valid.
    let mut h = lease_ttl(H::new(), 1, "r1", "a", 10, (0, SEC / 10));
    h = release(h, 1, "r1", (SEC, 2 * SEC));
    h = list(h, 2, &[], (2 * SEC, 2 * SEC + 1));
    h = lease_ttl(h, 2, "r2", "a", 10, (3 * SEC, 3 * SEC + 1));
    let r = h.check();
    assert!(r.valid, "{r:#?}");
    // Held and listed all along, renewed past its first TTL: valid.
    let mut h = lease_ttl(H::new(), 1, "r1", "a", 10, (0, SEC / 10));
    h = h.op(
        1,
        "pool",
        "renew",
        json!({"rid": "r1", "ttl_ms": 10_000}),
        json!({"account": "a"}),
        Outcome::Ok,
        None,
        (8 * SEC, Some(8 * SEC + 1)),
    );
    h = list(h, 2, &[("viewer-r1", "a")], (15 * SEC, 15 * SEC + 1));
    let r = h.check();
    assert!(r.valid, "{r:#?}");
}

const S: u64 = 1_000_000_000;

fn ttl_op(f: &str, input: Value, output: Value, outcome: Outcome, t: (u64, u64)) -> Op {
    Op {
        id: 0,
        process: 1,
        workload: "ttl".into(),
        f: f.into(),
        key: "u".into(),
        input,
        output,
        outcome,
        error: None,
        invoke_ns: t.0,
        complete_ns: (outcome != Outcome::Info).then_some(t.1),
        answered_ns: Some(t.1),
    }
}

fn ttl_history(ops: Vec<Op>) -> Vec<Op> {
    ops.into_iter()
        .enumerate()
        .map(|(id, op)| Op { id, ..op })
        .collect()
}

fn login(live: bool, t: (u64, u64)) -> Op {
    ttl_op(
        "login",
        json!({"ttl_ms": 4000, "live": live}),
        json!({}),
        Outcome::Ok,
        t,
    )
}

fn heartbeat(known: bool, t: (u64, u64)) -> Op {
    ttl_op(
        "heartbeat",
        json!({}),
        json!({ "known": known }),
        Outcome::Ok,
        t,
    )
}

fn ttl_read(online: bool, t: (u64, u64)) -> Op {
    ttl_op(
        "read",
        json!({}),
        json!({ "online": online }),
        Outcome::Ok,
        t,
    )
}

/// The bad history of issue 23 item 9: heartbeats acknowledged every
/// second, and the user found expired 1.9 s after the last one.
#[test]
fn ttl_a_heartbeating_user_seen_expired_within_its_ttl_is_an_anomaly() {
    let ops = ttl_history(vec![
        login(true, (0, S / 10)),
        heartbeat(true, (S, S + S / 10)),
        heartbeat(true, (2 * S, 2 * S + S / 10)),
        heartbeat(false, (3 * S, 3 * S + 9 * S / 10)),
    ]);
    let r = check(&ops, Duration::from_secs(5));
    assert!(!r.valid);
    assert_eq!(r.kinds().get("live-user-expired"), Some(&1), "{r:?}");
    // A linearizable read showing it offline is caught the same way.
    let ops = ttl_history(vec![
        login(true, (0, S / 10)),
        heartbeat(true, (S, S + S / 10)),
        ttl_read(false, (2 * S, 2 * S + S / 10)),
    ]);
    let r = check(&ops, Duration::from_secs(5));
    assert_eq!(r.kinds().get("live-user-expired"), Some(&1), "{r:?}");
}

/// Expired after its heartbeats failed for longer than the TTL: allowed,
/// even when the first heartbeat after the silence was still acknowledged
/// (it raced with the expiry already proposed); and so is logging in again
/// afterwards and heartbeating on.
#[test]
fn ttl_an_expiry_after_a_ttl_of_silence_is_fine() {
    let failed = ttl_op(
        "heartbeat",
        json!({}),
        json!({"code": "Unavailable"}),
        Outcome::Fail,
        (2 * S, 3 * S),
    );
    let ops = ttl_history(vec![
        login(true, (0, S / 10)),
        heartbeat(true, (S, S + S / 10)),
        failed,
        heartbeat(true, (5 * S + S / 2, 5 * S + 6 * S / 10)),
        ttl_read(false, (6 * S, 6 * S + S / 10)),
        login(true, (7 * S, 7 * S + S / 10)),
        heartbeat(true, (8 * S, 8 * S + S / 10)),
    ]);
    let r = check(&ops, Duration::from_secs(5));
    assert!(r.valid, "{r:?}");
}

#[test]
fn ttl_silent_users_must_expire_within_ttl_and_grace_but_not_before() {
    let grace = crate::workload::TTL_GRACE_MS * 1_000_000;
    // A write (of a workload not checked here) acknowledged every 0.5 s: the
    // cluster was writable.
    let writes = |ops: &mut Vec<Op>, until: u64| {
        for i in 0..until * 2 {
            let t = i * S / 2;
            let mut w = ttl_op("write", json!({}), json!({}), Outcome::Ok, (t, t + 1));
            w.workload = "other".into();
            w.key = "r".into();
            ops.push(w);
        }
    };
    // Offline a TTL and a bit after login, logged in again: fine.
    let ok = ttl_history(vec![
        login(false, (0, S / 10)),
        ttl_read(true, (S, S + S / 10)),
        ttl_read(false, (5 * S, 5 * S + S / 10)),
        login(false, (6 * S, 6 * S + S / 10)),
    ]);
    assert!(check(&ok, Duration::from_secs(5)).valid);
    // Still online past TTL + grace, the cluster writable all along.
    let mut late = vec![
        login(false, (0, S / 10)),
        ttl_read(true, (6 * S + grace, 6 * S + grace + S / 10)),
    ];
    writes(&mut late, 7 + grace / S);
    let r = check(&ttl_history(late.clone()), Duration::from_secs(5));
    assert_eq!(r.kinds().get("silent-user-not-expired"), Some(&1), "{r:?}");
    // The same, but no write went through for that long: nobody could
    // have committed the expiry.
    late.truncate(2);
    writes(&mut late, 5);
    assert!(check(&ttl_history(late), Duration::from_secs(5)).valid);
    // Offline before its TTL ran out.
    let early = ttl_history(vec![
        login(false, (0, S / 10)),
        ttl_read(false, (2 * S, 2 * S + S / 10)),
    ]);
    let r = check(&early, Duration::from_secs(5));
    assert_eq!(
        r.kinds().get("silent-user-expired-early"),
        Some(&1),
        "{r:?}"
    );
}

/// Link-workload ops: `count` (rid, kind) and `read`/`lookup`, on `key`.
impl H {
    #[allow(clippy::too_many_arguments)]
    fn link(
        self,
        p: u64,
        f: &str,
        key: &str,
        input: Value,
        output: Value,
        outcome: Outcome,
        times: (u64, Option<u64>),
    ) -> H {
        self.keyed("link", (p, f, key), input, output, outcome, times)
    }

    /// An op of `workload` on its own key (the other builders use "k").
    fn keyed(
        self,
        workload: &str,
        (p, f, key): (u64, &str, &str),
        input: Value,
        output: Value,
        outcome: Outcome,
        times: (u64, Option<u64>),
    ) -> H {
        let mut h = self.op(p, workload, f, input, output, outcome, None, times);
        if let Some(last) = h.0.last_mut() {
            last.key = key.into();
        }
        h
    }
    fn count(self, p: u64, item: &str, rid: &str, seen: Option<u64>, t: (u64, u64)) -> H {
        let (output, outcome, done) = match seen {
            Some(n) => (
                json!({"selections": n, "purchases": 0}),
                Outcome::Ok,
                Some(t.1),
            ),
            None => (Value::Null, Outcome::Info, None),
        };
        self.link(
            p,
            "count",
            item,
            json!({"rid": rid, "kind": "selection"}),
            output,
            outcome,
            (t.0, done),
        )
    }
    fn item_read(self, p: u64, item: &str, n: u64, t: (u64, u64), fin: bool) -> H {
        self.link(
            p,
            "read",
            item,
            json!({"final": fin}),
            json!({"selections": n, "purchases": 0}),
            Outcome::Ok,
            (t.0, Some(t.1)),
        )
    }
    fn lookup(self, p: u64, items: Value, t: (u64, u64)) -> H {
        self.link(
            p,
            "lookup",
            "lookup",
            json!({}),
            json!({ "items": items }),
            Outcome::Ok,
            (t.0, Some(t.1)),
        )
    }
}

#[test]
fn a_link_history_with_retries_and_unknown_counts_is_valid() {
    let r = H::new()
        .count(1, "a", "r1", None, (0, 5)) // unknown outcome...
        .count(1, "a", "r1", Some(1), (6, 10)) // ...retried: counted once
        .count(2, "a", "r2", None, (11, 12)) // never known
        .count(2, "b", "r3", Some(1), (13, 14))
        .count(2, "b", "r4", Some(2), (15, 16))
        .lookup(3, json!([[2, "b"], [1, "a"]]), (20, 30))
        .item_read(3, "a", 2, (40, 41), true) // r2 landed after all
        .item_read(3, "b", 2, (42, 43), true)
        .check();
    assert!(r.valid, "{r:#?}");
}

#[test]
fn a_retry_counted_twice_is_a_double_count() {
    let r = H::new()
        .count(1, "a", "r1", None, (0, 5))
        .count(1, "a", "r1", Some(2), (6, 10)) // the retry counted again
        .item_read(3, "a", 2, (40, 41), true)
        .check();
    assert_eq!(kinds(&r), ["double-count"]);
}

#[test]
fn an_acknowledged_count_gone_is_a_lost_count() {
    let r = H::new()
        .count(1, "a", "r1", Some(1), (0, 5))
        .count(1, "a", "r2", Some(2), (6, 10))
        .item_read(3, "a", 1, (40, 41), true)
        .check();
    assert_eq!(kinds(&r), ["lost-count"]);
}

#[test]
fn a_ranking_against_the_counts_is_reported() {
    let r = H::new()
        .count(1, "a", "r1", Some(1), (0, 5))
        .count(1, "b", "r2", Some(1), (6, 7))
        .count(1, "b", "r3", Some(2), (8, 9))
        // b has 2 acknowledged selections, a 1: listed out of order, and
        // b's rank is not its count.
        .lookup(3, json!([[1, "a"], [5, "b"]]), (20, 30))
        .check();
    assert_eq!(
        kinds(&r),
        ["ranking-disagrees-with-counts", "ranking-out-of-order"]
    );
}

/// Share-workload ops on `key`; the setup facts as the workload records
/// them (one server of 1000 bytes, u0 and u1 friends).
impl H {
    #[allow(clippy::too_many_arguments)]
    fn sh(
        self,
        p: u64,
        f: &str,
        key: &str,
        input: Value,
        output: Value,
        outcome: Outcome,
        times: (u64, Option<u64>),
    ) -> H {
        self.keyed("share", (p, f, key), input, output, outcome, times)
    }
    fn share_setup(self) -> H {
        self.sh(
            9,
            "register-storage",
            "st-a",
            json!({"server": "st-a", "capacity": 1000}),
            json!({}),
            Outcome::Ok,
            (0, Some(1)),
        )
        .sh(
            9,
            "befriend",
            "u0|u1",
            json!({"user": "u0", "friend": "u1"}),
            json!({}),
            Outcome::Ok,
            (2, Some(3)),
        )
    }
    /// A share request of u0 for u1; `answer` = (share id, server), or an
    /// unknown outcome.
    fn share(self, rid: &str, receivers: &[&str], answer: Option<(u64, &str)>, t: (u64, u64)) -> H {
        let input = json!({"rid": rid, "owner": "u0", "receivers": receivers, "size": 500});
        let (output, outcome, done) = match answer {
            Some((id, server)) => (
                json!({"share_id": id, "owner": "u0", "server": server, "size": 500,
                       "state": "RESERVED", "replayed": false}),
                Outcome::Ok,
                Some(t.1),
            ),
            None => (Value::Null, Outcome::Info, None),
        };
        self.sh(1, "share", "u0", input, output, outcome, (t.0, done))
    }
    fn commit(self, id: u64, size: u64, t: (u64, u64)) -> H {
        self.sh(
            1,
            "commit",
            &id.to_string(),
            json!({"share_id": id, "size": size}),
            json!({"share_id": id, "owner": "u0", "server": "st-a", "size": size,
                   "state": "COMMITTED"}),
            Outcome::Ok,
            (t.0, Some(t.1)),
        )
    }
    fn delete(self, id: u64, known: bool, t: (u64, u64)) -> H {
        let (output, outcome, done) = if known {
            (json!({}), Outcome::Ok, Some(t.1))
        } else {
            (Value::Null, Outcome::Info, None)
        };
        self.sh(
            1,
            "delete",
            &id.to_string(),
            json!({"share_id": id}),
            output,
            outcome,
            (t.0, done),
        )
    }
    fn access(self, id: u64, user: &str, granted: bool, t: (u64, u64)) -> H {
        let (output, outcome) = if granted {
            (
                json!({"share_id": id, "owner": "u0", "server": "st-a"}),
                Outcome::Ok,
            )
        } else {
            (
                json!({"code": "PermissionDenied", "reason": "NOT_FRIEND"}),
                Outcome::Fail,
            )
        };
        self.sh(
            2,
            "access",
            &id.to_string(),
            json!({"share_id": id, "user": user, "owner": "u0"}),
            output,
            outcome,
            (t.0, Some(t.1)),
        )
    }
    /// A beat of st-d (TTL 1.5 s) answered up since `since`; times in ms.
    fn beat(self, since: u64, t: (u64, u64)) -> H {
        self.sh(
            4,
            "storage-beat",
            "st-d",
            json!({"server": "st-d", "ttl_ms": 1500}),
            json!({"up": true, "up_since": since}),
            Outcome::Ok,
            (t.0 * MS, Some(t.1 * MS)),
        )
    }
    /// A read showing st-d `up` since `since`; times in ms.
    fn beaten_read(self, up: bool, since: u64, t: (u64, u64)) -> H {
        self.sh(
            3,
            "storage",
            "storage",
            json!({"final": false}),
            json!({"servers": [{"server": "st-d", "capacity": 600, "reserved": 0,
                                "committed": 0, "shares": 0, "up": up, "up_since": since}]}),
            Outcome::Ok,
            (t.0 * MS, Some(t.1 * MS)),
        )
    }
    /// A read of st-a: (reserved, committed) of its 1000 bytes.
    fn storage(self, reserved: u64, committed: u64, t: (u64, u64), fin: bool) -> H {
        self.sh(
            3,
            "storage",
            "storage",
            json!({"final": fin}),
            json!({"servers": [{"server": "st-a", "capacity": 1000, "reserved": reserved,
                                "committed": committed, "shares": 2}]}),
            Outcome::Ok,
            (t.0, Some(t.1)),
        )
    }
}

#[test]
fn a_share_history_with_retries_refusals_and_deletes_is_valid() {
    let r = H::new()
        .share_setup()
        .share("r1", &["u1"], None, (10, 15)) // unknown...
        .share("r1", &["u1"], Some((1, "st-a")), (16, 20)) // ...the retry: the same share
        .commit(1, 400, (21, 30))
        .share("r2", &["u1"], Some((2, "st-a")), (31, 40))
        .commit(2, 500, (41, 50))
        .storage(0, 900, (51, 60), false)
        .access(1, "u1", true, (61, 62)) // a friend
        .access(1, "u0", true, (63, 64)) // the owner
        .access(1, "u2", false, (65, 66)) // refused: never a friend
        .delete(1, true, (70, 80))
        .share("r3", &["u1"], Some((3, "st-a")), (81, 90))
        .commit(3, 500, (91, 100)) // 500 + 500 after share 1 went
        .delete(2, false, (101, 102)) // unknown: may be gone
        .storage(0, 500, (110, 120), true)
        .check();
    assert!(r.valid, "{r:#?}");
}

#[test]
fn a_storage_read_over_capacity_is_oversubscribed() {
    let r = H::new()
        .share_setup()
        .storage(300, 800, (10, 20), false)
        .check();
    assert_eq!(kinds(&r), ["oversubscribed"]);
}

#[test]
fn acknowledged_commits_over_capacity_are_oversubscribed() {
    // No read at all: 600 + 600 committed and never deleted on 1000 bytes.
    let r = H::new()
        .share_setup()
        .share("r1", &["u1"], Some((1, "st-a")), (10, 20))
        .commit(1, 600, (21, 30))
        .share("r2", &["u1"], Some((2, "st-a")), (31, 40))
        .commit(2, 600, (41, 50))
        .check();
    assert_eq!(kinds(&r), ["oversubscribed"]);
    // With the first deleted before the second commit, it fits.
    let r = H::new()
        .share_setup()
        .share("r1", &["u1"], Some((1, "st-a")), (10, 20))
        .commit(1, 600, (21, 30))
        .delete(1, true, (31, 35))
        .share("r2", &["u1"], Some((2, "st-a")), (36, 40))
        .commit(2, 600, (41, 50))
        .check();
    assert!(r.valid, "{r:#?}");
}

#[test]
fn a_committed_share_missing_from_a_read_is_a_lost_commit() {
    let r = H::new()
        .share_setup()
        .share("r1", &["u1"], Some((1, "st-a")), (10, 20))
        .commit(1, 400, (21, 30))
        .storage(0, 0, (40, 50), true)
        .check();
    assert_eq!(kinds(&r), ["lost-commit"]);
}

#[test]
fn access_granted_to_a_non_friend_is_reported() {
    let r = H::new()
        .share_setup()
        .share("r1", &["u1"], Some((1, "st-a")), (10, 20))
        .commit(1, 400, (21, 30))
        .access(1, "u3", true, (31, 32))
        .check();
    assert_eq!(kinds(&r), ["non-friend-access"]);
}

#[test]
fn a_share_admitted_for_a_non_friend_is_reported() {
    let r = H::new()
        .share_setup()
        .share("r1", &["u1", "u4"], Some((1, "st-a")), (10, 20))
        .check();
    assert_eq!(kinds(&r), ["non-friend-share"]);
}

#[test]
fn a_retry_answered_with_another_share_is_not_idempotent() {
    let r = H::new()
        .share_setup()
        .share("r1", &["u1"], None, (10, 15))
        .share("r1", &["u1"], Some((1, "st-a")), (16, 20))
        .share("r1", &["u1"], Some((2, "st-a")), (21, 25))
        .check();
    assert_eq!(kinds(&r), ["retry-not-idempotent"]);
}

const MS: u64 = 1_000_000;

/// Beats every 300 ms with a TTL of 1.5 s: the server must stay up in one
/// spell. Seen down 500 ms after a beat (or up in a new spell) is the
/// owner expiring a server whose beats reached it.
#[test]
fn a_heartbeat_kept_server_seen_down_within_its_ttl_is_reported() {
    let beating = || {
        H::new()
            .share_setup()
            .beat(100, (0, 10))
            .beat(100, (300, 310))
            .beat(100, (600, 610))
    };
    let r = beating().beaten_read(false, 0, (1100, 1110)).check();
    assert_eq!(kinds(&r), ["live-storage-expired"]);
    let r = beating().beat(1200, (900, 910)).check();
    assert_eq!(kinds(&r), ["live-storage-expired"]);
    let r = beating().beaten_read(true, 100, (1100, 1110)).check();
    assert!(r.valid, "{r:#?}");
}

/// Silent for longer than the TTL: expired, and the next beat brings it up
/// in a new spell (which starts the count again); a read that overlapped
/// that beat may show it still down.
#[test]
fn a_heartbeat_kept_server_expired_after_a_silence_is_valid() {
    let r = H::new()
        .share_setup()
        .beat(100, (0, 10))
        .beat(100, (300, 310))
        .beaten_read(false, 0, (2000, 2010)) // 1.7 s after the last beat
        .beat(4000, (3000, 3020))
        .beaten_read(false, 0, (3005, 3030)) // served before the beat
        .beat(4000, (3300, 3310))
        .beaten_read(true, 4000, (3400, 3410))
        .check();
    assert!(r.valid, "{r:#?}");
    // The new spell is watched like the first: down 400 ms into it is not.
    let r = H::new()
        .share_setup()
        .beat(100, (0, 10))
        .beat(4000, (3000, 3020))
        .beaten_read(false, 0, (3400, 3410))
        .check();
    assert_eq!(kinds(&r), ["live-storage-expired"]);
}
