// A node restart under the demo page, on the Redis engine: the page is served by node A and
// connected to it; A is SIGKILLed and started again on the same port while a backend keeps
// publishing through node B's HTTP API. The page shows "disconnected", reconnects by itself,
// and its log shows every publication exactly once, in offset order. Prints the client's
// reconnect time after the restart (A listening again → the page's "connected") and how many
// messages the resubscribe recovered; keeps target/browser-artifacts/recovery.png.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Node, Redis, artifact, launch, newPage, openDemo, shownLines, shownMessages, subscribed, until, waitForMessages } from "./browser.mjs";

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

let browser;
before(async () => {
  browser = await launch();
  cleanup.push(() => browser.close());
});

// Chromium reports each refused WebSocket attempt on the console; those are expected here.
const refused = (line) => /WebSocket connection to .* failed/.test(line);

test("SIGKILL and restart of the page's node: every publication shown once, in order", async () => {
  const redis = await Redis.start();
  cleanup.push(() => redis.stop());
  // A history longer than anything published here, so recovery can always hold the gap.
  const cfg = { "engine.kind": "redis", "engine.redis_url": redis.url, "engine.prefix": "browser-rec", "channels.history_size": "1000" };
  const [a, b] = await Promise.all([Node.start(cfg), Node.start(cfg)]);
  cleanup.push(() => a.stop(), () => b.stop());

  const page = await newPage(browser);
  await openDemo(page, a, "?channel=feed");
  await subscribed(page, "feed");

  let sent = 0;
  const publish = async () => {
    sent += 1;
    await b.publish("feed", { n: sent });
  };
  for (let i = 0; i < 5; i++) await publish();
  await waitForMessages(page, "feed", 5);

  const killedAt = Date.now();
  await a.kill();
  await page.locator('[data-testid=state][data-state="disconnected"]').waitFor();
  const noticedAt = Date.now();
  const beforeDown = sent;
  for (let i = 0; i < 20; i++) await publish();

  // A backend that keeps publishing, about 50 a second, through the restart and the
  // page's reconnect, until told to stop.
  let live = true;
  const publisher = (async () => {
    while (live) {
      await publish();
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  let listeningAt;
  try {
    await a.start();
    listeningAt = Date.now();
    await page.locator('[data-testid=state][data-state="connected"]').waitFor({ timeout: 20000 });
    const reconnected = await page.evaluate(() => window.demo.states.findLast((s) => s.state === "connected").at);
    // A few more live ones after the reconnect, then stop.
    const away = sent - beforeDown;
    const after = sent;
    await until(() => sent >= after + 5, "live publications after the reconnect");
    live = false;
    await publisher;

    const shown = await waitForMessages(page, "feed", sent);
    assert.equal(shown.length, sent, "no duplicate");
    assert.deepEqual(shown.map((m) => m.offset), Array.from({ length: sent }, (_, i) => i + 1), "every offset once, in order");
    assert.deepEqual(shown.map((m) => JSON.parse(m.text).n), Array.from({ length: sent }, (_, i) => i + 1));

    const [recovered, ...more] = await shownLines(page, "recovered");
    assert.deepEqual(more, [], "one resubscribe");
    assert.equal(recovered.recovered, "true", recovered.text);
    const count = Number(recovered.count);
    assert.ok(count >= 20, `the 20 published while A was down are among the recovered: ${count}`);

    // What the user saw: connected, disconnected, then connected again, in that order.
    const states = (await shownLines(page, "state")).map((s) => s.state);
    assert.deepEqual(states, ["connected", "disconnected", "connected"]);
    assert.equal(await page.locator('[data-testid=subs] li[data-channel="feed"]').getAttribute("data-state"), "subscribed");
    assert.deepEqual(page.problems.filter((p) => !refused(p)), []);
    await page.screenshot({ path: artifact("recovery.png") });

    console.log(
      `node restart: the page noticed the kill in ${noticedAt - killedAt} ms; reconnected ${reconnected - listeningAt} ms after node A was listening again ` +
        `(${reconnected - killedAt} ms after the kill); recovered ${count} messages (about ${away} published while it was away, ${sent} in all, each shown once in order)`,
    );
  } finally {
    live = false;
    await publisher;
  }
});
