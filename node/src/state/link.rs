//! Linked catalogs (P-link): catalogs of items with multi-valued attributes,
//! link rules that join two catalogs by an attribute (album.camera_model ↔
//! shop.model), selections and purchases counted exactly once per request
//! id, and lookups that rank the linked items by those counts.
//!
//! Ranking is an index kept up to date on every change, never a sort per
//! query: for each (catalog, attribute, value) — a *posting* — and each
//! order (selections, purchases, weighted score) the items are kept in a
//! `BTreeSet` keyed by `(posting, u64::MAX - rank, item_no)`. A top-k
//! lookup is a range walk of at most k keys per posting, merged across the
//! postings an item's values name; a count moves one key per posting and
//! order. `item_no` (the catalog's insertion number) breaks ties: among
//! equal ranks, the item added first comes first.
//!
//! Only attributes a link rule names are indexed (a lookup never starts
//! anywhere else): a catalog's other attributes cost nothing in the index,
//! and adding or removing the first or last rule on an attribute re-indexes
//! that catalog in the one entry that does it.
//!
//! The index is derived data: snapshots hold the catalogs, items, counts,
//! rules and request ids only, and a restore rebuilds the index
//! ([`Linked::restored`]), so a snapshot is no bigger for it.
//!
//! Counting is exactly once: a [`CountEvent`] carries a `request_id`; its
//! 128-bit digest is kept with a digest of what it counted for the
//! `link_request_retention_ms` quota (cluster time), so a retry within it
//! answers the counts again with `replayed` and counts nothing, and a
//! request id reused for another event is refused. The digests, not the
//! ids, are kept so a million of them fit in a few tens of MB; the
//! `link_request_ids` quota bounds them, and a count over it is refused
//! (retry later) rather than forgetting an id early.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::limits::{
    MAX_ATTR_VALUE_BYTES, MAX_ITEM_ATTRS, MAX_ITEM_ID_BYTES, MAX_LINK_NAME_BYTES, MAX_LINK_PAGE,
    MAX_LINK_WEIGHT, MAX_REQUEST_ID_BYTES, check_len,
};
use super::quotas::over;
use super::{Entry, Quotas, Reason, StateError};

/// A write to the linked catalogs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum LinkCommand {
    /// Creates a catalog.
    CreateCatalog(CreateCatalog),
    /// Deletes a catalog and its items (refused while a rule names it).
    DeleteCatalog {
        /// The catalog.
        name: String,
    },
    /// Adds an item or replaces its attributes (its counts stay).
    PutItem(PutItem),
    /// Removes an item and its counts.
    RemoveItem {
        /// The catalog.
        catalog: String,
        /// The item.
        item_id: String,
    },
    /// Adds a link rule between two catalogs' attributes.
    AddRule(LinkRule),
    /// Removes a link rule.
    RemoveRule {
        /// The rule.
        name: String,
    },
    /// Counts one selection or purchase of an item, once per request id.
    Count(CountEvent),
}

/// A new catalog and the weights of its score (`selections *
/// selection_weight + purchases * purchase_weight`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreateCatalog {
    /// 1..=64 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// 0..=1 000 000.
    pub selection_weight: u32,
    /// 0..=1 000 000; at least one weight is not 0.
    pub purchase_weight: u32,
}

/// An item and its attributes: `(key, value)` pairs, several values per key
/// allowed, no pair twice, at most [`MAX_ITEM_ATTRS`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PutItem {
    /// The catalog.
    pub catalog: String,
    /// 1..=128 bytes of UTF-8, no control characters.
    pub item_id: String,
    /// Keys are names (1..=64 of `[A-Za-z0-9_.-]`); values 1..=256 bytes.
    pub attrs: Vec<(String, String)>,
}

/// One side of a link rule: a catalog's attribute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkSide {
    /// The catalog.
    pub catalog: String,
    /// The attribute key.
    pub attr: String,
}

/// Items of `left.catalog` whose `left.attr` has a value are linked to the
/// items of `right.catalog` whose `right.attr` has the same value, both ways.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LinkRule {
    /// 1..=64 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// One side.
    pub left: LinkSide,
    /// The other side (not the same as `left`).
    pub right: LinkSide,
}

/// What a [`CountEvent`] counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CountKind {
    /// A user chose the item.
    Selection,
    /// A user bought the item.
    Purchase,
}

/// One selection or purchase of an item.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CountEvent {
    /// The catalog.
    pub catalog: String,
    /// The item.
    pub item_id: String,
    /// Selection or purchase.
    pub kind: CountKind,
    /// 1..=128 bytes; a retry with the same id counts nothing more.
    pub request_id: String,
}

/// The orders a lookup can rank by.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RankBy {
    /// Selection count.
    Selections = 0,
    /// Purchase count.
    Purchases = 1,
    /// The catalog's weighted score.
    Score = 2,
}

const ORDERS: [RankBy; 3] = [RankBy::Selections, RankBy::Purchases, RankBy::Score];

/// A catalog as reads show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CatalogView {
    /// Its name.
    pub name: String,
    /// Score weight of a selection.
    pub selection_weight: u32,
    /// Score weight of a purchase.
    pub purchase_weight: u32,
    /// Items it holds.
    pub items: u64,
}

/// An item as reads show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ItemView {
    /// The catalog.
    pub catalog: String,
    /// The item.
    pub item_id: String,
    /// Its attributes, sorted.
    pub attrs: Vec<(String, String)>,
    /// Selections counted.
    pub selections: u64,
    /// Purchases counted.
    pub purchases: u64,
    /// The catalog's weighted score.
    pub score: u64,
}

/// What a link command answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// CreateCatalog.
    Catalog(CatalogView),
    /// PutItem: the item after the change.
    Item(ItemView),
    /// AddRule.
    Rule(LinkRule),
    /// Count: the item's counts after the event (for a replay, now).
    Counted {
        /// The item (zero counts if it was removed since a replayed event).
        item: ItemView,
        /// True when this answers a retry of a counted request id.
        replayed: bool,
    },
    /// DeleteCatalog, RemoveItem, RemoveRule.
    Done,
}

/// Where a lookup starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkSource {
    /// An item of the `from` catalog: every value of its linked attributes.
    Item(String),
    /// An attribute value of the `from` catalog.
    Value {
        /// The attribute key in the `from` catalog.
        attr: String,
        /// The value.
        value: String,
    },
}

/// A position in a ranked result: after the item `item_no` at `rank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The rank of the last item returned.
    pub rank: u64,
    /// Its insertion number.
    pub item_no: u64,
}

impl Cursor {
    /// The page token form, `rank.item_no`.
    pub fn token(&self) -> String {
        format!("{}.{}", self.rank, self.item_no)
    }

    /// Parses [`Cursor::token`]; "" is the first page.
    pub fn parse(token: &str) -> Result<Option<Cursor>, StateError> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || StateError::invalid("page_token", format!("not a page token: {token:?}"));
        let (rank, no) = token.split_once('.').ok_or_else(bad)?;
        Ok(Some(Cursor {
            rank: rank.parse().map_err(|_| bad())?,
            item_no: no.parse().map_err(|_| bad())?,
        }))
    }
}

/// A linked lookup.
#[derive(Clone, Debug)]
pub struct LinkQuery {
    /// The catalog the source is in.
    pub from: String,
    /// The item or value to start from.
    pub source: LinkSource,
    /// The linked catalog to rank items of.
    pub to: String,
    /// The order.
    pub by: RankBy,
    /// Items per page, 1..=[`MAX_LINK_PAGE`].
    pub limit: usize,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
}

/// One page of a linked lookup, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPage {
    /// The items with their rank in the asked order.
    pub items: Vec<(u64, ItemView)>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<Cursor>,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// A catalog, attribute or rule name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn check_name(field: &str, name: &str) -> Result<(), StateError> {
    check_len(field, name, 1, MAX_LINK_NAME_BYTES)?;
    if let Some(at) = name.bytes().position(|b| !is_name_byte(b)) {
        return Err(StateError::invalid(
            field,
            format!("must be letters, digits, '_', '.' or '-'; byte {at} is not"),
        ));
    }
    Ok(())
}

/// An item id: 1..=128 bytes of UTF-8 without control characters.
pub fn check_item_id(field: &str, id: &str) -> Result<(), StateError> {
    check_len(field, id, 1, MAX_ITEM_ID_BYTES)?;
    if id.chars().any(char::is_control) {
        return Err(StateError::invalid(
            field,
            "must not hold control characters",
        ));
    }
    Ok(())
}

/// An attribute value: 1..=256 bytes of UTF-8 without control characters.
pub fn check_value(field: &str, value: &str) -> Result<(), StateError> {
    check_len(field, value, 1, MAX_ATTR_VALUE_BYTES)?;
    if value.chars().any(char::is_control) {
        return Err(StateError::invalid(
            field,
            "must not hold control characters",
        ));
    }
    Ok(())
}

/// A lookup's page size: 1..=[`MAX_LINK_PAGE`].
pub fn check_limit(limit: usize) -> Result<(), StateError> {
    if limit == 0 || limit > MAX_LINK_PAGE {
        return Err(StateError::invalid(
            "limit",
            format!("must be 1..={MAX_LINK_PAGE}, got {limit}"),
        ));
    }
    Ok(())
}

impl LinkCommand {
    /// Stateless field checks.
    pub fn validate(&self) -> Result<(), StateError> {
        match self {
            LinkCommand::CreateCatalog(c) => {
                check_name("name", &c.name)?;
                for (field, w) in [
                    ("selection_weight", c.selection_weight),
                    ("purchase_weight", c.purchase_weight),
                ] {
                    if w > MAX_LINK_WEIGHT {
                        return Err(StateError::invalid(
                            field,
                            format!("must be at most {MAX_LINK_WEIGHT}, got {w}"),
                        ));
                    }
                }
                if c.selection_weight == 0 && c.purchase_weight == 0 {
                    return Err(StateError::invalid(
                        "purchase_weight",
                        "a selection or a purchase weight must not be 0",
                    ));
                }
                Ok(())
            }
            LinkCommand::DeleteCatalog { name } => check_name("name", name),
            LinkCommand::PutItem(c) => {
                check_name("catalog", &c.catalog)?;
                check_item_id("item_id", &c.item_id)?;
                if c.attrs.len() > MAX_ITEM_ATTRS {
                    return Err(StateError::invalid(
                        "attrs",
                        format!(
                            "must have at most {MAX_ITEM_ATTRS} entries, got {}",
                            c.attrs.len()
                        ),
                    ));
                }
                let mut seen = BTreeSet::new();
                for (i, (k, v)) in c.attrs.iter().enumerate() {
                    check_name(&format!("attrs[{i}].key"), k)?;
                    check_value(&format!("attrs[{i}].value"), v)?;
                    if !seen.insert((k, v)) {
                        return Err(StateError::invalid(
                            format!("attrs[{i}]"),
                            format!("{k}={v} is listed twice"),
                        ));
                    }
                }
                Ok(())
            }
            LinkCommand::RemoveItem { catalog, item_id } => {
                check_name("catalog", catalog)?;
                check_item_id("item_id", item_id)
            }
            LinkCommand::AddRule(r) => {
                check_name("name", &r.name)?;
                check_name("left.catalog", &r.left.catalog)?;
                check_name("left.attr", &r.left.attr)?;
                check_name("right.catalog", &r.right.catalog)?;
                check_name("right.attr", &r.right.attr)?;
                if r.left == r.right {
                    return Err(StateError::invalid(
                        "right",
                        "must not be the same catalog attribute as left",
                    ));
                }
                Ok(())
            }
            LinkCommand::RemoveRule { name } => check_name("name", name),
            LinkCommand::Count(c) => {
                check_name("catalog", &c.catalog)?;
                check_item_id("item_id", &c.item_id)?;
                check_len("request_id", &c.request_id, 1, MAX_REQUEST_ID_BYTES)
            }
        }
    }
}

/// An item as stored.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Item {
    id: String,
    /// Sorted, no duplicates.
    attrs: Vec<(String, String)>,
    selections: u64,
    purchases: u64,
}

/// A catalog as stored, with its derived value postings.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Catalog {
    selection_weight: u32,
    purchase_weight: u32,
    /// The number the next item gets; numbers start at 1.
    next_item_no: u64,
    /// By insertion number.
    items: BTreeMap<u64, Item>,
    /// item id -> insertion number (derived).
    #[serde(skip)]
    ids: BTreeMap<String, u64>,
    /// (attribute, value) -> posting id and how many items have it
    /// (derived).
    #[serde(skip)]
    postings: BTreeMap<(String, String), Posting>,
    /// The attributes some rule names: the only ones indexed (derived).
    #[serde(skip)]
    linked: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug)]
struct Posting {
    id: u64,
    items: u64,
}

impl Catalog {
    fn rank(&self, item: &Item, by: RankBy) -> u64 {
        match by {
            RankBy::Selections => item.selections,
            RankBy::Purchases => item.purchases,
            RankBy::Score => item
                .selections
                .saturating_mul(self.selection_weight.into())
                .saturating_add(item.purchases.saturating_mul(self.purchase_weight.into())),
        }
    }

    fn view(&self, catalog: &str, item: &Item) -> ItemView {
        ItemView {
            catalog: catalog.to_string(),
            item_id: item.id.clone(),
            attrs: item.attrs.clone(),
            selections: item.selections,
            purchases: item.purchases,
            score: self.rank(item, RankBy::Score),
        }
    }
}

/// The ranking index: per order, `(posting, u64::MAX - rank, item_no)`.
#[derive(Clone, Debug, Default)]
struct Ranks {
    by: [BTreeSet<(u64, u64, u64)>; 3],
    last_posting: u64,
}

/// What a counted request id led to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct CountRecord {
    /// Digest of (catalog, item, kind), to refuse a reused id.
    event: [u8; 16],
    forget_at_ms: u64,
}

/// Every catalog, rule and counted request id.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Linked {
    catalogs: BTreeMap<String, Catalog>,
    rules: BTreeMap<String, LinkRule>,
    /// Items over every catalog.
    item_count: u64,
    /// Digest of the request id -> what it counted.
    requests: BTreeMap<[u8; 16], CountRecord>,
    /// (forget_at_ms, request digest), oldest first.
    forget: BTreeSet<(u64, [u8; 16])>,
    #[serde(skip)]
    ranks: Ranks,
}

fn digest16(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let full: [u8; 32] = h.finalize().into();
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn event_digest(c: &CountEvent) -> [u8; 16] {
    let kind: &[u8] = match c.kind {
        CountKind::Selection => b"s",
        CountKind::Purchase => b"p",
    };
    digest16(&[c.catalog.as_bytes(), c.item_id.as_bytes(), kind])
}

fn sorted_attrs(attrs: &[(String, String)]) -> Vec<(String, String)> {
    let mut a = attrs.to_vec();
    a.sort();
    a
}

impl Linked {
    /// Rebuilds the derived index after a snapshot was decoded.
    pub(crate) fn restored(&mut self) {
        self.ranks = Ranks::default();
        let names: Vec<String> = self.catalogs.keys().cloned().collect();
        for name in names {
            let Some(cat) = self.catalogs.get_mut(&name) else {
                continue;
            };
            cat.ids = cat
                .items
                .iter()
                .map(|(no, it)| (it.id.clone(), *no))
                .collect();
            cat.postings.clear();
            cat.linked = linked_attrs(&self.rules, &name);
            let nos: Vec<u64> = cat.items.keys().copied().collect();
            for no in nos {
                index_item(&mut self.ranks, cat, no);
            }
        }
    }

    /// A copy of what a snapshot holds, without the derived index.
    pub(crate) fn snapshot_view(&self) -> Linked {
        Linked {
            catalogs: self
                .catalogs
                .iter()
                .map(|(name, c)| {
                    (
                        name.clone(),
                        Catalog {
                            selection_weight: c.selection_weight,
                            purchase_weight: c.purchase_weight,
                            next_item_no: c.next_item_no,
                            items: c.items.clone(),
                            ids: BTreeMap::new(),
                            postings: BTreeMap::new(),
                            linked: BTreeSet::new(),
                        },
                    )
                })
                .collect(),
            rules: self.rules.clone(),
            item_count: self.item_count,
            requests: self.requests.clone(),
            forget: self.forget.clone(),
            ranks: Ranks::default(),
        }
    }

    /// Forgets the request ids whose retention ran out by `now`.
    pub(crate) fn forget_due(&mut self, now: u64) {
        while let Some(&(at, key)) = self.forget.first() {
            if at > now {
                break;
            }
            self.forget.pop_first();
            self.requests.remove(&key);
        }
    }

    /// When the next request id is forgotten.
    pub(crate) fn next_forget(&self) -> Option<u64> {
        self.forget.first().map(|(at, _)| *at)
    }

    /// Items over every catalog.
    pub(crate) fn item_count(&self) -> u64 {
        self.item_count
    }

    /// Request ids remembered.
    pub(crate) fn request_count(&self) -> u64 {
        self.requests.len() as u64
    }

    /// The quotas, checked before proposing and again in apply.
    pub(crate) fn admit(&self, q: &Quotas, cmd: &LinkCommand) -> Result<(), StateError> {
        match cmd {
            LinkCommand::CreateCatalog(_) if self.catalogs.len() as u64 >= q.link_catalogs => {
                Err(over(
                    "link_catalogs",
                    q.link_catalogs,
                    format!("{} catalogs exist", self.catalogs.len()),
                ))
            }
            LinkCommand::PutItem(c) if self.item_count >= q.link_items => {
                let exists = self
                    .catalogs
                    .get(&c.catalog)
                    .is_some_and(|cat| cat.ids.contains_key(&c.item_id));
                if exists {
                    Ok(())
                } else {
                    Err(over(
                        "link_items",
                        q.link_items,
                        format!("{} items exist", self.item_count),
                    ))
                }
            }
            LinkCommand::AddRule(_) if self.rules.len() as u64 >= q.link_rules => Err(over(
                "link_rules",
                q.link_rules,
                format!("{} rules exist", self.rules.len()),
            )),
            LinkCommand::Count(c) if self.requests.len() as u64 >= q.link_request_ids => {
                let key = digest16(&[c.request_id.as_bytes()]);
                if self.requests.contains_key(&key) {
                    Ok(())
                } else {
                    Err(over(
                        "link_request_ids",
                        q.link_request_ids,
                        format!(
                            "{} request ids are remembered; retry after some are forgotten",
                            self.requests.len()
                        ),
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// Applies an admitted command.
    pub(crate) fn apply(
        &mut self,
        at: Entry,
        q: &Quotas,
        cmd: &LinkCommand,
    ) -> Result<LinkOutcome, StateError> {
        match cmd {
            LinkCommand::CreateCatalog(c) => {
                if self.catalogs.contains_key(&c.name) {
                    return Err(StateError::exists(format!("catalog {:?}", c.name)));
                }
                let cat = Catalog {
                    selection_weight: c.selection_weight,
                    purchase_weight: c.purchase_weight,
                    next_item_no: 1,
                    items: BTreeMap::new(),
                    ids: BTreeMap::new(),
                    postings: BTreeMap::new(),
                    linked: BTreeSet::new(),
                };
                self.catalogs.insert(c.name.clone(), cat);
                Ok(LinkOutcome::Catalog(CatalogView {
                    name: c.name.clone(),
                    selection_weight: c.selection_weight,
                    purchase_weight: c.purchase_weight,
                    items: 0,
                }))
            }
            LinkCommand::DeleteCatalog { name } => {
                if !self.catalogs.contains_key(name) {
                    return Err(StateError::not_found(format!("catalog {name:?}")));
                }
                if let Some(rule) = self
                    .rules
                    .values()
                    .find(|r| &r.left.catalog == name || &r.right.catalog == name)
                {
                    return Err(StateError::precondition(
                        Reason::InUse,
                        format!(
                            "catalog {name:?} is linked by rule {:?}; remove the rule first",
                            rule.name
                        ),
                    ));
                }
                if let Some(mut cat) = self.catalogs.remove(name) {
                    let nos: Vec<u64> = cat.items.keys().copied().collect();
                    for no in nos {
                        unindex_item(&mut self.ranks, &mut cat, no);
                    }
                    self.item_count -= cat.items.len() as u64;
                }
                Ok(LinkOutcome::Done)
            }
            LinkCommand::PutItem(c) => {
                let cat = catalog_mut(&mut self.catalogs, &c.catalog)?;
                let attrs = sorted_attrs(&c.attrs);
                let added = match cat.ids.get(&c.item_id).copied() {
                    Some(no) => {
                        unindex_item(&mut self.ranks, cat, no);
                        if let Some(item) = cat.items.get_mut(&no) {
                            item.attrs = attrs;
                        }
                        index_item(&mut self.ranks, cat, no);
                        false
                    }
                    None => {
                        let no = cat.next_item_no;
                        cat.next_item_no += 1;
                        cat.items.insert(
                            no,
                            Item {
                                id: c.item_id.clone(),
                                attrs,
                                selections: 0,
                                purchases: 0,
                            },
                        );
                        cat.ids.insert(c.item_id.clone(), no);
                        index_item(&mut self.ranks, cat, no);
                        true
                    }
                };
                let view = {
                    let cat = &self.catalogs[&c.catalog];
                    let no = cat.ids[&c.item_id];
                    cat.view(&c.catalog, &cat.items[&no])
                };
                if added {
                    self.item_count += 1;
                }
                Ok(LinkOutcome::Item(view))
            }
            LinkCommand::RemoveItem { catalog, item_id } => {
                let cat = catalog_mut(&mut self.catalogs, catalog)?;
                let Some(no) = cat.ids.get(item_id).copied() else {
                    return Err(StateError::not_found(format!(
                        "item {item_id:?} in catalog {catalog:?}"
                    )));
                };
                unindex_item(&mut self.ranks, cat, no);
                cat.items.remove(&no);
                cat.ids.remove(item_id);
                self.item_count -= 1;
                Ok(LinkOutcome::Done)
            }
            LinkCommand::AddRule(r) => {
                if self.rules.contains_key(&r.name) {
                    return Err(StateError::exists(format!("link rule {:?}", r.name)));
                }
                for side in [&r.left, &r.right] {
                    if !self.catalogs.contains_key(&side.catalog) {
                        return Err(StateError::not_found(format!("catalog {:?}", side.catalog)));
                    }
                }
                if let Some(same) = self.rules.values().find(|o| {
                    (o.left == r.left && o.right == r.right)
                        || (o.left == r.right && o.right == r.left)
                }) {
                    return Err(StateError::exists(format!(
                        "a rule linking the same attributes ({:?})",
                        same.name
                    )));
                }
                self.rules.insert(r.name.clone(), r.clone());
                self.relink(&r.left.catalog);
                self.relink(&r.right.catalog);
                Ok(LinkOutcome::Rule(r.clone()))
            }
            LinkCommand::RemoveRule { name } => match self.rules.remove(name) {
                Some(r) => {
                    self.relink(&r.left.catalog);
                    self.relink(&r.right.catalog);
                    Ok(LinkOutcome::Done)
                }
                None => Err(StateError::not_found(format!("link rule {name:?}"))),
            },
            LinkCommand::Count(c) => self.count(at, q, c),
        }
    }

    /// Re-indexes `catalog` when the set of its attributes that rules name
    /// changed.
    fn relink(&mut self, catalog: &str) {
        let linked = linked_attrs(&self.rules, catalog);
        let Some(cat) = self.catalogs.get_mut(catalog) else {
            return;
        };
        if cat.linked == linked {
            return;
        }
        let nos: Vec<u64> = cat.items.keys().copied().collect();
        for &no in &nos {
            unindex_item(&mut self.ranks, cat, no);
        }
        cat.linked = linked;
        for no in nos {
            index_item(&mut self.ranks, cat, no);
        }
    }

    fn count(&mut self, at: Entry, q: &Quotas, c: &CountEvent) -> Result<LinkOutcome, StateError> {
        let key = digest16(&[c.request_id.as_bytes()]);
        let event = event_digest(c);
        if let Some(record) = self.requests.get(&key) {
            if record.event != event {
                return Err(StateError::precondition(
                    Reason::FailedPrecondition,
                    format!(
                        "request_id {:?} already counted another event; use a new request id",
                        c.request_id
                    ),
                ));
            }
            let item = match self.catalogs.get(&c.catalog) {
                Some(cat) => match cat.ids.get(&c.item_id) {
                    Some(no) => cat.view(&c.catalog, &cat.items[no]),
                    None => removed_view(c),
                },
                None => removed_view(c),
            };
            return Ok(LinkOutcome::Counted {
                item,
                replayed: true,
            });
        }
        let cat = self
            .catalogs
            .get_mut(&c.catalog)
            .ok_or_else(|| StateError::not_found(format!("catalog {:?}", c.catalog)))?;
        let no = cat.ids.get(&c.item_id).copied().ok_or_else(|| {
            StateError::not_found(format!("item {:?} in catalog {:?}", c.item_id, c.catalog))
        })?;
        // Move the item's keys from the old ranks to the new ones, for the
        // orders that change.
        let changed = [
            match c.kind {
                CountKind::Selection => RankBy::Selections,
                CountKind::Purchase => RankBy::Purchases,
            },
            RankBy::Score,
        ];
        let old: Vec<u64> = changed
            .iter()
            .map(|by| cat.rank(&cat.items[&no], *by))
            .collect();
        {
            let item = cat.items.get_mut(&no).expect("ids and items agree");
            match c.kind {
                CountKind::Selection => item.selections = item.selections.saturating_add(1),
                CountKind::Purchase => item.purchases = item.purchases.saturating_add(1),
            }
        }
        let item = &cat.items[&no];
        for (by, old_rank) in changed.iter().zip(old) {
            let new_rank = cat.rank(item, *by);
            if new_rank == old_rank {
                continue;
            }
            for pair in item.attrs.iter().filter(|(k, _)| cat.linked.contains(k)) {
                let p = cat.postings[pair].id;
                let set = &mut self.ranks.by[*by as usize];
                let removed = set.remove(&(p, u64::MAX - old_rank, no));
                debug_assert!(removed, "the index holds every item's rank");
                set.insert((p, u64::MAX - new_rank, no));
            }
        }
        let view = cat.view(&c.catalog, item);
        let forget_at_ms = at.time_ms.saturating_add(q.link_request_retention_ms);
        self.requests.insert(
            key,
            CountRecord {
                event,
                forget_at_ms,
            },
        );
        self.forget.insert((forget_at_ms, key));
        Ok(LinkOutcome::Counted {
            item: view,
            replayed: false,
        })
    }

    /// Every catalog, by name.
    pub(crate) fn catalogs(&self) -> Vec<CatalogView> {
        self.catalogs
            .iter()
            .map(|(name, c)| CatalogView {
                name: name.clone(),
                selection_weight: c.selection_weight,
                purchase_weight: c.purchase_weight,
                items: c.items.len() as u64,
            })
            .collect()
    }

    /// Every rule, by name.
    pub(crate) fn rules(&self) -> Vec<&LinkRule> {
        self.rules.values().collect()
    }

    /// An item.
    pub(crate) fn item(&self, catalog: &str, item_id: &str) -> Option<ItemView> {
        let cat = self.catalogs.get(catalog)?;
        let no = cat.ids.get(item_id)?;
        Some(cat.view(catalog, &cat.items[no]))
    }

    /// The items of a catalog with an insertion number above `after`, at
    /// most `limit`, with their numbers.
    pub(crate) fn items(
        &self,
        catalog: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ItemView)>, StateError> {
        let cat = self
            .catalogs
            .get(catalog)
            .ok_or_else(|| StateError::not_found(format!("catalog {catalog:?}")))?;
        Ok(cat
            .items
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(no, it)| (*no, cat.view(catalog, it)))
            .collect())
    }

    /// One page of the items of `q.to` linked to `q.source`, best first.
    pub(crate) fn lookup(&self, q: &LinkQuery) -> Result<LinkPage, StateError> {
        check_limit(q.limit)?;
        let from = self
            .catalogs
            .get(&q.from)
            .ok_or_else(|| StateError::not_found(format!("catalog {:?}", q.from)))?;
        let to = self
            .catalogs
            .get(&q.to)
            .ok_or_else(|| StateError::not_found(format!("catalog {:?}", q.to)))?;
        // (from attr, to attr) of every rule between the two catalogs, each
        // orientation that starts in `from`.
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for r in self.rules.values() {
            if r.left.catalog == q.from && r.right.catalog == q.to {
                pairs.push((&r.left.attr, &r.right.attr));
            }
            if r.right.catalog == q.from && r.left.catalog == q.to {
                pairs.push((&r.right.attr, &r.left.attr));
            }
        }
        let mut wanted: BTreeSet<(&str, &str)> = BTreeSet::new();
        match &q.source {
            LinkSource::Item(id) => {
                let no = from.ids.get(id).ok_or_else(|| {
                    StateError::not_found(format!("item {id:?} in catalog {:?}", q.from))
                })?;
                let item = &from.items[no];
                for (fa, ta) in &pairs {
                    for (k, v) in &item.attrs {
                        if k == fa {
                            wanted.insert((ta, v));
                        }
                    }
                }
            }
            LinkSource::Value { attr, value } => {
                for (fa, ta) in &pairs {
                    if fa == attr {
                        wanted.insert((ta, value));
                    }
                }
                if wanted.is_empty() {
                    return Err(StateError::not_found(format!(
                        "link rule from {}.{attr} to catalog {:?}",
                        q.from, q.to
                    )));
                }
            }
        }
        if pairs.is_empty() {
            return Err(StateError::not_found(format!(
                "link rule between catalogs {:?} and {:?}",
                q.from, q.to
            )));
        }
        let postings: Vec<u64> = wanted
            .iter()
            .filter_map(|(a, v)| to.postings.get(&(a.to_string(), v.to_string())))
            .map(|p| p.id)
            .collect();
        let set = &self.ranks.by[q.by as usize];
        let mut heads: Vec<_> = postings
            .iter()
            .map(|&p| {
                let lower = match q.after {
                    None => Bound::Included((p, 0, 0)),
                    Some(c) => Bound::Excluded((p, u64::MAX - c.rank, c.item_no)),
                };
                set.range((lower, Bound::Included((p, u64::MAX, u64::MAX))))
                    .peekable()
            })
            .collect();
        let mut items = Vec::new();
        let mut last = None;
        loop {
            // The best head over every posting: the smallest (inverse rank,
            // item number). An item in several postings is at the same key
            // in each, so all copies are taken at once.
            let best = heads
                .iter_mut()
                .filter_map(|h| h.peek().map(|k| (k.1, k.2)))
                .min();
            let Some((inv, no)) = best else {
                break;
            };
            if items.len() == q.limit {
                return Ok(LinkPage { items, next: last });
            }
            for h in heads.iter_mut() {
                while h.peek().is_some_and(|k| (k.1, k.2) == (inv, no)) {
                    h.next();
                }
            }
            let rank = u64::MAX - inv;
            items.push((rank, to.view(&q.to, &to.items[&no])));
            last = Some(Cursor { rank, item_no: no });
        }
        Ok(LinkPage { items, next: None })
    }

    /// Checks that the derived index is what a rebuild would make.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut rebuilt = self.snapshot_view();
        rebuilt.restored();
        assert_eq!(self.materialize(), rebuilt.materialize(), "ranking index");
        let items: u64 = self.catalogs.values().map(|c| c.items.len() as u64).sum();
        assert_eq!(items, self.item_count);
        assert_eq!(self.requests.len(), self.forget.len());
        for (at, key) in &self.forget {
            assert_eq!(self.requests[key].forget_at_ms, *at);
        }
        for c in self.catalogs.values() {
            assert_eq!(c.ids.len(), c.items.len());
            let total: u64 = c.postings.values().map(|p| p.items).sum();
            let pairs: u64 = c
                .items
                .values()
                .map(|i| i.attrs.iter().filter(|(k, _)| c.linked.contains(k)).count() as u64)
                .sum();
            assert_eq!(total, pairs);
        }
    }

    /// The index with posting ids replaced by what they stand for.
    #[cfg(test)]
    fn materialize(&self) -> BTreeSet<(usize, String, String, String, u64, u64)> {
        let mut names = BTreeMap::new();
        for (cname, c) in &self.catalogs {
            for ((a, v), p) in &c.postings {
                names.insert(p.id, (cname.clone(), a.clone(), v.clone()));
            }
        }
        let mut out = BTreeSet::new();
        for by in ORDERS {
            for (p, inv, no) in &self.ranks.by[by as usize] {
                let (c, a, v) = names[p].clone();
                out.insert((by as usize, c, a, v, *inv, *no));
            }
        }
        out
    }
}

/// The attributes of `catalog` that some rule names.
fn linked_attrs(rules: &BTreeMap<String, LinkRule>, catalog: &str) -> BTreeSet<String> {
    rules
        .values()
        .flat_map(|r| [&r.left, &r.right])
        .filter(|side| side.catalog == catalog)
        .map(|side| side.attr.clone())
        .collect()
}

fn catalog_mut<'a>(
    catalogs: &'a mut BTreeMap<String, Catalog>,
    name: &str,
) -> Result<&'a mut Catalog, StateError> {
    catalogs
        .get_mut(name)
        .ok_or_else(|| StateError::not_found(format!("catalog {name:?}")))
}

fn removed_view(c: &CountEvent) -> ItemView {
    ItemView {
        catalog: c.catalog.clone(),
        item_id: c.item_id.clone(),
        attrs: Vec::new(),
        selections: 0,
        purchases: 0,
        score: 0,
    }
}

/// Adds item `no`'s keys to the index, making postings as needed.
fn index_item(ranks: &mut Ranks, cat: &mut Catalog, no: u64) {
    let Some(item) = cat.items.get(&no) else {
        return;
    };
    let ranks_of: Vec<u64> = ORDERS.iter().map(|by| cat.rank(item, *by)).collect();
    for pair in item.attrs.iter().filter(|(k, _)| cat.linked.contains(k)) {
        let posting = cat.postings.entry(pair.clone()).or_insert_with(|| {
            ranks.last_posting += 1;
            Posting {
                id: ranks.last_posting,
                items: 0,
            }
        });
        posting.items += 1;
        for by in ORDERS {
            ranks.by[by as usize].insert((posting.id, u64::MAX - ranks_of[by as usize], no));
        }
    }
}

/// Removes item `no`'s keys from the index, dropping empty postings.
fn unindex_item(ranks: &mut Ranks, cat: &mut Catalog, no: u64) {
    let Some(item) = cat.items.get(&no) else {
        return;
    };
    let ranks_of: Vec<u64> = ORDERS.iter().map(|by| cat.rank(item, *by)).collect();
    for pair in item.attrs.iter().filter(|(k, _)| cat.linked.contains(k)) {
        let Some(posting) = cat.postings.get_mut(pair) else {
            debug_assert!(false, "an indexed item's pair has a posting");
            continue;
        };
        for by in ORDERS {
            ranks.by[by as usize].remove(&(posting.id, u64::MAX - ranks_of[by as usize], no));
        }
        posting.items -= 1;
        if posting.items == 0 {
            cat.postings.remove(pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::Harness;
    use super::super::{Command, Response, State};
    use super::*;

    fn link(c: LinkCommand) -> Command {
        Command::Link(c)
    }

    fn catalog(name: &str, ws: u32, wp: u32) -> Command {
        link(LinkCommand::CreateCatalog(CreateCatalog {
            name: name.into(),
            selection_weight: ws,
            purchase_weight: wp,
        }))
    }

    fn put(catalog: &str, id: &str, attrs: &[(&str, &str)]) -> Command {
        link(LinkCommand::PutItem(PutItem {
            catalog: catalog.into(),
            item_id: id.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }))
    }

    fn rule(name: &str, l: (&str, &str), r: (&str, &str)) -> Command {
        link(LinkCommand::AddRule(LinkRule {
            name: name.into(),
            left: LinkSide {
                catalog: l.0.into(),
                attr: l.1.into(),
            },
            right: LinkSide {
                catalog: r.0.into(),
                attr: r.1.into(),
            },
        }))
    }

    fn count(catalog: &str, id: &str, kind: CountKind, request_id: &str) -> Command {
        link(LinkCommand::Count(CountEvent {
            catalog: catalog.into(),
            item_id: id.into(),
            kind,
            request_id: request_id.into(),
        }))
    }

    fn counted(r: Response) -> (ItemView, bool) {
        match r {
            Response::Link(LinkOutcome::Counted { item, replayed }) => (item, replayed),
            other => panic!("{other:?}"),
        }
    }

    fn query(from: &str, source: LinkSource, to: &str, by: RankBy, limit: usize) -> LinkQuery {
        LinkQuery {
            from: from.into(),
            source,
            to: to.into(),
            by,
            limit,
            after: None,
        }
    }

    fn ids(page: &LinkPage) -> Vec<(u64, String)> {
        page.items
            .iter()
            .map(|(rank, it)| (*rank, it.item_id.clone()))
            .collect()
    }

    fn value(attr: &str, v: &str) -> LinkSource {
        LinkSource::Value {
            attr: attr.into(),
            value: v.into(),
        }
    }

    /// An album and a shop linked by camera model.
    fn album_and_shop() -> Harness {
        let mut h = Harness::new();
        h.ok(catalog("album", 1, 0));
        h.ok(catalog("shop", 1, 10));
        h.ok(put(
            "album",
            "p1",
            &[("camera_model", "X100"), ("place", "oslo")],
        ));
        h.ok(put(
            "album",
            "p2",
            &[("camera_model", "X100"), ("camera_model", "GR3")],
        ));
        h.ok(put("shop", "lens-a", &[("model", "X100")]));
        h.ok(put(
            "shop",
            "lens-b",
            &[("model", "X100"), ("model", "GR3")],
        ));
        h.ok(put("shop", "strap", &[("model", "GR3")]));
        h.ok(put("shop", "bag", &[("model", "Q2")]));
        h.ok(rule("camera", ("album", "camera_model"), ("shop", "model")));
        h
    }

    #[test]
    fn a_linked_lookup_ranks_by_counts_both_ways() {
        let mut h = album_and_shop();
        for (i, id) in ["lens-a", "lens-a", "strap"].iter().enumerate() {
            h.ok(count("shop", id, CountKind::Selection, &format!("s{i}")));
        }
        h.ok(count("shop", "lens-b", CountKind::Purchase, "p0"));
        let s = &h.state;
        // By value: X100 -> lens-a (2 selections) before lens-b (0).
        let page = s
            .link_lookup(&query(
                "album",
                value("camera_model", "X100"),
                "shop",
                RankBy::Selections,
                10,
            ))
            .unwrap();
        assert_eq!(ids(&page), [(2, "lens-a".into()), (0, "lens-b".into())]);
        assert_eq!(page.next, None);
        // By item with two values: the union, each item once.
        let page = s
            .link_lookup(&query(
                "album",
                LinkSource::Item("p2".into()),
                "shop",
                RankBy::Selections,
                10,
            ))
            .unwrap();
        assert_eq!(
            ids(&page),
            [
                (2, "lens-a".into()),
                (1, "strap".into()),
                (0, "lens-b".into())
            ]
        );
        // Score: lens-b's purchase weighs 10.
        let page = s
            .link_lookup(&query(
                "album",
                LinkSource::Item("p2".into()),
                "shop",
                RankBy::Score,
                10,
            ))
            .unwrap();
        assert_eq!(
            ids(&page),
            [
                (10, "lens-b".into()),
                (2, "lens-a".into()),
                (1, "strap".into())
            ]
        );
        // Back: from a product to the photos of its models.
        h.ok(count("album", "p2", CountKind::Selection, "a0"));
        let page = h
            .state
            .link_lookup(&query(
                "shop",
                LinkSource::Item("lens-a".into()),
                "album",
                RankBy::Selections,
                10,
            ))
            .unwrap();
        assert_eq!(ids(&page), [(1, "p2".into()), (0, "p1".into())]);
        // Nothing linked: an empty page; no rule: not found.
        let page = h
            .state
            .link_lookup(&query(
                "album",
                value("camera_model", "nope"),
                "shop",
                RankBy::Score,
                10,
            ))
            .unwrap();
        assert!(page.items.is_empty());
        assert!(matches!(
            h.state.link_lookup(&query(
                "album",
                value("place", "oslo"),
                "shop",
                RankBy::Score,
                10
            )),
            Err(StateError::NotFound { .. })
        ));
    }

    #[test]
    fn a_retried_count_counts_once_until_its_id_is_forgotten() {
        let mut h = album_and_shop();
        h.ok(Command::SetQuotas(Quotas {
            link_request_retention_ms: 60_000,
            ..Quotas::default()
        }));
        let (item, replayed) = counted(h.ok(count("shop", "bag", CountKind::Purchase, "r1")));
        assert_eq!((item.purchases, item.score, replayed), (1, 10, false));
        let (item, replayed) = counted(h.ok(count("shop", "bag", CountKind::Purchase, "r1")));
        assert_eq!((item.purchases, replayed), (1, true));
        // The same id for another event is refused, and changes nothing.
        let e = h.err(count("shop", "bag", CountKind::Selection, "r1"));
        assert!(
            e.to_string().contains("already counted another event"),
            "{e}"
        );
        assert_eq!(h.state.link_item("shop", "bag").unwrap().selections, 0);
        assert_eq!(h.state.next_due(), Some(h.time_ms + 60_000));
        h.advance(59_999);
        counted(h.ok(count("shop", "bag", CountKind::Purchase, "r1")));
        assert_eq!(h.state.link_item("shop", "bag").unwrap().purchases, 1);
        h.advance(1);
        h.ok(Command::Tick);
        assert_eq!(h.state.link_counts().1, 0);
        let (item, replayed) = counted(h.ok(count("shop", "bag", CountKind::Purchase, "r1")));
        assert_eq!((item.purchases, replayed), (2, false));
    }

    #[test]
    fn updates_and_removals_move_the_index() {
        let mut h = album_and_shop();
        h.ok(count("shop", "lens-b", CountKind::Selection, "x"));
        // lens-b leaves X100 and keeps its count.
        let v = match h.ok(put("shop", "lens-b", &[("model", "Q2")])) {
            Response::Link(LinkOutcome::Item(v)) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(v.selections, 1);
        let x100 = |s: &State| {
            ids(&s
                .link_lookup(&query(
                    "album",
                    value("camera_model", "X100"),
                    "shop",
                    RankBy::Selections,
                    10,
                ))
                .unwrap())
        };
        assert_eq!(x100(&h.state), [(0, "lens-a".into())]);
        h.ok(link(LinkCommand::RemoveItem {
            catalog: "shop".into(),
            item_id: "lens-a".into(),
        }));
        assert!(x100(&h.state).is_empty());
        assert!(matches!(
            h.err(link(LinkCommand::RemoveItem {
                catalog: "shop".into(),
                item_id: "lens-a".into(),
            })),
            StateError::NotFound { .. }
        ));
        // A catalog a rule names cannot go; after the rule it can.
        let e = h.err(link(LinkCommand::DeleteCatalog {
            name: "shop".into(),
        }));
        assert_eq!(e.reason(), Reason::InUse);
        h.ok(link(LinkCommand::RemoveRule {
            name: "camera".into(),
        }));
        h.ok(link(LinkCommand::DeleteCatalog {
            name: "shop".into(),
        }));
        assert_eq!(h.state.link_counts().0, 2);
        assert_eq!(h.state.link_catalogs().len(), 1);
    }

    #[test]
    fn pages_walk_the_whole_ranking_once() {
        let mut h = Harness::new();
        h.ok(catalog("a", 1, 1));
        h.ok(catalog("b", 1, 1));
        h.ok(rule("r", ("a", "k"), ("b", "k")));
        h.ok(put("a", "src", &[("k", "1"), ("k", "2")]));
        for i in 0..40 {
            let vals: &[(&str, &str)] = match i % 3 {
                0 => &[("k", "1")],
                1 => &[("k", "2")],
                _ => &[("k", "1"), ("k", "2")],
            };
            h.ok(put("b", &format!("i{i:02}"), vals));
            for j in 0..(i * 7 % 5) {
                h.ok(count(
                    "b",
                    &format!("i{i:02}"),
                    CountKind::Selection,
                    &format!("{i}-{j}"),
                ));
            }
        }
        let mut q = query(
            "a",
            LinkSource::Item("src".into()),
            "b",
            RankBy::Selections,
            7,
        );
        let mut seen = Vec::new();
        loop {
            let page = h.state.link_lookup(&q).unwrap();
            assert!(page.items.len() <= 7);
            seen.extend(ids(&page));
            match page.next {
                Some(c) => q.after = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 40);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(seen, sorted, "rank desc, then the item added first");
        // A page token round-trips; a bad one names the field.
        let c = Cursor {
            rank: 3,
            item_no: 9,
        };
        assert_eq!(Cursor::parse(&c.token()).unwrap(), Some(c));
        assert!(Cursor::parse("x").is_err());
        assert!(check_limit(0).is_err() && check_limit(1001).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut h = album_and_shop();
        let field = |e: StateError| match e {
            StateError::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(h.err(catalog("a b", 1, 1))), "name");
        assert_eq!(field(h.err(catalog("c", 0, 0))), "purchase_weight");
        assert_eq!(field(h.err(catalog("c", 1_000_001, 0))), "selection_weight");
        assert_eq!(field(h.err(put("shop", "", &[]))), "item_id");
        assert_eq!(
            field(h.err(put("shop", "i", &[("k", "")]))),
            "attrs[0].value"
        );
        assert_eq!(
            field(h.err(put("shop", "i", &[("k", "v"), ("k", "v")]))),
            "attrs[1]"
        );
        let many: Vec<(String, String)> = (0..33).map(|i| ("k".into(), i.to_string())).collect();
        let cmd = link(LinkCommand::PutItem(PutItem {
            catalog: "shop".into(),
            item_id: "i".into(),
            attrs: many,
        }));
        assert_eq!(field(h.err(cmd)), "attrs");
        assert_eq!(
            field(h.err(rule("r", ("shop", "m"), ("shop", "m")))),
            "right"
        );
        assert_eq!(
            field(h.err(count("shop", "bag", CountKind::Purchase, ""))),
            "request_id"
        );
        assert!(matches!(
            h.err(rule("again", ("shop", "model"), ("album", "camera_model"))),
            StateError::AlreadyExists { .. }
        ));
        assert!(matches!(
            h.err(count("shop", "nope", CountKind::Purchase, "z")),
            StateError::NotFound { .. }
        ));
        assert!(matches!(
            h.err(catalog("shop", 1, 1)),
            StateError::AlreadyExists { .. }
        ));
    }

    #[test]
    fn quotas_bound_catalogs_items_rules_and_request_ids() {
        let mut h = album_and_shop();
        h.ok(Command::SetQuotas(Quotas {
            link_catalogs: 2,
            link_items: 6,
            link_rules: 1,
            link_request_ids: 2,
            ..Quotas::default()
        }));
        let quota = |e: StateError, name: &str| {
            assert_eq!(e.reason(), Reason::QuotaExceeded, "{e}");
            assert!(
                e.to_string().starts_with(&format!("quota {name} = ")),
                "{e}"
            );
        };
        quota(h.err(catalog("third", 1, 1)), "link_catalogs");
        quota(h.err(put("shop", "new", &[])), "link_items");
        // Replacing an item adds none.
        h.ok(put("shop", "bag", &[("model", "Q3")]));
        quota(
            h.err(rule("r2", ("album", "place"), ("shop", "model"))),
            "link_rules",
        );
        h.ok(count("shop", "bag", CountKind::Selection, "1"));
        h.ok(count("shop", "bag", CountKind::Selection, "2"));
        let cmd = count("shop", "bag", CountKind::Selection, "3");
        quota(h.state.admit(&cmd).unwrap_err(), "link_request_ids");
        quota(h.err(cmd), "link_request_ids");
        // A replay is still answered.
        assert!(counted(h.ok(count("shop", "bag", CountKind::Selection, "2"))).1);
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_rankings() {
        let mut h = album_and_shop();
        for i in 0..5 {
            h.ok(count(
                "shop",
                "lens-b",
                CountKind::Selection,
                &format!("b{i}"),
            ));
        }
        h.ok(count("shop", "strap", CountKind::Purchase, "s"));
        let restored = State::from_snapshot(&h.state.to_snapshot().unwrap()).unwrap();
        for by in ORDERS {
            let q = query("album", LinkSource::Item("p2".into()), "shop", by, 10);
            assert_eq!(h.state.link_lookup(&q), restored.link_lookup(&q));
        }
        restored.link.check_invariants();
        // A snapshot view is the same.
        let view = h.state.snapshot_view();
        assert_eq!(view.to_snapshot().unwrap(), h.state.to_snapshot().unwrap());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8, Vec<(u8, u8)>),
        Remove(u8, u8),
        Count(u8, u8, bool, u8),
        Tick(u16),
        /// Adds rule r2 (c0.a1 <-> c1.a1) if absent, removes it if present.
        ToggleRule,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..2u8,
                0..8u8,
                prop::collection::vec((0..2u8, 0..4u8), 0..4)
            )
                .prop_map(|(c, i, a)| Op::Put(c, i, a)),
            (0..2u8, 0..8u8).prop_map(|(c, i)| Op::Remove(c, i)),
            (0..2u8, 0..8u8, any::<bool>(), 0..30u8).prop_map(|(c, i, p, r)| Op::Count(c, i, p, r)),
            (0..40u16).prop_map(Op::Tick),
            Just(Op::ToggleRule),
            (0..2u8, 0..8u8, any::<bool>(), 0..30u8).prop_map(|(c, i, p, r)| Op::Count(c, i, p, r)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over random histories: every lookup equals a brute-force sort of
        /// the items by their counts, every count equals the number of
        /// distinct request ids that counted it (within the retention), and
        /// the index equals a rebuild (the harness checks after each step).
        #[test]
        fn rankings_follow_the_counts(ops in prop::collection::vec(op(), 1..120)) {
            let mut h = Harness::new();
            h.ok(Command::SetQuotas(Quotas {
                link_request_retention_ms: 10_000,
                ..Quotas::default()
            }));
            h.ok(catalog("c0", 1, 3));
            h.ok(catalog("c1", 2, 1));
            h.ok(rule("r0", ("c0", "a0"), ("c1", "a0")));
            h.ok(rule("r1", ("c0", "a1"), ("c1", "a0")));
            // (catalog, item) -> (selections, purchases), and request ids
            // remembered: id -> (forget_at, catalog, item, purchase).
            let mut model: BTreeMap<(u8, u8), (u64, u64)> = BTreeMap::new();
            let mut seen: BTreeMap<u8, (u64, u8, u8, bool)> = BTreeMap::new();
            for op in ops {
                seen.retain(|_, v| v.0 > h.time_ms);
                match op {
                    Op::Put(c, i, attrs) => {
                        let mut a: Vec<(String, String)> = attrs
                            .iter()
                            .map(|(k, v)| (format!("a{k}"), format!("v{v}")))
                            .collect();
                        a.sort();
                        a.dedup();
                        h.ok(link(LinkCommand::PutItem(PutItem {
                            catalog: format!("c{c}"),
                            item_id: format!("i{i}"),
                            attrs: a,
                        })));
                        model.entry((c, i)).or_insert((0, 0));
                    }
                    Op::Remove(c, i) => {
                        let r = h.apply(link(LinkCommand::RemoveItem {
                            catalog: format!("c{c}"),
                            item_id: format!("i{i}"),
                        }));
                        prop_assert_eq!(r.is_ok(), model.remove(&(c, i)).is_some());
                    }
                    Op::Count(c, i, purchase, r) => {
                        let kind = if purchase { CountKind::Purchase } else { CountKind::Selection };
                        let res = h.apply(count(&format!("c{c}"), &format!("i{i}"), kind, &format!("r{r}")));
                        match seen.get(&r) {
                            Some(&(_, pc, pi, pp)) if (pc, pi, pp) == (c, i, purchase) => {
                                prop_assert!(counted(res.unwrap()).1);
                            }
                            Some(_) => prop_assert!(res.is_err()),
                            None => match model.get_mut(&(c, i)) {
                                Some(m) => {
                                    let (item, replayed) = counted(res.unwrap());
                                    prop_assert!(!replayed);
                                    if purchase { m.1 += 1 } else { m.0 += 1 }
                                    prop_assert_eq!((item.selections, item.purchases), *m);
                                    seen.insert(r, (h.time_ms + 10_000, c, i, purchase));
                                }
                                None => prop_assert!(res.is_err()),
                            },
                        }
                    }
                    Op::Tick(ms) => {
                        h.advance(u64::from(ms) * 100);
                        h.ok(Command::Tick);
                    }
                    Op::ToggleRule => {
                        if h.state.link_rules().iter().any(|r| r.name == "r2") {
                            h.ok(link(LinkCommand::RemoveRule { name: "r2".into() }));
                        } else {
                            h.ok(rule("r2", ("c0", "a1"), ("c1", "a1")));
                        }
                    }
                }
            }
            // Every count as the model says.
            for (&(c, i), &(s, p)) in &model {
                let item = h.state.link_item(&format!("c{c}"), &format!("i{i}")).unwrap();
                prop_assert_eq!((item.selections, item.purchases), (s, p));
            }
            // Every lookup (each source item and value, each order, small
            // pages) equals a brute-force ranking of the linked items.
            for (from, to) in [("c0", "c1"), ("c1", "c0")] {
                let sources: Vec<LinkSource> = (0..8)
                    .map(|i| LinkSource::Item(format!("i{i}")))
                    .chain((0..4).map(|v| value("a0", &format!("v{v}"))))
                    .chain((0..4).map(|v| value("a1", &format!("v{v}"))))
                    .collect();
                for source in sources {
                    for by in ORDERS {
                        let mut q = query(from, source.clone(), to, by, 3);
                        let mut got = Vec::new();
                        let first = h.state.link_lookup(&q);
                        let Ok(mut page) = first else { continue };
                        loop {
                            got.extend(page.items.iter().map(|(r, it)| (*r, it.item_id.clone())));
                            match page.next {
                                Some(c) => {
                                    q.after = Some(c);
                                    page = h.state.link_lookup(&q).unwrap();
                                }
                                None => break,
                            }
                        }
                        let want = brute_force(&h.state, from, &source, to, by);
                        prop_assert_eq!(got, want, "{} -> {} {:?} {:?}", from, to, source, by);
                    }
                }
            }
        }
    }

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    /// Measures (not a check; run by hand with `--ignored --nocapture`):
    /// the resident memory of `LINK_ITEMS` (default 1 000 000) shop items
    /// with two linked attributes each (a model of 10 000 and a brand of
    /// 100), count applies per second, and top-20 lookup latency from the
    /// index.
    #[test]
    #[ignore]
    fn measure_a_million_items() {
        let n: u64 = std::env::var("LINK_ITEMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let before = resident_bytes();
        let mut state = State::default();
        let mut index = 0;
        let mut apply = |state: &mut State, cmd: Command| {
            index += 1;
            state
                .apply(
                    super::super::Entry {
                        index,
                        time_ms: 1_000_000 + index,
                    },
                    &cmd,
                )
                .expect("applies")
        };
        apply(&mut state, catalog("album", 1, 0));
        apply(&mut state, catalog("shop", 1, 10));
        apply(&mut state, rule("m", ("album", "model"), ("shop", "model")));
        apply(&mut state, put("album", "p", &[("model", "m42")]));
        let started = std::time::Instant::now();
        for i in 0..n {
            let model = format!("m{}", i % 10_000);
            let brand = format!("b{}", i % 100);
            apply(
                &mut state,
                put(
                    "shop",
                    &format!("item-{i:07}"),
                    &[("model", &model), ("brand", &brand)],
                ),
            );
        }
        let load = started.elapsed();
        let after_items = resident_bytes();
        let counts = 200_000u64;
        let started = std::time::Instant::now();
        for i in 0..counts {
            // Skewed: a few items of model m42 get most of the counts.
            let item = if i % 2 == 0 {
                (i % 50) * 10_000 + 42
            } else {
                (i * 7919) % n
            };
            let kind = if i % 5 == 0 {
                CountKind::Purchase
            } else {
                CountKind::Selection
            };
            apply(
                &mut state,
                count("shop", &format!("item-{item:07}"), kind, &format!("r{i}")),
            );
        }
        let count_secs = started.elapsed().as_secs_f64();
        let after_counts = resident_bytes();
        let mut lat = Vec::new();
        for i in 0..20_000 {
            let by = ORDERS[i % 3];
            let q = query("album", LinkSource::Item("p".into()), "shop", by, 20);
            let t = std::time::Instant::now();
            let page = state.link_lookup(&q).unwrap();
            lat.push(t.elapsed());
            assert_eq!(page.items.len(), 20.min(n as usize / 10_000).max(1));
        }
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "link: {n} items loaded in {load:?}; resident +{} MiB for items ({} bytes/item), \
             +{} MiB after {counts} counts ({} request ids); {:.0} count applies/s; \
             top-20 lookup p50 {:?} p99 {:?} (model m42 links {} items)",
            (after_items - before) >> 20,
            (after_items - before) / n,
            (after_counts - after_items) >> 20,
            state.link_counts().1,
            counts as f64 / count_secs,
            pct(0.5),
            pct(0.99),
            n / 10_000,
        );
    }

    /// The linked items ranked by sorting every item of `to`: rank desc,
    /// then insertion number.
    fn brute_force(
        s: &State,
        from: &str,
        source: &LinkSource,
        to: &str,
        by: RankBy,
    ) -> Vec<(u64, String)> {
        let l = &s.link;
        let mut pairs = Vec::new();
        for r in l.rules.values() {
            if r.left.catalog == from && r.right.catalog == to {
                pairs.push((r.left.attr.clone(), r.right.attr.clone()));
            }
            if r.right.catalog == from && r.left.catalog == to {
                pairs.push((r.right.attr.clone(), r.left.attr.clone()));
            }
        }
        let values: Vec<(String, String)> = match source {
            LinkSource::Item(id) => {
                let item = l.item(from, id).unwrap();
                pairs
                    .iter()
                    .flat_map(|(fa, ta)| {
                        item.attrs
                            .iter()
                            .filter(move |(k, _)| k == fa)
                            .map(move |(_, v)| (ta.clone(), v.clone()))
                    })
                    .collect()
            }
            LinkSource::Value { attr, value } => pairs
                .iter()
                .filter(|(fa, _)| fa == attr)
                .map(|(_, ta)| (ta.clone(), value.clone()))
                .collect(),
        };
        let cat = &l.catalogs[to];
        let mut out: Vec<(u64, u64, String)> = cat
            .items
            .iter()
            .filter(|(_, it)| it.attrs.iter().any(|p| values.contains(p)))
            .map(|(no, it)| (cat.rank(it, by), *no, it.id.clone()))
            .collect();
        out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        out.into_iter().map(|(r, _, id)| (r, id)).collect()
    }
}
