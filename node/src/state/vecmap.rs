//! [`VecMap`] and [`StrMap`]: the small maps inside every presence record.
//!
//! A record's clients (usually one or two) and its `ext` (a handful of
//! fields) were `BTreeMap`s, and a `BTreeMap` allocates a whole B-tree node
//! (11 slots) for its first entry: ~720 bytes for one client, ~550 for the
//! ext fields, most of a record's ~1.7 KiB. With a million records per node
//! that alone broke the 1 GiB target. A sorted `Vec` of exactly the entries
//! it holds costs 24 bytes plus the entries.
//!
//! It keeps what the state machine relies on from `BTreeMap`: iteration in
//! key order, and the same serialized form (a map), so snapshots taken
//! before and after the change read the same and equal maps encode to equal
//! bytes on every replica.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map stored as a sorted, exactly sized `Vec` of pairs. Lookups
/// are binary searches; inserts and removes move the tail, which is cheap
/// for the few entries it is meant for.
#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map; allocates nothing.
    pub fn new() -> Self {
        VecMap(Vec::new())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// The value whose key `cmp` finds equal, searching as a binary search
    /// does (`cmp` says how a key compares to the one sought): for keys
    /// that cannot be borrowed as one value, like a pair of strings.
    pub fn get_by(&self, mut cmp: impl FnMut(&K) -> std::cmp::Ordering) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| cmp(k))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// True if `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                // Exactly one more slot: `Vec` would otherwise grow to 4.
                self.0.reserve_exact(1);
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        let (_, v) = self.0.remove(i);
        self.0.shrink_to_fit();
        Some(v)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<K: Ord + Clone, V: Clone> From<&BTreeMap<K, V>> for VecMap<K, V> {
    fn from(map: &BTreeMap<K, V>) -> Self {
        let mut v = Vec::with_capacity(map.len());
        v.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
        VecMap(v)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = VecMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<K, V, Q> Index<&Q> for VecMap<K, V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for key in VecMap")
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K, V> Deserialize<'de> for VecMap<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Ord,
            V: Deserialize<'de>,
        {
            type Value = VecMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut v: Vec<(K, V)> =
                    Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(entry) = access.next_entry()? {
                    v.push(entry);
                }
                // Written in key order by `serialize`; anything else is
                // normalized the way a BTreeMap would (last value wins).
                if !v.windows(2).all(|w| w[0].0 < w[1].0) {
                    return Ok(v.into_iter().collect());
                }
                v.shrink_to_fit();
                Ok(VecMap(v))
            }
        }

        d.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_btreemap() {
        let mut m: VecMap<String, u32> = VecMap::new();
        let mut b: BTreeMap<String, u32> = BTreeMap::new();
        for (i, k) in ["m", "c", "x", "c", "a", "m"].iter().enumerate() {
            assert_eq!(
                m.insert(k.to_string(), i as u32),
                b.insert(k.to_string(), i as u32)
            );
        }
        assert_eq!(m.remove("x"), b.remove("x"));
        assert_eq!(m.remove("nope"), b.remove("nope"));
        assert!(m.iter().eq(b.iter()));
        assert_eq!(m.len(), b.len());
        assert_eq!(m["c"], 3);
        assert!(m.contains_key("a") && !m.contains_key("x"));
        assert_eq!(m.0.capacity(), m.len(), "exactly sized");
    }

    #[test]
    fn serializes_exactly_like_a_btreemap() {
        let b: BTreeMap<String, String> =
            BTreeMap::from([("k2".into(), "b".into()), ("k1".into(), "a".into())]);
        let m = VecMap::from(&b);
        let bytes = bincode::serialize(&m).unwrap();
        assert_eq!(bytes, bincode::serialize(&b).unwrap());
        let back: VecMap<String, String> = bincode::deserialize(&bytes).unwrap();
        assert!(back == m);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"k1":"a","k2":"b"}"#);
        // Out-of-order input is normalized, last value wins.
        let json: VecMap<String, u8> = serde_json::from_str(r#"{"b":1,"a":2,"b":3}"#).unwrap();
        assert_eq!(
            json.iter().collect::<Vec<_>>(),
            [(&"a".into(), &2), (&"b".into(), &3)]
        );
    }
}

/// A string-to-string map packed into one allocation, for a record's `ext`:
/// `[len k][k][len v][v]…` with u32 little-endian lengths, in key order.
/// Five short fields take ~120 bytes instead of a `Vec` of ten `String`s
/// (~500). Read-mostly: a write replaces the whole map, as Login and
/// ChangePermission do. Serializes exactly like a `BTreeMap<String, String>`.
///
/// The bytes are shared (`Arc`): a copy of a record, made when the record
/// changes while the watch history or a snapshot still holds the old one,
/// shares its ext instead of copying up to 4 KiB. `None` is the empty map,
/// which allocates nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StrMap(Option<std::sync::Arc<[u8]>>);

impl StrMap {
    /// An empty map; allocates nothing.
    pub fn new() -> Self {
        StrMap::default()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Bytes the encoded entries take (keys, values and a 4-byte length
    /// for each).
    pub fn byte_len(&self) -> usize {
        self.0.as_deref().map_or(0, <[u8]>::len)
    }

    /// Entries in key order.
    pub fn iter(&self) -> StrMapIter<'_> {
        StrMapIter(self.0.as_deref().unwrap_or(&[]))
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn from_sorted<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> StrMap {
        let size: usize = pairs.clone().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut buf = Vec::with_capacity(size);
        for (k, v) in pairs {
            for s in [k, v] {
                let len = u32::try_from(s.len()).expect("ext strings are limited to 4 KiB");
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
        }
        if buf.is_empty() {
            return StrMap(None);
        }
        StrMap(Some(std::sync::Arc::from(buf)))
    }
}

impl From<&BTreeMap<String, String>> for StrMap {
    fn from(map: &BTreeMap<String, String>) -> Self {
        StrMap::from_sorted(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Iterator over a [`StrMap`].
pub struct StrMapIter<'a>(&'a [u8]);

impl<'a> StrMapIter<'a> {
    fn next_str(&mut self) -> &'a str {
        let (len, rest) = self.0.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        // Only ever built from `&str`s.
        std::str::from_utf8(s).expect("StrMap holds UTF-8")
    }
}

impl<'a> Iterator for StrMapIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let k = self.next_str();
        let v = self.next_str();
        Some((k, v))
    }
}

impl<Q: Borrow<str> + ?Sized> Index<&Q> for StrMap {
    type Output = str;

    fn index(&self, key: &Q) -> &str {
        self.get(key.borrow()).expect("no entry for key in StrMap")
    }
}

impl fmt::Debug for StrMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // bincode needs the length up front; the iterator cannot tell it.
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Ok(StrMap::from(&map))
    }
}

#[cfg(test)]
mod str_map_tests {
    use super::*;

    #[test]
    fn packs_a_map_and_serializes_like_one() {
        let b: BTreeMap<String, String> = BTreeMap::from([
            ("city".into(), "Xi'an".into()),
            ("".into(), "empty key".into()),
            ("emoji".into(), "😀".into()),
        ]);
        let m = StrMap::from(&b);
        assert_eq!(m.len(), 3);
        assert_eq!(&m["city"], "Xi'an");
        assert_eq!(m.get(""), Some("empty key"));
        assert_eq!(m.get("nope"), None);
        assert!(m.iter().eq(b.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        let bytes = bincode::serialize(&m).unwrap();
        assert_eq!(bytes, bincode::serialize(&b).unwrap());
        assert!(bincode::deserialize::<StrMap>(&bytes).unwrap() == m);
        assert!(StrMap::new().is_empty() && StrMap::new().iter().next().is_none());
    }
}
