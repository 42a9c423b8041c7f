//! Opening one Stream connection: `connections/open` for a fresh single-use ticket, then
//! TCP (through the proxy's CONNECT when `proxy` is set), TLS for `wss://`, and the WebSocket
//! handshake on `{endpoint}?ticket=…`. Every step is bounded in time and size, and neither the
//! secret nor the ticket reaches an error or a log line (see docs/dingtalk.md#stream-mode).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use super::frame::{BOT_TOPIC, CARD_TOPIC};
use crate::config::{DingTalkSettings, ProxyAddr};
use crate::dingtalk::ApiError;

/// Largest WebSocket message (and frame) read; DingTalk's robot frames are a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest `connections/open` answer read.
const MAX_OPEN_ANSWER_BYTES: usize = 64 * 1024;
/// Largest answer head of a proxy's CONNECT.
const MAX_PROXY_HEAD_BYTES: usize = 8 * 1024;
/// Time for the proxy exchange, TLS and the WebSocket handshake together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream a WebSocket runs on: plain TCP or TLS, maybe through a proxy tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open Stream connection.
pub type Socket = WebSocketStream<Box<dyn Io>>;

/// Why a connection could not be opened. No variant carries the secret or the ticket.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// `connections/open` answered 401 or 403: the credentials (or the app's mode) are wrong.
    #[error(
        "connections/open refused with HTTP {status} ({code}): check `app_key` and `app_secret`, and that the app's robot receives messages in Stream mode"
    )]
    Refused { status: u16, code: String },
    /// Any other failure of `connections/open`.
    #[error("connections/open failed: {0}")]
    Open(String),
    /// TCP, the proxy, TLS or the WebSocket handshake failed.
    #[error("connecting to {host} failed: {reason}")]
    Connect { host: String, reason: String },
    /// `connections/open` handed out a `ws://` endpoint off loopback: the ticket would
    /// travel in clear, so no connection is tried.
    #[error(
        "connections/open answered an unencrypted endpoint ws://{host}: refused, the ticket would travel in clear (DingTalk hands out wss://; ws:// is taken on loopback only)"
    )]
    Insecure { host: String },
}

/// Why the way to the WebSocket (the proxy's tunnel, TLS, the handshake) failed; it becomes
/// the `reason` of [`DialError::Connect`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum HandshakeError {
    #[error("proxy: {0}")]
    ProxyWrite(String),
    #[error("proxy: answer head too long")]
    ProxyHeadTooLong,
    #[error("proxy closed the connection: {0}")]
    ProxyClosed(String),
    #[error("proxy refused the tunnel with HTTP {0}")]
    ProxyRefused(u16),
    #[error("proxy: the answer does not start with an HTTP/1.x status line")]
    ProxyNotHttp,
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    #[error("TLS: bad server name: {0}")]
    ServerName(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket handshake: {0}")]
    WebSocket(String),
}

impl DialError {
    /// The `reason` label of `dingops_stream_reconnects_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Refused { .. } => "open_refused",
            DialError::Open(_) => "open_failed",
            DialError::Connect { .. } => "connect_failed",
            DialError::Insecure { .. } => "insecure_endpoint",
        }
    }
}

/// A WebSocket endpoint and its single-use ticket, as `connections/open` answered.
pub struct Ticket {
    pub endpoint: Url,
    ticket: SecretString,
}

/// Opens Stream connections for one app.
pub struct Dialer {
    http: reqwest::Client,
    open_url: Url,
    app_key: String,
    app_secret: SecretString,
    proxy: Option<ProxyAddr>,
    connect_timeout: Duration,
    /// Whether connections also subscribe the card topic ([`Dialer::with_cards`]).
    cards: bool,
}

impl Dialer {
    pub fn new(settings: &DingTalkSettings) -> Result<Self, ApiError> {
        let base = settings.api_base.as_str().trim_end_matches('/');
        let open_url = Url::parse(&format!("{base}/v1.0/gateway/connections/open"))
            .map_err(|e| ApiError::Decode(format!("bad api_base: {e}")))?;
        Ok(Self {
            http: crate::dingtalk::http_client(settings)?,
            open_url,
            app_key: settings.app_key.clone(),
            app_secret: settings.app_secret.clone(),
            proxy: settings.proxy.clone(),
            connect_timeout: settings.upstream_connect_timeout(),
            cards: false,
        })
    }

    /// This dialer's connections also subscribe the clicks on cards' buttons
    /// ([`CARD_TOPIC`]) when `cards` (cards are on: `card_template_id` is set).
    #[must_use]
    pub fn with_cards(mut self, cards: bool) -> Self {
        self.cards = cards;
        self
    }

    /// What a connection subscribes: the robot topic, and the card topic with cards on.
    pub fn subscriptions(&self) -> Value {
        let mut topics = vec![json!({"type": "CALLBACK", "topic": BOT_TOPIC})];
        if self.cards {
            topics.push(json!({"type": "CALLBACK", "topic": CARD_TOPIC}));
        }
        Value::Array(topics)
    }

    /// A fresh ticket, then a connection with it.
    pub async fn dial(&self) -> Result<(Socket, Url), DialError> {
        let ticket = self.open().await?;
        let socket = self.connect(&ticket).await?;
        Ok((socket, ticket.endpoint))
    }

    /// `POST /v1.0/gateway/connections/open`: a ticket for one connection.
    pub async fn open(&self) -> Result<Ticket, DialError> {
        let mut body = json!({
            "clientId": self.app_key,
            "clientSecret": self.app_secret.expose_secret(),
            "subscriptions": self.subscriptions(),
            "ua": concat!("dingops/", env!("CARGO_PKG_VERSION")),
        });
        if let Some(ip) = self.local_ip().await {
            body["localIp"] = json!(ip.to_string());
        }
        let response = self
            .http
            .post(self.open_url.clone())
            // Without it DingTalk answers in XML.
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| DialError::Open(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let answer = read_limited(response).await?;
        if status == 401 || status == 403 {
            return Err(DialError::Refused {
                status,
                code: code_of(&answer),
            });
        }
        if !(200..300).contains(&status) {
            return Err(DialError::Open(format!("HTTP {status} ({})", code_of(&answer))));
        }
        let text = |name: &str| {
            answer
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (Some(endpoint), Some(ticket)) = (text("endpoint"), text("ticket")) else {
            return Err(DialError::Open("the answer has no endpoint or no ticket".into()));
        };
        let endpoint = Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some())
            .ok_or_else(|| DialError::Open("the endpoint is not a ws:// or wss:// URL".into()))?;
        if endpoint.scheme() == "ws" && !on_loopback(&endpoint) {
            let host = endpoint.host_str().unwrap_or_default();
            return Err(DialError::Insecure {
                host: host.chars().take(100).collect(),
            });
        }
        Ok(Ticket {
            endpoint,
            ticket: SecretString::from(ticket),
        })
    }

    /// The WebSocket on `ticket.endpoint`.
    pub async fn connect(&self, ticket: &Ticket) -> Result<Socket, DialError> {
        let endpoint = &ticket.endpoint;
        let host = endpoint.host_str().unwrap_or_default().to_owned();
        let fail = |reason: String| DialError::Connect {
            host: host.clone(),
            reason,
        };
        let tls = endpoint.scheme() == "wss";
        let port = endpoint
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let target = format!("{host}:{port}");
        let hop = self
            .proxy
            .as_ref()
            .map_or_else(|| target.clone(), ProxyAddr::authority);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&hop))
            .await
            .map_err(|_| {
                fail(format!(
                    "no TCP connection to {hop} within {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| fail(format!("TCP connection to {hop}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut url = endpoint.clone();
        url.query_pairs_mut()
            .append_pair("ticket", ticket.ticket.expose_secret());
        let handshake = async {
            let tcp = match &self.proxy {
                Some(_) => tunnel(tcp, &target).await?,
                None => tcp,
            };
            let io: Box<dyn Io> = if tls {
                Box::new(tls_wrap(tcp, &host).await?)
            } else {
                Box::new(tcp)
            };
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE_BYTES))
                .max_frame_size(Some(MAX_MESSAGE_BYTES));
            // tungstenite's errors name the status, never the request URL (which holds the ticket).
            tokio_tungstenite::client_async_with_config(url.as_str(), io, Some(config))
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| HandshakeError::WebSocket(e.to_string()))
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| fail(format!("no WebSocket within {HANDSHAKE_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))
    }

    /// The address this host would use towards DingTalk (or the proxy), for `localIp`. No
    /// packet is sent: a UDP socket is only pointed there.
    async fn local_ip(&self) -> Option<IpAddr> {
        let (host, port) = match &self.proxy {
            Some(p) => (p.host.trim_matches(['[', ']']).to_owned(), p.port),
            None => (
                self.open_url.host_str()?.trim_matches(['[', ']']).to_owned(),
                self.open_url.port_or_known_default()?,
            ),
        };
        let peer: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()?
            .next()?;
        let any: SocketAddr = if peer.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(any).await.ok()?;
        socket.connect(peer).await.ok()?;
        Some(socket.local_addr().ok()?.ip())
    }
}

/// Whether `url`'s host is this machine's loopback: `localhost`, 127.0.0.0/8 or ::1 (also
/// written as ::ffff:127.x.y.z).
fn on_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// `code` of a DingTalk error answer, for a log line (at most 100 characters).
fn code_of(answer: &Value) -> String {
    answer
        .get("code")
        .and_then(Value::as_str)
        .map(|c| c.chars().take(100).collect())
        .unwrap_or_else(|| "no code".into())
}

/// The answer as JSON (`Null` when it is not JSON), read up to the limit.
async fn read_limited(mut response: reqwest::Response) -> Result<Value, DialError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DialError::Open(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_OPEN_ANSWER_BYTES {
            return Err(DialError::Open(format!(
                "answer larger than {MAX_OPEN_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Asks the proxy on `tcp` for a tunnel to `target` (`host:port`) with HTTP CONNECT.
async fn tunnel(mut tcp: TcpStream, target: &str) -> Result<TcpStream, HandshakeError> {
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: dingops/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| HandshakeError::ProxyWrite(e.to_string()))?;
    // Byte by byte, so that nothing after the answer's head is taken from the tunnel.
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_HEAD_BYTES {
            return Err(HandshakeError::ProxyHeadTooLong);
        }
        let byte = tcp
            .read_u8()
            .await
            .map_err(|e| HandshakeError::ProxyClosed(e.to_string()))?;
        head.push(byte);
    }
    let status_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    match status_code(status_line) {
        Some(s) if (200..300).contains(&s) => Ok(tcp),
        Some(s) => Err(HandshakeError::ProxyRefused(s)),
        None => Err(HandshakeError::ProxyNotHttp),
    }
}

/// The code of an HTTP/1.x status line (`HTTP/1.1 200 Connection established`): the
/// version, one space, three digits, then the end or a space and the reason. Anything else
/// (another protocol, HTTP/2, text before the version) is `None`.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let (code, after) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !(after.is_empty() || after.starts_with(b" ")) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The TLS client configuration: rustls with the ring provider and the webpki roots, as
/// reqwest's `rustls-tls` uses for the API calls.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, HandshakeError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, HandshakeError>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| HandshakeError::TlsSetup(e.to_string()))
        })
        .clone()
}

async fn tls_wrap(
    tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HandshakeError> {
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| HandshakeError::ServerName(e.to_string()))?;
    tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| HandshakeError::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A proxy stand-in that answers `answer` to whatever it is sent first, then echoes.
    async fn fake_proxy(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(answer.as_bytes()).await.unwrap();
            let n = s.read(&mut buf).await.unwrap_or(0);
            let _ = s.write_all(&buf[..n]).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_tunnel_is_open_after_a_2xx_answer_and_nothing_of_it_is_lost() {
        let addr = fake_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let mut tcp = tunnel(tcp, "example.com:443").await.unwrap();
        tcp.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_refused_tunnel_names_the_status() {
        let addr = fake_proxy("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let err = tunnel(tcp, "example.com:443").await.unwrap_err();
        assert_eq!(err.to_string(), "proxy refused the tunnel with HTTP 403");
    }

    #[test]
    fn only_an_http_1_x_status_line_gives_a_status() {
        for (line, code) in [
            ("HTTP/1.1 200 Connection established", Some(200)),
            ("HTTP/1.0 200", Some(200)),
            ("HTTP/1.1 407 Proxy Authentication Required", Some(407)),
            ("HTTP/1.1 204 ", Some(204)),
            ("garbageHTTP/1.1 200 OK", None),
            (" HTTP/1.1 200 OK", None),
            ("FOO 200 OK", None),
            ("HTTP/2 200", None),
            ("HTTP/1.1 2000 OK", None),
            ("HTTP/1.1 20 OK", None),
            ("HTTP/1.1 2x0 OK", None),
            ("HTTP/1.1  200 OK", None),
            ("http/1.1 200 OK", None),
            ("", None),
        ] {
            assert_eq!(status_code(line.as_bytes()), code, "{line:?}");
        }
    }

    #[test]
    fn ws_is_taken_on_loopback_only() {
        for (url, loopback) in [
            ("ws://127.0.0.1:9000/connect", true),
            ("ws://127.9.8.7/connect", true),
            ("ws://localhost:9000/connect", true),
            ("ws://LOCALHOST/connect", true),
            ("ws://[::1]:9000/connect", true),
            ("ws://[::ffff:127.0.0.1]/connect", true),
            ("ws://10.0.0.1/connect", false),
            ("ws://wss-open-connection.dingtalk.com/connect", false),
            ("ws://localhost.example.com/connect", false),
            ("ws://128.0.0.1/connect", false),
            ("ws://[::2]/connect", false),
        ] {
            assert_eq!(on_loopback(&Url::parse(url).unwrap()), loopback, "{url}");
        }
    }

    #[test]
    fn the_card_topic_is_subscribed_beside_the_robot_topic_only_with_cards_on() {
        let env = [("DINGOPS_APP_KEY", "k"), ("DINGOPS_APP_SECRET", "s")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let settings = crate::config::Settings::from_sources(None, &env).unwrap();
        let robot = json!({"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"});
        let card = json!({"type": "CALLBACK", "topic": "/v1.0/card/instances/callback"});
        let dialer = Dialer::new(&settings.dingtalk).unwrap();
        assert_eq!(dialer.subscriptions(), json!([robot]));
        let dialer = dialer.with_cards(true);
        assert_eq!(dialer.subscriptions(), json!([robot, card]));
    }

    #[test]
    fn the_tls_configuration_builds() {
        assert!(tls_config().is_ok());
    }

    #[test]
    fn a_refusal_names_the_keys_and_never_a_value() {
        let e = DialError::Refused {
            status: 401,
            code: "Unauthorized".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("`app_key`") && text.contains("`app_secret`"),
            "{text}"
        );
        assert_eq!(e.reason(), "open_refused");
    }
}
