// The official `openai` npm package against dmoe's HTTP API: prints one JSON object with what
// each call returned, for tests/http/openai_http_test.cc to check.
//   node client_test.js http://127.0.0.1:PORT/v1 'chat message' 'completion prompt'
const OpenAI = require('openai');

async function main() {
  const [baseURL, chat, prompt] = process.argv.slice(2);
  const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
  const out = {};

  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);

  const messages = [{ role: 'user', content: chat }];
  const unary = await client.chat.completions.create({ model: out.models[0], messages, max_tokens: 32 });
  out.chat = { text: unary.choices[0].message.content, finish: unary.choices[0].finish_reason,
               usage: unary.usage };

  const stream = await client.chat.completions.create({
    model: out.models[0], messages, max_tokens: 32, stream: true,
    stream_options: { include_usage: true } });
  out.chat_stream = { chunks: [], finish: null, usage: null };
  for await (const chunk of stream) {
    if (chunk.usage) out.chat_stream.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.content) out.chat_stream.chunks.push(choice.delta.content);
      if (choice.finish_reason) out.chat_stream.finish = choice.finish_reason;
    }
  }

  const completion = await client.completions.create({ model: out.models[0], prompt, max_tokens: 24 });
  out.completion = { text: completion.choices[0].text, finish: completion.choices[0].finish_reason };
  const cstream = await client.completions.create({ model: out.models[0], prompt, max_tokens: 24,
                                                    stream: true });
  out.completion_stream = [];
  for await (const chunk of cstream) out.completion_stream.push(chunk.choices[0].text);

  try {
    await client.completions.create({ model: out.models[0], prompt, max_tokens: -1 });
    out.bad = { status: 200 };
  } catch (e) {
    out.bad = { status: e.status, type: e.type, param: e.param, message: e.message };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
