// The example game's page (/connect4, served by the `connect4` binary of examples/connect4)
// in a real browser: one player creates a match, a second opens the invite link in a
// window of their own, they play to a win, a third window watches. Screenshots go to
// target/web-screenshots/ (connect4-*).
//
//   node --experimental-websocket --test web/e2e/connect4.test.mjs
//   (needs `cargo build -p connect4` and `npm ci` in web/)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

import { Server } from '../testlib/server.mjs';
import { SHOTS, launchChromium } from '../testlib/browser.mjs';

let server;
let browser;
const pageErrors = [];
let shotNo = 0;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = new Server({ name: 'connect4', bin: 'connect4' });
  await server.start();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.destroy();
});

/** A browser context of its own (its own sessionStorage: its own guest) with one page. */
async function person(name) {
  const context = await browser.newContext({ viewport: { width: 700, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.person = name;
  return page;
}

async function shot(page, what) {
  shotNo += 1;
  await page.screenshot({ path: path.join(SHOTS, `connect4-${shotNo}-${page.person}-${what}.png`) });
}

const status = (page, re) =>
  page.waitForFunction((src) => new RegExp(src).test(document.getElementById('status').textContent), re.source);

/** Clicks the top cell of `column` once it is enabled (the player's turn). */
async function drop(page, column) {
  await page.click(`#board button:nth-child(${column + 1}):not([disabled])`);
}

/** Waits until the bottom row reads `cells` (R, Y or . per column). */
const bottomRow = (page, cells) =>
  page.waitForFunction(
    (want) =>
      [...document.querySelectorAll('#board button')].slice(35).map((b) => b.dataset.disc || '.').join('') === want,
    cells,
  );

test('two windows play Connect Four to a win, a third watches', { timeout: 120_000 }, async () => {
  const red = await person('red');
  const yellow = await person('yellow');
  const watcher = await person('watcher');

  await red.goto(`${server.url}/connect4`);
  await red.waitForSelector('#home:not([hidden])');
  await red.click('#new-match');
  await status(red, /You play Red\. Waiting for an opponent/);
  const invite = await red.inputValue('#invite');
  assert.match(invite, /\/connect4#\/match\/[0-9a-f-]{36}$/);
  await shot(red, 'created');

  await yellow.goto(invite);
  await status(yellow, /You play Yellow\. Red to play/);
  await status(red, /You play Red\. Your turn/);

  await watcher.goto(invite);
  await status(watcher, /^Red to play/);

  // Red: bottom row 0..3; yellow stacks on column 6.
  for (const [page, column, row] of [
    [red, 0, 'R......'],
    [yellow, 6, 'R.....Y'],
    [red, 1, 'RR....Y'],
    [yellow, 6, 'RR....Y'],
    [red, 2, 'RRR...Y'],
    [yellow, 6, 'RRR...Y'],
  ]) {
    await drop(page, column);
    await bottomRow(red, row);
  }
  // Not yellow's turn: once its page shows the move, its board is disabled.
  await yellow.waitForFunction(() => document.querySelectorAll('#board button[data-disc="Y"]').length === 3);
  assert.equal(await yellow.$eval('#board button:nth-child(4)', (b) => b.disabled), true);
  await drop(red, 3);
  await status(red, /You won!/);
  await status(yellow, /Red won\./);
  await status(watcher, /Red won\./);
  await bottomRow(watcher, 'RRRR..Y');
  await shot(red, 'won');
  await shot(yellow, 'lost');
  assert.deepEqual(pageErrors, []);
});
