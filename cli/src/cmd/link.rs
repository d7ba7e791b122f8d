//! `heraldctl link ...`: P-link's linked catalogs — catalogs, items with
//! attributes, link rules, counted selections and purchases, and ranked
//! linked lookups.

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use herald_client::new_request_id;
use herald_client::proto::{self, CatalogItem};
use serde_json::{Value, json};

use super::{Ctx, consistency};
use crate::output::{Format, Table, print_json, yes_no};

/// What a lookup ranks by.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum By {
    /// The catalog's weighted score
    Score,
    /// Selection count
    Selections,
    /// Purchase count
    Purchases,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a catalog
    CatalogCreate {
        /// The catalog's name (letters, digits, '_', '.', '-')
        name: String,
        /// Score weight of a selection
        #[arg(long, default_value_t = 1)]
        selection_weight: u32,
        /// Score weight of a purchase
        #[arg(long, default_value_t = 10)]
        purchase_weight: u32,
    },
    /// Delete a catalog and its items (refused while a rule names it)
    CatalogDelete {
        /// The catalog's name
        name: String,
    },
    /// List catalogs and link rules
    List {
        /// Read this node's state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Add an item, or replace its attributes (its counts stay)
    Put {
        /// The catalog
        catalog: String,
        /// The item's id
        item: String,
        /// An attribute, repeatable: 'key=value' (a key may repeat)
        #[arg(long = "attr", value_parser = attr)]
        attrs: Vec<(String, String)>,
    },
    /// Remove an item and its counts
    Remove {
        /// The catalog
        catalog: String,
        /// The item's id
        item: String,
    },
    /// Show an item with its counts
    Get {
        /// The catalog
        catalog: String,
        /// The item's id
        item: String,
        /// Read this node's state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Link two catalogs by an attribute: 'album.camera_model' 'shop.model'
    RuleAdd {
        /// The rule's name
        name: String,
        /// One side, 'catalog.attr'
        #[arg(value_parser = side)]
        left: (String, String),
        /// The other side, 'catalog.attr'
        #[arg(value_parser = side)]
        right: (String, String),
    },
    /// Remove a link rule
    RuleRemove {
        /// The rule's name
        name: String,
    },
    /// Count a selection of an item (once per request id)
    Select {
        /// The catalog
        catalog: String,
        /// The item's id
        item: String,
        /// Makes retries safe (default: a fresh one, printed)
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Count a purchase of an item (once per request id)
    Purchase {
        /// The catalog
        catalog: String,
        /// The item's id
        item: String,
        /// Makes retries safe (default: a fresh one, printed)
        #[arg(long)]
        request_id: Option<String>,
    },
    /// The items of another catalog linked to an item or a value, ranked
    Lookup {
        /// The catalog to start from
        from: String,
        /// The linked catalog to rank items of
        to: String,
        /// Start from this item of FROM
        #[arg(long, conflicts_with = "value")]
        item: Option<String>,
        /// Start from an attribute value of FROM: 'attr=value'
        #[arg(long, value_parser = attr)]
        value: Option<(String, String)>,
        /// Rank by
        #[arg(long, value_enum, default_value = "score")]
        by: By,
        /// Items per page
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Where the previous page ended
        #[arg(long, default_value = "")]
        page_token: String,
        /// Read this node's state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
}

/// `key=value`.
fn attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

/// `catalog.attr` (the catalog is up to the first dot).
fn side(s: &str) -> Result<(String, String), String> {
    match s.split_once('.') {
        Some((c, a)) if !c.is_empty() && !a.is_empty() => Ok((c.into(), a.into())),
        _ => Err(format!("expected catalog.attr, got {s:?}")),
    }
}

fn attrs_text(item: &CatalogItem) -> String {
    if item.attrs.is_empty() {
        return "-".into();
    }
    item.attrs
        .iter()
        .map(|a| format!("{}={}", a.key, a.value))
        .collect::<Vec<_>>()
        .join(",")
}

fn item_json(item: &CatalogItem) -> Value {
    json!({
        "catalog": item.catalog,
        "item_id": item.item_id,
        "attrs": item.attrs.iter().map(|a| json!({"key": a.key, "value": a.value})).collect::<Vec<_>>(),
        "selections": item.selections,
        "purchases": item.purchases,
        "score": item.score,
    })
}

fn print_items(format: Format, items: &[CatalogItem]) {
    match format {
        Format::Json => print_json(&json!(items.iter().map(item_json).collect::<Vec<_>>())),
        Format::Table => {
            let mut t = Table::new(&[
                "CATALOG",
                "ITEM",
                "ATTRS",
                "SELECTIONS",
                "PURCHASES",
                "SCORE",
            ]);
            for i in items {
                t.row(vec![
                    i.catalog.clone(),
                    i.item_id.clone(),
                    attrs_text(i),
                    i.selections.to_string(),
                    i.purchases.to_string(),
                    i.score.to_string(),
                ]);
            }
            t.print();
        }
    }
}

fn request_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let id = new_request_id();
        // Before the call, so it is at hand if the outcome is unknown.
        eprintln!("request id: {id} (retry with --request-id {id} to count it once)");
        id
    })
}

pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<()> {
    let client = &ctx.client;
    match cmd {
        Cmd::CatalogCreate {
            name,
            selection_weight,
            purchase_weight,
        } => {
            let c = client
                .create_catalog(proto::Catalog {
                    name,
                    selection_weight,
                    purchase_weight,
                    items: 0,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&json!({
                    "name": c.name,
                    "selection_weight": c.selection_weight,
                    "purchase_weight": c.purchase_weight,
                })),
                Format::Table => println!(
                    "OK: catalog {} (score = selections x {} + purchases x {})",
                    c.name, c.selection_weight, c.purchase_weight
                ),
            }
        }
        Cmd::CatalogDelete { name } => {
            client.delete_catalog(&name).await?;
            match ctx.format {
                Format::Json => print_json(&json!({})),
                Format::Table => println!("OK: catalog {name} deleted"),
            }
        }
        Cmd::List { serializable } => {
            let l = client.list_catalogs(consistency(serializable)).await?;
            let side = |s: &Option<proto::LinkSide>| {
                s.as_ref()
                    .map(|s| format!("{}.{}", s.catalog, s.attr))
                    .unwrap_or_default()
            };
            match ctx.format {
                Format::Json => print_json(&json!({
                    "catalogs": l.catalogs.iter().map(|c| json!({
                        "name": c.name,
                        "selection_weight": c.selection_weight,
                        "purchase_weight": c.purchase_weight,
                        "items": c.items,
                    })).collect::<Vec<_>>(),
                    "rules": l.rules.iter().map(|r| json!({
                        "name": r.name, "left": side(&r.left), "right": side(&r.right),
                    })).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    let mut t =
                        Table::new(&["CATALOG", "ITEMS", "SELECTION WEIGHT", "PURCHASE WEIGHT"]);
                    for c in &l.catalogs {
                        t.row(vec![
                            c.name.clone(),
                            c.items.to_string(),
                            c.selection_weight.to_string(),
                            c.purchase_weight.to_string(),
                        ]);
                    }
                    t.print();
                    let mut t = Table::new(&["RULE", "LEFT", "RIGHT"]);
                    for r in &l.rules {
                        t.row(vec![r.name.clone(), side(&r.left), side(&r.right)]);
                    }
                    t.print();
                }
            }
        }
        Cmd::Put {
            catalog,
            item,
            attrs,
        } => {
            let item = client
                .put_item(CatalogItem {
                    catalog,
                    item_id: item,
                    attrs: attrs
                        .into_iter()
                        .map(|(key, value)| proto::ItemAttr { key, value })
                        .collect(),
                    ..Default::default()
                })
                .await?;
            print_items(ctx.format, &[item]);
        }
        Cmd::Remove { catalog, item } => {
            client.remove_item(&catalog, &item).await?;
            match ctx.format {
                Format::Json => print_json(&json!({})),
                Format::Table => println!("OK: item {item} removed from {catalog}"),
            }
        }
        Cmd::Get {
            catalog,
            item,
            serializable,
        } => {
            let item = client
                .get_item(&catalog, &item, consistency(serializable))
                .await?;
            print_items(ctx.format, &[item]);
        }
        Cmd::RuleAdd { name, left, right } => {
            let r = client
                .add_link_rule(proto::LinkRule {
                    name,
                    left: Some(proto::LinkSide {
                        catalog: left.0,
                        attr: left.1,
                    }),
                    right: Some(proto::LinkSide {
                        catalog: right.0,
                        attr: right.1,
                    }),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&json!({"name": r.name})),
                Format::Table => println!("OK: rule {} added", r.name),
            }
        }
        Cmd::RuleRemove { name } => {
            client.remove_link_rule(&name).await?;
            match ctx.format {
                Format::Json => print_json(&json!({})),
                Format::Table => println!("OK: rule {name} removed"),
            }
        }
        Cmd::Select {
            catalog,
            item,
            request_id: id,
        } => count(ctx, catalog, item, proto::CountKind::Selection, id).await?,
        Cmd::Purchase {
            catalog,
            item,
            request_id: id,
        } => count(ctx, catalog, item, proto::CountKind::Purchase, id).await?,
        Cmd::Lookup {
            from,
            to,
            item,
            value,
            by,
            limit,
            page_token,
            serializable,
        } => {
            let (item_id, (attr, value)) = match (item, value) {
                (Some(i), None) => (i, (String::new(), String::new())),
                (None, Some(v)) => (String::new(), v),
                _ => bail!("give --item ITEM or --value attr=value"),
            };
            let rank_by = match by {
                By::Score => proto::RankBy::Score,
                By::Selections => proto::RankBy::Selections,
                By::Purchases => proto::RankBy::Purchases,
            };
            let r = client
                .linked_lookup(proto::LinkedLookupRequest {
                    from_catalog: from,
                    item_id,
                    attr,
                    value,
                    to_catalog: to,
                    rank_by: rank_by as i32,
                    limit,
                    page_token,
                    consistency: consistency(serializable) as i32,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&json!({
                    "items": r.items.iter().map(|ri| json!({
                        "rank": ri.rank,
                        "item": ri.item.as_ref().map(item_json),
                    })).collect::<Vec<_>>(),
                    "next_page_token": r.next_page_token,
                })),
                Format::Table => {
                    let mut t =
                        Table::new(&["RANK", "ITEM", "ATTRS", "SELECTIONS", "PURCHASES", "SCORE"]);
                    for ri in &r.items {
                        let i = ri.item.clone().unwrap_or_default();
                        t.row(vec![
                            ri.rank.to_string(),
                            i.item_id.clone(),
                            attrs_text(&i),
                            i.selections.to_string(),
                            i.purchases.to_string(),
                            i.score.to_string(),
                        ]);
                    }
                    t.print();
                    if !r.next_page_token.is_empty() {
                        println!("more: --page-token {}", r.next_page_token);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn count(
    ctx: &Ctx,
    catalog: String,
    item: String,
    kind: proto::CountKind,
    id: Option<String>,
) -> Result<()> {
    let r = ctx
        .client
        .count(proto::CountRequest {
            catalog,
            item_id: item,
            kind: kind as i32,
            request_id: request_id(id),
        })
        .await?;
    let item = r.item.unwrap_or_default();
    match ctx.format {
        Format::Json => {
            let mut v = item_json(&item);
            v["replayed"] = json!(r.replayed);
            print_json(&v);
        }
        Format::Table => {
            print_items(ctx.format, std::slice::from_ref(&item));
            println!("replayed: {}", yes_no(r.replayed));
        }
    }
    Ok(())
}
