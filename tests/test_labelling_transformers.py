"""The transformers backend with a real (tiny) Llama chat model built here.

The model is wired by hand so that greedy decoding is a fixed chain of
tokens: every layer's output projections are zero, so the last hidden state
is the current token's one-hot embedding, and lm_head maps each token of the
chain to the next one. After the chat template's assistant marker it
therefore writes "Good lesson . Educational score : 3" and stops, through
the same tokenizer, chat template, batching, left padding and generate() a
real annotator model goes through.
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from edufilter.labelling.cli import main as label_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CHAIN = ["<|assistant|>", "Good", "lesson", ".", "Educational", "score", ":", "3", "</s>"]
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    words = ["Good", "lesson", ".", "Educational", "score", ":", "3", "Rate", "this", "web", "page", "plants"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )
    size = len(vocab)
    config = LlamaConfig(
        vocab_size=size, hidden_size=32, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :size] = torch.eye(size)  # (V, H): token i -> e_i
        for layer in model.model.layers:  # the residual stream keeps exactly the current token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[vocab["</s>"], :size] = 1.0  # anything off the chain ends the answer ...
        for current, following in zip(CHAIN, CHAIN[1:]):
            model.lm_head.weight[vocab[following], vocab[current]] = 10.0  # ... the chain goes on
    path = tmp_path_factory.mktemp("models") / "tiny-chat"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_transformers_backend_labels_with_a_local_chat_model(tmp_path, tiny_chat_model):
    docs = tmp_path / "docs.jsonl"
    texts = [f"Rate this web page about plants {i} " * (1 + 40 * i) for i in range(5)]  # up to ~6k chars: truncated
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "labels.parquet"
    command = ["--source", "jsonl", "--input", str(docs), "--domain", "web", "--backend", "transformers",
               "--model", str(tiny_chat_model), "--batch-size", "2", "--max-new-tokens", "12", "--device", "cpu",
               "--output", str(out), "--no-progress"]
    assert label_cli(command) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 5
    for row in rows:
        assert row["status"] == "ok", row["raw_response"]
        assert row["score"] == 3 and row["rationale"] == "Good lesson ."
        assert row["annotator"] == "tiny-chat" and row["raw_response"] == "Good lesson . Educational score : 3"
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] == 8  # 7 words and the end token
    summary = json.loads((tmp_path / "labels.parquet.summary.json").read_text())
    assert summary["answered"] == 5 and summary["tokens"] > 0

    # Rerun: everything comes from the cache, the model is not even loaded.
    assert label_cli(command) == 0
    summary = json.loads((tmp_path / "labels.parquet.summary.json").read_text())
    assert summary["cached"] == 5 and summary["asked"] == 0


def test_transformers_backend_rejects_a_missing_model_folder(tmp_path, capsys):
    rc = label_cli(["--source", "jsonl", "--input", "x.jsonl", "--domain", "web", "--backend", "transformers",
                    "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o.parquet")])
    assert rc == 2 and "nope" in capsys.readouterr().err
