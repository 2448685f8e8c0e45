// What the browser tests share: Debian's headless Chromium driven by playwright-core (no
// browser download: scripts/test-browser.sh installs the `chromium` package), the demo page
// opened on a node started by client/test/harness.mjs, and reading what the page renders
// (its log, its state badge) rather than the client's internals.

import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export * from "../../client/test/harness.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const CLIENT_DIR = join(ROOT, "client");

/** Where screenshots go (kept as test artifacts). */
export const ARTIFACTS = join(ROOT, "target/browser-artifacts");

export function artifact(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/** Debian's Chromium, headless. Without the background-networking flags it tries to reach
 * Google's services, which this offline machine refuses. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A page in a context of its own (its own cookies and cache: another user), with every
 * uncaught exception and console error kept in `page.problems` for the test to check. */
export async function newPage(browser, viewport = { width: 1200, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") page.problems.push(`console.error: ${m.text()}`);
  });
  return page;
}

/** Opens the demo page served by `node`, and waits for it to show "connected" unless
 * `?connect=0`. */
export async function openDemo(page, node, query = "") {
  await page.goto(`${node.http}/${query}`);
  if (!query.includes("connect=0")) await connected(page);
}

export async function connected(page) {
  await page.locator('[data-testid=state][data-state="connected"]').waitFor();
}

/** Waits until the page lists `channel` as subscribed. */
export async function subscribed(page, channel) {
  await page.locator(`[data-testid=subs] li[data-channel="${channel}"][data-state="subscribed"]`).waitFor();
}

/** The messages of `channel` as the log shows them: `{offset, text}`, top to bottom. */
export function shownMessages(page, channel) {
  return page.$$eval(
    '[data-testid=log] li[data-kind="message"]',
    (lis, ch) =>
      lis
        .filter((li) => li.dataset.channel === ch)
        .map((li) => ({ offset: Number(li.dataset.offset), text: li.querySelector(".text").textContent })),
    channel,
  );
}

/** Waits until the log shows at least `count` messages on `channel`; returns them. */
export async function waitForMessages(page, channel, count, timeout = 20000) {
  await page.waitForFunction(
    ([ch, n]) => [...document.querySelectorAll('[data-testid=log] li[data-kind="message"]')].filter((li) => li.dataset.channel === ch).length >= n,
    [channel, count],
    { timeout },
  );
  return shownMessages(page, channel);
}

/** The log's lines of one kind (`state`, `join`, `error`, ...) as `{text, ...data-*}`. */
export function shownLines(page, kind) {
  return page.$$eval(
    '[data-testid=log] li',
    (lis, k) => lis.filter((li) => li.dataset.kind === k).map((li) => ({ ...li.dataset, text: li.querySelector(".text").textContent })),
    kind,
  );
}

/** The `Sec-WebSocket-Extensions` (and protocol) of each WebSocket handshake the page makes,
 * request and response, through the DevTools protocol (`page.on("websocket")` has no headers). */
export async function recordHandshakes(page) {
  const seen = [];
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const byId = new Map();
  const header = (headers, name) => {
    for (const [k, v] of Object.entries(headers || {})) if (k.toLowerCase() === name) return v;
    return undefined;
  };
  cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => {
    const h = { url: byId.get(e.requestId), offered: header(e.request.headers, "sec-websocket-extensions"), protocol: header(e.request.headers, "sec-websocket-protocol") };
    byId.set(e.requestId, h);
    seen.push(h);
  });
  cdp.on("Network.webSocketCreated", (e) => byId.set(e.requestId, e.url));
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
    const h = byId.get(e.requestId);
    if (h && typeof h === "object") {
      h.status = e.response.status;
      h.accepted = header(e.response.headers, "sec-websocket-extensions");
    }
  });
  return seen;
}
