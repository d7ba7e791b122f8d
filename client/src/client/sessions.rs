//! Session calls (P-handoff): connect, progress, bindings, handoffs (one
//! step, and offer/accept), reads, the session watch and deletion.

use super::*;

impl Client {
    /// Opens a session of `app_url` on a terminal (P-handoff); returns it
    /// with its id. Not idempotent.
    pub async fn connect_session(
        &self,
        req: proto::ConnectRequest,
    ) -> Result<proto::Session, ClientError> {
        let resp = self
            .call("ConnectSession", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).connect_session(r).await
            })
            .await?;
        required(resp.session, "ConnectSession", "session")
    }

    /// Records progress; the sequence number must move forward and the epoch
    /// must be the current one. Not idempotent: after [`ClientError::Unknown`]
    /// read the session to learn whether `seq` was taken.
    pub async fn progress(
        &self,
        req: proto::ProgressRequest,
    ) -> Result<proto::Session, ClientError> {
        let resp = self
            .call("Progress", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).progress(r).await
            })
            .await?;
        required(resp.session, "Progress", "session")
    }

    /// Binds two terminals, so that a `BINDING` handoff finds the second from
    /// the first.
    pub async fn bind(
        &self,
        first: proto::Terminal,
        second: proto::Terminal,
    ) -> Result<(), ClientError> {
        let req = proto::BindRequest {
            first: Some(first),
            second: Some(second),
        };
        self.call("Bind", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).bind(r).await
        })
        .await?;
        Ok(())
    }

    /// Moves a session to the first compatible candidate. A refusal (no
    /// candidate fits) is an answer, not an error: `accepted` is false and
    /// `refused` lists who did not fit.
    pub async fn handoff(
        &self,
        req: proto::HandoffRequest,
    ) -> Result<proto::HandoffResponse, ClientError> {
        self.call("Handoff", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).handoff(r).await
        })
        .await
    }

    /// One session; [`ClientError::NotFound`] when it does not exist.
    pub async fn get_session(
        &self,
        session_id: u64,
        consistency: Consistency,
    ) -> Result<proto::Session, ClientError> {
        let req = proto::GetSessionRequest {
            session_id,
            consistency: consistency.into(),
        };
        let resp = self
            .call("GetSession", Effect::Read, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).get_session(r).await
            })
            .await?;
        resp.session
            .ok_or_else(|| ClientError::NotFound(format!("session {session_id}").into()))
    }

    /// A session's work log: every event, oldest first (all pages).
    pub async fn session_log(
        &self,
        session_id: u64,
        consistency: Consistency,
    ) -> Result<Vec<proto::WorkLogEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::SessionLogRequest {
                session_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("SessionLog", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).session_log(r).await
                })
                .await?;
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    /// Deletes a session and its work log.
    pub async fn delete_session(&self, session_id: u64) -> Result<(), ClientError> {
        let req = proto::DeleteSessionRequest { session_id };
        self.call("DeleteSession", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).delete_session(r).await
        })
        .await?;
        Ok(())
    }

    /// The terminal bound to `terminal`, if any.
    pub async fn get_binding(
        &self,
        terminal: proto::Terminal,
        consistency: Consistency,
    ) -> Result<Option<proto::Terminal>, ClientError> {
        let req = proto::GetBindingRequest {
            terminal: Some(terminal),
            consistency: consistency.into(),
        };
        let resp = self
            .call("GetBinding", Effect::Read, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).get_binding(r).await
            })
            .await?;
        Ok(resp.bound)
    }

    /// Removes the binding of `terminal` (both sides); returns the terminal
    /// it was bound to. [`ClientError::NotFound`] when it was not bound.
    pub async fn unbind(&self, terminal: proto::Terminal) -> Result<proto::Terminal, ClientError> {
        let req = proto::UnbindRequest {
            terminal: Some(terminal),
        };
        let resp = self
            .call("Unbind", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).unbind(r).await
            })
            .await?;
        required(resp.was_bound_to, "Unbind", "was_bound_to")
    }

    /// Every session `terminal` holds, by session id (all pages).
    pub async fn list_sessions(
        &self,
        terminal: proto::Terminal,
        consistency: Consistency,
    ) -> Result<Vec<proto::Session>, ClientError> {
        let mut sessions = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::ListSessionsRequest {
                terminal: Some(terminal.clone()),
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("ListSessions", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).list_sessions(r).await
                })
                .await?;
            sessions.extend(page.sessions);
            if page.next_page_token.is_empty() {
                return Ok(sessions);
            }
            page_token = page.next_page_token;
        }
    }

    /// The holder offers its session to one terminal (two-step handoff);
    /// returns the session with its offer. Not idempotent: a retry makes a
    /// new offer, which replaces the first.
    pub async fn offer_handoff(
        &self,
        req: proto::OfferHandoffRequest,
    ) -> Result<proto::Session, ClientError> {
        let resp = self
            .call("OfferHandoff", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).offer_handoff(r).await
            })
            .await?;
        required(resp.session, "OfferHandoff", "session")
    }

    /// The offered terminal confirms its capabilities: `accepted` when they
    /// fit (the session is now its), declined otherwise.
    pub async fn accept_handoff(
        &self,
        req: proto::AcceptHandoffRequest,
    ) -> Result<proto::HandoffResponse, ClientError> {
        self.call("AcceptHandoff", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).accept_handoff(r).await
        })
        .await
    }

    /// Watches sessions like [`Client::watch`] watches presence: events in
    /// revision order across node failures, the stream reopened on the next
    /// node from where it stopped, no gap and nothing twice (one log entry
    /// can change several sessions: those of its revision already delivered
    /// are skipped). `start_revision` 0 is "from now", pinned to the start
    /// the first node names, so a break before the first event loses
    /// nothing either. Ends after a definite error (a compacted start) or
    /// `max_attempts` failed reconnects in a row.
    pub fn watch_sessions_resumed(
        &self,
        req: proto::WatchSessionsRequest,
    ) -> crate::SessionWatchStream {
        crate::watch::watch_sessions(self.clone(), req)
    }

    /// Opens one session watch stream on the preferred node, as it comes:
    /// it ends when that node goes. [`Client::watch_sessions_resumed`]
    /// moves to another node by itself.
    pub async fn watch_sessions(
        &self,
        req: proto::WatchSessionsRequest,
    ) -> Result<tonic::Streaming<proto::SessionEvent>, ClientError> {
        let (_, channel) = self.target(self.preferred());
        // No grpc-timeout: it would end the stream on the server. The
        // timeout bounds only the wait for the response headers.
        let opened = tokio::time::timeout(
            self.config().request_timeout,
            crate::endpoint::herald(channel).watch_sessions(req),
        )
        .await
        .map_err(|_| ClientError::Unavailable("WatchSessions: no answer in time".into()))?;
        Ok(opened?.into_inner())
    }
}
