//! Test games for the tickers.
//!
//! - `metronome` ticks at `hz`, catching up when late: beat `n` must be the tick scheduled
//!   for slot `created + n × period` (it fails otherwise), so a missing beat shows as a
//!   schedule behind its count, a doubled one as a tick for the wrong slot, and a lost
//!   update as `version` ≠ beats. It keeps its latest beats (number, slot, lateness). With
//!   `{"broken": true}` every tick panics; with `{"hang": true}` every tick sleeps 5 s.
//! - `interleave` ticks at `hz` and takes `n` inputs; ticks and inputs both bump a
//!   `version` kept in the state and append to a trace of steps, so a tick and an input
//!   that ran on the same stored state (interleaved) would lose one of the two updates.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use postgame::game::{Cx, Game, GameError, Input, Outgoing, Registry, Tick};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn period(hz: u32) -> Duration {
    Duration::microseconds(1_000_000 / i64::from(hz.max(1)))
}

pub struct Metronome;

#[derive(Serialize, Deserialize)]
pub struct MetronomeConfig {
    pub hz: u32,
    #[serde(default)]
    pub broken: bool,
    /// Every tick sleeps 5 s (past the ticker's handler time limit).
    #[serde(default)]
    pub hang: bool,
}

/// How many of the latest beats a metronome keeps (the state stays small, so a tick costs
/// the same however long the match has run).
pub const RECENT: usize = 16;

#[derive(Serialize, Deserialize, Clone)]
pub struct MetronomeState {
    pub hz: u32,
    pub broken: bool,
    /// When the next beat is due: one period after the last beat's slot.
    pub next: DateTime<Utc>,
    /// Beats so far; beat `n` is the tick of the slot `created + n × period`.
    pub count: u64,
    /// The latest beats, oldest first: `[n, scheduled (µs since the epoch), lateness (µs)]`.
    pub recent: VecDeque<[i64; 3]>,
    /// The largest lateness of any beat, in µs.
    pub max_late_us: i64,
}
impl Game for Metronome {
    type Config = MetronomeConfig;
    type State = MetronomeState;

    fn name(&self) -> &'static str {
        "metronome"
    }

    fn config(&self, raw: &Value) -> Result<MetronomeConfig, String> {
        serde_json::from_value(raw.clone()).map_err(|e| e.to_string())
    }

    fn create(&self, cx: &Cx<'_, MetronomeConfig>, _out: &mut Vec<Outgoing>) -> MetronomeState {
        MetronomeState {
            hz: cx.config.hz,
            broken: cx.config.broken,
            next: cx.now + period(cx.config.hz),
            count: 0,
            recent: VecDeque::new(),
            max_late_us: 0,
        }
    }

    fn handle(
        &self,
        _cx: &Cx<'_, MetronomeConfig>,
        _state: &mut MetronomeState,
        _input: &Input,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        Ok(())
    }

    fn tick(
        &self,
        cx: &Cx<'_, MetronomeConfig>,
        state: &mut MetronomeState,
        tick: Tick,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        if cx.config.hang {
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        if state.broken {
            panic!("metronome broken on purpose");
        }
        anyhow::ensure!(
            tick.scheduled == state.next,
            "ticked for {} but the next beat is {}",
            tick.scheduled,
            state.next
        );
        state.count += 1;
        let late = (tick.now - tick.scheduled)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        state.max_late_us = state.max_late_us.max(late);
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back([
            i64::try_from(state.count).unwrap_or(i64::MAX),
            tick.scheduled.timestamp_micros(),
            late,
        ]);
        // Catch up: the next beat is one period after this one's slot, even when late.
        state.next = tick.scheduled + period(state.hz);
        Ok(())
    }

    fn status(&self, _state: &MetronomeState) -> &'static str {
        "running"
    }

    fn next_tick_at(&self, state: &MetronomeState) -> Option<DateTime<Utc>> {
        Some(state.next)
    }
}

pub struct Interleave;

#[derive(Serialize, Deserialize)]
pub struct InterleaveConfig {
    pub hz: u32,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct InterleaveState {
    pub hz: u32,
    pub next: DateTime<Utc>,
    /// Ticks plus inputs applied to this state: must equal the engine's `matches.version`.
    pub version: i64,
    pub ticks: i64,
    pub inputs: i64,
    /// One character per applied step, in order (`t` a tick, `i` an input): step `k` is
    /// the one that made `version` k. Compact, so a step costs little however many ran.
    pub trace: String,
    /// Every client's `n`s, in the order they were applied.
    pub ns: BTreeMap<String, Vec<i64>>,
}

impl InterleaveState {
    fn step(&mut self, kind: char) {
        self.version += 1;
        self.trace.push(kind);
    }
}

impl Game for Interleave {
    type Config = InterleaveConfig;
    type State = InterleaveState;

    fn name(&self) -> &'static str {
        "interleave"
    }

    fn config(&self, raw: &Value) -> Result<InterleaveConfig, String> {
        serde_json::from_value(raw.clone()).map_err(|e| e.to_string())
    }

    fn create(&self, cx: &Cx<'_, InterleaveConfig>, _out: &mut Vec<Outgoing>) -> InterleaveState {
        InterleaveState {
            hz: cx.config.hz,
            next: cx.now + period(cx.config.hz),
            version: 0,
            ticks: 0,
            inputs: 0,
            trace: String::new(),
            ns: BTreeMap::new(),
        }
    }

    fn handle(
        &self,
        _cx: &Cx<'_, InterleaveConfig>,
        state: &mut InterleaveState,
        input: &Input,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        // Presence changes are inputs too: they count like any other.
        let (client, n) = match input {
            Input::Client { client, data, .. } => (client.to_string(), data["n"].as_i64()),
            Input::Connected { client, .. } | Input::Disconnected { client, .. } => {
                (client.to_string(), None)
            }
        };
        state.inputs += 1;
        if let Some(n) = n {
            state.ns.entry(client).or_default().push(n);
        }
        state.step('i');
        Ok(())
    }

    fn tick(
        &self,
        _cx: &Cx<'_, InterleaveConfig>,
        state: &mut InterleaveState,
        tick: Tick,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        anyhow::ensure!(
            tick.scheduled == state.next,
            "ticked for {} but the next tick is {}",
            tick.scheduled,
            state.next
        );
        state.ticks += 1;
        state.step('t');
        state.next = tick.scheduled + period(state.hz);
        Ok(())
    }

    fn status(&self, _state: &InterleaveState) -> &'static str {
        "running"
    }

    fn next_tick_at(&self, state: &InterleaveState) -> Option<DateTime<Utc>> {
        Some(state.next)
    }
}

pub fn games() -> Registry {
    Registry::builtin().with(Metronome).with(Interleave)
}
