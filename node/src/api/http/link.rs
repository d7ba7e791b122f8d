//! Linked lookups for web pages (P-link):
//! - `GET /v1/link/lookup?from=album&to=shop&item=p1` (or
//!   `&attr=camera_model&value=X100` instead of `item`)
//!   `[&by=score|selections|purchases][&limit=20][&page_token=...]
//!   [&consistency=serializable]`: a linked lookup (P-link) for the web
//!   pages that show linked results, ranked from the index; answers
//!   `{"items": [{"rank", "item_id", "attrs": [{"key", "value"}],
//!   "selections", "purchases", "score"}], "next_page_token"}`. Needs the
//!   `link` role.

use ::herald_client::proto::LinkedLookupRequest;
use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use axum::response::IntoResponse;
use serde_json::json;

use super::{Answer, Query, read_barrier};
use crate::node::Herald;
use crate::state::StateError;

/// `GET /v1/link/lookup`: a linked lookup as JSON (see the module doc);
/// the same answer as the gRPC `LinkedLookup`.
pub(super) async fn lookup(State(node): State<Herald>, uri: Uri) -> Answer {
    use ::herald_client::proto::RankBy;
    let q = Query::parse(&uri)?;
    let text = |key: &str| q.get(key).map(Option::unwrap_or_default);
    let r = LinkedLookupRequest {
        from_catalog: text("from")?,
        to_catalog: text("to")?,
        item_id: text("item")?,
        attr: text("attr")?,
        value: text("value")?,
        page_token: text("page_token")?,
        rank_by: match q.get("by")?.as_deref() {
            None | Some("score") => RankBy::Score,
            Some("selections") => RankBy::Selections,
            Some("purchases") => RankBy::Purchases,
            Some(_) => {
                return Err(
                    StateError::invalid("by", "must be score, selections or purchases").into(),
                );
            }
        } as i32,
        limit: q.number("limit", 0)?,
        ..Default::default()
    };
    read_barrier(&node, &q).await?;
    let a = {
        let m = node.store().read();
        crate::api::client::link::linked_lookup(&m.state, &r)?
    };
    Ok(Json(json!({
        "items": a.items.iter().map(|ri| {
            let item = ri.item.clone().unwrap_or_default();
            json!({
                "rank": ri.rank,
                "item_id": item.item_id,
                "attrs": item.attrs.iter()
                    .map(|a| json!({"key": a.key, "value": a.value}))
                    .collect::<Vec<_>>(),
                "selections": item.selections,
                "purchases": item.purchases,
                "score": item.score,
            })
        }).collect::<Vec<_>>(),
        "next_page_token": a.next_page_token,
    }))
    .into_response())
}
