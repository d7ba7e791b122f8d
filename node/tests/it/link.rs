//! Linked catalogs (P-link) on a real 3-node cluster: catalogs, items and a
//! link rule written through the client library (forwarded to the leader),
//! selections and purchases counted exactly once across retries and a
//! leader crash, and every replica — the crashed one too, once restarted —
//! answering the same counts and the same ranked lookups, over gRPC and the
//! HTTP JSON page.

use std::collections::BTreeMap;

use ::herald_client::Client;
use ::herald_client::proto::link_client::LinkClient;
use ::herald_client::proto::*;

use crate::common::{ROOT, TestCluster, channel_as};

fn item(catalog: &str, id: &str, attrs: &[(&str, &str)]) -> CatalogItem {
    CatalogItem {
        catalog: catalog.into(),
        item_id: id.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| ItemAttr {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

async fn count(cl: &Client, id: &str, kind: CountKind, request_id: &str) -> CountResponse {
    cl.count(CountRequest {
        catalog: "shop".into(),
        item_id: id.into(),
        kind: kind as i32,
        request_id: request_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("count {request_id}: {e}"))
}

fn lookup_req(by: RankBy, consistency: Consistency) -> LinkedLookupRequest {
    LinkedLookupRequest {
        from_catalog: "album".into(),
        item_id: "p2".into(),
        to_catalog: "shop".into(),
        rank_by: by as i32,
        limit: 10,
        consistency: consistency as i32,
        ..Default::default()
    }
}

fn ranked(r: &LinkedLookupResponse) -> Vec<(u64, String)> {
    r.items
        .iter()
        .map(|ri| (ri.rank, ri.item.clone().unwrap_or_default().item_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_leader_crash_exactly_once_and_every_replica_ranks_alike() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let cl = c.client_lib();
    for (name, ws, wp) in [("album", 1, 0), ("shop", 1, 10)] {
        cl.create_catalog(Catalog {
            name: name.into(),
            selection_weight: ws,
            purchase_weight: wp,
            items: 0,
        })
        .await
        .expect("catalog");
    }
    cl.put_item(item("album", "p1", &[("camera_model", "X100")]))
        .await
        .expect("put");
    cl.put_item(item(
        "album",
        "p2",
        &[("camera_model", "X100"), ("camera_model", "GR3")],
    ))
    .await
    .expect("put");
    for (id, models) in [
        ("lens-a", &["X100"][..]),
        ("lens-b", &["X100", "GR3"][..]),
        ("strap", &["GR3"][..]),
        ("bag", &["Q2"][..]),
    ] {
        let attrs: Vec<(&str, &str)> = models.iter().map(|m| ("model", *m)).collect();
        cl.put_item(item("shop", id, &attrs)).await.expect("put");
    }
    cl.add_link_rule(LinkRule {
        name: "camera".into(),
        left: Some(LinkSide {
            catalog: "album".into(),
            attr: "camera_model".into(),
        }),
        right: Some(LinkSide {
            catalog: "shop".into(),
            attr: "model".into(),
        }),
    })
    .await
    .expect("rule");

    // Selections before the crash, each sent twice: the retry counts nothing.
    let mut want: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let plan = [("lens-a", 6), ("lens-b", 3), ("strap", 4)];
    for (id, n) in plan {
        for i in 0..n {
            let rid = format!("sel-{id}-{i}");
            assert!(!count(&cl, id, CountKind::Selection, &rid).await.replayed);
            assert!(count(&cl, id, CountKind::Selection, &rid).await.replayed);
            want.entry(id).or_default().0 += 1;
        }
    }
    c.kill(leader);
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    // After the crash: every earlier id again (replayed, nothing counted)
    // and new purchases.
    for (id, n) in plan {
        for i in 0..n {
            let r = count(&cl, id, CountKind::Selection, &format!("sel-{id}-{i}")).await;
            assert!(r.replayed, "{id} {i} counted twice");
        }
    }
    for (id, n) in [("lens-b", 2), ("strap", 1)] {
        for i in 0..n {
            let rid = format!("buy-{id}-{i}");
            let r = count(&cl, id, CountKind::Purchase, &rid).await;
            assert!(!r.replayed);
            want.entry(id).or_default().1 += 1;
        }
    }
    c.restart(leader);
    let applied = c.status(new_leader).await.expect("status").applied_index;
    c.wait_applied(applied).await;

    // Score = selections + 10 * purchases: lens-b 3+20, strap 4+10, lens-a 6.
    let expected_score = vec![
        (23, "lens-b".to_string()),
        (14, "strap".to_string()),
        (6, "lens-a".to_string()),
    ];
    let expected_selections = vec![
        (6, "lens-a".to_string()),
        (4, "strap".to_string()),
        (3, "lens-b".to_string()),
    ];
    for id in c.alive() {
        let mut link = LinkClient::new(channel_as(&c.certs, &c.client_addr(id), Some(ROOT)));
        for (item_id, (s, p)) in &want {
            let it = link
                .get_item(GetItemRequest {
                    catalog: "shop".into(),
                    item_id: item_id.to_string(),
                    consistency: Consistency::Serializable as i32,
                })
                .await
                .expect("get item")
                .into_inner()
                .item
                .expect("item");
            assert_eq!(
                (it.selections, it.purchases),
                (*s, *p),
                "node {id} {item_id}"
            );
        }
        for (by, expected) in [
            (RankBy::Score, &expected_score),
            (RankBy::Selections, &expected_selections),
        ] {
            let r = link
                .linked_lookup(lookup_req(by, Consistency::Serializable))
                .await
                .expect("lookup")
                .into_inner();
            assert_eq!(&ranked(&r), expected, "node {id} by {by:?}");
        }
        // The web page's JSON: the same ranking.
        let (code, body) = c
            .get(
                id,
                "/v1/link/lookup?from=album&to=shop&item=p2&by=score&limit=2",
            )
            .await
            .expect("http");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let got: Vec<(u64, String)> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["rank"].as_u64().unwrap_or(0),
                    i["item_id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(got, expected_score[..2].to_vec(), "node {id} http");
        assert!(!v["next_page_token"].as_str().unwrap_or("").is_empty());
    }
    // By value, through the library: GR3 links lens-b and strap.
    let r = cl
        .linked_lookup(LinkedLookupRequest {
            from_catalog: "album".into(),
            attr: "camera_model".into(),
            value: "GR3".into(),
            to_catalog: "shop".into(),
            rank_by: RankBy::Purchases as i32,
            ..Default::default()
        })
        .await
        .expect("lookup by value");
    assert_eq!(
        ranked(&r),
        [(2, "lens-b".to_string()), (1, "strap".to_string())]
    );
}
