//! Every size and count limit of the state machine, and the checks that
//! enforce them.
//!
//! Kept in one place so the API layer, the docs and the checks cannot drift
//! apart: the API re-checks nothing itself, it calls
//! [`Command::validate`](super::Command::validate), which uses these.

use std::collections::BTreeMap;

use super::StateError;

// The longest TTL, the largest pool and the most units in a platform also
// bound the quotas, which are part of a node's config file: they are defined
// with the quotas in `herald_config`, so the config can be checked without
// the node.
pub use herald_config::quotas::{MAX_POOL_SIZE, MAX_TTL_MS, MAX_UNITS};

/// Bytes in a presence `uid` (UTF-8), at least 1.
pub const MAX_UID_BYTES: usize = 128;
/// Bytes in a `client_type`, at least 1.
pub const MAX_CLIENT_TYPE_BYTES: usize = 32;
/// Bytes in a presence `connection_id` (printable ASCII); "" is the one
/// entry of a client type, as before connections had ids.
pub const MAX_CONNECTION_ID_BYTES: usize = 64;
/// Sum of the key and value bytes of a presence `ext` map.
pub const MAX_EXT_BYTES: usize = 4096;
/// Uids in one batch presence read (enforced by the API, which owns batches).
pub const MAX_BATCH: usize = 1000;
/// Bytes of session progress.
pub const MAX_PROGRESS_BYTES: usize = 65536;
/// Bytes in an application URL, at least 1.
pub const MAX_APP_URL_BYTES: usize = 2048;
/// Bytes in a platform, unit, pool or QoS-class name.
pub const MAX_NAME_BYTES: usize = 128;
/// Capabilities in one list (a session's requirements or a candidate's).
pub const MAX_CAPABILITIES: usize = 64;
/// Bytes in one capability, at least 1.
pub const MAX_CAPABILITY_BYTES: usize = 64;
/// Candidates in one handoff request.
pub const MAX_CANDIDATES: usize = 64;
/// Bytes in a lease `request_id`, at least 1.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Bytes in a lease `user`, at least 1.
pub const MAX_USER_BYTES: usize = 128;
/// Bytes in an account-data key, at least 1.
pub const MAX_DATA_KEY_BYTES: usize = 128;
/// Bytes in an account-data value.
pub const MAX_DATA_VALUE_BYTES: usize = 64 * 1024;
/// Data keys one leased account may hold.
pub const MAX_DATA_KEYS: usize = 256;
/// Presence events kept for watches that resume from a revision.
pub const EVENT_HISTORY: usize = 100_000;
/// Work-log entries kept per session (the newest ones).
pub const WORK_LOG_LEN: usize = 1000;
/// The largest progress sequence number: 2^53 - 1, the largest integer a
/// web page's JSON number holds exactly, so every client reads the same
/// number. (Before the bound, a write of `u64::MAX` was accepted by
/// mistake, e.g. a -1 cast, and no later progress could pass it.)
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// The longest a handoff offer stands: 10 minutes.
pub const MAX_OFFER_TTL_MS: u64 = 600_000;
/// Users in the auth state.
pub const MAX_USERS: usize = 10_000;
/// Bearer tokens one user may hold at once.
pub const MAX_TOKENS_PER_USER: usize = 16;
/// How long (cluster time) a lease's `request_id` is remembered after the
/// lease ended, so a late retry is refused rather than granted a second lease.
pub const REQUEST_ID_RETENTION_MS: u64 = 60 * 60 * 1000;
/// Password and lease-secret pairs one lease keeps: the first answer to its
/// request and up to three replays. A replay cannot re-send an earlier
/// answer (only hashes are kept), so it issues a fresh pair valid beside the
/// earlier ones; the cap keeps a retry storm from growing a lease without
/// bound.
pub const MAX_LEASE_CREDENTIALS: usize = 4;
/// Bytes in a presented `lease_secret`. Herald's are 32 characters; the cap
/// only bounds what a request makes the serving node hash.
pub const MAX_LEASE_SECRET_BYTES: usize = 128;
/// Bytes in the caller principal recorded with a lease (a certificate or
/// token name; empty when the listener does not authenticate).
pub const MAX_CALLER_BYTES: usize = 256;
/// Bytes in a linked catalog, attribute or link rule name, at least 1.
pub const MAX_LINK_NAME_BYTES: usize = 64;
/// Bytes in a linked item id, at least 1.
pub const MAX_ITEM_ID_BYTES: usize = 128;
/// Bytes in a linked item's attribute value, at least 1.
pub const MAX_ATTR_VALUE_BYTES: usize = 256;
/// Attribute (key, value) pairs of one linked item.
pub const MAX_ITEM_ATTRS: usize = 32;
/// Items in one page of a linked lookup.
pub const MAX_LINK_PAGE: usize = 1000;
/// The largest score weight of a linked catalog.
pub const MAX_LINK_WEIGHT: u32 = 1_000_000;

/// `value` must be `min..=max` bytes.
pub(crate) fn check_len(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), StateError> {
    let n = value.len();
    if n < min || n > max {
        let reason = if min == 0 {
            format!("must be at most {max} bytes of UTF-8, got {n}")
        } else {
            format!("must be {min}..={max} bytes of UTF-8, got {n}")
        };
        return Err(StateError::invalid(field, reason));
    }
    Ok(())
}

/// A user id named `field` (`uid`, or `uids[3]` in a list): 1..=
/// [`MAX_UID_BYTES`] bytes.
pub fn check_uid(field: &str, uid: &str) -> Result<(), StateError> {
    check_len(field, uid, 1, MAX_UID_BYTES)
}

/// A presence `connection_id`: at most [`MAX_CONNECTION_ID_BYTES`] bytes of
/// printable ASCII (space to `~`); empty is allowed (the client type's one
/// entry).
pub fn check_connection_id(field: &str, id: &str) -> Result<(), StateError> {
    if id.len() > MAX_CONNECTION_ID_BYTES {
        return Err(StateError::invalid(
            field,
            format!(
                "must be at most {MAX_CONNECTION_ID_BYTES} bytes of printable ASCII, got {}",
                id.len()
            ),
        ));
    }
    if let Some(at) = id.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        return Err(StateError::invalid(
            field,
            format!("must be printable ASCII (space to '~'), byte {at} is not"),
        ));
    }
    Ok(())
}

/// A presence `ext` map: at most [`MAX_EXT_BYTES`] of keys and values.
pub(crate) fn check_ext(field: &str, ext: &BTreeMap<String, String>) -> Result<(), StateError> {
    let n: usize = ext.iter().map(|(k, v)| k.len() + v.len()).sum();
    if n > MAX_EXT_BYTES {
        return Err(StateError::invalid(
            field,
            format!("keys and values must total at most {MAX_EXT_BYTES} bytes, got {n}"),
        ));
    }
    Ok(())
}

/// A TTL: at most [`MAX_TTL_MS`] (0 is allowed; what it means is up to the
/// command).
pub(crate) fn check_ttl(field: &str, ttl_ms: u64) -> Result<(), StateError> {
    if ttl_ms > MAX_TTL_MS {
        return Err(StateError::invalid(
            field,
            format!("must be at most {MAX_TTL_MS} ms (30 days), got {ttl_ms}"),
        ));
    }
    Ok(())
}

/// A capability list: at most [`MAX_CAPABILITIES`] entries of
/// 1..=[`MAX_CAPABILITY_BYTES`] bytes.
pub(crate) fn check_capabilities(field: &str, caps: &[String]) -> Result<(), StateError> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(StateError::invalid(
            field,
            format!(
                "must have at most {MAX_CAPABILITIES} entries, got {}",
                caps.len()
            ),
        ));
    }
    for (i, cap) in caps.iter().enumerate() {
        check_len(&format!("{field}[{i}]"), cap, 1, MAX_CAPABILITY_BYTES)?;
    }
    Ok(())
}

/// At most `max` bytes of opaque data.
pub(crate) fn check_bytes(field: &str, data: &[u8], max: usize) -> Result<(), StateError> {
    if data.len() > max {
        return Err(StateError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", data.len()),
        ));
    }
    Ok(())
}

// Media sharing (P-share).
/// Bytes in a storage server id (printable ASCII), at least 1.
pub const MAX_SERVER_ID_BYTES: usize = 64;
/// Bytes in a storage server address, at least 1.
pub const MAX_SERVER_ADDRESS_BYTES: usize = 256;
/// The largest storage server capacity: 2^60 bytes (an exbibyte), so sums
/// of reservations never overflow a u64.
pub const MAX_CAPACITY_BYTES: u64 = 1 << 60;
/// The largest media item: 2^40 bytes (a tebibyte).
pub const MAX_MEDIA_BYTES: u64 = 1 << 40;
/// Receivers of one share.
pub const MAX_SHARE_RECEIVERS: usize = 64;
/// The longest reservation deadline: a day.
pub const MAX_UPLOAD_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest access grant: a day.
pub const MAX_ACCESS_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest storage heartbeat TTL: 10 minutes.
pub const MAX_HEALTH_TTL_MS: u64 = 10 * 60 * 1000;
/// Key sets one share keeps: its request's first answer and up to three
/// replays (a replay cannot re-send a key, only its hash is kept).
pub const MAX_SHARE_ANSWERS: usize = 4;
/// Bytes in a presented share key. Herald's are 32 characters.
pub const MAX_SHARE_KEY_BYTES: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_errors_name_field_and_limit() {
        let long = "x".repeat(300);
        let e = check_len("uid", &long, 1, MAX_UID_BYTES).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uid: must be 1..=128 bytes of UTF-8, got 300"
        );
        let e = check_len("qos_class", &long, 0, MAX_NAME_BYTES).unwrap_err();
        assert_eq!(
            e.to_string(),
            "qos_class: must be at most 128 bytes of UTF-8, got 300"
        );
        assert!(check_len("uid", "", 1, MAX_UID_BYTES).is_err());
        assert!(check_len("uid", &"x".repeat(128), 1, MAX_UID_BYTES).is_ok());
        // Bytes, not chars: 43 three-byte chars are 129 bytes.
        assert!(check_len("uid", &"€".repeat(43), 1, MAX_UID_BYTES).is_err());
    }

    #[test]
    fn ext_counts_keys_and_values() {
        let mut ext = BTreeMap::new();
        ext.insert("k".repeat(2048), "v".repeat(2048));
        assert!(check_ext("ext", &ext).is_ok());
        ext.insert("z".into(), String::new());
        let e = check_ext("ext", &ext).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ext: keys and values must total at most 4096 bytes, got 4097"
        );
    }

    #[test]
    fn connection_ids_are_short_printable_ascii() {
        assert!(check_connection_id("connection_id", "").is_ok());
        assert!(check_connection_id("connection_id", "phone-1 ~!").is_ok());
        assert!(check_connection_id("connection_id", &"c".repeat(64)).is_ok());
        let e = check_connection_id("connection_id", &"c".repeat(65)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection_id: must be at most 64 bytes of printable ASCII, got 65"
        );
        for bad in ["a\tb", "é", "a\u{7f}", "\n"] {
            let e = check_connection_id("connection_id", bad).unwrap_err();
            assert!(e.to_string().contains("printable ASCII"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ttl_and_capabilities() {
        assert!(check_ttl("ttl_ms", MAX_TTL_MS).is_ok());
        assert!(check_ttl("ttl_ms", MAX_TTL_MS + 1).is_err());
        let caps: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let e = check_capabilities("requires", &caps).unwrap_err();
        assert!(e.to_string().starts_with("requires: must have at most 64"));
        let e = check_capabilities("requires", &["ok".into(), String::new()]).unwrap_err();
        assert!(e.to_string().starts_with("requires[1]: must be 1..=64"));
        assert!(check_capabilities("requires", &["x".repeat(65)]).is_err());
        assert!(check_capabilities("requires", &["x".repeat(64)]).is_ok());
    }
}
