//! A small hubbub client: the HTTP auth calls and a WebSocket that splits newline-batched
//! frames. The CLI (`hubbub send`, `hubbub listen`), the end-to-end tests and `hubbub bench
//! chat` all speak the protocol through it.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hubbub_protocol::http::{AuthResponse, HttpError};
use hubbub_protocol::{ClientFrame, Request, ServerFrame, UserRef};
use std::collections::VecDeque;
use tokio_tungstenite::tungstenite::Message;

/// The HTTP side of a hubbub server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// A failed HTTP call: the status and the protocol error body.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {code} ({message})")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The protocol error code.
    pub code: String,
    /// Its message.
    pub message: String,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:7700`).
    pub fn new(base: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post_auth(&self, path: &str, body: serde_json::Value) -> anyhow::Result<AuthResponse> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .context("connecting to the server")?;
        decode(resp).await
    }

    /// `POST /v1/auth/signup`.
    pub async fn signup(&self, handle: &str, password: &str) -> anyhow::Result<AuthResponse> {
        self.post_auth(
            "/v1/auth/signup",
            serde_json::json!({"handle": handle, "password": password}),
        )
        .await
    }

    /// `POST /v1/auth/login`.
    pub async fn login(&self, handle: &str, password: &str) -> anyhow::Result<AuthResponse> {
        self.post_auth(
            "/v1/auth/login",
            serde_json::json!({"handle": handle, "password": password}),
        )
        .await
    }

    /// `POST /v1/auth/refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> anyhow::Result<AuthResponse> {
        self.post_auth(
            "/v1/auth/refresh",
            serde_json::json!({"refresh_token": refresh_token}),
        )
        .await
    }

    /// `GET /v1/users/{handle}`.
    pub async fn user(&self, token: &str, handle: &str) -> anyhow::Result<UserRef> {
        let resp = self
            .http
            .get(format!("{}/v1/users/{handle}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        decode(resp).await
    }

    /// `POST /v1/admin/apikeys` with an admin key: a new key (shown this once).
    pub async fn create_api_key(
        &self,
        admin_key: &str,
        name: &str,
        scopes: &[String],
    ) -> anyhow::Result<hubbub_protocol::admin::CreatedApiKey> {
        let resp = self
            .http
            .post(format!("{}/v1/admin/apikeys", self.base))
            .bearer_auth(admin_key)
            .json(&serde_json::json!({"name": name, "scopes": scopes}))
            .send()
            .await
            .context("connecting to the server")?;
        decode(resp).await
    }

    /// `GET /v1/admin/config` with an admin key.
    pub async fn runtime_config(
        &self,
        admin_key: &str,
    ) -> anyhow::Result<hubbub_protocol::admin::VersionedConfig> {
        let resp = self
            .http
            .get(format!("{}/v1/admin/config", self.base))
            .bearer_auth(admin_key)
            .send()
            .await
            .context("connecting to the server")?;
        decode(resp).await
    }

    /// `PUT /v1/admin/config` with an admin key: the new version.
    pub async fn put_runtime_config(
        &self,
        admin_key: &str,
        version: u64,
        config: &hubbub_protocol::admin::RuntimeConfig,
    ) -> anyhow::Result<u64> {
        let resp = self
            .http
            .put(format!("{}/v1/admin/config", self.base))
            .bearer_auth(admin_key)
            .json(&serde_json::json!({"version": version, "config": config}))
            .send()
            .await
            .context("connecting to the server")?;
        let put: hubbub_protocol::admin::PutConfigResponse = decode(resp).await?;
        Ok(put.version)
    }

    /// Open `/v1/ws` with a bearer token and read `hello`.
    pub async fn connect(&self, token: &str) -> anyhow::Result<(Socket, ServerFrame)> {
        let url = format!("{}/v1/ws", self.base.replacen("http", "ws", 1));
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .context("opening the WebSocket")?;
        let mut socket = Socket {
            ws,
            buffered: VecDeque::new(),
            next_id: 0,
            close_code: None,
        };
        let hello = socket.next_frame().await?.context("closed before hello")?;
        if !matches!(hello, ServerFrame::Hello { .. }) {
            bail!("expected hello, got {hello:?}");
        }
        Ok((socket, hello))
    }
}

async fn decode<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).context("decoding the reply");
    }
    match serde_json::from_slice::<HttpError>(&bytes) {
        Ok(e) => Err(ApiError {
            status: status.as_u16(),
            code: e.error.code.to_string(),
            message: e.error.message,
        }
        .into()),
        Err(_) => bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected WebSocket session.
pub struct Socket {
    ws: Ws,
    buffered: VecDeque<ServerFrame>,
    next_id: u64,
    /// The close code the server sent, once it closed.
    close_code: Option<u16>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("buffered", &self.buffered.len())
            .finish()
    }
}

impl Socket {
    /// The next server frame; `None` when the server closed the connection.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        loop {
            if let Some(f) = self.buffered.pop_front() {
                return Ok(Some(f));
            }
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    for line in text.split('\n').filter(|l| !l.is_empty()) {
                        self.buffered.push_back(
                            serde_json::from_str(line)
                                .with_context(|| format!("bad frame {line}"))?,
                        );
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    return Ok(None);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The close code the server sent (4000: disconnected by the server, 4001: the token
    /// expired or was revoked, 1013: too slow), once `next_frame` has returned `None`.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Send raw text (one or more frames).
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Send a request without an id (fire and forget).
    pub async fn send(&mut self, request: Request) -> anyhow::Result<()> {
        self.send_text(&ClientFrame { id: None, request }.to_json())
            .await
    }

    /// Send a request with a fresh id and wait for its reply; other frames that arrive
    /// meanwhile are kept for `next_frame`.
    pub async fn request(&mut self, request: Request) -> anyhow::Result<ServerFrame> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send_text(
            &ClientFrame {
                id: Some(id.clone()),
                request,
            }
            .to_json(),
        )
        .await?;
        let mut other = VecDeque::new();
        let reply = loop {
            let Some(frame) = self.next_frame().await? else {
                bail!("connection closed before the reply")
            };
            match &frame {
                ServerFrame::Ok { id: rid, .. } | ServerFrame::Error { id: Some(rid), .. }
                    if *rid == id =>
                {
                    break frame;
                }
                _ => other.push_back(frame),
            }
        };
        other.extend(self.buffered.drain(..));
        self.buffered = other;
        Ok(reply)
    }

    /// Close the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
