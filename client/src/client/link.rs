//! Linked-catalog calls (P-link, the `Link` service): catalogs, items, link
//! rules, counted selections and purchases, item reads and ranked linked
//! lookups.

use super::*;

/// The `Link` stub over `channel`, with the same message limits as the
/// other services.
fn stub(channel: Transport) -> proto::link_client::LinkClient<Transport> {
    proto::link_client::LinkClient::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

impl Client {
    /// Creates a catalog. Not idempotent (a retry may answer
    /// `AlreadyExists`).
    pub async fn create_catalog(
        &self,
        catalog: proto::Catalog,
    ) -> Result<proto::Catalog, ClientError> {
        let req = proto::CreateCatalogRequest {
            catalog: Some(catalog),
        };
        let resp = self
            .call("CreateCatalog", Effect::Write, req, |ch, r| async move {
                stub(ch.channel).create_catalog(r).await
            })
            .await?;
        required(resp.catalog, "CreateCatalog", "catalog")
    }

    /// Deletes a catalog and its items (refused while a rule names it).
    pub async fn delete_catalog(&self, name: &str) -> Result<(), ClientError> {
        let req = proto::DeleteCatalogRequest { name: name.into() };
        self.call("DeleteCatalog", Effect::Write, req, |ch, r| async move {
            stub(ch.channel).delete_catalog(r).await
        })
        .await?;
        Ok(())
    }

    /// Adds an item or replaces its attributes (its counts stay); the same
    /// call twice leaves the same item, so it is retried.
    pub async fn put_item(
        &self,
        item: proto::CatalogItem,
    ) -> Result<proto::CatalogItem, ClientError> {
        let req = proto::PutItemRequest { item: Some(item) };
        let resp = self
            .call(
                "PutItem",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { stub(ch.channel).put_item(r).await },
            )
            .await?;
        required(resp.item, "PutItem", "item")
    }

    /// Removes an item and its counts.
    pub async fn remove_item(&self, catalog: &str, item_id: &str) -> Result<(), ClientError> {
        let req = proto::RemoveItemRequest {
            catalog: catalog.into(),
            item_id: item_id.into(),
        };
        self.call("RemoveItem", Effect::Write, req, |ch, r| async move {
            stub(ch.channel).remove_item(r).await
        })
        .await?;
        Ok(())
    }

    /// Adds a link rule between two catalogs' attributes.
    pub async fn add_link_rule(
        &self,
        rule: proto::LinkRule,
    ) -> Result<proto::LinkRule, ClientError> {
        let req = proto::AddLinkRuleRequest { rule: Some(rule) };
        let resp = self
            .call("AddLinkRule", Effect::Write, req, |ch, r| async move {
                stub(ch.channel).add_link_rule(r).await
            })
            .await?;
        required(resp.rule, "AddLinkRule", "rule")
    }

    /// Removes a link rule.
    pub async fn remove_link_rule(&self, name: &str) -> Result<(), ClientError> {
        let req = proto::RemoveLinkRuleRequest { name: name.into() };
        self.call("RemoveLinkRule", Effect::Write, req, |ch, r| async move {
            stub(ch.channel).remove_link_rule(r).await
        })
        .await?;
        Ok(())
    }

    /// Counts one selection or purchase. The request id makes it
    /// idempotent, so it is retried after any failure: a retry that reaches
    /// a counted id answers `replayed` and counts nothing more.
    pub async fn count(
        &self,
        req: proto::CountRequest,
    ) -> Result<proto::CountResponse, ClientError> {
        self.call("Count", Effect::IdempotentWrite, req, |ch, r| async move {
            stub(ch.channel).count(r).await
        })
        .await
    }

    /// An item with its counts.
    pub async fn get_item(
        &self,
        catalog: &str,
        item_id: &str,
        consistency: Consistency,
    ) -> Result<proto::CatalogItem, ClientError> {
        let req = proto::GetItemRequest {
            catalog: catalog.into(),
            item_id: item_id.into(),
            consistency: consistency as i32,
        };
        let resp = self
            .call("GetItem", Effect::Read, req, |ch, r| async move {
                stub(ch.channel).get_item(r).await
            })
            .await?;
        required(resp.item, "GetItem", "item")
    }

    /// Every catalog and link rule.
    pub async fn list_catalogs(
        &self,
        consistency: Consistency,
    ) -> Result<proto::ListCatalogsResponse, ClientError> {
        let req = proto::ListCatalogsRequest {
            consistency: consistency as i32,
        };
        self.call("ListCatalogs", Effect::Read, req, |ch, r| async move {
            stub(ch.channel).list_catalogs(r).await
        })
        .await
    }

    /// One page of the items linked to an item or a value, best first.
    pub async fn linked_lookup(
        &self,
        req: proto::LinkedLookupRequest,
    ) -> Result<proto::LinkedLookupResponse, ClientError> {
        self.call("LinkedLookup", Effect::Read, req, |ch, r| async move {
            stub(ch.channel).linked_lookup(r).await
        })
        .await
    }
}
