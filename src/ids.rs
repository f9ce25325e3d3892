//! Identifier newtypes parsed at the edge: a `MatchId` is a UUID, a `ClientId` is a token's
//! `sub`, a `Channel` is one of the channel kinds of the wire contract. Inside the crate
//! nothing passes these around as bare strings.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A match, identified by a random UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MatchId(pub Uuid);

impl MatchId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(s: &str) -> Option<Self> {
        // Only the canonical hyphenated form, so one match has exactly one channel name.
        let id = Uuid::parse_str(s).ok()?;
        (id.hyphenated().to_string() == s).then_some(Self(id))
    }
}

impl fmt::Display for MatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Maximum length of a client id (a token's `sub`).
pub const MAX_CLIENT_ID_LEN: usize = 128;

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-:.@".contains(&b)
}

/// A client, as named by its token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    /// 1 to 128 bytes of letters, digits and `_ - : . @`: the characters a channel name may
    /// hold, so every client has a `user:<id>` channel.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > MAX_CLIENT_ID_LEN || !s.bytes().all(is_channel_byte) {
            return None;
        }
        Some(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-channel message sequence number: 1, 2, 3… with no gap, in commit order.
pub type Seq = i64;

/// Maximum length of a channel name.
pub const MAX_CHANNEL_LEN: usize = 200;

/// A channel name, classified by kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel {
    name: String,
    kind: ChannelKind,
}

/// The kinds of channel of the wire contract, plus free-form application channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    /// `control:<match>`: publish only, feeds the durable control queue.
    Control(MatchId),
    /// `match:<match>`: broadcasts of one match.
    Match(MatchId),
    /// `user:<client>`: private replies to one client.
    User(ClientId),
    /// `lobby`: matches created, filled, finished.
    Lobby,
    /// Any other well-formed name, governed by capabilities alone.
    Other,
}

impl Channel {
    /// Parses a channel name. `control:` and `match:` need a canonical UUID.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_CHANNEL_LEN {
            return Err(format!("a channel name has 1 to {MAX_CHANNEL_LEN} bytes"));
        }
        if !s.bytes().all(is_channel_byte) {
            return Err("a channel name uses only letters, digits and _ - : . @".into());
        }
        let kind = if let Some(rest) = s.strip_prefix("control:") {
            ChannelKind::Control(
                MatchId::parse(rest).ok_or("control:<match-id> needs a match UUID")?,
            )
        } else if let Some(rest) = s.strip_prefix("match:") {
            ChannelKind::Match(MatchId::parse(rest).ok_or("match:<match-id> needs a match UUID")?)
        } else if let Some(rest) = s.strip_prefix("user:") {
            ChannelKind::User(ClientId::parse(rest).ok_or("user:<client-id> needs a client id")?)
        } else if s == "lobby" {
            ChannelKind::Lobby
        } else {
            ChannelKind::Other
        };
        Ok(Self {
            name: s.to_owned(),
            kind,
        })
    }

    pub fn of_match(id: MatchId) -> Self {
        Self {
            name: format!("match:{id}"),
            kind: ChannelKind::Match(id),
        }
    }

    pub fn of_user(id: &ClientId) -> Self {
        Self {
            name: format!("user:{id}"),
            kind: ChannelKind::User(id.clone()),
        }
    }

    pub fn lobby() -> Self {
        Self {
            name: "lobby".into(),
            kind: ChannelKind::Lobby,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &ChannelKind {
        &self.kind
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_classified_by_prefix() {
        let id = MatchId::new_random();
        assert_eq!(
            Channel::parse(&format!("control:{id}")).unwrap().kind(),
            &ChannelKind::Control(id)
        );
        assert_eq!(
            Channel::parse(&format!("match:{id}")).unwrap().kind(),
            &ChannelKind::Match(id)
        );
        assert_eq!(Channel::parse("lobby").unwrap().kind(), &ChannelKind::Lobby);
        assert!(matches!(
            Channel::parse("user:alice").unwrap().kind(),
            ChannelKind::User(c) if c.as_str() == "alice"
        ));
        assert_eq!(Channel::parse("news").unwrap().kind(), &ChannelKind::Other);
    }

    #[test]
    fn malformed_channels_are_refused() {
        for bad in [
            "",
            "match:",
            "match:123",
            "control:nope",
            "user:",
            "a b",
            "é",
        ] {
            assert!(Channel::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Channel::parse(&"x".repeat(MAX_CHANNEL_LEN + 1)).is_err());
    }

    #[test]
    fn match_ids_are_canonical() {
        let id = MatchId::new_random();
        assert_eq!(MatchId::parse(&id.to_string()), Some(id));
        assert_eq!(MatchId::parse(&id.0.simple().to_string()), None);
        assert_eq!(MatchId::parse(&id.to_string().to_uppercase()), None);
        assert!(ClientId::parse("guest-1@x.y").is_some());
        assert!(ClientId::parse("a b").is_none());
        assert!(ClientId::parse("é").is_none());
    }
}
