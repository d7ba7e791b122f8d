//! Quotas and retention: how much of each kind of record the replicated
//! state may hold, and how long idle records are kept.
//!
//! Every replica holds the whole state, so one client with valid requests
//! could otherwise fill every node at once, and a replay of the log after a
//! crash would fill it again. Field limits ([`super::limits`]) bound one
//! command; quotas bound what commands add up to.
//!
//! Quotas are part of the replicated state, not read from each node's file
//! inside `apply`: two replicas with different files would otherwise accept
//! different commands from the same log. A node's `[quotas]` section is what
//! it wants the cluster to enforce; the leader writes its own with a
//! [`Command::SetQuotas`](super::Command::SetQuotas) when they differ from
//! the replicated ones (`crate::members`), so the cluster enforces the
//! current leader's file and every replica applies the same values.
//!
//! A quota is checked twice with the same code, like a field limit: before a
//! command is proposed ([`super::State::admit`], so a refused command never
//! reaches the log) and in `apply` (so two commands that raced past the first
//! check cannot both land). A refusal is `ResourceExhausted` and names the
//! quota and its value. Lowering a quota never deletes anything: what exists
//! stays, and only what would add to it is refused.
//!
//! The type and its defaults and bounds live in `herald_config::quotas`
//! (they are part of a node's config file); this module is where the state
//! machine enforces them.

pub use herald_config::quotas::{QuotaError, Quotas};

use super::{Reason, StateError};

impl From<QuotaError> for StateError {
    fn from(e: QuotaError) -> Self {
        StateError::invalid(e.field, e.reason)
    }
}

/// The refusal of a command that would go over `quota` (its name under
/// `[quotas]`) whose value is `value`; `detail` says what is there already.
pub(crate) fn over(quota: &str, value: impl std::fmt::Display, detail: String) -> StateError {
    StateError::exhausted(
        Reason::QuotaExceeded,
        format!("quota {quota} = {value} reached: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::limits::MAX_TTL_MS;
    use super::super::tests::Harness;
    use super::super::*;
    use super::*;

    /// A harness whose cluster enforces `q` (written as the leader would).
    fn with(q: Quotas) -> Harness {
        let mut h = Harness::new();
        h.ok(Command::SetQuotas(q));
        h
    }

    fn login(uid: &str, client_type: &str) -> Command {
        Command::Login(Login {
            uid: uid.into(),
            sid: 1,
            client_type: client_type.into(),
            connection_id: String::new(),
            accept_strangers: true,
            ext: BTreeMap::new(),
            ttl_ms: 0,
        })
    }

    fn logout(uid: &str) -> Command {
        Command::Logout(Logout {
            uid: uid.into(),
            sid: 1,
            client_type: None,
            connection_id: String::new(),
            ext: BTreeMap::new(),
            reason: LogoutReason::User,
            login_since_ms: None,
            owner_epoch: None,
        })
    }

    fn mac(n: u8) -> Terminal {
        Terminal::new(TerminalKind::Mac, &format!("00:11:22:33:44:{n:02x}")).unwrap()
    }

    fn connect(t: Terminal) -> Command {
        Command::Connect(Connect {
            terminal: t,
            app_url: "app://x".into(),
            requires: vec![],
        })
    }

    fn session_id(r: Response) -> u64 {
        match r {
            Response::Session(s) => s.session_id,
            other => panic!("{other:?}"),
        }
    }

    fn platform(units: usize) -> Command {
        Command::CreatePlatform(CreatePlatform {
            name: format!("p{units}-{}", units * 7),
            units: (0..units)
                .map(|i| UnitSpec {
                    name: format!("u{i}"),
                    service_start_ms: 0,
                    service_end_ms: 0,
                    qos_class: String::new(),
                    response_time_ms: 0,
                    access_policy: AccessPolicy::LeasedAccounts,
                })
                .collect(),
        })
    }

    fn pool(unit_id: u64, name: &str, provision: u32, max_size: u32) -> Command {
        Command::CreatePool(CreatePool {
            unit_id,
            name: name.into(),
            provision,
            max_size,
            default_ttl_ms: 60_000,
        })
    }

    fn lease(pool_id: u64, request_id: &str) -> Command {
        Command::Lease(LeaseAccount {
            pool_id,
            user: "viewer".into(),
            ttl_ms: 0,
            request_id: request_id.into(),
            caller: String::new(),
            password: PasswordHash::new([1; 16], "pw"),
            lease_secret: SecretHash::of("secret"),
        })
    }

    fn lease_id(r: Response) -> u64 {
        match r {
            Response::Lease { lease, .. } => lease.lease_id,
            other => panic!("{other:?}"),
        }
    }

    /// The refusal is ResourceExhausted and names the quota and its value.
    fn assert_quota(e: StateError, quota: &str, value: u64) {
        match &e {
            StateError::ResourceExhausted { reason, .. } => assert!(
                reason.starts_with(&format!("quota {quota} = {value} reached: ")),
                "{reason}"
            ),
            other => panic!("expected ResourceExhausted for {quota}, got {other:?}"),
        }
    }

    #[test]
    fn clients_per_user_and_users() {
        let mut h = with(Quotas {
            clients_per_user: 2,
            users: 2,
            ..Quotas::default()
        });
        h.ok(login("a", "pc"));
        h.ok(login("a", "mobile"));
        // The same client again is a replacement, not a third client.
        h.ok(login("a", "pc"));
        assert_quota(h.err(login("a", "web")), "clients_per_user", 2);
        h.ok(login("b", "pc"));
        assert_quota(h.err(login("c", "pc")), "users", 2);
        // Known users still log in; admit says the same as apply.
        assert!(h.state.admit(&login("b", "mobile")).is_ok());
        assert_quota(h.state.admit(&login("c", "pc")).unwrap_err(), "users", 2);
    }

    /// Issue 18: the connections of one user are capped over every client
    /// type; a connection already online logs in again without a new slot.
    #[test]
    fn connections_per_user() {
        let mut h = with(Quotas {
            clients_per_user: 2,
            connections_per_user: 3,
            ..Quotas::default()
        });
        let on = |client: &str, conn: &str| {
            Command::Login(Login {
                uid: "a".into(),
                sid: 1,
                client_type: client.into(),
                connection_id: conn.into(),
                accept_strangers: true,
                ext: BTreeMap::new(),
                ttl_ms: 0,
            })
        };
        h.ok(on("mobile", "p1"));
        h.ok(on("mobile", "p2"));
        h.ok(on("pc", ""));
        h.ok(on("mobile", "p2"));
        assert_quota(h.err(on("mobile", "p3")), "connections_per_user", 3);
        // admit, which runs before a command is logged, says the same.
        assert_quota(
            h.state.admit(&on("pc", "other")).unwrap_err(),
            "connections_per_user",
            3,
        );
        // Client types are still capped on their own.
        h.ok(logout("a"));
        h.ok(on("mobile", "p1"));
        h.ok(on("pc", ""));
        assert_quota(h.err(on("web", "")), "clients_per_user", 2);
        h.ok(on("pc", "tab-2"));
        assert_quota(h.err(on("pc", "tab-3")), "connections_per_user", 3);
        // Another user has its own connections.
        let other = Command::Login(Login {
            uid: "b".into(),
            ..match on("mobile", "p1") {
                Command::Login(l) => l,
                _ => unreachable!(),
            }
        });
        h.ok(other);
    }

    #[test]
    fn sessions_per_terminal_sessions_and_bindings() {
        let mut h = with(Quotas {
            sessions_per_terminal: 2,
            sessions: 3,
            bindings: 1,
            ..Quotas::default()
        });
        h.ok(connect(mac(1)));
        h.ok(connect(mac(1)));
        assert_quota(h.err(connect(mac(1))), "sessions_per_terminal", 2);
        h.ok(connect(mac(2)));
        assert_quota(h.err(connect(mac(3))), "sessions", 3);
        let bind = |a: u8, b: u8| {
            Command::Bind(Bind {
                first: mac(a),
                second: mac(b),
            })
        };
        h.ok(bind(1, 2));
        assert_quota(h.err(bind(3, 4)), "bindings", 1);
        // Rebinding a bound terminal replaces its pair.
        h.ok(bind(1, 3));
    }

    #[test]
    fn platforms_units_pools_and_accounts() {
        let mut h = with(Quotas {
            platforms: 1,
            units_per_platform: 2,
            pools: 3,
            pools_per_unit: 2,
            accounts: 25,
            accounts_per_pool: 20,
            accounts_per_command: 10,
            ..Quotas::default()
        });
        assert_quota(h.err(platform(3)), "units_per_platform", 2);
        h.ok(platform(2));
        assert_quota(h.err(platform(1)), "platforms", 1);
        assert_quota(h.err(pool(1, "big", 11, 0)), "accounts_per_command", 10);
        assert_quota(h.err(pool(1, "wide", 1, 21)), "accounts_per_pool", 20);
        h.ok(pool(1, "a", 10, 20));
        h.ok(pool(1, "b", 10, 20));
        assert_quota(h.err(pool(1, "c", 1, 0)), "pools_per_unit", 2);
        assert_quota(h.err(pool(2, "c", 10, 0)), "accounts", 25);
        h.ok(pool(2, "c", 5, 20)); // 25 accounts now
        assert_quota(h.err(pool(2, "d", 1, 0)), "pools", 3);
        // Pool 3 has five free accounts; the sixth lease would make one more.
        for i in 0..5 {
            h.ok(lease(3, &format!("r{i}")));
        }
        assert_quota(h.err(lease(3, "r5")), "accounts", 25);
        // A replay makes nothing and is not refused.
        h.ok(lease(3, "r0"));
    }

    #[test]
    fn data_bytes_per_account_count_keys_and_values() {
        let mut h = with(Quotas {
            data_bytes_per_account: 100,
            ..Quotas::default()
        });
        h.ok(platform(1));
        h.ok(pool(1, "a", 1, 0));
        let id = lease_id(h.ok(lease(1, "r")));
        let put = |key: &str, n: usize| {
            Command::PutAccountData(PutAccountData {
                lease_id: id,
                user: "viewer".into(),
                lease_secret: SecretHash::of("secret"),
                key: key.into(),
                value: vec![0; n],
            })
        };
        h.ok(put("k1", 48)); // 50 bytes
        h.ok(put("k2", 48)); // 100 bytes
        assert_quota(h.err(put("k3", 0)), "data_bytes_per_account", 100);
        // Replacing a value counts the new one, not both.
        h.ok(put("k2", 48));
        h.ok(put("k2", 10));
        h.ok(put("k3", 36));
    }

    #[test]
    fn lowering_a_quota_keeps_what_exists() {
        let mut h = Harness::new();
        for u in ["a", "b", "c"] {
            h.ok(login(u, "pc"));
        }
        h.ok(Command::SetQuotas(Quotas {
            users: 1,
            ..Quotas::default()
        }));
        assert_eq!(h.state.counts().users, 3);
        h.ok(login("a", "mobile"));
        assert_quota(h.err(login("d", "pc")), "users", 1);
        // Invalid quotas are refused whole.
        assert!(matches!(
            h.err(Command::SetQuotas(Quotas {
                pools: 0,
                ..Quotas::default()
            })),
            StateError::InvalidArgument { .. }
        ));
        assert_eq!(h.state.quotas().users, 1);
    }

    #[test]
    fn idle_sessions_go_after_the_retention_with_their_log() {
        let mut h = with(Quotas {
            session_retention_ms: 10_000,
            ..Quotas::default()
        });
        let old = session_id(h.ok(connect(mac(1))));
        h.advance(6_000);
        let busy = session_id(h.ok(connect(mac(2))));
        assert_eq!(h.state.next_due(), Some(h.time_ms - 6_000 + 10_000));
        h.advance(3_000);
        h.ok(Command::Progress(Progress {
            session_id: busy,
            terminal: mac(2),
            epoch: 1,
            seq: 1,
            data: vec![1],
        }));
        h.advance(1_000); // `old` is idle for exactly the retention
        h.ok(Command::Tick);
        assert!(h.state.session(old).is_none());
        assert!(h.state.session_log(old).is_none());
        assert!(h.state.session(busy).is_some());
        h.advance(8_999); // progress at +9 s renewed `busy`
        h.ok(Command::Tick);
        assert!(h.state.session(busy).is_some());
        h.advance(1);
        h.ok(Command::Tick);
        assert!(h.state.session(busy).is_none());
        assert_eq!(h.state.next_due(), None);
        // The freed places count again.
        assert_eq!(h.state.counts().sessions, 0);
    }

    #[test]
    fn offline_users_are_forgotten_after_the_retention_and_online_ones_never() {
        let mut h = with(Quotas {
            presence_retention_ms: MAX_TTL_MS,
            ..Quotas::default()
        });
        h.ok(login("gone", "pc"));
        h.ok(login("here", "pc"));
        h.ok(logout("gone"));
        let gone_at = h.time_ms;
        assert_eq!(h.state.next_due(), Some(gone_at + MAX_TTL_MS));
        h.advance(MAX_TTL_MS - 1);
        h.ok(Command::Tick);
        assert!(h.state.presence("gone").is_some());
        // Logging in again takes a user off the list.
        h.ok(login("gone", "pc"));
        h.advance(MAX_TTL_MS + 1);
        h.ok(Command::Tick);
        assert!(h.state.presence("gone").is_some());
        assert!(h.state.presence("here").is_some());
        h.ok(logout("gone"));
        h.advance(MAX_TTL_MS);
        h.ok(Command::Tick);
        assert!(h.state.presence("gone").is_none());
        assert!(h.state.presence("here").is_some());
        // A restored snapshot rebuilds the index and forgets the same way.
        h.ok(logout("here"));
        let restored = State::from_snapshot(&h.state.to_snapshot().unwrap()).unwrap();
        assert_eq!(restored.next_due(), h.state.next_due());
    }

    #[test]
    fn deletes_free_what_they_held() {
        let mut h = Harness::new();
        h.ok(platform(1));
        h.ok(pool(1, "a", 2, 0));
        let id = lease_id(h.ok(lease(1, "r")));
        assert!(matches!(
            h.err(Command::DeletePlatform(DeletePlatform { platform_id: 1 })),
            StateError::FailedPrecondition { .. }
        ));
        assert!(matches!(
            h.err(Command::DeletePool(DeletePool {
                pool_id: 1,
                force: false
            })),
            StateError::FailedPrecondition { .. }
        ));
        h.ok(Command::DeletePool(DeletePool {
            pool_id: 1,
            force: true,
        }));
        assert_eq!(h.state.counts().accounts, 0);
        assert!(h.state.leases(1).is_err());
        assert_eq!(h.state.next_lease_expiry(), None, "lease {id} ended");
        h.ok(Command::DeletePlatform(DeletePlatform { platform_id: 1 }));
        assert!(h.state.platforms().is_empty());
        // The name is free again.
        h.ok(platform(1));
        let s = session_id(h.ok(connect(mac(1))));
        h.ok(Command::DeleteSession(DeleteSession { session_id: s }));
        assert!(h.state.session(s).is_none());
        assert!(matches!(
            h.err(Command::DeleteSession(DeleteSession { session_id: s })),
            StateError::NotFound { .. }
        ));
    }

    #[test]
    fn the_watch_history_is_bounded_in_bytes_and_shares_the_ext() {
        let mut h = with(Quotas {
            watch_history_bytes: 1024 * 1024,
            ..Quotas::default()
        });
        let ext: BTreeMap<String, String> = [("k".to_string(), "v".repeat(4000))].into();
        h.ok(Command::Login(Login {
            uid: "u".into(),
            sid: 1,
            client_type: "pc".into(),
            connection_id: String::new(),
            accept_strangers: true,
            ext,
            ttl_ms: 0,
        }));
        // Thousands of changes that keep the 4 KB ext: each costs a few
        // hundred bytes, not the ext again.
        for i in 0..2_000u64 {
            h.ok(Command::Permission(Permission {
                uid: "u".into(),
                sid: i,
                accept_strangers: i % 2 == 0,
                ext: BTreeMap::new(),
            }));
        }
        let all = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        assert_eq!(all.len(), 2_001, "no change was compacted");
        assert!(h.state.counts().watch_history_bytes < 1024 * 1024);
        // Changes that replace the ext each cost it: the budget compacts.
        for i in 0..400u64 {
            h.ok(Command::Permission(Permission {
                uid: "u".into(),
                sid: i,
                accept_strangers: true,
                ext: [("k".to_string(), format!("{i:04}").repeat(1000))].into(),
            }));
        }
        assert!(h.state.counts().watch_history_bytes <= 1024 * 1024);
        let kept = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        assert!(kept.len() < 2_401, "the byte budget compacted the oldest");
        assert!(matches!(
            h.state.presence_events_since(1, &BTreeSet::new()),
            Err(StateError::FailedPrecondition { .. })
        ));
    }

    #[test]
    fn defaults_are_valid_and_zero_counts_are_not() {
        Quotas::default().validate().unwrap();
        let q = Quotas {
            clients_per_user: 0,
            ..Quotas::default()
        };
        assert_eq!(
            q.validate().unwrap_err().to_string(),
            "quotas.clients_per_user: must be at least 1"
        );
        let q = Quotas {
            units_per_platform: 65,
            ..Quotas::default()
        };
        assert!(q.validate().is_err());
        let q = Quotas {
            presence_retention_ms: 1000,
            ..Quotas::default()
        };
        assert!(q.validate().is_err());
    }

    #[test]
    fn a_toml_section_overrides_only_what_it_names() {
        let q: Quotas = toml::from_str("clients_per_user = 4\nsession_retention_ms = 0").unwrap();
        assert_eq!(q.clients_per_user, 4);
        assert_eq!(q.session_retention_ms, 0);
        assert_eq!(q.users, Quotas::default().users);
        assert!(toml::from_str::<Quotas>("client_per_user = 4").is_err());
    }
}
