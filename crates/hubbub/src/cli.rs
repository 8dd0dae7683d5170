//! The CLI client: `hubbub signup`, `login`, `send`, `reply`, `edit`, `react`, `listen`. The
//! profile file keeps the server, the tokens and the last seq `listen` processed, so `listen`
//! resumes where it left.

use crate::client::{ApiError, Client, Socket};
use anyhow::{Context, bail};
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the CLI remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The server's base URL.
    pub server: String,
    /// The user's id.
    pub user_id: String,
    /// The user's handle.
    pub handle: String,
    /// Access token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: String,
    /// The last seq `listen` processed.
    #[serde(default)]
    pub last_seq: u64,
}

/// The default profile path: `$HOME/.config/hubbub/profile.json`.
pub fn default_profile() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config").join("hubbub").join("profile.json")
}

fn load(path: &Path) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no profile at {}: run `hubbub signup` or `hubbub login` first",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

fn save(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(profile)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `hubbub signup` / `hubbub login`: authenticate and save the profile.
pub async fn authenticate(
    server: &str,
    profile: &Path,
    handle: &str,
    password: &str,
    signup: bool,
) -> anyhow::Result<()> {
    let client = Client::new(server);
    let auth = if signup {
        client.signup(handle, password).await?
    } else {
        client.login(handle, password).await?
    };
    let last_seq = load(profile)
        .ok()
        .filter(|p| p.user_id == auth.user.id)
        .map(|p| p.last_seq)
        .unwrap_or(0);
    save(
        profile,
        &Profile {
            server: server.to_owned(),
            user_id: auth.user.id.clone(),
            handle: auth.user.handle.clone(),
            access_token: auth.access_token,
            refresh_token: auth.refresh_token,
            last_seq,
        },
    )?;
    println!(
        "{} as @{} ({}); profile saved to {}",
        if signup { "signed up" } else { "logged in" },
        auth.user.handle,
        auth.user.id,
        profile.display()
    );
    Ok(())
}

/// Connect with the saved token, refreshing it once if it expired.
async fn connect(path: &Path, profile: &mut Profile) -> anyhow::Result<(Client, Socket, u64)> {
    let client = Client::new(&profile.server);
    let connected = match client.connect(&profile.access_token).await {
        Ok(c) => c,
        Err(_) => {
            let auth = client
                .refresh(&profile.refresh_token)
                .await
                .map_err(|e| match e.downcast_ref::<ApiError>() {
                    Some(api) if api.status == 401 => {
                        anyhow::anyhow!("session expired: run `hubbub login` again")
                    }
                    _ => e,
                })?;
            profile.access_token = auth.access_token;
            profile.refresh_token = auth.refresh_token;
            save(path, profile)?;
            client.connect(&profile.access_token).await?
        }
    };
    let (socket, hello) = connected;
    let ServerFrame::Hello { last_seq, .. } = hello else {
        bail!("expected hello")
    };
    Ok((client, socket, last_seq))
}

fn expect_ok(reply: ServerFrame) -> anyhow::Result<ReplyData> {
    match reply {
        ServerFrame::Ok { data, .. } => Ok(data),
        ServerFrame::Error { code, message, .. } => bail!("{code}: {message}"),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// A conversation id, or `@handle` for the direct conversation with that user (created if
/// needed).
async fn conversation_of(
    client: &Client,
    socket: &mut Socket,
    profile: &Profile,
    target: &str,
) -> anyhow::Result<String> {
    let Some(handle) = target.strip_prefix('@') else {
        return Ok(target.to_owned());
    };
    let other = client.user(&profile.access_token, handle).await?;
    let reply = socket
        .request(Request::ConversationCreate {
            kind: ConversationKind::Direct,
            members: vec![other.id],
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        })
        .await?;
    match expect_ok(reply)? {
        ReplyData::Conversation { conversation } => Ok(conversation.id),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// `hubbub send <conversation-id|@handle> <text>`.
pub async fn send(path: &Path, target: &str, text: &str) -> anyhow::Result<()> {
    send_message(path, target, text, None, false).await
}

/// `hubbub reply <conversation-id|@handle> <message-id> <text> [--thread]`: a reply to a
/// message; with `thread`, also in that message's thread.
pub async fn reply(
    path: &Path,
    target: &str,
    message: &str,
    text: &str,
    thread: bool,
) -> anyhow::Result<()> {
    send_message(path, target, text, Some(message), thread).await
}

async fn send_message(
    path: &Path,
    target: &str,
    text: &str,
    reply_to: Option<&str>,
    thread: bool,
) -> anyhow::Result<()> {
    let mut profile = load(path)?;
    let (client, mut socket, _) = connect(path, &mut profile).await?;
    let conversation = conversation_of(&client, &mut socket, &profile, target).await?;
    let client_msg_id = hubbub_store::new_id("cli-")?;
    let reply = socket
        .request(Request::MessageSend {
            conversation: conversation.clone(),
            client_msg_id,
            text: text.to_owned(),
            attachments: None,
            reply_to: reply_to.map(str::to_owned),
            thread: reply_to.filter(|_| thread).map(str::to_owned),
            mentions: None,
        })
        .await?;
    match expect_ok(reply)? {
        ReplyData::Message { message } => println!("sent {} to {}", message.id, conversation),
        other => bail!("unexpected reply {other:?}"),
    }
    socket.close().await;
    Ok(())
}

/// `hubbub edit <conversation-id|@handle> <message-id> <text>`: edit one's own message.
pub async fn edit(path: &Path, target: &str, message: &str, text: &str) -> anyhow::Result<()> {
    let mut profile = load(path)?;
    let (client, mut socket, _) = connect(path, &mut profile).await?;
    let conversation = conversation_of(&client, &mut socket, &profile, target).await?;
    let reply = socket
        .request(Request::MessageEdit {
            conversation: conversation.clone(),
            message: message.to_owned(),
            text: text.to_owned(),
        })
        .await?;
    match expect_ok(reply)? {
        ReplyData::Message { message } => println!("edited {} in {}", message.id, conversation),
        other => bail!("unexpected reply {other:?}"),
    }
    socket.close().await;
    Ok(())
}

/// `hubbub react <conversation-id|@handle> <message-id> <emoji> [--remove]`: add (or take
/// back) a reaction; prints the message's reactions.
pub async fn react(
    path: &Path,
    target: &str,
    message: &str,
    emoji: &str,
    remove: bool,
) -> anyhow::Result<()> {
    let mut profile = load(path)?;
    let (client, mut socket, _) = connect(path, &mut profile).await?;
    let conversation = conversation_of(&client, &mut socket, &profile, target).await?;
    let (conversation, message, emoji) = (conversation, message.to_owned(), emoji.to_owned());
    let request = if remove {
        Request::ReactionRemove {
            conversation,
            message,
            emoji,
        }
    } else {
        Request::ReactionAdd {
            conversation,
            message,
            emoji,
        }
    };
    match expect_ok(socket.request(request).await?)? {
        ReplyData::Reactions { reactions } => {
            let summary: Vec<String> = reactions
                .iter()
                .map(|r| format!("{} {}", r.emoji, r.count))
                .collect();
            println!("reactions: {}", summary.join(", "));
        }
        other => bail!("unexpected reply {other:?}"),
    }
    socket.close().await;
    Ok(())
}

/// `hubbub listen`: print events as JSON lines, resuming from the last seq processed.
pub async fn listen(path: &Path, count: Option<u64>) -> anyhow::Result<()> {
    let mut profile = load(path)?;
    let (_, mut socket, _) = connect(path, &mut profile).await?;
    let after_seq = profile.last_seq;
    socket
        .send_text(
            &serde_json::json!({"type": "sync", "id": "resume", "after_seq": after_seq})
                .to_string(),
        )
        .await?;
    let mut printed = 0u64;
    while let Some(frame) = socket.next_frame().await? {
        match &frame {
            ServerFrame::Ok {
                id,
                data: ReplyData::Sync {
                    truncated: true, ..
                },
            } if id == "resume" => {
                eprintln!("note: events older than the retention window are gone; reload state");
                continue;
            }
            ServerFrame::Ok { .. } | ServerFrame::Hello { .. } | ServerFrame::Timeline { .. } => {
                continue;
            }
            _ => {}
        }
        println!("{}", frame.to_json());
        if let Some(seq) = frame.seq() {
            profile.last_seq = seq;
            save(path, &profile)?;
            socket.send(Request::Ack { seq }).await?;
        }
        printed += 1;
        if count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    Ok(())
}
