//! The checker: after the run has quiesced, every guarantee is checked against the
//! clients' records and the database. Each violation is one line naming what broke, where.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};

use super::driver::{Kind, Record};
use super::Fault;

/// Pong's fixed step, in microseconds.
const PONG_PERIOD_US: i64 = crate::game::pong::PERIOD_US;
/// Most violations named per check (the count is always given).
const NAMED: usize = 10;

/// What the checks found.
#[derive(Debug, Default)]
pub struct Findings {
    pub violations: Vec<String>,
    /// What was checked, by name.
    pub checked: BTreeMap<&'static str, u64>,
}

impl Findings {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    pub(crate) fn count(&mut self, what: &'static str, n: u64) {
        *self.checked.entry(what).or_default() += n;
    }
}

/// The settings the bounds depend on.
pub struct Bounds {
    pub lease_seconds: f64,
    /// Wall-clock time of the run's start (the records' times are seconds since then).
    pub started: DateTime<Utc>,
}

impl Bounds {
    fn wall(&self, secs: f64) -> DateTime<Utc> {
        self.started + chrono::Duration::microseconds((secs * 1e6) as i64)
    }
}

/// One logged message.
struct Logged {
    seq: i64,
    name: String,
    data: Value,
    ts: DateTime<Utc>,
}

async fn load_logs(
    pool: &PgPool,
    channels: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<Logged>>> {
    let rows = sqlx::query(
        "SELECT channel, seq, name, data, ts FROM postgame.messages
         WHERE channel = ANY($1) ORDER BY channel, seq",
    )
    .bind(channels)
    .fetch_all(pool)
    .await?;
    let mut logs: BTreeMap<String, Vec<Logged>> = BTreeMap::new();
    for r in rows {
        logs.entry(r.try_get("channel")?).or_default().push(Logged {
            seq: r.try_get("seq")?,
            name: r.try_get("name")?,
            data: r.try_get("data")?,
            ts: r.try_get("ts")?,
        });
    }
    Ok(logs)
}

/// Runs every check but presence (see [`presence`]).
pub async fn run(
    pool: &PgPool,
    records: &[Record],
    faults: &[Fault],
    bounds: &Bounds,
) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    for r in records {
        for v in &r.violations {
            f.violation(v.clone());
        }
    }
    queue(pool, &mut f).await?;
    let channels: BTreeSet<String> = records
        .iter()
        .flat_map(|r| r.channels.keys().cloned())
        .chain(records.iter().flat_map(|r| {
            r.publishes
                .iter()
                .map(|p| p.channel.replacen("control:", "match:", 1))
        }))
        .collect();
    let channels: Vec<String> = channels.into_iter().collect();
    let logs = load_logs(pool, &channels).await?;
    publishes(records, &logs, &mut f);
    subscribers(records, &logs, &mut f);
    ticks(records, &logs, faults, &mut f);
    timers(&logs, faults, bounds, &mut f);
    stuck_timers(pool, bounds, &mut f).await?;
    Ok(f)
}

/// Nothing left in the control queue, nothing dead-lettered.
async fn queue(pool: &PgPool, f: &mut Findings) -> anyhow::Result<()> {
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
        .fetch_one(pool)
        .await?;
    if left > 0 {
        f.violation(format!(
            "{left} control messages still queued after quiescing"
        ));
    }
    let dead = sqlx::query(
        "SELECT id, name, last_error FROM postgame.control_dead WHERE name NOT LIKE '$%' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for r in dead.iter().take(NAMED) {
        let id: i64 = r.try_get("id")?;
        let name: String = r.try_get("name")?;
        let err: String = r.try_get("last_error")?;
        f.violation(format!(
            "acked control message {id} ({name}) was dead-lettered, not applied: {err}"
        ));
    }
    if dead.len() > NAMED {
        f.violation(format!("… {} dead letters in all", dead.len()));
    }
    Ok(())
}

/// Every publish acknowledged; every acked chat line in its match's log exactly once, in
/// its publisher's order; no chat line twice.
fn publishes(records: &[Record], logs: &BTreeMap<String, Vec<Logged>>, f: &mut Findings) {
    // text → seqs where it appears.
    let mut seen: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for (channel, log) in logs {
        for m in log.iter().filter(|m| m.name == "chat") {
            if let Some(t) = m.data["text"].as_str() {
                seen.entry((channel.as_str(), t)).or_default().push(m.seq);
            }
        }
    }
    let mut unacked = 0;
    for r in records {
        let mut last_pos: BTreeMap<String, i64> = BTreeMap::new();
        for p in &r.publishes {
            f.count("publishes acknowledged", u64::from(p.ack.is_some()));
            if p.ack.is_none() && p.refused.is_none() {
                unacked += 1;
                if unacked <= NAMED {
                    f.violation(format!(
                        "{}: publish {} ({}) never acknowledged",
                        r.name, p.key, p.name
                    ));
                }
            }
            if p.name != "chat" {
                continue;
            }
            let channel = p.channel.replacen("control:", "match:", 1);
            let text = p.data["text"].as_str().unwrap_or("");
            let at = seen
                .get(&(channel.as_str(), text))
                .cloned()
                .unwrap_or_default();
            f.count("chat lines checked", 1);
            match (at.len(), p.ack.is_some()) {
                (1, _) => {
                    let pos = at[0];
                    if let Some(prev) = last_pos.get(&channel) {
                        if pos < *prev {
                            f.violation(format!(
                                "{}: chat {text:?} applied at seq {pos}, before an earlier publish \
                                 of the same client (seq {prev}) in {channel}",
                                r.name
                            ));
                        }
                    }
                    last_pos.insert(channel, pos);
                }
                (0, true) => f.violation(format!(
                    "{}: acked chat {text:?} (key {}) is not in {channel}'s log",
                    r.name, p.key
                )),
                (0, false) => {}
                (n, _) => f.violation(format!(
                    "{}: chat {text:?} (key {}) applied {n} times in {channel} (seqs {at:?})",
                    r.name, p.key
                )),
            }
        }
    }
    if unacked > NAMED {
        f.violation(format!("… {unacked} publishes never acknowledged in all"));
    }
}

/// Every subscriber's log: from seq 1 (the first subscription asked for `since: 0`), no
/// gap, no duplicate, each message equal to the database's.
fn subscribers(records: &[Record], logs: &BTreeMap<String, Vec<Logged>>, f: &mut Findings) {
    for r in records {
        for (channel, c) in &r.channels {
            let Some(log) = logs.get(channel) else {
                if !c.messages.is_empty() {
                    f.violation(format!(
                        "{}: messages on {channel}, which has no log",
                        r.name
                    ));
                }
                continue;
            };
            let by_seq: BTreeMap<i64, &Logged> = log.iter().map(|m| (m.seq, m)).collect();
            let mut expect = 1;
            for (seq, name, data, _) in &c.messages {
                f.count("messages received and checked", 1);
                if *seq < expect {
                    f.violation(format!(
                        "{}: duplicate seq {seq} on {channel} (expected {expect})",
                        r.name
                    ));
                    continue;
                }
                if *seq > expect {
                    f.violation(format!(
                        "{}: gap on {channel}: seqs {expect}..{} never received",
                        r.name,
                        seq - 1
                    ));
                }
                expect = seq + 1;
                match by_seq.get(seq) {
                    Some(m) if m.name == *name && m.data == *data => {}
                    Some(_) => f.violation(format!(
                        "{}: seq {seq} on {channel} differs from the log",
                        r.name
                    )),
                    None => f.violation(format!(
                        "{}: seq {seq} on {channel} is not in the log",
                        r.name
                    )),
                }
            }
        }
    }
}

/// Pong: `latest` versions never go back; while playing, each newer version has a newer
/// tick (a tick applied twice would repeat one) except right after a crash of Postgres
/// (the asynchronously committed last ticks are replayed, by design); and no match is
/// ever ahead of its clock: tick ≤ (at − start) / 50 ms + 1.
fn ticks(
    records: &[Record],
    logs: &BTreeMap<String, Vec<Logged>>,
    faults: &[Fault],
    f: &mut Findings,
) {
    let crashes: Vec<f64> = faults
        .iter()
        .filter(|x| x.kind == super::FaultKind::PgCrash)
        .map(|x| x.start)
        .collect();
    for r in records.iter().filter(|r| r.kind == Kind::Pong) {
        for (channel, c) in &r.channels {
            let start = logs.get(channel).and_then(|log| {
                log.iter()
                    .find(|m| m.name == "state" && m.data["status"] == "playing")
                    .and_then(|m| m.data["at"].as_str())
                    .and_then(|a| DateTime::parse_from_rfc3339(a).ok())
                    .map(|a| a.with_timezone(&Utc))
            });
            let mut prev: Option<&super::driver::LatestRec> = None;
            for l in &c.latest {
                f.count("pong frames checked", 1);
                if let (Some(start), Ok(at)) = (start, DateTime::parse_from_rfc3339(&l.at)) {
                    let us = (at.with_timezone(&Utc) - start)
                        .num_microseconds()
                        .unwrap_or(i64::MAX);
                    if l.status == "playing" && us >= 0 && l.tick > us / PONG_PERIOD_US + 1 {
                        f.violation(format!(
                            "{}: {channel} at tick {} only {} ms after its start: ticks applied twice",
                            r.name,
                            l.tick,
                            us / 1000
                        ));
                    }
                }
                if let Some(p) = prev {
                    if l.version < p.version || (l.version == p.version && !l.first) {
                        f.violation(format!(
                            "{}: {channel} latest version went from {} to {}",
                            r.name, p.version, l.version
                        ));
                    } else if l.version > p.version
                        && l.status == "playing"
                        && p.status == "playing"
                        && l.tick <= p.tick
                    {
                        let crashed = crashes.iter().any(|c| *c >= p.recv - 1.0 && *c <= l.recv);
                        if crashed {
                            f.count("pong ticks replayed after a Postgres crash", 1);
                        } else {
                            f.violation(format!(
                                "{}: {channel} tick {} again after tick {} (versions {} then {}): \
                                 a tick applied twice",
                                r.name, l.tick, p.tick, p.version, l.version
                            ));
                        }
                    }
                }
                if prev.map_or(true, |p| l.version >= p.version) {
                    prev = Some(l);
                }
            }
        }
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Seconds of `[from, to]` during which Postgres was down (or its clients reconnecting:
/// 5 s after each restart), or a ticker frozen or being restarted.
fn outage_overlap(
    faults: &[Fault],
    bounds: &Bounds,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> f64 {
    faults
        .iter()
        .filter(|x| x.kind.is_postgres() || x.target.starts_with("ticker"))
        .map(|x| {
            let a = bounds.wall(x.start).max(from);
            let b = bounds.wall(x.end + 5.0).min(to);
            ((b - a).num_milliseconds().max(0)) as f64 / 1000.0
        })
        .sum()
}

/// Tic Tac Toe: each game ends at most once; a move count never jumps; every turn timer
/// that ended a game fired after its deadline and within lease + 3 s of it (plus the time
/// Postgres or a ticker was down meanwhile).
fn timers(
    logs: &BTreeMap<String, Vec<Logged>>,
    faults: &[Fault],
    bounds: &Bounds,
    f: &mut Findings,
) {
    let base = bounds.lease_seconds + 3.0;
    let mut worst: f64 = 0.0;
    for (channel, log) in logs {
        let mut prev: Option<&Logged> = None;
        let mut ended: BTreeMap<i64, u32> = BTreeMap::new();
        for m in log.iter().filter(|m| m.name == "state") {
            if m.data.get("move_count").is_none() {
                break; // not Tic Tac Toe
            }
            if let Some(p) = prev {
                let (pd, d) = (&p.data, &m.data);
                let same_game = pd["game_no"] == d["game_no"];
                let (pmc, mc) = (
                    pd["move_count"].as_i64().unwrap_or(0),
                    d["move_count"].as_i64().unwrap_or(0),
                );
                if same_game && (mc < pmc || mc > pmc + 1) {
                    f.violation(format!(
                        "{channel}: move count went from {pmc} to {mc} in one step (seq {})",
                        m.seq
                    ));
                }
                let over = |s: &Value| matches!(s.as_str(), Some("won" | "draw" | "abandoned"));
                if same_game && pd["status"] == "playing" && over(&d["status"]) {
                    let n = ended.entry(d["game_no"].as_i64().unwrap_or(0)).or_default();
                    *n += 1;
                    if *n > 1 {
                        f.violation(format!(
                            "{channel}: game {} ended twice (seq {})",
                            d["game_no"], m.seq
                        ));
                    }
                    let turn_lost = d["status"] == "won"
                        && mc == pmc
                        && d["winner"].as_str() != pd["turn"].as_str();
                    if let (true, Some(deadline)) = (turn_lost, parse_time(&pd["turn_deadline"])) {
                        let late = (m.ts - deadline).num_milliseconds() as f64 / 1000.0;
                        if late >= -0.05 {
                            f.count("turn timers checked", 1);
                            let allowed = base + outage_overlap(faults, bounds, deadline, m.ts);
                            worst = worst.max(late);
                            if late > allowed {
                                f.violation(format!(
                                    "{channel}: the turn timer of game {} fired {late:.1} s after \
                                     its deadline (allowed {allowed:.1} s)",
                                    d["game_no"]
                                ));
                            }
                        } else {
                            f.count("forfeits on disconnection", 1);
                        }
                    }
                }
            }
            prev = Some(m);
        }
    }
    f.count("turn timer: worst lateness in ms", (worst * 1000.0) as u64);
}

/// No Tic Tac Toe match is still playing past its deadline (a timer that never fired).
async fn stuck_timers(pool: &PgPool, bounds: &Bounds, f: &mut Findings) -> anyhow::Result<()> {
    let stuck = sqlx::query(
        "SELECT id::text AS id, view->>'turn_deadline' AS deadline FROM postgame.matches
         WHERE game = 'tictactoe' AND status = 'playing'
           AND (view->>'turn_deadline')::timestamptz < now() - make_interval(secs => $1)",
    )
    .bind(bounds.lease_seconds + 3.0)
    .fetch_all(pool)
    .await?;
    for r in stuck {
        let id: String = r.try_get("id")?;
        let deadline: Option<String> = r.try_get("deadline")?;
        f.violation(format!(
            "match {id}: still playing after its turn deadline {deadline:?}: the timer never fired"
        ));
    }
    Ok(())
}

/// `postgame.presence` as (connection, match, client) triples.
pub async fn presence_rows(pool: &PgPool) -> anyhow::Result<BTreeSet<(String, String, String)>> {
    let rows = sqlx::query(
        "SELECT connection, match_id::text AS match_id, client_id FROM postgame.presence",
    )
    .fetch_all(pool)
    .await?;
    let mut recorded = BTreeSet::new();
    for r in rows {
        let c: String = r.try_get("connection")?;
        let m: String = r.try_get("match_id")?;
        let who: String = r.try_get("client_id")?;
        recorded.insert((c, m, who));
    }
    Ok(recorded)
}

/// Presence at the end: exactly the live connections are recorded, and each Tic Tac Toe
/// player shows as connected exactly when one of its connections is live.
pub async fn presence(
    pool: &PgPool,
    live: &[(String, String, String)],
    players: &BTreeMap<String, String>,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let recorded = presence_rows(pool).await?;
    let expected: BTreeSet<(String, String, String)> = live.iter().cloned().collect();
    f.count("presence rows checked", recorded.len() as u64);
    for (c, m, who) in recorded.difference(&expected) {
        f.violation(format!(
            "presence: {who}'s connection {c} in match {m} is recorded but not live"
        ));
    }
    for (c, m, who) in expected.difference(&recorded) {
        f.violation(format!(
            "presence: {who}'s live connection {c} in match {m} is not recorded"
        ));
    }
    let live_clients: BTreeSet<(&str, &str)> = live
        .iter()
        .map(|(_, m, who)| (m.as_str(), who.as_str()))
        .collect();
    let views = sqlx::query(
        "SELECT id::text AS id, view FROM postgame.matches WHERE game = 'tictactoe'
           AND status IN ('playing', 'won', 'draw')",
    )
    .fetch_all(pool)
    .await?;
    for r in views {
        let id: String = r.try_get("id")?;
        let view: Option<Value> = r.try_get("view")?;
        let Some(view) = view else { continue };
        for mark in ["X", "O"] {
            let Some(player) = view["players"][mark].as_str() else {
                continue;
            };
            if !players.contains_key(player) {
                continue;
            }
            f.count("players' connected flags checked", 1);
            let shown = view["connected"][mark].as_bool().unwrap_or(false);
            let is = live_clients.contains(&(id.as_str(), player));
            if shown != is {
                f.violation(format!(
                    "presence: match {id} shows {player} ({mark}) connected={shown}, \
                     but a live connection {}",
                    if is { "exists" } else { "does not" }
                ));
            }
        }
    }
    Ok(())
}
