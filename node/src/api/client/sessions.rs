//! Session calls: connect, progress, bind and handoff proposed as
//! commands; session and session-log reads (the log paged by revision).

use ::herald_client::proto::*;
use tonic::{Code, Request, Response, Status};

use super::super::convert as cv;
use super::super::page;
use super::super::status::refuse;
use super::{HeraldService, invalid, unexpected};
use crate::state::{self, Command};

fn session_of(r: state::Response) -> Result<Session, Status> {
    match r {
        state::Response::Session(s) => Ok(cv::session_pb(&s)),
        other => Err(unexpected(other)),
    }
}

impl HeraldService {
    pub(super) async fn connect_session(
        &self,
        req: Request<ConnectRequest>,
    ) -> Result<Response<ConnectResponse>, Status> {
        let cmd = Command::Connect(cv::connect(req.into_inner()).map_err(invalid)?);
        let session = session_of(self.propose(cmd).await?)?;
        Ok(Response::new(ConnectResponse {
            session: Some(session),
        }))
    }

    pub(super) async fn progress(
        &self,
        req: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let cmd = Command::Progress(cv::progress(req.into_inner()).map_err(invalid)?);
        let session = session_of(self.propose(cmd).await?)?;
        Ok(Response::new(ProgressResponse {
            session: Some(session),
        }))
    }

    pub(super) async fn bind(
        &self,
        req: Request<BindRequest>,
    ) -> Result<Response<BindResponse>, Status> {
        let cmd = Command::Bind(cv::bind(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Bound => Ok(Response::new(BindResponse {})),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn handoff(
        &self,
        req: Request<HandoffRequest>,
    ) -> Result<Response<HandoffResponse>, Status> {
        let cmd = Command::Handoff(cv::handoff(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Handoff(o) => Ok(Response::new(HandoffResponse {
                accepted: o.accepted,
                session: Some(cv::session_pb(&o.session)),
                refused: o.refused.iter().map(cv::terminal_pb).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn get_session(
        &self,
        req: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let s = m.state.session(r.session_id).ok_or_else(|| {
            refuse(
                Code::NotFound,
                format!("session {} not found", r.session_id),
            )
        })?;
        Ok(Response::new(GetSessionResponse {
            session: Some(cv::session_pb(s)),
        }))
    }

    pub(super) async fn session_log(
        &self,
        req: Request<SessionLogRequest>,
    ) -> Result<Response<SessionLogResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let log = m.state.session_log(r.session_id).ok_or_else(|| {
            refuse(
                Code::NotFound,
                format!("session {} not found", r.session_id),
            )
        })?;
        let (after, seen) = page::after_revision(&r.page_token)?;
        // Entries of the token's revision already delivered are skipped.
        let mut skip = seen;
        let rest = log.iter().filter(|e| {
            if e.revision < after {
                return false;
            }
            if e.revision == after && skip > 0 {
                skip -= 1;
                return false;
            }
            true
        });
        let size = page::size(r.page_size, page::DEFAULT_LOG_PAGE);
        let (entries, more) = page::take(rest.map(cv::work_pb), size, page::REPLY_BUDGET_BYTES);
        let next_page_token = match entries.last() {
            Some(last) if more => {
                let at_last = entries
                    .iter()
                    .filter(|e| e.revision == last.revision)
                    .count();
                // Entries of that revision on earlier pages count too.
                let before = if last.revision == after { seen } else { 0 };
                page::revision_token(last.revision, before + at_last)
            }
            _ => String::new(),
        };
        Ok(Response::new(SessionLogResponse {
            entries,
            next_page_token,
        }))
    }

    pub(super) async fn delete_session(
        &self,
        req: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::DeleteSession(state::DeleteSession {
            session_id: r.session_id,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }
}
