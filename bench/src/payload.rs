//! The one payload both systems carry: a presence login (P-publish
//! `UserLogin`) of about 120 bytes. Herald gets it as a `LoginRequest`;
//! etcd gets the same message's protobuf bytes as the value of
//! `/presence/<uid>`, so both move and store the same bytes.

use std::collections::HashMap;

use herald_client::proto::LoginRequest;
use prost::Message;

/// The uid of key number `n`: fixed width, so every payload has one size.
pub fn uid(n: u64) -> String {
    format!("user-{n:010}")
}

/// The etcd key of key number `n`.
pub fn etcd_key(n: u64) -> String {
    format!("/presence/{}", uid(n))
}

/// The login of key number `n`: uid, sid, client type and a few ext fields.
pub fn login(n: u64) -> LoginRequest {
    let ext: HashMap<String, String> = [
        ("app", "im-9.4.2"),
        ("os", "android-14"),
        ("region", "cn-north-1"),
        ("net", "wifi"),
        ("dev", "sm-g9910"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    LoginRequest {
        uid: uid(n),
        sid: 13_800_000_000 + n,
        client_type: "mobile".into(),
        accept_strangers: n.is_multiple_of(2),
        ext,
        ttl_ms: 0,
        connection_id: String::new(),
    }
}

/// The protobuf bytes of [`login`]`(n)`: etcd's value.
pub fn login_bytes(n: u64) -> Vec<u8> {
    login(n).encode_to_vec()
}

/// TTL of the overload test's logins (and of its etcd lease): long enough
/// that nothing expires before the read-back.
pub const LEASED_TTL_MS: u64 = 60 * 60 * 1000;

/// The uid of the overload test's login number `n`: every login a new user,
/// so every acknowledged one can be read back.
pub fn leased_uid(n: u64) -> String {
    format!("ovl-{n:010}")
}

/// The etcd key of [`leased_uid`]`(n)`.
pub fn leased_key(n: u64) -> String {
    format!("/ovl/{}", leased_uid(n))
}

/// Login number `n` of the overload test: [`login`]'s payload on a fresh
/// uid, with a TTL of [`LEASED_TTL_MS`].
pub fn leased_login(n: u64) -> LoginRequest {
    LoginRequest {
        uid: leased_uid(n),
        ttl_ms: LEASED_TTL_MS,
        ..login(n)
    }
}

/// The largest valid uid (128 bytes) of number `n`.
pub fn big_uid(n: u64) -> String {
    format!("big-{n:0124}")
}

/// The etcd key of big write number `n`.
pub fn big_key(n: u64) -> String {
    format!("/big/{n:010}")
}

/// The largest valid login: a 128-byte uid and an ext of exactly the
/// 4096 bytes of keys and values the node allows.
pub fn big_login(n: u64) -> LoginRequest {
    let filler = char::from(b'a' + (n % 26) as u8);
    let ext: HashMap<String, String> =
        [("blob".to_string(), filler.to_string().repeat(4096 - 4))].into();
    LoginRequest {
        uid: big_uid(n),
        sid: 13_900_000_000 + n,
        client_type: "pc".into(),
        accept_strangers: false,
        ext,
        ttl_ms: 0,
        connection_id: String::new(),
    }
}

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const ETCD_MAX_REQUEST_BYTES: usize = 1_572_864;

/// The value of etcd's largest valid put: the request limit less room for
/// the key and the request's framing.
pub fn big_value(n: u64) -> Vec<u8> {
    vec![b'a' + (n % 26) as u8; ETCD_MAX_REQUEST_BYTES - 512]
}
