//! The linked-catalogs service (`herald.v1.Link`, P-link): catalogs, items,
//! link rules and counted selections and purchases go through Raft like
//! every write ([`Herald::propose`] forwards to the leader); item reads and
//! linked lookups read the local state after a read barrier when they ask
//! for linearizability, and rank from the state's index (no sort here).
//!
//! A service of its own rather than more `Herald` methods, so the link
//! calls carry their own role and the presence, session and pool contract
//! stays as it was.

use ::herald_client::proto::link_server::Link as LinkApi;
use ::herald_client::proto::*;
use tonic::{Request, Response, Status};

use super::super::convert::{linearizable, required};
use super::super::status::state_status;
use crate::node::Herald;
use crate::state::{self, Command, LinkCommand, StateError};

/// Items a lookup answers when the request names no limit.
pub const DEFAULT_LOOKUP_LIMIT: usize = 20;

/// Serves [`LinkApi`] for one node.
pub struct LinkService {
    node: Herald,
}

impl LinkService {
    /// The link service over `node`.
    pub fn new(node: Herald) -> Self {
        LinkService { node }
    }

    async fn propose(&self, cmd: LinkCommand) -> Result<state::LinkOutcome, Status> {
        match self.node.propose(Command::Link(cmd)).await? {
            state::Response::Link(outcome) => Ok(outcome),
            other => Err(super::super::status::refuse(
                tonic::Code::Internal,
                format!("unexpected state machine response {other:?}"),
            )),
        }
    }

    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        if linearizable(consistency).map_err(|e| state_status(&e))? {
            self.node.linearize().await?;
        }
        Ok(())
    }
}

fn bad(e: StateError) -> Status {
    state_status(&e)
}

/// The proto form of an item.
pub fn item_pb(v: &state::ItemView) -> CatalogItem {
    CatalogItem {
        catalog: v.catalog.clone(),
        item_id: v.item_id.clone(),
        attrs: v
            .attrs
            .iter()
            .map(|(key, value)| ItemAttr {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        selections: v.selections,
        purchases: v.purchases,
        score: v.score,
    }
}

fn catalog_pb(c: &state::CatalogView) -> Catalog {
    Catalog {
        name: c.name.clone(),
        selection_weight: c.selection_weight,
        purchase_weight: c.purchase_weight,
        items: c.items,
    }
}

fn side_pb(s: &state::LinkSide) -> LinkSide {
    LinkSide {
        catalog: s.catalog.clone(),
        attr: s.attr.clone(),
    }
}

fn rule_pb(r: &state::LinkRule) -> LinkRule {
    LinkRule {
        name: r.name.clone(),
        left: Some(side_pb(&r.left)),
        right: Some(side_pb(&r.right)),
    }
}

fn side(field: &str, s: Option<LinkSide>) -> Result<state::LinkSide, StateError> {
    let s = required(field, s)?;
    Ok(state::LinkSide {
        catalog: s.catalog,
        attr: s.attr,
    })
}

/// The rank order a request names.
pub fn rank_by(value: i32) -> Result<state::RankBy, StateError> {
    match RankBy::try_from(value) {
        Ok(RankBy::Score) => Ok(state::RankBy::Score),
        Ok(RankBy::Selections) => Ok(state::RankBy::Selections),
        Ok(RankBy::Purchases) => Ok(state::RankBy::Purchases),
        Err(_) => Err(StateError::invalid(
            "rank_by",
            format!("unknown order {value}"),
        )),
    }
}

/// A linked lookup against `state`, as the gRPC call and the HTTP page
/// both answer it.
pub fn linked_lookup(
    state: &state::State,
    r: &LinkedLookupRequest,
) -> Result<LinkedLookupResponse, StateError> {
    let limit = if r.limit == 0 {
        DEFAULT_LOOKUP_LIMIT
    } else {
        r.limit as usize
    };
    state::link::check_limit(limit)?;
    let source = if !r.item_id.is_empty() {
        state::link::check_item_id("item_id", &r.item_id)?;
        state::LinkSource::Item(r.item_id.clone())
    } else {
        state::link::check_name("attr", &r.attr)?;
        state::link::check_value("value", &r.value)?;
        state::LinkSource::Value {
            attr: r.attr.clone(),
            value: r.value.clone(),
        }
    };
    state::link::check_name("from_catalog", &r.from_catalog)?;
    state::link::check_name("to_catalog", &r.to_catalog)?;
    let page = state.link_lookup(&state::LinkQuery {
        from: r.from_catalog.clone(),
        source,
        to: r.to_catalog.clone(),
        by: rank_by(r.rank_by)?,
        limit,
        after: state::Cursor::parse(&r.page_token)?,
    })?;
    Ok(LinkedLookupResponse {
        items: page
            .items
            .iter()
            .map(|(rank, item)| RankedItem {
                rank: *rank,
                item: Some(item_pb(item)),
            })
            .collect(),
        next_page_token: page.next.map(|c| c.token()).unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl LinkApi for LinkService {
    async fn create_catalog(
        &self,
        req: Request<CreateCatalogRequest>,
    ) -> Result<Response<CreateCatalogResponse>, Status> {
        let c = required("catalog", req.into_inner().catalog).map_err(bad)?;
        let cmd = LinkCommand::CreateCatalog(state::CreateCatalog {
            name: c.name,
            selection_weight: c.selection_weight,
            purchase_weight: c.purchase_weight,
        });
        match self.propose(cmd).await? {
            state::LinkOutcome::Catalog(c) => Ok(Response::new(CreateCatalogResponse {
                catalog: Some(catalog_pb(&c)),
            })),
            other => Err(bad(StateError::invalid("response", format!("{other:?}")))),
        }
    }

    async fn delete_catalog(
        &self,
        req: Request<DeleteCatalogRequest>,
    ) -> Result<Response<LinkDone>, Status> {
        let name = req.into_inner().name;
        self.propose(LinkCommand::DeleteCatalog { name }).await?;
        Ok(Response::new(LinkDone {}))
    }

    async fn put_item(
        &self,
        req: Request<PutItemRequest>,
    ) -> Result<Response<PutItemResponse>, Status> {
        let item = required("item", req.into_inner().item).map_err(bad)?;
        let cmd = LinkCommand::PutItem(state::PutItem {
            catalog: item.catalog,
            item_id: item.item_id,
            attrs: item.attrs.into_iter().map(|a| (a.key, a.value)).collect(),
        });
        match self.propose(cmd).await? {
            state::LinkOutcome::Item(v) => Ok(Response::new(PutItemResponse {
                item: Some(item_pb(&v)),
            })),
            other => Err(bad(StateError::invalid("response", format!("{other:?}")))),
        }
    }

    async fn remove_item(
        &self,
        req: Request<RemoveItemRequest>,
    ) -> Result<Response<LinkDone>, Status> {
        let r = req.into_inner();
        self.propose(LinkCommand::RemoveItem {
            catalog: r.catalog,
            item_id: r.item_id,
        })
        .await?;
        Ok(Response::new(LinkDone {}))
    }

    async fn add_link_rule(
        &self,
        req: Request<AddLinkRuleRequest>,
    ) -> Result<Response<AddLinkRuleResponse>, Status> {
        let r = required("rule", req.into_inner().rule).map_err(bad)?;
        let rule = state::LinkRule {
            name: r.name,
            left: side("rule.left", r.left).map_err(bad)?,
            right: side("rule.right", r.right).map_err(bad)?,
        };
        match self.propose(LinkCommand::AddRule(rule)).await? {
            state::LinkOutcome::Rule(r) => Ok(Response::new(AddLinkRuleResponse {
                rule: Some(rule_pb(&r)),
            })),
            other => Err(bad(StateError::invalid("response", format!("{other:?}")))),
        }
    }

    async fn remove_link_rule(
        &self,
        req: Request<RemoveLinkRuleRequest>,
    ) -> Result<Response<LinkDone>, Status> {
        let name = req.into_inner().name;
        self.propose(LinkCommand::RemoveRule { name }).await?;
        Ok(Response::new(LinkDone {}))
    }

    async fn count(&self, req: Request<CountRequest>) -> Result<Response<CountResponse>, Status> {
        let r = req.into_inner();
        let kind = match ::herald_client::proto::CountKind::try_from(r.kind) {
            Ok(::herald_client::proto::CountKind::Selection) => state::CountKind::Selection,
            Ok(::herald_client::proto::CountKind::Purchase) => state::CountKind::Purchase,
            Err(_) => {
                return Err(bad(StateError::invalid(
                    "kind",
                    format!("unknown kind {}", r.kind),
                )));
            }
        };
        let cmd = LinkCommand::Count(state::CountEvent {
            catalog: r.catalog,
            item_id: r.item_id,
            kind,
            request_id: r.request_id,
        });
        match self.propose(cmd).await? {
            state::LinkOutcome::Counted { item, replayed } => Ok(Response::new(CountResponse {
                item: Some(item_pb(&item)),
                replayed,
            })),
            other => Err(bad(StateError::invalid("response", format!("{other:?}")))),
        }
    }

    async fn get_item(
        &self,
        req: Request<GetItemRequest>,
    ) -> Result<Response<GetItemResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        match m.state.link_item(&r.catalog, &r.item_id) {
            Some(v) => Ok(Response::new(GetItemResponse {
                item: Some(item_pb(&v)),
            })),
            None => Err(bad(StateError::not_found(format!(
                "item {:?} in catalog {:?}",
                r.item_id, r.catalog
            )))),
        }
    }

    async fn list_catalogs(
        &self,
        req: Request<ListCatalogsRequest>,
    ) -> Result<Response<ListCatalogsResponse>, Status> {
        self.read_barrier(req.into_inner().consistency).await?;
        let m = self.node.store().read();
        Ok(Response::new(ListCatalogsResponse {
            catalogs: m.state.link_catalogs().iter().map(catalog_pb).collect(),
            rules: m.state.link_rules().into_iter().map(rule_pb).collect(),
        }))
    }

    async fn linked_lookup(
        &self,
        req: Request<LinkedLookupRequest>,
    ) -> Result<Response<LinkedLookupResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let started = std::time::Instant::now();
        let answer = linked_lookup(&m.state, &r).map_err(bad)?;
        self.node
            .metrics()
            .link
            .lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(answer))
    }
}
