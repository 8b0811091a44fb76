// A small typed use of the client, compiled (not run) by `tsc --noEmit` in
// test.sh: the hand-written index.d.ts must describe what an application does.
import { WebSocket } from 'ws';
import { RelayClient, RelayError, login, type Message, type Gap, type Disconnect, type Ack } from 'relay-chat-client';

export async function demo(base: string): Promise<number> {
  const { token } = await login(base, 'alice', 'secret');
  const client = new RelayClient({
    url: base,
    token,
    format: 'msgpack',
    WebSocket: WebSocket as unknown as import('relay-chat-client').WebSocketConstructor,
    getToken: async ({ reason }) => (reason === 'expired' ? (await login(base, 'alice', 'secret')).token : null),
  });
  const seen: Message[] = [];
  const off = client.on('message', (m) => { seen.push(m); const id: number = m.id; void id; });
  client.on('gap', (g: Gap) => { void client.history(g.room, { before: g.before ?? undefined }); });
  client.on('disconnect', (d: Disconnect) => { if (!d.willReconnect) console.log(d.code, d.errorCode); });
  client.on('kicked', (k) => console.log(k.room, k.by));
  client.on('edited', (e) => console.log(e.id, e.text, e.edited_ts));
  client.on('state', ({ state }) => { if (state === 'reconnecting') console.log('…'); });
  const welcome = await client.connect();
  const joined = await client.join('lobby');
  const names: string[] = joined.presence;
  void names;
  const ack: Ack = await client.send('lobby', `hi from ${welcome.user}`);
  const typist = client.typist('lobby', { throttleMs: 2000 });
  typist.input();
  typist.stop();
  for await (const page of client.historyPages('lobby', { limit: 20, pages: 2 })) seen.unshift(...page);
  const members = await client.members('lobby').catch((e: RelayError) => e.code);
  void members;
  off();
  client.close();
  return ack.id;
}
