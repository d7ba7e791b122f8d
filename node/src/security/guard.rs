//! The one place a node decides who is calling and whether they may: the
//! [`Guard`], and the tower layer that puts it in front of the client and
//! peer gRPC listeners (the HTTP listener calls it from `api::http`).
//!
//! Every request is checked before any handler runs: the connection's
//! verified certificate (read once at the TLS handshake, `security::tls`)
//! or an `authorization: Bearer` token names the caller, the method's entry
//! in `policy::permission_of` says what it needs, and the replicated auth
//! state says what the caller has. Handlers receive the authenticated
//! [`Principal`] in the request's extensions (`Batch` checks its calls one
//! by one with it; a lease records it as its owner).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{HeaderMap, Request, Response};
use sha2::{Digest, Sha256};

use super::policy::{self, Permission, Principal, Refusal, Via};
use super::tls::{PeerCert, PeerInfo};
use crate::clock::ClusterClock;
use crate::config::Config;
use crate::metrics::{Metrics, RefusalLabels};
use crate::raft::state_store::StateStore;
use crate::state::Role;
use herald_certs::CertIdentity;

/// The name a root token authenticates as.
pub const ROOT_TOKEN_USER: &str = "root";

/// Decides every request of one node. Cheap to clone.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    store: StateStore,
    clock: ClusterClock,
    root_users: BTreeSet<String>,
    root_tokens: BTreeSet<[u8; 32]>,
    insecure: bool,
    metrics: Metrics,
}

/// SHA-256 of a bearer token: what the auth state and the config keep.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        Refusal::Unauthenticated(
            "authorization: expected \"Bearer <token>\" (heraldctl token create makes one)".into(),
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(bad());
    }
    Ok(Some(token.trim()))
}

impl Guard {
    /// A guard over `store`'s auth state with `config`'s founding
    /// administrators; `clock` judges token expiry.
    pub fn new(config: &Config, store: StateStore, clock: ClusterClock, metrics: Metrics) -> Guard {
        let root_tokens = config
            .auth
            .root_token_sha256
            .iter()
            .filter_map(|hex_digest| hex::decode(hex_digest).ok()?.try_into().ok())
            .collect();
        Guard {
            inner: Arc::new(Inner {
                store,
                clock,
                root_users: config.auth.root_users.iter().cloned().collect(),
                root_tokens,
                insecure: config.insecure,
                metrics,
            }),
        }
    }

    /// Whether auth is enforced now: as an administrator last set it, else
    /// on with TLS and off in insecure mode.
    pub fn enabled(&self) -> bool {
        let m = self.inner.store.read();
        m.state.auth().enabled().unwrap_or(!self.inner.insecure)
    }

    /// Who a request comes from: its bearer token if it carries one, else
    /// its connection's client certificate, else nobody. An unusable
    /// credential is refused even while auth is off: a caller who sent one
    /// meant to use it, and should learn that it does not work.
    fn authenticate(
        &self,
        cert: &PeerCert,
        headers: &HeaderMap,
        state: &crate::state::State,
    ) -> Result<Principal, Refusal> {
        if let Some(token) = bearer(headers)? {
            let digest = token_digest(token);
            if self.inner.root_tokens.contains(&digest) {
                return Ok(Principal::User {
                    name: ROOT_TOKEN_USER.into(),
                    via: Via::RootToken,
                });
            }
            let now = self.inner.clock.now_ms().max(state.now_ms());
            return match state.auth().token(&digest, now) {
                Some(t) => Ok(Principal::User {
                    name: t.user.clone(),
                    via: Via::Token(t.token_id),
                }),
                None => Err(Refusal::Unauthenticated(
                    "bearer token unknown, revoked or expired".into(),
                )),
            };
        }
        match cert {
            PeerCert::None => Ok(Principal::Anonymous),
            PeerCert::Named(CertIdentity::Node(id)) => Ok(Principal::Node(*id)),
            PeerCert::Named(CertIdentity::User(name)) => Ok(Principal::User {
                name: name.clone(),
                via: Via::Certificate,
            }),
            PeerCert::Unusable(why) => Err(Refusal::Unauthenticated(format!(
                "client certificate: {why}"
            ))),
        }
    }

    fn decide(
        &self,
        principal: &Principal,
        needs: Permission,
        what: &str,
        state: &crate::state::State,
    ) -> Result<(), Refusal> {
        let auth = state.auth();
        let roles = |name: &str| auth.roles(name).cloned();
        let view = policy::View {
            enabled: auth.enabled().unwrap_or(!self.inner.insecure),
            root_users: &self.inner.root_users,
            roles: &roles,
        };
        policy::decide(principal, needs, what, &view)
    }

    /// Authenticates a request and decides whether it may make a call
    /// needing `needs` (`what` names the call); counts refusals under
    /// `server`.
    pub fn check(
        &self,
        server: &'static str,
        cert: &PeerCert,
        headers: &HeaderMap,
        needs: Permission,
        what: &str,
    ) -> Result<Principal, Refusal> {
        let m = self.inner.store.read();
        let r = self
            .authenticate(cert, headers, &m.state)
            .and_then(|p| self.decide(&p, needs, what, &m.state).map(|()| p));
        drop(m);
        if let Err(refusal) = &r {
            self.refused(server, needs, refusal);
        }
        r
    }

    /// Decides one part of a request whose caller is already known (the
    /// calls of a `Batch`).
    pub fn authorize(
        &self,
        principal: &Principal,
        needs: Permission,
        what: &str,
    ) -> Result<(), Refusal> {
        let m = self.inner.store.read();
        let r = self.decide(principal, needs, what, &m.state);
        drop(m);
        if let Err(refusal) = &r {
            self.refused("client", needs, refusal);
        }
        r
    }

    /// The peer listener's gate: only a node certificate from the cluster's
    /// CA gets in (the TLS handshake already required a certificate from
    /// it). In insecure mode nobody can prove anything, and all get in.
    pub fn admit_peer(&self, cert: &PeerCert) -> Result<Principal, Refusal> {
        let r = match cert {
            _ if self.inner.insecure => Ok(Principal::Anonymous),
            PeerCert::Named(CertIdentity::Node(id)) => Ok(Principal::Node(*id)),
            PeerCert::Named(CertIdentity::User(name)) => Err(Refusal::PermissionDenied(format!(
                "the peer API admits only cluster nodes; this is user {name:?}'s client certificate"
            ))),
            PeerCert::Unusable(why) => Err(Refusal::PermissionDenied(format!(
                "the peer API admits only cluster nodes: {why}"
            ))),
            PeerCert::None => Err(Refusal::Unauthenticated(
                "the peer API needs a node certificate from the cluster's CA".into(),
            )),
        };
        if let Err(refusal) = &r {
            self.refused("peer", Permission::Authenticated, refusal);
        }
        r
    }

    /// Counts and logs (at debug: a scanner must not flood the log) a
    /// refusal.
    pub fn refused(&self, server: &'static str, needs: Permission, refusal: &Refusal) {
        self.inner
            .metrics
            .api
            .auth_refusals
            .get_or_create(&RefusalLabels {
                server,
                code: refusal.label(),
                permission: needs.label(),
            })
            .inc();
        tracing::debug!(
            server,
            code = refusal.label(),
            message = refusal.message(),
            "request refused"
        );
    }

    /// The roles `principal` holds, for `Auth.Status` (`admin` for nodes
    /// and founding administrators).
    pub fn roles_of(&self, principal: &Principal) -> BTreeSet<Role> {
        match principal {
            Principal::Anonymous => BTreeSet::new(),
            Principal::Node(_) => [Role::Admin].into(),
            Principal::User { name, .. } if self.inner.root_users.contains(name) => {
                [Role::Admin].into()
            }
            Principal::User {
                via: Via::RootToken,
                ..
            } => [Role::Admin].into(),
            Principal::User { name, .. } => {
                let m = self.inner.store.read();
                m.state.auth().roles(name).cloned().unwrap_or_default()
            }
        }
    }

    /// The node runs without TLS.
    pub fn insecure(&self) -> bool {
        self.inner.insecure
    }
}

/// The authenticated caller of a request, as the guard left it in the
/// request's extensions (anonymous when there is none, e.g. in unit tests
/// that call a service directly).
pub fn principal_of<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous)
}

/// Which gRPC listener a [`GuardLayer`] stands in front of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Client and admin gRPC: users and nodes, per-method permissions.
    Client,
    /// Peer gRPC: nodes only.
    Peer,
}

/// Puts a [`Guard`] in front of a tonic server.
#[derive(Clone)]
pub struct GuardLayer {
    guard: Guard,
    gate: Gate,
}

impl GuardLayer {
    /// A layer for the `gate` listener.
    pub fn new(guard: Guard, gate: Gate) -> Self {
        GuardLayer { guard, gate }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GuardLayer`] wraps around a server.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    layer: GuardLayer,
}

impl<S, B, RB> tower::Service<Request<B>> for Guarded<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<RB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let none = PeerCert::None;
        let cert = req
            .extensions()
            .get::<PeerInfo>()
            .map_or(&none, |i| &i.cert);
        let guard = &self.layer.guard;
        let decided = match self.layer.gate {
            Gate::Peer => guard.admit_peer(cert),
            Gate::Client => {
                let path = req.uri().path();
                // A method the table does not know is for administrators
                // only (tonic then answers Unimplemented); the table test
                // keeps every real method in it.
                let needs = policy::permission_of(path).unwrap_or(Permission::Role(Role::Admin));
                guard.check("client", cert, req.headers(), needs, path)
            }
        };
        match decided {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Either::Right(self.inner.call(req))
            }
            Err(refusal) => Either::Left(ready(Ok(
                crate::api::status::refusal_status(&refusal).into_http()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Ok(Some("abc")));
        h.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Ok(Some("abc")));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            h.insert(http::header::AUTHORIZATION, bad.parse().unwrap());
            assert!(bearer(&h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_digests_are_sha256() {
        assert_eq!(
            hex::encode(token_digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
