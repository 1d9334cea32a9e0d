//! The admin JWTs the fake broker accepts: minted for the fake GitHub's
//! `runner-registration` (HS256 with a key made per fake), with `exp` set
//! from the configured lifetime, and refused once expired or revoked.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    /// The registration scope, e.g. `orgs/acme`.
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Why an admin token is refused.
pub enum Refusal {
    /// Not a JWT of this fake at all (perhaps a queue token).
    Unknown,
    Expired,
    Revoked,
}

pub struct AdminTokens {
    key: Vec<u8>,
    /// Ids (`jti`) of tokens not revoked.
    live: HashSet<String>,
}

impl Default for AdminTokens {
    fn default() -> Self {
        Self {
            key: crate::job::random_bytes(32),
            live: HashSet::new(),
        }
    }
}

impl AdminTokens {
    /// A fresh admin JWT for `scope`, valid for `lifetime`.
    pub fn mint(&mut self, scope: &str, lifetime: Duration) -> String {
        let now = crate::fake_github::now_unix();
        let claims = Claims {
            iss: "kiln-fake-broker".into(),
            sub: scope.to_owned(),
            iat: now,
            exp: now + lifetime.as_secs(),
            jti: crate::job::random_token(12),
        };
        self.live.insert(claims.jti.clone());
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .expect("HS256 signing cannot fail")
    }

    /// Whether `token` is a live admin token of this fake.
    pub fn check(&self, token: &str) -> Result<(), Refusal> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&self.key),
            &validation,
        )
        .map_err(|_| Refusal::Unknown)?
        .claims;
        if claims.exp <= crate::fake_github::now_unix() {
            return Err(Refusal::Expired);
        }
        if !self.live.contains(&claims.jti) {
            return Err(Refusal::Revoked);
        }
        Ok(())
    }

    /// Every token minted so far stops working.
    pub fn revoke_all(&mut self) {
        self.live.clear();
    }
}
