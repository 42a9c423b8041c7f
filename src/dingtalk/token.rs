//! Access-token caching: one fetch for many concurrent callers, refreshed before expiry.

use std::future::Future;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::error::ApiError;

/// DingTalk's documented lifetime, used when an answer lacks a positive `expires_in`.
pub const DEFAULT_TTL_SECS: i64 = 7200;
/// DingTalk's guide: refresh ten minutes before expiry.
const REFRESH_EARLY_SECS: u64 = 600;

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// A cached access token of one kind (legacy or new).
#[derive(Default)]
pub struct TokenCache {
    // A tokio mutex held across the fetch: concurrent callers wait for the one fetch.
    slot: Mutex<Option<Cached>>,
}

impl TokenCache {
    /// The cached token, or a fresh one from `fetch`, which returns the token and its
    /// lifetime in seconds.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<SecretString, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SecretString, i64), ApiError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let (token, ttl) = fetch().await?;
        let ttl = if ttl > 0 { ttl } else { DEFAULT_TTL_SECS } as u64;
        // Refresh ten minutes early, or at half the lifetime for short-lived tokens.
        let early = REFRESH_EARLY_SECS.min(ttl / 2);
        *slot = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + Duration::from_secs(ttl - early),
        });
        Ok(token)
    }

    /// Drops the cached token if it is still `stale`, so the next caller fetches anew. A
    /// token another caller already replaced is kept.
    pub async fn invalidate(&self, stale: &SecretString) {
        let mut slot = self.slot.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == stale.expose_secret())
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
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
    async fn invalidating_the_current_token_forces_a_new_fetch_but_an_old_one_does_not() {
        let cache = TokenCache::default();
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
}
