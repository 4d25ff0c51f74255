curl -sS {{ completions_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ completions_body }}
