//! OpenTelemetry export end to end: an in-process OTLP/gRPC collector (the
//! `TraceService` from `opentelemetry-proto`, served by tonic) receives the
//! spans of three real node processes pointed at it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`. A write sent to a follower must show up
//! from both nodes it touched, in one trace, under the request id the
//! client chose: the follower's `request` and `forward`, the leader's
//! `request` and `raft.propose`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::common::TestCluster;
use ::herald_client::proto::LoginRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span, flattened.
#[derive(Clone, Debug)]
struct Received {
    node: String,
    name: String,
    trace_id: Vec<u8>,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().expect("collector lock");
        for rs in req.into_inner().resource_spans {
            let resource = text(
                rs.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or(&[]),
            );
            let node = resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Received {
                        node: node.clone(),
                        name: s.name.clone(),
                        trace_id: s.trace_id.clone(),
                        attrs: text(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_one_trace_across_both_nodes() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let c = TestCluster::start_with_env(
        3,
        crate::common::timings(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Export batches quickly instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let leader = c.wait_leader().await;
    let follower = c
        .alive()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");

    let request_id = format!("trace-{:x}", rand::random::<u64>());
    let mut req = tonic::Request::new(LoginRequest {
        uid: "traced".into(),
        sid: 1,
        client_type: "pc".into(),
        accept_strangers: false,
        ext: HashMap::new(),
        ttl_ms: 0,
        connection_id: String::new(),
    });
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().expect("ascii"));
    c.client(follower).login(req).await.expect("login");

    let (f, l) = (follower.to_string(), leader.to_string());
    let spans = c
        .wait_for("the write's spans from follower and leader", || async {
            let spans = collector.spans.lock().expect("collector lock").clone();
            let of_request: Vec<&Received> = spans
                .iter()
                .filter(|s| s.attrs.get("request_id") == Some(&request_id))
                .collect();
            let follower_request = of_request.iter().find(|s| s.node == f)?;
            let trace = follower_request.trace_id.clone();
            let in_trace = |node: &str, name: &str| {
                spans
                    .iter()
                    .any(|s| s.node == node && s.name == name && s.trace_id == trace)
            };
            // The leader's peer request carries the same id and trace; its
            // propose span records the log index.
            let leader_request = of_request
                .iter()
                .any(|s| s.node == l && s.trace_id == trace);
            let leader_propose = spans.iter().any(|s| {
                s.node == l
                    && s.name == "raft.propose"
                    && s.trace_id == trace
                    && s.attrs.contains_key("index")
            });
            (leader_request && leader_propose && in_trace(&f, "forward")).then_some(spans)
        })
        .await;
    // The third node took no part in the request.
    let other = c
        .alive()
        .into_iter()
        .find(|id| *id != leader && *id != follower)
        .expect("third node")
        .to_string();
    assert!(
        !spans
            .iter()
            .any(|s| s.node == other && s.attrs.get("request_id") == Some(&request_id)),
        "node {other} reported a span for a request it never saw"
    );
    eprintln!(
        "{} spans received; of the write: {:?}",
        spans.len(),
        spans
            .iter()
            .filter(|s| s.trace_id
                == spans
                    .iter()
                    .find(|s| s.attrs.get("request_id") == Some(&request_id))
                    .map(|s| s.trace_id.clone())
                    .unwrap_or_default())
            .map(|s| (s.node.as_str(), s.name.as_str()))
            .collect::<Vec<_>>()
    );
    server.abort();
}
