//! Access-token caching: one fetch for many concurrent callers, refreshed before expiry.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::ApiError;
use crate::clock::Clock;

/// DingTalk's documented lifetime, used when an answer lacks a positive `expires_in`.
pub const DEFAULT_TTL_SECS: i64 = 7200;
/// The longest lifetime believed: an answer claiming more (up to `i64::MAX`) is read as this.
pub const MAX_TTL_SECS: i64 = 86_400;
/// DingTalk's guide: refresh ten minutes before expiry.
const REFRESH_EARLY_SECS: u64 = 600;

/// What a fetch publishes to the callers waiting for it.
type Outcome = Option<Result<SecretString, ApiError>>;

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The fetch in flight (its number and where its one result will appear), if any.
    fetching: Option<(u64, watch::Receiver<Outcome>)>,
    fetches: u64,
}

/// A cached access token of one kind (legacy or new).
///
/// One caller fetches; every caller arriving meanwhile waits for that fetch's result, success
/// or error, instead of fetching again. If the fetching caller is cancelled (its deadline
/// passed), a waiting caller takes over. No lock is held across the fetch.
pub struct TokenCache {
    slot: Mutex<Slot>,
    /// Where refresh times are read.
    clock: Arc<dyn Clock>,
}

/// What a caller does after looking at the cache.
enum Role {
    Cached(SecretString),
    Wait(watch::Receiver<Outcome>),
    Fetch(u64, watch::Sender<Outcome>),
}

/// Clears the in-flight mark of fetch `id` if its caller goes away without finishing, so a
/// waiter can take over.
struct Abandon<'a> {
    cache: &'a TokenCache,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let mut slot = self.cache.slot();
        if slot.fetching.as_ref().is_some_and(|(id, _)| *id == self.id) {
            slot.fetching = None;
        }
    }
}

/// When a token of lifetime `ttl` seconds (as DingTalk stated it) should be refreshed: ten
/// minutes early, or at half the lifetime for short-lived tokens. Any stated number is
/// accepted: non-positive means DingTalk's default, huge ones are capped.
fn refresh_at(now: Instant, ttl: i64) -> Instant {
    let ttl = if ttl > 0 {
        ttl.min(MAX_TTL_SECS)
    } else {
        DEFAULT_TTL_SECS
    };
    let ttl = u64::try_from(ttl).unwrap_or(DEFAULT_TTL_SECS as u64);
    let early = REFRESH_EARLY_SECS.min(ttl / 2);
    now.checked_add(Duration::from_secs(ttl.saturating_sub(early)))
        .unwrap_or(now)
}

impl TokenCache {
    /// An empty cache whose refresh times go by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            slot: Mutex::default(),
            clock,
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn role(&self) -> Role {
        let mut slot = self.slot();
        if let Some(c) = slot.cached.as_ref()
            && self.clock.instant() < c.refresh_at
        {
            return Role::Cached(c.token.clone());
        }
        if let Some((_, rx)) = slot.fetching.as_ref() {
            return Role::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        slot.fetches = slot.fetches.wrapping_add(1);
        let id = slot.fetches;
        slot.fetching = Some((id, rx));
        Role::Fetch(id, tx)
    }

    /// The cached token, or a fresh one from `fetch`, which returns the token and its
    /// lifetime in seconds. Concurrent callers share one fetch and its result.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<SecretString, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SecretString, i64), ApiError>>,
    {
        loop {
            match self.role() {
                Role::Cached(token) => return Ok(token),
                Role::Wait(mut rx) => {
                    if let Ok(outcome) = rx.wait_for(Option::is_some).await
                        && let Some(result) = outcome.as_ref()
                    {
                        return result.clone();
                    }
                    // The fetching caller went away without a result: look again.
                }
                Role::Fetch(id, tx) => {
                    let abandon = Abandon { cache: self, id };
                    let result = fetch().await.map(|(token, ttl)| {
                        (
                            token.clone(),
                            Cached {
                                token,
                                refresh_at: refresh_at(self.clock.instant(), ttl),
                            },
                        )
                    });
                    let shared = {
                        let mut slot = self.slot();
                        slot.fetching = None;
                        match result {
                            Ok((token, cached)) => {
                                slot.cached = Some(cached);
                                Ok(token)
                            }
                            Err(e) => Err(e),
                        }
                    };
                    // The mark is already cleared; dropping the guard changes nothing.
                    drop(abandon);
                    tx.send_replace(Some(shared.clone()));
                    return shared;
                }
            }
        }
    }

    /// Drops the cached token if it is still `stale`, so the next caller fetches anew. A
    /// token another caller already replaced is kept.
    pub async fn invalidate(&self, stale: &SecretString) {
        let mut slot = self.slot();
        if slot
            .cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == stale.expose_secret())
        {
            slot.cached = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::new(crate::clock::ManualClock::at(0)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok((SecretString::from("t1"), 7200))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().expose_secret(), "t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failed_fetch_and_its_error() {
        let cache = Arc::new(TokenCache::new(crate::clock::ManualClock::at(0)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<(SecretString, i64), _>(ApiError::Timeout)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), ApiError::Timeout);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_fetching_caller_is_cancelled() {
        let cache = Arc::new(TokenCache::new(crate::clock::ManualClock::at(0)));
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(std::future::pending::<Result<(SecretString, i64), ApiError>>)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(|| async { Ok((SecretString::from("t2"), 7200)) }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiter took over")
            .unwrap()
            .unwrap();
        assert_eq!(got.expose_secret(), "t2");
    }

    #[test]
    fn any_stated_lifetime_gives_a_refresh_time_without_overflow() {
        let now = Instant::now();
        for ttl in [i64::MIN, -1, 0, 1, 7200, i64::MAX] {
            let at = refresh_at(now, ttl);
            assert!(
                at >= now && at <= now + Duration::from_secs(MAX_TTL_SECS as u64),
                "{ttl}"
            );
        }
        assert_eq!(refresh_at(now, 7200), now + Duration::from_secs(6600));
        assert_eq!(refresh_at(now, 0), now + Duration::from_secs(6600));
    }

    #[tokio::test]
    async fn invalidating_the_current_token_forces_a_new_fetch_but_an_old_one_does_not() {
        let cache = TokenCache::new(crate::clock::ManualClock::at(0));
        let t1 = cache
            .get(|| async { Ok((SecretString::from("t1"), 7200)) })
            .await
            .unwrap();
        cache.invalidate(&SecretString::from("t0")).await;
        let again = cache
            .get(|| async { Ok((SecretString::from("t2"), 7200)) })
            .await
            .unwrap();
        assert_eq!(again.expose_secret(), "t1");
        cache.invalidate(&t1).await;
        let fresh = cache
            .get(|| async { Ok((SecretString::from("t2"), 7200)) })
            .await
            .unwrap();
        assert_eq!(fresh.expose_secret(), "t2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_fetched_again_ten_minutes_before_it_expires() {
        // Paused time: the two hours pass on tokio's clock, not the wall clock.
        let cache = TokenCache::new(crate::clock::ManualClock::at(0));
        let get = |t: &'static str| cache.get(move || async move { Ok((SecretString::from(t), 7200)) });
        assert_eq!(get("t1").await.unwrap().expose_secret(), "t1");
        tokio::time::advance(Duration::from_secs(6599)).await;
        assert_eq!(get("t2").await.unwrap().expose_secret(), "t1", "still fresh");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(get("t2").await.unwrap().expose_secret(), "t2", "refreshed");
    }
}
