// The postgame demo: a lobby and Tic Tac Toe, on postgame.js. No framework, no build step.
//
// Identity: the guest token is kept in sessionStorage, which survives a reload of the tab
// but is not shared with other windows, so two windows of one browser are two players.
// A reload keeps the same client id, hence the same seat: the page subscribes to
// `match:<id>` again with `since: 0` and rebuilds the board (and the chat) from the
// replayed messages. After a server restart postgame.js reconnects and resumes every
// channel from the last seq it delivered.

import { connect } from '/postgame.js';

// Display names: a player picks one once; POST /v1/tokens with the player's own token
// re-mints the same identity with that name, kept with the guest token. The name goes
// with every `join`, and the match shows it to everyone (`state.names`).
const GUEST_KEY = 'postgame.demo.guest';
const client = connect({ url: location.origin, storage: sessionStorage, storageKey: GUEST_KEY });

const $ = (id) => document.getElementById(id);
const GAME = 'tictactoe';
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;
/** A lobby code: the first hex digits of a match id (the lobby shows 8). */
const CODE = /^[0-9a-f]{4,32}$/i;
const LINES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]];
const REASONS = {
  not_your_turn: "It's not your turn.",
  cell_taken: 'That cell is taken.',
  not_started: 'The game has not started yet: waiting for a second player.',
  game_over: 'The game is over.',
  not_a_player: 'You are watching this match, not playing it.',
  game_not_over: 'The game is still on.',
  match_abandoned: 'This match was abandoned.',
  opponent_left: 'Your opponent has left: no rematch.',
  cell_out_of_range: 'There is no such cell.',
  bad_request: 'The server did not understand that.',
  unknown_action: 'The server does not know that action.',
};

const short = (id) => (id || '').replace(/^guest-/, '').slice(0, 6);

// ---- small UI helpers ---------------------------------------------------------------------

let noticeTimer = null;
function notice(text) {
  const el = $('notice');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (el.hidden = true), 4000);
}

function failed(error) {
  notice(error && error.message ? error.message : String(error));
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const c of children) node.append(c);
  return node;
}

// ---- connection state and identity --------------------------------------------------------

/** The display name kept with this tab's guest identity ('' when none). */
function myName() {
  try {
    const guest = JSON.parse(sessionStorage.getItem(GUEST_KEY) || 'null');
    return (guest && guest.name) || '';
  } catch {
    return '';
  }
}

/** The data of a `join`: the display name, when there is one. */
const joinData = () => (myName() ? { name: myName() } : {});

$('name').value = myName();
$('name-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    // Sent with this tab's token: the same client id comes back, now with the name.
    const guest = await client.request('POST', '/v1/tokens', { name: $('name').value.trim() });
    sessionStorage.setItem(GUEST_KEY, JSON.stringify(guest));
    $('name').value = guest.name || '';
    notice(guest.name ? `Your name is ${guest.name}.` : 'Your name is cleared.');
  } catch (e) {
    failed(e);
  }
});

const CONN_TEXT = { connecting: 'connecting…', connected: 'online', disconnected: 'offline, reconnecting…' };
client.on('state', (state) => {
  document.body.dataset.conn = state;
  $('conn').dataset.state = state;
  $('conn').textContent = CONN_TEXT[state];
});
client.on('error', (e) => {
  if (e.code !== 'network') notice(e.message);
});

let userSub = null;
let connections = 0;
client.on('connected', () => {
  $('conn').dataset.connections = String(++connections); // how many times (re)connected
  // Private replies (rejected moves) come on user:<my id>. Normally subscribed once; a new
  // guest identity (an expired token) needs a new channel.
  const channel = `user:${client.clientId}`;
  if (userSub && userSub.channel === channel) return;
  if (userSub) userSub.unsubscribe();
  userSub = client.subscribe(
    channel,
    (msg) => {
      if (msg.name === 'rejected') notice(REASONS[msg.data.reason] || msg.data.reason);
      else if (msg.name === 'matched') onMatched(msg.data);
      else if (msg.name === 'matchmaker_expired') onTicketEnded(msg.data);
    },
    // forbidden: the channel of an identity we no longer have (replaced just below).
    { onError: (e) => e.code !== 'forbidden' && failed(e) },
  );
  if (current) render();
});

// ---- the lobby ----------------------------------------------------------------------------

/** id → {id, status, created_at} */
const lobbyMatches = new Map();
/** Statuses announced on the lobby channel since we subscribed: newer than any list. */
const liveStatus = new Map();

client.subscribe('lobby', (msg) => {
  if (msg.name !== 'match' || msg.data.game !== GAME) return;
  const { id, status } = msg.data;
  liveStatus.set(id, status);
  const entry = lobbyMatches.get(id) || { id, created_at: msg.ts };
  entry.status = status;
  lobbyMatches.set(id, entry);
  renderLobby();
}, {
  // Listing after subscribing leaves no hole; a resume that lost messages lists again.
  onSubscribed: ({ resumed, recovered }) => {
    if (!resumed || !recovered) loadLobby();
  },
});

async function loadLobby() {
  try {
    const { matches } = await client.request('GET', `/v1/matches?game=${GAME}&limit=100`);
    lobbyMatches.clear();
    for (const m of matches) {
      lobbyMatches.set(m.id, { id: m.id, created_at: m.created_at, status: liveStatus.get(m.id) || m.status });
    }
    renderLobby();
  } catch (e) {
    if (e.code !== 'network') failed(e);
  }
}

function renderLobby() {
  const open = [...lobbyMatches.values()]
    .filter((m) => m.status === 'waiting' || m.status === 'playing')
    .sort((a, b) => (a.created_at < b.created_at ? 1 : -1))
    .slice(0, 20);
  const list = $('matches');
  list.replaceChildren(
    ...open.map((m) => {
      const waiting = m.status === 'waiting';
      const button = el('button', { textContent: waiting ? 'Join' : 'Watch', className: waiting ? 'primary' : '' });
      button.addEventListener('click', () => openFromLobby(m.id, waiting));
      const li = el(
        'li',
        {},
        el('span', { className: 'code', textContent: m.id.slice(0, 8) }),
        el('span', { className: `badge ${m.status}`, textContent: waiting ? 'open seat' : 'playing' }),
        el('span', { className: 'meta', textContent: `created ${new Date(m.created_at).toLocaleTimeString()}` }),
        button,
      );
      li.dataset.id = m.id;
      li.dataset.status = m.status;
      return li;
    }),
  );
  $('no-matches').hidden = open.length > 0;
}

let pendingJoin = null;
function openFromLobby(id, join) {
  pendingJoin = join ? id : null;
  location.hash = `#/match/${id}`;
}

$('new-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const seconds = Number($('turn-seconds').value);
  $('new-match').disabled = true;
  try {
    const m = await client.request('POST', '/v1/matches', {
      game: GAME,
      config: { turn_seconds: seconds, reconnect_seconds: Math.max(30, seconds) },
    });
    openFromLobby(m.id, true);
  } catch (e) {
    failed(e);
  } finally {
    $('new-match').disabled = false;
  }
});

// ---- quick match: the matchmaker ----------------------------------------------------------
//
// POST /v1/matchmaker opens a ticket; the server pairs it with the next player asking for
// the same time per move, creates the match with both seats taken, and says `matched` on
// our user: channel (possibly before the POST's reply arrives). The ticket expires after a
// minute (`matchmaker_expired`); the button cancels it meanwhile.

/** The open ticket's id, 'asking' while the POST is on its way, or null. */
let quickTicket = null;

function renderQuick() {
  const b = $('quick-match');
  b.textContent = quickTicket ? 'Searching… (cancel)' : 'Quick match';
  b.classList.toggle('searching', Boolean(quickTicket));
}

$('quick-match').addEventListener('click', async () => {
  if (quickTicket && quickTicket !== 'asking') {
    const id = quickTicket;
    quickTicket = null;
    renderQuick();
    try {
      const t = await client.request('DELETE', `/v1/matchmaker/${id}`);
      if (t.status === 'matched') onMatched({ match_id: t.match_id, ticket: t.ticket });
    } catch (e) {
      failed(e);
    }
    return;
  }
  if (quickTicket) return;
  const seconds = Number($('turn-seconds').value);
  quickTicket = 'asking';
  renderQuick();
  try {
    const t = await client.request('POST', '/v1/matchmaker', {
      game: GAME,
      config: { turn_seconds: seconds, reconnect_seconds: Math.max(30, seconds) },
      join: joinData(), // our display name, shown in the seat the matchmaker gives us
    });
    if (quickTicket !== 'asking') return; // matched (or ended) before the reply came
    if (t.status === 'matched') return onMatched({ match_id: t.match_id, ticket: t.ticket });
    quickTicket = t.ticket;
    notice('Looking for an opponent…');
  } catch (e) {
    quickTicket = null;
    failed(e);
  }
  renderQuick();
});

function onMatched({ match_id: id }) {
  if (!quickTicket) return; // an old ticket's news
  quickTicket = null;
  renderQuick();
  $('notice').hidden = true; // "Looking for an opponent…" is over
  // Our seat is already taken: open the match, no join needed.
  location.hash = `#/match/${id}`;
}

function onTicketEnded({ ticket, reason }) {
  if (!quickTicket || (quickTicket !== 'asking' && quickTicket !== ticket)) return;
  quickTicket = null;
  renderQuick();
  notice(reason === 'expired' ? 'Nobody else was looking for a match. Try again, or start one.' : 'The search stopped.');
}

$('code-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = $('code').value.trim();
  const found = text.match(UUID);
  if (found) {
    $('code').value = '';
    location.hash = `#/match/${found[0].toLowerCase()}`;
    return;
  }
  // A lobby code: asked of the server, so a match that is not in the list opens too.
  const code = text.replace(/^#/, '').replace(/-/g, '');
  if (!CODE.test(code)) {
    return notice('That is not a match code: paste the link, the id or the 8-character code of a match.');
  }
  let matches;
  try {
    ({ matches } = await client.request('GET', `/v1/matches?id_prefix=${code}&limit=2`));
  } catch (e) {
    return failed(e);
  }
  if (matches.length === 0) return notice(`There is no match with the code ${code}.`);
  if (matches.length > 1) return notice(`More than one match has the code ${code}: paste the whole link.`);
  $('code').value = '';
  location.hash = `#/match/${matches[0].id}`;
});

// ---- a match ------------------------------------------------------------------------------

/** The match on screen: {id, sub, state, chats, config}. */
let current = null;

function openMatch(id) {
  closeMatch();
  const m = { id, sub: null, state: null, chats: [], config: null };
  current = m;
  m.sub = client.subscribe(`match:${id}`, (msg) => onMatchMessage(m, msg), {
    // since 0: every retained message, so the board and the chat come back after a reload.
    since: 0,
    onSubscribed: ({ recovered }) => {
      if (!recovered) fetchMatch(m); // messages were pruned: take the state from the match
      if (pendingJoin === id) {
        pendingJoin = null;
        client.publish(`control:${id}`, 'join', joinData()).catch(failed);
      }
    },
    onError: (e) => {
      notice(e.code === 'not_found' ? 'There is no such match.' : e.message);
      if (current === m) location.hash = '#/';
    },
  });
  fetchMatch(m);
  $('invite').value = `${location.origin}/#/match/${id}`;
  render();
}

function closeMatch() {
  if (!current) return;
  current.sub.unsubscribe(); // the server marks us disconnected from this match
  current = null;
}

async function fetchMatch(m) {
  try {
    const info = await client.request('GET', `/v1/matches/${m.id}`);
    m.config = info.config;
    if (!m.state && info.state) m.state = info.state; // the subscription's states are newer
    if (current === m) render();
  } catch (e) {
    if (e.code !== 'not_found' && e.code !== 'network') failed(e);
  }
}

function onMatchMessage(m, msg) {
  if (msg.name === 'state') m.state = msg.data;
  else if (msg.name === 'chat') {
    // The sender's seat when they wrote (seats swap at a rematch).
    const s = m.state;
    const mark = s && (s.players.X === msg.data.from ? 'X' : s.players.O === msg.data.from ? 'O' : null);
    m.chats.push({ ...msg.data, mark });
    if (m.chats.length > 200) m.chats.shift();
  }
  if (current === m) render();
}

function myMark(state) {
  if (!state || !client.clientId) return null;
  if (state.players.X === client.clientId) return 'X';
  if (state.players.O === client.clientId) return 'O';
  return null;
}

function winningLine(board) {
  return LINES.find(([a, b, c]) => board[a] && board[a] === board[b] && board[a] === board[c]) || [];
}

function statusText(s, mine) {
  switch (s.status) {
    case 'waiting':
      if (mine) return 'Waiting for an opponent…';
      return 'Open seat: join to play';
    case 'playing':
      if (!mine) return `${s.turn} to move`;
      return s.turn === mine ? 'Your turn' : "Opponent's turn";
    case 'won':
      if (!mine) return `${s.winner} wins`;
      return s.winner === mine ? 'You won!' : 'You lost';
    case 'draw':
      return 'Draw';
    case 'abandoned':
      return 'Match abandoned';
    default:
      return s.status;
  }
}

function render() {
  const m = current;
  if (!m) return;
  const s = m.state;
  const mine = myMark(s);
  const board = $('board');
  if (!s) {
    $('status-text').textContent = 'Loading…';
    return;
  }
  const me = client.clientId;

  for (const mark of ['X', 'O']) {
    const seat = $(`seat-${mark}`);
    const id = s.players[mark];
    const name = s.names && s.names[mark];
    seat.querySelector('.who').textContent = !id
      ? 'empty seat'
      : id === me
        ? name ? `You (${name})` : 'You'
        : name || `Player ${short(id)}`;
    const presence = seat.querySelector('.presence');
    presence.textContent = !id ? 'waiting…' : s.connected[mark] ? 'connected' : 'disconnected';
    presence.className = `presence ${!id ? '' : s.connected[mark] ? 'on' : 'off'}`;
    seat.classList.toggle('turn', s.status === 'playing' && s.turn === mark);
  }

  const text = statusText(s, mine);
  $('status-text').textContent = text;
  $('status-text').className = s.status === 'won' && mine ? (s.winner === mine ? 'good' : 'bad') : '';
  document.title = `${text} · postgame`;
  $('role').textContent = mine
    ? `You play ${mine}${s.game_no > 1 ? ` · game ${s.game_no}` : ''}`
    : `You are watching${s.game_no > 1 ? ` · game ${s.game_no}` : ''}`;

  const line = winningLine(s.board);
  const canPlay = mine && s.status === 'playing';
  board.replaceChildren(
    ...s.board.map((cell, i) => {
      const b = el('button', { className: 'cell', textContent: cell || '' });
      b.dataset.cell = String(i);
      if (cell) b.classList.add(cell.toLowerCase());
      if (line.includes(i)) b.classList.add('win');
      // Players may click any cell during the game: the server decides, and says why not.
      b.disabled = !canPlay;
      if (canPlay && !cell && s.turn === mine) b.classList.add('playable');
      b.setAttribute('aria-label', `cell ${i + 1}${cell ? `: ${cell}` : ''}`);
      b.addEventListener('click', () => move(i));
      return b;
    }),
  );

  const seatFree = !s.players.X || !s.players.O;
  $('join').hidden = !(s.status === 'waiting' && !mine && seatFree) || pendingJoin === m.id;
  const over = s.status === 'won' || s.status === 'draw';
  const rematch = $('rematch');
  rematch.hidden = !(mine && over);
  if (mine && over) {
    const other = mine === 'X' ? 'O' : 'X';
    rematch.disabled = s.rematch[mine];
    rematch.textContent = s.rematch[mine] ? 'Waiting for opponent…' : s.rematch[other] ? 'Accept rematch' : 'Rematch';
  }
  const leave = $('leave');
  leave.hidden = !(mine && (s.status === 'waiting' || s.status === 'playing'));
  leave.textContent = s.status === 'playing' ? 'Resign' : 'Leave';

  renderChat(m);
  renderTimer();
}

function renderChat(m) {
  const log = $('chat-log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  const names = (m.state && m.state.names) || {};
  const who = (c) =>
    c.from === client.clientId ? 'You' : (c.mark && names[c.mark]) || c.mark || `Spectator ${short(c.from)}`;
  log.replaceChildren(
    ...(m.chats.length
      ? m.chats.map((c) => el('li', {}, el('span', { className: `from ${(c.mark || '').toLowerCase()}`, textContent: `${who(c)}:` }), c.text))
      : [el('li', { className: 'empty', textContent: 'No messages yet.' })]),
  );
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function renderTimer() {
  const timer = $('timer');
  const s = current && current.state;
  if (!s || s.status !== 'playing' || !s.turn_deadline) {
    timer.hidden = true;
    return;
  }
  const left = Math.max(0, Date.parse(s.turn_deadline) - (Date.now() + client.clockOffsetMs));
  const secs = Math.ceil(left / 1000);
  timer.hidden = false;
  timer.textContent = `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, '0')}`;
  timer.classList.toggle('low', secs <= 10);
}
setInterval(renderTimer, 250);

function send(name, data = {}) {
  if (!current) return Promise.resolve();
  return client.publish(`control:${current.id}`, name, data).catch(failed);
}

function move(cell) {
  send('move', { cell });
}

$('join').addEventListener('click', () => send('join', joinData()));
$('rematch').addEventListener('click', () => send('rematch'));
$('leave').addEventListener('click', () => {
  const s = current && current.state;
  if (s && s.status === 'playing' && !confirm('Resign this game?')) return;
  send('leave');
});
$('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('chat-input').value.trim();
  if (!text) return;
  $('chat-input').value = '';
  send('chat', { text });
});
$('copy-link').addEventListener('click', async () => {
  const input = $('invite');
  try {
    await navigator.clipboard.writeText(input.value);
    notice('Link copied.');
  } catch {
    input.select(); // clipboard refused (not a secure context): let the person copy it
  }
});

// ---- routing ------------------------------------------------------------------------------

function route() {
  const found = location.hash.match(/^#\/match\/([0-9a-f-]{36})$/i);
  $('loading').hidden = true;
  if (found) {
    const id = found[1].toLowerCase();
    if (!current || current.id !== id) openMatch(id);
    $('lobby').hidden = true;
    $('match').hidden = false;
  } else {
    closeMatch();
    document.title = 'postgame · Tic Tac Toe';
    $('match').hidden = true;
    $('lobby').hidden = false;
    renderLobby();
  }
}

window.addEventListener('hashchange', route);
route();
