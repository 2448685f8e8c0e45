// Compiled (never run) by scripts/test-browser.sh with `tsc --noEmit --strict`: the usage
// docs/clients.md shows, typed against client/switchboard.d.ts, so the declarations parse
// and say what the docs say. A change to the client's API must change both.
import { Switchboard, SwitchboardError, type Message, type StateEvent } from "../../client/switchboard.js";

async function usage(): Promise<void> {
  const sb = new Switchboard("ws://127.0.0.1:8080/ws", {
    token: async () => "a.b.c",
    minReconnectDelay: 250,
    maxReconnectDelay: 10000,
    timeout: 10000,
    maxQueue: 1000,
  });
  sb.on("state", ({ state, code, reason }: StateEvent) => console.log(state, code ?? "", reason ?? ""));
  sb.on("error", (err: SwitchboardError) => console.warn(err.code, err.closeCode, err.message));
  sb.connect();
  const sub = sb.subscribe("news", {
    onMessage(msg: Message) {
      console.log(msg.channel, msg.offset, msg.data, msg.info?.user);
    },
    onJoin(info) {
      console.log(info.client);
    },
    onLeave(info) {
      console.log(info.user);
    },
    onRecovered({ recovered, publications }) {
      console.log(recovered, publications.length);
    },
    onReset({ epoch }) {
      console.log(epoch);
    },
    onError(err) {
      console.log(err.code);
    },
  });
  const reply = await sub.ready;
  console.log(reply.offset, reply.epoch, reply.recovered, sub.position?.offset, sub.state);
  const { offset, epoch } = await sb.publish("news", { hello: "world" });
  const page = await sb.history("news", { limit: 10 });
  const missed = await sb.history("news", { since: { offset, epoch } });
  const { clients } = await sb.presence("news");
  const rtt: number = await sb.ping();
  console.log(page.publications[0]?.data, missed.offset, clients[0]?.client, rtt, sb.welcome?.node);
  await sub.unsubscribe();
  sb.close();
  if (new SwitchboardError("timeout").code !== "timeout") throw new Error("unreachable");
}

void usage;
