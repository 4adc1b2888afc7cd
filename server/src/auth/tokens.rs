//! etcd's "simple" tokens: opaque random strings, held in memory only (a
//! restart logs everyone out, as in etcd), each valid until it has gone
//! unused for the token TTL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::distr::{Alphanumeric, SampleString};

/// Letters of the random part of a token, as etcd's.
const PREFIX_LEN: usize = 16;
const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    user: String,
    last_used: Instant,
}

impl SimpleTokens {
    /// A zero TTL means etcd's default, 300 s (as etcd treats it).
    pub fn new(ttl: Duration) -> SimpleTokens {
        let ttl = if ttl.is_zero() { DEFAULT_TTL } else { ttl };
        SimpleTokens { ttl, tokens: Mutex::new(HashMap::new()) }
    }

    /// The random part of a new token, chosen before the authentication is
    /// proposed; the raft index that applies it makes the token unique.
    pub fn new_prefix() -> String {
        Alphanumeric.sample_string(&mut rand::rng(), PREFIX_LEN)
    }

    pub fn assign(&self, token: String, user: &str) {
        let mut tokens = self.tokens.lock();
        self.expire(&mut tokens);
        tokens.insert(token, Entry { user: user.to_string(), last_used: Instant::now() });
    }

    /// The user a live token belongs to; using a token renews it.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut tokens = self.tokens.lock();
        let entry = tokens.get_mut(token)?;
        if entry.last_used.elapsed() >= self.ttl {
            tokens.remove(token);
            return None;
        }
        entry.last_used = Instant::now();
        Some(entry.user.clone())
    }

    /// Logs a user out everywhere (deleted, or password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens.lock().retain(|_, e| e.user != user);
    }

    pub fn clear(&self) {
        self.tokens.lock().clear();
    }

    fn expire(&self, tokens: &mut HashMap<String, Entry>) {
        tokens.retain(|_, e| e.last_used.elapsed() < self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_unused_and_renew_on_use() {
        let tokens = SimpleTokens::new(Duration::from_millis(200));
        tokens.assign("a.1".into(), "alice");
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(80));
            assert_eq!(tokens.user("a.1").as_deref(), Some("alice"), "use renews the token");
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(tokens.user("a.1"), None);
    }

    #[test]
    fn invalidating_a_user_drops_only_their_tokens() {
        let tokens = SimpleTokens::new(Duration::from_secs(60));
        tokens.assign("a.1".into(), "alice");
        tokens.assign("b.2".into(), "bob");
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user("a.1"), None);
        assert_eq!(tokens.user("b.2").as_deref(), Some("bob"));
        assert_eq!(SimpleTokens::new_prefix().len(), PREFIX_LEN);
    }
}
