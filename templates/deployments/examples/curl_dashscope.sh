curl -sS -N {{ dashscope_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -H "X-DashScope-SSE: enable" \
  -d {{ dashscope_body }}
