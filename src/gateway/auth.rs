//! Tokens and capabilities. Tokens are HS256 JWTs with `sub`, `exp` and optional `caps`
//! (channel pattern → operations). Without `caps` the defaults of the wire contract apply.
//! Two rules hold whatever a token says: nobody subscribes to (or reads) a `control:`
//! channel, and only `<id>` itself subscribes to `user:<id>`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{Channel, ChannelKind, ClientId};

/// An operation a capability grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cap {
    Publish,
    Subscribe,
    History,
    Presence,
}

/// The claims of a postgame token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<BTreeMap<String, Vec<Cap>>>,
    /// Display name (guests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Not valid before this time (seconds since the epoch), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// An operator's token: may create games declared [`crate::game::Creation::Admin`].
    /// Guest tokens never carry it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub client: ClientId,
    pub name: Option<String>,
    /// When the token expires (`exp`): a WebSocket session is closed with 4001 then.
    pub expires_at: DateTime<Utc>,
    pub admin: bool,
    caps: Option<Vec<(String, Vec<Cap>)>>,
}

impl Identity {
    /// Whether this client may do `cap` on `channel`.
    pub fn can(&self, cap: Cap, channel: &Channel) -> bool {
        match (channel.kind(), cap) {
            (ChannelKind::Control(_), Cap::Subscribe | Cap::History | Cap::Presence) => {
                return false
            }
            (ChannelKind::User(owner), Cap::Subscribe | Cap::History | Cap::Presence)
                if owner != &self.client =>
            {
                return false
            }
            _ => {}
        }
        match &self.caps {
            Some(caps) => caps
                .iter()
                .any(|(pattern, ops)| ops.contains(&cap) && glob_match(pattern, channel.as_str())),
            None => match (channel.kind(), cap) {
                (ChannelKind::Control(_), Cap::Publish) => true,
                (ChannelKind::Match(_) | ChannelKind::Lobby, Cap::Subscribe | Cap::History) => true,
                (ChannelKind::User(owner), Cap::Subscribe) => owner == &self.client,
                _ => false,
            },
        }
    }
}

impl Identity {
    /// Whether this client may see match `m` (subscribe to or read the history of
    /// `match:<m>`): listing and `GET /v1/matches/{id}` show only such matches.
    pub fn sees_match(&self, m: &Channel) -> bool {
        self.can(Cap::Subscribe, m) || self.can(Cap::History, m)
    }

    /// The matches this client may see as SQL `LIKE` patterns on `'match:' || id`, or
    /// `None` when it may see every match (the default capabilities). A token whose `caps`
    /// name no `match:` channel gets an empty list: it sees nothing.
    pub fn visible_matches(&self) -> Option<Vec<String>> {
        let caps = self.caps.as_ref()?;
        let patterns: Vec<String> = caps
            .iter()
            .filter(|(_, ops)| ops.contains(&Cap::Subscribe) || ops.contains(&Cap::History))
            .map(|(pattern, _)| glob_to_like(pattern))
            .collect();
        if patterns.iter().any(|p| p == "%") {
            return None;
        }
        Some(patterns)
    }
}

/// A capability glob as a `LIKE` pattern: `*` is `%`, and `%`, `_` and `\` stand for
/// themselves (escaped with `\`, `LIKE`'s default escape).
fn glob_to_like(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    for c in pattern.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last star.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token is expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is invalid")]
    Invalid,
}

/// Parses a capability of the command line, `PATTERN=OP[,OP…]` (ops by their wire names:
/// `publish`, `subscribe`, `history`, `presence`).
///
/// ```
/// use postgame::gateway::auth::{cap_parse, Cap};
///
/// assert_eq!(
///     cap_parse("match:*=subscribe,history"),
///     Ok(("match:*".to_owned(), vec![Cap::Subscribe, Cap::History]))
/// );
/// assert!(cap_parse("lobby").is_err());
/// assert!(cap_parse("lobby=fly").is_err());
/// ```
pub fn cap_parse(text: &str) -> Result<(String, Vec<Cap>), String> {
    let (pattern, ops) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("`{text}`: a capability is PATTERN=OP[,OP…]"))?;
    if pattern.is_empty() {
        return Err(format!("`{text}`: the channel pattern is empty"));
    }
    let ops = ops
        .split(',')
        .map(|op| {
            serde_json::from_value(serde_json::Value::String(op.trim().to_owned())).map_err(|_| {
                format!("`{op}` is not an operation (publish, subscribe, history, presence)")
            })
        })
        .collect::<Result<Vec<Cap>, String>>()?;
    Ok((pattern.to_owned(), ops))
}

/// Signs and checks tokens with the server secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid,
            })?;
        let claims = data.claims;
        let client = ClientId::parse(&claims.sub).ok_or(AuthError::Invalid)?;
        let expires_at = DateTime::from_timestamp(claims.exp, 0).ok_or(AuthError::Invalid)?;
        Ok(Identity {
            client,
            name: claims.name,
            expires_at,
            admin: claims.admin,
            caps: claims.caps.map(|c| c.into_iter().collect()),
        })
    }

    /// Signs a token.
    pub fn sign(&self, claims: &Claims) -> String {
        // HS256 signing of a serialisable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing does not fail")
    }

    /// A token for `sub` valid for `ttl`, with optional capabilities.
    pub fn issue(
        &self,
        sub: &str,
        name: Option<String>,
        caps: Option<BTreeMap<String, Vec<Cap>>>,
        ttl: Duration,
    ) -> (String, DateTime<Utc>) {
        let expires_at = Utc::now() + ttl;
        let token = self.sign(&Claims {
            sub: sub.to_owned(),
            exp: expires_at.timestamp(),
            caps,
            name,
            nbf: None,
            admin: false,
        });
        (token, expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    const M: &str = "0b6a1d4e-1d7e-4a8e-9a39-3f1b7c0c9d11";

    #[test]
    fn default_capabilities_follow_the_contract() {
        let auth = Auth::new("s");
        let (token, _) = auth.issue("alice", None, None, Duration::minutes(5));
        let me = auth.verify(&token).unwrap();
        assert!(me.can(Cap::Publish, &ch(&format!("control:{M}"))));
        assert!(!me.can(Cap::Subscribe, &ch(&format!("control:{M}"))));
        assert!(me.can(Cap::Subscribe, &ch(&format!("match:{M}"))));
        assert!(me.can(Cap::History, &ch(&format!("match:{M}"))));
        assert!(!me.can(Cap::Publish, &ch(&format!("match:{M}"))));
        assert!(me.can(Cap::Subscribe, &ch("lobby")));
        assert!(me.can(Cap::Subscribe, &ch("user:alice")));
        assert!(!me.can(Cap::Subscribe, &ch("user:bob")));
        assert!(!me.can(Cap::Subscribe, &ch("news")));
    }

    #[test]
    fn explicit_capabilities_never_open_control_or_other_users() {
        let auth = Auth::new("s");
        let caps = BTreeMap::from([(
            "*".to_owned(),
            vec![Cap::Publish, Cap::Subscribe, Cap::History],
        )]);
        let (token, _) = auth.issue("admin", None, Some(caps), Duration::minutes(5));
        let admin = auth.verify(&token).unwrap();
        assert!(admin.can(Cap::Publish, &ch(&format!("match:{M}"))));
        assert!(admin.can(Cap::Subscribe, &ch("news")));
        assert!(!admin.can(Cap::Subscribe, &ch(&format!("control:{M}"))));
        assert!(!admin.can(Cap::Subscribe, &ch("user:bob")));
    }

    #[test]
    fn bad_and_expired_tokens_are_refused() {
        let auth = Auth::new("s");
        assert!(matches!(auth.verify("nope"), Err(AuthError::Invalid)));
        let (other, _) = Auth::new("t").issue("a", None, None, Duration::minutes(5));
        assert!(matches!(auth.verify(&other), Err(AuthError::Invalid)));
        let (old, _) = auth.issue("a", None, None, Duration::minutes(-5));
        assert!(matches!(auth.verify(&old), Err(AuthError::Expired)));
        let early = auth.sign(&Claims {
            sub: "a".into(),
            exp: (Utc::now() + Duration::minutes(10)).timestamp(),
            caps: None,
            name: None,
            nbf: Some((Utc::now() + Duration::minutes(5)).timestamp()),
            admin: false,
        });
        assert!(matches!(auth.verify(&early), Err(AuthError::NotYetValid)));
    }

    #[test]
    fn visible_matches_follow_the_subscribe_and_history_capabilities() {
        let auth = Auth::new("s");
        let (token, _) = auth.issue("a", None, None, Duration::minutes(5));
        assert_eq!(auth.verify(&token).unwrap().visible_matches(), None);
        let caps = BTreeMap::from([
            ("match:ab_*".to_owned(), vec![Cap::History]),
            ("match:cd%".to_owned(), vec![Cap::Subscribe]),
            ("match:ef*".to_owned(), vec![Cap::Publish]),
        ]);
        let (token, _) = auth.issue("a", None, Some(caps), Duration::minutes(5));
        let me = auth.verify(&token).unwrap();
        assert_eq!(
            me.visible_matches(),
            Some(vec!["match:ab\\_%".to_owned(), "match:cd\\%".to_owned()])
        );
        assert!(!me.sees_match(&ch(&format!("match:{M}"))));
        let caps = BTreeMap::from([("*".to_owned(), vec![Cap::Subscribe])]);
        let (token, _) = auth.issue("a", None, Some(caps), Duration::minutes(5));
        assert_eq!(auth.verify(&token).unwrap().visible_matches(), None);
        let caps = BTreeMap::from([("lobby".to_owned(), vec![Cap::Subscribe])]);
        let (token, _) = auth.issue("a", None, Some(caps), Duration::minutes(5));
        // No pattern can match a `match:` channel: the listing is empty.
        assert_eq!(
            auth.verify(&token).unwrap().visible_matches(),
            Some(vec!["lobby".to_owned()])
        );
    }

    #[test]
    fn globs_match_stars_anywhere() {
        assert!(glob_match("match:*", "match:abc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("match:*", "matc:abc"));
        assert!(!glob_match("a*c", "abcd"));
    }
}
