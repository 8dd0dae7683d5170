//! [`Coalescing`]: a [`Registry`] in front of a remote one that merges lookups made at the
//! same time into one; [`Merged`], the general form (requests made while one batch is in
//! flight go together as the next), which the HTTP edge link also uses.
//!
//! Roles apart, every envelope a worker handles looks up the edges of its recipients: a
//! message to a 100-member group is 100 hash reads in Redis, and at 1,000 sends/s that is
//! 100,000 a second, past what one Redis answers (~44,000 here). The worker handles dozens of
//! envelopes at once, mostly for the same members. Here, while one lookup is in flight, the
//! lookups asked for meanwhile wait and then go as one, each user asked once: the next
//! batch of a busy worker costs one round trip and one read per distinct member.
//! [`Registry::users_by_edge`] (a push's) and [`Registry::sessions_of`] are merged apart, so
//! each reaches the registry behind as itself (the Redis one answers the first from the
//! edges alone).
//!
//! Nothing is cached: every answer was read after it was asked for (a lookup joins only one
//! that has not started yet), so a session registered before a lookup is asked for is in
//! its answer, as with the registry behind. When nothing else is in flight, a lookup starts
//! at once. Writes and the other reads go straight through.

use crate::{EdgeLoad, Registry, RegistryError, SessionInfo, UsersByEdge};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// What a waiting lookup gets: the sessions of each of its users, in its order.
type Answer = Result<Vec<Vec<SessionInfo>>, RegistryError>;

/// What a waiting [`Registry::users_by_edge`] gets: its users by edge (indexes into its own
/// list).
type EdgesAnswer = Result<UsersByEdge, RegistryError>;

/// The work a [`Merged`] runs: the requests pending, in the order they were made, to their
/// answers, one each in that order.
pub type RunMerged<R, A> = Arc<dyn Fn(Vec<R>) -> BoxFuture<'static, Vec<A>> + Send + Sync>;

/// Requests to something remote, run one merged batch at a time: a request made while a
/// batch is in flight waits for it to end and goes with every other request made meanwhile,
/// in the order they were made. When nothing is in flight, a request goes at once.
pub struct Merged<R, A> {
    run: RunMerged<R, A>,
    state: Mutex<Waiting<R, A>>,
}

/// The requests made since the batch in flight started.
struct Waiting<R, A> {
    requests: Vec<(R, oneshot::Sender<A>)>,
    /// A task is running batches (it takes what is waiting when its batch is done).
    running: bool,
}

impl<R: Send + 'static, A: Send + 'static> Merged<R, A> {
    /// Requests answered by `run`.
    pub fn new(run: RunMerged<R, A>) -> Arc<Self> {
        Arc::new(Merged {
            run,
            state: Mutex::new(Waiting {
                requests: Vec::new(),
                running: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<R, A>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make a request and wait for its answer; `None` if the batch it went with was never
    /// answered (the work panicked or the runtime is shutting down).
    pub async fn call(self: &Arc<Self>, request: R) -> Option<A> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.lock();
            s.requests.push((request, tx));
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        rx.await.ok()
    }

    /// Run the waiting requests, one batch at a time, until none is left.
    async fn drain(self: Arc<Self>) {
        // Should the work panic (or the task be dropped), the flag is cleared and the
        // waiting requests are dropped (their callers get `None`), so later requests do not
        // wait for a task that is gone.
        struct Stop<'a, R, A>(&'a Mutex<Waiting<R, A>>);
        impl<R, A> Drop for Stop<'_, R, A> {
            fn drop(&mut self) {
                let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
                s.running = false;
                s.requests.clear();
            }
        }
        let stop = Stop(&self.state);
        loop {
            let batch = {
                let mut s = self.lock();
                if s.requests.is_empty() {
                    s.running = false;
                    std::mem::forget(stop);
                    return;
                }
                std::mem::take(&mut s.requests)
            };
            let (requests, answer_to): (Vec<R>, Vec<oneshot::Sender<A>>) =
                batch.into_iter().unzip();
            let answers = (self.run)(requests).await;
            for (tx, answer) in answer_to.into_iter().zip(answers) {
                // A caller that went away no longer wants its answer.
                let _ = tx.send(answer);
            }
        }
    }
}

/// A registry merging concurrent [`Registry::sessions_of`] lookups into one of the registry
/// behind, and concurrent [`Registry::users_by_edge`] lookups (a push's) into another.
#[derive(Clone)]
pub struct Coalescing {
    inner: Arc<dyn Registry>,
    lookups: Arc<Merged<Vec<String>, Answer>>,
    edge_lookups: Arc<Merged<Vec<String>, EdgesAnswer>>,
}

impl std::fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalescing")
    }
}

impl Coalescing {
    /// Merge the lookups made of `inner`.
    pub fn new(inner: Arc<dyn Registry>) -> Self {
        let registry = inner.clone();
        let lookups = Merged::new(Arc::new(move |asked: Vec<Vec<String>>| {
            let registry = registry.clone();
            Box::pin(async move { lookup_merged(&*registry, asked).await }) as BoxFuture<'static, _>
        }));
        let registry = inner.clone();
        let edge_lookups = Merged::new(Arc::new(move |asked: Vec<Vec<String>>| {
            let registry = registry.clone();
            Box::pin(async move { edges_merged(&*registry, asked).await }) as BoxFuture<'static, _>
        }));
        Coalescing {
            inner,
            lookups,
            edge_lookups,
        }
    }
}

/// The distinct users of `asked` in order of first appearance, and each request's users as
/// indexes into them.
fn distinct(asked: &[Vec<String>]) -> (Vec<&str>, Vec<Vec<usize>>) {
    let mut users: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let wanted = asked
        .iter()
        .map(|request| {
            request
                .iter()
                .map(|u| {
                    *index.entry(u.as_str()).or_insert_with(|| {
                        users.push(u);
                        users.len() - 1
                    })
                })
                .collect()
        })
        .collect();
    (users, wanted)
}

/// One lookup of every distinct user of `asked`, answered to each request.
async fn lookup_merged(registry: &dyn Registry, asked: Vec<Vec<String>>) -> Vec<Answer> {
    let (users, wanted) = distinct(&asked);
    let users: Vec<String> = users.into_iter().map(str::to_owned).collect();
    let found = registry.sessions_of(&users).await;
    wanted
        .into_iter()
        .map(|w| match &found {
            Ok(all) => Ok(w
                .iter()
                .map(|&i| all.get(i).cloned().unwrap_or_default())
                .collect()),
            Err(e) => Err(e.clone()),
        })
        .collect()
}

/// One [`Registry::users_by_edge`] of every distinct user of `asked`, each request answered
/// with its own users' indexes.
async fn edges_merged(registry: &dyn Registry, asked: Vec<Vec<String>>) -> Vec<EdgesAnswer> {
    let (users, wanted) = distinct(&asked);
    let found = match registry.users_by_edge(&users).await {
        Ok(found) => found,
        Err(e) => return wanted.iter().map(|_| Err(e.clone())).collect(),
    };
    // The edges (indexes into `found.edges`) of each distinct user.
    let mut edges_of: Vec<Vec<usize>> = vec![Vec::new(); users.len()];
    for (slot, (_, holds)) in found.edges.iter().enumerate() {
        for &g in holds {
            if let Some(e) = edges_of.get_mut(g) {
                e.push(slot);
            }
        }
    }
    wanted
        .into_iter()
        .map(|w| {
            let mut out = UsersByEdge::default();
            for (i, g) in w.into_iter().enumerate() {
                for &slot in edges_of.get(g).map(Vec::as_slice).unwrap_or_default() {
                    out.add(&found.edges[slot].0, i);
                }
            }
            Ok(out)
        })
        .collect()
}

#[async_trait]
impl Registry for Coalescing {
    async fn register(&self, user: &str, session: &str, edge: &str) -> Result<(), RegistryError> {
        self.inner.register(user, session, edge).await
    }

    async fn unregister(&self, user: &str, session: &str) -> Result<(), RegistryError> {
        self.inner.unregister(user, session).await
    }

    async fn sessions(&self, user: &str) -> Result<Vec<SessionInfo>, RegistryError> {
        self.inner.sessions(user).await
    }

    async fn edges(&self) -> Result<Vec<EdgeLoad>, RegistryError> {
        self.inner.edges().await
    }

    async fn sessions_of(&self, users: &[String]) -> Answer {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        self.lookups
            .call(users.to_vec())
            .await
            .unwrap_or_else(|| Err(RegistryError::Unavailable("the lookup failed".into())))
    }

    async fn users_by_edge(&self, users: &[&str]) -> EdgesAnswer {
        if users.is_empty() {
            return Ok(UsersByEdge::default());
        }
        self.edge_lookups
            .call(users.iter().map(|u| (*u).to_owned()).collect())
            .await
            .unwrap_or_else(|| Err(RegistryError::Unavailable("the lookup failed".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// A registry of a table, counting the lookups that reach it and holding each until the
    /// test lets it go.
    struct Gated {
        table: Mutex<HashMap<String, Vec<SessionInfo>>>,
        lookups: AtomicUsize,
        gate: Semaphore,
    }

    impl Gated {
        fn of(&self, user: &str) -> Vec<SessionInfo> {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.get(user).cloned().unwrap_or_default()
        }
    }

    #[async_trait]
    impl Registry for Gated {
        async fn register(&self, u: &str, s: &str, e: &str) -> Result<(), RegistryError> {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.entry(u.to_owned()).or_default().push(SessionInfo {
                session: s.to_owned(),
                edge: e.to_owned(),
            });
            Ok(())
        }
        async fn unregister(&self, _: &str, _: &str) -> Result<(), RegistryError> {
            Err(RegistryError::Unavailable("not in these tests".into()))
        }
        async fn sessions(&self, u: &str) -> Result<Vec<SessionInfo>, RegistryError> {
            Ok(self.of(u))
        }
        async fn edges(&self) -> Result<Vec<EdgeLoad>, RegistryError> {
            Err(RegistryError::Unavailable("not in these tests".into()))
        }
        async fn sessions_of(&self, users: &[String]) -> Answer {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.gate
                .acquire()
                .await
                .map_err(|_| RegistryError::Unavailable("closed".into()))?
                .forget();
            Ok(users.iter().map(|u| self.of(u)).collect())
        }
    }

    fn gated() -> Arc<Gated> {
        Arc::new(Gated {
            table: Mutex::new(HashMap::new()),
            lookups: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        })
    }

    /// A lookup of `user`'s sessions, started on a task of its own.
    fn ask(r: &Coalescing, user: &str) -> tokio::task::JoinHandle<Answer> {
        let (r, users) = (r.clone(), vec![user.to_owned()]);
        tokio::spawn(async move { r.sessions_of(&users).await })
    }

    async fn wait_for_lookups(g: &Gated, n: usize) {
        for _ in 0..1000 {
            if g.lookups.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{n} lookups never started");
    }

    /// With one lookup held and others asked for meanwhile: only the held one reached the
    /// registry; then it and the next (the others together) are let through.
    async fn let_the_held_one_go(g: &Gated) {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(g.lookups.load(Ordering::SeqCst), 1, "the others wait");
        g.gate.add_permits(2);
    }

    #[tokio::test]
    async fn requests_made_during_a_batch_go_together_in_order() {
        let gate = Arc::new(Semaphore::new(0));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let merged = Merged::new(Arc::new({
            let (gate, batches) = (gate.clone(), batches.clone());
            move |requests: Vec<u32>| {
                let (gate, batches) = (gate.clone(), batches.clone());
                Box::pin(async move {
                    if let Ok(p) = gate.acquire().await {
                        p.forget();
                    }
                    batches
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(requests.clone());
                    requests.into_iter().map(|r| r * 10).collect()
                }) as BoxFuture<'static, Vec<u32>>
            }
        }));
        let mut calls = Vec::new();
        for r in 0..5 {
            let m = merged.clone();
            calls.push(tokio::spawn(async move { m.call(r).await }));
            // Each request is made (and the first has started) before the next.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }
        gate.add_permits(2);
        for (r, call) in (0..5).zip(calls) {
            assert_eq!(call.await.expect("join"), Some(r * 10), "its own answer");
        }
        assert_eq!(
            *batches.lock().unwrap_or_else(|p| p.into_inner()),
            [vec![0], vec![1, 2, 3, 4]],
            "the first alone, the four made while it was in flight together, in order"
        );
    }

    #[tokio::test]
    async fn lookups_asked_during_one_go_as_one_with_each_its_own_answer() {
        let g = gated();
        for (u, e) in [("ann", "e1"), ("bob", "e2"), ("cat", "e1")] {
            g.register(u, &format!("s-{u}"), e).await.expect("register");
        }
        let r = Coalescing::new(g.clone());
        // The first lookup starts and is held.
        let first = ask(&r, "ann");
        wait_for_lookups(&g, 1).await;
        // Twenty more are asked for meanwhile, of overlapping users (one unknown).
        let mut later = Vec::new();
        for i in 0..20 {
            let r = r.clone();
            let users: Vec<String> = match i % 3 {
                0 => vec!["bob".into(), "ann".into()],
                1 => vec!["cat".into(), "nobody".into()],
                _ => vec!["bob".into()],
            };
            later.push(tokio::spawn(async move {
                let got = r.sessions_of(&users).await;
                (users, got)
            }));
        }
        let_the_held_one_go(&g).await;
        let got = first.await.expect("join").expect("lookup");
        assert_eq!(got[0][0].edge, "e1");
        for t in later {
            let (users, got) = t.await.expect("join");
            let got = got.expect("lookup");
            assert_eq!(got.len(), users.len());
            for (u, sessions) in users.iter().zip(&got) {
                let want = g.of(u);
                assert_eq!(sessions, &want, "{u}");
            }
        }
        assert_eq!(
            g.lookups.load(Ordering::SeqCst),
            2,
            "the twenty went as one lookup"
        );
    }

    #[tokio::test]
    async fn users_by_edge_asked_during_one_go_as_one_with_each_its_own_indexes() {
        let g = gated();
        for (u, e) in [("ann", "e1"), ("bob", "e2"), ("cat", "e1"), ("cat", "e2")] {
            g.register(u, &format!("s-{u}-{e}"), e)
                .await
                .expect("register");
        }
        let r = Coalescing::new(g.clone());
        let first = {
            let r = r.clone();
            tokio::spawn(async move { r.users_by_edge(&["ann"]).await })
        };
        wait_for_lookups(&g, 1).await;
        let mut later = Vec::new();
        for i in 0..12 {
            let r = r.clone();
            let users: Vec<&'static str> = match i % 3 {
                0 => vec!["bob", "ann"],
                1 => vec!["nobody", "cat", "cat"],
                _ => vec!["cat", "bob"],
            };
            later.push(tokio::spawn(async move {
                let got = r.users_by_edge(&users).await;
                (users, got)
            }));
        }
        let_the_held_one_go(&g).await;
        let got = first.await.expect("join").expect("lookup");
        assert_eq!(got.edges, vec![("e1".to_owned(), vec![0])]);
        for t in later {
            let (users, got) = t.await.expect("join");
            // What the registry behind answers for this request alone.
            let want = {
                let mut want = UsersByEdge::default();
                for (i, u) in users.iter().enumerate() {
                    for s in g.of(u) {
                        want.add(&s.edge, i);
                    }
                }
                want
            };
            let mut got = got.expect("lookup").edges;
            let mut want = want.edges;
            got.sort();
            want.sort();
            assert_eq!(got, want, "{users:?}");
        }
        assert_eq!(
            g.lookups.load(Ordering::SeqCst),
            2,
            "the twelve went as one lookup"
        );
    }

    #[tokio::test]
    async fn a_lookup_sees_what_was_registered_before_it_was_asked_for() {
        let g = gated();
        let r = Coalescing::new(g.clone());
        let first = ask(&r, "ann");
        wait_for_lookups(&g, 1).await;
        // Registered while a lookup is in flight, then asked about: the answer is not the
        // one in flight (read before the session was there) but a new lookup's.
        r.register("ann", "s1", "e1").await.expect("register");
        let second = ask(&r, "ann");
        g.gate.add_permits(2);
        let _ = first.await.expect("join").expect("lookup");
        let got = second.await.expect("join").expect("lookup");
        assert_eq!(
            got,
            [vec![SessionInfo {
                session: "s1".into(),
                edge: "e1".into()
            }]]
        );
    }

    #[tokio::test]
    async fn a_failed_lookup_fails_every_waiter_and_the_next_one_runs() {
        let g = gated();
        let r = Coalescing::new(g.clone());
        let first = ask(&r, "ann");
        wait_for_lookups(&g, 1).await;
        let second = ask(&r, "bob");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        g.gate.close();
        assert!(first.await.expect("join").is_err());
        assert!(second.await.expect("join").is_err());
        assert!(r.sessions_of(&[]).await.expect("empty").is_empty());
        let third = r.sessions_of(&["ann".into()]).await;
        assert!(
            third.is_err(),
            "the next lookup runs (and fails) rather than waiting for the failed one"
        );
    }
}
