//! Turning what a user types (`127.0.0.1:7201`, `https://node1:7201`) into a
//! URI tonic can dial, the lazy channel behind it (with TLS when the client
//! has a CA to trust), and the [`Transport`] that adds the caller's bearer
//! token to every request.

use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::ClientError;

/// How a client proves who the cluster is, and who it is: the cluster's CA
/// (to check every node's certificate) and, optionally, a client
/// certificate and key (PEM).
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA in `ca_pem`; presents no certificate (use a token).
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        ClientTls {
            ca_pem: ca_pem.into(),
            identity: None,
        }
    }

    /// Also presents this client certificate and key.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Reads the CA and, when both are given, a client certificate and key
    /// from files; errors name the file.
    pub fn from_files(
        ca: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, ClientError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                ClientError::InvalidArgument(format!("{what} {}: {e}", p.display()).into())
            })
        };
        let mut tls = ClientTls::new(read("CA certificate", ca)?);
        if let Some((cert, key)) = cert_and_key {
            tls = tls.with_identity(read("client certificate", cert)?, read("client key", key)?);
        }
        Ok(tls)
    }

    fn config(&self) -> ClientTlsConfig {
        let c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => c.identity(Identity::from_pem(cert, key)),
            None => c,
        }
    }
}

/// Normalizes an endpoint for a plaintext client (`http://host:port`); see
/// [`parse_endpoint_for`].
pub fn parse_endpoint(raw: &str) -> Result<String, ClientError> {
    parse_endpoint_for(raw, false)
}

/// Normalizes an endpoint to `https://host:port` for a client with TLS
/// settings, `http://host:port` for one without.
///
/// Accepts `host:port` or a URL with the matching scheme (a trailing `/` is
/// dropped). The port is required: a silent default would only show up
/// later as "connection refused". A scheme that contradicts the client's
/// settings is refused now rather than failing later in a handshake, and
/// never silently downgraded to plaintext.
pub fn parse_endpoint_for(raw: &str, tls: bool) -> Result<String, ClientError> {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(ClientError::InvalidArgument("endpoint: empty".into()));
    }
    let scheme = if tls { "https" } else { "http" };
    let with_scheme = if let Some(rest) = trimmed.strip_prefix(&format!("{scheme}://")) {
        format!("{scheme}://{rest}")
    } else if trimmed.starts_with("https://") {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: https:// needs the cluster's CA certificate (--cacert or HERALD_CACERT)"
        ).into()));
    } else if trimmed.starts_with("http://") {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: plaintext http:// with TLS settings given; use https:// or host:port"
        ).into()));
    } else if trimmed.contains("://") {
        return Err(ClientError::InvalidArgument(
            format!("endpoint {raw:?}: only {scheme}:// endpoints are supported").into(),
        ));
    } else {
        format!("{scheme}://{trimmed}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| ClientError::InvalidArgument(format!("endpoint {raw:?}: {e}").into()))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(ClientError::InvalidArgument(
            format!("endpoint {raw:?}: missing host").into(),
        ));
    }
    if uri.port_u16().is_none() {
        return Err(ClientError::InvalidArgument(
            format!("endpoint {raw:?}: missing port (expected host:port)").into(),
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(ClientError::InvalidArgument(
            format!("endpoint {raw:?}: unexpected path").into(),
        ));
    }
    Ok(with_scheme)
}

/// Settings every channel of a client shares.
#[derive(Clone, Debug)]
pub(crate) struct ChannelSettings {
    pub connect_timeout: Duration,
    pub keep_alive_interval: Duration,
    pub tls: Option<ClientTls>,
    /// `Bearer <token>`, sent with every request.
    pub authorization: Option<http::HeaderValue>,
}

impl ChannelSettings {
    /// Normalizes `raw` for these settings (https when TLS is on).
    pub fn parse(&self, raw: &str) -> Result<String, ClientError> {
        parse_endpoint_for(raw, self.tls.is_some())
    }
}

/// A node's channel with the client's credentials: tonic's lazy channel
/// (TLS when the client has a CA), and the bearer token, if any, in the
/// `authorization` header of every request. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Transport {
    channel: Channel,
    authorization: Option<http::HeaderValue>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tonic::codegen::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(v) = &self.authorization {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, v.clone());
        }
        self.channel.call(req)
    }
}

/// A lazy channel: nothing is dialed until the first call, so a client can be
/// built while some nodes are down, and tonic reconnects by itself after a
/// node comes back.
///
/// HTTP/2 keep-alive pings also run while idle so that a watch stream on a
/// paused or partitioned node fails within a few seconds instead of hanging
/// forever; the per-call timeout covers unary calls.
pub(crate) fn lazy_channel(
    uri: &str,
    settings: &ChannelSettings,
) -> Result<Transport, ClientError> {
    let mut endpoint = Endpoint::from_shared(uri.to_string())
        .map_err(|e| ClientError::InvalidArgument(format!("endpoint {uri:?}: {e}").into()))?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(settings.keep_alive_interval)
        .keep_alive_timeout(settings.keep_alive_interval * 2)
        .keep_alive_while_idle(true);
    if let Some(tls) = &settings.tls {
        endpoint = endpoint
            .tls_config(tls.config())
            .map_err(|e| ClientError::InvalidArgument(format!("TLS settings: {e}").into()))?;
    }
    Ok(Transport {
        channel: endpoint.connect_lazy(),
        authorization: settings.authorization.clone(),
    })
}

/// The `Herald` stub over `channel`, reading and sending messages up to
/// [`crate::MAX_MESSAGE_BYTES`] (tonic's default is 4 MiB for reading).
pub(crate) fn herald(channel: Transport) -> crate::proto::herald_client::HeraldClient<Transport> {
    crate::proto::herald_client::HeraldClient::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

/// The `Admin` stub over `channel`, with the same limits as [`herald`].
pub(crate) fn admin(channel: Transport) -> crate::proto::admin_client::AdminClient<Transport> {
    crate::proto::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

/// The `Share` stub over `channel`, with the same limits as [`herald`].
pub(crate) fn share(channel: Transport) -> crate::proto::share_client::ShareClient<Transport> {
    crate::proto::share_client::ShareClient::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

/// The `Auth` stub over `channel`, with the same limits as [`herald`].
pub(crate) fn auth(channel: Transport) -> crate::proto::auth_client::AuthClient<Transport> {
    crate::proto::auth_client::AuthClient::new(channel)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_a_scheme() {
        assert_eq!(
            parse_endpoint("127.0.0.1:7201").ok().as_deref(),
            Some("http://127.0.0.1:7201")
        );
        assert_eq!(
            parse_endpoint(" node1:7202 ").ok().as_deref(),
            Some("http://node1:7202")
        );
        assert_eq!(
            parse_endpoint("[::1]:7203").ok().as_deref(),
            Some("http://[::1]:7203")
        );
    }

    #[test]
    fn http_urls_are_kept() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:7201/").ok().as_deref(),
            Some("http://127.0.0.1:7201")
        );
    }

    #[test]
    fn tls_clients_dial_https_and_never_downgrade() {
        assert_eq!(
            parse_endpoint_for("127.0.0.1:7201", true).ok().as_deref(),
            Some("https://127.0.0.1:7201")
        );
        assert_eq!(
            parse_endpoint_for("https://n1:7201/", true).ok().as_deref(),
            Some("https://n1:7201")
        );
        for bad in ["http://127.0.0.1:7201", "127.0.0.1"] {
            assert!(parse_endpoint_for(bad, true).is_err(), "{bad}");
        }
        let e = parse_endpoint_for("https://127.0.0.1:7201", false).unwrap_err();
        assert!(e.to_string().contains("HERALD_CACERT"), "{e}");
    }

    #[test]
    fn bad_endpoints_are_invalid_arguments() {
        for bad in [
            "",
            "  ",
            "127.0.0.1",
            "https://127.0.0.1:7201",
            "grpc://127.0.0.1:7201",
            "http://:7201",
            "127.0.0.1:notaport",
            "127.0.0.1:7201/path",
        ] {
            match parse_endpoint(bad) {
                Err(ClientError::InvalidArgument(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
