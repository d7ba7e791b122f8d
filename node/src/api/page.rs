//! Paged answers: how many items one answer of a list RPC (`SessionLog`,
//! `ListPools`, `ListLeases`) or a batch read (`BatchGetPresence`) carries.
//!
//! Every answer stays under [`REPLY_BUDGET_BYTES`], so a client generated
//! from the proto with gRPC's default 4 MiB receive limit can read it: a
//! page ends at `page_size` items or before it would pass the budget,
//! whichever comes first, and always holds at least one item (one item is
//! far below the budget: a work-log entry or a lease is a few KiB). Page
//! tokens name where the next page starts in a stable order, so a walk
//! sees every item that exists throughout it exactly once.

use super::status::refuse;
use tonic::Code;
use tonic::Status;

/// Bytes of items one answer may carry: 3 MiB, leaving room under gRPC's
/// default 4 MiB receive limit for the rest of the message.
pub const REPLY_BUDGET_BYTES: usize = 3 << 20;
/// Items per page when the request says 0, for `ListPools` and `ListLeases`.
pub const DEFAULT_PAGE: usize = 1000;
/// Entries per `SessionLog` page when the request says 0: 250 of the
/// largest entries (a handoff naming 64 capabilities of 64 bytes) stay
/// near 1 MiB.
pub const DEFAULT_LOG_PAGE: usize = 250;
/// The most items a page may hold; a larger `page_size` is capped.
pub const MAX_PAGE: usize = 1000;

/// The page size a request asked for: 0 = `default`, capped at [`MAX_PAGE`].
pub fn size(requested: u32, default: usize) -> usize {
    match requested {
        0 => default,
        n => (n as usize).min(MAX_PAGE),
    }
}

/// The bytes `item` adds to a message as a repeated field.
pub fn field_len(item: &impl prost::Message) -> usize {
    let n = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(n as u64) + n
}

/// Takes items from `items` until `max` are taken or the next one would
/// pass `budget` bytes (at least one is always taken). Returns them and
/// whether any were left.
pub fn take<T: prost::Message>(
    items: impl IntoIterator<Item = T>,
    max: usize,
    budget: usize,
) -> (Vec<T>, bool) {
    let mut out = Vec::new();
    let mut used = 0;
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.peek() {
        let len = field_len(item);
        if out.len() >= max || (!out.is_empty() && used + len > budget) {
            return (out, true);
        }
        used += len;
        out.extend(items.next());
    }
    (out, false)
}

fn bad_token() -> Status {
    refuse(
        Code::InvalidArgument,
        "page_token: not a token from this list's previous page",
    )
}

/// A token of a list ordered by a numeric id: the last id delivered.
/// `""` = the first page (0: ids start at 1).
pub fn after_id(token: &str) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse().map_err(|_| bad_token())
}

/// A token of a work log, ordered by revision with several entries per
/// revision possible: the revision of the last entry delivered and how
/// many entries of that revision were delivered.
pub fn after_revision(token: &str) -> Result<(u64, usize), Status> {
    if token.is_empty() {
        return Ok((0, 0));
    }
    let (rev, n) = token.split_once(':').ok_or_else(bad_token)?;
    Ok((
        rev.parse().map_err(|_| bad_token())?,
        n.parse().map_err(|_| bad_token())?,
    ))
}

/// The token [`after_revision`] reads.
pub fn revision_token(rev: u64, n: usize) -> String {
    format!("{rev}:{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_client::proto::Lease;

    fn lease(id: u64, account_bytes: usize) -> Lease {
        Lease {
            lease_id: id,
            account: "a".repeat(account_bytes),
            ..Default::default()
        }
    }

    #[test]
    fn a_page_ends_at_its_size_or_its_budget() {
        let (page, more) = take((1..=10).map(|i| lease(i, 10)), 4, usize::MAX);
        assert_eq!(page.len(), 4);
        assert!(more);
        let (page, more) = take((1..=3).map(|i| lease(i, 10)), 4, usize::MAX);
        assert_eq!(page.len(), 3);
        assert!(!more);
        // 1000 leases of ~1 KiB against a 10 KiB budget.
        let (page, more) = take((1..=1000).map(|i| lease(i, 1000)), 1000, 10_000);
        assert!(more);
        assert_eq!(page.len(), 9);
        // One item over the budget still goes alone.
        let (page, more) = take([lease(1, 50_000), lease(2, 1)], 10, 10_000);
        assert_eq!((page.len(), more), (1, true));
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        assert_eq!(after_id("").unwrap(), 0);
        assert_eq!(after_id("42").unwrap(), 42);
        assert_eq!(
            after_id("x").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(after_revision(&revision_token(7, 2)).unwrap(), (7, 2));
        assert!(after_revision("7").is_err());
        assert_eq!(size(0, 250), 250);
        assert_eq!(size(5000, 250), MAX_PAGE);
    }
}
