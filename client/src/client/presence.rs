//! Presence calls (P-publish): login, logout, permissions, heartbeats, lookups
//! and the watch.

use super::*;

impl Client {
    /// Logs a connection of a user in (P-publish `UserLogin`; `connection_id`
    /// "" = the client type's one entry); returns the record after the
    /// change. Not retried once it may have been applied: replaying
    /// an old login after other writers changed the record would bring its
    /// old values back (the chaos suite caught exactly that).
    pub async fn login(
        &self,
        req: proto::LoginRequest,
    ) -> Result<proto::PresenceRecord, ClientError> {
        let uid = req.uid.clone();
        let resp = self
            .routed(&uid, "Login", Effect::Write, req, |ch, r| async move {
                ch.batch.login(r).await
            })
            .await?;
        required(resp.record, "Login", "record")
    }

    /// Logs one connection (`connection_id` set), every connection of one
    /// client type, or (with an empty `client_type`) every client of a user
    /// out. Not idempotent: a lost answer gives [`ClientError::Unknown`].
    pub async fn logout(
        &self,
        req: proto::LogoutRequest,
    ) -> Result<proto::PresenceRecord, ClientError> {
        let uid = req.uid.clone();
        let resp = self
            .routed(&uid, "Logout", Effect::Write, req, |ch, r| async move {
                ch.batch.logout(r).await
            })
            .await?;
        required(resp.record, "Logout", "record")
    }

    /// Changes whether a user accepts sessions from strangers (and replaces
    /// `ext` when it is non-empty). Not retried once it may have been applied
    /// (same reason as [`Client::login`]).
    pub async fn change_permission(
        &self,
        req: proto::PermissionRequest,
    ) -> Result<proto::PresenceRecord, ClientError> {
        let uid = req.uid.clone();
        let resp = self
            .routed(
                &uid,
                "ChangePermission",
                Effect::Write,
                req,
                |ch, r| async move { ch.batch.change_permission(r).await },
            )
            .await?;
        required(resp.record, "ChangePermission", "record")
    }

    /// Keeps a TTL login of a client type's one entry (connection id "")
    /// alive; [`Client::heartbeat_connection`] for a named connection.
    /// Returns `false` when the client is not logged in (it expired or never
    /// logged in): log in again.
    pub async fn heartbeat(
        &self,
        uid: impl Into<String>,
        client_type: impl Into<String>,
    ) -> Result<bool, ClientError> {
        self.heartbeat_connection(uid, client_type, "").await
    }

    /// Keeps the TTL login of one connection alive (each connection of a
    /// user has its own TTL). Returns `false` when that connection is not
    /// logged in (it expired, logged out or never logged in): log in again.
    pub async fn heartbeat_connection(
        &self,
        uid: impl Into<String>,
        client_type: impl Into<String>,
        connection_id: impl Into<String>,
    ) -> Result<bool, ClientError> {
        let req = proto::HeartbeatRequest {
            uid: uid.into(),
            client_type: client_type.into(),
            connection_id: connection_id.into(),
        };
        let uid = req.uid.clone();
        let resp = self
            .routed(
                &uid,
                "Heartbeat",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { ch.batch.heartbeat(r).await },
            )
            .await?;
        Ok(resp.known)
    }

    /// One user's presence; `None` when the user was never seen.
    pub async fn get_presence(
        &self,
        uid: impl Into<String>,
        consistency: Consistency,
    ) -> Result<Option<proto::PresenceRecord>, ClientError> {
        let req = proto::GetPresenceRequest {
            uid: uid.into(),
            consistency: consistency.into(),
        };
        let uid = req.uid.clone();
        let resp = self
            .routed(&uid, "GetPresence", Effect::Read, req, |ch, r| async move {
                ch.batch.get_presence(r).await
            })
            .await?;
        Ok(resp.record)
    }

    /// Presence of up to 1000 users, one record per uid in request order
    /// (unknown users come back offline with revision 0), and the revision
    /// the state was read at.
    pub async fn batch_get_presence(
        &self,
        uids: Vec<String>,
        consistency: Consistency,
    ) -> Result<proto::BatchGetPresenceResponse, ClientError> {
        // A node answers at most ~3 MiB at once (`truncated`); ask again
        // for the uids it did not answer yet.
        let mut all = proto::BatchGetPresenceResponse::default();
        let mut rest = &uids[..];
        loop {
            let req = proto::BatchGetPresenceRequest {
                uids: rest.to_vec(),
                consistency: consistency.into(),
            };
            let page = self
                .call("BatchGetPresence", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel)
                        .batch_get_presence(r)
                        .await
                })
                .await?;
            if all.records.is_empty() {
                // The oldest read: every record is at least this fresh.
                all.revision = page.revision;
            }
            let answered = page.records.len();
            all.records.extend(page.records);
            if !page.truncated || answered == 0 || answered >= rest.len() {
                return Ok(all);
            }
            rest = &rest[answered..];
        }
    }

    /// Presence changes of `uids` (empty = every user) from `start_revision`
    /// on (0 = from now), in revision order.
    ///
    /// The stream survives node failures: when it breaks it is reopened on
    /// another endpoint from where it stopped, with no gap and no duplicate.
    /// It ends after a definite error (e.g. the revision was compacted) or
    /// when reconnecting fails `max_attempts` times in a row. See
    /// [`WatchStream`].
    pub fn watch(&self, uids: Vec<String>, start_revision: u64) -> WatchStream {
        watch::watch(self.clone(), uids, start_revision)
    }
}
