// The Pong page (/pong): the built-in game `pong` (src/game/pong.rs), drawn on a canvas.
// No framework, no build step.
//
// - Identity: a guest token in sessionStorage (as in the Tic Tac Toe demo), so a reload
//   keeps the seat; another window is another player.
// - A match is at /pong#/match/<id>. Opening it while it waits for players joins it: the
//   creator takes the left paddle, whoever opens the link the right one (a match created
//   with {"bot": true} has the server's bot on the right, so play starts at once).
// - States arrive on match:<id> as `state`: every tick as a `latest` value, and also as
//   log messages at joins, points and the end (postgame.js hands both to the same
//   handler). The two kinds are not ordered with respect to each other, so the
//   page keeps the newest by the game's own clock (`tick`, then status and seats on a tie).
// - Drawing runs at the display's rate and interpolates between the last two ticks (so the
//   picture is one tick, 50 ms, behind the server).
// - Input: `input` {dir} is published only when the direction changes.
//
// For tests, window.__pong holds what was drawn last ({id, side, tick, state, frames}) and
// the directions sent (`sent`).

import { connect } from '/postgame.js';

const client = connect({ url: location.origin, storage: sessionStorage, storageKey: 'postgame.demo.guest' });

const $ = (id) => document.getElementById(id);
const UUID = /^#\/match\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i;

// The field, in game units (src/game/pong.rs).
const W = 200;
const H = 120;
const PADDLE_HALF = 12;
const PADDLE_INSET = 8;
const TICK_MS = 50;
const COLORS = { left: '#8a93f5', right: '#f59a86', ball: '#ffffff', line: 'rgba(255,255,255,0.18)', bg: '#1d2330' };

const short = (id) => (id || '').replace(/^guest-/, '').slice(0, 6);

let noticeTimer = null;
function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($('notice').hidden = true), 5000);
}
const failed = (e) => notice(e && e.message ? e.message : String(e));

// ---- connection ---------------------------------------------------------------------------

const CONN_TEXT = { connecting: 'connecting…', connected: 'online', disconnected: 'offline, reconnecting…' };
let connections = 0;
client.on('state', (state) => {
  document.body.dataset.conn = state;
  $('conn').dataset.state = state;
  $('conn').textContent = CONN_TEXT[state];
});
client.on('connected', () => {
  $('conn').dataset.connections = String(++connections);
  if (current) renderHud();
});
client.on('error', (e) => e.code !== 'network' && notice(e.message));

// ---- creating a match ---------------------------------------------------------------------

async function create(config) {
  for (const b of [$('new-match'), $('play-bot'), $('again')]) b.disabled = true;
  try {
    const m = await client.request('POST', '/v1/matches', { game: 'pong', config });
    location.hash = `#/match/${m.id}`;
  } catch (e) {
    failed(e);
  } finally {
    for (const b of [$('new-match'), $('play-bot'), $('again')]) b.disabled = false;
  }
}

const points = () => Number($('points').value) || 5;
$('new-match').addEventListener('click', () => create({ points_to_win: points() }));
$('play-bot').addEventListener('click', () => create({ points_to_win: points(), bot: true }));
$('again').addEventListener('click', () => {
  const c = (current && current.config) || {};
  create(c.bot ? { points_to_win: c.points_to_win || 5, bot: true } : { points_to_win: c.points_to_win || 5 });
});

// ---- a match ------------------------------------------------------------------------------

/** The match on screen: {id, sub, config, state, prev, at, joined}. */
let current = null;

const RANK = { waiting: 0, playing: 1, finished: 2, abandoned: 2 };
/** Whether a paddle is taken, by a player or by the server's bot (`bot`: the bot's side). */
const taken = (s, side) => Boolean(s.players[side]) || s.bot === side;
const seated = (s) => (taken(s, 'left') ? 1 : 0) + (taken(s, 'right') ? 1 : 0);

/** Whether state `b` is at least as new as `a`: by tick, then (same tick) by status, then seats. */
function notOlder(b, a) {
  if (b.tick !== a.tick) return b.tick > a.tick;
  if (RANK[b.status] !== RANK[a.status]) return RANK[b.status] > RANK[a.status];
  return seated(b) >= seated(a);
}

function accept(m, s) {
  if (!s || typeof s.tick !== 'number') return;
  if (m.state && !notOlder(s, m.state)) return; // an older state arriving late
  if (!m.state || s.tick !== m.state.tick) {
    // A new tick: interpolate from the one drawn so far. (The same tick again, as a log
    // message and as a latest value, or after a join, only replaces the newest state.)
    m.prev = m.state;
    m.at = performance.now();
  }
  m.state = s;
  if (current === m) {
    renderHud();
    maybeJoin(m);
  }
}

function openMatch(id) {
  closeMatch();
  const m = { id, sub: null, config: null, state: null, prev: null, at: 0, joined: false };
  current = m;
  resetInput();
  m.sub = client.subscribe(`match:${id}`, (msg) => msg.name === 'state' && accept(m, msg.data), {
    // The subscription starts now: the state so far comes from GET /v1/matches/{id} (with
    // `latest` frames, the server also sends the current one right after `subscribed`).
    onSubscribed: () => fetchMatch(m),
    onError: (e) => {
      notice(e.code === 'not_found' ? 'There is no such match.' : e.message);
      if (current === m) location.hash = '#/';
    },
  });
  $('invite').value = `${location.origin}/pong#/match/${id}`;
  renderHud();
}

function closeMatch() {
  if (!current) return;
  resetInput();
  current.sub.unsubscribe();
  current = null;
}

async function fetchMatch(m) {
  try {
    const info = await client.request('GET', `/v1/matches/${m.id}`);
    m.config = info.config || {};
    if (!m.state) accept(m, info.state); // anything from the subscription is newer
    else if (current === m) renderHud();
    if (current === m) maybeJoin(m);
  } catch (e) {
    if (e.code !== 'not_found' && e.code !== 'network') failed(e);
  }
}

/** Opening a match that waits for a player takes the free paddle (once). */
function maybeJoin(m) {
  const s = m.state;
  if (m.joined || !s || s.status !== 'waiting' || sideOf(s) || seated(s) === 2) return;
  m.joined = true;
  client.publish(`control:${m.id}`, 'join', {}).catch(failed);
}

function sideOf(s) {
  const me = client.clientId;
  if (!s || !me) return null;
  return s.players.left === me ? 'left' : s.players.right === me ? 'right' : null;
}

// ---- text around the field ----------------------------------------------------------------

function nameOf(s, side) {
  const id = s.players[side];
  if (s.bot === side) return 'Bot';
  if (!id) return 'open seat';
  if (id === client.clientId) return 'You';
  return `Player ${short(id)}`;
}

function statusText(m, s, mine) {
  const winnerName = s.winner === 'left' ? 'Left' : 'Right';
  const byForfeit = s.winner && s.score[s.winner] < s.points_to_win;
  switch (s.status) {
    case 'waiting':
      return mine ? 'Waiting for an opponent…' : seated(s) < 2 ? 'Joining…' : 'Waiting…';
    case 'playing':
      return s.serve_in > 0 ? 'Get ready…' : 'Playing';
    case 'finished':
      if (!mine) return `${winnerName} wins${byForfeit ? ' (the other player left)' : ''}`;
      if (s.winner === mine) return byForfeit ? 'You won: your opponent left' : 'You won!';
      return byForfeit ? 'You resigned' : 'You lost';
    case 'abandoned':
      return 'Match abandoned';
    default:
      return s.status;
  }
}

function renderHud() {
  const m = current;
  if (!m) return;
  const s = m.state;
  if (!s) {
    $('status-text').textContent = 'Loading…';
    return;
  }
  const mine = sideOf(s);
  for (const side of ['left', 'right']) {
    $(`name-${side}`).textContent = nameOf(s, side);
    $(`score-${side}`).textContent = String(s.score[side]);
  }
  const text = statusText(m, s, mine);
  $('status').dataset.status = s.status;
  $('status-text').textContent = text;
  $('status-text').className = s.status === 'finished' && mine ? (s.winner === mine ? 'good' : 'bad') : '';
  document.title = `${text} · postgame pong`;
  $('role').textContent = mine
    ? `You play the ${mine} paddle · first to ${s.points_to_win}`
    : `You are watching · first to ${s.points_to_win}`;
  const live = s.status === 'waiting' || s.status === 'playing';
  $('share').hidden = !(s.status === 'waiting' && mine && !(m.config && m.config.bot));
  $('pad').hidden = !(mine && live);
  $('leave').hidden = !(mine && live);
  $('leave').textContent = s.status === 'playing' ? 'Resign' : 'Cancel match';
  $('again').hidden = live || !m.config;
  $('again').textContent = m.config && m.config.bot ? 'Play the bot again' : 'New match';
  if (!live) resetInput();
}

$('leave').addEventListener('click', () => current && client.publish(`control:${current.id}`, 'leave', {}).catch(failed));
$('copy-link').addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText($('invite').value);
    notice('Link copied.');
  } catch {
    $('invite').select(); // no clipboard (not a secure context): let the person copy it
  }
});

// ---- input --------------------------------------------------------------------------------

/** Directions held, the most recent last: 'up' | 'down'. */
let held = [];
let sentDir = 0;

function updateDir() {
  const last = held[held.length - 1];
  const dir = last === 'up' ? -1 : last === 'down' ? 1 : 0;
  if (dir === sentDir) return;
  const m = current;
  const s = m && m.state;
  if (!s || !sideOf(s) || (s.status !== 'waiting' && s.status !== 'playing')) return;
  sentDir = dir;
  window.__pong.sent.push(dir);
  client.publish(`control:${m.id}`, 'input', { dir }).catch(failed);
}
function press(d) {
  held = held.filter((h) => h !== d).concat(d);
  updateDir();
}
function release(d) {
  held = held.filter((h) => h !== d);
  updateDir();
}
function resetInput() {
  held = [];
  sentDir = 0;
}

const KEYS = { ArrowUp: 'up', KeyW: 'up', ArrowDown: 'down', KeyS: 'down' };
window.addEventListener('keydown', (e) => {
  const d = KEYS[e.code];
  if (!d || !current || e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  e.preventDefault(); // no scrolling
  if (!e.repeat) press(d);
});
window.addEventListener('keyup', (e) => KEYS[e.code] && release(KEYS[e.code]));
window.addEventListener('blur', () => {
  held = [];
  updateDir();
});
for (const [id, d] of [['up', 'up'], ['down', 'down']]) {
  const b = $(id);
  b.addEventListener('pointerdown', (e) => {
    e.preventDefault();
    b.setPointerCapture(e.pointerId);
    press(d);
  });
  for (const ev of ['pointerup', 'pointercancel', 'lostpointercapture']) b.addEventListener(ev, () => release(d));
  b.addEventListener('contextmenu', (e) => e.preventDefault()); // a long press on a phone
}

// ---- drawing ------------------------------------------------------------------------------

const canvas = $('field');
const ctx = canvas.getContext('2d');
window.__pong = { id: null, side: null, tick: -1, state: null, frames: 0, sent: [] };

/** Positions between the previous tick and the newest one, `t` of the way (0..1). */
function between(m, t) {
  const { prev: a, state: b } = m;
  // Interpolate only across one or two steps of the same rally (a point resets the ball).
  const smooth = a && b.tick - a.tick >= 1 && b.tick - a.tick <= 2 && a.score.left + a.score.right === b.score.left + b.score.right;
  const lerp = (x, y) => (smooth ? x + (y - x) * t : y);
  return {
    left: lerp(a && a.paddles.left, b.paddles.left),
    right: lerp(a && a.paddles.right, b.paddles.right),
    x: lerp(a && a.ball.x, b.ball.x),
    y: lerp(a && a.ball.y, b.ball.y),
  };
}

function overlay(s, mine) {
  if (s.status === 'waiting') return mine ? 'Send the link to an opponent' : '';
  if (s.status === 'finished') return s.winner === mine ? 'You won!' : mine ? 'You lost' : `${s.winner === 'left' ? 'Left' : 'Right'} wins`;
  if (s.status === 'abandoned') return 'Abandoned';
  return '';
}

function draw(now) {
  requestAnimationFrame(draw);
  const m = current;
  if (!m || !m.state) return;
  const s = m.state;
  const k = canvas.width / W; // pixels per unit
  const p = between(m, Math.min(1, (now - m.at) / TICK_MS));
  const mine = sideOf(s);

  ctx.fillStyle = COLORS.bg;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = COLORS.line;
  ctx.lineWidth = 2;
  ctx.setLineDash([10, 12]);
  ctx.beginPath();
  ctx.moveTo(canvas.width / 2, 0);
  ctx.lineTo(canvas.width / 2, canvas.height);
  ctx.stroke();
  ctx.setLineDash([]);

  for (const side of ['left', 'right']) {
    const face = side === 'left' ? PADDLE_INSET : W - PADDLE_INSET;
    const x = side === 'left' ? face - 3 : face;
    ctx.fillStyle = COLORS[side];
    ctx.globalAlpha = taken(s, side) ? 1 : 0.3;
    ctx.shadowColor = COLORS[side];
    ctx.shadowBlur = side === mine ? 16 : 0;
    ctx.fillRect(x * k, (p[side] - PADDLE_HALF) * k, 3 * k, 2 * PADDLE_HALF * k);
  }
  ctx.globalAlpha = 1;
  ctx.shadowBlur = 0;

  if (s.status === 'playing') {
    ctx.fillStyle = COLORS.ball;
    ctx.beginPath();
    ctx.arc(p.x * k, p.y * k, 2 * k, 0, 2 * Math.PI);
    ctx.fill();
  }

  const text = overlay(s, mine);
  if (text) {
    ctx.font = '600 32px system-ui, sans-serif';
    const width = ctx.measureText(text).width + 56;
    ctx.fillStyle = 'rgba(29,35,48,0.85)';
    ctx.fillRect((canvas.width - width) / 2, canvas.height / 2 - 32, width, 64);
    ctx.fillStyle = '#ffffff';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(text, canvas.width / 2, canvas.height / 2);
  }

  const w = window.__pong;
  w.id = m.id;
  w.side = mine;
  w.tick = s.tick;
  w.state = s;
  w.frames += 1;
}
requestAnimationFrame(draw);

// ---- routing ------------------------------------------------------------------------------

function route() {
  const found = location.hash.match(UUID);
  $('loading').hidden = true;
  if (found) {
    const id = found[1].toLowerCase();
    if (!current || current.id !== id) openMatch(id);
    $('home').hidden = true;
    $('match').hidden = false;
  } else {
    closeMatch();
    document.title = 'postgame · Pong';
    $('match').hidden = true;
    $('home').hidden = false;
  }
}

window.addEventListener('hashchange', route);
route();
