//! Turning what a user types (`127.0.0.1:7201`, `http://node1:7201`) into a
//! URI tonic can dial, and the lazy channel behind it.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::ClientError;

/// Normalizes an endpoint to `http://host:port`.
///
/// Accepts `host:port` or `http://host:port` (a trailing `/` is dropped).
/// The port is required: a silent default of 80 would only show up later as
/// "connection refused". `https://` is refused because this client is built
/// without TLS; saying so now beats a confusing handshake error.
pub fn parse_endpoint(raw: &str) -> Result<String, ClientError> {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(ClientError::InvalidArgument("endpoint: empty".into()));
    }
    let with_scheme = if let Some(rest) = trimmed.strip_prefix("http://") {
        format!("http://{rest}")
    } else if trimmed.starts_with("https://") {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: TLS is not supported, use http://"
        )));
    } else if trimmed.contains("://") {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: only http:// endpoints are supported"
        )));
    } else {
        format!("http://{trimmed}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| ClientError::InvalidArgument(format!("endpoint {raw:?}: {e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: missing host"
        )));
    }
    if uri.port_u16().is_none() {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: missing port (expected host:port)"
        )));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(ClientError::InvalidArgument(format!(
            "endpoint {raw:?}: unexpected path"
        )));
    }
    Ok(with_scheme)
}

/// Settings every channel of a client shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelSettings {
    pub connect_timeout: Duration,
    pub keep_alive_interval: Duration,
}

/// A lazy channel: nothing is dialed until the first call, so a client can be
/// built while some nodes are down, and tonic reconnects by itself after a
/// node comes back.
///
/// HTTP/2 keep-alive pings also run while idle so that a watch stream on a
/// paused or partitioned node fails within a few seconds instead of hanging
/// forever; the per-call timeout covers unary calls.
pub(crate) fn lazy_channel(uri: &str, settings: ChannelSettings) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(uri.to_string())
        .map_err(|e| ClientError::InvalidArgument(format!("endpoint {uri:?}: {e}")))?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(settings.keep_alive_interval)
        .keep_alive_timeout(settings.keep_alive_interval * 2)
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
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
