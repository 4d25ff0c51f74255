import OpenAI from "openai";

const client = new OpenAI({
  apiKey: {{ key }},
  baseURL: {{ base_url }},
});

const completion = await client.chat.completions.create({
  model: {{ model }},
  messages: [
    { role: "system", content: {{ system_prompt }} },
    { role: "user", content: {{ user_prompt }} },
  ],
});

console.log(completion.choices[0].message.content);
console.log(`tokens: ${completion.usage.prompt_tokens} in, ${completion.usage.completion_tokens} out`);
