//! Session calls: connect, progress, bind, unbind, handoff, offer and
//! accept proposed as commands; session, binding, sessions-by-terminal and
//! session-log reads (paged); and the session watch.

use std::collections::BTreeSet;

use ::herald_client::proto::*;
use tonic::{Code, Request, Response, Status};

use super::super::convert as cv;
use super::super::page;
use super::super::status::refuse;
use super::watch::{EventSource, serve_watch};
use super::{HeraldService, invalid, unexpected};
use crate::state::{self, Command};

/// Filters of one session watch: at most this many ids and terminals each.
const MAX_WATCH_FILTERS: usize = 1000;

/// The stream a session watch answers.
pub type WatchSessionsStream = super::watch::EventStream<SessionEvent>;

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
            state::Response::Handoff(o) => Ok(Response::new(cv::handoff_pb(&o))),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn offer_handoff(
        &self,
        req: Request<OfferHandoffRequest>,
    ) -> Result<Response<OfferHandoffResponse>, Status> {
        let cmd = Command::OfferHandoff(cv::offer(req.into_inner()).map_err(invalid)?);
        let session = session_of(self.propose(cmd).await?)?;
        Ok(Response::new(OfferHandoffResponse {
            session: Some(session),
        }))
    }

    pub(super) async fn accept_handoff(
        &self,
        req: Request<AcceptHandoffRequest>,
    ) -> Result<Response<HandoffResponse>, Status> {
        let cmd = Command::AcceptHandoff(cv::accept(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Handoff(o) => Ok(Response::new(cv::handoff_pb(&o))),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn unbind(
        &self,
        req: Request<UnbindRequest>,
    ) -> Result<Response<UnbindResponse>, Status> {
        let terminal = cv::terminal("terminal", req.into_inner().terminal).map_err(invalid)?;
        match self
            .propose(Command::Unbind(state::Unbind { terminal }))
            .await?
        {
            state::Response::Unbound(other) => Ok(Response::new(UnbindResponse {
                was_bound_to: Some(cv::terminal_pb(&other)),
            })),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn get_binding(
        &self,
        req: Request<GetBindingRequest>,
    ) -> Result<Response<GetBindingResponse>, Status> {
        let r = req.into_inner();
        let terminal = cv::terminal("terminal", r.terminal).map_err(invalid)?;
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        Ok(Response::new(GetBindingResponse {
            bound: m.state.binding(&terminal).map(cv::terminal_pb),
        }))
    }

    pub(in crate::api) async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let r = req.into_inner();
        let terminal = cv::terminal("terminal", r.terminal).map_err(invalid)?;
        let after = page::after_id(&r.page_token)?;
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let size = page::size(r.page_size, page::DEFAULT_PAGE);
        // One more than a page, to know whether there is more.
        let held = m.state.sessions_held_by(&terminal, after, size + 1);
        let (sessions, more) = page::take(
            held.into_iter().map(cv::session_pb),
            size,
            page::REPLY_BUDGET_BYTES,
        );
        let next_page_token = match sessions.last() {
            Some(last) if more => last.session_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListSessionsResponse {
            sessions,
            next_page_token,
        }))
    }

    pub(in crate::api) async fn watch_sessions(
        &self,
        req: Request<WatchSessionsRequest>,
    ) -> Result<Response<WatchSessionsStream>, Status> {
        let r = req.into_inner();
        for (field, n) in [
            ("session_ids", r.session_ids.len()),
            ("terminals", r.terminals.len()),
        ] {
            if n > MAX_WATCH_FILTERS {
                return Err(invalid(state::StateError::invalid(
                    field,
                    format!("must have at most {MAX_WATCH_FILTERS} entries, got {n}"),
                )));
            }
        }
        let terminals = r
            .terminals
            .into_iter()
            .enumerate()
            .map(|(i, t)| cv::terminal(&format!("terminals[{i}]"), Some(t)))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(invalid)?;
        let ids: BTreeSet<u64> = r.session_ids.into_iter().collect();
        let source: EventSource<SessionEvent> = Box::new(move |state, start, out| {
            state.visit_session_events_since(start, |e| {
                let wanted = (ids.is_empty() && terminals.is_empty())
                    || ids.contains(&e.session.session_id)
                    || terminals.iter().any(|t| e.involves(t));
                if wanted {
                    out.push(cv::session_event_pb(e));
                }
            })
        });
        serve_watch(&self.node, r.start_revision, source)
    }

    pub(in crate::api) async fn get_session(
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
