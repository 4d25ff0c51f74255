curl -sS {{ messages_url }} \
  -H {{ x_api_key }} \
  -H "anthropic-version: 2023-06-01" \
  -H "Content-Type: application/json" \
  -d {{ messages_body }}
