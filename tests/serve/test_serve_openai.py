"""OpenAI's API on a real server through the `openai` package and huggingface_hub, adapters chosen by `model`."""

from __future__ import annotations

import pytest
from serve_helpers import sse_events

PROMPT = "Our pitcher threw a no-hitter in the ninth"


@pytest.fixture(scope="module")
def client(batched):
    import openai

    return openai.OpenAI(base_url=f"{batched.url}/v1", api_key=batched.key, max_retries=0)


def test_models_lists_base_and_adapters(client, batched):
    ids = [m.id for m in client.models.list().data]
    assert ids == [batched.state.served.model_id, "alpha", "beta"]


def test_completion_with_usage_matches_tgi(client, batched):
    expected = batched.generate(PROMPT, max_new_tokens=12)["generated_text"]
    out = client.completions.create(model=batched.state.served.model_id, prompt=PROMPT, max_tokens=12,
                                    temperature=0)
    assert out.choices[0].text == expected
    assert out.usage.completion_tokens == 12 or out.choices[0].finish_reason == "stop"
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_completion_stream_and_several_prompts(client, batched):
    model = batched.state.served.model_id
    whole = client.completions.create(model=model, prompt=[PROMPT, "Simmer the onions"], max_tokens=8,
                                      temperature=0)
    assert [c.index for c in whole.choices] == [0, 1]
    chunks = list(client.completions.create(model=model, prompt=[PROMPT, "Simmer the onions"], max_tokens=8,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in whole.choices]
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_chat_stream_matches_chat(client, batched):
    model = batched.state.served.model_id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rockets"}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_stop_string_is_trimmed_in_text_and_stream(client, batched):
    model = batched.state.served.model_id
    text = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = text[5:8]
    cut = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0, stop=stop,
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0, stop=stop,
                                         stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text


def test_model_field_selects_the_adapter(client, batched):
    def complete(model):
        return client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text

    base, alpha, beta = complete(batched.state.served.model_id), complete("alpha"), complete("beta")
    assert len({base, alpha, beta}) == 3
    tgi_alpha = batched.generate(PROMPT, max_new_tokens=12, adapter_id="alpha")["generated_text"]
    assert tgi_alpha == alpha


def test_unknown_model_is_404(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="unknown model 'gamma'"):
        client.completions.create(model="gamma", prompt=PROMPT, max_tokens=3)


def test_huggingface_chat_completion(batched, local_hub_client):
    from huggingface_hub import InferenceClient

    hub = InferenceClient(base_url=batched.url, api_key=batched.key)
    messages = [{"role": "user", "content": "hello"}]
    out = hub.chat_completion(messages, max_tokens=6, temperature=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in hub.chat_completion(
        messages, max_tokens=6, temperature=0, stream=True))
    assert streamed == out.choices[0].message.content and out.usage.completion_tokens >= 1


def test_raw_chat_stream_ends_with_done(batched):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 4,
            "temperature": 0, "stream": True}
    with batched.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_events(response.iter_lines())
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["usage"]["completion_tokens"] >= 1
