//! What each call needs, and whether a caller has it: the pure part of
//! authorization (no I/O, no clock), so it is decided one way everywhere
//! and tested as a table.
//!
//! Every gRPC method of the public contract has an entry in
//! [`permission_of`]; a method without one is refused, so a new RPC cannot
//! ship unguarded (a test walks `herald.proto` to keep the table whole).

use std::collections::BTreeSet;

use crate::state::Role;

/// Who a request comes from, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credential at all (served only while auth is off, or on open routes).
    Anonymous,
    /// A cluster node, by its node certificate.
    Node(u64),
    /// A user, by client certificate or bearer token.
    User {
        /// The user's name.
        name: String,
        /// How it proved it.
        via: Via,
    },
}

impl Principal {
    /// The name the replicated state records for this caller (a lease's
    /// owner): the user's name, `node:<id>`, or empty when anonymous.
    pub fn name(&self) -> String {
        match self {
            Principal::Anonymous => String::new(),
            Principal::Node(id) => format!("node:{id}"),
            Principal::User { name, .. } => name.clone(),
        }
    }
}

/// How a user proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A client certificate from the cluster's CA.
    Certificate,
    /// A bearer token recorded in the auth state.
    Token(u64),
    /// A token whose digest is in the node's `auth.root_token_sha256`.
    RootToken,
}

impl Via {
    /// For status output.
    pub fn describe(&self) -> String {
        match self {
            Via::Certificate => "client certificate".into(),
            Via::Token(id) => format!("token {id}"),
            Via::RootToken => "root token (node config)".into(),
        }
    }
}

/// What a call needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anyone, even unauthenticated (`/health`, `/metrics`).
    Open,
    /// Any authenticated caller (node status, members, "who am I").
    Authenticated,
    /// Decided per call inside the request (`Herald/Batch`).
    PerCall,
    /// One API group's role (or admin).
    Role(Role),
}

impl Permission {
    /// For metrics labels and messages.
    pub fn label(self) -> &'static str {
        match self {
            Permission::Open => "open",
            Permission::Authenticated => "authenticated",
            Permission::PerCall => "per_call",
            Permission::Role(r) => r.name(),
        }
    }
}

/// What a gRPC method (`/herald.v1.Herald/Login`) needs; `None` for a
/// method this table does not know, which is refused.
pub fn permission_of(path: &str) -> Option<Permission> {
    use Permission::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let p = match (service, method) {
        ("herald.v1.Herald", "Login" | "Logout" | "ChangePermission" | "Heartbeat") => {
            Role(crate::state::Role::Publisher)
        }
        ("herald.v1.Herald", "GetPresence" | "BatchGetPresence" | "Watch") => {
            Role(crate::state::Role::Reader)
        }
        ("herald.v1.Herald", "Batch") => PerCall,
        (
            "herald.v1.Herald",
            "ConnectSession" | "Progress" | "Bind" | "Handoff" | "GetSession" | "SessionLog"
            | "DeleteSession" | "GetBinding" | "Unbind" | "ListSessions" | "WatchSessions"
            | "OfferHandoff" | "AcceptHandoff",
        ) => Role(crate::state::Role::Sessions),
        (
            "herald.v1.Herald",
            "CreatePlatform" | "CreatePool" | "LeaseAccount" | "RenewLease" | "ReleaseLease"
            | "PutAccountData" | "ListPools" | "ListLeases" | "AccountLogin" | "DeletePool"
            | "DeletePlatform" | "LeaseAndLogin" | "RegisterAccount" | "RemoveAccount"
            | "ListAccounts" | "GetAccountData" | "SetContentUnits" | "RemoveContent"
            | "FirstAccess",
        ) => Role(crate::state::Role::Pools),
        ("herald.v1.Share", "RegisterStorage" | "UpdateStorage" | "RemoveStorage") => {
            Role(crate::state::Role::Admin)
        }
        (
            "herald.v1.Share",
            "StorageHeartbeat" | "ListStorage" | "AddFriend" | "RemoveFriend" | "ListFriends"
            | "ShareMedia" | "CommitShare" | "DeleteShare" | "AccessShare" | "GetShare"
            | "ListShares" | "CheckShareKey",
        ) => Role(crate::state::Role::Share),
        ("herald.v1.Link", _) => Role(crate::state::Role::Link),
        ("herald.v1.Admin", "Status" | "Members") => Authenticated,
        (
            "herald.v1.Admin",
            "Init" | "AddLearner" | "Promote" | "Remove" | "ChangeMembership" | "TransferLeader"
            | "Snapshot" | "SetClockOffset" | "SnapshotSave",
        ) => Role(crate::state::Role::Admin),
        ("herald.v1.Auth", "Status") => Authenticated,
        (
            "herald.v1.Auth",
            "Enable" | "Disable" | "UserAdd" | "UserRemove" | "UserList" | "RoleGrant"
            | "RoleRevoke" | "TokenCreate" | "TokenRevoke" | "TokenList",
        ) => Role(crate::state::Role::Admin),
        _ => return None,
    };
    Some(p)
}

/// What [`decide`] reads of the auth state and the node's config.
pub struct View<'a> {
    /// Whether auth is enforced now.
    pub enabled: bool,
    /// The config's founding administrators.
    pub root_users: &'a BTreeSet<String>,
    /// A user's replicated roles (`None`: no such user).
    pub roles: &'a dyn Fn(&str) -> Option<BTreeSet<Role>>,
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No usable credential (gRPC `UNAUTHENTICATED`, HTTP 401).
    Unauthenticated(String),
    /// A known caller without the permission (gRPC `PERMISSION_DENIED`, HTTP 403).
    PermissionDenied(String),
}

impl Refusal {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(m) | Refusal::PermissionDenied(m) => m,
        }
    }

    /// `unauthenticated` or `permission_denied`, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::PermissionDenied(_) => "permission_denied",
        }
    }
}

/// The message every request without a credential gets.
pub const NO_CREDENTIAL: &str = "no credential: present a client certificate from the cluster's CA \
     or an \"authorization: Bearer <token>\" header";

/// Whether `principal` may make a call needing `needs`; `what` names the
/// call in the refusal.
pub fn decide(
    principal: &Principal,
    needs: Permission,
    what: &str,
    view: &View<'_>,
) -> Result<(), Refusal> {
    if needs == Permission::Open || !view.enabled {
        return Ok(());
    }
    let name = match principal {
        Principal::Anonymous => {
            return Err(Refusal::Unauthenticated(format!("{what}: {NO_CREDENTIAL}")));
        }
        // Nodes act for the callers they serve (forwarded admin calls), and
        // already hold everything a node can reach.
        Principal::Node(_) => return Ok(()),
        Principal::User { name, .. } => name,
    };
    let role = match needs {
        Permission::Open | Permission::Authenticated | Permission::PerCall => return Ok(()),
        Permission::Role(r) => r,
    };
    if view.root_users.contains(name) {
        return Ok(());
    }
    let roles = (view.roles)(name);
    match roles {
        Some(roles) if roles.contains(&role) || roles.contains(&Role::Admin) => Ok(()),
        Some(roles) => {
            let has: Vec<&str> = roles.iter().map(|r| r.name()).collect();
            Err(Refusal::PermissionDenied(format!(
                "{what}: user {name:?} lacks the {role} role (has: {})",
                if has.is_empty() {
                    "none".to_string()
                } else {
                    has.join(", ")
                }
            )))
        }
        None => Err(Refusal::PermissionDenied(format!(
            "{what}: user {name:?} lacks the {role} role (no such user: \
             heraldctl user add {name} --roles {role})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Principal {
        Principal::User {
            name: name.into(),
            via: Via::Certificate,
        }
    }

    #[test]
    fn the_decision_table() {
        let roots: BTreeSet<String> = ["root".to_string()].into();
        let roles = |name: &str| match name {
            "pub" => Some([Role::Publisher].into()),
            "ops" => Some([Role::Admin].into()),
            "none" => Some(BTreeSet::new()),
            _ => None,
        };
        let on = View {
            enabled: true,
            root_users: &roots,
            roles: &roles,
        };
        let off = View {
            enabled: false,
            ..View {
                enabled: true,
                root_users: &roots,
                roles: &roles,
            }
        };
        let publisher = Permission::Role(Role::Publisher);
        let admin = Permission::Role(Role::Admin);
        let unauth = |r: Result<(), Refusal>| matches!(r, Err(Refusal::Unauthenticated(_)));
        let denied = |r: Result<(), Refusal>| matches!(r, Err(Refusal::PermissionDenied(_)));

        assert!(unauth(decide(&Principal::Anonymous, publisher, "x", &on)));
        assert!(unauth(decide(
            &Principal::Anonymous,
            Permission::Authenticated,
            "x",
            &on
        )));
        assert!(decide(&Principal::Anonymous, Permission::Open, "x", &on).is_ok());
        assert!(decide(&Principal::Anonymous, admin, "x", &off).is_ok());

        assert!(decide(&user("pub"), publisher, "x", &on).is_ok());
        assert!(denied(decide(&user("pub"), admin, "x", &on)));
        assert!(
            decide(&user("ops"), publisher, "x", &on).is_ok(),
            "admin implies all"
        );
        assert!(
            decide(&user("root"), admin, "x", &on).is_ok(),
            "config root"
        );
        assert!(denied(decide(&user("none"), publisher, "x", &on)));
        assert!(denied(decide(&user("stranger"), publisher, "x", &on)));
        assert!(decide(&user("stranger"), Permission::Authenticated, "x", &on).is_ok());
        assert!(decide(&Principal::Node(2), admin, "x", &on).is_ok());

        let msg = decide(&user("pub"), admin, "/herald.v1.Admin/Promote", &on)
            .unwrap_err()
            .message()
            .to_string();
        assert!(
            msg.contains("admin role") && msg.contains("has: publisher") && msg.contains("Promote"),
            "{msg}"
        );
    }

    /// Every rpc of every service in the contract has an entry: a new RPC
    /// cannot be served before someone decides who may call it.
    #[test]
    fn every_rpc_in_the_contract_has_a_permission() {
        let proto = include_str!("../../../client/proto/herald.proto");
        let mut service = None;
        let mut seen = 0;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            }
            let Some(rest) = line.strip_prefix("rpc ") else {
                continue;
            };
            let method = rest.split('(').next().unwrap_or("").trim();
            let service = service.as_deref().expect("rpc outside a service");
            if service == "Peer" {
                continue; // the peer listener admits nodes only (guard.rs)
            }
            let path = format!("/herald.v1.{service}/{method}");
            assert!(
                permission_of(&path).is_some(),
                "{path} has no entry in permission_of"
            );
            seen += 1;
        }
        assert!(seen > 30, "parsed only {seen} rpcs");
        assert_eq!(permission_of("/herald.v1.Herald/Nope"), None);
        assert_eq!(permission_of("garbage"), None);
    }
}
