// A token that expires, in the browser: the demo page's client gets its tokens from a
// function (minted by this test, three seconds each, handed in through
// `page.exposeFunction`), refreshes them before `exp` over the open connection, and stays
// connected across two refreshes: no "disconnected" on the page, and messages still arrive
// after the first token's `exp`, published both by a backend and through the page's form
// (the refreshed token's own publish claim).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Node, launch, newPage, openDemo, shownLines, subscribed, token, until, waitForMessages } from "./browser.mjs";

const SECRET = "browser-s3cret";
let browser;
let node;
before(async () => {
  [browser, node] = await Promise.all([launch(), Node.start({ "auth.hmac_secret": SECRET, "channels.anonymous": "false" })]);
});
after(async () => {
  await browser?.close();
  await node?.stop();
});

test("a token that expires is refreshed without a disconnect", async () => {
  const page = await newPage(browser);
  const minted = [];
  await page.exposeFunction("mintToken", () => {
    const exp = Math.floor(Date.now() / 1000) + 3;
    minted.push(exp);
    return token(SECRET, { sub: "dana", exp, channels: ["c"], publish: ["c"] });
  });
  // The page's token field holds a static string; a token function goes in through the
  // page's own connect (the same client, state badge and log).
  await openDemo(page, node, "?connect=0");
  await page.evaluate(() => window.demo.connect({ token: () => window.mintToken() }));
  await page.locator('[data-testid=state][data-state="connected"]').waitFor();
  assert.match(await page.getByTestId("welcome").textContent(), /user dana/);
  await page.getByTestId("sub-channel").fill("c");
  await page.getByTestId("subscribe").click();
  await subscribed(page, "c");

  await until(() => minted.length >= 3, "two refreshes", 15000);
  await until(() => Date.now() / 1000 > minted[0], "the first token's exp");
  await node.publish("c", "from the backend");
  await page.getByTestId("pub-channel").fill("c");
  await page.getByTestId("pub-data").fill('"from the page"');
  await page.getByTestId("publish").click();
  const shown = await waitForMessages(page, "c", 2);
  assert.deepEqual(shown.map((m) => m.text), ['"from the backend"', '"from the page"']);

  const states = await page.evaluate(() => window.demo.states.map((s) => s.state));
  assert.deepEqual(states, ["connecting", "connected"], "one connection, never dropped");
  assert.deepEqual((await shownLines(page, "state")).map((s) => s.state), ["connected"]);
  assert.deepEqual(await shownLines(page, "error"), []);
  assert.deepEqual(page.problems, []);
});
