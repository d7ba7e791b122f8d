//! Interactive-application platforms and temporary-account pools (P-iptv).
//!
//! An operator creates a [`Platform`] of units (service period, QoS, access
//! policy). Each unit has pools of temporary accounts, made in advance and
//! grown on demand. A viewer without an account leases one: the node that
//! serves the request makes a random password and a random *lease secret*
//! and proposes only their hashes, so the log, the snapshots and this module
//! never see either in plain text. The password logs the viewer in; the
//! secret proves the caller holds the lease: renew, release, account data and
//! logins to [`AccessPolicy::HolderOnly`] units need it, and listings never
//! show it nor the request id.
//!
//! The rule that matters most: at most one active [`Lease`] per account, at
//! any time, on every replica. It holds because leases are granted, ended and
//! expired only here, in log order, with time taken from the entries; expiry
//! runs at the start of every apply, from an index ordered by expiry time.
//! When a lease ends its account's data and password are wiped and the
//! account goes back to the pool's free set.
//!
//! A retried lease request (same pool and `request_id`) gets the same lease,
//! never a second one, for as long as the lease is active, and is refused for
//! [`REQUEST_ID_RETENTION_MS`] after it ended. Only the caller principal and
//! user that asked first may replay it. A replay cannot re-send the first
//! answer's password (only its hash is kept), so it gets a fresh password and
//! secret that work *beside* the earlier ones: a duplicate delivery never
//! locks out the viewer who already uses the first answer. A lease keeps at
//! most [`MAX_LEASE_CREDENTIALS`] such pairs.

mod contents;
mod registered;

pub use contents::{ContentUnits, ContentView, RemoveContent, SetContentUnits, UnitShown};
pub use registered::{
    KdfHash, MAX_PASSWORD_BYTES, RegisterAccount, RegisteredAccount, RegisteredLogin,
    RemoveAccount, check_password,
};

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::limits::{
    MAX_CALLER_BYTES, MAX_DATA_KEY_BYTES, MAX_DATA_KEYS, MAX_DATA_VALUE_BYTES,
    MAX_LEASE_CREDENTIALS, MAX_LEASE_SECRET_BYTES, MAX_NAME_BYTES, MAX_POOL_SIZE,
    MAX_REQUEST_ID_BYTES, MAX_UNITS, MAX_USER_BYTES, REQUEST_ID_RETENTION_MS, check_bytes,
    check_len, check_ttl,
};
use super::quotas::{Quotas, over};
use super::{Entry, Reason, StateError};

/// SHA-256(salt || password): what an account stores instead of its password.
pub fn hash_password(salt: &[u8; 16], password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// A salted password hash, made by the leader before it proposes a lease.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordHash {
    /// Random per lease.
    pub salt: [u8; 16],
    /// [`hash_password`]`(salt, password)`.
    pub hash: [u8; 32],
}

impl PasswordHash {
    /// Hashes `password` with `salt`.
    pub fn new(salt: [u8; 16], password: &str) -> Self {
        PasswordHash {
            salt,
            hash: hash_password(&salt, password),
        }
    }

    /// True when `password` is the one hashed.
    pub fn matches(&self, password: &str) -> bool {
        same_bytes(&hash_password(&self.salt, password), &self.hash)
    }
}

/// Compares every byte, so the time taken does not tell how much of a guess
/// was right.
fn same_bytes(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// SHA-256 of a lease secret: what commands carry and the state keeps
/// instead of the secret. Herald's secrets are 128 random bits, so unlike a
/// password they need no salt: the hash gives nothing to guess from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Hashes a secret as the caller presented it.
    pub fn of(secret: &str) -> Self {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// True when both hash the same secret (every byte compared).
    pub fn matches(&self, other: &SecretHash) -> bool {
        same_bytes(&self.0, &other.0)
    }
}

/// Checks a presented `lease_secret` (there, and not oversized) and hashes
/// it. The serving node calls it before proposing or reading, so the
/// secret itself goes no further than that node.
pub fn lease_secret_hash(secret: &str) -> Result<SecretHash, StateError> {
    if secret.is_empty() {
        return Err(StateError::invalid(
            "lease_secret",
            "required: the lease_secret LeaseAccount returned with the lease",
        ));
    }
    check_len("lease_secret", secret, 1, MAX_LEASE_SECRET_BYTES)?;
    Ok(SecretHash::of(secret))
}

/// Whether a unit hands out new leases at cluster time `now_ms`: inside its
/// service period and not closed (a lease that could never log in is not
/// handed out). The refusal names which and why.
fn check_in_service(unit: &Unit, now_ms: u64) -> Result<(), StateError> {
    let spec = &unit.spec;
    if !in_period(spec, now_ms) {
        let until = if spec.service_end_ms == 0 {
            "open-ended".to_owned()
        } else {
            format!("until {}", spec.service_end_ms)
        };
        return Err(StateError::precondition(
            Reason::OutOfService,
            format!(
                "unit {} ({}) is outside its service period (from {}, {until}; cluster time \
                 is {now_ms})",
                unit.unit_id, spec.name, spec.service_start_ms
            ),
        ));
    }
    if spec.access_policy == AccessPolicy::Closed {
        return Err(StateError::precondition(
            Reason::UnitClosed,
            format!(
                "unit {} ({}) is closed: its access policy admits no login",
                unit.unit_id, spec.name
            ),
        ));
    }
    if spec.access_policy == AccessPolicy::RegisteredOnly {
        return Err(StateError::precondition(
            Reason::UnitClosed,
            format!(
                "unit {} ({}) is closed to temporary accounts: its access policy admits only \
                 registered accounts",
                unit.unit_id, spec.name
            ),
        ));
    }
    Ok(())
}

/// Whether cluster time `now_ms` is inside the unit's service period.
fn in_period(spec: &UnitSpec, now_ms: u64) -> bool {
    now_ms >= spec.service_start_ms && (spec.service_end_ms == 0 || now_ms < spec.service_end_ms)
}

/// Who may log in to a unit. Registered accounts
/// ([`RegisteredAccount`]) are admitted by every policy but `Closed`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessPolicy {
    /// Any account leased from one of the unit's pools, with its current
    /// password.
    LeasedAccounts,
    /// As above, and the viewer must be the lease holder.
    HolderOnly,
    /// Every login is refused.
    Closed,
    /// Only registered accounts; temporary accounts are refused (and no
    /// lease is handed out).
    RegisteredOnly,
}

/// What an operator asks for in a unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    /// 1..=128 bytes, unique within the platform.
    pub name: String,
    /// Logins are accepted from this cluster time on.
    pub service_start_ms: u64,
    /// ... until before this one; 0 = open-ended.
    pub service_end_ms: u64,
    /// At most 128 bytes.
    pub qos_class: String,
    /// Promised response time.
    pub response_time_ms: u32,
    /// Who may log in.
    pub access_policy: AccessPolicy,
}

/// A unit with the ids the cluster gave it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Cluster-assigned, from 1.
    pub unit_id: u64,
    /// The platform it belongs to.
    pub platform_id: u64,
    /// What the operator asked for.
    pub spec: UnitSpec,
}

/// An interactive-application platform and its units.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Cluster-assigned, from 1.
    pub platform_id: u64,
    /// Unique among platforms.
    pub name: String,
    /// In the order they were asked for.
    pub units: Vec<Unit>,
}

/// An account leased to a user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Cluster-assigned, from 1.
    pub lease_id: u64,
    /// The pool the account belongs to.
    pub pool_id: u64,
    /// The account name.
    pub account: String,
    /// The user it is leased to.
    pub holder: String,
    /// Cluster time of the grant.
    pub granted_ms: u64,
    /// The lease ends at this cluster time unless renewed.
    pub expires_ms: u64,
}

/// A pool as clients see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolView {
    /// Cluster-assigned, from 1.
    pub pool_id: u64,
    /// The unit it serves.
    pub unit_id: u64,
    /// Unique within the unit.
    pub name: String,
    /// Accounts made so far.
    pub size: u32,
    /// The pool grows on demand up to this.
    pub max_size: u32,
    /// Accounts not leased.
    pub free: u32,
    /// Accounts leased.
    pub leased: u32,
    /// Leases that ended by expiry, ever.
    pub expired_total: u64,
    /// TTL of a lease that asks for none.
    pub default_ttl_ms: u64,
}

/// The answer to a viewer's login to a unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct LoginOutcome {
    /// True when the login is accepted.
    pub ok: bool,
    /// Why it was refused; empty when accepted.
    pub reason: String,
    /// The lease of the account (when accepted).
    pub lease: Option<Lease>,
    /// The account's data kept during the lease (when accepted).
    pub data: BTreeMap<String, Vec<u8>>,
}

impl LoginOutcome {
    fn refused(reason: impl Into<String>) -> Self {
        LoginOutcome {
            ok: false,
            reason: reason.into(),
            lease: None,
            data: BTreeMap::new(),
        }
    }
}

/// Creates a platform and its units.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreatePlatform {
    /// 1..=128 bytes, unique.
    pub name: String,
    /// 1..=64 units.
    pub units: Vec<UnitSpec>,
}

/// Creates a pool of accounts for a unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreatePool {
    /// The unit; must exist.
    pub unit_id: u64,
    /// 1..=128 bytes, unique within the unit.
    pub name: String,
    /// Accounts made now; at most 100 000.
    pub provision: u32,
    /// Grown on demand up to this; 0 = `provision`; at least `provision`,
    /// at most 100 000, and not 0 when `provision` is 0.
    pub max_size: u32,
    /// TTL of a lease that asks for none; 0 = leases must give one; at most
    /// 30 days.
    pub default_ttl_ms: u64,
}

/// Leases a free account of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseAccount {
    /// The pool; must exist.
    pub pool_id: u64,
    /// 1..=128 bytes: who the account is leased to.
    pub user: String,
    /// 0 = the pool's default; at most 30 days.
    pub ttl_ms: u64,
    /// 1..=128 bytes; a retry with the same id, caller and user gets the
    /// same lease.
    pub request_id: String,
    /// The authenticated principal that asks (empty when the listener does
    /// not authenticate); at most 256 bytes. A replay of `request_id` must
    /// come from the same one.
    pub caller: String,
    /// The hash of the password the serving node made for this request.
    pub password: PasswordHash,
    /// The hash of the lease secret the serving node made for this request.
    pub lease_secret: SecretHash,
}

/// Extends a lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RenewLease {
    /// An active lease.
    pub lease_id: u64,
    /// Must be the holder.
    pub user: String,
    /// Must hash a secret the lease's request returned.
    pub lease_secret: SecretHash,
    /// From now; 0 = the pool's default; at most 30 days.
    pub ttl_ms: u64,
}

/// Ends a lease early.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReleaseLease {
    /// An active lease.
    pub lease_id: u64,
    /// Must be the holder.
    pub user: String,
    /// Must hash a secret the lease's request returned.
    pub lease_secret: SecretHash,
}

/// Deletes a platform and its units (refused while they have pools).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeletePlatform {
    /// The platform.
    pub platform_id: u64,
}

/// Deletes a pool and its accounts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeletePool {
    /// The pool.
    pub pool_id: u64,
    /// End its active leases first; without it a pool with leases is kept.
    pub force: bool,
}

/// Stores one key of a leased account's data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PutAccountData {
    /// An active lease.
    pub lease_id: u64,
    /// Must be the holder.
    pub user: String,
    /// Must hash a secret the lease's request returned.
    pub lease_secret: SecretHash,
    /// 1..=128 bytes; at most 256 keys per account.
    pub key: String,
    /// At most 64 KiB.
    pub value: Vec<u8>,
}

fn check_user(user: &str) -> Result<(), StateError> {
    check_len("user", user, 1, MAX_USER_BYTES)
}

impl CreatePlatform {
    /// Field limits; unit names unique, service periods not empty.
    pub fn validate(&self) -> Result<(), StateError> {
        check_len("name", &self.name, 1, MAX_NAME_BYTES)?;
        if self.units.is_empty() || self.units.len() > MAX_UNITS {
            return Err(StateError::invalid(
                "units",
                format!(
                    "must have 1..={MAX_UNITS} entries, got {}",
                    self.units.len()
                ),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, unit) in self.units.iter().enumerate() {
            check_len(&format!("units[{i}].name"), &unit.name, 1, MAX_NAME_BYTES)?;
            check_len(
                &format!("units[{i}].qos_class"),
                &unit.qos_class,
                0,
                MAX_NAME_BYTES,
            )?;
            if unit.service_end_ms != 0 && unit.service_end_ms <= unit.service_start_ms {
                return Err(StateError::invalid(
                    format!("units[{i}].service_end_ms"),
                    format!(
                        "must be 0 (open-ended) or after service_start_ms {}, got {}",
                        unit.service_start_ms, unit.service_end_ms
                    ),
                ));
            }
            if !names.insert(unit.name.as_str()) {
                return Err(StateError::invalid(
                    format!("units[{i}].name"),
                    format!(
                        "must be unique within the platform, {:?} repeats",
                        unit.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl CreatePool {
    /// Field limits and sizes.
    pub fn validate(&self) -> Result<(), StateError> {
        check_len("name", &self.name, 1, MAX_NAME_BYTES)?;
        if self.provision > MAX_POOL_SIZE {
            return Err(StateError::invalid(
                "provision",
                format!("must be at most {MAX_POOL_SIZE}, got {}", self.provision),
            ));
        }
        if self.max_size > MAX_POOL_SIZE {
            return Err(StateError::invalid(
                "max_size",
                format!("must be at most {MAX_POOL_SIZE}, got {}", self.max_size),
            ));
        }
        if self.max_size != 0 && self.max_size < self.provision {
            return Err(StateError::invalid(
                "max_size",
                format!(
                    "must be 0 or at least provision {}, got {}",
                    self.provision, self.max_size
                ),
            ));
        }
        if self.max_size == 0 && self.provision == 0 {
            return Err(StateError::invalid(
                "max_size",
                "must be at least 1 when provision is 0 (the pool could never lease)",
            ));
        }
        check_ttl("default_ttl_ms", self.default_ttl_ms)
    }
}

impl LeaseAccount {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_user(&self.user)?;
        check_ttl("ttl_ms", self.ttl_ms)?;
        check_len("request_id", &self.request_id, 1, MAX_REQUEST_ID_BYTES)?;
        check_len("caller", &self.caller, 0, MAX_CALLER_BYTES)
    }
}

impl RenewLease {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_user(&self.user)?;
        check_ttl("ttl_ms", self.ttl_ms)
    }
}

impl ReleaseLease {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_user(&self.user)
    }
}

impl PutAccountData {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_user(&self.user)?;
        check_len("key", &self.key, 1, MAX_DATA_KEY_BYTES)?;
        check_bytes("value", &self.value, MAX_DATA_VALUE_BYTES)
    }
}

/// A pool's accounts, split into free and leased.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Pool {
    pool_id: u64,
    unit_id: u64,
    name: String,
    /// Accounts made so far; the next one is number `size + 1`.
    size: u32,
    /// At least `size`.
    max_size: u32,
    default_ttl_ms: u64,
    /// Ordered, so the lowest-named free account is leased first.
    free: BTreeSet<String>,
    leased: BTreeSet<String>,
    expired_total: u64,
}

impl Pool {
    fn view(&self) -> PoolView {
        PoolView {
            pool_id: self.pool_id,
            unit_id: self.unit_id,
            name: self.name.clone(),
            size: self.size,
            max_size: self.max_size,
            free: count(self.free.len()),
            leased: count(self.leased.len()),
            expired_total: self.expired_total,
            default_ttl_ms: self.default_ttl_ms,
        }
    }

    fn account_name(&self, n: u32) -> String {
        format!("u{}p{}-{n:05}", self.unit_id, self.pool_id)
    }

    fn ttl(&self, asked_ms: u64) -> Result<u64, StateError> {
        match (asked_ms, self.default_ttl_ms) {
            (0, 0) => Err(StateError::invalid(
                "ttl_ms",
                format!("must be set: pool {} has no default TTL", self.pool_id),
            )),
            (0, default) => Ok(default),
            (asked, _) => Ok(asked),
        }
    }
}

/// Pool sizes are capped at [`MAX_POOL_SIZE`], so set sizes fit a u32.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Makes the pool's next account (not yet in `free` or `leased`).
fn grow(accounts: &mut BTreeMap<String, Account>, pool: &mut Pool) -> String {
    debug_assert!(pool.size < pool.max_size);
    pool.size += 1;
    let name = pool.account_name(pool.size);
    let fresh = accounts.insert(
        name.clone(),
        Account {
            pool_id: pool.pool_id,
            data: BTreeMap::new(),
            lease_id: None,
        },
    );
    debug_assert!(fresh.is_none(), "account {name} made twice");
    name
}

/// One temporary account. Its password belongs to the lease that holds it
/// ([`Held::credentials`]), so ending the lease is what resets it.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Account {
    pool_id: u64,
    /// Kept while leased, wiped when the lease ends.
    data: BTreeMap<String, Vec<u8>>,
    /// The active lease, if any.
    lease_id: Option<u64>,
}

/// What one answer to a lease request returned, hashed: the account's
/// password and the lease secret.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct Credentials {
    password: PasswordHash,
    secret: SecretHash,
}

/// An active lease as the state keeps it: the [`Lease`] anyone may list, and
/// what proves who holds it, which nothing outside this module sees.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Held {
    lease: Lease,
    /// The request id that asked for it. Never listed: with it (and the
    /// caller and user) a replay returns the lease and fresh credentials.
    request_id: String,
    /// The principal that asked; only it may replay the request.
    caller: String,
    /// One pair per answer to the request, oldest first,
    /// 1..=[`MAX_LEASE_CREDENTIALS`]; each stays valid until the lease ends.
    credentials: Vec<Credentials>,
}

impl Held {
    /// True when `secret` is one an answer returned. Checks them all rather
    /// than stopping at a match, so the time taken does not tell which.
    fn has_secret(&self, secret: &SecretHash) -> bool {
        self.credentials
            .iter()
            .fold(false, |found, c| found | c.secret.matches(secret))
    }

    /// True when `password` is one an answer returned.
    fn has_password(&self, password: &str) -> bool {
        self.credentials
            .iter()
            .fold(false, |found, c| found | c.password.matches(password))
    }
}

/// What a lease request id led to.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct RequestRecord {
    lease_id: u64,
    /// Cluster time the lease ended; `None` while it is active.
    ended_ms: Option<u64>,
}

/// Platforms, units, pools, accounts and leases.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct AccountPools {
    // The last id handed out of each kind; ids start at 1.
    last_platform_id: u64,
    last_unit_id: u64,
    last_pool_id: u64,
    last_lease_id: u64,
    platforms: BTreeMap<u64, Platform>,
    platform_names: BTreeMap<String, u64>,
    /// unit id -> platform id.
    unit_platform: BTreeMap<u64, u64>,
    pools: BTreeMap<u64, Pool>,
    /// By name; names embed unit and pool ids, so they are unique.
    accounts: BTreeMap<String, Account>,
    /// Active leases only.
    leases: BTreeMap<u64, Held>,
    /// (expires_ms, lease_id) of every active lease: expiry pops from the
    /// front instead of scanning.
    expiry: BTreeSet<(u64, u64)>,
    /// (pool_id, request_id) -> lease, for idempotent retries.
    requests: BTreeMap<(u64, String), RequestRecord>,
    /// (forget_at_ms, pool_id, request_id) of ended leases' requests.
    forget: BTreeSet<(u64, u64, String)>,
    /// (unit_id, account) -> a viewer's own account ([`registered`]).
    registered: BTreeMap<(u64, String), RegisteredAccount>,
    /// (platform_id, content_id) -> the units it shows ([`contents`]).
    contents: BTreeMap<(u64, String), ContentUnits>,
}

impl AccountPools {
    /// Whether a new platform fits `platforms` and `units_per_platform`.
    pub(crate) fn admit_platform(
        &self,
        q: &Quotas,
        cmd: &CreatePlatform,
    ) -> Result<(), StateError> {
        if self.platforms.len() as u64 >= q.platforms {
            return Err(over(
                "platforms",
                q.platforms,
                format!("{} platforms exist", self.platforms.len()),
            ));
        }
        if cmd.units.len() > q.units_per_platform as usize {
            return Err(over(
                "units_per_platform",
                q.units_per_platform,
                format!("the platform asks for {} units", cmd.units.len()),
            ));
        }
        Ok(())
    }

    /// Whether a new pool fits `pools`, `pools_per_unit`,
    /// `accounts_per_command` (its provision), `accounts_per_pool` (its
    /// max_size) and `accounts` (what it provisions now).
    pub(crate) fn admit_pool(&self, q: &Quotas, cmd: &CreatePool) -> Result<(), StateError> {
        if self.pools.len() as u64 >= q.pools {
            return Err(over(
                "pools",
                q.pools,
                format!("{} pools exist", self.pools.len()),
            ));
        }
        let in_unit = self
            .pools
            .values()
            .filter(|p| p.unit_id == cmd.unit_id)
            .count();
        if in_unit >= q.pools_per_unit as usize {
            return Err(over(
                "pools_per_unit",
                q.pools_per_unit,
                format!("unit {} has {in_unit} pools", cmd.unit_id),
            ));
        }
        if cmd.provision > q.accounts_per_command {
            return Err(over(
                "accounts_per_command",
                q.accounts_per_command,
                format!(
                    "provision asks for {} accounts in one command; provision fewer and let                      the pool grow to max_size as it leases",
                    cmd.provision
                ),
            ));
        }
        let max_size = cmd.max_size.max(cmd.provision);
        if max_size > q.accounts_per_pool {
            return Err(over(
                "accounts_per_pool",
                q.accounts_per_pool,
                format!("the pool asks for up to {max_size} accounts"),
            ));
        }
        let total = self.accounts.len() as u64;
        if total + u64::from(cmd.provision) > q.accounts {
            return Err(over(
                "accounts",
                q.accounts,
                format!(
                    "{total} accounts exist and the pool provisions {}",
                    cmd.provision
                ),
            ));
        }
        Ok(())
    }

    /// Whether a lease fits `accounts`: only a lease that must make a new
    /// account (no free one in its pool, and not a replay) can go over.
    pub(crate) fn admit_lease(&self, q: &Quotas, cmd: &LeaseAccount) -> Result<(), StateError> {
        let Some(pool) = self.pools.get(&cmd.pool_id) else {
            return Ok(()); // apply answers "not found"
        };
        let replay = self
            .requests
            .contains_key(&(cmd.pool_id, cmd.request_id.clone()));
        if !replay && pool.free.is_empty() && self.accounts.len() as u64 >= q.accounts {
            return Err(over(
                "accounts",
                q.accounts,
                format!(
                    "{} accounts exist and pool {} has no free one",
                    self.accounts.len(),
                    cmd.pool_id
                ),
            ));
        }
        Ok(())
    }

    /// Whether a data write fits `data_bytes_per_account` (keys plus values,
    /// the value being replaced not counted).
    pub(crate) fn admit_data(&self, q: &Quotas, cmd: &PutAccountData) -> Result<(), StateError> {
        let Some(acct) = self
            .leases
            .get(&cmd.lease_id)
            .and_then(|h| self.accounts.get(&h.lease.account))
        else {
            return Ok(()); // apply answers why
        };
        let kept: usize = acct
            .data
            .iter()
            .filter(|(k, _)| **k != cmd.key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        let after = (kept + cmd.key.len() + cmd.value.len()) as u64;
        if after > q.data_bytes_per_account {
            return Err(over(
                "data_bytes_per_account",
                q.data_bytes_per_account,
                format!("the account would hold {after} bytes of data"),
            ));
        }
        Ok(())
    }

    /// Deletes a platform and its units. Refused while a unit has a pool:
    /// pools are deleted first, so no lease is ended by surprise.
    pub(crate) fn delete_platform(&mut self, cmd: &DeletePlatform) -> Result<(), StateError> {
        let platform = self
            .platforms
            .get(&cmd.platform_id)
            .ok_or_else(|| StateError::not_found(format!("platform {}", cmd.platform_id)))?;
        let units: BTreeSet<u64> = platform.units.iter().map(|u| u.unit_id).collect();
        if let Some(pool) = self.pools.values().find(|p| units.contains(&p.unit_id)) {
            return Err(StateError::precondition(
                Reason::InUse,
                format!(
                    "platform {} still has pool {} in unit {}: delete its pools first",
                    cmd.platform_id, pool.pool_id, pool.unit_id
                ),
            ));
        }
        // All checks done.
        if let Some(platform) = self.platforms.remove(&cmd.platform_id) {
            self.platform_names.remove(&platform.name);
        }
        for unit in &units {
            self.unit_platform.remove(unit);
        }
        // What only made sense with the platform goes with it.
        self.forget_registered_of(&units);
        self.forget_contents_of(cmd.platform_id);
        Ok(())
    }

    /// Deletes a pool and its accounts. Refused while it has active leases
    /// unless `force`, which ends them (as a release would) first.
    pub(crate) fn delete_pool(&mut self, at: Entry, cmd: &DeletePool) -> Result<(), StateError> {
        let pool = self
            .pools
            .get(&cmd.pool_id)
            .ok_or_else(|| StateError::not_found(format!("pool {}", cmd.pool_id)))?;
        if !pool.leased.is_empty() && !cmd.force {
            return Err(StateError::precondition(
                Reason::InUse,
                format!(
                    "pool {} has {} active leases: release them, or delete with force to end them",
                    cmd.pool_id,
                    pool.leased.len()
                ),
            ));
        }
        // All checks done.
        let leases: Vec<u64> = pool
            .leased
            .iter()
            .filter_map(|name| self.accounts.get(name)?.lease_id)
            .collect();
        for lease_id in leases {
            self.end_lease(lease_id, at.time_ms, false);
        }
        let Some(pool) = self.pools.remove(&cmd.pool_id) else {
            return Ok(());
        };
        for name in pool.free.iter().chain(&pool.leased) {
            self.accounts.remove(name);
        }
        // Its request ids cannot be replayed any more: the pool is gone.
        let key = (cmd.pool_id, String::new());
        let requests: Vec<(u64, String)> = self
            .requests
            .range(key..)
            .take_while(|((p, _), _)| *p == cmd.pool_id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in requests {
            self.requests.remove(&k);
        }
        self.forget.retain(|(_, p, _)| *p != cmd.pool_id);
        Ok(())
    }

    /// Accounts in every pool.
    pub(crate) fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub(crate) fn platforms(&self) -> Vec<&Platform> {
        self.platforms.values().collect()
    }

    pub(crate) fn pools(&self, unit_id: Option<u64>) -> Vec<PoolView> {
        self.pools
            .values()
            .filter(|p| unit_id.is_none_or(|u| p.unit_id == u))
            .map(Pool::view)
            .collect()
    }

    pub(crate) fn leases(&self, pool_id: u64) -> Result<Vec<Lease>, StateError> {
        let pool = self
            .pools
            .get(&pool_id)
            .ok_or_else(|| StateError::not_found(format!("pool {pool_id}")))?;
        let mut leases: Vec<Lease> = pool
            .leased
            .iter()
            .filter_map(|name| self.accounts.get(name)?.lease_id)
            .filter_map(|id| self.leases.get(&id))
            .map(|held| held.lease.clone())
            .collect();
        leases.sort_by_key(|l| l.lease_id);
        Ok(leases)
    }

    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|&(expires_ms, _)| expires_ms)
    }

    /// A unit.
    pub(crate) fn unit_of(&self, unit_id: u64) -> Option<&Unit> {
        self.unit(unit_id)
    }

    /// The unit a pool serves.
    pub(crate) fn unit_of_pool(&self, pool_id: u64) -> Option<&Unit> {
        self.unit(self.pools.get(&pool_id)?.unit_id)
    }

    fn unit(&self, unit_id: u64) -> Option<&Unit> {
        let platform = self.platforms.get(self.unit_platform.get(&unit_id)?)?;
        platform.units.iter().find(|u| u.unit_id == unit_id)
    }

    /// Ends every lease due at `now` and forgets request ids whose retention
    /// ran out. Runs before every command, so time alone drives it.
    pub(crate) fn expire_due(&mut self, now: u64) {
        while let Some(&(expires_ms, lease_id)) = self.expiry.first() {
            if expires_ms > now {
                break;
            }
            self.end_lease(lease_id, expires_ms, true);
        }
        while let Some((forget_at, _, _)) = self.forget.first() {
            if *forget_at > now {
                break;
            }
            if let Some((_, pool_id, request_id)) = self.forget.pop_first() {
                self.requests.remove(&(pool_id, request_id));
            }
        }
    }

    pub(crate) fn create_platform(&mut self, cmd: &CreatePlatform) -> Result<Platform, StateError> {
        if self.platform_names.contains_key(&cmd.name) {
            return Err(StateError::exists(format!("platform {:?}", cmd.name)));
        }
        self.last_platform_id += 1;
        let platform_id = self.last_platform_id;
        let mut units = Vec::with_capacity(cmd.units.len());
        for spec in &cmd.units {
            self.last_unit_id += 1;
            self.unit_platform.insert(self.last_unit_id, platform_id);
            units.push(Unit {
                unit_id: self.last_unit_id,
                platform_id,
                spec: spec.clone(),
            });
        }
        let platform = Platform {
            platform_id,
            name: cmd.name.clone(),
            units,
        };
        self.platform_names.insert(cmd.name.clone(), platform_id);
        self.platforms.insert(platform_id, platform.clone());
        Ok(platform)
    }

    pub(crate) fn create_pool(&mut self, cmd: &CreatePool) -> Result<PoolView, StateError> {
        if self.unit(cmd.unit_id).is_none() {
            return Err(StateError::not_found(format!("unit {}", cmd.unit_id)));
        }
        if self
            .pools
            .values()
            .any(|p| p.unit_id == cmd.unit_id && p.name == cmd.name)
        {
            return Err(StateError::exists(format!(
                "pool {:?} in unit {}",
                cmd.name, cmd.unit_id
            )));
        }
        self.last_pool_id += 1;
        let mut pool = Pool {
            pool_id: self.last_pool_id,
            unit_id: cmd.unit_id,
            name: cmd.name.clone(),
            size: 0,
            max_size: if cmd.max_size == 0 {
                cmd.provision
            } else {
                cmd.max_size
            },
            default_ttl_ms: cmd.default_ttl_ms,
            free: BTreeSet::new(),
            leased: BTreeSet::new(),
            expired_total: 0,
        };
        for _ in 0..cmd.provision {
            let name = grow(&mut self.accounts, &mut pool);
            pool.free.insert(name);
        }
        let view = pool.view();
        self.pools.insert(pool.pool_id, pool);
        Ok(view)
    }

    /// Returns the lease and whether it is a replay of an earlier request.
    pub(crate) fn lease(
        &mut self,
        at: Entry,
        cmd: &LeaseAccount,
    ) -> Result<(Lease, bool), StateError> {
        let pool = self
            .pools
            .get(&cmd.pool_id)
            .ok_or_else(|| StateError::not_found(format!("pool {}", cmd.pool_id)))?;
        let key = (cmd.pool_id, cmd.request_id.clone());
        if let Some(record) = self.requests.get(&key) {
            return self.replay(record.lease_id, record.ended_ms, cmd);
        }
        if let Some(unit) = self.unit(pool.unit_id) {
            check_in_service(unit, at.time_ms)?;
        }
        let ttl = pool.ttl(cmd.ttl_ms)?;
        let reuse = pool.free.first().cloned();
        if reuse.is_none() && pool.size >= pool.max_size {
            return Err(StateError::exhausted(
                Reason::PoolExhausted,
                format!(
                    "pool {} has no free account: all {} are leased and max_size is {}",
                    pool.pool_id, pool.size, pool.max_size
                ),
            ));
        }

        // All checks done.
        let Some(pool) = self.pools.get_mut(&cmd.pool_id) else {
            return Err(StateError::not_found(format!("pool {}", cmd.pool_id)));
        };
        let account = match reuse {
            Some(name) => {
                pool.free.remove(&name);
                name
            }
            None => grow(&mut self.accounts, pool),
        };
        pool.leased.insert(account.clone());

        self.last_lease_id += 1;
        let lease = Lease {
            lease_id: self.last_lease_id,
            pool_id: cmd.pool_id,
            account: account.clone(),
            holder: cmd.user.clone(),
            granted_ms: at.time_ms,
            expires_ms: at.time_ms.saturating_add(ttl),
        };
        if let Some(acct) = self.accounts.get_mut(&account) {
            debug_assert!(acct.lease_id.is_none(), "account {account} leased twice");
            debug_assert!(acct.data.is_empty());
            acct.lease_id = Some(lease.lease_id);
        }
        self.expiry.insert((lease.expires_ms, lease.lease_id));
        self.leases.insert(
            lease.lease_id,
            Held {
                lease: lease.clone(),
                request_id: cmd.request_id.clone(),
                caller: cmd.caller.clone(),
                credentials: vec![Credentials {
                    password: cmd.password,
                    secret: cmd.lease_secret,
                }],
            },
        );
        self.requests.insert(
            key,
            RequestRecord {
                lease_id: lease.lease_id,
                ended_ms: None,
            },
        );
        Ok((lease, false))
    }

    /// A retried lease request: the same lease, with the retry's password and
    /// secret added beside the earlier answers' (the caller may have lost
    /// them, or may be using them: a duplicate delivery must not lock out the
    /// viewer). Refused for another caller or user, once the lease ended, and
    /// once the lease keeps [`MAX_LEASE_CREDENTIALS`] pairs.
    fn replay(
        &mut self,
        lease_id: u64,
        ended_ms: Option<u64>,
        cmd: &LeaseAccount,
    ) -> Result<(Lease, bool), StateError> {
        let ended = || {
            StateError::precondition(
                Reason::LeaseEnded,
                format!(
                    "request_id {:?} already used by ended lease {lease_id}",
                    cmd.request_id
                ),
            )
        };
        if ended_ms.is_some() {
            return Err(ended());
        }
        let held = self.leases.get(&lease_id).ok_or_else(ended)?;
        if held.caller != cmd.caller {
            return Err(StateError::denied(
                Reason::WrongSecret,
                format!(
                    "request_id {:?} belongs to another caller's lease",
                    cmd.request_id
                ),
            ));
        }
        if held.lease.holder != cmd.user {
            return Err(StateError::precondition(
                Reason::NotHolder,
                format!(
                    "request_id {:?} is in use by another user's lease",
                    cmd.request_id
                ),
            ));
        }
        if held.credentials.len() >= MAX_LEASE_CREDENTIALS {
            return Err(StateError::exhausted(
                Reason::QuotaExceeded,
                format!(
                    "request_id {:?} was answered {MAX_LEASE_CREDENTIALS} times already, the most \
                 lease {lease_id} keeps: the password and lease_secret of every earlier answer \
                 still work, and no more are issued",
                    cmd.request_id
                ),
            ));
        }

        // All checks done.
        let Some(held) = self.leases.get_mut(&lease_id) else {
            return Err(ended());
        };
        held.credentials.push(Credentials {
            password: cmd.password,
            secret: cmd.lease_secret,
        });
        Ok((held.lease.clone(), true))
    }

    /// The active lease `lease_id`, if the caller proves it holds it: `secret`
    /// is one an answer to the lease's request returned, and `user` is the
    /// holder. The secret is checked first: the holder is no secret (listings
    /// show it).
    fn held(&self, lease_id: u64, user: &str, secret: &SecretHash) -> Result<&Lease, StateError> {
        match self.leases.get(&lease_id) {
            Some(held) if !held.has_secret(secret) => Err(StateError::denied(
                Reason::WrongSecret,
                format!("lease_secret: does not match lease {lease_id}"),
            )),
            Some(held) if held.lease.holder == user => Ok(&held.lease),
            Some(_) => Err(StateError::precondition(
                Reason::NotHolder,
                format!("lease {lease_id} is held by another user"),
            )),
            None if (1..=self.last_lease_id).contains(&lease_id) => Err(StateError::precondition(
                Reason::LeaseEnded,
                format!("lease {lease_id} has ended"),
            )),
            None => Err(StateError::not_found(format!("lease {lease_id}"))),
        }
    }

    pub(crate) fn renew(&mut self, at: Entry, cmd: &RenewLease) -> Result<Lease, StateError> {
        let lease = self.held(cmd.lease_id, &cmd.user, &cmd.lease_secret)?;
        let pool = self
            .pools
            .get(&lease.pool_id)
            .ok_or_else(|| StateError::not_found(format!("pool {}", lease.pool_id)))?;
        let expires_ms = at.time_ms.saturating_add(pool.ttl(cmd.ttl_ms)?);
        let old = (lease.expires_ms, lease.lease_id);
        let Some(lease) = self.leases.get_mut(&cmd.lease_id).map(|h| &mut h.lease) else {
            return Err(StateError::not_found(format!("lease {}", cmd.lease_id)));
        };
        lease.expires_ms = expires_ms;
        let lease = lease.clone();
        self.expiry.remove(&old);
        self.expiry.insert((lease.expires_ms, lease.lease_id));
        Ok(lease)
    }

    pub(crate) fn release(&mut self, at: Entry, cmd: &ReleaseLease) -> Result<(), StateError> {
        self.held(cmd.lease_id, &cmd.user, &cmd.lease_secret)?;
        self.end_lease(cmd.lease_id, at.time_ms, false);
        Ok(())
    }

    /// The data of a leased account, for its holder with the lease's
    /// secret, while the lease is active at cluster time `now_ms`.
    pub(crate) fn account_data(
        &self,
        lease_id: u64,
        user: &str,
        secret: &SecretHash,
        now_ms: u64,
    ) -> Result<&BTreeMap<String, Vec<u8>>, StateError> {
        let lease = self.held(lease_id, user, secret)?;
        if lease.expires_ms <= now_ms {
            return Err(StateError::precondition(
                Reason::LeaseEnded,
                format!("lease {lease_id} has ended"),
            ));
        }
        self.accounts
            .get(&lease.account)
            .map(|a| &a.data)
            .ok_or_else(|| StateError::not_found(format!("account {:?}", lease.account)))
    }

    pub(crate) fn put_data(&mut self, cmd: &PutAccountData) -> Result<(), StateError> {
        let account = self
            .held(cmd.lease_id, &cmd.user, &cmd.lease_secret)?
            .account
            .clone();
        let acct = self
            .accounts
            .get_mut(&account)
            .ok_or_else(|| StateError::not_found(format!("account {account:?}")))?;
        if !acct.data.contains_key(&cmd.key) && acct.data.len() >= MAX_DATA_KEYS {
            return Err(StateError::exhausted(
                Reason::QuotaExceeded,
                format!("account {account:?} already holds {MAX_DATA_KEYS} data keys"),
            ));
        }
        acct.data.insert(cmd.key.clone(), cmd.value.clone());
        Ok(())
    }

    /// Ends an active lease: wipes the account, frees it, and starts the
    /// request id's retention clock.
    fn end_lease(&mut self, lease_id: u64, ended_ms: u64, expired: bool) {
        let Some(Held {
            lease, request_id, ..
        }) = self.leases.remove(&lease_id)
        else {
            debug_assert!(false, "ending lease {lease_id}, which is not active");
            return;
        };
        self.expiry.remove(&(lease.expires_ms, lease_id));
        // The lease's passwords and secrets went with it.
        if let Some(acct) = self.accounts.get_mut(&lease.account) {
            debug_assert_eq!(acct.lease_id, Some(lease_id));
            acct.lease_id = None;
            acct.data.clear();
        }
        if let Some(pool) = self.pools.get_mut(&lease.pool_id) {
            let was_leased = pool.leased.remove(&lease.account);
            debug_assert!(was_leased);
            pool.free.insert(lease.account.clone());
            if expired {
                pool.expired_total += 1;
            }
        }
        if let Some(record) = self.requests.get_mut(&(lease.pool_id, request_id.clone())) {
            record.ended_ms = Some(ended_ms);
            self.forget.insert((
                ended_ms.saturating_add(REQUEST_ID_RETENTION_MS),
                lease.pool_id,
                request_id,
            ));
        }
    }

    /// `secret`: the hash of the lease secret the viewer presented, if any;
    /// only [`AccessPolicy::HolderOnly`] units ask for it.
    pub(crate) fn check_login(
        &self,
        unit_id: u64,
        account: &str,
        password: &str,
        user: &str,
        secret: Option<&SecretHash>,
        now_ms: u64,
    ) -> LoginOutcome {
        let Some(unit) = self.unit(unit_id) else {
            return LoginOutcome::refused(format!("unknown unit {unit_id}"));
        };
        let spec = &unit.spec;
        if let Some(refused) = registered::unit_refusal(unit, now_ms) {
            return LoginOutcome::refused(refused);
        }
        if spec.access_policy == AccessPolicy::RegisteredOnly {
            return LoginOutcome::refused("the unit admits only registered accounts");
        }
        let Some(acct) = self.accounts.get(account).filter(|a| {
            self.pools
                .get(&a.pool_id)
                .is_some_and(|p| p.unit_id == unit_id)
        }) else {
            return LoginOutcome::refused("unknown account");
        };
        let Some(held) = acct.lease_id.and_then(|id| self.leases.get(&id)) else {
            return LoginOutcome::refused("account is not leased");
        };
        if held.lease.expires_ms <= now_ms {
            return LoginOutcome::refused("lease has expired");
        }
        if !held.has_password(password) {
            return LoginOutcome::refused("wrong password");
        }
        if spec.access_policy == AccessPolicy::HolderOnly {
            if held.lease.holder != user {
                return LoginOutcome::refused("user is not the lease holder");
            }
            // The password may have been passed on; the secret proves the
            // viewer is the one the lease was given to.
            match secret {
                None => {
                    return LoginOutcome::refused(
                        "lease_secret required: the unit admits only the lease holder",
                    );
                }
                Some(s) if !held.has_secret(s) => {
                    return LoginOutcome::refused("wrong lease_secret");
                }
                Some(_) => {}
            }
        }
        LoginOutcome {
            ok: true,
            reason: String::new(),
            lease: Some(held.lease.clone()),
            data: acct.data.clone(),
        }
    }

    /// Recomputes the bookkeeping from the accounts and compares (tests
    /// only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut accounts_per_pool: BTreeMap<u64, u32> = BTreeMap::new();
        for (name, acct) in &self.accounts {
            *accounts_per_pool.entry(acct.pool_id).or_default() += 1;
            let pool = &self.pools[&acct.pool_id];
            match acct.lease_id {
                Some(id) => {
                    let held = &self.leases[&id];
                    assert_eq!(&held.lease.account, name, "lease points at another account");
                    assert!(pool.leased.contains(name) && !pool.free.contains(name));
                    assert!(
                        (1..=MAX_LEASE_CREDENTIALS).contains(&held.credentials.len()),
                        "lease {id} keeps {} credential pairs",
                        held.credentials.len()
                    );
                }
                None => {
                    assert!(pool.free.contains(name) && !pool.leased.contains(name));
                    assert!(acct.data.is_empty());
                }
            }
            assert!(acct.data.len() <= MAX_DATA_KEYS);
        }
        for pool in self.pools.values() {
            let v = pool.view();
            assert_eq!(v.free + v.leased, v.size, "free + leased != size");
            assert!(v.size <= v.max_size);
            assert_eq!(
                accounts_per_pool.get(&pool.pool_id).copied().unwrap_or(0),
                pool.size
            );
        }
        // At most one active lease per account, and the expiry index matches.
        let mut leased_accounts = BTreeSet::new();
        for (id, held) in &self.leases {
            let lease = &held.lease;
            assert_eq!(*id, lease.lease_id);
            assert!(
                leased_accounts.insert(&lease.account),
                "two leases on {}",
                lease.account
            );
            assert_eq!(self.accounts[&lease.account].lease_id, Some(lease.lease_id));
            assert!(self.expiry.contains(&(lease.expires_ms, lease.lease_id)));
            let record = &self.requests[&(lease.pool_id, held.request_id.clone())];
            assert_eq!((record.lease_id, record.ended_ms), (lease.lease_id, None));
        }
        assert_eq!(self.expiry.len(), self.leases.len());
        let ended = self
            .requests
            .values()
            .filter(|r| r.ended_ms.is_some())
            .count();
        assert_eq!(ended, self.forget.len());
        // Registered accounts and content tags go with their unit or
        // platform; a list names 1..=64 distinct units of its own platform.
        for (unit_id, account) in self.registered.keys() {
            assert!(
                self.unit_platform.contains_key(unit_id),
                "registered account {account} of deleted unit {unit_id}"
            );
        }
        for ((platform_id, content), units) in &self.contents {
            let platform = self
                .platforms
                .get(platform_id)
                .unwrap_or_else(|| panic!("content {content} of deleted platform {platform_id}"));
            if let ContentUnits::List(ids) = units {
                assert!((1..=64).contains(&ids.len()), "content {content}: {ids:?}");
                let distinct: BTreeSet<u64> = ids.iter().copied().collect();
                assert_eq!(distinct.len(), ids.len(), "content {content}: {ids:?}");
                for id in ids {
                    assert!(
                        platform.units.iter().any(|u| u.unit_id == *id),
                        "content {content} names unit {id} of another platform"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::limits::MAX_TTL_MS;
    use super::super::tests::Harness;
    use super::super::{Command, Quotas, Response, State};
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn unit_spec(name: &str, policy: AccessPolicy) -> UnitSpec {
        UnitSpec {
            name: name.into(),
            service_start_ms: 0,
            service_end_ms: 0,
            qos_class: "gold".into(),
            response_time_ms: 200,
            access_policy: policy,
        }
    }

    fn platform(h: &mut Harness, name: &str, units: Vec<UnitSpec>) -> Platform {
        match h.ok(Command::CreatePlatform(CreatePlatform {
            name: name.into(),
            units,
        })) {
            Response::Platform(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn pool(h: &mut Harness, unit_id: u64, provision: u32, max_size: u32, ttl: u64) -> PoolView {
        match h.ok(Command::CreatePool(CreatePool {
            unit_id,
            name: format!("pool{}", h.index),
            provision,
            max_size,
            default_ttl_ms: ttl,
        })) {
            Response::Pool(p) => p,
            other => panic!("{other:?}"),
        }
    }

    /// The lease secret a test's serving node made beside password `pw`.
    fn sec(pw: &str) -> String {
        format!("secret-of-{pw}")
    }

    /// The hash of [`sec`]`(pw)`, as a command or a login carries it.
    fn sec_hash(pw: &str) -> SecretHash {
        SecretHash::of(&sec(pw))
    }

    fn lease_cmd(pool_id: u64, user: &str, request_id: &str, password: &str) -> Command {
        lease_cmd_as(pool_id, "", user, request_id, password)
    }

    fn lease_cmd_as(
        pool_id: u64,
        caller: &str,
        user: &str,
        request_id: &str,
        password: &str,
    ) -> Command {
        Command::Lease(LeaseAccount {
            pool_id,
            user: user.into(),
            ttl_ms: 0,
            request_id: request_id.into(),
            caller: caller.into(),
            password: PasswordHash::new([7; 16], password),
            lease_secret: sec_hash(password),
        })
    }

    fn lease(
        h: &mut Harness,
        pool_id: u64,
        user: &str,
        request_id: &str,
        pw: &str,
    ) -> (Lease, bool) {
        lease_as(h, pool_id, "", user, request_id, pw)
    }

    fn lease_as(
        h: &mut Harness,
        pool_id: u64,
        caller: &str,
        user: &str,
        request_id: &str,
        pw: &str,
    ) -> (Lease, bool) {
        match h.ok(lease_cmd_as(pool_id, caller, user, request_id, pw)) {
            Response::Lease { lease, replayed } => (lease, replayed),
            other => panic!("{other:?}"),
        }
    }

    /// Account data put by `user` with the secret made beside password `pw`.
    fn put(lease_id: u64, user: &str, pw: &str, key: &str) -> Command {
        Command::PutAccountData(PutAccountData {
            lease_id,
            user: user.into(),
            lease_secret: sec_hash(pw),
            key: key.into(),
            value: b"hello".to_vec(),
        })
    }

    fn renew(lease_id: u64, user: &str, pw: &str, ttl_ms: u64) -> Command {
        Command::Renew(RenewLease {
            lease_id,
            user: user.into(),
            lease_secret: sec_hash(pw),
            ttl_ms,
        })
    }

    fn release(lease_id: u64, user: &str, pw: &str) -> Command {
        Command::Release(ReleaseLease {
            lease_id,
            user: user.into(),
            lease_secret: sec_hash(pw),
        })
    }

    fn invalid_field(e: StateError) -> String {
        match e {
            StateError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    /// A platform with one open unit and a pool of 2 accounts (max 3, 1 h TTL).
    fn setup(policy: AccessPolicy) -> (Harness, u64, u64) {
        let mut h = Harness::new();
        let p = platform(&mut h, "tv", vec![unit_spec("quiz", policy)]);
        let unit = p.units[0].unit_id;
        let pool = pool(&mut h, unit, 2, 3, HOUR);
        (h, unit, pool.pool_id)
    }

    #[test]
    fn password_hash_is_sha256_of_salt_and_password() {
        let salt = [1u8; 16];
        let mut input = salt.to_vec();
        input.extend_from_slice(b"secret");
        let expected: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(hash_password(&salt, "secret"), expected);
        let h = PasswordHash::new(salt, "secret");
        assert!(h.matches("secret"));
        assert!(!h.matches("secreT"));
        assert_eq!(
            hex::encode(hash_password(&[0; 16], "")),
            "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb"
        );
    }

    #[test]
    fn a_presented_secret_must_be_there_and_bounded() {
        assert_eq!(
            lease_secret_hash("").unwrap_err().to_string(),
            "lease_secret: required: the lease_secret LeaseAccount returned with the lease"
        );
        assert_eq!(
            invalid_field(lease_secret_hash(&"s".repeat(129)).unwrap_err()),
            "lease_secret"
        );
        assert_eq!(lease_secret_hash("abc").unwrap(), SecretHash::of("abc"));
        assert!(SecretHash::of("abc").matches(&SecretHash::of("abc")));
        assert!(!SecretHash::of("abc").matches(&SecretHash::of("abd")));
        assert_eq!(
            hex::encode(SecretHash::of("abc").0),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn platform_and_unit_ids_count_from_one() {
        let mut h = Harness::new();
        let p = platform(
            &mut h,
            "tv",
            vec![
                unit_spec("a", AccessPolicy::LeasedAccounts),
                unit_spec("b", AccessPolicy::Closed),
            ],
        );
        assert_eq!(p.platform_id, 1);
        assert_eq!(
            p.units.iter().map(|u| u.unit_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let q = platform(&mut h, "radio", vec![unit_spec("a", AccessPolicy::Closed)]);
        assert_eq!((q.platform_id, q.units[0].unit_id), (2, 3));
        let e = h.err(Command::CreatePlatform(CreatePlatform {
            name: "tv".into(),
            units: vec![unit_spec("x", AccessPolicy::Closed)],
        }));
        assert!(matches!(e, StateError::AlreadyExists { .. }), "{e}");
        assert_eq!(h.state.platforms().len(), 2);
    }

    #[test]
    fn platform_validation_names_the_field() {
        let mut h = Harness::new();
        let mut cmd = CreatePlatform {
            name: String::new(),
            units: vec![unit_spec("a", AccessPolicy::Closed)],
        };
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "name"
        );
        cmd.name = "n".repeat(129);
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "name"
        );
        cmd.name = "ok".into();
        cmd.units = vec![];
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "units"
        );
        cmd.units = (0..65)
            .map(|i| unit_spec(&format!("u{i}"), AccessPolicy::Closed))
            .collect();
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "units"
        );
        cmd.units = vec![
            unit_spec("a", AccessPolicy::Closed),
            unit_spec("a", AccessPolicy::Closed),
        ];
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "units[1].name"
        );
        let mut bad = unit_spec("a", AccessPolicy::Closed);
        bad.service_start_ms = 10;
        bad.service_end_ms = 10;
        cmd.units = vec![bad.clone()];
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "units[0].service_end_ms"
        );
        bad.service_end_ms = 0;
        bad.qos_class = "q".repeat(129);
        cmd.units = vec![bad.clone()];
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd.clone()))),
            "units[0].qos_class"
        );
        bad.qos_class = String::new();
        bad.name = "u".repeat(129);
        cmd.units = vec![bad];
        assert_eq!(
            invalid_field(h.err(Command::CreatePlatform(cmd))),
            "units[0].name"
        );
    }

    #[test]
    fn pools_provision_accounts_with_deterministic_names() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let views = h.state.pools(Some(unit));
        assert_eq!(views.len(), 1);
        let v = &views[0];
        assert_eq!((v.size, v.max_size, v.free, v.leased), (2, 3, 2, 0));
        let (l, replayed) = lease(&mut h, pool_id, "ann", "r1", "pw");
        assert!(!replayed);
        assert_eq!(l.account, format!("u{unit}p{pool_id}-00001"));
        assert_eq!(l.expires_ms, h.time_ms + HOUR);
        assert_eq!(l.lease_id, 1);
        let (l2, _) = lease(&mut h, pool_id, "bob", "r2", "pw");
        assert_eq!(l2.account, format!("u{unit}p{pool_id}-00002"));
        // Both provisioned accounts are out: grow by one, up to max_size.
        let (l3, _) = lease(&mut h, pool_id, "cat", "r3", "pw");
        assert_eq!(l3.account, format!("u{unit}p{pool_id}-00003"));
        let e = h.err(lease_cmd(pool_id, "dan", "r4", "pw"));
        assert!(matches!(e, StateError::ResourceExhausted { .. }), "{e}");
        let v = &h.state.pools(None)[0];
        assert_eq!((v.size, v.free, v.leased), (3, 0, 3));
        // Released accounts are reused lowest name first.
        h.ok(release(l2.lease_id, "bob", "pw"));
        let (l4, _) = lease(&mut h, pool_id, "dan", "r4", "pw");
        assert_eq!(l4.account, l2.account);
        assert!(h.state.pools(Some(unit + 1)).is_empty());
    }

    #[test]
    fn pool_validation_and_preconditions() {
        let (mut h, unit, _) = setup(AccessPolicy::LeasedAccounts);
        let cmd = |provision, max_size, ttl| {
            Command::CreatePool(CreatePool {
                unit_id: unit,
                name: "p".into(),
                provision,
                max_size,
                default_ttl_ms: ttl,
            })
        };
        assert_eq!(invalid_field(h.err(cmd(5, 4, 0))), "max_size");
        assert_eq!(invalid_field(h.err(cmd(0, 0, 0))), "max_size");
        assert_eq!(invalid_field(h.err(cmd(100_001, 0, 0))), "provision");
        assert_eq!(invalid_field(h.err(cmd(0, 100_001, 0))), "max_size");
        assert_eq!(
            invalid_field(h.err(cmd(1, 0, MAX_TTL_MS + 1))),
            "default_ttl_ms"
        );
        let e = h.err(Command::CreatePool(CreatePool {
            unit_id: 99,
            name: "p".into(),
            provision: 1,
            max_size: 0,
            default_ttl_ms: 0,
        }));
        assert!(matches!(e, StateError::NotFound { .. }));
        let e = h.err(Command::CreatePool(CreatePool {
            unit_id: unit,
            name: String::new(),
            provision: 1,
            max_size: 0,
            default_ttl_ms: 0,
        }));
        assert_eq!(invalid_field(e), "name");
        match h.ok(cmd(2, 0, 0)) {
            Response::Pool(p) => assert_eq!((p.size, p.max_size), (2, 2)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.err(cmd(2, 0, 0)),
            StateError::AlreadyExists { .. }
        ));
    }

    #[test]
    fn lease_validation_names_the_field() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let mut cmd = LeaseAccount {
            pool_id,
            user: String::new(),
            ttl_ms: 0,
            request_id: "r".into(),
            caller: String::new(),
            password: PasswordHash::new([0; 16], "x"),
            lease_secret: sec_hash("x"),
        };
        assert_eq!(invalid_field(h.err(Command::Lease(cmd.clone()))), "user");
        cmd.user = "u".repeat(129);
        assert_eq!(invalid_field(h.err(Command::Lease(cmd.clone()))), "user");
        cmd.user = "ann".into();
        cmd.request_id = String::new();
        assert_eq!(
            invalid_field(h.err(Command::Lease(cmd.clone()))),
            "request_id"
        );
        cmd.request_id = "r".repeat(129);
        assert_eq!(
            invalid_field(h.err(Command::Lease(cmd.clone()))),
            "request_id"
        );
        cmd.request_id = "r".into();
        cmd.caller = "c".repeat(257);
        assert_eq!(invalid_field(h.err(Command::Lease(cmd.clone()))), "caller");
        cmd.caller = "c".repeat(256);
        cmd.ttl_ms = MAX_TTL_MS + 1;
        assert_eq!(invalid_field(h.err(Command::Lease(cmd.clone()))), "ttl_ms");
        cmd.pool_id = 77;
        cmd.ttl_ms = 1;
        assert!(matches!(
            h.err(Command::Lease(cmd)),
            StateError::NotFound { .. }
        ));
    }

    #[test]
    fn ttl_zero_needs_a_pool_default() {
        let mut h = Harness::new();
        let p = platform(
            &mut h,
            "tv",
            vec![unit_spec("a", AccessPolicy::LeasedAccounts)],
        );
        let pool = pool(&mut h, p.units[0].unit_id, 1, 0, 0);
        let e = h.err(lease_cmd(pool.pool_id, "ann", "r", "pw"));
        assert_eq!(invalid_field(e), "ttl_ms");
        let mut cmd = LeaseAccount {
            pool_id: pool.pool_id,
            user: "ann".into(),
            ttl_ms: 500,
            request_id: "r".into(),
            caller: String::new(),
            password: PasswordHash::new([0; 16], "x"),
            lease_secret: sec_hash("x"),
        };
        let Response::Lease { lease, .. } = h.ok(Command::Lease(cmd.clone())) else {
            panic!()
        };
        assert_eq!(lease.expires_ms, h.time_ms + 500);
        let e = h.err(renew(lease.lease_id, "ann", "x", 0));
        assert_eq!(invalid_field(e), "ttl_ms");
        cmd.ttl_ms = 0;
        // A replay does not need a TTL: it returns the existing lease.
        assert!(matches!(
            h.ok(Command::Lease(cmd)),
            Response::Lease { replayed: true, .. }
        ));
    }

    /// Issue 23 item 7: a duplicate delivery re-passworded the account and
    /// locked out the viewer already using the first answer.
    #[test]
    fn a_retried_request_gets_the_same_lease_and_every_answer_keeps_working() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::HolderOnly);
        let (first, _) = lease(&mut h, pool_id, "ann", "r1", "first");
        h.advance(10);
        let (again, replayed) = lease(&mut h, pool_id, "ann", "r1", "fresh");
        assert!(replayed);
        assert_eq!(again, first);
        assert_eq!(h.state.leases(pool_id).unwrap().len(), 1);
        let now = h.time_ms;
        let login = |h: &Harness, pw: &str, secret: &str| {
            h.state.check_login(
                unit,
                &first.account,
                pw,
                "ann",
                Some(&sec_hash(secret)),
                now,
            )
        };
        for pw in ["first", "fresh"] {
            let outcome = login(&h, pw, pw);
            assert!(outcome.ok, "{pw}: {}", outcome.reason);
        }
        assert_eq!(login(&h, "never", "first").reason, "wrong password");
        // Both answers' secrets work for the holder's writes, too.
        h.ok(renew(first.lease_id, "ann", "first", 0));
        h.ok(put(first.lease_id, "ann", "fresh", "k"));
        // Another user cannot ride on someone else's request id.
        let e = h.err(lease_cmd(pool_id, "eve", "r1", "mine"));
        assert!(matches!(e, StateError::FailedPrecondition { .. }), "{e}");
        assert!(login(&h, "first", "first").ok);
        // The same request id in another pool is another request.
        let other = pool(&mut h, unit, 1, 0, HOUR);
        let (elsewhere, replayed) = lease(&mut h, other.pool_id, "ann", "r1", "pw");
        assert!(!replayed);
        assert_ne!(elsewhere.lease_id, first.lease_id);
    }

    #[test]
    fn an_ended_leases_request_id_is_refused_then_forgotten() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        h.ok(release(l.lease_id, "ann", "pw"));
        let released_at = h.time_ms;
        let e = h.err(lease_cmd(pool_id, "ann", "r1", "pw"));
        assert_eq!(
            e.to_string(),
            format!(
                "request_id \"r1\" already used by ended lease {}",
                l.lease_id
            )
        );
        h.set_time(released_at + REQUEST_ID_RETENTION_MS - 1);
        assert!(h.apply(lease_cmd(pool_id, "ann", "r1", "pw")).is_err());
        h.set_time(released_at + REQUEST_ID_RETENTION_MS);
        let (fresh, replayed) = lease(&mut h, pool_id, "ann", "r1", "pw");
        assert!(!replayed);
        assert!(fresh.lease_id > l.lease_id);
    }

    #[test]
    fn expired_request_ids_are_kept_an_hour_from_expiry() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        h.set_time(l.expires_ms + REQUEST_ID_RETENTION_MS - 1);
        let e = h.err(lease_cmd(pool_id, "ann", "r1", "pw"));
        assert!(e.to_string().contains("ended lease"), "{e}");
        h.set_time(l.expires_ms + REQUEST_ID_RETENTION_MS);
        assert!(matches!(
            h.ok(lease_cmd(pool_id, "ann", "r1", "pw")),
            Response::Lease {
                replayed: false,
                ..
            }
        ));
    }

    #[test]
    fn expiry_wipes_the_account_and_frees_it() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        h.ok(put(l.lease_id, "ann", "pw", "chat"));
        assert_eq!(h.state.next_lease_expiry(), Some(l.expires_ms));
        let login = h
            .state
            .check_login(unit, &l.account, "pw", "ann", None, h.time_ms);
        assert!(login.ok, "{}", login.reason);
        assert_eq!(login.data["chat"], b"hello".to_vec());
        assert_eq!(login.lease.as_ref(), Some(&l));
        // A read at the expiry time already refuses, before any Tick lands.
        let late = h
            .state
            .check_login(unit, &l.account, "pw", "ann", None, l.expires_ms);
        assert_eq!(late.reason, "lease has expired");
        h.set_time(l.expires_ms - 1);
        h.ok(Command::Tick);
        assert_eq!(h.state.leases(pool_id).unwrap().len(), 1);
        h.set_time(l.expires_ms);
        h.ok(Command::Tick);
        assert!(h.state.leases(pool_id).unwrap().is_empty());
        assert_eq!(h.state.next_lease_expiry(), None);
        let v = &h.state.pools(None)[0];
        assert_eq!((v.free, v.leased, v.expired_total), (2, 0, 1));
        h.state.accounts.check_invariants();
        let e = h.err(put(l.lease_id, "ann", "pw", "chat"));
        assert_eq!(e.to_string(), format!("lease {} has ended", l.lease_id));
        // The next lease of the account starts clean, with its own password.
        let (next, _) = lease(&mut h, pool_id, "bob", "r2", "new");
        assert_eq!(next.account, l.account);
        let login = h
            .state
            .check_login(unit, &next.account, "new", "bob", None, h.time_ms);
        assert!(login.ok && login.data.is_empty());
        assert!(
            !h.state
                .check_login(unit, &next.account, "pw", "bob", None, h.time_ms)
                .ok
        );
        // ... and its own secret: the ended lease's no longer works.
        let e = h.err(renew(next.lease_id, "bob", "pw", 0));
        assert!(matches!(e, StateError::PermissionDenied { .. }), "{e}");
        h.ok(renew(next.lease_id, "bob", "new", 0));
    }

    #[test]
    fn expiry_runs_before_any_command_even_a_rejected_one() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        h.set_time(l.expires_ms + 5);
        let e = h.err(release(l.lease_id, "ann", "pw"));
        assert!(e.to_string().contains("has ended"), "{e}");
        assert!(h.state.leases(pool_id).unwrap().is_empty());
    }

    #[test]
    fn renew_release_and_data_are_for_the_holder_only() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        let renew = |user: &str, ttl_ms| renew(l.lease_id, user, "pw", ttl_ms);
        assert!(matches!(
            h.err(renew("eve", 10)),
            StateError::FailedPrecondition { .. }
        ));
        assert!(matches!(
            h.err(release(l.lease_id, "eve", "pw")),
            StateError::FailedPrecondition { .. }
        ));
        assert!(matches!(
            h.err(put(l.lease_id, "eve", "pw", "k")),
            StateError::FailedPrecondition { .. }
        ));
        assert!(matches!(
            h.err(put(99, "ann", "pw", "k")),
            StateError::NotFound { .. }
        ));
        h.advance(1000);
        let Response::Lease { lease: renewed, .. } = h.ok(renew("ann", 50)) else {
            panic!()
        };
        assert_eq!(renewed.expires_ms, h.time_ms + 50);
        assert_eq!(h.state.next_lease_expiry(), Some(h.time_ms + 50));
        let Response::Lease { lease: renewed, .. } = h.ok(renew("ann", 0)) else {
            panic!()
        };
        assert_eq!(renewed.expires_ms, h.time_ms + HOUR);
        assert_eq!(invalid_field(h.err(renew("ann", MAX_TTL_MS + 1))), "ttl_ms");
        assert_eq!(invalid_field(h.err(renew("", 1))), "user");
        assert_eq!(h.ok(release(l.lease_id, "ann", "pw")), Response::Done);
        // Released, not expired.
        assert_eq!(h.state.pools(None)[0].expired_total, 0);
        assert!(h.err(renew("ann", 1)).to_string().contains("has ended"));
    }

    #[test]
    fn account_data_limits() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        let data = |key: String, len: usize| {
            Command::PutAccountData(PutAccountData {
                lease_id: l.lease_id,
                user: "ann".into(),
                lease_secret: sec_hash("pw"),
                key,
                value: vec![1; len],
            })
        };
        assert_eq!(invalid_field(h.err(data(String::new(), 1))), "key");
        assert_eq!(invalid_field(h.err(data("k".repeat(129), 1))), "key");
        assert_eq!(
            invalid_field(h.err(data("k".into(), MAX_DATA_VALUE_BYTES + 1))),
            "value"
        );
        h.ok(data("k".repeat(128), MAX_DATA_VALUE_BYTES));
        for i in 1..MAX_DATA_KEYS {
            h.ok(data(format!("key{i}"), 1));
        }
        let e = h.err(data("one-too-many".into(), 1));
        assert!(matches!(e, StateError::ResourceExhausted { .. }), "{e}");
        // Overwriting an existing key is fine at the limit.
        h.ok(data("key1".into(), 2));
    }

    /// Sabotage check: with `check_in_service` not called from `lease`, the
    /// early and the closed leases are handed out and this test fails.
    #[test]
    fn a_lease_is_refused_outside_the_service_period_and_when_closed() {
        let mut h = Harness::new();
        let start = h.time_ms + 1_000;
        let mut timed = unit_spec("timed", AccessPolicy::LeasedAccounts);
        timed.service_start_ms = start;
        timed.service_end_ms = start + 1_000;
        let p = platform(
            &mut h,
            "tv",
            vec![timed, unit_spec("closed", AccessPolicy::Closed)],
        );
        let (unit, closed) = (p.units[0].unit_id, p.units[1].unit_id);
        let pool_t = pool(&mut h, unit, 2, 0, HOUR).pool_id;
        let pool_c = pool(&mut h, closed, 1, 0, HOUR).pool_id;
        let e = h.err(lease_cmd(pool_t, "ann", "early", "pw"));
        assert_eq!(e.reason(), Reason::OutOfService);
        assert!(e.to_string().contains("outside its service period"), "{e}");
        h.set_time(start);
        let (first, _) = lease(&mut h, pool_t, "ann", "r1", "pw");
        h.set_time(start + 1_000);
        let e = h.err(lease_cmd(pool_t, "bob", "late", "pw"));
        assert_eq!(e.reason(), Reason::OutOfService);
        // A retry of a lease granted in service still answers.
        let (again, replayed) = lease(&mut h, pool_t, "ann", "r1", "pw2");
        assert!(replayed);
        assert_eq!(again.lease_id, first.lease_id);
        let e = h.err(lease_cmd(pool_c, "ann", "c", "pw"));
        assert_eq!(e.reason(), Reason::UnitClosed);
        assert!(e.to_string().contains("is closed"), "{e}");
        assert_eq!(h.state.pools(Some(closed))[0].leased, 0);
    }

    #[test]
    fn login_checks_period_policy_account_password_and_holder() {
        let mut h = Harness::new();
        let mut timed = unit_spec("timed", AccessPolicy::HolderOnly);
        timed.service_start_ms = 1_000;
        timed.service_end_ms = 10_000_000;
        let p = platform(
            &mut h,
            "tv",
            vec![
                timed,
                unit_spec("closed", AccessPolicy::Closed),
                unit_spec("open", AccessPolicy::LeasedAccounts),
            ],
        );
        let (unit, closed, open) = (p.units[0].unit_id, p.units[1].unit_id, p.units[2].unit_id);
        let pool_a = pool(&mut h, unit, 1, 0, HOUR).pool_id;
        let pool_o = pool(&mut h, open, 1, 0, HOUR).pool_id;
        let (l, _) = lease(&mut h, pool_a, "ann", "r", "pw");
        let (lc, _) = lease(&mut h, pool_o, "ann", "r", "pw");
        let now = h.time_ms;
        let secret = sec_hash("pw");
        let check = |account: &str, pw: &str, user: &str, at: u64| {
            h.state
                .check_login(unit, account, pw, user, Some(&secret), at)
        };
        assert!(check(&l.account, "pw", "ann", now).ok);
        assert_eq!(
            check(&l.account, "pw", "bob", now).reason,
            "user is not the lease holder"
        );
        assert_eq!(
            check(&l.account, "nope", "ann", now).reason,
            "wrong password"
        );
        assert_eq!(
            check(&l.account, "pw", "ann", 999).reason,
            "outside service period"
        );
        assert_eq!(
            check(&l.account, "pw", "ann", 10_000_000).reason,
            "outside service period"
        );
        assert!(check(&l.account, "pw", "ann", 1_000).ok);
        assert_eq!(check("nobody", "pw", "ann", now).reason, "unknown account");
        // An account of another unit's pool is unknown here.
        assert_eq!(
            check(&lc.account, "pw", "ann", now).reason,
            "unknown account"
        );
        let closed_login = h
            .state
            .check_login(closed, &l.account, "pw", "ann", Some(&secret), now);
        assert_eq!(closed_login.reason, "unit is closed");
        assert!(
            !h.state
                .check_login(99, &l.account, "pw", "ann", Some(&secret), now)
                .ok
        );
        h.ok(release(l.lease_id, "ann", "pw"));
        let now = h.time_ms;
        assert_eq!(
            h.state
                .check_login(unit, &l.account, "pw", "ann", Some(&secret), now)
                .reason,
            "account is not leased"
        );
    }

    #[test]
    fn leased_accounts_policy_lets_anyone_with_the_password_in() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        assert!(
            h.state
                .check_login(unit, &l.account, "pw", "someone", None, h.time_ms)
                .ok
        );
    }

    /// Issue 15 item 5: the holder and the password are not enough for a
    /// holder-only unit; the lease secret is.
    #[test]
    fn holder_only_login_requires_the_lease_secret() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::HolderOnly);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        let login = |secret: Option<&SecretHash>| {
            h.state
                .check_login(unit, &l.account, "pw", "ann", secret, h.time_ms)
        };
        assert_eq!(
            login(None).reason,
            "lease_secret required: the unit admits only the lease holder"
        );
        assert_eq!(login(Some(&sec_hash("guess"))).reason, "wrong lease_secret");
        let ok = login(Some(&sec_hash("pw")));
        assert!(ok.ok, "{}", ok.reason);
        assert_eq!(ok.lease.as_ref(), Some(&l));
    }

    /// Issue 15 item 5: renew, release and account data trusted a bare
    /// `user`; without the secret they are refused and change nothing (the
    /// harness checks every refusal leaves the state byte-identical).
    #[test]
    fn renew_release_and_data_need_the_lease_secret() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        h.ok(put(l.lease_id, "ann", "pw", "chat"));
        let before = h.state.to_snapshot().unwrap();
        for cmd in [
            renew(l.lease_id, "ann", "guess", 10),
            release(l.lease_id, "ann", "guess"),
            put(l.lease_id, "ann", "guess", "chat"),
            // The holder's name does not stand in for the secret either.
            renew(l.lease_id, "eve", "guess", 10),
        ] {
            let e = h.err(cmd);
            assert!(matches!(e, StateError::PermissionDenied { .. }), "{e}");
            assert_eq!(
                e.to_string(),
                format!("lease_secret: does not match lease {}", l.lease_id)
            );
        }
        let after = h.state.to_snapshot().unwrap();
        // Only the entry's index moved: same lease, same expiry, same data.
        let mut replayed = State::from_snapshot(&before).unwrap();
        replayed
            .apply(
                Entry {
                    index: h.index,
                    time_ms: h.time_ms,
                },
                &Command::Tick,
            )
            .unwrap();
        assert!(replayed.to_snapshot().unwrap() == after);
        let login = h
            .state
            .check_login(unit, &l.account, "pw", "ann", None, h.time_ms);
        assert!(login.ok, "{}", login.reason);
        assert_eq!(login.data["chat"], b"hello".to_vec());
        assert_eq!(h.state.leases(pool_id).unwrap(), vec![l.clone()]);
        h.ok(release(l.lease_id, "ann", "pw"));
    }

    /// A replay returns the lease only to the principal that asked first.
    #[test]
    fn a_replay_by_another_caller_is_refused() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::HolderOnly);
        let (l, _) = lease_as(&mut h, pool_id, "frontend-a", "ann", "r1", "pw");
        // Another principal with the holder's name and the request id (say,
        // from an old listing) gets nothing, and the holder keeps working.
        let e = h.err(lease_cmd_as(pool_id, "frontend-b", "ann", "r1", "stolen"));
        assert!(matches!(e, StateError::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().contains("another caller"), "{e}");
        let e = h.err(lease_cmd_as(pool_id, "", "ann", "r1", "stolen"));
        assert!(matches!(e, StateError::PermissionDenied { .. }), "{e}");
        let now = h.time_ms;
        let stolen = h.state.check_login(
            unit,
            &l.account,
            "stolen",
            "ann",
            Some(&sec_hash("stolen")),
            now,
        );
        assert_eq!(stolen.reason, "wrong password");
        assert!(
            h.state
                .check_login(unit, &l.account, "pw", "ann", Some(&sec_hash("pw")), now)
                .ok
        );
        assert!(matches!(
            h.err(renew(l.lease_id, "ann", "stolen", 0)),
            StateError::PermissionDenied { .. }
        ));
        // The same principal may replay.
        let (again, replayed) = lease_as(&mut h, pool_id, "frontend-a", "ann", "r1", "pw2");
        assert!(replayed);
        assert_eq!(again, l);
    }

    /// A lease keeps at most MAX_LEASE_CREDENTIALS answers; one more replay
    /// is refused and changes nothing, and every earlier answer still works.
    #[test]
    fn replays_are_capped_and_the_cap_refuses_without_a_change() {
        let (mut h, unit, pool_id) = setup(AccessPolicy::HolderOnly);
        let answers: Vec<String> = (0..MAX_LEASE_CREDENTIALS)
            .map(|i| format!("pw{i}"))
            .collect();
        let (l, _) = lease(&mut h, pool_id, "ann", "r1", &answers[0]);
        for pw in &answers[1..] {
            let (again, replayed) = lease(&mut h, pool_id, "ann", "r1", pw);
            assert!(replayed);
            assert_eq!(again, l);
        }
        let e = h.err(lease_cmd(pool_id, "ann", "r1", "one-more"));
        assert!(matches!(e, StateError::ResourceExhausted { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("answered {MAX_LEASE_CREDENTIALS} times")),
            "{e}"
        );
        let now = h.time_ms;
        for pw in &answers {
            let login = h
                .state
                .check_login(unit, &l.account, pw, "ann", Some(&sec_hash(pw)), now);
            assert!(login.ok, "{pw}: {}", login.reason);
        }
        let refused = h.state.check_login(
            unit,
            &l.account,
            "one-more",
            "ann",
            Some(&sec_hash("one-more")),
            now,
        );
        assert_eq!(refused.reason, "wrong password");
        assert!(matches!(
            h.err(release(l.lease_id, "ann", "one-more")),
            StateError::PermissionDenied { .. }
        ));
        h.ok(release(
            l.lease_id,
            "ann",
            &answers[MAX_LEASE_CREDENTIALS - 1],
        ));
    }

    #[test]
    fn leases_lists_the_active_leases_of_a_pool() {
        let (mut h, _, pool_id) = setup(AccessPolicy::LeasedAccounts);
        let (a, _) = lease(&mut h, pool_id, "ann", "r1", "pw");
        let (b, _) = lease(&mut h, pool_id, "bob", "r2", "pw");
        assert_eq!(h.state.leases(pool_id).unwrap(), vec![a, b]);
        assert!(matches!(
            h.state.leases(42),
            Err(StateError::NotFound { .. })
        ));
    }

    fn register(unit_id: u64, account: &str, pw: &str, replace: bool) -> Command {
        Command::RegisterAccount(RegisterAccount {
            unit_id,
            account: account.into(),
            password: KdfHash::new([3; 16], pw),
            replace,
        })
    }

    fn password_ok(h: &Harness, unit: u64, account: &str, pw: &str) -> Result<bool, String> {
        match h.state.registered_login(unit, account, h.time_ms) {
            RegisteredLogin::Check(k) => Ok(k.matches(pw)),
            RegisteredLogin::Refused(why) => Err(why),
        }
    }

    #[test]
    fn registered_accounts_log_in_by_policy_and_only_their_hash_is_kept() {
        let mut h = Harness::new();
        let mut timed = unit_spec("timed", AccessPolicy::LeasedAccounts);
        timed.service_start_ms = h.time_ms + 1_000;
        let p = platform(
            &mut h,
            "tv",
            vec![
                unit_spec("open", AccessPolicy::LeasedAccounts),
                unit_spec("own", AccessPolicy::RegisteredOnly),
                unit_spec("closed", AccessPolicy::Closed),
                timed,
            ],
        );
        let [open, own, closed, timed] = [0, 1, 2, 3].map(|i| p.units[i].unit_id);
        for unit in [open, own, closed, timed] {
            h.ok(register(unit, "alice", "correct horse", false));
        }
        // The state keeps the hash, never the password.
        let snapshot = h.state.to_snapshot().unwrap();
        assert!(
            !snapshot
                .windows(b"correct horse".len())
                .any(|w| w == b"correct horse")
        );
        assert_eq!(password_ok(&h, open, "alice", "correct horse"), Ok(true));
        assert_eq!(password_ok(&h, own, "alice", "correct horse"), Ok(true));
        assert_eq!(password_ok(&h, own, "alice", "wrong horse"), Ok(false));
        assert_eq!(
            password_ok(&h, closed, "alice", "correct horse"),
            Err("unit is closed".into())
        );
        assert_eq!(
            password_ok(&h, timed, "alice", "correct horse"),
            Err("outside service period".into())
        );
        assert_eq!(
            password_ok(&h, open, "bob", "correct horse"),
            Err("unknown account".into())
        );
        // A registered-only unit refuses temporary accounts: no lease, no login.
        let pool_own = pool(&mut h, own, 1, 0, HOUR).pool_id;
        let refused = h.err(Command::Lease(LeaseAccount {
            pool_id: pool_own,
            user: "ann".into(),
            ttl_ms: 0,
            request_id: "r".into(),
            caller: String::new(),
            password: PasswordHash::new([1; 16], "pw"),
            lease_secret: sec_hash("pw"),
        }));
        assert!(matches!(
            refused,
            StateError::FailedPrecondition {
                code: Reason::UnitClosed,
                ..
            }
        ));
        let outcome = h
            .state
            .check_login(own, "u2p1-00000", "pw", "ann", None, h.time_ms);
        assert_eq!(outcome.reason, "the unit admits only registered accounts");

        // Twice is refused; replace sets the password; replace of nobody is refused.
        assert!(matches!(
            h.err(register(open, "alice", "another one", false)),
            StateError::AlreadyExists { .. }
        ));
        h.ok(register(open, "alice", "another one", true));
        assert_eq!(password_ok(&h, open, "alice", "correct horse"), Ok(false));
        assert_eq!(password_ok(&h, open, "alice", "another one"), Ok(true));
        assert!(matches!(
            h.err(register(open, "nobody", "another one", true)),
            StateError::NotFound { .. }
        ));
        // A temporary account's shape and an unknown unit are refused.
        assert!(matches!(
            h.err(register(open, "u1p1-00000", "password", false)),
            StateError::InvalidArgument { .. }
        ));
        assert!(matches!(
            h.err(register(999, "carol", "password", false)),
            StateError::NotFound { .. }
        ));
        let names: Vec<_> = h
            .state
            .registered_accounts(open, "")
            .map(|a| a.account.clone())
            .collect();
        assert_eq!(names, ["alice"]);
        h.ok(Command::RemoveAccount(RemoveAccount {
            unit_id: open,
            account: "alice".into(),
        }));
        assert_eq!(
            password_ok(&h, open, "alice", "another one"),
            Err("unknown account".into())
        );
        h.state.accounts.check_invariants();
    }

    #[test]
    fn the_registered_accounts_quota_is_checked_before_the_log() {
        let mut h = Harness::new();
        h.ok(Command::SetQuotas(Quotas {
            registered_accounts: 1,
            ..Quotas::default()
        }));
        let p = platform(
            &mut h,
            "tv",
            vec![unit_spec("open", AccessPolicy::LeasedAccounts)],
        );
        let unit = p.units[0].unit_id;
        h.ok(register(unit, "alice", "password", false));
        let cmd = register(unit, "bob", "password", false);
        assert!(h.state.admit(&cmd).is_err());
        assert!(matches!(
            h.err(cmd),
            StateError::ResourceExhausted {
                code: Reason::QuotaExceeded,
                ..
            }
        ));
        // A password change adds nothing.
        h.ok(register(unit, "alice", "password2", true));
    }

    #[test]
    fn a_content_shows_a_list_all_or_none_of_its_platforms_units() {
        let mut h = Harness::new();
        let mut later = unit_spec("later", AccessPolicy::LeasedAccounts);
        later.service_start_ms = h.time_ms + 60_000;
        let p = platform(
            &mut h,
            "tv",
            vec![unit_spec("quiz", AccessPolicy::LeasedAccounts), later],
        );
        let other = platform(&mut h, "radio", vec![unit_spec("x", AccessPolicy::Closed)]);
        let (quiz, later) = (p.units[0].unit_id, p.units[1].unit_id);
        let set = |content: &str, units: ContentUnits| {
            Command::SetContentUnits(SetContentUnits {
                platform_id: p.platform_id,
                content_id: content.into(),
                units,
            })
        };
        h.ok(set("news", ContentUnits::List(vec![later, quiz])));
        h.ok(set("film", ContentUnits::All));
        h.ok(set("ads", ContentUnits::None));
        let shown = |h: &Harness, c: &str| -> Vec<(u64, bool)> {
            h.state
                .first_access(p.platform_id, c, h.time_ms)
                .unwrap()
                .shown
                .iter()
                .map(|s| (s.unit.unit_id, s.available))
                .collect()
        };
        assert_eq!(shown(&h, "news"), [(later, false), (quiz, true)]);
        assert_eq!(shown(&h, "film"), [(quiz, true), (later, false)]);
        assert_eq!(shown(&h, "ads"), []);
        h.advance(60_000);
        assert_eq!(shown(&h, "film"), [(quiz, true), (later, true)]);
        // Another platform's unit, a repeat, an empty list: refused, nothing set.
        let foreign = other.units[0].unit_id;
        assert!(matches!(
            h.err(set("news", ContentUnits::List(vec![foreign]))),
            StateError::InvalidArgument { .. }
        ));
        assert!(
            h.state
                .admit(&set("x", ContentUnits::List(vec![quiz, quiz])))
                .is_err()
        );
        assert!(
            h.state
                .admit(&set("x", ContentUnits::List(vec![])))
                .is_err()
        );
        assert_eq!(shown(&h, "news").len(), 2);
        assert!(matches!(
            h.state.first_access(p.platform_id, "nope", h.time_ms),
            Err(StateError::NotFound { .. })
        ));
        h.ok(Command::RemoveContent(RemoveContent {
            platform_id: p.platform_id,
            content_id: "ads".into(),
        }));
        assert!(
            h.state
                .first_access(p.platform_id, "ads", h.time_ms)
                .is_err()
        );
        // Tags and registered accounts go with their platform.
        h.ok(register(quiz, "alice", "password", false));
        h.ok(Command::DeletePlatform(DeletePlatform {
            platform_id: p.platform_id,
        }));
        assert_eq!(h.state.counts().contents, 0);
        assert_eq!(h.state.counts().registered_accounts, 0);
    }
}
