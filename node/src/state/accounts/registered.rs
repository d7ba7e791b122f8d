//! Registered accounts: a viewer's own account in a unit (P-iptv claims 16
//! and 24), beside the temporary accounts of the unit's pools.
//!
//! An operator registers an account name and a password for one unit. The
//! node that serves the request salts and hashes the password with Argon2id
//! ([`KdfHash`]) before it proposes, so the log, the snapshots and this
//! module only ever hold the hash. A login names the account and the
//! password; the unit's service period and access policy are checked here,
//! in the state (as for temporary accounts), and the password by the serving
//! node against the stored hash, outside the state lock: a KDF is slow on
//! purpose, and the state must not wait for it.
//!
//! Which policies admit a registered account: every one but
//! [`AccessPolicy::Closed`]; [`AccessPolicy::RegisteredOnly`] admits only
//! registered accounts. A registered name may not have the shape of a
//! temporary account's (`u<unit>p<pool>-<n>`), so a login never has to guess
//! which kind it names.

use serde::{Deserialize, Serialize};

use super::super::StateError;
use super::super::limits::{MAX_NAME_BYTES, check_len};
use super::super::quotas::{Quotas, over};
use super::{AccessPolicy, AccountPools, Unit, in_period, same_bytes};

/// Argon2id memory cost of a new hash, in KiB (19 MiB: the OWASP minimum
/// for Argon2id with 2 passes).
pub const KDF_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes of a new hash.
pub const KDF_PASSES: u32 = 2;
/// Argon2id lanes of a new hash.
pub const KDF_LANES: u32 = 1;
/// Bounds a stored hash's parameters must keep, so no entry can make a login
/// cost more than a few times a default one.
const KDF_MAX_MEMORY_KIB: u32 = 64 * 1024;
const KDF_MAX_PASSES: u32 = 8;
const KDF_MAX_LANES: u32 = 4;

/// Bytes of a registered account's password (the KDF takes any bytes; a
/// bound keeps one login's work bounded too).
pub const MIN_PASSWORD_BYTES: usize = 8;
/// See [`MIN_PASSWORD_BYTES`].
pub const MAX_PASSWORD_BYTES: usize = 128;

/// An Argon2id hash of a password with its salt and parameters: what a
/// registered account stores instead of its password.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfHash {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
    /// Random per hash, made by the serving node.
    pub salt: [u8; 16],
    /// The 32-byte Argon2id output.
    pub hash: [u8; 32],
}

impl KdfHash {
    /// Hashes `password` with `salt` at the default cost. Slow on purpose
    /// (tens of milliseconds): callers run it off the async threads.
    pub fn new(salt: [u8; 16], password: &str) -> Self {
        let mut k = KdfHash {
            memory_kib: KDF_MEMORY_KIB,
            passes: KDF_PASSES,
            lanes: KDF_LANES,
            salt,
            hash: [0; 32],
        };
        k.hash = k
            .derive(password)
            .expect("the default parameters are valid");
        k
    }

    /// True when `password` is the one hashed (the output compared in full).
    /// As slow as [`KdfHash::new`].
    pub fn matches(&self, password: &str) -> bool {
        self.validate().is_ok()
            && self
                .derive(password)
                .is_ok_and(|out| same_bytes(&out, &self.hash))
    }

    fn derive(&self, password: &str) -> Result<[u8; 32], argon2::Error> {
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        kdf.hash_password_into(password.as_bytes(), &self.salt, &mut out)?;
        Ok(out)
    }

    /// The parameters are Argon2id's and within Herald's bounds.
    pub fn validate(&self) -> Result<(), StateError> {
        let ok = (8 * self.lanes..=KDF_MAX_MEMORY_KIB).contains(&self.memory_kib)
            && (1..=KDF_MAX_PASSES).contains(&self.passes)
            && (1..=KDF_MAX_LANES).contains(&self.lanes);
        if ok {
            Ok(())
        } else {
            Err(StateError::invalid(
                "password",
                format!(
                    "hash parameters out of bounds (m={} KiB, t={}, p={})",
                    self.memory_kib, self.passes, self.lanes
                ),
            ))
        }
    }
}

/// Checks a password a caller sent, before it is hashed or checked.
pub fn check_password(password: &str) -> Result<(), StateError> {
    check_len("password", password, MIN_PASSWORD_BYTES, MAX_PASSWORD_BYTES)
}

/// A viewer's own account in one unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisteredAccount {
    /// The unit it logs in to.
    pub unit_id: u64,
    /// 1..=128 bytes, unique in the unit, not of a temporary account's shape.
    pub account: String,
    /// Cluster time it was registered.
    pub created_ms: u64,
    /// Cluster time its password was last set.
    pub updated_ms: u64,
    /// Never shown to clients (the API's views leave it out).
    pub(super) password: KdfHash,
}

/// Registers an account in a unit, or sets its password (`replace`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterAccount {
    /// An existing unit.
    pub unit_id: u64,
    /// 1..=128 bytes, not `u<digits>p<digits>-<digits>`.
    pub account: String,
    /// Made by the serving node from the caller's password.
    pub password: KdfHash,
    /// false: refused if the account exists; true: sets the password of an
    /// existing account (refused if it does not exist).
    pub replace: bool,
}

/// Removes a registered account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoveAccount {
    /// Its unit.
    pub unit_id: u64,
    /// Its name.
    pub account: String,
}

/// True for names of the shape the pools give their accounts.
pub fn is_temporary_name(name: &str) -> bool {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    let Some(rest) = name.strip_prefix('u') else {
        return false;
    };
    let Some((unit, rest)) = rest.split_once('p') else {
        return false;
    };
    let Some((pool, n)) = rest.split_once('-') else {
        return false;
    };
    digits(unit) && digits(pool) && digits(n)
}

/// Field limits of an account name.
pub fn check_account_name(account: &str) -> Result<(), StateError> {
    check_len("account", account, 1, MAX_NAME_BYTES)?;
    if is_temporary_name(account) {
        return Err(StateError::invalid(
            "account",
            format!(
                "{account:?} has the shape of a temporary account's name (u<unit>p<pool>-<n>); \
                 choose another"
            ),
        ));
    }
    Ok(())
}

impl RegisterAccount {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_account_name(&self.account)?;
        self.password.validate()
    }
}

impl RemoveAccount {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_len("account", &self.account, 1, MAX_NAME_BYTES)
    }
}

/// What the state says of a login with a registered account, before the
/// password is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisteredLogin {
    /// The unit admits the account: check the password against this hash.
    Check(KdfHash),
    /// Refused, and why (the same words as a temporary account's refusal).
    Refused(String),
}

impl AccountPools {
    /// Whether a registration fits `registered_accounts` (a new account
    /// only; a password change adds nothing).
    pub(crate) fn admit_register(
        &self,
        q: &Quotas,
        cmd: &RegisterAccount,
    ) -> Result<(), StateError> {
        let exists = self
            .registered
            .contains_key(&(cmd.unit_id, cmd.account.clone()));
        if !cmd.replace && !exists && self.registered.len() as u64 >= q.registered_accounts {
            return Err(over(
                "registered_accounts",
                q.registered_accounts,
                format!("{} registered accounts exist", self.registered.len()),
            ));
        }
        Ok(())
    }

    pub(crate) fn register(
        &mut self,
        now_ms: u64,
        cmd: &RegisterAccount,
    ) -> Result<(), StateError> {
        if self.unit(cmd.unit_id).is_none() {
            return Err(StateError::not_found(format!("unit {}", cmd.unit_id)));
        }
        let key = (cmd.unit_id, cmd.account.clone());
        match (self.registered.get_mut(&key), cmd.replace) {
            (Some(_), false) => Err(StateError::exists(format!(
                "account {:?} in unit {} (register with replace to set its password)",
                cmd.account, cmd.unit_id
            ))),
            (None, true) => Err(StateError::not_found(format!(
                "account {:?} in unit {}",
                cmd.account, cmd.unit_id
            ))),
            (Some(acct), true) => {
                acct.password = cmd.password;
                acct.updated_ms = now_ms;
                Ok(())
            }
            (None, false) => {
                self.registered.insert(
                    key,
                    RegisteredAccount {
                        unit_id: cmd.unit_id,
                        account: cmd.account.clone(),
                        created_ms: now_ms,
                        updated_ms: now_ms,
                        password: cmd.password,
                    },
                );
                Ok(())
            }
        }
    }

    pub(crate) fn remove_account(&mut self, cmd: &RemoveAccount) -> Result<(), StateError> {
        self.registered
            .remove(&(cmd.unit_id, cmd.account.clone()))
            .map(|_| ())
            .ok_or_else(|| {
                StateError::not_found(format!("account {:?} in unit {}", cmd.account, cmd.unit_id))
            })
    }

    /// The registered accounts of a unit, by name, from `after` (exclusive).
    pub(crate) fn registered_accounts(
        &self,
        unit_id: u64,
        after: &str,
    ) -> impl Iterator<Item = &RegisteredAccount> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let start = if after.is_empty() {
            Included((unit_id, String::new()))
        } else {
            Excluded((unit_id, after.to_owned()))
        };
        self.registered
            .range((start, Unbounded))
            .take_while(move |((u, _), _)| *u == unit_id)
            .map(|(_, a)| a)
    }

    /// Registered accounts in the cluster.
    pub(crate) fn registered_count(&self) -> usize {
        self.registered.len()
    }

    /// True when `account` names a registered account of `unit_id`.
    pub(crate) fn is_registered(&self, unit_id: u64, account: &str) -> bool {
        self.registered.contains_key(&(unit_id, account.to_owned()))
    }

    /// The unit's period and policy for a registered account's login at
    /// cluster time `now_ms`, and the hash to check the password against.
    pub(crate) fn registered_login(
        &self,
        unit_id: u64,
        account: &str,
        now_ms: u64,
    ) -> RegisteredLogin {
        let Some(unit) = self.unit(unit_id) else {
            return RegisteredLogin::Refused(format!("unknown unit {unit_id}"));
        };
        if let Some(refused) = unit_refusal(unit, now_ms) {
            return RegisteredLogin::Refused(refused.to_owned());
        }
        match self.registered.get(&(unit_id, account.to_owned())) {
            Some(acct) => RegisteredLogin::Check(acct.password),
            None => RegisteredLogin::Refused("unknown account".to_owned()),
        }
    }

    /// Drops the registered accounts of units that are gone.
    pub(super) fn forget_registered_of(&mut self, units: &std::collections::BTreeSet<u64>) {
        self.registered.retain(|(unit, _), _| !units.contains(unit));
    }
}

/// Why a unit refuses every login now, if it does.
pub(super) fn unit_refusal(unit: &Unit, now_ms: u64) -> Option<&'static str> {
    if !in_period(&unit.spec, now_ms) {
        return Some("outside service period");
    }
    if unit.spec.access_policy == AccessPolicy::Closed {
        return Some("unit is closed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_told_apart() {
        assert!(is_temporary_name("u1p2-00003"));
        assert!(is_temporary_name("u10p7-1"));
        for name in [
            "alice", "u1p2", "u1p-3", "up2-3", "u1p2-3x", "xu1p2-3", "u1q2-3",
        ] {
            assert!(!is_temporary_name(name), "{name}");
        }
        assert!(check_account_name("u1p2-00003").is_err());
        assert!(check_account_name("alice").is_ok());
    }

    #[test]
    fn a_kdf_hash_matches_its_password_only() {
        let k = KdfHash::new([7; 16], "correct horse");
        assert!(k.matches("correct horse"));
        assert!(!k.matches("correct horsf"));
        // Another salt gives another hash of the same password.
        assert_ne!(KdfHash::new([8; 16], "correct horse").hash, k.hash);
        assert!(k.validate().is_ok());
        let mut big = k;
        big.memory_kib = 1 << 30;
        assert!(big.validate().is_err());
        assert!(
            !big.matches("correct horse"),
            "never derives with bad bounds"
        );
    }
}
