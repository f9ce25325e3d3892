// "Quick match" in a real browser (Debian's Chromium via playwright-core): two players who
// click it are paired by the matchmaker into one new match, each already seated with the
// display name they picked; a player alone can cancel the search. Screenshots go to
// target/web-screenshots/.
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
  server = new Server({ name: 'quickmatch', args: ['--db-connections', '4'] });
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
  await page.fill('#name', name);
  await page.click('#name-form button');
  await page.waitForSelector(`#notice:text-is("Your name is ${name}.")`);
  return page;
}

const shot = (page, what) => page.screenshot({ path: path.join(SHOTS, `quickmatch-${page.person}-${what}.png`) });

test('two players who click Quick match play each other, seated with their names', { timeout: 120_000 }, async () => {
  const ann = await person('Ann');
  const bob = await person('Bob');

  // Ann searches alone, then cancels: no match, the button is back.
  await ann.click('#quick-match');
  await ann.waitForSelector('#quick-match:text-is("Searching… (cancel)")');
  await shot(ann, 'searching');
  await ann.click('#quick-match');
  await ann.waitForSelector('#quick-match:text-is("Quick match")');

  // Both search: the older ticket (Ann's) plays X.
  await ann.click('#quick-match');
  await ann.waitForSelector('#quick-match:text-is("Searching… (cancel)")');
  await bob.click('#quick-match');
  for (const page of [ann, bob]) await page.waitForSelector('#match:not([hidden])');
  await ann.waitForSelector('#seat-X .who:text-is("You (Ann)")');
  await ann.waitForSelector('#seat-O .who:text-is("Bob")');
  await bob.waitForSelector('#seat-O .who:text-is("You (Bob)")');
  await bob.waitForSelector('#seat-X .who:text-is("Ann")');
  const annMatch = ann.url().match(/#\/match\/([0-9a-f-]{36})$/)[1];
  assert.equal(bob.url().endsWith(`#/match/${annMatch}`), true, bob.url());
  await shot(ann, 'matched');
  await shot(bob, 'matched');

  // And it is played like any match.
  await ann.click('#board .cell >> nth=4');
  await bob.waitForSelector('#board .cell >> nth=4 >> text=X');
  assert.deepEqual(pageErrors, []);
});
