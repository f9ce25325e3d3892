// The lobby's small frictions, in a real browser (Debian's Chromium via playwright-core):
// the 8-character code the lobby shows, typed into "Paste a match link or code", opens the
// match (also one that is not in the visible list), and a display name a player picks is
// shown on the opponent's page. Screenshots go to target/web-screenshots/.
//
//   node --experimental-websocket --test web/e2e      (needs cargo build, npm ci in web/)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

import { Server } from '../testlib/server.mjs';
import { SHOTS, launchChromium } from '../testlib/browser.mjs';

/** @type {Server} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;
const pageErrors = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // One client creates 22 matches below (to push one out of the 20-long lobby list): more
  // than the default per-client creation limit of 20 a minute, which this test is not about.
  server = new Server({
    name: 'lobby',
    args: ['--db-connections', '4', '--matches-per-client-per-minute', '0'],
  });
  await server.start();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.destroy();
});

/** A new browser context (its own storage: its own guest) with the demo open. */
async function person(name) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.person = name;
  await page.goto(server.url);
  await page.waitForSelector('#conn[data-state="connected"]');
  await page.waitForSelector('#lobby:not([hidden])');
  return page;
}

const shot = (page, what) => page.screenshot({ path: path.join(SHOTS, `lobby-${page.person}-${what}.png`) });

/** Picks a display name in the lobby. */
async function pickName(page, name) {
  await page.fill('#name', name);
  await page.click('#name-form button');
  await page.waitForSelector(`#notice:text-is("Your name is ${name}.")`);
}

/** Types `code` into the code box and opens it. */
async function openCode(page, code) {
  await page.fill('#code', code);
  await page.click('#code-form button');
}

test('a lobby code opens its match and a chosen name shows on the opponent page', { timeout: 120_000 }, async () => {
  const alice = await person('alice');
  const bob = await person('bob');

  await pickName(alice, 'Alice');
  const aliceId = await alice.evaluate(() => JSON.parse(sessionStorage.getItem('postgame.demo.guest')).client_id);
  await alice.selectOption('#turn-seconds', '300');
  await alice.click('#new-match');
  await alice.waitForSelector('#seat-X .who:text-is("You (Alice)")');
  const matchId = alice.url().match(/#\/match\/([0-9a-f-]{36})$/)[1];
  // Picking the name kept the identity: the seat is this guest's.
  const seated = await alice.evaluate(() => JSON.parse(sessionStorage.getItem('postgame.demo.guest')).client_id);
  assert.equal(seated, aliceId);

  // Bob reads the code off the lobby and types it in.
  await pickName(bob, 'Bob');
  const entry = `#matches li[data-id="${matchId}"]`;
  await bob.waitForSelector(`${entry}[data-status="waiting"]`);
  const code = await bob.textContent(`${entry} .code`);
  assert.equal(code, matchId.slice(0, 8));
  await openCode(bob, code);
  await bob.waitForSelector('#match:not([hidden])');
  assert.equal(bob.url().endsWith(`#/match/${matchId}`), true, bob.url());
  await bob.waitForSelector('#seat-X .who:text-is("Alice")');
  await bob.click('#join');
  await bob.waitForSelector('#seat-O .who:text-is("You (Bob)")');
  await alice.waitForSelector('#seat-O .who:text-is("Bob")');
  await shot(alice, 'sees-bob');
  await shot(bob, 'sees-alice');

  // A code that matches nothing says so.
  await bob.goto(`${server.url}/#/`);
  await bob.waitForSelector('#lobby:not([hidden])');
  const unused = matchId[0] === 'f' ? '00000000' : 'ffffffff';
  await openCode(bob, unused);
  await bob.waitForSelector(`#notice:text-is("There is no match with the code ${unused}.")`);

  // A match that is not in the visible list (the lobby shows the 20 newest open ones):
  // its code opens it too.
  const { token } = await (await fetch(`${server.url}/v1/tokens`, { method: 'POST', body: '{}' })).json();
  const create = async () => {
    const res = await fetch(`${server.url}/v1/matches`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ game: 'tictactoe' }),
    });
    assert.equal(res.status, 201);
    return (await res.json()).id;
  };
  const hidden = await create();
  for (let i = 0; i < 21; i++) await create();
  await bob.waitForFunction(
    (id) => document.querySelectorAll('#matches li').length === 20 && !document.querySelector(`#matches li[data-id="${id}"]`),
    hidden,
  );
  await openCode(bob, hidden.slice(0, 8));
  await bob.waitForSelector('#match:not([hidden])');
  assert.equal(bob.url().endsWith(`#/match/${hidden}`), true, bob.url());
  await bob.waitForSelector('#status-text:text-is("Open seat: join to play")');
  await shot(bob, 'hidden-match');

  assert.deepEqual(pageErrors, []);
});
