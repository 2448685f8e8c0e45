// What the node serves for the browser (src/assets.rs): `/`, `/switchboard.js` and
// `/switchboard.d.ts` with their content types, `Cache-Control: no-cache` and an `ETag` that
// answers 304; the bytes are the repository's files (a binary built before a change to
// client/ fails here: rebuild it); with `server.serve_client = false` all three are 404.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { CLIENT_DIR, Node } from "./browser.mjs";

const FILES = [
  ["/", "index.html", "text/html; charset=utf-8"],
  ["/switchboard.js", "switchboard.js", "text/javascript; charset=utf-8"],
  ["/switchboard.d.ts", "switchboard.d.ts", "application/typescript; charset=utf-8"],
];

let on;
let off;
before(async () => {
  [on, off] = await Promise.all([Node.start(), Node.start({ "server.serve_client": "false" })]);
});
after(async () => {
  await on?.stop();
  await off?.stop();
});

for (const [path, file, type] of FILES) {
  test(`${path}: ${type}, no-cache, an ETag that answers 304`, async () => {
    const r = await fetch(on.http + path);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-type"), type);
    assert.equal(r.headers.get("cache-control"), "no-cache");
    assert.equal(r.headers.get("x-content-type-options"), "nosniff");
    const etag = r.headers.get("etag");
    assert.match(etag, /^"[0-9a-f]{16}"$/);
    assert.equal(await r.text(), readFileSync(join(CLIENT_DIR, file), "utf8"), `the binary serves an old ${file}: rebuild it`);

    const again = await fetch(on.http + path, { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304);
    assert.equal(again.headers.get("etag"), etag);
    assert.equal(await again.text(), "");
    const weak = await fetch(on.http + path, { headers: { "if-none-match": `"other", W/${etag}` } });
    assert.equal(weak.status, 304);
    const changed = await fetch(on.http + path, { headers: { "if-none-match": '"0000000000000000"' } });
    assert.equal(changed.status, 200);
    await changed.text();

    const head = await fetch(on.http + path, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("etag"), etag);
  });
}

test("server.serve_client = false: all three are 404, the rest of the node serves", async () => {
  for (const [path] of FILES) {
    const r = await fetch(off.http + path);
    assert.equal(r.status, 404, path);
    await r.text();
  }
  assert.equal((await fetch(off.http + "/healthz")).status, 200);
  assert.equal((await off.api("POST", "/api/publish", { channel: "x", data: 1 })).status, 200);
});
