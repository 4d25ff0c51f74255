package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	Model    string    `json:"model"`
	Messages []message `json:"messages"`
}

type chatResponse struct {
	Choices []struct {
		Message message `json:"message"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	apiKey := {{ key }}
{% if from_env %}	if apiKey == "" {
		fail("Set the {{ env }} environment variable to your Gatehouse API key.")
	}
{% endif %}
	payload, err := json.Marshal(chatRequest{
		Model: {{ model }},
		Messages: []message{
			{Role: "system", Content: {{ system_prompt }}},
			{Role: "user", Content: {{ user_prompt }}},
		},
	})
	if err != nil {
		fail("encode request: %v", err)
	}

	req, err := http.NewRequest(http.MethodPost, {{ chat_url }}, bytes.NewReader(payload))
	if err != nil {
		fail("build request: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fail("request failed: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("read response: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		fail("HTTP %d: %s", resp.StatusCode, body)
	}

	var out chatResponse
	if err := json.Unmarshal(body, &out); err != nil || len(out.Choices) == 0 {
		fail("unexpected response: %s", body)
	}
	fmt.Println(out.Choices[0].Message.Content)
	fmt.Printf("tokens: %d in, %d out\n", out.Usage.PromptTokens, out.Usage.CompletionTokens)
}
