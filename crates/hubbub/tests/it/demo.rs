//! The demo web app (`/demo/`, examples/web) in two headless Chromiums, two users with their
//! own storage, signed up through the page: alice starts a chat with bob, they write, each
//! sees the other typing, the receipts and the presence; alice reloads while bob writes, and
//! every message shows exactly once; then a post, bob's like and comment, and "1 person is
//! writing a comment" on alice's page while bob types one. Waits poll the page's DOM with a
//! deadline; nothing asserts on time. Without Chromium the test says so and passes.
//!
//! With `HUBBUB_DEMO_SCREENSHOTS=<dir>` it saves screenshots there (docs/ holds them).

use crate::browser::Browser;
use crate::support::*;
use serde_json::{Value, json};

/// Where screenshots go, when set.
const SHOTS: &str = "HUBBUB_DEMO_SCREENSHOTS";

/// A JavaScript string literal.
fn js(s: &str) -> String {
    json!(s).to_string()
}

/// Type into an input as a user would for the app: the value, then an `input` event.
async fn fill(page: &mut Browser, selector: &str, value: &str) {
    page.eval(&format!(
        "(() => {{ const i = document.querySelector({}); i.value = {}; \
         i.dispatchEvent(new Event('input', {{ bubbles: true }})); return true; }})()",
        js(selector),
        js(value)
    ))
    .await;
}

/// Submit a form (with a given button, for the form with two).
async fn submit(page: &mut Browser, form: &str, button: Option<&str>) {
    let by = button.map_or("undefined".to_owned(), |b| {
        format!("document.querySelector({})", js(b))
    });
    page.eval(&format!(
        "document.querySelector({}).requestSubmit({by}); true",
        js(form)
    ))
    .await;
}

/// Sign up through the page and wait for the app to be connected.
async fn sign_up(page: &mut Browser, handle: &str) {
    page.until(
        "the sign-up form",
        "!document.querySelector('#auth').hidden",
    )
    .await;
    fill(page, "#handle", handle).await;
    fill(page, "#password", "correct horse battery").await;
    submit(page, "#auth-form", Some("#signup")).await;
    page.until(
        "the app, connected",
        "!document.querySelector('#app').hidden && \
         document.querySelector('#state').dataset.state === 'open'",
    )
    .await;
}

/// The texts of the open conversation's messages, in order, and their ids.
async fn messages(page: &mut Browser) -> (Vec<String>, Vec<String>) {
    let v = page
        .eval(
            "[...document.querySelectorAll('#messages li[data-id]')]
               .map((li) => [li.dataset.id, li.querySelector('.text').textContent])",
        )
        .await;
    let pairs: Vec<(String, String)> = serde_json::from_value(v).expect("pairs");
    pairs.into_iter().map(|(id, text)| (text, id)).unzip()
}

#[tokio::test]
async fn two_users_chat_and_engage_in_the_demo_app() {
    let s = server().await;
    // `/demo` redirects to `/demo/`, where the app's relative module paths work.
    let Some(mut a) = Browser::open(&format!("{}/demo", s.base)).await else {
        eprintln!("no chromium on this machine: the demo's browser test did not run");
        return;
    };
    let mut b = Browser::open(&format!("{}/demo/", s.base))
        .await
        .expect("a second chromium");
    sign_up(&mut a, "alice").await;
    sign_up(&mut b, "bob").await;

    // Alice starts a direct chat with bob and writes.
    fill(&mut a, "#new-chat-handle", "bob").await;
    submit(&mut a, "#new-chat", None).await;
    a.until(
        "the chat with bob",
        "document.querySelector('#chat-title').textContent === '@bob'",
    )
    .await;
    fill(&mut a, "#message-input", "hello bob").await;
    submit(&mut a, "#composer", None).await;

    // Bob's list shows the conversation, named, with one unread and the last message.
    b.until(
        "the conversation with alice, unread",
        "(() => { const li = document.querySelector('#conversations li');
           return li && li.querySelector('.title').textContent.endsWith('@alice')
             && li.querySelector('.unread')?.textContent === '1'
             && li.querySelector('.last').textContent === 'alice: hello bob'; })()",
    )
    .await;
    b.eval("document.querySelector('#conversations li').click(); true")
        .await;
    b.until(
        "alice's message",
        "document.querySelector('#messages li.theirs .text')?.textContent === 'hello bob'",
    )
    .await;
    b.until(
        "no unread left",
        "!document.querySelector('#conversations .unread')",
    )
    .await;
    // Bob opened it, so alice sees her message read; and each sees the other online.
    a.until(
        "the read receipt",
        "!!document.querySelector('#messages li.mine .receipt.read')",
    )
    .await;
    a.until(
        "bob online",
        "document.querySelector('#chat-presence').textContent === 'online'",
    )
    .await;
    b.until(
        "alice online",
        "document.querySelector('#chat-presence').textContent === 'online'",
    )
    .await;

    // Bob types: alice sees it; he sends, and she sees the message and the typing stop.
    fill(&mut b, "#message-input", "hi al").await;
    a.until(
        "bob typing",
        "document.querySelector('#typing').textContent === 'bob is typing…'",
    )
    .await;
    fill(&mut a, "#message-input", "how are").await;
    b.until(
        "alice typing",
        "document.querySelector('#typing').textContent === 'alice is typing…'",
    )
    .await;
    fill(&mut b, "#message-input", "hi alice").await;
    submit(&mut b, "#composer", None).await;
    a.until(
        "bob's reply",
        "[...document.querySelectorAll('#messages li.theirs .text')].some((t) => t.textContent === 'hi alice')",
    )
    .await;
    a.until(
        "bob no longer typing",
        "document.querySelector('#typing').textContent === ''",
    )
    .await;
    submit(&mut a, "#composer", None).await;

    // Alice reloads while bob writes twice: after the reload every message shows once, the
    // two she missed included, in order.
    a.until(
        "her second message",
        "document.querySelectorAll('#messages li[data-id]').length === 3",
    )
    .await;
    a.reload().await;
    fill(&mut b, "#message-input", "still there?").await;
    submit(&mut b, "#composer", None).await;
    fill(&mut b, "#message-input", "hello?").await;
    submit(&mut b, "#composer", None).await;
    a.until(
        "the conversation again, with bob's two new messages",
        "document.querySelector('#state')?.dataset.state === 'open' &&
         document.querySelectorAll('#messages li[data-id]').length >= 5",
    )
    .await;
    // Give late events (a sync replay, a live push) a moment to show a duplicate, were
    // there one: one more message, seen after them, bounds the wait.
    fill(&mut b, "#message-input", "last one").await;
    submit(&mut b, "#composer", None).await;
    a.until(
        "the last message",
        "[...document.querySelectorAll('#messages li .text')].some((t) => t.textContent === 'last one')",
    )
    .await;
    let (texts, ids) = messages(&mut a).await;
    assert_eq!(
        texts,
        [
            "hello bob",
            "hi alice",
            "how are",
            "still there?",
            "hello?",
            "last one"
        ],
        "each message once, in order, after the reload"
    );
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no message id twice: {ids:?}");
    a.until(
        "no unread after the reload",
        "!!document.querySelector('#conversations li') && !document.querySelector('#conversations .unread')",
    )
    .await;
    // Receipts received before the reload are still shown (the app keeps them).
    a.until(
        "her messages read",
        "[...document.querySelectorAll('#messages li.mine')].every((li) => li.querySelector('.receipt.read'))",
    )
    .await;
    fill(&mut b, "#message-input", "one more thing").await;
    a.until(
        "bob typing again",
        "document.querySelector('#typing').textContent === 'bob is typing…'",
    )
    .await;
    a.screenshot(SHOTS, "demo-chat.png").await;

    // The feed: alice posts; bob follows her and sees the post in his timeline.
    fill(&mut a, "#post-input", "the demo works").await;
    submit(&mut a, "#new-post", None).await;
    a.until(
        "her post",
        "document.querySelector('#feed li.post .text')?.textContent === 'the demo works'",
    )
    .await;
    fill(&mut b, "#follow-handle", "alice").await;
    submit(&mut b, "#follow", None).await;
    // A follow reaches the timeline with the precompute it triggers: refresh until it did.
    b.until(
        "alice's post in bob's timeline",
        "(() => { const t = document.querySelector('#feed li.post .text');
           if (t?.textContent === 'the demo works') return true;
           document.querySelector('#refresh-feed').click(); return false; })()",
    )
    .await;
    b.eval("document.querySelector('#feed li.post button.like').click(); true")
        .await;
    b.until(
        "the like",
        "document.querySelector('#feed li.post button.like').textContent === '♥ 1'",
    )
    .await;
    // Bob writes a comment: alice sees someone writing, then the comment counted.
    fill(&mut b, "#feed li.post .comment-input", "nice one").await;
    a.until(
        "one person writing",
        "document.querySelector('#feed li.post .writers').textContent === '1 person is writing a comment'",
    )
    .await;
    a.until(
        "the like on her post",
        "document.querySelector('#feed li.post button.like').textContent === '♥ 1'",
    )
    .await;
    submit(&mut b, "#feed li.post form.comment", None).await;
    b.until(
        "his comment",
        "document.querySelector('#feed li.post .comments li')?.textContent === 'you: nice one'",
    )
    .await;
    a.until(
        "bob's comment",
        "document.querySelector('#feed li.post .comments li')?.textContent === 'bob: nice one'",
    )
    .await;
    a.until(
        "the comment counted",
        "document.querySelector('#feed li.post .comments-count').textContent === '1 comment'",
    )
    .await;
    let notes: Value = a
        .until(
            "the notifications",
            "document.querySelector('#notifications').textContent.includes('bob commented')",
        )
        .await;
    assert_eq!(notes, json!(true));
    a.screenshot(SHOTS, "demo-feed.png").await;
}

#[tokio::test]
async fn the_demo_is_served_with_its_types_and_can_be_turned_off() {
    let s = server().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let get = |path: &str| http.get(format!("{}{path}", s.base)).send();
    let r = get("/demo").await.expect("get");
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/demo/");
    for (path, kind) in [
        ("/demo/", "text/html; charset=utf-8"),
        ("/demo/app.js", "text/javascript; charset=utf-8"),
        ("/demo/sdk/index.js", "text/javascript; charset=utf-8"),
        ("/demo/style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(path).await.expect("get");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("csp");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
    }
    let r = get("/demo/nope.js").await.expect("get");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");

    let off = server_with(|c| c.demo.enabled = false).await;
    let r = http
        .get(format!("{}/demo/", off.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
}
