import OpenAI from "openai";

const client = new OpenAI({
  apiKey: {{ key }},
  baseURL: {{ base_url }},
});

const result = await client.embeddings.create({
  model: {{ model }},
  input: [{{ embed_text }}, {{ embed_text_2 }}],
});

for (const item of result.data) {
  console.log(`input ${item.index}: ${item.embedding.length} dimensions`);
}
console.log(`tokens: ${result.usage.prompt_tokens}`);
