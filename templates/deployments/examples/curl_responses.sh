curl -sS {{ responses_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ responses_body }}
