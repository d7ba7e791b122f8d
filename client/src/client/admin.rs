//! Admin calls: node and cluster status, membership changes, leader
//! transfer, snapshots, init, and the testing clock offset.

use super::*;

impl Client {
    /// `Admin.Status` of the node at `endpoint`, which need not be one of the
    /// client's endpoints. One attempt, no fail-over: the point is to ask
    /// that node.
    pub async fn status_of(&self, endpoint: &str) -> Result<proto::NodeStatus, ClientError> {
        let resp = self
            .call_on(
                endpoint,
                "Status",
                Effect::Read,
                proto::StatusRequest {},
                |ch, r| async move { crate::endpoint::admin(ch.channel).status(r).await },
            )
            .await?;
        required(resp.status, "Status", "status")
    }

    /// The cluster's members as any node sees them, and the leader it knows.
    pub async fn members(&self) -> Result<proto::MembersResponse, ClientError> {
        self.call(
            "Members",
            Effect::Read,
            proto::MembersRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).members(r).await },
        )
        .await
    }

    /// The members (from any node), then the status of every member asked
    /// at its own client address, concurrently. A member that does not
    /// answer is reported with its error, not turned into a failure of the
    /// whole call.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let members = self.members().await?;
        let statuses = futures::future::join_all(
            members
                .members
                .iter()
                .map(|m| self.status_of(&m.client_addr)),
        )
        .await;
        Ok(ClusterStatus {
            leader_id: members.leader_id,
            members: members
                .members
                .into_iter()
                .zip(statuses)
                .map(|(member, status)| MemberStatus { member, status })
                .collect(),
        })
    }

    /// Adds a node as a non-voting learner; it catches up from the leader.
    pub async fn add_learner(
        &self,
        member: proto::Member,
    ) -> Result<proto::AdminResponse, ClientError> {
        let req = proto::AddLearnerRequest {
            member: Some(member),
        };
        self.call("AddLearner", Effect::Write, req, |ch, r| async move {
            crate::endpoint::admin(ch.channel).add_learner(r).await
        })
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<proto::AdminResponse, ClientError> {
        self.call(
            "Promote",
            Effect::Write,
            proto::PromoteRequest { id },
            |ch, r| async move { crate::endpoint::admin(ch.channel).promote(r).await },
        )
        .await
    }

    /// Removes a node from the cluster (voter or learner).
    pub async fn remove(&self, id: u64) -> Result<proto::AdminResponse, ClientError> {
        self.call(
            "Remove",
            Effect::Write,
            proto::RemoveRequest { id },
            |ch, r| async move { crate::endpoint::admin(ch.channel).remove(r).await },
        )
        .await
    }

    /// Sets the voter set in one joint-consensus change.
    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
    ) -> Result<proto::AdminResponse, ClientError> {
        let req = proto::ChangeMembershipRequest { voters };
        self.call("ChangeMembership", Effect::Write, req, |ch, r| async move {
            crate::endpoint::admin(ch.channel)
                .change_membership(r)
                .await
        })
        .await
    }

    /// Asks the leader to hand leadership to node `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<proto::AdminResponse, ClientError> {
        let req = proto::TransferLeaderRequest { to };
        self.call("TransferLeader", Effect::Write, req, |ch, r| async move {
            crate::endpoint::admin(ch.channel).transfer_leader(r).await
        })
        .await
    }

    /// Builds a snapshot on whichever node answers (then that node purges
    /// its log up to it).
    pub async fn snapshot(&self) -> Result<proto::AdminResponse, ClientError> {
        self.call(
            "Snapshot",
            Effect::Write,
            proto::SnapshotRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).snapshot(r).await },
        )
        .await
    }

    /// Opens a backup stream (`Admin.SnapshotSave`) on the first endpoint
    /// that answers, trying each once. The timeout bounds only the wait for
    /// the response headers: a large state takes longer to stream, and a
    /// grpc-timeout would end the stream on the server. A stream that
    /// breaks is not resumed; save again.
    pub async fn snapshot_save(
        &self,
    ) -> Result<tonic::Streaming<proto::SnapshotChunk>, ClientError> {
        let config = self.config().clone();
        let mut last_error = String::from("no endpoint");
        for _ in 0..self.shared.endpoints.len() {
            let index = self.preferred();
            let (uri, channel) = self.target(index);
            let uri = uri.to_string();
            let opened = tokio::time::timeout(
                config.request_timeout,
                crate::endpoint::admin(channel).snapshot_save(proto::SnapshotSaveRequest {}),
            )
            .await;
            match opened {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => match classify(&status) {
                    Outcome::Definite => return Err(status.into()),
                    _ => last_error = format!("{uri}: {}", describe(&status)),
                },
                Err(_) => {
                    last_error = format!("{uri}: no answer within {:?}", config.request_timeout)
                }
            }
            self.move_preference_from(index);
        }
        Err(ClientError::Unavailable(
            format!("SnapshotSave: no endpoint answered; last error from {last_error}").into(),
        ))
    }

    /// Founds the cluster on the node at `endpoint` (see `InitRequest` in
    /// the proto): once, on a founding node. One attempt; `Unavailable`
    /// while a founding node cannot be reached yet.
    pub async fn init_on(&self, endpoint: &str) -> Result<proto::InitResponse, ClientError> {
        self.call_on(
            endpoint,
            "Init",
            Effect::Write,
            proto::InitRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).init(r).await },
        )
        .await
    }

    /// Builds a snapshot on the node at `endpoint`. One attempt.
    pub async fn snapshot_on(&self, endpoint: &str) -> Result<proto::AdminResponse, ClientError> {
        self.call_on(
            endpoint,
            "Snapshot",
            Effect::Write,
            proto::SnapshotRequest {},
            |ch, r| async move { crate::endpoint::admin(ch.channel).snapshot(r).await },
        )
        .await
    }

    /// Sets (or, with `relative`, shifts) the cluster-clock offset of the
    /// node at `endpoint`: the test and chaos hook for clock skew. One attempt.
    pub async fn set_clock_offset_on(
        &self,
        endpoint: &str,
        offset_ms: i64,
        relative: bool,
    ) -> Result<proto::AdminResponse, ClientError> {
        self.call_on(
            endpoint,
            "SetClockOffset",
            Effect::Write,
            proto::SetClockOffsetRequest {
                offset_ms,
                relative,
            },
            |ch, r| async move { crate::endpoint::admin(ch.channel).set_clock_offset(r).await },
        )
        .await
    }
}
