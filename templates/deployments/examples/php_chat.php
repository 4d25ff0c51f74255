<?php
$apiKey = {{ key }};
{% if from_env %}if ($apiKey === false || $apiKey === '') {
    fwrite(STDERR, "Set the {{ env }} environment variable to your Gatehouse API key.\n");
    exit(1);
}
{% endif %}
$payload = [
    'model' => {{ model }},
    'messages' => [
        ['role' => 'system', 'content' => {{ system_prompt }}],
        ['role' => 'user', 'content' => {{ user_prompt }}],
    ],
];

$ch = curl_init({{ chat_url }});
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_HTTPHEADER => ['Authorization: Bearer ' . $apiKey, 'Content-Type: application/json'],
    CURLOPT_POSTFIELDS => json_encode($payload, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE),
]);
$body = curl_exec($ch);
if ($body === false) {
    fwrite(STDERR, 'Request failed: ' . curl_error($ch) . "\n");
    exit(1);
}
$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
curl_close($ch);
if ($status !== 200) {
    fwrite(STDERR, "HTTP $status: $body\n");
    exit(1);
}

$response = json_decode($body, true);
echo $response['choices'][0]['message']['content'], PHP_EOL;
printf("tokens: %d in, %d out\n", $response['usage']['prompt_tokens'], $response['usage']['completion_tokens']);
