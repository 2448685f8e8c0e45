// The demo page in headless Chromium, two users talking through it: page A and page B each
// open `/` (connected and subscribed to "demo" on load), B publishes through the form, and A
// shows the message with its offset; presence, join and leave, a second channel subscribed
// through the form, bad JSON refused on the page, and data shown as text, never as HTML.
// Also checks the WebSocket handshake the browser made: it offers permessage-deflate and gets
// it, and a long message goes through compressed both ways; and keeps a screenshot:
// target/browser-artifacts/demo.png.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Node, artifact, launch, newPage, openDemo, recordHandshakes, shownLines, shownMessages, subscribed, waitForMessages } from "./browser.mjs";

let browser;
let node;
before(async () => {
  [browser, node] = await Promise.all([launch(), Node.start({ "channels.join_leave": "true" })]);
});
after(async () => {
  await browser?.close();
  await node?.stop();
});

async function publishThroughForm(page, channel, data) {
  await page.getByTestId("pub-channel").fill(channel);
  await page.getByTestId("pub-data").fill(data);
  await page.getByTestId("publish").click();
}

test("two pages exchange messages through the demo page", async () => {
  const a = await newPage(browser);
  const b = await newPage(browser, { width: 420, height: 800 }); // a phone-sized screen
  const handshakes = await recordHandshakes(a);

  await openDemo(a, node);
  await subscribed(a, "demo");
  const aClient = await a.evaluate(() => window.sb.welcome.client);
  assert.match(await a.getByTestId("welcome").textContent(), new RegExp(aClient));
  await openDemo(b, node);
  await subscribed(b, "demo");
  const bClient = await b.evaluate(() => window.sb.welcome.client);

  // A sees B arrive (join_leave is on).
  await a.locator(`[data-testid=log] li[data-kind="join"][data-client="${bClient}"]`).waitFor();

  // B publishes through the form; both see it, A with its offset.
  await publishThroughForm(b, "demo", '{"text": "hello from B"}');
  await b.getByTestId("pub-result").filter({ hasText: "published to demo at offset 1" }).waitFor();
  const [first] = await waitForMessages(a, "demo", 1);
  assert.deepEqual(first, { offset: 1, text: '{"text":"hello from B"}' });
  assert.deepEqual(await waitForMessages(b, "demo", 1), [first]);

  // Bad JSON is an error on the page, not an exception, and nothing is published.
  await publishThroughForm(b, "demo", "{not json");
  await b.locator("[data-testid=pub-result].error").filter({ hasText: "not JSON" }).waitFor();

  // A subscribes to a second channel through the form; B publishes a few there, in order.
  await a.getByTestId("sub-channel").fill("room");
  await a.getByTestId("subscribe").click();
  await subscribed(a, "room");
  for (let i = 1; i <= 3; i++) {
    await publishThroughForm(b, "room", JSON.stringify({ n: i }));
    await b.getByTestId("pub-result").filter({ hasText: `published to room at offset ${i}` }).waitFor();
  }
  assert.deepEqual(
    (await waitForMessages(a, "room", 3)).map((m) => [m.offset, m.text]),
    [[1, '{"n":1}'], [2, '{"n":2}'], [3, '{"n":3}']],
  );
  // A long one (over compression.min_size): Chromium compresses what it sends, and inflates
  // what it gets (permessage-deflate, negotiated below).
  const rows = Array.from({ length: 30 }, (_, i) => ({ id: 1000 + i, user: `user${(i * 7919) % 1000}`, city: ["Lisbon", "Osaka", "Quito"][i % 3], score: i * 1.5 }));
  await publishThroughForm(b, "room", JSON.stringify({ rows }));
  await b.getByTestId("pub-result").filter({ hasText: "published to room at offset 4" }).waitFor();
  const long = (await waitForMessages(a, "room", 4))[3];
  assert.deepEqual(JSON.parse(long.text), { rows });

  // What a message carries is shown as text: markup in it stays inert.
  await publishThroughForm(b, "demo", '{"html": "<img src=x onerror=\\"window.pwned=1\\">"}');
  const shown = await waitForMessages(a, "demo", 2);
  assert.equal(shown[1].offset, 2);
  assert.ok(shown[1].text.includes("<img src=x"), shown[1].text);
  assert.equal(await a.locator("[data-testid=log] img").count(), 0);
  assert.equal(await a.evaluate(() => window.pwned), undefined);

  // Presence from A's subscription row: both pages are in "demo".
  await a.locator('[data-testid=subs] li[data-channel="demo"] [data-testid=presence]').click();
  await a.locator('[data-testid=log] li[data-kind="presence"][data-channel="demo"][data-count="2"]').waitFor();

  // A second channel's traffic for the screenshot, then the picture of A with messages flowing.
  await publishThroughForm(b, "demo", '{"text": "see you"}');
  await waitForMessages(a, "demo", 3);
  await a.screenshot({ path: artifact("demo.png") });
  await b.screenshot({ path: artifact("demo-narrow.png"), fullPage: true });

  // B unsubscribes through its row: A sees B leave.
  await b.locator('[data-testid=subs] li[data-channel="demo"] [data-testid=unsubscribe]').click();
  await a.locator(`[data-testid=log] li[data-kind="leave"][data-client="${bClient}"]`).waitFor();
  assert.equal(await b.locator('[data-testid=subs] li[data-channel="demo"]').count(), 0);

  // Nothing went wrong on either page, and A's log holds exactly what was published.
  assert.deepEqual((await shownMessages(a, "demo")).map((m) => m.offset), [1, 2, 3]);
  assert.deepEqual(await shownLines(a, "error"), []);
  assert.deepEqual(a.problems, []);
  assert.deepEqual(b.problems, []);

  // Chromium offered permessage-deflate and got it (docs/protocol.md, section 1).
  assert.ok(handshakes.length >= 1);
  for (const h of handshakes) {
    console.log(`websocket handshake ${h.url}: offered Sec-WebSocket-Extensions=${JSON.stringify(h.offered)}, protocol=${JSON.stringify(h.protocol)}; answered ${h.status} with ${JSON.stringify(h.accepted)}`);
    assert.match(h.offered, /permessage-deflate/);
    assert.equal(h.accepted, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  }
});

test("Disconnect and Connect: the state follows, and the subscription recovers what it missed", async () => {
  const page = await newPage(browser);
  await openDemo(page, node, "?channel=again");
  await subscribed(page, "again");
  await node.publish("again", 1);
  await waitForMessages(page, "again", 1);

  await page.getByTestId("disconnect").click();
  await page.locator('[data-testid=state][data-state="disconnected"]').filter({ hasText: "1000" }).waitFor();
  await node.publish("again", 2);
  await node.publish("again", 3);

  await page.getByTestId("connect").click();
  await page.locator('[data-testid=log] li[data-kind="recovered"][data-channel="again"][data-recovered="true"][data-count="2"]').waitFor();
  const shown = await waitForMessages(page, "again", 3);
  assert.deepEqual(shown.map((m) => [m.offset, m.text]), [[1, "1"], [2, "2"], [3, "3"]]);
  assert.deepEqual(page.problems, []);
});

test("a memory node restarted under the page: it says so, reconnects, and says messages may be lost", async () => {
  const n = await Node.start();
  try {
    const page = await newPage(browser);
    await openDemo(page, n, "?channel=news");
    await subscribed(page, "news");
    await n.publish("news", "before");
    await waitForMessages(page, "news", 1);

    await n.kill();
    // Down long enough for the page to try twice: the badge counts the attempts, the log
    // keeps one line for the outage.
    await page.waitForFunction(() => Number(document.querySelector("[data-testid=state]").dataset.attempts) >= 2);
    await n.start();
    await page.locator('[data-testid=state][data-state="connected"]').waitFor();
    // The memory engine's epoch changed with the process: nothing can be recovered, and the
    // page says so rather than pretending.
    await page.locator('[data-testid=log] li[data-kind="recovered"][data-channel="news"][data-recovered="false"]').waitFor();
    await n.publish("news", "after");
    const shown = await waitForMessages(page, "news", 2);
    assert.deepEqual(shown.map((m) => [m.offset, m.text]), [[1, '"before"'], [1, '"after"']]);
    const states = await shownLines(page, "state");
    assert.deepEqual(states.map((s) => s.state), ["connected", "disconnected", "connected"]);
    assert.match(states[2].text, /reconnected after [0-9.]+ s \([2-9]\d* attempts\)/);
    assert.deepEqual(page.problems.filter((p) => !/WebSocket connection to .* failed/.test(p)), []);
  } finally {
    await n.stop();
  }
});

test("a refused subscription and a terminal close are shown, not thrown", async () => {
  const n = await Node.start({ "namespaces.private.anonymous": "false", "limits.max_message_size": "1024" });
  try {
    const page = await newPage(browser);
    await openDemo(page, n, "?channel=");
    await page.getByTestId("sub-channel").fill("private:x");
    await page.getByTestId("subscribe").click();
    await page.locator('[data-testid=log] li[data-kind="error"][data-code="forbidden"]').waitFor();
    await page.locator("[data-testid=sub-result].error").filter({ hasText: "forbidden" }).waitFor();
    assert.equal(await page.locator('[data-testid=subs] li[data-channel="private:x"]').count(), 0);
    await page.getByTestId("sub-channel").fill("bad channel!");
    await page.getByTestId("subscribe").click();
    await page.locator("[data-testid=sub-result].error").filter({ hasText: "invalid_channel" }).waitFor();

    // A frame over limits.max_message_size closes with 1009, after which reconnecting cannot
    // help: the badge says so, and the publish that caused it fails on the page.
    await publishThroughForm(page, "demo", JSON.stringify("x".repeat(2000)));
    await page.locator('[data-testid=state][data-state="disconnected"]').filter({ hasText: "1009" }).filter({ hasText: "will not reconnect" }).waitFor();
    await page.locator("[data-testid=pub-result].error").waitFor();
    assert.deepEqual(page.problems, []);
  } finally {
    await n.stop();
  }
});
