// The demo at / in a real browser: Debian's Chromium (/usr/bin/chromium) driven by
// playwright-core. Two players create, join and play to a win, a third person watches, a
// player reloads mid-game, and the server restarts mid-game. A screenshot of every step is
// saved to target/web-screenshots/.
//
//   node --experimental-websocket --test web/e2e      (needs cargo build, npm ci in web/)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';

import { Server } from '../testlib/server.mjs';
import { SHOTS, launchChromium } from '../testlib/browser.mjs';


/** @type {Server} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;
const pageErrors = [];
let shotNo = 0;

before(async () => {
  rmSync(SHOTS, { recursive: true, force: true });
  mkdirSync(SHOTS, { recursive: true });
  console.log(`screenshots: ${SHOTS}`);
  server = new Server({ name: 'e2e' });
  await server.start();
  // Playwright gives Chromium a fresh profile (user-data-dir) of its own.
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.destroy();
  console.log(`screenshots: ${SHOTS}`);
});

/** A new browser context (its own storage: its own guest) with one page on the demo. */
async function person(name) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    // While the server restarts, the browser logs the refused connection attempts.
    const refused = /WebSocket connection to|Failed to load resource|ERR_CONNECTION_REFUSED/;
    if (m.type() === 'error' && !refused.test(m.text())) pageErrors.push(`${name} console: ${m.text()}`);
  });
  page.person = name;
  return page;
}

async function shot(page, what) {
  shotNo += 1;
  const file = path.join(SHOTS, `${String(shotNo).padStart(2, '0')}-${page.person}-${what}.png`);
  await page.screenshot({ path: file });
}

/** Waits until the board reads `cells` ("X.O......": X, O or . per cell, row-major). */
async function waitBoard(page, cells) {
  await page.waitForFunction(
    (want) => [...document.querySelectorAll('#board .cell')].map((c) => c.textContent || '.').join('') === want,
    cells,
  );
}

const status = (page, text) => page.waitForSelector(`#status-text:text-is("${text}")`);
const connections = (page) => page.$eval('#conn', (el) => Number(el.dataset.connections || 0));

test('two players, a spectator, a reload and a server restart', { timeout: 240_000 }, async () => {
  const alice = await person('alice');
  const bob = await person('bob');
  const carol = await person('carol');

  // Bob looks at the lobby before the match exists: it must appear there live.
  await bob.goto(server.url);
  await bob.waitForSelector('#conn[data-state="connected"]');
  await bob.waitForSelector('#lobby:not([hidden])');
  await shot(bob, 'lobby-empty');

  // Alice creates a match (5 minutes per move, so the clock never decides this test).
  await alice.goto(server.url);
  await alice.waitForSelector('#conn[data-state="connected"]');
  await alice.selectOption('#turn-seconds', '300');
  await alice.click('#new-match');
  await alice.waitForSelector('#seat-X .who:text-is("You")');
  await status(alice, 'Waiting for an opponent…');
  const matchId = alice.url().match(/#\/match\/([0-9a-f-]{36})$/)[1];
  await shot(alice, 'created');

  // Bob joins from the lobby.
  const entry = `#matches li[data-id="${matchId}"]`;
  await bob.waitForSelector(`${entry}[data-status="waiting"]`);
  await shot(bob, 'lobby-live');
  await bob.click(`${entry} button:text-is("Join")`);
  await bob.waitForSelector('#seat-O .who:text-is("You")');
  await status(bob, "Opponent's turn");
  await status(alice, 'Your turn');
  await alice.waitForSelector('#seat-O .presence.on');
  assert.match(await alice.textContent('#timer'), /^[0-9]+:[0-9]{2}$/, 'the turn timer shows');
  await shot(bob, 'joined');

  // Carol sees the match as running in the lobby and opens it by pasting its code.
  await carol.goto(server.url);
  await carol.waitForSelector(`${entry}[data-status="playing"]`);
  await carol.fill('#code', matchId);
  await carol.click('#code-form button');
  await carol.waitForSelector('#role:text-is("You are watching")');
  assert.equal(await carol.isHidden('#join'), true, 'no seat to take');

  // Moves, chat, and a move out of turn (refused privately).
  await alice.click('[data-cell="4"]');
  await waitBoard(bob, '....X....');
  await bob.click('[data-cell="0"]');
  await waitBoard(alice, 'O...X....');
  await bob.click('[data-cell="2"]'); // not Bob's turn
  await bob.waitForSelector(`#notice:text-is("It's not your turn.")`);
  await shot(bob, 'rejected');
  await alice.fill('#chat-input', 'good luck!');
  await alice.press('#chat-input', 'Enter');
  await bob.waitForSelector('#chat-log li:has-text("good luck!")');
  await carol.waitForSelector('#chat-log li:has-text("X:good luck!")');
  await alice.click('[data-cell="1"]');
  await waitBoard(carol, 'OX..X....');
  await shot(carol, 'spectating');

  // Bob reloads: same guest (sessionStorage), same seat, same board, the chat is back.
  await bob.reload();
  await bob.waitForSelector('#conn[data-state="connected"]');
  await bob.waitForSelector('#role:text-is("You play O")');
  await waitBoard(bob, 'OX..X....');
  await status(bob, 'Your turn');
  await bob.waitForSelector('#chat-log li:has-text("good luck!")');
  await alice.waitForSelector('#seat-O .presence.on');
  await shot(bob, 'after-reload');
  await bob.click('[data-cell="7"]');
  await waitBoard(alice, 'OX..X..O.');

  // The server restarts mid-game: every page reconnects and resumes.
  const before = await Promise.all([alice, bob, carol].map(connections));
  await server.stop();
  for (const page of [alice, bob, carol]) await page.waitForSelector('#conn:not([data-state="connected"])');
  await shot(bob, 'server-down');
  await server.start();
  for (const [i, page] of [alice, bob, carol].entries()) {
    await page.waitForFunction((n) => Number(document.querySelector('#conn').dataset.connections) > n, before[i]);
    await page.waitForSelector('#conn[data-state="connected"]');
  }
  await alice.waitForSelector('#seat-O .presence.on');
  await bob.waitForSelector('#seat-X .presence.on');
  await status(alice, 'Your turn');
  await shot(alice, 'after-restart');

  // And the game goes on to a win for X (2-4-6).
  await alice.click('[data-cell="2"]');
  await waitBoard(bob, 'OXX.X..O.');
  await bob.click('[data-cell="3"]');
  await waitBoard(alice, 'OXXOX..O.');
  await alice.click('[data-cell="6"]');
  await status(alice, 'You won!');
  await status(bob, 'You lost');
  await status(carol, 'X wins');
  await waitBoard(carol, 'OXXOX.XO.');
  assert.equal(await carol.$$eval('#board .cell.win', (cells) => cells.map((c) => c.dataset.cell).join()), '2,4,6');
  await shot(alice, 'won');
  await shot(bob, 'lost');
  await shot(carol, 'result');

  // Rematch: both vote, a new game starts with the seats swapped.
  await alice.click('#rematch');
  await bob.waitForSelector('#rematch:text-is("Accept rematch")');
  await bob.click('#rematch');
  await alice.waitForSelector('#role:text-is("You play O · game 2")');
  await bob.waitForSelector('#role:text-is("You play X · game 2")');
  await waitBoard(carol, '.........');
  await status(bob, 'Your turn');
  await shot(bob, 'rematch');

  assert.deepEqual(pageErrors, [], 'no errors in the pages');
});
