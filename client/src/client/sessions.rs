//! Session calls (P-handoff): connect, progress, bindings, handoff, reads
//! and deletion.

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
}
