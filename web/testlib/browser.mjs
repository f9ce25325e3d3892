// Test helper: Debian's Chromium through playwright-core (never a browser download), and
// the folder the browser tests write their screenshots to.

import path from 'node:path';

import { chromium } from 'playwright-core';
import { ROOT } from './server.mjs';

/** Where every browser test puts its screenshots, for a person to look at. */
export const SHOTS = path.join(ROOT, 'target/web-screenshots');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches headless Chromium (`CHROMIUM` overrides /usr/bin/chromium). */
export function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
}
