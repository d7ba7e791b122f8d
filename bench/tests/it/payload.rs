//! The payload both systems carry.

use herald_bench::payload::{etcd_key, login_bytes, uid};

#[test]
fn payload_is_about_120_bytes_and_the_same_size_for_every_key() {
    let sizes: Vec<usize> = [0u64, 1, 9_999, 999_999]
        .iter()
        .map(|&n| login_bytes(n).len())
        .collect();
    assert!(sizes.iter().all(|&s| (110..=130).contains(&s)), "{sizes:?}");
    // Only accept_strangers (odd/even) may change the size.
    let (min, max) = (sizes.iter().min(), sizes.iter().max());
    assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 2), "{sizes:?}");
    assert_eq!(etcd_key(42), format!("/presence/{}", uid(42)));
    assert_eq!(uid(42), "user-0000000042");
}
