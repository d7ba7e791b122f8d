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
    }
}

/// The protobuf bytes of [`login`]`(n)`: etcd's value.
pub fn login_bytes(n: u64) -> Vec<u8> {
    login(n).encode_to_vec()
}
